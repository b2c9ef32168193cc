"""The Accelerate training loop every recipe of the library runs.

The loop owns what is the same for every system: the ``Accelerator``, gradient accumulation and clipping,
logging, periodic evaluation, atomic checkpoints with exact resume, and the final ``save_pretrained``. What
differs between systems is passed in: how a batch becomes a loss (the ``step_fn``, see
`hf_audiorep.objectives`) and, when AdamW with weight-decay exemptions and layer decay under a warmup +
cosine schedule does not fit the system (Zipformer's ScaledAdam/Eden, CP-Mobile's Adam with a step
schedule), the optimizer and the schedule (``optimizer_fn``, ``scheduler_fn``).

Data is not given to ``accelerator.prepare``: an :class:`~hf_audiorep.data.AudioStream` already yields only
this rank's shard, and a prepared dataloader would shard it a second time (accelerate#3547). The loop moves
each batch to ``accelerator.device`` itself, and the stream's own ``state_dict`` carries its position.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, send_to_device, set_seed
from accelerate.utils.operations import ignorant_find_batch_size
from torch import nn
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm
from transformers.utils import ADAPTER_CONFIG_NAME, CONFIG_NAME

from .arguments import TrainingArguments
from .checkpoint import (
    TMP_PREFIX,
    check_extra_state_supported,
    checkpoints_root,
    list_checkpoints,
    load_checkpoint,
    named_extra_state,
    publish_files,
    resolve_checkpoint,
    save_checkpoint,
    shards_parameters,
    staging_dir,
)
from .optim import build_optimizer, optimizer_from_args, scheduler_from_args

logger = get_logger(__name__)

StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, Mapping[str, Any]]]
EvalFn = Callable[[nn.Module], Mapping[str, Any]]
ParamGroupsFn = Callable[[nn.Module], Sequence[dict]]
OptimizerFn = Callable[[nn.Module, TrainingArguments], torch.optim.Optimizer]
SchedulerFn = Callable[[torch.optim.Optimizer, TrainingArguments], LRScheduler]
OptimizerStepHook = Callable[[nn.Module, int], None]

TRAIN_RESULTS_NAME = "train_results.json"
#: the staging directory of the final save: ``output_dir/.tmp-final_model``
FINAL_STAGING_NAME = "final_model"
#: the files of a saved model: weights of a save_pretrained (single file, shards, index) and its config, or a
#: peft adapter's weights and config. An earlier save's that this one did not rewrite are deleted, so that a
#: loader never combines them with the new ones (a LoRA run after a full fine-tuning in the same directory,
#: or the other way round: transformers reads a directory with both configs as a model with an adapter).
_MODEL_FILE = re.compile(
    r"^((model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?"
    r"|adapter_model\.(safetensors|bin)|(adapter_)?config\.json)$"
)


@runtime_checkable
class BatchSource(Protocol):
    """What the loop needs from ``train_batches`` (the contract of :class:`hf_audiorep.data.AudioStream`)."""

    def set_epoch(self, epoch: int) -> None: ...

    def __iter__(self): ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class TrainLoop:
    """Train ``model`` for ``args.max_steps`` optimizer steps on ``train_batches`` with ``step_fn``.

    Args:
        args: the run's :class:`TrainingArguments`.
        model: the model to train (usually a ``PreTrainedModel``; a ``*ForPreTraining`` model for SSL).
        train_batches: this rank's batches, with ``set_epoch``, ``__iter__``, ``state_dict`` and
            ``load_state_dict`` (an :class:`~hf_audiorep.data.AudioStream`); ``state_dict()`` must be
            JSON data.
        step_fn: ``step_fn(model, batch) -> (loss, logs)``, called inside ``accelerator.accumulate`` and
            ``accelerator.autocast`` with the *prepared* model (call it for the forward so that DDP syncs
            gradients; read attributes such as ``config`` from ``loop.model``) and the batch already on
            the device.
            ``loss`` is a scalar tensor; ``logs`` maps names to floats or 0-d tensors, with the same keys on
            every rank; they are averaged over steps and processes before logging.
        eval_fn: ``eval_fn(model) -> dict`` called on every process with the unwrapped model in eval mode,
            every ``args.eval_steps`` and at the end; it gathers across processes itself. Assignable later
            (``loop.eval_fn = ...``).
        param_groups_fn: ``model -> list of param-group dicts`` (``params`` and optionally ``weight_decay``,
            ``lr_scale``) for the default AdamW; default :func:`~hf_audiorep.training.build_param_groups` with
            ``args.weight_decay`` and ``args.layer_decay``.
        optimizer_fn: ``optimizer_fn(model, args) -> torch.optim.Optimizer`` over the (unwrapped) model's
            parameters, replacing the default AdamW (``param_groups_fn`` + ``build_optimizer``; the two
            cannot be combined: the factory builds its own groups).
        scheduler_fn: ``scheduler_fn(optimizer, args) -> torch.optim.lr_scheduler.LRScheduler`` on that
            optimizer, replacing the default warmup + ``args.lr_scheduler`` decay (``build_scheduler``). It
            is stepped once per optimizer step, without arguments (so not ``ReduceLROnPlateau``).
            Accelerate saves and restores the optimizer's and the schedule's ``state_dict`` with every
            checkpoint, whichever built them; their state must hold tensors and plain numbers only, since
            checkpoints are read back with ``weights_only=True``.
        feature_extractor: saved next to the model at the end (``preprocessor_config.json``).
        extra_state: objects with ``state_dict``/``load_state_dict`` (e.g. a
            :class:`~hf_audiorep.training.ModelEMA`), as a ``{name: obj}`` dict or a list, checkpointed and
            restored with the run. They must be identical on every rank (only the main process saves them).
        on_optimizer_step: hooks ``hook(model, global_step)`` run after every optimizer step with the
            unwrapped model, e.g. ``lambda model, step: ema.update(model)``; ``loop.on_optimizer_step`` is a
            list and can be appended to.

    The constructor seeds python/numpy/torch with ``args.seed`` plus the process index (dropout, masking
    and augmentation then differ between ranks that see different clips). The model already exists by
    then: seed its initialisation yourself (``transformers.set_seed(args.seed)``); DDP copies rank 0's
    weights to every rank anyway.

    After :meth:`run`, ``loop.model`` is the trained (unwrapped) model and ``loop.accelerator`` is still
    usable, e.g. to evaluate a test split across processes.

    Under FSDP (``accelerate launch --config_file recipes/accelerate_configs/fsdp_vit.yaml``) ``prepare``
    shards the model in place: ``loop.model`` is then the sharded module (its parameters are DTensors; call
    it on every rank), checkpoints hold each rank's shards, and the final ``save_pretrained`` gathers the full
    weights. EMA teachers in ``extra_state`` and ``export_fn`` need whole parameters and raise
    ``NotImplementedError`` there (and under DeepSpeed ZeRO-3).
    """

    _exit_hook_registered = False
    #: the command line written to train_results.json (and so to the model card); None = this process's
    #: own (:func:`launch_command`). Set it when the run is started from Python rather than a shell.
    training_command: str | None = None
    #: ``model -> model`` applied to the trained (unwrapped) model by the final save, which saves what it
    #: returns instead: e.g. :func:`hf_audiorep.adapters.merged_model`, to publish a LoRA run as a plain
    #: model. None saves the model as trained; ``loop.model`` is the trained model either way.
    export_fn: Callable[[nn.Module], nn.Module] | None = None

    def __init__(
        self,
        args: TrainingArguments,
        model: nn.Module,
        train_batches: BatchSource,
        step_fn: StepFn,
        eval_fn: EvalFn | None = None,
        param_groups_fn: ParamGroupsFn | None = None,
        feature_extractor=None,
        extra_state: Mapping[str, Any] | Sequence[Any] | None = None,
        on_optimizer_step: Sequence[OptimizerStepHook] | None = None,
        optimizer_fn: OptimizerFn | None = None,
        scheduler_fn: SchedulerFn | None = None,
    ):
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be a TrainingArguments, got {type(args).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        missing = [
            m
            for m in ("set_epoch", "state_dict", "load_state_dict", "__iter__")
            if not hasattr(train_batches, m)
        ]
        if missing:
            raise TypeError(
                f"train_batches ({type(train_batches).__name__}) lacks {missing}; it must follow the "
                "AudioStream contract: set_epoch(epoch), __iter__(), state_dict(), load_state_dict(state)"
            )
        if not callable(step_fn):
            raise TypeError("step_fn must be callable: step_fn(model, batch) -> (loss, logs)")
        if eval_fn is not None and not callable(eval_fn):
            raise TypeError("eval_fn must be callable: eval_fn(model) -> dict of metrics")
        for name, fn in (("optimizer_fn", optimizer_fn), ("scheduler_fn", scheduler_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if optimizer_fn is not None and param_groups_fn is not None:
            raise ValueError(
                "param_groups_fn shapes the default AdamW only; with optimizer_fn, build the groups inside it"
            )

        self.args = args
        self.train_batches = train_batches
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.feature_extractor = feature_extractor
        self.extra_state = named_extra_state(extra_state)
        self.on_optimizer_step: list[OptimizerStepHook] = list(on_optimizer_step or [])

        output_dir = Path(args.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=args.log_with,
            project_config=ProjectConfiguration(
                project_dir=str(output_dir), logging_dir=str(output_dir / "runs")
            ),
            cpu=args.cpu,
            # The schedule is written in optimizer steps; by default accelerate would step it once per
            # process per optimizer step (it assumes a prepared, sharded dataloader).
            step_scheduler_with_optimizer=False,
        )
        check_extra_state_supported(self.accelerator, self.extra_state)  # no EMA copy of a sharded model
        _set_deepspeed_batch_size(self.accelerator, args.per_device_batch_size)
        # Different streams of dropout / masking / augmentation per rank, as each rank sees different clips.
        set_seed(args.seed, device_specific=True)

        if optimizer_fn is not None:
            optimizer = _checked_optimizer(optimizer_fn(model, args), model)
        elif param_groups_fn is not None:
            if args.optimizer != "adamw":
                raise ValueError(
                    "param_groups_fn shapes the default AdamW only; use optimizer_fn for another"
                )
            optimizer = build_optimizer(
                param_groups_fn(model),
                args.learning_rate,
                args.weight_decay,
                args.adam_betas,
                args.adam_epsilon,
            )
        else:
            optimizer = optimizer_from_args(model, args)  # args.optimizer: AdamW (default) or ScaledAdam
        if scheduler_fn is not None:
            scheduler = _checked_scheduler(scheduler_fn(optimizer, args), optimizer)
        else:
            scheduler = scheduler_from_args(optimizer, args)  # args.lr_scheduler, eden included
        # Prepared objects are what accelerate's save_state/load_state checkpoint, custom ones included.
        self.prepared_model, self.optimizer, self.scheduler = self.accelerator.prepare(
            model, optimizer, scheduler
        )
        self.model = model  # the user's module, unwrapped: what eval_fn, hooks and save_pretrained see

        self.global_step = 0
        self.epoch = 0
        self.log_history: list[dict] = []
        self.eval_history: list[dict] = []
        self._carried_loss: dict | None = None  # the loss totals a resumed checkpoint carries

    # ------------------------------------------------------------------------------------------- the run

    def run(self) -> dict:
        """Train to ``max_steps`` (resuming if asked), evaluate, save; returns the run summary."""
        args, accelerator = self.args, self.accelerator
        if self.export_fn is not None and shards_parameters(accelerator):
            # Checked before training: the export would see each rank's shards, not the trained weights.
            raise NotImplementedError(
                "export_fn (e.g. a LoRA merge or distill.py's student) needs the whole model, but its "
                f"parameters are sharded ({accelerator.distributed_type}); train with DDP or DeepSpeed ZeRO-2"
            )
        if accelerator.is_main_process:
            os.makedirs(args.output_dir, exist_ok=True)
        if args.log_with is not None:
            accelerator.init_trackers(args.project_name, config=args.to_sanitized_dict())

        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        fresh_epoch = True
        if checkpoint is not None:
            restored = load_checkpoint(accelerator, checkpoint, self.extra_state)
            self.global_step, self.epoch = restored["global_step"], restored["epoch"]
            self.train_batches.load_state_dict(restored["data"])
            self.eval_history = restored["eval_history"]
            self._carried_loss = restored["train_loss_totals"]
            fresh_epoch = False  # continue the interrupted epoch from the restored position
            logger.info(f"resumed from {checkpoint} at step {self.global_step}, epoch {self.epoch}")
        else:
            self._clear_stale_checkpoints()
            if args.eval_on_start and self.eval_fn is not None:
                self._evaluate()  # step 0: the baseline every later evaluation is read against

        self.prepared_model.train()
        window = _Window(accelerator.device)
        run_totals = _Window(accelerator.device)
        last_eval_step = None
        progress = tqdm(
            total=args.max_steps,
            initial=self.global_step,
            desc="train",
            dynamic_ncols=True,
            disable=args.disable_progress_bar or not accelerator.is_local_main_process,
        )
        start = time.perf_counter()
        while self.global_step < args.max_steps:
            if fresh_epoch:
                self.train_batches.set_epoch(self.epoch)
            yielded = False
            for batch in self.train_batches:
                yielded = True
                if not self._micro_step(batch, window, run_totals):
                    continue
                self.global_step += 1
                for hook in self.on_optimizer_step:
                    hook(self.model, self.global_step)
                progress.update(1)
                if self.global_step % args.logging_steps == 0 or self.global_step == args.max_steps:
                    self._log(window, progress)
                    window = _Window(accelerator.device)
                paused = time.perf_counter()
                # Evaluate before checkpointing: eval may draw random numbers, and the checkpoint must hold
                # the RNG state the next training step starts from.
                if args.eval_steps and self.global_step % args.eval_steps == 0 and self.eval_fn is not None:
                    self._evaluate()
                    last_eval_step = self.global_step
                if args.checkpointing_steps and self.global_step % args.checkpointing_steps == 0:
                    save_checkpoint(
                        accelerator,
                        args.output_dir,
                        self.global_step,
                        self.epoch,
                        self.train_batches.state_dict(),
                        self.extra_state,
                        args.save_total_limit,
                        self.eval_history,
                        self._loss_totals(run_totals),
                    )
                window.start += time.perf_counter() - paused  # throughput counts training time only
                if self.global_step >= args.max_steps:
                    break
            else:
                if fresh_epoch and not yielded:
                    raise RuntimeError(
                        f"train_batches yielded no batch in epoch {self.epoch} on rank "
                        f"{accelerator.process_index}: the dataset is empty or smaller than one batch per "
                        "process"
                    )
                self.epoch += 1
                fresh_epoch = True
        progress.close()
        runtime = time.perf_counter() - start

        if self.eval_fn is not None and last_eval_step != self.global_step:
            self._evaluate()
        summary = self._summary(run_totals, runtime, checkpoint)
        self._save_final(summary)
        return summary

    def _clear_stale_checkpoints(self) -> None:
        # A fresh run in a directory holding another run's checkpoints would mix the two: rotation would
        # delete the new saves first (lower steps) and "latest" would pick the old run's.
        root = checkpoints_root(self.args.output_dir)
        stale = list_checkpoints(root)
        if not stale:
            if self.args.resume_from_checkpoint == "latest":
                logger.info(f"no checkpoint under {root}; starting from scratch")
            return
        if not self.args.overwrite_output_dir:
            raise ValueError(
                f"{root} holds checkpoints of an earlier run ({stale[-1].name}); pass "
                "resume_from_checkpoint='latest' to continue it, overwrite_output_dir=True to discard them, "
                "or another output_dir"
            )
        self.accelerator.wait_for_everyone()  # every rank has seen them before they go
        if self.accelerator.is_main_process:
            shutil.rmtree(root)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------- one micro-step

    def _micro_step(self, batch, window: _Window, run_totals: _Window) -> bool:
        """Forward/backward on one batch; returns True when it completed an optimizer step."""
        accelerator = self.accelerator
        batch = send_to_device(batch, accelerator.device, non_blocking=True)
        with accelerator.accumulate(self.prepared_model):
            with accelerator.autocast():
                output = self.step_fn(self.prepared_model, batch)
            loss, logs = self._check_step_output(output)
            detached = loss.detach().float()
            if not torch.isfinite(detached):
                raise FloatingPointError(
                    f"loss is {detached.item()} at optimizer step {self.global_step + 1} (epoch "
                    f"{self.epoch}, rank {accelerator.process_index}); stopping instead of training on a "
                    "non-finite loss. "
                    "Lower the learning rate, check the inputs, or use bf16 instead of fp16."
                )
            accelerator.backward(loss)
            clips = _batch_size(batch)
            window.add_micro(detached, logs, clips)
            run_totals.add_micro(detached, {}, clips)
            if not accelerator.sync_gradients:
                return False
            max_norm = self.args.max_grad_norm if self.args.max_grad_norm is not None else math.inf
            grad_norm = accelerator.clip_grad_norm_(self.prepared_model.parameters(), max_norm)
            self.optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: keep the schedule in place
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            window.add_step(grad_norm)
        return True

    def _check_step_output(self, output) -> tuple[torch.Tensor, Mapping[str, Any]]:
        if not (isinstance(output, tuple) and len(output) == 2):
            raise TypeError(f"step_fn must return (loss, logs), got {type(output).__name__}")
        loss, logs = output
        if not torch.is_tensor(loss) or loss.numel() != 1 or not loss.is_floating_point():
            raise TypeError(f"step_fn's loss must be a scalar float tensor, got {_describe(loss)}")
        if not loss.requires_grad:
            raise ValueError("step_fn's loss does not require grad: compute it from the model's outputs")
        if logs is None:
            logs = {}
        if not isinstance(logs, Mapping):
            raise TypeError(f"step_fn's logs must be a dict of name -> number, got {type(logs).__name__}")
        return loss.reshape(()), logs

    # ------------------------------------------------------------------------------------ logging / eval

    def _log(self, window: _Window, progress) -> None:
        metrics = window.reduce(self.accelerator)
        if metrics is None:
            return
        metrics["lr"] = max(self.scheduler.get_last_lr())
        metrics["clips_per_second"] = (
            window.clips * self.accelerator.num_processes / max(window.elapsed(), 1e-9)
        )
        metrics["epoch"] = self.epoch
        self.accelerator.log(metrics, step=self.global_step)
        if self.accelerator.is_main_process:
            self.log_history.append({"step": self.global_step, **metrics})
            logger.info(f"step {self.global_step}: {json.dumps(_round(metrics))}")
        progress.set_postfix(
            loss=f"{metrics['loss']:.4f}",
            lr=f"{metrics['lr']:.2e}",
            clips_s=f"{metrics['clips_per_second']:.1f}",
        )

    def _evaluate(self) -> dict:
        self.prepared_model.eval()
        try:
            metrics = self.eval_fn(self.model)
        finally:
            self.prepared_model.train()
        if not isinstance(metrics, Mapping):
            raise TypeError(f"eval_fn must return a dict of metrics, got {type(metrics).__name__}")
        metrics = {k: v.item() if torch.is_tensor(v) and v.numel() == 1 else v for k, v in metrics.items()}
        scalars = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        self.accelerator.log(scalars, step=self.global_step)
        self.eval_history.append({"step": self.global_step, **metrics})
        logger.info(f"eval at step {self.global_step}: {json.dumps(_round(scalars))}")
        return metrics

    # ---------------------------------------------------------------------------------------------- end

    def _loss_totals(self, run_totals: _Window) -> tuple[float, int]:
        """The training loss summed over the run's micro-steps on every process, and their count: this
        invocation's plus those a resumed checkpoint carried (one collective; call on every process)."""
        loss_sum, micro_steps = run_totals.loss_totals(self.accelerator)
        carried = self._carried_loss or {}
        return loss_sum + carried.get("loss_sum", 0.0), micro_steps + carried.get("micro_steps", 0)

    def _summary(self, run_totals: _Window, runtime: float, checkpoint: Path | None) -> dict:
        accelerator = self.accelerator
        loss_sum, micro_steps = self._loss_totals(run_totals)
        clips = run_totals.clips * accelerator.num_processes
        summary = {
            "global_step": self.global_step,
            "epoch": self.epoch,
            # the mean over every step of the run, a resumed run's steps before the interruption included
            "train_loss": loss_sum / micro_steps if micro_steps else None,
            "train_runtime": runtime,
            "train_clips": clips,
            "train_clips_per_second": clips / runtime if runtime > 0 else 0.0,
            "world_size": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision,
            # A CPU run reproduces bit for bit only at the same intra-op thread count: the count splits the
            # float reductions, and a long run amplifies the last bits into points of accuracy.
            "cpu_threads": torch.get_num_threads(),
            "resumed_from_checkpoint": str(checkpoint) if checkpoint is not None else None,
            # Recorded by the run, so that a published model card states what really produced the weights.
            "training_command": self.training_command or launch_command(),
            "recipe": _recipe_name(),
        }
        if self.log_history:
            # The mean over the whole run hides where the loss ended; the last logging window shows it.
            summary["last_log"] = dict(self.log_history[-1])
        if self.eval_history:
            summary.update({k: v for k, v in self.eval_history[-1].items() if k != "step"})
        return summary

    def finish(self) -> None:
        """End the run on every rank together: recipes call it last, after their own evaluation.

        The process group is destroyed here, behind a barrier, instead of at interpreter exit, where a
        rank that tears down its gloo/NCCL threads while a peer is still busy can abort the process.
        """
        self.accelerator.wait_for_everyone()
        _destroy_process_group()

    def _save_final(self, summary: dict) -> None:
        """``save_pretrained`` of the trained model (+ feature extractor, ``train_results.json``) into
        ``output_dir``, published as atomically as a directory shared with other files allows.

        What "atomic" means here: ``output_dir`` also holds ``checkpoints/``, the logs and the recipes'
        ``eval_results.json``, and ``from_pretrained(output_dir)`` must keep working, so the model cannot
        be swapped in as one directory the way a checkpoint step is. Instead everything is written to
        ``output_dir/.tmp-final_model`` and then moved in file by file (``publish_files``): each file is
        renamed over its previous version once complete and fsynced, so no reader ever opens a truncated
        ``model.safetensors`` or ``config.json``, and ``config.json`` (what ``from_pretrained`` reads first)
        is renamed last, after the weights: a directory that has a ``config.json`` has complete weights (a
        LoRA run's ``adapter_config.json`` likewise).
        When an earlier final save is being replaced (a resumed run), a reader in the window between the
        renames can pair the earlier config with the new weights (the same architecture), and a crash
        there leaves such a pair; the rerun's final save replaces it. A crash before the renames leaves
        the earlier model untouched and a ``.tmp-final_model`` that the next final save deletes.
        """
        accelerator = self.accelerator
        output_dir = self.args.output_dir
        staging = Path(output_dir) / f"{TMP_PREFIX}{FINAL_STAGING_NAME}"
        if accelerator.is_main_process:
            staging_dir(output_dir, FINAL_STAGING_NAME)  # deletes a leftover of a crashed final save
        accelerator.wait_for_everyone()
        # Collective under FSDP/DeepSpeed (gathers the full weights), so every rank takes part.
        state_dict = accelerator.get_state_dict(self.prepared_model)
        unwrapped = accelerator.unwrap_model(self.prepared_model)
        if self.export_fn is not None:
            unwrapped, state_dict = self.export_fn(unwrapped), None  # the export's own weights
        if hasattr(unwrapped, "save_pretrained"):
            # transformers 5 always writes safetensors and saves on the main process only when told so.
            unwrapped.save_pretrained(
                staging, is_main_process=accelerator.is_main_process, state_dict=state_dict
            )
        else:
            accelerator.save_model(unwrapped, staging, safe_serialization=True)
        if accelerator.is_main_process:
            if self.feature_extractor is not None:
                self.feature_extractor.save_pretrained(staging)
            with open(staging / TRAIN_RESULTS_NAME, "w") as f:
                json.dump(summary, f, indent=2, default=str)
        accelerator.wait_for_everyone()  # every rank's share of the save is in the staging directory
        if accelerator.is_main_process:
            # The config, a model's or (LoRA) an adapter's, is what a loader reads first: the set's mark.
            marks = (CONFIG_NAME, ADAPTER_CONFIG_NAME)
            publish_files(staging, output_dir, last=marks, stale=_MODEL_FILE.match)
        accelerator.wait_for_everyone()
        if self.args.push_to_hub and accelerator.is_main_process:
            # Not pushed from here: recipes write eval_results.json (the test mAP of the card) after run().
            logger.info(
                f"model saved to {output_dir}; it is pushed to {self.args.hub_model_id} when the recipe "
                "calls hf_audiorep.hub.push_run(args) after its evaluation"
            )
        # Not accelerator.end_training(): that also destroys the process group, and recipes evaluate the
        # test split with `loop.accelerator` after run(). Trackers are flushed here; the process group is
        # torn down at interpreter exit.
        for tracker in accelerator.trackers:
            tracker.finish()
        if not TrainLoop._exit_hook_registered:
            atexit.register(_destroy_process_group)
            TrainLoop._exit_hook_registered = True


