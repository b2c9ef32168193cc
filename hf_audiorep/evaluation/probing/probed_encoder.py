"""The frozen encoder and a trained probe head end to end: logits from waveforms, without a cache."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import LayerFeatureEncoder
from .heads import ProbeHead

__all__ = ["ProbedEncoder"]


class ProbedEncoder(nn.Module):
    """``forward(waveforms, lengths, sample_rate) -> logits`` of ``head`` on ``encoder``'s features.

    The encoder is a `LayerFeatureEncoder`, which is not an ``nn.Module``: it never enters this module's
    parameters, state dict or optimizer, and its features are computed without gradient, so a loss on the
    logits trains the head alone. ``storage_dtype`` rounds the features as the cache stores them (float16), so
    these logits are the ones the head gives on a cache of the same clips; None keeps them in float32.
    """

    def __init__(
        self, encoder: LayerFeatureEncoder, head: ProbeHead, storage_dtype: torch.dtype | None = torch.float16
    ):
        super().__init__()
        if not isinstance(encoder, LayerFeatureEncoder):
            raise TypeError(f"encoder must be a LayerFeatureEncoder, got {type(encoder).__name__}")
        self.encoder, self.head, self.storage_dtype = encoder, head, storage_dtype

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
        features, token_mask = self.encoder.layer_features(waveforms, lengths, sample_rate)
        if self.storage_dtype is not None:
            features = features.to(self.storage_dtype).float()
        return self.head(features, token_mask)
