"""Value tests of `hf_audiorep/evaluation/cost.py`: `model_cost` around a recording front end and small
modules whose multiply-accumulates are counted by hand (a linear layer on T frames of width i to width o is
T x i x o MACs), so the clip it makes, the inputs it passes, the mode it runs in, the per-module names, the
totals and the argument checks are each compared with a value written out here. Each test runs in
milliseconds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import hf_audiorep.registry
from hf_audiorep.evaluation.cost import model_cost


class RecordingExtractor:
    """A front end of 100-sample frames (their first 4 samples as 4 "bins"); records every call and returns
    an attention mask and an extra key beside ``input_values``."""

    def __init__(self, sampling_rate: int = 16000):
        self.sampling_rate = sampling_rate
        self.calls = []

    def __call__(self, clip, sampling_rate=None, return_tensors=None, device=None):
        self.calls.append(
            {"clip": clip, "sampling_rate": sampling_rate, "return_tensors": return_tensors, "device": device}
        )
        frames = max(clip.shape[0] // 100, 1)
        values = torch.nn.functional.pad(clip, (0, frames * 100 - clip.shape[0]))[: frames * 100]
        values = values.view(1, frames, 100)[..., :4]
        return {"input_values": values, "attention_mask": torch.ones(1, frames), "frame_rate": 160}


class Nested(torch.nn.Module):
    """4 -> 3 (a), then 3 -> 5 -> 2 (b.0, b.2), a frozen 2 -> 2 (c) and a BatchNorm's buffers; records its
    calls (keyword names, mode, gradient mode)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 3)
        self.b = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
        self.c = torch.nn.Linear(2, 2, bias=False).requires_grad_(False)
        self.norm = torch.nn.BatchNorm1d(2)
        self.calls = []

    def forward(self, input_values, attention_mask=None):
        self.calls.append(
            {"keys": (attention_mask is not None), "training": self.training, "grad": torch.is_grad_enabled()}
        )
        x = self.c(self.b(self.a(input_values)))
        return self.norm(x.transpose(1, 2))


# parameters of Nested: a 4*3+3, b.0 3*5+5, b.2 5*2+2, c 2*2, norm 2+2 (its running statistics are buffers)
NESTED_PARAMETERS = 15 + 20 + 12 + 4 + 4


def test_every_figure_of_a_nested_model_by_hand():
    model = Nested().eval()
    extractor = RecordingExtractor()
    cost = model_cost(model, extractor, seconds=0.05)  # 800 samples: 8 frames
    frames = 8
    assert cost == {
        "parameters": NESTED_PARAMETERS,
        "macs": frames * (4 * 3 + 3 * 5 + 5 * 2 + 2 * 2),
        "macs_per_module": {
            "a": frames * 12,
            "b": frames * 25,
            "b.0": frames * 15,
            "b.2": frames * 10,
            "c": frames * 4,
        },
        "input_shape": (1, frames, 4),
        "seconds": 0.05,
        "sampling_rate": 16000,
    }
    assert type(cost["seconds"]) is float and type(cost["sampling_rate"]) is int
    # MACs are whole numbers: the counter's FLOPs are two per multiply-accumulate
    assert type(cost["macs"]) is int and all(type(v) is int for v in cost["macs_per_module"].values())


def test_the_clip_is_seeded_noise_of_the_rounded_length_at_the_extractor_rate():
    extractor = RecordingExtractor(16000)
    model_cost(Nested(), extractor, seconds=0.0123)  # 196.8 samples: 197
    (call,) = extractor.calls
    expected = 0.1 * torch.randn(197, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(call["clip"], expected, rtol=0, atol=0)
    assert call["sampling_rate"] == 16000 and call["return_tensors"] == "pt"
    assert call["device"] == torch.device("cpu")


def test_a_given_rate_sets_the_clip_length_and_is_reported():
    extractor = RecordingExtractor(16000)
    cost = model_cost(Nested(), extractor, seconds=2, sampling_rate=8000)
    (call,) = extractor.calls
    assert call["clip"].shape == (16000,) and call["sampling_rate"] == 8000
    assert cost["sampling_rate"] == 8000 and cost["input_shape"] == (1, 160, 4)
    assert cost["seconds"] == 2.0 and type(cost["seconds"]) is float
    assert cost["macs"] == 160 * 41


def test_only_the_inputs_forward_accepts_are_passed():
    class ValuesOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 6)

        def forward(self, input_values):  # no attention_mask, no frame_rate
            return self.proj(input_values)

    cost = model_cost(ValuesOnly(), RecordingExtractor(), seconds=0.02)  # 320 samples: 3 frames
    assert cost["macs"] == 3 * 4 * 6 and cost["macs_per_module"] == {"proj": 72}
    nested = Nested()
    model_cost(nested, RecordingExtractor(), seconds=0.03)
    assert nested.calls[0]["keys"], "the attention mask forward accepts is passed"


