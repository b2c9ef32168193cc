"""BEATs' computation against an independent one written here: the T5 relative position buckets by hand, the
gated (WavLM) bias, attention with the bias in its scores, the post-LN deep-norm and pre-LN blocks, the
convolutional positional embedding, the encoder, the patch stem and the pooling, the classifier, layerdrop
and the weight initialisation of the reference (section 6 of the architecture notes), all on tiny configs."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_audiorep.modeling.configuration_beats import BEATsConfig
from hf_audiorep.modeling.modeling_beats import (
    BEATsAttention,
    BEATsEncoder,
    BEATsEncoderLayer,
    BEATsForAudioClassification,
    BEATsModel,
    BEATsPositionalConvEmbedding,
    reference_patch_padding_mask,
    relative_position_buckets,
)

# Every optional path on and no dropout, so that a training-mode forward is deterministic but for layerdrop.
TINY = dict(
    num_mel_bins=32,
    patch_embedding_dim=8,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=24,
    num_conv_pos_embeddings=4,
    num_conv_pos_embedding_groups=2,
    relative_position_embedding=True,
    gru_rel_pos=True,
    deep_norm=True,
    num_buckets=8,
    max_distance=16,
    num_labels=5,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    classifier_dropout=0.0,
)


def tiny_config(attn_implementation: str = "sdpa", **overrides) -> BEATsConfig:
    # Set here because the modules below are built alone, without the model that would set it.
    config = BEATsConfig(**{**TINY, **overrides})
    config._attn_implementation = attn_implementation
    return config


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter away from its initial value (zero biases, unit LayerNorms and gate constants would
    hide a wrong term) and a relative position table large enough to move the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            scale = 1.0 if "relative_attention_bias" in name else 0.3
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module.eval()


# --- the relative position buckets ------------------------------------------------------------------------


def t5_bucket(offset: int, num_buckets: int, max_distance: int) -> int:
    """T5's bidirectional bucket of one ``key - query`` offset, one integer at a time."""
    half = num_buckets // 2
    bucket = half if offset > 0 else 0
    distance = abs(offset)
    max_exact = half // 2
    if distance < max_exact:
        return bucket + distance
    far = max_exact + int(
        math.log(distance / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    )
    return bucket + min(far, half - 1)


@pytest.mark.parametrize(
    ("num_tokens", "num_buckets", "max_distance"), [(40, 16, 32), (30, 8, 12), (9, 32, 128), (9, 6, 4)]
)
def test_relative_position_buckets_equal_t5_bucketing_by_hand(num_tokens, num_buckets, max_distance):
    buckets = relative_position_buckets(num_tokens, num_buckets, max_distance)
    expected = torch.tensor(
        [[t5_bucket(k - q, num_buckets, max_distance) for k in range(num_tokens)] for q in range(num_tokens)]
    )
    assert buckets.dtype == torch.long
    assert torch.equal(buckets, expected)


def test_the_bias_table_is_looked_up_by_bucket_per_head():
    config = tiny_config()
    encoder = randomise(BEATsEncoder(config))
    bias = encoder.position_bias(11)
    table = encoder.relative_attention_bias.weight
    assert bias.shape == (1, config.num_attention_heads, 11, 11)
    for q in range(11):
        for k in range(11):
            bucket = t5_bucket(k - q, config.num_buckets, config.max_distance)
            torch.testing.assert_close(bias[0, :, q, k], table[bucket])
    assert (
        BEATsEncoder(tiny_config(relative_position_embedding=False, gru_rel_pos=False)).position_bias(5)
        is None
    )


# --- attention with the gated bias ------------------------------------------------------------------------


def attention_by_hand(attention: BEATsAttention, x, bias=None, key_padding=None):
    """Separate q/k/v projections, scores scaled by head_dim^-1/2 plus the bias (scaled per query and head by
    WavLM's gate a (b c - 1) + 2 when the layer has one), padded keys excluded, softmax, output projection."""
    batch, tokens, width = x.shape
    heads = attention.num_heads
    head_dim = width // heads

    def split(t):
        return t.view(batch, tokens, heads, head_dim).transpose(1, 2)

    q = split(F.linear(x, attention.q_proj.weight, attention.q_proj.bias))
    k = split(F.linear(x, attention.k_proj.weight, attention.k_proj.bias))
    v = split(F.linear(x, attention.v_proj.weight, attention.v_proj.bias))
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    if bias is not None:
        if attention.gru_rel_pos_linear is not None:
            units = F.linear(q, attention.gru_rel_pos_linear.weight, attention.gru_rel_pos_linear.bias)
            a = torch.sigmoid(units[..., :4].sum(-1, keepdim=True))
            b = torch.sigmoid(units[..., 4:].sum(-1, keepdim=True))
            bias = (a * (b * attention.gru_rel_pos_const - 1) + 2) * bias
        scores = scores + bias
    if key_padding is not None:
        scores = scores.masked_fill(key_padding[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
    return F.linear(out, attention.out_proj.weight, attention.out_proj.bias)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain-bias"])
def test_attention_adds_the_gated_bias_to_its_scores(attn_implementation, gated):
    config = tiny_config(attn_implementation, gru_rel_pos=gated)
    attention = randomise(BEATsAttention(config))
    torch.manual_seed(1)
    x = torch.randn(2, 7, config.hidden_size)
    bias = 2 * torch.randn(1, config.num_attention_heads, 7, 7)
    with torch.no_grad():
        out, _ = attention(x, None, bias)
    torch.testing.assert_close(out, attention_by_hand(attention, x, bias), rtol=1e-5, atol=1e-5)


def test_gate_scale_by_hand():
    config = tiny_config()
    attention = randomise(BEATsAttention(config))
    torch.manual_seed(2)
    query = torch.randn(2, config.num_attention_heads, 5, 8)
    bias = torch.randn(1, config.num_attention_heads, 5, 5)
    units = query @ attention.gru_rel_pos_linear.weight.T + attention.gru_rel_pos_linear.bias
    a = torch.sigmoid(units[..., 0] + units[..., 1] + units[..., 2] + units[..., 3])[..., None]
    b = torch.sigmoid(units[..., 4] + units[..., 5] + units[..., 6] + units[..., 7])[..., None]
    const = attention.gru_rel_pos_const
    with torch.no_grad():
        torch.testing.assert_close(attention._gated(bias, query), (a * (b * const - 1) + 2) * bias)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_padded_keys_are_excluded_with_and_without_the_bias(attn_implementation, with_bias):
    config = tiny_config(
        attn_implementation, relative_position_embedding=with_bias, gru_rel_pos=with_bias, num_hidden_layers=1
    )
    encoder = randomise(BEATsEncoder(config))
    torch.manual_seed(3)
    x = torch.randn(2, 6, config.hidden_size)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 4:] = True
    with torch.no_grad():
        out = encoder(x, padding)
        hidden = encoder_input_by_hand(encoder, x, padding)
        layer = encoder.blocks[0]
        bias = encoder.position_bias(6)
        attn = attention_by_hand(layer.self_attn, hidden, bias, key_padding=padding)
        expected = post_ln_by_hand(layer, hidden, attn)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# --- the blocks ---------------------------------------------------------------------------------------------


def feed_forward_by_hand(layer: BEATsEncoderLayer, x):
    return F.linear(F.gelu(F.linear(x, layer.fc1.weight, layer.fc1.bias)), layer.fc2.weight, layer.fc2.bias)


def layer_norm_by_hand(norm: torch.nn.LayerNorm, x):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def post_ln_by_hand(layer: BEATsEncoderLayer, x, attn, alpha=None):
    """DeepNet's post-LN block: LN(alpha x + attention), then LN(alpha h + FFN(h))."""
    if alpha is None:
        alpha = layer.residual_scale
    h = layer_norm_by_hand(layer.self_attn_layer_norm, alpha * x + attn)
    return layer_norm_by_hand(layer.final_layer_norm, alpha * h + feed_forward_by_hand(layer, h))


def test_deep_norm_block_scales_both_residuals_by_alpha():
    config = tiny_config()
    layer = randomise(BEATsEncoderLayer(config))
    alpha = (2 * config.num_hidden_layers) ** 0.25
    torch.manual_seed(4)
    x = torch.randn(2, 5, config.hidden_size)
    bias = torch.randn(1, config.num_attention_heads, 5, 5)
    with torch.no_grad():
        expected = post_ln_by_hand(layer, x, attention_by_hand(layer.self_attn, x, bias), alpha=alpha)
        torch.testing.assert_close(layer(x, None, bias), expected, rtol=1e-5, atol=1e-5)


def test_post_ln_block_without_deep_norm_has_unit_residuals():
    # A large epsilon, so that one LayerNorm built without the config's would show.
    config = tiny_config(deep_norm=False, layer_norm_eps=0.5)
    layer = randomise(BEATsEncoderLayer(config))
    assert layer.self_attn_layer_norm.eps == layer.final_layer_norm.eps == 0.5
    torch.manual_seed(5)
    x = torch.randn(2, 5, config.hidden_size)
    with torch.no_grad():
        expected = post_ln_by_hand(layer, x, attention_by_hand(layer.self_attn, x), alpha=1.0)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_pre_ln_block_normalises_each_branch_input_and_masks_padded_keys():
    config = tiny_config(deep_norm=False, layer_norm_first=True)
    layer = randomise(BEATsEncoderLayer(config))
    torch.manual_seed(6)
    x = torch.randn(2, 5, config.hidden_size)
    bias = torch.randn(1, config.num_attention_heads, 5, 5)
    padding = torch.zeros(2, 5, dtype=torch.bool)
    padding[1, 3:] = True
    with torch.no_grad():
        normed = layer_norm_by_hand(layer.self_attn_layer_norm, x)
        h = x + attention_by_hand(layer.self_attn, normed, bias, key_padding=padding)
        expected = h + feed_forward_by_hand(layer, layer_norm_by_hand(layer.final_layer_norm, h))
        torch.testing.assert_close(layer(x, encoder_mask(padding), bias), expected, rtol=1e-5, atol=1e-5)


# --- the positional conv and the encoder ---------------------------------------------------------------


@pytest.mark.parametrize("kernel", [4, 5])
def test_positional_conv_is_a_same_length_grouped_conv_with_gelu(kernel):
    config = tiny_config(num_conv_pos_embeddings=kernel)
    embedding = randomise(BEATsPositionalConvEmbedding(config))
    torch.manual_seed(7)
    x = torch.randn(2, 9, config.hidden_size)
    conv = embedding.conv
    # Zero-padded by kernel // 2 on both sides; an even kernel's last output (one past the input) dropped.
    out = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=kernel // 2, groups=2)[:, :, :9]
    with torch.no_grad():
        torch.testing.assert_close(embedding(x), F.gelu(out).transpose(1, 2), rtol=1e-5, atol=1e-5)


def encoder_input_by_hand(encoder: BEATsEncoder, x, padding=None):
    """Padding zeroed, the positional conv added, then LayerNorm when post-LN."""
    if padding is not None:
        x = x * (~padding)[..., None]
    x = x + encoder.pos_conv(x)
    return x if encoder.config.layer_norm_first else layer_norm_by_hand(encoder.layer_norm, x)


@pytest.mark.parametrize("layer_norm_first", [False, True], ids=["post-ln", "pre-ln"])
def test_encoder_is_the_positional_conv_then_the_blocks_with_one_shared_bias(layer_norm_first):
    config = tiny_config(layer_norm_first=layer_norm_first, deep_norm=not layer_norm_first)
    encoder = randomise(BEATsEncoder(config))
    torch.manual_seed(8)
    x = torch.randn(2, 6, config.hidden_size)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 5:] = True
    # A large value on a padded token: zeroed before the positional conv, it must not reach the real ones.
    x[0, 5] = 100.0
    with torch.no_grad():
        hidden = encoder_input_by_hand(encoder, x, padding)
        bias = encoder.position_bias(6)
        for layer in encoder.blocks:
            hidden = layer(hidden, encoder_mask(padding), bias)
        if layer_norm_first:
            hidden = layer_norm_by_hand(encoder.layer_norm, hidden)
        torch.testing.assert_close(encoder(x, padding), hidden, rtol=1e-5, atol=1e-5)
        assert encoder.blocks[0].self_attn.gru_rel_pos_linear is not None


def encoder_mask(padding):
    """The additive float mask over keys that the blocks take (0 on real keys, -inf on padded ones)."""
    mask = torch.zeros(padding.shape, dtype=torch.float32).masked_fill(
        padding, torch.finfo(torch.float32).min
    )
    return mask[:, None, None, :]


def test_layerdrop_skips_the_blocks_its_draws_pick_only_in_training():
    config = tiny_config(layerdrop=0.5, num_hidden_layers=6)
    encoder = randomise(BEATsEncoder(config))
    torch.manual_seed(9)
    x = torch.randn(2, 6, config.hidden_size)
    with torch.no_grad():
        hidden = encoder_input_by_hand(encoder, x)
        bias = encoder.position_bias(6)
        full = hidden
        for layer in encoder.blocks:
            full = layer(full, None, bias)
        # Evaluation runs every block.
        torch.testing.assert_close(encoder(x), full, rtol=1e-5, atol=1e-5)
        torch.manual_seed(10)
        draws = [float(torch.rand(())) for _ in encoder.blocks]
        assert 0 < sum(d < 0.5 for d in draws) < len(draws)
        kept = hidden
        for layer, draw in zip(encoder.blocks, draws, strict=True):
            if not draw < 0.5:
                kept = layer(kept, None, bias)
        encoder.train()
        torch.manual_seed(10)
        torch.testing.assert_close(encoder(x), kept, rtol=1e-5, atol=1e-5)
        # Without layerdrop, training runs every block (no dropout in this config).
        encoder.config.layerdrop = 0.0
        torch.testing.assert_close(encoder(x), full, rtol=1e-5, atol=1e-5)


# --- the stem, the pooling and the head ----------------------------------------------------------------


@pytest.mark.parametrize("projected", [True, False], ids=["8-to-16", "identity"])
def test_model_is_the_patch_stem_then_the_encoder_and_the_mean_of_the_real_patches(projected):
    config = tiny_config(patch_embedding_dim=8 if projected else 16, conv_bias=True)
    model = randomise(BEATsModel(config))
    assert isinstance(model.post_extract_proj, torch.nn.Linear if projected else torch.nn.Identity)
    assert model.get_input_embeddings() is model.patch_embedding
    torch.manual_seed(11)
    x = torch.randn(2, 53, config.num_mel_bins)  # 3 whole time patches and a partial one, dropped
    attention_mask = torch.ones(2, 53, dtype=torch.long)
    attention_mask[1, 20:] = 0
    conv = model.patch_embedding
    with torch.no_grad():
        # 16 x 16 patches, row-major over (time, frequency), each a dot product with the conv's kernel.
        patches = x[:, :48].reshape(2, 3, 16, 2, 16).permute(0, 1, 3, 2, 4).reshape(2, 6, 256)
        embedded = patches @ conv.weight.reshape(config.patch_embedding_dim, 256).T + conv.bias
        embedded = layer_norm_by_hand(model.layer_norm, embedded)
        if projected:
            embedded = F.linear(embedded, model.post_extract_proj.weight, model.post_extract_proj.bias)
        # The reference's padding: 53 frames -> 48, 8 per patch; patch p padding iff frames 8p..8p+7 all are.
        padding = torch.tensor([[False] * 6, [False, False, False, True, True, True]])
        hidden = model.encoder(embedded, padding)
        outputs = model(x, attention_mask=attention_mask)
        torch.testing.assert_close(outputs.last_hidden_state, hidden, rtol=1e-5, atol=1e-5)
        pooled = torch.stack([hidden[0].mean(0), hidden[1, :3].mean(0)])
        torch.testing.assert_close(outputs.pooler_output, pooled, rtol=1e-5, atol=1e-5)
        # Without a mask every patch is real and pooled.
        unmasked = model(x)
        torch.testing.assert_close(unmasked.pooler_output, unmasked.last_hidden_state.mean(1))


def test_an_input_of_exactly_one_patch_runs():
    config = tiny_config()
    model = BEATsModel(config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, config.patch_size, config.num_mel_bins)).last_hidden_state
    assert out.shape == (1, config.num_mel_bins // config.patch_size, config.hidden_size)


def test_inputs_shorter_than_a_patch_or_with_a_mask_of_another_shape_are_refused():
    config = tiny_config()
    model = BEATsModel(config).eval()
    short = torch.randn(2, config.patch_size - 6, config.num_mel_bins)
    with pytest.raises(
        ValueError, match=r"^input_values has 10 frames, fewer than one patch \(patch_size=16\)$"
    ):
        model(short)
    # A mask one frame short would otherwise be reduced to patches as if it were the clip's.
    x = torch.randn(2, 48, config.num_mel_bins)
    with pytest.raises(
        ValueError, match=r"attention_mask must be \(batch, frames\) = \(2, 48\), got \(2, 47\)"
    ):
        model(x, attention_mask=torch.ones(2, 47, dtype=torch.long))


def test_the_stem_and_encoder_layer_norms_use_the_config_epsilon():
    # eps 0.5, far from LayerNorm's default 1e-5: the norm of the patches and the encoder's norm.
    config = tiny_config(layer_norm_eps=0.5)
    model = randomise(BEATsModel(config))
    generator = torch.Generator().manual_seed(14)
    for norm, width in (
        (model.layer_norm, config.patch_embedding_dim),
        (model.encoder.layer_norm, config.hidden_size),
    ):
        x = torch.randn(2, 5, width, generator=generator)
        mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        expected = (x - mean) / torch.sqrt(var + 0.5) * norm.weight + norm.bias
        with torch.no_grad():
            torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-6)


