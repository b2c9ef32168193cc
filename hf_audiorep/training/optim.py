"""Optimizer parameter groups (weight-decay exemptions, layer-wise lr decay), optimizers and lr schedules.

Two optimizers (``TrainingArguments.optimizer``): AdamW over :func:`build_param_groups` (the default), and
:class:`~hf_audiorep.training.scaled_adam.ScaledAdam` (Zipformer's), which has no weight decay and no layer
decay: every trainable parameter goes in one group. Four schedules (``lr_scheduler``): warmup then cosine,
linear or constant, or :class:`~hf_audiorep.training.scaled_adam.Eden`. :func:`optimizer_from_args` and
:func:`scheduler_from_args` build either from the run's arguments (the ``optimizer_fn`` / ``scheduler_fn``
signatures of :class:`~hf_audiorep.training.TrainLoop`).

Layer-wise learning-rate decay follows BEiT / MAE fine-tuning: with ``L`` transformer layers, parameters
are given a layer id in ``0 .. L + 1`` (0 = patch/position embeddings, ``i + 1`` = block ``i``,
``L + 1`` = everything after the blocks: final norm, pooler, head) and the learning rate of layer id
``k`` is scaled by ``layer_decay ** (L + 1 - k)``, so the head trains at the full rate and the
embeddings at the smallest one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from functools import partial

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from .scaled_adam import Eden, ScaledAdam

OPTIMIZERS = ("adamw", "scaled_adam")
#: warmup + decay schedules of lr_multiplier
DECAY_SCHEDULES = ("cosine", "linear", "constant")
LR_SCHEDULERS = DECAY_SCHEDULES + ("eden",)

# `.layers.3.`, `blocks.0.`, `.layer.11.` — the block index used by transformers, timm and BEiT-style code.
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|blocks|layer)\.(\d+)(?:\.|$)")
# Parameter-name components that belong to the input embedding (layer id 0).
_EMBEDDING_PARTS = re.compile(
    r"(?:^|\.)(?:patch_embed\w*|cls_token|dist_token|pos_embed\w*|position_embed\w*|embeddings)(?:\.|$)"
)


def default_layer_id(param_name: str, num_layers: int) -> int:
    """Layer id of a parameter of a transformers/timm-style encoder, from its name alone.

    Embeddings (``patch_embed``, ``cls_token``, ``pos_embed``, ``embeddings.``) -> 0; the ``i``-th block
    (``.layers.<i>.``, ``.blocks.<i>.``, ``.layer.<i>.``) -> ``i + 1``; anything else -> ``num_layers + 1``.
    Models whose names do not fit (e.g. stacks of stacks) pass their own ``layer_id_fn``.
    """
    match = _LAYER_INDEX.search(param_name)
    if match is not None:
        return min(int(match.group(1)) + 1, num_layers + 1)
    if _EMBEDDING_PARTS.search(param_name):
        return 0
    return num_layers + 1


def _no_weight_decay_names(model: nn.Module) -> set[str]:
    # timm convention: a model may list extra exemptions (position embeddings, class tokens).
    hook = getattr(model, "no_weight_decay", None)
    return set(hook()) if callable(hook) else set()


def _is_exempt_from_weight_decay(name: str, param: torch.Tensor, extra: set[str]) -> bool:
    # Decaying biases and normalisation gains only shrinks them toward 0, which is never the prior we
    # want; 1-D covers LayerNorm/BatchNorm/RMSNorm weights and layer-scale vectors.
    if param.ndim <= 1 or name.endswith(".bias"):
        return True
    return name in extra or name.rsplit(".", 1)[-1] in extra


def build_param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    num_layers: int | None = None,
    layer_id_fn: Callable[[str], int] | None = None,
) -> list[dict]:
    """AdamW parameter groups with weight-decay exemptions and (optionally) layer-wise lr decay.

    Args:
        model: the model; only parameters with ``requires_grad`` are included (frozen teachers are skipped).
        weight_decay: decay for matrices and convolution kernels; biases, 1-D parameters and names returned
            by ``model.no_weight_decay()`` (if defined) get 0.
        layer_decay: in ``(0, 1]``; 1 disables layer decay.
        num_layers: number of blocks ``L``; default ``model.config.num_hidden_layers``.
        layer_id_fn: ``param_name -> int`` in ``0 .. L + 1``; default the model's ``get_layer_id`` when it has
            one (every model of the library), else :func:`default_layer_id` (names of transformers/timm ViTs).

    Returns:
        A list of dicts with ``params``, ``weight_decay``, ``lr_scale`` (multiply the base learning rate
        by it) and ``layer_id`` (0 for all when layer decay is off), ordered by layer id. Empty groups are
        left out.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    use_layer_decay = layer_decay < 1.0
    if callable(getattr(model, "get_base_model", None)):
        # A peft model prefixes every name (`base_model.model.`); the wrapped model's get_layer_id and
        # no_weight_decay read its own names. The parameters are the same tensors.
        model = model.get_base_model()
    if num_layers is None:
        num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if use_layer_decay and not isinstance(num_layers, int):
        raise ValueError(
            "layer_decay < 1 needs the number of layers: pass num_layers=..., or use a model whose "
            "config has num_hidden_layers"
        )
    if use_layer_decay and layer_id_fn is None:
        # The model knows its own layers (a conv stem below block 0, a decoder beside the head); a name
        # pattern would put CAT's stem at the head's full rate and read a decoder's `layers.N` as blocks.
        layer_id_fn = getattr(model, "get_layer_id", None) or partial(default_layer_id, num_layers=num_layers)
    exempt = _no_weight_decay_names(model)

    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer_id = layer_id_fn(name) if use_layer_decay else 0
        if use_layer_decay and not 0 <= layer_id <= num_layers + 1:
            raise ValueError(f"layer_id_fn({name!r}) returned {layer_id}, outside 0..{num_layers + 1}")
        no_decay = _is_exempt_from_weight_decay(name, param, exempt)
        key = (layer_id, no_decay)
        if key not in groups:
            scale = layer_decay ** (num_layers + 1 - layer_id) if use_layer_decay else 1.0
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
                "layer_id": layer_id,
            }
        groups[key]["params"].append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return [groups[key] for key in sorted(groups)]


