"""Zipformer (UTS encoder): the shared model checks, plus what the family adds: padding independence, the
frame rates of the stacks, the relative-position scores, the masked downsampling, the pooling and the
per-frame MTC head, the config's per-stack fields and width shorthands, layer ids and the parameter counts."""

import math

import pytest
import torch
from model_test_mixin import ModelTesterMixin
from transformers import AutoModel

from hf_audiorep.modeling import ZipformerFbankFeatureExtractor
from hf_audiorep.modeling._zipformer_layers import (
    RelPositionMultiheadAttentionWeights,
    SimpleDownsample,
    compact_rel_positional_encoding,
    swoosh_l,
    swoosh_r,
)
from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer import ZipformerForAudioClassification, ZipformerModel
from hf_audiorep.modeling.modeling_zipformer_caption import ZipformerForConditionalGeneration

TINY = dict(
    num_encoder_layers=(1, 2, 1),
    downsampling_factor=(1, 2, 4),
    encoder_dim=(16, 24, 20),
    feedforward_dim=(32, 48, 40),
    num_heads=(2, 2, 2),
    encoder_unmasked_dim=(8, 16, 16),
    cnn_module_kernel=(5, 3, 3),
    query_head_dim=8,
    value_head_dim=4,
    pos_head_dim=2,
    pos_dim=8,
    subsampling_channels=(4, 8, 8),
    num_mel_bins=32,
    max_length=200,
    num_labels=5,
)


def tiny_config(**overrides) -> ZipformerConfig:
    return ZipformerConfig(**{**TINY, **overrides})


def frames_50hz(num_frames: int) -> int:
    return (num_frames - 7) // 2


def frames_out(num_frames: int, factor: int = 2) -> int:
    return math.ceil(frames_50hz(num_frames) / factor)


def build(model_class, config, seed=0):
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # Move the bypass scales, downsampling weights and norms off their symmetric initial values, so that a
    # wrong combination of frames or stacks shows.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("bypass_scale", "downsample.bias", "downsample_output.bias")):
                param.uniform_(0.1, 1.5)
            elif name.endswith("log_scale"):
                param.add_(0.2)
    return model


class TestZipformerModel(ModelTesterMixin):
    model_classes = (ZipformerModel, ZipformerForAudioClassification)
    # The captioner (a seq2seq head) has its own checks in test_caption_model.py.
    tested_elsewhere = (ZipformerForConditionalGeneration,)
    invalid_config_values = [
        ("encoder_dim", (16, 24)),  # 2 entries for 3 stacks
        ("num_heads", 0),
        ("cnn_module_kernel", (5, 4, 3)),
        ("encoder_unmasked_dim", (8, 16, 32)),  # above encoder_dim[2]
        ("pos_dim", 7),
        ("num_mel_bins", 6),
        ("hidden_dropout_prob", 1.0),
        ("subsampling_channels", (4, 8)),
        ("output_downsampling_factor", 0),
        ("hidden_size", -1),
    ]

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def expected_sequence_length(self, config, inputs) -> int:
        return frames_out(inputs["input_values"].shape[1])

    def expected_num_hidden_states(self, config) -> int:
        return config.num_stacks + 1


# ---- padding never reaches a clip ---------------------------------------------------------------------