def test_classifier_is_a_linear_head_on_the_pooled_embedding():
    config = tiny_config()
    model = randomise(BEATsForAudioClassification(config))
    torch.manual_seed(12)
    x = torch.randn(2, 32, config.num_mel_bins)
    attention_mask = torch.ones(2, 32, dtype=torch.long)
    attention_mask[0, 16:] = 0
    with torch.no_grad():
        pooled = model.beats(x, attention_mask=attention_mask).pooler_output
        outputs = model(x, attention_mask=attention_mask)
    expected = F.linear(pooled, model.classifier.weight, model.classifier.bias)
    torch.testing.assert_close(outputs.logits, expected, rtol=1e-5, atol=1e-5)
    assert model.num_labels == config.num_labels == outputs.logits.shape[1]


# --- the reference's initialisation ------------------------------------------------------------------


def test_initialisation_follows_the_reference():
    config = tiny_config(
        hidden_size=256,
        intermediate_size=128,
        num_attention_heads=4,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        patch_embedding_dim=64,
        conv_bias=True,
        num_buckets=64,
        max_distance=128,
        initializer_range=0.1,
    )
    torch.manual_seed(13)
    model = BEATsForAudioClassification(config)
    beats = model.beats
    # The positional conv: N(0, sqrt(4 / (kernel * width))), zero bias.
    conv = beats.encoder.pos_conv.conv
    assert conv.weight.std().item() == pytest.approx(math.sqrt(4 / (8 * 256)), rel=0.05)
    assert not conv.bias.any()
    # The relative position table and the classifier: N(0, initializer_range).
    assert beats.encoder.relative_attention_bias.weight.std().item() == pytest.approx(0.1, rel=0.1)
    assert model.classifier.weight.std().item() == pytest.approx(0.1, rel=0.1)
    assert beats.post_extract_proj.weight.std().item() == pytest.approx(0.1, rel=0.05)
    assert not model.classifier.bias.any() and not beats.post_extract_proj.bias.any()
    # Deep-norm: xavier-normal, with gain beta = (8N)^(-1/4) on v, out, fc1 and fc2 and 1 on q and k.
    beta = (8 * config.num_hidden_layers) ** -0.25
    layer = beats.encoder.blocks[0]
    for linear, gain in (
        (layer.self_attn.q_proj, 1.0),
        (layer.self_attn.k_proj, 1.0),
        (layer.self_attn.v_proj, beta),
        (layer.self_attn.out_proj, beta),
        (layer.fc1, beta),
        (layer.fc2, beta),
    ):
        fan_out, fan_in = linear.weight.shape
        # rel 1.5%: about 4 standard errors of the std of 32k draws; (9N)^(-1/4) instead of beta is 3% off.
        expected_std = gain * math.sqrt(2 / (fan_in + fan_out))
        assert linear.weight.std().item() == pytest.approx(expected_std, rel=0.015)
        assert not linear.bias.any()
    # The gate: N(0, initializer_range) projection, unit constants.
    gate = layer.self_attn.gru_rel_pos_linear
    assert gate.weight.std().item() == pytest.approx(0.1, rel=0.25)
    assert torch.equal(layer.self_attn.gru_rel_pos_const, torch.ones(1, 4, 1, 1))
    # The patch conv: torch's default, kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    weight = beats.patch_embedding.weight
    bound = 1 / math.sqrt(256)
    assert weight.abs().max().item() <= bound
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert not beats.patch_embedding.bias.any()


