"""What a model costs on a device: its parameters and the multiply-accumulates (MACs) of one clip.

The DCASE low-complexity tracks, and ContrastASC's students, are sized by these two numbers. The MACs are
counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of the model (eval mode, no
gradient) over the features of a clip of ``seconds`` seconds:

* counted: the matrix products and convolutions (and attention kernels), at two FLOPs per multiply-accumulate,
  so ``macs = flops / 2``;
* not counted: element-wise work (norms, activations, pooling, residual sums, softmax) and the front end (the
  STFT and mel projection of the feature extractor), which the device computes apart from the model.

NeSsi / torchinfo, which the DCASE challenge reports with, also add each BatchNorm's parameter count to its
MACs; for the DCASE 2024 baseline that is 2,708 of its 29,419,156 MACs.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["model_cost"]


def _default_feature_extractor(model: torch.nn.Module, sampling_rate: int | None):
    """The registry's front end of the model's family, with the model's mel bins."""
    from ..registry import architecture_for

    config = model.config
    kwargs: dict[str, Any] = {}
    if getattr(config, "num_mel_bins", None) is not None:
        kwargs["num_mel_bins"] = config.num_mel_bins
    if sampling_rate is not None:
        kwargs["sampling_rate"] = sampling_rate
    return architecture_for(config.model_type).feature_extractor(**kwargs)


def model_cost(
    model: torch.nn.Module,
    feature_extractor=None,
    seconds: float = 1.0,
    sampling_rate: int | None = None,
) -> dict[str, Any]:
    """Parameters and MACs of ``model`` on one clip of ``seconds`` seconds.

    Args:
        model: an hf_audiorep model (or any module whose ``forward`` takes the feature extractor's output).
        feature_extractor: the front end that turns the clip into ``input_values``; default the registry's
            extractor of the model's family, with the config's ``num_mel_bins`` (a ViT's extractor pads to its
            ``target_length``, so its cost is that of a full-length input).
        seconds: clip duration; the clip is seeded noise (the count does not depend on its values).
        sampling_rate: rate of the clip; default the extractor's. Without ``feature_extractor``, the default
            extractor is built at this rate; with one, it must be the extractor's (nothing is resampled).

    Returns:
        ``{"parameters", "macs", "macs_per_module", "input_shape", "seconds", "sampling_rate"}``:
        ``parameters`` counts every parameter (trainable or not, without buffers such as BatchNorm's running
        statistics); ``macs`` is the forward pass's total; ``macs_per_module`` maps the name of each module
        inside ``model`` that does counted work to its MACs (its submodules' included); ``input_shape`` is the
        shape of ``input_values``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    if feature_extractor is None:
        feature_extractor = _default_feature_extractor(model, sampling_rate)
    rate = feature_extractor.sampling_rate if sampling_rate is None else sampling_rate
    num_samples = round(seconds * rate)
    device = next(model.parameters()).device
    clip = 0.1 * torch.randn(num_samples, generator=torch.Generator().manual_seed(0))
    features = feature_extractor(clip, sampling_rate=rate, return_tensors="pt", device=device)
    accepted = inspect.signature(model.forward).parameters
    inputs = {name: value for name, value in features.items() if name in accepted}

    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(**inputs)
    finally:
        model.train(was_training)

    root = type(model).__name__
    per_module = {}
    for name, counts in counter.get_flop_counts().items():
        if name.startswith(f"{root}."):
            per_module[name.removeprefix(f"{root}.")] = sum(counts.values()) // 2
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "macs": counter.get_total_flops() // 2,
        "macs_per_module": per_module,
        "input_shape": tuple(features["input_values"].shape),
        "seconds": float(seconds),
        "sampling_rate": int(rate),
    }
