"""Arguments of the shared training loop, parsed by every recipe with ``HfArgumentParser``."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from huggingface_hub.utils import HFValidationError, validate_repo_id

from .optim import LR_SCHEDULERS, OPTIMIZERS

MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class TrainingArguments:
    """What :class:`~hf_audiorep.training.TrainLoop` needs; recipes subclass it to change defaults.

    Steps are optimizer steps (after gradient accumulation) everywhere: ``max_steps``, ``warmup_steps``,
    ``logging_steps``, ``eval_steps`` and ``checkpointing_steps``.
    """

    output_dir: str = _help(
        "where checkpoints, logs, the final model and train_results.json go", "outputs/run"
    )
    max_steps: int = _help("number of optimizer steps to train for", 1000)
    per_device_batch_size: int = _help(
        "clips per batch on each process (recipes build the stream with it)", 16
    )
    optimizer: Literal[OPTIMIZERS] = _help(
        "adamw | scaled_adam (Zipformer's: Adam scaled by each tensor's RMS, a learned scale per tensor, "
        "its own clipping; no weight decay, no layer decay; use with lr ~0.045, --lr_scheduler eden and "
        "--max_grad_norm 0)",
        "adamw",
    )
    learning_rate: float = _help(
        "peak learning rate (of the last layer when layer_decay < 1); scaled_adam with eden: ~0.045", 1e-4
    )
    min_learning_rate: float = _help("learning rate reached at max_steps by the cosine/linear schedule", 1e-6)
    weight_decay: float = _help("AdamW weight decay; biases and 1-D parameters are exempt", 0.05)
    adam_beta1: float = _help("AdamW and ScaledAdam beta1", 0.9)
    adam_beta2: float = _help("AdamW beta2", 0.999)
    adam_epsilon: float = _help("AdamW and ScaledAdam epsilon", 1e-8)
    layer_decay: float = _help(
        "layer-wise lr decay in (0, 1] (AdamW only); layer i of L gets lr * layer_decay ** (L + 1 - i); "
        "1 = off",
        1.0,
    )
    warmup_steps: int = _help(
        "linear warmup steps (set this or warmup_ratio); from 0, or from half the rate with eden", 0
    )
    warmup_ratio: float = _help("linear warmup as a fraction of max_steps (set this or warmup_steps)", 0.0)
    lr_scheduler: Literal[LR_SCHEDULERS] = _help(
        "learning-rate schedule: cosine | linear | constant after warmup, or eden "
        "(lr * ((b²+B²)/B²)^-¼ * ((e²+E²)/E²)^-¼ at step b, epoch e, with B, E the eden_lr_* fields)",
        "cosine",
    )
    eden_lr_batches: float = _help("eden: B, the steps after which the rate decays markedly", 7500.0)
    eden_lr_epochs: float = _help("eden: E, the epochs after which the rate decays markedly", 3.5)
    eden_steps_per_epoch: float | None = _help(
        "eden: optimizer steps that make one epoch, e = step / this (a fractional epoch); 0/None = no epoch "
        "factor, as for an endless stream",
        None,
    )
    scaled_adam_beta2: float = _help("ScaledAdam beta2", 0.98)
    scaled_adam_clipping_scale: float | None = _help(
        "ScaledAdam: clip the gradient norm to this times the median norm of recent steps; 0/None = off", 2.0
    )
    scaled_adam_clipping_update_period: int = _help(
        "ScaledAdam: steps between estimates of the clipping threshold (its window of recent norms)", 100
    )
    scaled_adam_scalar_lr_scale: float = _help(
        "ScaledAdam: lr factor of scalar parameters and of each tensor's learned scale", 0.1
    )
    scaled_adam_param_min_rms: float = _help("ScaledAdam: floor of each tensor's RMS", 1e-5)
    scaled_adam_param_max_rms: float = _help("ScaledAdam: ceiling of each tensor's RMS", 3.0)
    gradient_accumulation_steps: int = _help("micro-batches per optimizer step", 1)
    max_grad_norm: float | None = _help("clip the global gradient norm to this; 0/None = no clipping", 1.0)
    mixed_precision: str | None = _help(
        "no | fp16 | bf16 | fp8; None takes accelerate's config / `accelerate launch --mixed_precision`", None
    )
    seed: int = _help("seed of python, numpy and torch RNGs (model init, dropout, augmentation)", 0)
    logging_steps: int = _help("log loss, lr, grad norm and throughput every this many steps", 10)
    eval_steps: int | None = _help("evaluate every this many steps; 0/None = only at the end", None)
    eval_on_start: bool = _help(
        "also evaluate before the first step (step 0: the initialisation's baseline); not when resuming",
        False,
    )
    checkpointing_steps: int | None = _help(
        "save a resumable checkpoint every this many steps; 0/None = never", 500
    )
    save_total_limit: int | None = _help("keep at most this many checkpoints (oldest deleted); None = all", 2)
    resume_from_checkpoint: str | None = _help(
        "a checkpoint directory, or 'latest' for the newest complete one under output_dir/checkpoints "
        "(a fresh start when there is none)",
        None,
    )
    overwrite_output_dir: bool = _help(
        "when not resuming, delete checkpoints an earlier run left in output_dir (default: refuse to run)",
        False,
    )
    log_with: str | None = _help(
        "experiment trackers: tensorboard | wandb | ... | all; None = no tracker", None
    )
    project_name: str = _help("tracker project / run name (the tensorboard sub-directory)", "hf_audiorep")
    cpu: bool = _help(
        "force CPU (needed for multi-process CPU runs with accelerate launch --multi_gpu)", False
    )
    disable_progress_bar: bool = _help("hide the tqdm progress bar", False)
    push_to_hub: bool = _help(
        "after training (and the recipe's test evaluation), publish output_dir to the Hub with "
        "hf_audiorep.hub.push_model: safetensors weights, remote code, and a model card holding the test "
        "mAP and the command that produced the model",
        False,
    )
    hub_model_id: str | None = _help(
        "Hub repository to push to, 'namespace/name' or 'name' (in the token's namespace); default with "
        "--push_to_hub: the name of output_dir's folder, as transformers' Trainer does",
        None,
    )
    hub_private_repo: bool = _help(
        "create the Hub repository as private (an existing repository keeps its visibility)", False
    )
    hub_token: str | None = _help(
        "Hub token with write access; default: the HF_TOKEN variable or the token saved by `hf auth login`. "
        "Never written to logs, trackers or train_results.json",
        None,
    )

    def __post_init__(self):
        # HfArgumentParser hands "None"/"none" through for optional strings typed on the command line.
        for name in ("mixed_precision", "resume_from_checkpoint", "log_with", "hub_model_id", "hub_token"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in ("", "none"):
                setattr(self, name, None)
        _positive(self, "max_steps", "per_device_batch_size", "gradient_accumulation_steps", "logging_steps")
        # On the command line None cannot be typed for an int/float, so 0 also means "off" for these.
        for name in ("eval_steps", "checkpointing_steps", "max_grad_norm", "eden_steps_per_epoch"):
            if getattr(self, name) == 0:
                setattr(self, name, None)
        _positive(self, "eval_steps", "checkpointing_steps", "save_total_limit", optional=True)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(
                f"min_learning_rate must be in [0, learning_rate={self.learning_rate}], "
                f"got {self.min_learning_rate}"
            )
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.scaled_adam_clipping_scale == 0:
            self.scaled_adam_clipping_scale = None
        for name in ("adam_beta1", "adam_beta2", "scaled_adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.adam_epsilon > 0:
            raise ValueError(f"adam_epsilon must be > 0, got {self.adam_epsilon}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1] (1 = off), got {self.layer_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.warmup_steps > 0 and self.warmup_ratio > 0:
            raise ValueError(
                f"set only one of warmup_steps ({self.warmup_steps}) and warmup_ratio ({self.warmup_ratio})"
            )
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 (0/None: no clipping), got {self.max_grad_norm}")
        self._check_optimizer()
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION} or None, got {self.mixed_precision!r}"
            )
        if not self.output_dir:
            raise ValueError("output_dir must be a non-empty path")
        if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
            raise ValueError(
                f"--output_dir {self.output_dir} is a file: give a directory (created if missing)"
            )
        derived = self.push_to_hub and self.hub_model_id is None
        if derived:
            # Resolved here rather than at push time, so a name the Hub would refuse fails before training.
            self.hub_model_id = Path(self.output_dir).absolute().name
        if self.hub_model_id is not None:
            _check_repo_id(self.hub_model_id, derived)

    def _check_optimizer(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("eden_lr_batches", "eden_lr_epochs", "scaled_adam_scalar_lr_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.eden_steps_per_epoch is not None and not self.eden_steps_per_epoch > 0:
            raise ValueError(
                f"eden_steps_per_epoch must be > 0 (0/None: no epoch factor), got {self.eden_steps_per_epoch}"
            )
        if self.scaled_adam_clipping_scale is not None and not self.scaled_adam_clipping_scale > 0:
            raise ValueError(
                "scaled_adam_clipping_scale must be > 0 (0/None: no clipping), got "
                f"{self.scaled_adam_clipping_scale}"
            )
        _positive(self, "scaled_adam_clipping_update_period")
        if not 0 < self.scaled_adam_param_min_rms < self.scaled_adam_param_max_rms:
            raise ValueError(
                "need 0 < scaled_adam_param_min_rms < scaled_adam_param_max_rms, got "
                f"{self.scaled_adam_param_min_rms} and {self.scaled_adam_param_max_rms}"
            )
        if self.optimizer != "scaled_adam":
            return
        if self.layer_decay != 1.0:
            raise ValueError(
                f"layer_decay={self.layer_decay} applies to AdamW only; ScaledAdam scales each tensor's "
                "update by its own RMS instead (use layer_decay=1)"
            )
        if self.max_grad_norm is not None:
            # The loop's global clipping would run first and leave ScaledAdam's median-relative clipping
            # nothing to do (with a sum-reduced loss it would clip every step).
            raise ValueError(
                f"max_grad_norm={self.max_grad_norm} would clip the gradients before ScaledAdam, which clips "
                "them itself relative to the median recent norm (scaled_adam_clipping_scale): pass "
                "max_grad_norm 0 with optimizer scaled_adam"
            )

    @property
    def scaled_adam_betas(self) -> tuple[float, float]:
        return (self.adam_beta1, self.scaled_adam_beta2)

    @property
    def adam_betas(self) -> tuple[float, float]:
        return (self.adam_beta1, self.adam_beta2)

    @property
    def num_warmup_steps(self) -> int:
        """Warmup length in optimizer steps, from ``warmup_steps`` or ``warmup_ratio``."""
        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * self.max_steps)

    def to_dict(self) -> dict:
        """The fields as a dict, with ``hub_token`` masked: this dict goes to trackers and logs."""
        values = dataclasses.asdict(self)
        if values.get("hub_token") is not None:
            values["hub_token"] = "<HUB_TOKEN>"
        return values

    def to_sanitized_dict(self) -> dict:
        """The fields as tracker hyperparameters: TensorBoard's hparams accept only int/float/str/bool."""
        return {
            key: value if isinstance(value, (int, float, str, bool)) else str(value)
            for key, value in self.to_dict().items()
        }


def _positive(args: TrainingArguments, *names: str, optional: bool = False) -> None:
    for name in names:
        value = getattr(args, name)
        if value is None and optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            none = " or None" if optional else ""
            raise ValueError(f"{name} must be a positive integer{none}, got {value!r}")


def _check_repo_id(repo_id: str, derived: bool) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        hint = " (derived from output_dir's folder name; pass --hub_model_id)" if derived else ""
        raise ValueError(f"hub_model_id {repo_id!r} is not a valid Hub repository id{hint}: {err}") from None
