"""model_cost: parameters and multiply-accumulates of one clip, counted by torch's FlopCounterMode."""

import pytest
import torch

from hf_audiorep.evaluation.cost import model_cost
from hf_audiorep.modeling import LogMelFeatureExtractor
from hf_audiorep.modeling.configuration_cp_mobile import CPMobileConfig
from hf_audiorep.modeling.modeling_cp_mobile import CPMobileForAudioClassification

# A small front end (16 kHz, 16 bins, 10 ms hop): a 0.5-s clip is 1 + 8000 // 160 = 51 frames.
SMALL_FRONT_END = dict(sampling_rate=16000, num_mel_bins=16, n_fft=512, win_length=400, hop_length=160)


class FrameProjection(torch.nn.Module):
    """A linear layer on every frame: its MACs are frames x in x out, by hand."""

    def __init__(self, num_mel_bins: int, out_features: int):
        super().__init__()
        self.proj = torch.nn.Linear(num_mel_bins, out_features)

    def forward(self, input_values, attention_mask=None):
        return self.proj(torch.relu(input_values))


def test_macs_of_a_linear_layer_are_frames_times_weights():
    model = FrameProjection(16, 7)
    cost = model_cost(model, LogMelFeatureExtractor(**SMALL_FRONT_END), seconds=0.5)
    assert cost["input_shape"] == (1, 51, 16)
    assert cost["macs"] == 51 * 16 * 7  # the bias additions and the ReLU are not multiply-accumulates
    assert cost["macs_per_module"] == {"proj": 51 * 16 * 7}
    assert cost["parameters"] == 16 * 7 + 7
    assert cost["sampling_rate"] == 16000 and cost["seconds"] == 0.5


def test_dcase24_baseline_matches_the_published_count():
    # CPJKU/dcase2024_task1_baseline README: 29,419,156 MACs for a 1-s clip, counted by NeSsi (torchinfo),
    # which adds each BatchNorm's parameter count to the convolutions' MACs.
    model = CPMobileForAudioClassification(CPMobileConfig.from_preset("cp-mobile-dcase24", num_labels=10))
    cost = model_cost(model)  # the registry's front end: 32 kHz, 256 mel bins
    assert cost["input_shape"] == (1, 65, 256) and cost["sampling_rate"] == 32000
    assert cost["parameters"] == 61_148
    batch_norm_parameters = sum(
        p.numel() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()
    )
    assert cost["macs"] + batch_norm_parameters == 29_419_156
    # Each module's count includes its submodules'; the encoder and the head make up the whole.
    assert cost["macs_per_module"]["cp_mobile"] + cost["macs_per_module"]["classifier"] == cost["macs"]
    assert cost["macs_per_module"]["classifier.conv"] == 32 * 9 * 104 * 10  # 1x1 conv on the 32 x 9 map


def test_macs_grow_with_the_clip_and_follow_the_default_front_end_rate():
    model = CPMobileForAudioClassification(CPMobileConfig.from_preset("cp-mobile-6k", num_labels=10))
    one = model_cost(model, seconds=1.0)
    two = model_cost(model, seconds=2.0)
    assert two["input_shape"] == (1, 129, 256) and two["macs"] > 1.8 * one["macs"]
    at_16k = model_cost(model, sampling_rate=16000)
    assert at_16k["input_shape"] == (1, 33, 256) and at_16k["sampling_rate"] == 16000


def test_model_mode_is_restored_and_bad_arguments_are_rejected():
    model = FrameProjection(16, 3).train()
    extractor = LogMelFeatureExtractor(**SMALL_FRONT_END)
    model_cost(model, extractor)
    assert model.training
    with pytest.raises(ValueError, match="seconds"):
        model_cost(model, extractor, seconds=0)
    with pytest.raises(ValueError, match="sampling"):
        model_cost(model, extractor, sampling_rate=32000)  # the extractor does not resample
    with pytest.raises(TypeError, match="Module"):
        model_cost(lambda x: x, extractor)