def test_a_reinitialised_model_resets_the_gate_constants():
    config = tiny_config()
    model = BEATsModel(config)
    with torch.no_grad():
        for layer in model.encoder.blocks:
            layer.self_attn.gru_rel_pos_const.fill_(5.0)
    for module in model.modules():
        model._init_weights(module)
    for layer in model.encoder.blocks:
        assert torch.equal(
            layer.self_attn.gru_rel_pos_const, torch.ones_like(layer.self_attn.gru_rel_pos_const)
        )


def test_one_frame_per_patch_is_a_valid_padding_reduction():
    padding = torch.tensor([[False, False, True, True]])
    assert torch.equal(reference_patch_padding_mask(padding, 4), padding)


def test_eager_attention_drops_attention_probabilities_in_training():
    config = tiny_config("eager", attention_probs_dropout_prob=0.5)
    attention = randomise(BEATsAttention(config))
    torch.manual_seed(14)
    x = torch.randn(2, 7, config.hidden_size)
    bias = torch.randn(1, config.num_attention_heads, 7, 7)
    with torch.no_grad():
        _, probs = attention(x, None, bias)
        attention.train()
        _, dropped = attention(x, None, bias)
    # Inverted dropout: each probability zeroed or scaled by 1 / (1 - p).
    zeroed = dropped == 0
    assert 0 < int(zeroed.sum()) < zeroed.numel()
    torch.testing.assert_close(dropped[~zeroed], 2 * probs[~zeroed])


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_the_bias_follows_the_query_dtype_under_autocast(attn_implementation):
    # Under bf16 autocast the projections are bf16 while the table stays float32: the bias must reach the
    # kernel in a dtype it accepts (a float16 bias is refused by SDPA).
    config = tiny_config(attn_implementation)
    encoder = randomise(BEATsEncoder(config))
    torch.manual_seed(15)
    x = torch.randn(2, 6, config.hidden_size)
    with torch.no_grad():
        expected = encoder(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = encoder(x)
    torch.testing.assert_close(out.float(), expected, rtol=0.1, atol=0.1)