def random_batch(config, lengths, seed=0, pad_value=0.0):
    generator = torch.Generator().manual_seed(seed)
    num_frames = max(lengths)
    features = torch.randn(len(lengths), num_frames, config.num_mel_bins, generator=generator) * 2 - 3
    mask = torch.zeros(len(lengths), num_frames, dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
        features[i, length:] = pad_value
    return features, mask


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_batched_with_padding_equals_each_clip_alone_unpadded(attn_implementation):
    config = tiny_config()
    model = build(ZipformerForAudioClassification, config)
    model.set_attn_implementation(attn_implementation)
    # 50 Hz lengths 56, 38, 22, 1: partial groups at every downsampling factor, and a clip of one frame.
    lengths = [119, 83, 51, 10]
    features, mask = random_batch(config, lengths, pad_value=-23.0)  # lhotse's log(1e-10) padding
    with torch.no_grad():
        batched = model(features, mask, output_hidden_states=True)
        for i, length in enumerate(lengths):
            alone = model(features[i : i + 1, :length], output_hidden_states=True)
            valid = frames_out(length)
            assert alone.logits.shape == (1, 5)
            torch.testing.assert_close(batched.logits[i], alone.logits[0], rtol=0, atol=1e-5)
            for state, state_alone in zip(batched.hidden_states, alone.hidden_states, strict=True):
                assert state_alone.shape[1] == valid
                torch.testing.assert_close(state[i, :valid], state_alone[0], rtol=0, atol=1e-5)


def test_attentions_come_at_each_stacks_rate_and_skip_the_padding_with_sdpa_too():
    # sdpa never forms the weights: asking for them must still return them (the eager path), not None.
    config = tiny_config()
    model = build(ZipformerModel, config)
    assert model.config._attn_implementation == "sdpa"
    lengths = [119, 70]
    features, mask = random_batch(config, lengths)
    with torch.no_grad():
        plain = model(features, mask)
        outputs = model(features, mask, output_attentions=True)
    torch.testing.assert_close(outputs.last_hidden_state, plain.last_hidden_state, rtol=0, atol=1e-5)
    stacks = [s for s, layers in enumerate(config.num_encoder_layers) for _ in range(layers)]
    assert len(outputs.attentions) == len(stacks) == 4
    for stack, weights in zip(stacks, outputs.attentions, strict=True):
        factor = config.downsampling_factor[stack]
        frames = weights.shape[-1]
        assert weights.shape == (2, config.num_heads[stack], frames, frames)
        valid = -(-model.embed.output_lengths(torch.tensor(70)).item() // factor)  # ceil: a partial group
        assert weights[1, :, :, valid:].abs().max() < 1e-6, "a padded key got weight"
        assert weights[1, :, :, :valid].sum(-1).sub(1).abs().max() < 1e-5


def test_padding_content_does_not_matter_and_padding_frames_are_zero():
    config = tiny_config()
    model = build(ZipformerModel, config)
    lengths = [119, 70]
    with torch.no_grad():
        outputs = [model(*random_batch(config, lengths, pad_value=value)) for value in (0.0, 50.0)]
    torch.testing.assert_close(outputs[0].last_hidden_state, outputs[1].last_hidden_state, rtol=0, atol=1e-5)
    assert outputs[0].output_lengths.tolist() == [frames_out(119), frames_out(70)]
    assert outputs[0].attention_mask.sum(-1).tolist() == [frames_out(119), frames_out(70)]
    assert outputs[0].last_hidden_state[1, frames_out(70) :].abs().sum() == 0
    assert outputs[0].last_hidden_state[1, : frames_out(70)].abs().sum(-1).min() > 0


def test_attention_mask_must_be_a_prefix_and_inputs_long_enough():
    config = tiny_config()
    model = build(ZipformerModel, config)
    features, mask = random_batch(config, [40, 30])
    mask[1, 5] = 0
    with pytest.raises(ValueError, match="prefix"):
        model(features, mask)
    with pytest.raises(ValueError, match="at least 9"):
        model(features[:, :8])


# ---- frame rates of the stacks ------------------------------------------------------------------------


def test_each_stack_runs_at_its_own_frame_rate_and_width():
    config = tiny_config(num_encoder_layers=(1, 1, 1))
    model = build(ZipformerModel, config)
    seen = []
    hooks = [
        block.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
        for block in model.blocks
    ]
    with torch.no_grad():
        outputs = model(torch.randn(2, 127, 32), output_hidden_states=True)  # 60 frames at 50 Hz
    for hook in hooks:
        hook.remove()
    assert seen == [(2, 60, 16), (2, 30, 24), (2, 15, 20)]
    assert config.frame_rates == (50.0, 25.0, 12.5) and config.output_frame_rate == 25.0
    assert outputs.last_hidden_state.shape == (2, 30, 24)
    # Each channel from the most recent stack that has it: stack 2 (20 wide) is the last, so channels
    # 20..23 of the output are stack 1's (24 wide), the same as in the state after stack 1.
    assert len(outputs.hidden_states) == 4
    assert torch.equal(outputs.hidden_states[-1], outputs.last_hidden_state)
    torch.testing.assert_close(outputs.hidden_states[3][..., 20:], outputs.hidden_states[2][..., 20:])
    assert not torch.allclose(outputs.hidden_states[3][..., :20], outputs.hidden_states[2][..., :20])
    # The front end's state has only encoder_dim[0] channels; the rest are zeros.
    assert outputs.hidden_states[0][..., 16:].abs().sum() == 0


def test_output_downsampling_factor_sets_the_output_rate():
    config = tiny_config(output_downsampling_factor=4)
    model = build(ZipformerModel, config)
    with torch.no_grad():
        outputs = model(torch.randn(1, 127, 32))
    assert outputs.last_hidden_state.shape[1] == math.ceil(60 / 4)


# ---- the blocks against independent computations ------------------------------------------------------


def test_swoosh_activations():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    torch.testing.assert_close(swoosh_l(x), torch.log1p(torch.exp(x - 4)) - 0.08 * x - 0.035)
    torch.testing.assert_close(swoosh_r(x), torch.log1p(torch.exp(x - 1)) - 0.08 * x - 0.313261687)
    assert abs(swoosh_r(torch.zeros(())).item()) < 1e-8


def test_relative_position_scores_read_offset_key_minus_query():
    torch.manual_seed(0)
    module = RelPositionMultiheadAttentionWeights(
        embed_dim=12, pos_dim=8, num_heads=3, query_head_dim=4, pos_head_dim=2
    )
    x = torch.randn(2, 5, 12)
    pos_emb = compact_rel_positional_encoding(5, 8)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    attention = module(x, pos_emb, pad, "eager")
    proj = module.in_proj(x)
    q = proj[..., :12].reshape(2, 5, 3, 4)
    k = proj[..., 12:24].reshape(2, 5, 3, 4)
    p = proj[..., 24:].reshape(2, 5, 3, 2)
    pos_keys = module.linear_pos(pos_emb).reshape(9, 3, 2)  # row r is offset r - 4
    expected = torch.empty(2, 3, 5, 5)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                for j in range(5):
                    score = q[b, i, h] @ k[b, j, h] + p[b, i, h] @ pos_keys[j - i + 4, h]
                    expected[b, h, i, j] = -1e9 if pad[b, j] else score
    torch.testing.assert_close(attention.weights, expected.softmax(-1), rtol=0, atol=1e-6)
    values = torch.randn(2, 3, 5, 7)
    sdpa = module(x, pos_emb, pad, "sdpa")
    torch.testing.assert_close(sdpa.apply(values), attention.weights @ values, rtol=0, atol=1e-5)
    first_head = sdpa.apply(values[:, :1], first_head_only=True)
    torch.testing.assert_close(first_head, attention.weights[:, :1] @ values[:, :1], rtol=0, atol=1e-5)


def test_compact_positional_encoding_formula():
    dim, num_frames = 8, 4
    encoding = compact_rel_positional_encoding(num_frames, dim, dtype=torch.float64)
    assert encoding.shape == (7, dim)
    root = math.sqrt(dim)
    for row, offset in enumerate(range(-3, 4)):
        compressed = math.copysign(root * (math.log(abs(offset) + root) - math.log(root)), offset)
        angle = math.atan(compressed / (dim / (2 * math.pi)))
        for f in range(dim // 2):
            assert encoding[row, 2 * f] == pytest.approx(math.cos(angle * (f + 1)), abs=1e-6)
            if 2 * f + 1 != dim - 1:
                assert encoding[row, 2 * f + 1] == pytest.approx(math.sin(angle * (f + 1)), abs=1e-6)
        assert encoding[row, -1] == 1.0


def test_simple_downsample_pads_a_clip_with_its_own_last_frame():
    module = SimpleDownsample(3)
    with torch.no_grad():
        module.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    weights = torch.tensor([0.5, -1.0, 2.0]).softmax(0)
    x = torch.randn(2, 8, 4)
    out = module(x, torch.tensor([8, 4]))
    assert out.shape == (2, 3, 4)
    # clip 0: frames 0..7, the last group padded with frame 7
    torch.testing.assert_close(out[0, 0], weights @ x[0, 0:3])
    torch.testing.assert_close(out[0, 2], weights[0] * x[0, 6] + (weights[1] + weights[2]) * x[0, 7])
    # clip 1: 4 valid frames: its 2nd group is frame 3 three times (not the padding frames 4, 5)
    torch.testing.assert_close(out[1, 1], x[1, 3])


# ---- pooling and the MTC head ------------------------------------------------------------------------


def test_pooler_is_the_mean_over_valid_output_frames():
    config = tiny_config()
    model = build(ZipformerModel, config)
    features, mask = random_batch(config, [119, 60])
    with torch.no_grad():
        outputs = model(features, mask)
    for i, length in enumerate([119, 60]):
        expected = outputs.last_hidden_state[i, : frames_out(length)].mean(0)
        torch.testing.assert_close(outputs.pooler_output[i], expected)


def test_classification_logits_average_the_per_frame_logits_over_valid_frames():
    config = tiny_config(num_labels=3)
    model = build(ZipformerForAudioClassification, config)
    with torch.no_grad():
        model.classifier.bias.normal_()
    features, mask = random_batch(config, [119, 60])
    with torch.no_grad():
        logits = model(features, mask).logits
        hidden = model.zipformer(features, mask).last_hidden_state
    for i, length in enumerate([119, 60]):
        frame_logits = hidden[i, : frames_out(length)] @ model.classifier.weight.T + model.classifier.bias
        torch.testing.assert_close(logits[i], frame_logits.mean(0))
    # A padding frame that entered the mean would pull it toward the bias alone.
    padded_mean = (hidden[1] @ model.classifier.weight.T + model.classifier.bias).mean(0)
    assert not torch.allclose(logits[1], padded_mean)


def test_multi_label_loss_and_dropout_only_in_training():
    config = tiny_config(problem_type="multi_label_classification", classifier_dropout=0.5)
    model = build(ZipformerForAudioClassification, config)
    features, mask = random_batch(config, [80, 60])
    labels = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])
    with torch.no_grad():
        out = model(features, mask, labels=labels)
        again = model(features, mask, labels=labels)
    torch.testing.assert_close(out.logits, again.logits, rtol=0, atol=0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels)
    torch.testing.assert_close(out.loss, expected)
    model.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(features, mask).logits, out.logits)


