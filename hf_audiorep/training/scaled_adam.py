"""ScaledAdam and the Eden schedule: the optimizer Zipformer is trained with (Yao et al., 2023; icefall).

ScaledAdam is Adam whose update of each non-scalar parameter tensor is multiplied by that tensor's
root-mean-square value, so that a step changes every tensor by the same *relative* amount whatever its
scale, and which also learns each tensor's scale explicitly (as if ``p = p_unit * exp(s)`` with a learned
scalar ``s`` per tensor, updated with its own Adam at ``lr * scalar_lr_scale``). Written from the paper and
the description of icefall's ``zipformer/optim.py``; the reference's stacking of same-shaped tensors into
batches is a speed detail left out here: the per-tensor loop uses ``torch._foreach_*`` where it is cheap.

Differences from the reference, on purpose:

- Gradient clipping is computed over the whole model (every group), which is what the reference documents;
  its code clips each parameter group on its own. With one group they agree.
- Adam's second-moment bias correction is always applied (the reference skips it once it is within 1%).
- The lower-median of the recent norms is the clipping threshold's median (the reference takes the sorted
  norm at index ``2 * (n // 4)``).

There is no weight decay: the learned scale and ``param_max_rms`` are what keeps the norms in check, so the
weight-decay exemptions and the layer-wise lr decay of the AdamW path do not apply (groups may still carry an
``lr_scale``, which :func:`hf_audiorep.training.optim.build_optimizer` folds into each group's ``lr``).

Eden (:class:`Eden`) is the schedule ScaledAdam is tuned with:
``lr = base_lr * ((b² + B²) / B²) ** -0.25 * ((e² + E²) / E²) ** -0.25 * warmup(b)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

logger = logging.getLogger(__name__)

#: the early steps at which a first clipping threshold is estimated, before ``clipping_update_period``
#: norms exist (at twice the usual threshold, as norms still move fast then)
_EARLY_CLIPPING_ESTIMATES = (10, 20, 40)


class ScaledAdam(Optimizer):
    """Adam with updates scaled by each parameter tensor's RMS, a learned scale per tensor, and gradient
    clipping relative to the median gradient norm of recent steps.

    For a tensor ``p`` with more than one element, one step is::

        v      <- beta2 v + (1 - beta2) g²                      (Adam's second moment, bias-corrected)
        delta  =  -lr * g / (sqrt(v_hat) + eps) * max(rms(p), param_min_rms)
        delta  += p * scale_step                                  (every size_update_period steps)
        m      <- beta1 m + (1 - beta1) delta                     (momentum on the update; no correction)
        p      <- p + m

    ``rms(p)`` is refreshed every ``size_update_period`` steps. ``scale_step`` is an Adam step on the
    log-scale of ``p``, whose gradient is ``sum(p * g)``, accumulated over the period, at ``lr *
    scalar_lr_scale``; it is bounded to ±0.1 per update, is zero while ``rms(p) < param_min_rms``
    and never takes ``rms(p)`` above ``param_max_rms``. A tensor with one element (a scalar parameter) gets
    plain Adam at ``lr * scalar_lr_scale``, with the same momentum, and is clamped to ``[-scalar_max,
    scalar_max]``.

    Clipping (``clipping_scale`` not None): the norm of the gradients "as the update sees them" (each tensor's
    gradient times its ``rms``, scalars' times ``scalar_lr_scale``) is recorded every step; every
    ``clipping_update_period`` steps (and at steps 10, 20, 40 with twice the threshold) the threshold becomes
    ``clipping_scale`` times the median of the recorded norms, and a step whose norm exceeds it has its
    gradients scaled down to it. A non-finite norm zeroes the step's gradients.

    Args:
        params: parameters or param-group dicts (each group may set any of the keyword arguments below but
            the two clipping ones, which are the optimizer's).
        lr: learning rate; with the Eden schedule typically 0.045 (Auden's UTS) or 0.04-0.05 (icefall).
        betas: momentum and second-moment coefficients.
        eps: added to Adam's denominator.
        scalar_lr_scale: lr factor of scalar parameters and of each tensor's learned scale.
        param_min_rms, param_max_rms: bounds of each tensor's RMS as far as the learned scale goes; also the
            floor of the RMS the update is multiplied by.
        scalar_max: bound of the absolute value of scalar parameters.
        size_update_period: steps between refreshes of ``rms(p)`` and updates of the learned scale.
        clipping_scale: clip to this times the median recent norm; None disables clipping.
        clipping_update_period: steps between estimates of the threshold (and the window of norms it uses).

    ``state_dict()`` holds tensors and plain numbers only (the clipping history as a list of floats under
    ``"clipping"``), so checkpoints read back with ``torch.load(weights_only=True)`` restore it exactly.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.045,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        scalar_lr_scale: float = 0.1,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_scale: float | None = 2.0,
        clipping_update_period: int = 100,
    ):
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not scalar_lr_scale > 0:
            raise ValueError(f"scalar_lr_scale must be > 0, got {scalar_lr_scale}")
        if not 0 < param_min_rms < param_max_rms:
            raise ValueError(
                f"need 0 < param_min_rms < param_max_rms, got {param_min_rms} and {param_max_rms}"
            )
        if not scalar_max > 0:
            raise ValueError(f"scalar_max must be > 0, got {scalar_max}")
        for name, value in (
            ("size_update_period", size_update_period),
            ("clipping_update_period", clipping_update_period),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if clipping_scale is not None and not clipping_scale > 0:
            raise ValueError(f"clipping_scale must be > 0 or None, got {clipping_scale}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            scalar_lr_scale=scalar_lr_scale,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
        )
        super().__init__(params, defaults)
        self.clipping_scale = clipping_scale
        self.clipping_update_period = clipping_update_period
        self._clipping = _fresh_clipping_state()

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["clipping"] = {**self._clipping, "norms": list(self._clipping["norms"])}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        clipping = state_dict.pop("clipping", None)
        super().load_state_dict(state_dict)
        self._clipping = _fresh_clipping_state()
        if clipping is not None:
            self._clipping.update(clipping)
            self._clipping["norms"] = [float(x) for x in clipping["norms"]]

    # ------------------------------------------------------------------------------------------- step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [(group, [p for p in group["params"] if p.grad is not None]) for group in self.param_groups]
        for group, params in groups:
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
                if "step" not in self.state[p]:
                    self._init_state(group, p)
        if not any(params for _, params in groups):
            return loss
        factor = self._clipping_factor(groups)
        for group, params in groups:
            if params:
                self._update_group(group, params, factor)
        return loss

    def _init_state(self, group: dict, p: torch.Tensor) -> None:
        state = self.state[p]
        # A CPU float tensor under "step", as torch's own optimizers keep it: load_state_dict leaves it there.
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.numel() > 1:
            state["param_rms"] = _rms(p).to(p.dtype)
            state["scale_exp_avg_sq"] = torch.zeros((), dtype=p.dtype, device=p.device)
            state["scale_grads"] = torch.zeros(group["size_update_period"], dtype=p.dtype, device=p.device)

    def _clipping_factor(self, groups) -> float:
        """The factor this step's gradients are multiplied by (1 = not clipped)."""
        if self.clipping_scale is None:
            return 1.0
        clipping = self._clipping
        step = clipping["step"]
        clipping["step"] = step + 1
        if step == 0:
            return 1.0  # nothing to compare with yet
        # |g * rms|² = rms² |g|²: one foreach norm, one weight per tensor.
        grads, weights = [], []
        for group, params in groups:
            for p in params:
                grads.append(p.grad)
                weights.append(
                    self.state[p]["param_rms"].float() if p.numel() > 1 else group["scalar_lr_scale"]
                )
        norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
        scale = torch.stack([torch.as_tensor(w, device=norms.device, dtype=torch.float32) for w in weights])
        total = float(((norms * scale) ** 2).sum().sqrt())  # the step's one host sync
        period = self.clipping_update_period
        recorded = clipping["norms"]
        if len(recorded) < period:
            recorded.append(total)
        else:
            recorded[step % period] = total
        early = step in _EARLY_CLIPPING_ESTIMATES and step < period
        if step % period == 0 or early:
            values = sorted(recorded)
            median = values[(len(values) - 1) // 2]
            if not math.isfinite(median):
                raise RuntimeError("ScaledAdam: too many gradients were not finite (median gradient norm)")
            threshold = self.clipping_scale * median * (2.0 if early else 1.0)
            quartiles = " ".join(
                f"{values[min(len(values) - 1, (len(values) - 1) * q // 4)]:.3e}" for q in range(5)
            )
            logger.info(
                f"ScaledAdam clipping: grad-norm quartiles {quartiles}, threshold {threshold:.3e}, "
                f"{100.0 * clipping['num_clipped'] / len(values):.1f}% of recent steps clipped"
            )
            clipping["threshold"], clipping["num_clipped"] = threshold, 0
        threshold = clipping["threshold"]
        if not math.isfinite(total):
            return 0.0
        if threshold is None:
            return 1.0
        factor = min(1.0, threshold / (total + 1e-20))
        if factor < 1.0:
            clipping["num_clipped"] += 1
        return factor

    def _update_group(self, group: dict, params: list[torch.Tensor], factor: float) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        period = group["size_update_period"]
        states = [self.state[p] for p in params]
        if factor == 1.0:
            grads = [p.grad for p in params]
        elif factor == 0.0:
            grads = [torch.zeros_like(p) for p in params]  # a non-finite step: no gradient, moments decay
        else:
            grads = torch._foreach_mul([p.grad for p in params], factor)
        steps = [int(s["step"]) for s in states]

        # Adam's second moment and the normalised gradient g / (sqrt(v_hat) + eps), for all tensors at once.
        exp_avg_sq = [s["exp_avg_sq"] for s in states]
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, value=1.0 - beta2)
        bias_correction2 = [1.0 - beta2 ** (t + 1) for t in steps]
        denom = torch._foreach_div(exp_avg_sq, bias_correction2)
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, eps)
        deltas = torch._foreach_div(grads, denom)

        for p, grad, state, step, delta in zip(params, grads, states, steps, deltas, strict=True):
            if p.numel() == 1:
                delta.mul_(-lr * group["scalar_lr_scale"])
            else:
                delta.mul_(self._scaled_step_size(group, p, grad, state, step))
                if step % period == period - 1 and step > 0:
                    delta.add_(p * self._scale_step(group, state, step))
        exp_avg = [s["exp_avg"] for s in states]
        torch._foreach_mul_(exp_avg, beta1)
        torch._foreach_add_(exp_avg, deltas, alpha=1.0 - beta1)
        torch._foreach_add_(params, exp_avg)
        for p, state in zip(params, states, strict=True):
            if p.numel() == 1:
                p.clamp_(-group["scalar_max"], group["scalar_max"])
            state["step"] += 1

    @staticmethod
    def _scaled_step_size(group: dict, p: torch.Tensor, grad: torch.Tensor, state: dict, step: int):
        """``-lr * max(rms(p), param_min_rms)`` (0-d tensor); records the log-scale gradient on the way."""
        period = group["size_update_period"]
        # d loss / d s for p = p_unit * exp(s), summed over the period before the scale is updated.
        state["scale_grads"][step % period] = (p * grad).sum()
        if step % period == period - 1:
            state["param_rms"].copy_(_rms(p))
        return state["param_rms"].clamp(min=group["param_min_rms"]) * -group["lr"]

    @staticmethod
    def _scale_step(group: dict, state: dict, step: int) -> torch.Tensor:
        """The relative change of the tensor's scale (a 0-d tensor), one Adam step every period."""
        period, beta2, eps = group["size_update_period"], group["betas"][1], group["eps"]
        scale_grads, param_rms = state["scale_grads"], state["param_rms"]
        # beta2 per period, so that the memory in steps matches the parameter's own Adam.
        beta2_period = beta2**period
        exp_avg_sq = state["scale_exp_avg_sq"]
        exp_avg_sq.mul_(beta2_period).add_((scale_grads**2).mean(), alpha=1.0 - beta2_period)
        num_updates = (step + 1) // period
        bias_correction2 = 1.0 - beta2_period**num_updates
        scale_lr = group["lr"] * group["scalar_lr_scale"]
        scale_step = -scale_lr * math.sqrt(bias_correction2) * scale_grads.sum() / (exp_avg_sq.sqrt() + eps)
        # No scale step for a tensor below the floor, at most 10% per update, never above the ceiling.
        scale_step = torch.where(param_rms < group["param_min_rms"], torch.zeros_like(scale_step), scale_step)
        scale_step = scale_step.clamp(-0.1, 0.1)
        return torch.minimum(scale_step, (group["param_max_rms"] - param_rms) / param_rms)


def _fresh_clipping_state() -> dict:
    return {"step": 0, "norms": [], "threshold": None, "num_clipped": 0}


def _rms(p: torch.Tensor) -> torch.Tensor:
    return p.detach().float().pow(2).mean().sqrt()


class Eden(LRScheduler):
    """The Eden schedule, stepped once per optimizer step::

        lr = base_lr * ((b² + B²) / B²) ** -0.25 * ((e² + E²) / E²) ** -0.25 * warmup(b)
        warmup(b) = warmup_start + (1 - warmup_start) * b / warmup_batches   for b < warmup_batches, else 1

    ``b`` is the number of optimizer steps taken, ``B = lr_batches``, ``E = lr_epochs``. The loop counts
    steps, not epochs, so ``e`` is a fractional epoch, ``b / steps_per_epoch``: the same curve as icefall's
    integer epoch count, without its steps at epoch boundaries, and exact across resume (the step is the only
    state). ``steps_per_epoch=None`` leaves the epoch factor out (``e = 0``), as for an endless stream
    (Auden's ``lr_steps_per_epoch: 0``; Auden then switches to Eden2, a batch factor with exponent -0.5, which
    this class does not provide). Each group's ``base_lr`` is its ``lr`` when the schedule is built, so
    per-group lr scales are kept.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        lr_batches: float = 7500.0,
        lr_epochs: float = 3.5,
        steps_per_epoch: float | None = None,
        warmup_batches: float = 500.0,
        warmup_start: float = 0.5,
        last_epoch: int = -1,
    ):
        if not lr_batches > 0:
            raise ValueError(f"lr_batches must be > 0, got {lr_batches}")
        if not lr_epochs > 0:
            raise ValueError(f"lr_epochs must be > 0, got {lr_epochs}")
        if steps_per_epoch is not None and not steps_per_epoch > 0:
            raise ValueError(f"steps_per_epoch must be > 0 or None, got {steps_per_epoch}")
        if not warmup_batches >= 0:
            raise ValueError(f"warmup_batches must be >= 0, got {warmup_batches}")
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start must be in [0, 1], got {warmup_start}")
        self.lr_batches = float(lr_batches)
        self.lr_epochs = float(lr_epochs)
        self.steps_per_epoch = None if steps_per_epoch is None else float(steps_per_epoch)
        self.warmup_batches = float(warmup_batches)
        self.warmup_start = float(warmup_start)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of each group's ``base_lr`` after ``step`` optimizer steps."""
        batch_factor = ((step**2 + self.lr_batches**2) / self.lr_batches**2) ** -0.25
        epoch = 0.0 if self.steps_per_epoch is None else step / self.steps_per_epoch
        epoch_factor = ((epoch**2 + self.lr_epochs**2) / self.lr_epochs**2) ** -0.25
        if step < self.warmup_batches:
            warmup = self.warmup_start + (1.0 - self.warmup_start) * step / self.warmup_batches
        else:
            warmup = 1.0
        return batch_factor * epoch_factor * warmup

    def get_lr(self) -> list[float]:
        # last_epoch is torch's name for the number of times step() was called: our optimizer steps.
        factor = self.factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]