class _Window:
    """Running sums over micro-steps, kept on the device so nothing syncs until they are logged."""

    def __init__(self, device: torch.device):
        self.device = device
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.log_sums: dict[str, torch.Tensor] = {}
        self.micro_steps = 0
        self.clips = 0
        self.grad_norm_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.grad_norm_steps = 0
        self.start = time.perf_counter()

    def add_micro(self, loss: torch.Tensor, logs: Mapping[str, Any], clips: int) -> None:
        self.loss_sum += loss
        for key, value in logs.items():
            value = value.detach() if torch.is_tensor(value) else torch.as_tensor(value)
            total = self.log_sums.get(key)
            value = value.to(self.device, torch.float64).reshape(())
            self.log_sums[key] = value if total is None else total + value
        self.micro_steps += 1
        self.clips += clips

    def add_step(self, grad_norm) -> None:
        if grad_norm is not None:  # DeepSpeed may not report one
            if isinstance(grad_norm, DTensor):  # FSDP2: the norm of the sharded gradients, reduced over ranks
                grad_norm = grad_norm.full_tensor()
            self.grad_norm_sum += torch.as_tensor(grad_norm, device=self.device).detach().to(torch.float64)
            self.grad_norm_steps += 1

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def loss_totals(self, accelerator: Accelerator) -> tuple[float, int]:
        """The loss summed over the micro-steps of every process, and their count (one collective)."""
        count = torch.tensor(float(self.micro_steps), device=self.device, dtype=torch.float64)
        loss_sum, total = accelerator.reduce(
            torch.stack([self.loss_sum, count]).float(), reduction="sum"
        ).tolist()
        return loss_sum, round(total)

    def reduce(self, accelerator: Accelerator) -> dict[str, float] | None:
        """Means over this window's micro-steps on all processes (one collective)."""
        if self.micro_steps == 0:
            return None
        keys = sorted(self.log_sums)
        count = torch.tensor(float(self.micro_steps), device=self.device, dtype=torch.float64)
        packed = torch.stack([self.loss_sum, count, *(self.log_sums[k] for k in keys)])
        # float64 is not supported by every backend's all-reduce; the sums are small enough for float32.
        packed = accelerator.reduce(packed.float(), reduction="sum").double().tolist()
        loss_sum, total, *log_sums = packed
        metrics = {key: value / total for key, value in zip(keys, log_sums, strict=True)}
        metrics["loss"] = loss_sum / total
        if self.grad_norm_steps:
            # Gradients are all-reduced before clipping, so every rank holds the same norm.
            metrics["grad_norm"] = self.grad_norm_sum.item() / self.grad_norm_steps
        return metrics