def _standardised_head_logits(model, hidden, lengths, mean, var):
    logits = []
    for i, length in enumerate(lengths):
        frames = (hidden[i, : frames_out(length)] - mean) / torch.sqrt(var + model.classifier_norm.eps)
        logits.append((frames @ model.classifier.weight.T + model.classifier.bias).mean(0))
    return torch.stack(logits)


def test_batch_classifier_norm_standardises_the_valid_frames_only():
    quiet = dict(
        hidden_dropout_prob=0.0, position_dropout_prob=0.0, feature_mask_prob=0.0, classifier_dropout=0.0
    )
    config = tiny_config(num_labels=3, classifier_norm="batch", **quiet)
    model = build(ZipformerForAudioClassification, config).train()
    lengths = [119, 60]
    features, mask = random_batch(config, lengths)
    with torch.no_grad():
        hidden = model.zipformer(features, mask).last_hidden_state
        logits = model(features, mask).logits  # training: the batch's statistics, then running ones updated
    valid = torch.cat([hidden[i, : frames_out(n)] for i, n in enumerate(lengths)])
    mean, var = valid.mean(0), valid.var(0, unbiased=False)
    torch.testing.assert_close(logits, _standardised_head_logits(model, hidden, lengths, mean, var))
    # The padded frames (zeros here) would move the statistics had they entered them.
    assert hidden.shape[1] * 2 > valid.shape[0]
    momentum = model.classifier_norm.momentum
    torch.testing.assert_close(model.classifier_norm.running_mean, momentum * mean)
    torch.testing.assert_close(model.classifier_norm.running_var, (1 - momentum) + momentum * valid.var(0))
    model.eval()  # evaluation: the running statistics, whatever the batch
    with torch.no_grad():
        alone = model(features[1:, : lengths[1]], mask[1:, : lengths[1]]).logits
    expected = _standardised_head_logits(
        model, hidden[1:], lengths[1:], model.classifier_norm.running_mean, model.classifier_norm.running_var
    )
    torch.testing.assert_close(alone, expected)


