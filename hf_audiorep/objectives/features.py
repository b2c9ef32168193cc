"""Waveforms to model features on the device, shared by every objective that starts from audio."""

from __future__ import annotations

import torch


def waveform_features(
    feature_extractor, waveforms: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``feature_extractor.batch_features`` of a padded batch: ``(input_values, attention_mask)``.

    The filterbank stays in float32 under autocast: log-mels of bf16 waveforms lose the quiet bands.
    """
    with torch.autocast(waveforms.device.type, enabled=False):
        return feature_extractor.batch_features(waveforms.float(), lengths)
