"""Masked-autoencoder pre-training (AudioMAE): models that compute their own reconstruction loss.

A pre-training model (``XForPreTraining``, e.g. `AudioMAEForPreTraining`) takes spectrogram features and
returns ``loss``; the step only turns the waveform batch into features on the device, so labels in the
batch are ignored and any labelled or unlabelled source can feed it.
"""

from __future__ import annotations

import torch

from .features import waveform_features


class MaskedAutoencoderStep:
    """``step_fn(model, batch) -> (loss, logs)`` for masked-autoencoder pre-training (AudioMAE).

    Args:
        feature_extractor: computes ``(input_values, attention_mask)`` on the batch's device
            (``batch_features``), e.g. `AudioFbankFeatureExtractor`.
        mask_ratio: fraction of patches hidden per clip; ``None`` uses the model config's.

    The masks are drawn inside the model from torch's global RNG, which the loop seeds per rank and
    restores on resume. AudioMAE pre-trains without mixup or SpecAugment (masking is the augmentation).
    """

    def __init__(self, feature_extractor, mask_ratio: float | None = None):
        if not hasattr(feature_extractor, "batch_features"):
            raise TypeError(
                f"feature_extractor must have batch_features(waveforms, lengths), got "
                f"{type(feature_extractor).__name__}"
            )
        if mask_ratio is not None and not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.feature_extractor = feature_extractor
        self.mask_ratio = mask_ratio

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        input_values, attention_mask = waveform_features(
            self.feature_extractor, batch["waveforms"], batch["lengths"]
        )
        outputs = model(input_values=input_values, attention_mask=attention_mask, mask_ratio=self.mask_ratio)
        if getattr(outputs, "loss", None) is None:
            raise TypeError(
                f"{type(model).__name__} returned no loss: MaskedAutoencoderStep needs an "
                "XForPreTraining model"
            )
        return outputs.loss, {}


@torch.no_grad()
def evaluate_reconstruction(
    model, batches, feature_extractor, accelerator=None, prefix: str = "eval_", seed: int = 0
) -> dict[str, float]:
    """Mean reconstruction loss of a pre-training model over ``batches``, across every process.

    The masks come from a generator seeded with ``seed`` (and the rank), so two evaluations of the same
    weights give the same number and the curve over training is not masking noise. Batches are weighted
    by their number of clips.
    """
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    rank = accelerator.process_index if accelerator is not None else 0
    generator = torch.Generator().manual_seed(seed + rank)
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of loss * clips, clips)
    try:
        for batch in batches:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
            input_values, attention_mask = waveform_features(
                feature_extractor, batch["waveforms"], batch["lengths"]
            )
            loss = model(input_values=input_values, attention_mask=attention_mask, generator=generator).loss
            clips = input_values.shape[0]
            totals += torch.stack([loss.double() * clips, loss.new_tensor(clips, dtype=torch.float64)])
    finally:
        model.train(was_training)
    if accelerator is not None and accelerator.num_processes > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    if totals[1] == 0:
        raise ValueError("the evaluation stream produced no clips")
    return {
        f"{prefix}reconstruction_loss": (totals[0] / totals[1]).item(),
        f"{prefix}num_clips": int(totals[1]),
    }
