"""BEATs: the shared model checks, plus its own pieces (relative position buckets, the gate, deep-norm, the
reference's padding reduction, the config from a checkpoint's cfg, and the front end against torchaudio)."""

import math

import numpy as np
import pytest
import torch
from model_test_mixin import ModelTesterMixin

from hf_audiorep.modeling.configuration_beats import BEATS_PRESETS, BEATsConfig
from hf_audiorep.modeling.feature_extraction_beats import BEATsFeatureExtractor
from hf_audiorep.modeling.modeling_beats import (
    BEATsForAudioClassification,
    BEATsModel,
    reference_patch_padding_mask,
    relative_position_buckets,
)

# Every optional path on: patch projection (8 -> 16), an even positional kernel (its extra output is dropped),
# the gated relative position bias and deep-norm.
TINY = dict(
    num_mel_bins=32,
    patch_embedding_dim=8,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_conv_pos_embeddings=4,
    num_conv_pos_embedding_groups=2,
    relative_position_embedding=True,
    gru_rel_pos=True,
    deep_norm=True,
    num_buckets=8,
    max_distance=16,
    num_labels=5,
)


def tiny_config(**overrides) -> BEATsConfig:
    return BEATsConfig(**{**TINY, **overrides})


class TestBEATs(ModelTesterMixin):
    model_classes = (BEATsModel, BEATsForAudioClassification)
    invalid_config_values = [
        ("hidden_size", 0),
        ("num_attention_heads", 3),  # does not divide hidden_size
        ("num_conv_pos_embedding_groups", 3),
        ("num_conv_pos_embeddings", 1),
        ("num_buckets", 7),  # odd
        ("num_buckets", 2),
        ("max_distance", 2),  # inside the exact range of 8 buckets
        ("relative_position_embedding", False),  # gru_rel_pos needs it
        ("layer_norm_first", True),  # with deep_norm
        ("hidden_act", "no-such-activation"),
        ("hidden_dropout_prob", 1.0),
        ("attention_probs_dropout_prob", -0.1),
        ("layerdrop", 1.5),
        ("patch_size", 0),
        ("layer_norm_eps", 0.0),
        ("max_length", 8),  # shorter than one patch
    ]

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def expected_sequence_length(self, config, inputs):
        # A partial last time patch is dropped, as by the reference's strided conv.
        grid_t = inputs["input_values"].shape[1] // config.patch_size
        return grid_t * config.num_mel_bins // config.patch_size


def test_relative_position_buckets_follow_t5_bucketing():
    buckets = relative_position_buckets(40, num_buckets=16, max_distance=32)
    offsets = torch.arange(40)[None, :] - torch.arange(40)[:, None]
    # Exact buckets below a quarter of num_buckets, the upper half for positive offsets.
    small = offsets.abs() < 4
    expected_small = offsets.abs() + 8 * (offsets > 0).long()
    assert torch.equal(buckets[small], expected_small[small])
    # Beyond max_distance everything shares the last bucket of its direction.
    assert bool((buckets[offsets >= 32] == 15).all()) and bool((buckets[offsets <= -32] == 7).all())
    # Logarithmic in between: monotone in the distance within each direction.
    row = buckets[0, :]
    assert bool((row[1:] >= row[:-1]).all())
    # Offset 10: 4 + floor(log(10/4) / log(32/4) * 4) = 5.
    assert int(buckets[0, 10]) == 8 + 4 + math.floor(math.log(10 / 4) / math.log(8) * 4)


def test_reference_patch_padding_mask_reshapes_frames_as_the_reference():
    padding = torch.zeros(2, 58, dtype=torch.bool)
    padding[1, 30:] = True
    mask = reference_patch_padding_mask(padding, 24)
    # 58 frames -> drop 58 % 24 = 10 -> 2 frames per patch; patch p is padding iff frames 2p, 2p+1 are.
    expected = padding[:, :48].view(2, 24, 2).all(-1)
    assert torch.equal(mask, expected)
    assert mask[1].sum() == 9 and not mask[0].any()
    with pytest.raises(ValueError, match="cannot be reduced"):
        reference_patch_padding_mask(torch.zeros(1, 5, dtype=torch.bool), 8)