@pytest.mark.parametrize("start_in_training", [True, False])
def test_the_count_runs_in_eval_mode_without_gradients_and_restores_the_mode(start_in_training):
    model = Nested().train(start_in_training)
    model_cost(model, RecordingExtractor(), seconds=0.02)
    assert model.calls == [{"keys": True, "training": False, "grad": False}]
    assert model.training is start_in_training
    assert model.b[0].training is start_in_training


def test_the_mode_is_restored_when_the_forward_fails():
    model = Nested().train()

    def broken(input_values, attention_mask=None):
        raise RuntimeError("broken forward")

    model.forward = broken
    with pytest.raises(RuntimeError, match="broken forward"):
        model_cost(model, RecordingExtractor(), seconds=0.02)
    assert model.training and model.a.training


@pytest.mark.parametrize("seconds", [0, -1.0, 0.0, float("nan"), True, False, "1", None])
def test_seconds_must_be_a_positive_number(seconds):
    with pytest.raises(ValueError, match=rf"^seconds must be a positive number, got {seconds!r}$"):
        model_cost(Nested(), RecordingExtractor(), seconds=seconds)


def test_a_tiny_positive_duration_is_accepted():
    cost = model_cost(Nested(), RecordingExtractor(), seconds=1e-3)  # 16 samples: one padded frame
    assert cost["input_shape"] == (1, 1, 4) and cost["seconds"] == 1e-3


def test_a_model_that_is_not_a_module_is_refused():
    with pytest.raises(TypeError, match=r"^model must be a torch.nn.Module, got SimpleNamespace$"):
        model_cost(SimpleNamespace(parameters=lambda: iter([])), RecordingExtractor())


def _record_registry(monkeypatch, extractor):
    seen = []

    def architecture_for(model_type):
        def feature_extractor(**kwargs):
            seen.append((model_type, kwargs))
            return extractor

        return SimpleNamespace(feature_extractor=feature_extractor)

    monkeypatch.setattr(hf_audiorep.registry, "architecture_for", architecture_for)
    return seen


def test_the_default_front_end_is_the_registry_one_with_the_config_mel_bins_and_rate(monkeypatch):
    extractor = RecordingExtractor(22050)
    seen = _record_registry(monkeypatch, extractor)
    model = Nested()
    model.config = SimpleNamespace(model_type="audiorep-test", num_mel_bins=64)
    cost = model_cost(model, seconds=0.02)
    assert seen == [("audiorep-test", {"num_mel_bins": 64})]
    assert extractor.calls[0]["clip"].shape == (441,) and cost["sampling_rate"] == 22050

    model_cost(model, seconds=0.01, sampling_rate=8000)
    assert seen[-1] == ("audiorep-test", {"num_mel_bins": 64, "sampling_rate": 8000})
    assert extractor.calls[-1]["clip"].shape == (80,)


@pytest.mark.parametrize(
    "config", [{"model_type": "audiorep-raw"}, {"model_type": "audiorep-raw", "num_mel_bins": None}]
)
def test_a_config_without_mel_bins_leaves_the_front_end_default(monkeypatch, config):
    seen = _record_registry(monkeypatch, RecordingExtractor())
    model = Nested()
    model.config = SimpleNamespace(**config)
    model_cost(model, seconds=0.01)
    assert seen == [("audiorep-raw", {})]
