"""An fp32 exponential moving average of a model, with the decay ramps used by bootstrap SSL.

The EMA is a frozen copy of the model, so it can be called directly as the teacher of data2vec/EAT-style
pretraining (CAT, BAT) or evaluated in place of the student. After every optimizer step:
``ema <- decay * ema + (1 - decay) * model``, where ``decay`` moves from ``decay`` to ``end_decay`` over
``ramp_steps`` updates (linear as in data2vec/EAT, or cosine as in BYOL) and stays there.

Checkpointing: pass it to ``TrainLoop(extra_state={"ema": ema})``; ``state_dict()`` is a flat dict of tensors
plus an int, which the loop stores as safetensors + JSON (no pickle).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

EMA_RAMPS = ("linear", "cosine")
_MODULE_PREFIX = "module."


class ModelEMA:
    """fp32 exponential moving average of ``model``'s parameters and floating-point buffers.

    Args:
        model: the student (unwrapped, i.e. not DDP); it is deep-copied, so build the EMA before
            ``accelerator.prepare`` patches the model's ``forward``.
        decay: decay at the first update.
        end_decay: decay reached after ``ramp_steps`` updates; ``None`` keeps ``decay`` throughout.
        ramp_steps: length of the ramp in updates (optimizer steps).
        ramp: ``"linear"`` (data2vec, EAT) or ``"cosine"`` (BYOL).
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        end_decay: float | None = None,
        ramp_steps: int = 0,
        ramp: str = "linear",
    ):
        for name, value in (("decay", decay), ("end_decay", end_decay)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if ramp not in EMA_RAMPS:
            raise ValueError(f"ramp must be one of {EMA_RAMPS}, got {ramp!r}")
        if ramp_steps < 0:
            raise ValueError(f"ramp_steps must be >= 0, got {ramp_steps}")
        if end_decay is not None and end_decay != decay and ramp_steps == 0:
            raise ValueError("end_decay differs from decay but ramp_steps is 0: set ramp_steps > 0")
        self.decay = decay
        self.end_decay = decay if end_decay is None else end_decay
        self.ramp_steps = ramp_steps
        self.ramp = ramp
        self.num_updates = 0
        self.module = copy.deepcopy(_unwrap(model)).float().eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """Decay used by the update that follows ``step`` earlier updates."""
        if step >= self.ramp_steps:
            return self.end_decay
        progress = step / self.ramp_steps
        if self.ramp == "linear":
            remaining = 1.0 - progress
        else:
            remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.end_decay - (self.end_decay - self.decay) * remaining

    @property
    def current_decay(self) -> float:
        return self.decay_at(self.num_updates)

    def _tensor_pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list, list]:
        model = _unwrap(model)
        mine = dict(self.module.named_parameters())
        mine.update(self.module.named_buffers())
        theirs = dict(model.named_parameters())
        theirs.update(model.named_buffers())
        if mine.keys() != theirs.keys():
            missing = sorted(mine.keys() ^ theirs.keys())[:5]
            raise ValueError(f"the model does not match the EMA copy; differing tensors: {missing}")
        float_pairs = [(mine[k], theirs[k]) for k in mine if mine[k].is_floating_point()]
        other_pairs = [(mine[k], theirs[k]) for k in mine if not mine[k].is_floating_point()]
        return (
            [e for e, _ in float_pairs],
            [m.detach() for _, m in float_pairs],
            [e for e, _ in other_pairs],
            [m.detach() for _, m in other_pairs],
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average toward ``model`` by one step; returns the decay that was used."""
        decay = self.current_decay
        ema_float, model_float, ema_other, model_other = self._tensor_pairs(model)
        if ema_float and ema_float[0].device != model_float[0].device:
            # The EMA is usually built before the model moves to the accelerator: follow it there once.
            self.module.to(model_float[0].device)
            ema_float, model_float, ema_other, model_other = self._tensor_pairs(model)
        if ema_float:
            # Under mixed precision the student may hold bf16/fp16 copies; the average stays fp32.
            sources = [t.float() for t in model_float]
            torch._foreach_lerp_(ema_float, sources, 1.0 - decay)
        for ema_tensor, model_tensor in zip(ema_other, model_other, strict=True):
            ema_tensor.copy_(model_tensor)  # integer counters (e.g. BatchNorm's) are copied, not averaged
        self.num_updates += 1
        return decay

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into ``model`` (e.g. to evaluate or save the EMA)."""
        ema_float, model_float, ema_other, model_other = self._tensor_pairs(model)
        for source, target in zip(ema_float + ema_other, model_float + model_other, strict=True):
            target.copy_(source)

    def state_dict(self) -> dict:
        state: dict = {_MODULE_PREFIX + k: v for k, v in self.module.state_dict().items()}
        state["num_updates"] = self.num_updates
        return state

    def load_state_dict(self, state: dict) -> None:
        module_state = {k[len(_MODULE_PREFIX) :]: v for k, v in state.items() if k.startswith(_MODULE_PREFIX)}
        self.module.load_state_dict(module_state)
        self.num_updates = int(state["num_updates"])


def _unwrap(model: nn.Module) -> nn.Module:
    # (Distributed)DataParallel keep the user's model in `.module`.
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model