def test_gate_scales_the_bias_per_query_and_is_used():
    config = tiny_config()
    torch.manual_seed(0)
    model = BEATsModel(config).eval()
    inputs = torch.randn(1, 64, config.num_mel_bins)
    with torch.no_grad():
        reference = model(inputs).last_hidden_state
        for layer in model.encoder.blocks:
            layer.self_attn.gru_rel_pos_const.fill_(3.0)
        changed = model(inputs).last_hidden_state
        model.encoder.relative_attention_bias.weight.zero_()
        no_bias = model(inputs).last_hidden_state
        for layer in model.encoder.blocks:
            layer.self_attn.gru_rel_pos_const.fill_(1.0)
        # With a zero table the gate has nothing to scale.
        torch.testing.assert_close(model(inputs).last_hidden_state, no_bias)
    assert not torch.allclose(reference, changed)


def test_deep_norm_scales_residuals_and_initialisation():
    config = tiny_config()
    model = BEATsModel(config)
    layer = model.encoder.blocks[0]
    assert layer.residual_scale == pytest.approx((2 * config.num_hidden_layers) ** 0.25)
    # Xavier-normal with DeepNet's beta on the value projection: std = beta * sqrt(2 / (fan_in + fan_out)).
    beta = (8 * config.num_hidden_layers) ** -0.25
    big = BEATsModel(tiny_config(hidden_size=256, intermediate_size=64, num_attention_heads=4))
    std = big.encoder.blocks[0].self_attn.v_proj.weight.std().item()
    assert std == pytest.approx(beta * math.sqrt(2 / 512), rel=0.05)
    plain = BEATsModel(
        tiny_config(hidden_size=256, intermediate_size=64, num_attention_heads=4, deep_norm=False)
    )
    assert plain.encoder.blocks[0].residual_scale == 1.0
    assert plain.encoder.blocks[0].self_attn.v_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_pre_ln_variant_runs_and_differs():
    config = tiny_config(deep_norm=False, layer_norm_first=True)
    torch.manual_seed(0)
    model = BEATsModel(config).eval()
    outputs = model(torch.randn(2, 48, config.num_mel_bins), output_hidden_states=True)
    # Pre-LN: the final LayerNorm makes last_hidden_state differ from the last block's output.
    assert not torch.allclose(outputs.last_hidden_state, outputs.hidden_states[-1])


def test_inputs_shorter_than_a_patch_or_longer_than_max_length_are_rejected():
    model = BEATsModel(tiny_config())
    with pytest.raises(ValueError, match="fewer than one patch"):
        model(torch.randn(1, 10, 32))
    with pytest.raises(ValueError, match="max_length"):
        BEATsModel(tiny_config(max_length=32))(torch.randn(1, 48, 32))


def test_layer_ids_put_embeddings_below_the_blocks_and_heads_above():
    config = tiny_config()
    model = BEATsForAudioClassification(config)
    ids = {name: model.get_layer_id(name) for name, _ in model.named_parameters()}
    assert ids["beats.patch_embedding.weight"] == 0
    assert ids["beats.encoder.pos_conv.conv.weight"] == 0
    assert ids["beats.encoder.relative_attention_bias.weight"] == 0
    assert ids["beats.encoder.blocks.1.fc1.weight"] == 2
    assert ids["classifier.weight"] == config.num_hidden_layers + 1
    assert model.num_layer_ids == config.num_hidden_layers + 2


