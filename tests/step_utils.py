"""A tiny feature extractor, batches and a recording model for testing training steps
(hf_audiorep/objectives) without a real encoder."""

import torch

from hf_audiorep.modeling import AudioFbankFeatureExtractor

FRAMES, BINS, CLASSES = 64, 32, 4


class StepModel(torch.nn.Module):
    """Records its inputs; logits are a fixed linear map of the mean feature."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(BINS, CLASSES)
        self.seen = []

    def forward(self, input_values, attention_mask=None):
        self.seen.append((input_values, attention_mask))
        return type("Output", (), {"logits": self.head(input_values.mean(1))})()


def extractor(**overrides):
    return AudioFbankFeatureExtractor(num_mel_bins=BINS, target_length=FRAMES, **overrides)


def waveform_batch(batch=8, seconds=0.66, short=None):
    generator = torch.Generator().manual_seed(0)
    samples = int(seconds * 16000)
    waveforms = torch.randn(batch, samples, generator=generator) * 0.1
    lengths = torch.full((batch,), samples)
    if short is not None:
        lengths[0] = short
        waveforms[0, short:] = 0
    labels = torch.eye(CLASSES)[torch.arange(batch) % CLASSES]
    return {"waveforms": waveforms, "lengths": lengths, "labels": labels}


def clean_features(fe, batch):
    return fe.batch_features(batch["waveforms"], batch["lengths"])
