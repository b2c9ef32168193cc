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


def logits_and_embedding(
    classifier, features: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A classifier's logits and its base encoder's clip embedding (``pooler_output``) from one forward.

    The embedding is caught on its way into the head (a forward hook on ``classifier.base_model``), so the
    contrastive and distillation losses that need it do not run the encoder twice.
    """
    caught = {}
    hook = classifier.base_model.register_forward_hook(
        lambda module, args, output: caught.__setitem__("pooled", output.pooler_output)
    )
    try:
        logits = classifier(input_values=features, attention_mask=mask).logits
    finally:
        hook.remove()
    return logits, caught["pooled"]


def embedding_width(config) -> int:
    """Width of a model's clip embedding (``pooler_output``): its ``embedding_size`` when the family has one
    (CP-Mobile's ContrastASC layout), else ``hidden_size``."""
    return getattr(config, "embedding_size", None) or config.hidden_size