def test_classifier_norm_default_is_auden_head_and_bad_values_are_named(tmp_path):
    assert build(ZipformerForAudioClassification, tiny_config()).classifier_norm is None
    model = build(ZipformerForAudioClassification, tiny_config(classifier_norm="batch"))
    model.save_pretrained(tmp_path)
    loaded = ZipformerForAudioClassification.from_pretrained(tmp_path)
    assert loaded.config.classifier_norm == "batch" and isinstance(
        loaded.classifier_norm, torch.nn.BatchNorm1d
    )
    assert loaded.classifier_norm.affine is False
    with pytest.raises(ValueError, match="classifier_norm"):
        tiny_config(classifier_norm="layer")


def test_head_checkpoint_loads_as_the_encoder(tmp_path):
    import hf_audiorep  # noqa: F401  (registers the Auto classes)

    config = tiny_config()
    model = build(ZipformerForAudioClassification, config)
    model.save_pretrained(tmp_path)
    ZipformerFbankFeatureExtractor(num_mel_bins=32).save_pretrained(tmp_path)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is ZipformerModel
    features, mask = random_batch(config, [90, 60])
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(features, mask).last_hidden_state, model.zipformer(features, mask).last_hidden_state
        )


# ---- config -------------------------------------------------------------------------------------------


