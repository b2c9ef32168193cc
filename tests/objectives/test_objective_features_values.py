"""`objectives/features.py`: the filterbank in float32 outside autocast, one forward giving a classifier's
logits and its encoder's clip embedding (the hook removed even when the forward fails), the embedding
width."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_audiorep.objectives.features import embedding_width, logits_and_embedding, waveform_features


class _RecordingExtractor:
    def __init__(self):
        self.seen = {}

    def batch_features(self, waveforms, lengths):
        self.seen = {
            "dtype": waveforms.dtype,
            "autocast": torch.is_autocast_enabled("cpu"),
            "lengths": lengths,
            "waveforms": waveforms,
        }
        return waveforms * 2, lengths + 1


def test_waveform_features_run_the_filterbank_in_float32_outside_autocast():
    extractor = _RecordingExtractor()
    waveforms = torch.randn(2, 8).to(torch.bfloat16)
    lengths = torch.tensor([8, 5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        values, mask = waveform_features(extractor, waveforms, lengths)
    assert extractor.seen["dtype"] == torch.float32 and extractor.seen["autocast"] is False
    assert extractor.seen["lengths"] is lengths
    torch.testing.assert_close(extractor.seen["waveforms"], waveforms.float())
    torch.testing.assert_close(values, waveforms.float() * 2)
    assert mask.tolist() == [9, 6]


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 4)

    def forward(self, input_values, attention_mask):
        pooled = (self.proj(input_values) * attention_mask[..., None]).sum(1)
        return SimpleNamespace(pooler_output=pooled)


class _Classifier(nn.Module):
    def __init__(self, fail=False):
        super().__init__()
        self.base_model, self.head, self.fail = _Encoder(), nn.Linear(4, 2), fail
        self.calls = 0

    def forward(self, input_values, attention_mask):
        self.calls += 1
        pooled = self.base_model(input_values, attention_mask).pooler_output
        if self.fail:
            raise RuntimeError("the head failed")
        return SimpleNamespace(logits=self.head(pooled))


def test_logits_and_the_encoders_embedding_come_from_one_forward():
    torch.manual_seed(0)
    classifier = _Classifier()
    features, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    logits, embedding = logits_and_embedding(classifier, features, mask)
    assert classifier.calls == 1
    expected = (classifier.base_model.proj(features) * mask[..., None]).sum(1)
    torch.testing.assert_close(embedding, expected)
    torch.testing.assert_close(logits, classifier.head(expected))
    assert not classifier.base_model._forward_hooks  # the hook is gone after the call


def test_the_hook_is_removed_when_the_forward_fails():
    classifier = _Classifier(fail=True)
    with pytest.raises(RuntimeError, match="the head failed"):
        logits_and_embedding(classifier, torch.randn(1, 2, 3), torch.ones(1, 2))
    assert not classifier.base_model._forward_hooks


def test_embedding_width_is_the_embedding_size_when_the_family_has_one():
    assert embedding_width(SimpleNamespace(embedding_size=128, hidden_size=64)) == 128
    assert embedding_width(SimpleNamespace(embedding_size=None, hidden_size=64)) == 64
    assert embedding_width(SimpleNamespace(hidden_size=64)) == 64
