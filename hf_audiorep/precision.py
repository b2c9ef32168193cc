"""The number format a model runs in for inference: float32, or bfloat16 under autocast.

``hf-audiorep tag`` and the Space run their models through :func:`for_inference` with ``"auto"``: bfloat16
on a CPU with AMX tiles (oneDNN runs bf16 matrix products on them) for the families where that was measured
to pay (the registry's ``bf16_inference``: the ViTs and BEATs, not the Zipformer, whose many small
operations gain nothing), float32 anywhere else: without AMX, bfloat16 is emulated and slower than float32.
The other CPU paths measured for the Space (``torch.compile``, ONNX Runtime in float32 and int8, ``torch.ao``
dynamic int8) were either no faster than float32 or cost far more accuracy than bfloat16: docs/benchmarks.md,
"Fast CPU inference", has the table and its command (``benchmarks/bench_space.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import ARCHITECTURES

__all__ = ["PRECISIONS", "amx_available", "for_inference", "pays_in_bf16", "resolve_precision"]

#: what ``--precision`` accepts; "auto" resolves to one of the others (:func:`resolve_precision`)
PRECISIONS = ("auto", "fp32", "bf16")


def amx_available() -> bool:
    """Whether this CPU has AMX tiles (Intel Sapphire Rapids and later), where bf16 products are fast."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch: absent means unknown
    try:
        return bool(probe is not None and probe())
    except RuntimeError:
        return False


def pays_in_bf16(model_type: str | None) -> bool:
    """Whether bf16 was measured to speed this family up on an AMX CPU (the registry's ``bf16_inference``);
    False for a model of another library or of remote code."""
    return any(a.model_type == model_type and a.bf16_inference for a in ARCHITECTURES)


def resolve_precision(
    precision: str, device: str | torch.device = "cpu", model_type: str | None = None
) -> str:
    """``precision`` with "auto" replaced by what it means for a model of ``model_type`` on ``device``: "bf16"
    on an AMX CPU for the families where it pays (:func:`pays_in_bf16`), else "fp32".

    Raises ``ValueError`` for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        fast = device.type == "cpu" and amx_available() and pays_in_bf16(model_type)
        return "bf16" if fast else "fp32"
    return precision


class _Autocast(nn.Module):
    """Runs the wrapped model under bf16 autocast; ``config`` and attributes reach through to it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = getattr(model, "config", None)

    def forward(self, *args, **kwargs):
        device = next(self.model.parameters()).device.type
        with torch.autocast(device, dtype=torch.bfloat16):
            return self.model(*args, **kwargs)


def for_inference(model: nn.Module, precision: str = "auto") -> nn.Module:
    """``model`` in eval mode, ready to run at ``precision`` (``PRECISIONS``).

    "fp32" returns the model itself; "bf16" a thin wrapper that runs it under autocast (the weights stay
    float32, and the model itself is unchanged). The result's ``inference_precision`` says what was
    resolved. Outputs are read as from the model itself (bf16 tensors: callers take ``.float()``).
    """
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    config = getattr(model, "config", None)
    resolved = resolve_precision(precision, device, getattr(config, "model_type", None))
    model = model.eval()
    prepared = _Autocast(model).eval() if resolved == "bf16" else model
    prepared.inference_precision = resolved
    return prepared