def test_scalars_broadcast_to_every_stack_and_round_trip(tmp_path):
    config = tiny_config(query_head_dim=6, cnn_module_kernel=7)
    assert config.query_head_dim == (6, 6, 6) and config.cnn_module_kernel == (7, 7, 7)
    assert config.num_hidden_layers == 4 and config.num_stacks == 3
    assert config.hidden_size == 24 and config.num_attention_heads == 2
    config.save_pretrained(tmp_path)
    loaded = ZipformerConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


def test_width_and_head_shorthands_scale_every_stack():
    config = ZipformerConfig.from_preset("zipformer-m", hidden_size=256, num_attention_heads=2)
    assert config.encoder_dim == (96, 128, 192, 256, 192, 128)
    assert config.feedforward_dim == (288, 384, 576, 768, 576, 384)
    assert config.encoder_unmasked_dim == (96, 96, 128, 128, 128, 96)
    assert config.num_heads == (1, 1, 1, 2, 1, 1)
    # Read back, they are the widest stack and the most heads: giving them again changes nothing.
    fields = ("encoder_dim", "feedforward_dim", "encoder_unmasked_dim", "num_heads")
    same = ZipformerConfig(**{k: getattr(config, k) for k in fields}, hidden_size=256, num_attention_heads=2)
    assert all(getattr(same, k) == getattr(config, k) for k in fields)


def test_stale_hidden_size_is_refused_on_save(tmp_path):
    config = tiny_config()
    config.encoder_dim = (16, 32, 20)
    with pytest.raises(ValueError, match="hidden_size"):
        config.save_pretrained(tmp_path)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown Zipformer preset"):
        ZipformerConfig.from_preset("zipformer-xxl")


# ---- layer ids and sizes ------------------------------------------------------------------------------


def test_layer_ids_follow_the_stacks():
    config = tiny_config()  # layers per stack 1, 2, 1: blocks 0 | 1 2 | 3
    model = build(ZipformerForAudioClassification, config)
    ids = model.layer_ids()
    assert ids["zipformer.embed.conv1.weight"] == 0
    assert ids["zipformer.blocks.0.feed_forward1.in_proj.weight"] == 1
    assert ids["zipformer.blocks.3.norm.bias"] == 4
    assert ids["zipformer.stacks.1.downsample.bias"] == 2  # with stack 1's first layer
    assert ids["zipformer.stacks.1.out_combiner.bypass_scale"] == 3  # with its last
    assert ids["zipformer.stacks.2.downsample.bias"] == 4
    top = model.num_layer_ids - 1
    assert ids["zipformer.downsample_output.bias"] == ids["classifier.weight"] == top == 5


ICEFALL_FFN = (512, 768, 1024, 1536, 1024, 768)


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("zipformer-m", {}, 65_907_959),
        # icefall's Zipformer-M feed-forwards and AudioSet head: icefall's AudioTaggingModel built from the
        # same arguments has 64,264,454 = this + 5,760 (a per-layer bypass_scale no forward pass reads).
        ("zipformer-m", {"feedforward_dim": ICEFALL_FFN, "num_labels": 527}, 64_258_694),
        ("zipformer-small", {}, 1_304_991),
    ],
)
def test_parameter_counts(preset, overrides, expected):
    config = ZipformerConfig.from_preset(preset, **overrides)
    model_class = ZipformerForAudioClassification if "num_labels" in overrides else ZipformerModel
    with torch.device("meta"):
        model = model_class(config)
    assert sum(p.numel() for p in model.parameters()) == expected