#: set in every process that `accelerate launch` starts, whatever the distributed backend
_ACCELERATE_LAUNCH_VARS = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_USE_CPU")
#: words of an option's name (split at "-" and "_") that mark its value a credential; "api_key" spans two
_SECRET_OPTIONS = ("token", "password", "passwd", "secret", "apikey")


def _is_secret(option: str) -> bool:
    """``--hub_token``, ``--db-password``, ``--wandb_api_key``: yes; ``--tokenizer``,
    ``--tokenizer_vocab_size``: no (a word of the name, not a substring of one)."""
    name = option.lstrip("-").lower()
    words = name.replace("-", "_").split("_")
    return any(word in _SECRET_OPTIONS for word in words) or "api_key" in name.replace("-", "_")


def _redact(argv: Sequence[str]) -> list[str]:
    """Mask the values of options such as ``--hub_token`` so a card never publishes a credential."""
    out, hide_next = [], False
    for part in argv:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
            continue
        name, eq, _ = part.partition("=")
        if name.startswith("-") and _is_secret(name):
            if eq:
                out.append(f"{name}=<redacted>")
            else:
                out.append(part)
                hide_next = True
            continue
        out.append(part)
    return out


def launch_command(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The shell command that started this process, e.g. ``accelerate launch recipes/finetune.py --x 1``.

    ``sys.argv`` holds the script and its arguments; how it was launched is read from the environment that
    ``accelerate launch`` leaves (its own options survive only as their effects: the process count and the
    mixed precision are written back, a config file is not). Secret-looking option values are masked.
    """
    argv = list(sys.argv if argv is None else argv)
    environ = os.environ if environ is None else environ
    if argv and argv[0] in ("", "-c"):
        argv[:1] = ["-c", "<code>"]  # interactive or `python -c`: there is no script to name
    if any(name in environ for name in _ACCELERATE_LAUNCH_VARS):
        launcher = ["accelerate", "launch"]
        world_size = int(environ.get("WORLD_SIZE", "1") or 1)
        if world_size > 1:
            launcher += ["--num_processes", str(world_size)]
        precision = environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if precision and precision != "no":
            launcher += ["--mixed_precision", precision]
    elif argv and (argv[0].endswith(".py") or argv[0] == "-c"):
        launcher = ["python"]
    else:
        launcher = []  # a console script (pytest, hf-audiorep): argv[0] is already the command
    return shlex.join(launcher + _redact(argv)) if argv else ""


def _recipe_name() -> str | None:
    """``finetune`` for ``recipes/finetune.py``; None when the process was not started from a script."""
    script = sys.argv[0] if sys.argv else ""
    return Path(script).stem if script.endswith(".py") else None


def _checked_optimizer(optimizer, model: nn.Module) -> torch.optim.Optimizer:
    # accelerate wraps (and checkpoints) only torch optimizers; anything else would train but not resume.
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer_fn must return a torch.optim.Optimizer, got {type(optimizer).__name__}")
    # An optimizer over another copy of the model would step weights the loop never reads.
    own = {id(p) for p in model.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in own)
    if foreign:
        raise ValueError(
            f"optimizer_fn's optimizer holds {foreign} tensor(s) that are not parameters of the model"
        )
    return optimizer


def _checked_scheduler(scheduler, optimizer: torch.optim.Optimizer) -> LRScheduler:
    if not isinstance(scheduler, LRScheduler):
        raise TypeError(
            f"scheduler_fn must return a torch.optim.lr_scheduler.LRScheduler, got {type(scheduler).__name__}"
        )
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise TypeError("ReduceLROnPlateau needs a metric per step; the loop steps the schedule without one")
    if scheduler.optimizer is not optimizer:
        raise ValueError("scheduler_fn's schedule must drive the optimizer it was given")
    return scheduler


def _set_deepspeed_batch_size(accelerator: Accelerator, per_device_batch_size: int) -> None:
    """DeepSpeed takes an ``auto`` micro-batch size from a prepared dataloader, which the loop never has (see
    the module docstring): fill it from ``args.per_device_batch_size``, which the recipes build streams with.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = per_device_batch_size


def _destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _batch_size(batch) -> int:
    if isinstance(batch, Mapping) and torch.is_tensor(batch.get("waveforms")):
        return int(batch["waveforms"].shape[0])
    size = ignorant_find_batch_size(batch)
    return int(size) if size is not None else 0


def _describe(value) -> str:
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def _round(metrics: Mapping[str, Any]) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}