def test_presets_and_reference_cfg():
    assert set(BEATS_PRESETS) == {"beats-iter3", "beats-tiny"}
    iter3 = BEATsConfig.from_preset("beats-iter3")
    assert (iter3.relative_position_embedding, iter3.gru_rel_pos, iter3.deep_norm) == (True, True, True)
    assert (iter3.hidden_size, iter3.num_hidden_layers, iter3.patch_size) == (768, 12, 16)
    # Class defaults are the reference's own.
    default = BEATsConfig()
    assert (default.relative_position_embedding, default.max_distance, default.deep_norm) == (
        False,
        1280,
        False,
    )
    with pytest.raises(ValueError, match="unknown BEATs preset"):
        BEATsConfig.from_preset("beats-nope")

    cfg = {
        "input_patch_size": 16,
        "encoder_layers": 3,
        "encoder_embed_dim": 96,
        "encoder_attention_heads": 4,
        "activation_fn": "gelu_accurate",
        "deep_norm": True,
        "relative_position_embedding": True,
        "gru_rel_pos": True,
        "max_distance": 800,
        "layer_wise_gradient_decay_ratio": 0.6,
        "finetuned_model": True,
        "predictor_class": 7,
        "some_training_flag": 1,
    }
    config = BEATsConfig.from_reference_cfg(cfg)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (3, 96, 4)
    assert config.hidden_act == "gelu_new" and config.max_distance == 800
    assert config.num_labels == 7 and config.problem_type == "multi_label_classification"
    # Keys the cfg does not have keep the reference defaults.
    assert config.num_buckets == 320 and config.num_conv_pos_embeddings == 128
    assert BEATsConfig.from_reference_cfg({}).num_labels == BEATsConfig().num_labels
    with pytest.raises(ValueError, match="activation_fn"):
        BEATsConfig.from_reference_cfg({"activation_fn": "glu"})
    with pytest.raises(ValueError, match="num_attention_heads"):
        BEATsConfig.from_reference_cfg({"encoder_attention_heads": 5})


# ---- the front end ---------------------------------------------------------------------------------------


def _reference_preprocess(waveform: torch.Tensor) -> torch.Tensor:
    """The reference's ``BEATs.preprocess`` for one clip: plain torchaudio."""
    ta_kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    fbank = ta_kaldi.fbank(
        waveform.unsqueeze(0) * 2**15,
        num_mel_bins=128,
        sample_frequency=16000,
        frame_length=25,
        frame_shift=10,
    )
    return (fbank - 15.41663) / (2 * 6.55582)


def test_feature_extractor_matches_the_reference_preprocess():
    generator = torch.Generator().manual_seed(0)
    waveform = 0.2 * torch.randn(12345, generator=generator)
    features = BEATsFeatureExtractor()(waveform.numpy(), sampling_rate=16000, return_tensors="pt")
    expected = _reference_preprocess(waveform)
    assert features["input_values"].shape == (1, *expected.shape)
    torch.testing.assert_close(features["input_values"][0], expected, rtol=0, atol=1e-4)


def test_padded_batch_matches_the_reference_on_zero_padded_waveforms():
    generator = torch.Generator().manual_seed(1)
    long, short = 0.2 * torch.randn(8000, generator=generator), 0.2 * torch.randn(4000, generator=generator)
    extractor = BEATsFeatureExtractor()
    batch = extractor([long.numpy(), short.numpy()], sampling_rate=16000, return_tensors="pt")
    padded = torch.cat([short, torch.zeros(4000)])
    expected = _reference_preprocess(padded)
    real = int(batch["attention_mask"][1].sum())
    assert real == 1 + (4000 - 400) // 160 and batch["attention_mask"][0].all()
    torch.testing.assert_close(batch["input_values"][1, :real], expected[:real], rtol=0, atol=1e-4)
    # Frames wholly inside the zero padding: the log-mel of silence, as the reference computes it.
    silent = slice(real + 3, None)
    torch.testing.assert_close(batch["input_values"][1, silent], expected[silent], rtol=0, atol=1e-4)


def test_feature_extractor_defaults_and_round_trip(tmp_path):
    extractor = BEATsFeatureExtractor()
    assert extractor.window_type == "povey" and extractor.waveform_scale == 2**15
    assert extractor.target_length is None and extractor.num_mel_bins == 128
    extractor.save_pretrained(tmp_path)
    loaded = BEATsFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == extractor.to_dict()
    clip = np.random.default_rng(0).standard_normal(4000).astype(np.float32) * 0.1
    np.testing.assert_array_equal(
        loaded(clip, sampling_rate=16000)["input_values"],
        extractor(clip, sampling_rate=16000)["input_values"],
    )
