"""The frozen encoder and a trained probe head end to end: logits from waveforms, without a cache."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import LayerFeatureEncoder
from .heads import ProbeHead, load_probe_head

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

    @classmethod
    def from_saved_head(
        cls,
        encoder: LayerFeatureEncoder,
        directory: str | Path,
        storage_dtype: torch.dtype | None = torch.float16,
    ) -> ProbedEncoder:
        """``encoder`` with the head `save_probe_head` wrote to ``directory``, the encoder set to the probed
        layers and token pooling that ``probe_config.json`` records (the head was trained on exactly those
        features: other ones give other logits)."""
        head, config = load_probe_head(directory)
        layers = config.get("layers", encoder.requested_layers)
        encoder.select(layers, int(config.get("token_pooling", 1)))
        return cls(encoder, head, storage_dtype)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
        features, token_mask = self.encoder.layer_features(waveforms, lengths, sample_rate)
        if self.storage_dtype is not None:
            features = features.to(self.storage_dtype).float()
        features, token_mask = self._pad_to_cache(features, token_mask)
        return self.head(features, token_mask)

    def _pad_to_cache(self, features: torch.Tensor, token_mask: torch.Tensor):
        # A batch of short clips has fewer tokens than the cache, which pads every clip to the full clip
        # length with masked tokens: padding the same way lets a centring head see its positions' count.
        means = getattr(self.head, "position_means", None)  # any module may serve as the head
        missing = 0 if means is None else means.shape[1] - features.shape[2]
        if missing <= 0:
            return features, token_mask
        return F.pad(features, (0, 0, 0, missing)), F.pad(token_mask, (0, missing), value=False)