def build_optimizer(
    param_groups: Iterable[dict],
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; each group's lr is ``learning_rate * group.get("lr_scale", 1)``."""
    groups = []
    for group in param_groups:
        group = dict(group)
        group.setdefault("lr_scale", 1.0)
        group.setdefault("weight_decay", weight_decay)
        group["lr"] = learning_rate * group["lr_scale"]
        groups.append(group)
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, weight_decay=weight_decay)


def lr_multiplier(
    step: int, max_steps: int, warmup_steps: int, schedule: str = "cosine", min_ratio: float = 0.0
) -> float:
    """Factor applied to each group's base lr before optimizer step ``step + 1`` (``step`` counts done steps).

    Linear warmup from 0 over ``warmup_steps``, then ``cosine`` or ``linear`` decay to ``min_ratio``
    (= min lr / lr) at ``max_steps``, or ``constant``.
    """
    if schedule not in DECAY_SCHEDULES:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {DECAY_SCHEDULES}")
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        decay = 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    learning_rate: float | None = None,
    min_learning_rate: float = 0.0,
    eden_lr_batches: float | None = None,
    eden_lr_epochs: float | None = None,
    eden_steps_per_epoch: float | None = None,
) -> LRScheduler:
    """Warmup + decay schedule stepped once per optimizer step.

    ``min_learning_rate`` is the floor of the unscaled (head) rate; layer-decayed groups keep their ratio,
    as in MAE's ``lr_sched``.

    ``schedule="eden"`` builds :class:`~hf_audiorep.training.scaled_adam.Eden` instead (``eden_lr_batches``
    and ``eden_lr_epochs`` required, ``warmup_steps`` as its warmup from half the rate, ``max_steps`` and the
    minimum unused): each group decays from the lr it has now.
    """
    if schedule == "eden":
        if eden_lr_batches is None or eden_lr_epochs is None:
            raise ValueError(
                "lr_scheduler 'eden' needs eden_lr_batches and eden_lr_epochs: build it with "
                "scheduler_from_args(optimizer, args), or pass them"
            )
        return Eden(
            optimizer,
            lr_batches=eden_lr_batches,
            lr_epochs=eden_lr_epochs,
            steps_per_epoch=eden_steps_per_epoch,
            warmup_batches=warmup_steps,
        )
    if schedule not in DECAY_SCHEDULES:
        raise ValueError(f"unknown lr_scheduler {schedule!r}; expected one of {LR_SCHEDULERS}")
    if learning_rate is None:
        learning_rate = max(group["lr"] for group in optimizer.param_groups)
    min_ratio = min_learning_rate / learning_rate if learning_rate > 0 else 0.0

    # A plain function (not a lambda object with state) so LambdaLR.state_dict() stores nothing for it:
    # resuming restores only step counters and lrs, all plain numbers.
    def factor(step: int) -> float:
        return lr_multiplier(step, max_steps, warmup_steps, schedule, min_ratio)

    return LambdaLR(optimizer, factor)


def build_scaled_adam(
    params_or_groups: nn.Module | Iterable,
    learning_rate: float,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-8,
    **kwargs,
) -> ScaledAdam:
    """:class:`~hf_audiorep.training.scaled_adam.ScaledAdam` over a model's trainable parameters (one group)
    or over param-group dicts, whose ``lr_scale`` (default 1) multiplies ``learning_rate``; a group's
    ``weight_decay`` is ignored (ScaledAdam has none). ``kwargs`` go to ScaledAdam (``clipping_scale``...)."""
    if isinstance(params_or_groups, nn.Module):
        params = [p for p in params_or_groups.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
        groups = [{"params": params}]
    else:
        groups = [dict(g) if isinstance(g, dict) else {"params": [g]} for g in params_or_groups]
    for group in groups:
        group.pop("weight_decay", None)
        group.setdefault("lr_scale", 1.0)
        group["lr"] = learning_rate * group["lr_scale"]
    return ScaledAdam(groups, lr=learning_rate, betas=betas, eps=eps, **kwargs)


def optimizer_from_args(model: nn.Module, args) -> torch.optim.Optimizer:
    """The optimizer ``args.optimizer`` names, over ``model`` (a ``TrainLoop`` ``optimizer_fn``).

    ``adamw``: :func:`build_param_groups` (weight-decay exemptions, ``args.layer_decay``) and
    :func:`build_optimizer`. ``scaled_adam``: all trainable parameters in one group at
    ``args.learning_rate``, ``args.adam_beta1``, ``args.adam_epsilon`` and the ``args.scaled_adam_*`` fields.
    """
    if args.optimizer == "adamw":
        groups = build_param_groups(model, args.weight_decay, args.layer_decay)
        return build_optimizer(
            groups, args.learning_rate, args.weight_decay, args.adam_betas, args.adam_epsilon
        )
    if args.optimizer == "scaled_adam":
        return build_scaled_adam(
            model,
            args.learning_rate,
            betas=args.scaled_adam_betas,
            eps=args.adam_epsilon,
            clipping_scale=args.scaled_adam_clipping_scale,
            clipping_update_period=args.scaled_adam_clipping_update_period,
            scalar_lr_scale=args.scaled_adam_scalar_lr_scale,
            param_min_rms=args.scaled_adam_param_min_rms,
            param_max_rms=args.scaled_adam_param_max_rms,
        )
    raise ValueError(f"unknown optimizer {args.optimizer!r}; expected one of {OPTIMIZERS}")


def scheduler_from_args(optimizer: torch.optim.Optimizer, args) -> LRScheduler:
    """The schedule ``args.lr_scheduler`` names, on ``optimizer`` (a ``TrainLoop`` ``scheduler_fn``)."""
    return build_scheduler(
        optimizer,
        max_steps=args.max_steps,
        warmup_steps=args.num_warmup_steps,
        schedule=args.lr_scheduler,
        learning_rate=args.learning_rate,
        min_learning_rate=args.min_learning_rate,
        eden_lr_batches=args.eden_lr_batches,
        eden_lr_epochs=args.eden_lr_epochs,
        eden_steps_per_epoch=args.eden_steps_per_epoch,
    )
