"""AudioMAE's model file and the shared heads against computations written out here: the patch embedding
and the sin-cos position table by hand, the pooling from the hidden states, the head and its losses, the
patch-out and pre-training masks by counting, the decoder and the reconstruction loss step by step, and the
initialisation the paper and its code specify (hf_audiorep/modeling/modeling_audiomae.py); and the shared
`CosineClassifier` (hf_audiorep/modeling/_heads.py) on token sequences, at its edges and at init.

Tiny configs with 4 x 4 patches, so every value is computed in well under a second."""

import math

import pytest
import torch

from hf_audiorep.modeling._heads import CosineClassifier
from hf_audiorep.modeling._layers import patch_out_mask_2d
from hf_audiorep.modeling.configuration_audiomae import AudioMAEConfig
from hf_audiorep.modeling.modeling_audiomae import (
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEModel,
)

P = 4  # patch size: a 16 x 8 input is a 4 x 2 grid
TINY = dict(
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    patch_size=P,
    max_length=16,
    num_mel_bins=8,
    num_labels=3,
    drop_path_rate=0.0,
    # Large enough that a LayerNorm built with torch's default eps (1e-5) gives other values.
    layer_norm_eps=0.1,
    decoder_hidden_size=12,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=3,  # not the encoder's 2: each stack must take its own
    mask_ratio=0.5,
)


def config(**overrides) -> AudioMAEConfig:
    return AudioMAEConfig(**{**TINY, **overrides})


def randomise_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """LayerNorms start at (1, 0); random affine parameters make a swapped or skipped norm visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))


def sincos_row(dim: int, t: int, f: int) -> list[float]:
    """MAE's 2-D sin-cos position of patch (t, f): the frequency (column) index fills the first half."""
    quarter = dim // 4
    omegas = [1.0 / 10000 ** (k / quarter) for k in range(quarter)]
    return (
        [math.sin(f * w) for w in omegas]
        + [math.cos(f * w) for w in omegas]
        + [math.sin(t * w) for w in omegas]
        + [math.cos(t * w) for w in omegas]
    )


def embeddings_by_hand(model: AudioMAEModel, x: torch.Tensor) -> torch.Tensor:
    """``[CLS, patches]`` before the first block: conv patch projection + sin-cos position, CLS + zeros.

    ``x`` is ``(batch, frames, bins)`` or ``(batch, channels, frames, bins)``."""
    x = x if x.ndim == 4 else x[:, None]
    batch, channels, frames, bins = x.shape
    grid_t, grid_f = -(-frames // P), bins // P
    padded = torch.zeros(batch, channels, grid_t * P, bins)
    padded[:, :, :frames] = x
    weight = model.patch_embed.proj.weight.reshape(model.config.hidden_size, channels * P * P)
    bias = model.patch_embed.proj.bias
    rows = [model.cls_token[0, 0].expand(batch, -1)]
    for t in range(grid_t):
        for f in range(grid_f):
            pixels = padded[:, :, t * P : (t + 1) * P, f * P : (f + 1) * P].reshape(batch, channels * P * P)
            position = torch.tensor(sincos_row(model.config.hidden_size, t, f))
            rows.append(pixels @ weight.T + bias + position)
    return torch.stack(rows, dim=1)


def layer_norm_by_hand(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """``norm``'s affine parameters, the config's eps (timm's 1e-6 in AudioMAE; 0.1 here)."""
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / (var + TINY["layer_norm_eps"]).sqrt() * norm.weight + norm.bias


def tiny(cls, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = cls(config(**overrides)).eval()
    randomise_norms(model, seed)
    return model


# ---- the encoder --------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [16, 14])  # a whole grid, and a shorter clip with a zero-padded patch
def test_embeddings_are_the_patch_projection_plus_the_sincos_table(frames):
    model = tiny(AudioMAEModel)
    x = torch.randn(2, frames, 8)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        expected = embeddings_by_hand(model, x)
    assert out.last_hidden_state.shape == (2, 1 + 8, 8)
    torch.testing.assert_close(out.hidden_states[0], expected, rtol=0, atol=1e-5)


def test_a_two_channel_input_is_projected_over_both_channels():
    model = tiny(AudioMAEModel, num_channels=2)
    x = torch.randn(2, 2, 12, 8)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
        expected = embeddings_by_hand(model, x)
    torch.testing.assert_close(out.hidden_states[0], expected, rtol=0, atol=1e-5)


def test_global_pool_is_fc_norm_of_the_mean_of_the_real_patch_tokens_and_no_final_norm():
    model = tiny(AudioMAEModel)
    x = torch.randn(2, 16, 8)
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 5:] = 0  # clip 1: frames 0-4, so time columns 0 and 1 (patches 0-3) are real
    with torch.no_grad():
        out = model(x, attention_mask=attention_mask, output_hidden_states=True)
    last = out.last_hidden_state
    torch.testing.assert_close(last, out.hidden_states[-1], rtol=0, atol=0)  # the last block's own output
    means = torch.stack([last[0, 1:].mean(0), last[1, 1:5].mean(0)])  # CLS and padding left out
    torch.testing.assert_close(out.pooler_output, layer_norm_by_hand(means, model.fc_norm), rtol=0, atol=1e-5)


def test_cls_pooling_takes_the_normalised_cls_token():
    model = tiny(AudioMAEModel, use_cls_pooling=True)
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    normalised = layer_norm_by_hand(out.hidden_states[-1], model.norm)
    torch.testing.assert_close(out.last_hidden_state, normalised, rtol=0, atol=1e-5)
    torch.testing.assert_close(out.pooler_output, normalised[:, 0], rtol=0, atol=1e-5)


def test_mask_and_ids_keep_encode_the_kept_patches_with_their_own_positions():
    model = tiny(AudioMAEModel)
    x = torch.randn(2, 16, 8)
    embeddings = embeddings_by_hand(model, x)
    ids_keep = torch.tensor([[6, 1, 3], [0, 7, 2]])  # kept in the given order
    with torch.no_grad():
        kept = model(x, ids_keep=ids_keep, output_hidden_states=True)
        mask = torch.ones(2, 8, dtype=torch.bool)
        mask.scatter_(1, ids_keep, False)
        masked = model(x, mask=mask, output_hidden_states=True)
    expected = torch.cat(
        [embeddings[:, :1], torch.stack([embeddings[b, 1 + ids_keep[b]] for b in range(2)])], 1
    )
    torch.testing.assert_close(kept.hidden_states[0], expected, rtol=0, atol=1e-5)
    # A mask keeps the same patches, in ascending order.
    ascending = ids_keep.sort(dim=1).values
    torch.testing.assert_close(
        masked.hidden_states[0][:, 1:], torch.stack([embeddings[b, 1 + ascending[b]] for b in range(2)])
    )
    with pytest.raises(ValueError, match="not both"):
        model(x, mask=mask, ids_keep=ids_keep)
    for bad in (ids_keep[0], ids_keep[:1]):
        with pytest.raises(ValueError, match="ids_keep"):
            model(x, ids_keep=bad)


def test_ids_keep_carries_the_padding_mask_to_the_pool():
    model = tiny(AudioMAEModel)
    x = torch.randn(1, 16, 8)
    attention_mask = torch.zeros(1, 16, dtype=torch.long)
    attention_mask[0, :8] = 1  # patches 0-3 real, 4-7 padding
    ids_keep = torch.tensor([[5, 1, 2, 6]])  # two real, two padding
    with torch.no_grad():
        out = model(x, attention_mask=attention_mask, ids_keep=ids_keep)
        alone = model(x[:, :8], ids_keep=torch.tensor([[1, 2]]))
    last = out.last_hidden_state
    expected = layer_norm_by_hand(last[:, 2:4].mean(1), model.fc_norm)  # tokens of patches 1 and 2
    torch.testing.assert_close(out.pooler_output, expected, rtol=0, atol=1e-5)
    # Padding is out of attention as well: the real tokens are those of the clip alone.
    torch.testing.assert_close(out.pooler_output, alone.pooler_output, rtol=0, atol=1e-5)


# ---- the classifier -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("problem_type", "labels"),
    [
        ("multi_label_classification", torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])),
        ("single_label_classification", torch.tensor([2, 0])),
    ],
)
def test_classifier_is_a_linear_head_on_the_pooled_embedding_with_its_loss(problem_type, labels):
    model = tiny(AudioMAEForAudioClassification, problem_type=problem_type)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    x = torch.randn(2, 16, 8)
    with torch.no_grad():
        out = model(x, labels=labels)
        pooled = model.audiomae(x).pooler_output
    logits = pooled @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=1e-6)
    assert model.num_labels == 3
    if problem_type == "multi_label_classification":
        p = torch.sigmoid(logits)
        loss = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    else:
        loss = -logits.log_softmax(-1)[torch.arange(2), labels].mean()
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=1e-5)


def test_training_patch_out_drops_whole_columns_and_rows_and_only_in_training():
    # grid 4 x 2: mask_t_prob 0.5 keeps int(4 * 0.5) = 2 time columns, mask_f_prob 0.5 one frequency row.
    x = torch.randn(3, 16, 8)
    for t_prob, f_prob, kept in ((0.5, 0.0, 2 * 2), (0.0, 0.5, 4 * 1), (0.5, 0.5, 2 * 1), (0.0, 0.0, 8)):
        model = tiny(AudioMAEForAudioClassification, mask_t_prob=t_prob, mask_f_prob=f_prob).train()
        out = model(x, output_hidden_states=True)
        assert out.hidden_states[0].shape[1] == 1 + kept, (t_prob, f_prob)
        mask = model.patch_out(x)
        assert (mask is None) == (kept == 8)
        if mask is not None:
            assert torch.equal((~mask).sum(1), torch.full((3,), kept))
        assert model.eval()(x, output_hidden_states=True).hidden_states[0].shape[1] == 1 + 8


def test_patch_out_uses_the_clip_grid_and_the_generator_and_feeds_the_encoder():
    model = tiny(AudioMAEForAudioClassification, mask_t_prob=0.5, mask_f_prob=0.5).train()
    x = torch.randn(2, 8, 8)  # a 2 x 2 grid, shorter than max_length's 4 x 2
    mask = model.patch_out(x, generator=torch.Generator().manual_seed(5))
    _, expected = patch_out_mask_2d(2, 2, 2, 0.5, 0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(mask, expected)
    # The forward's random patch-out is the mask patch_out draws, applied to the encoder.
    torch.manual_seed(7)
    logits = model(x).logits
    torch.manual_seed(7)
    drawn = model.patch_out(x)
    with torch.no_grad():
        expected_logits = model.classifier(model.audiomae(x, mask=drawn).pooler_output)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-6)
    # A given mask replaces the random patch-out.
    given = torch.tensor([[True, False, False, True], [False, True, True, False]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, mask=given).logits, model.eval()(x, mask=given).logits, rtol=0, atol=1e-6
        )


# ---- initialisation ----------------------------------------------------------------------------------


def test_init_draws_cls_and_mask_tokens_from_initializer_range_and_xavier_linears_with_zero_biases():
    torch.manual_seed(0)
    wide = config(
        hidden_size=512,
        decoder_hidden_size=512,
        num_attention_heads=1,
        decoder_num_attention_heads=1,
        initializer_range=0.5,
    )
    model = AudioMAEForPreTraining(wide)
    assert 0.45 < model.audiomae.cls_token.std() < 0.55
    assert 0.45 < model.decoder.mask_token.std() < 0.55
    for linear in (model.decoder.embed, model.decoder.pred, model.audiomae.blocks[0].mlp.fc1):
        bound = math.sqrt(6 / sum(linear.weight.shape))
        assert 0.9 * bound < linear.weight.abs().max() <= bound
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
    conv = model.audiomae.patch_embed.proj  # xavier over (out, in * k * k), as MAE's patch projection
    bound = math.sqrt(6 / (conv.weight.shape[0] + P * P))
    assert 0.9 * bound < conv.weight.abs().max() <= bound and not conv.bias.any()
    # The classifier's head follows classifier_init_std, not xavier; its bias starts at zero.
    head = AudioMAEForAudioClassification(config(num_labels=200, classifier_init_std=0.3)).classifier
    assert 0.27 < head.weight.std() < 0.33 and not head.bias.any()


def test_position_buffers_are_the_sincos_table_after_init():
    model = AudioMAEForPreTraining(config())
    for buffer, width in ((model.audiomae.pos_embed, 8), (model.decoder.pos_embed, 12)):
        expected = [[0.0] * width] + [sincos_row(width, t, f) for t in range(4) for f in range(2)]
        torch.testing.assert_close(buffer[0], torch.tensor(expected), rtol=0, atol=1e-6)


# ---- pre-training ------------------------------------------------------------------------------------


def test_pretraining_masks_config_mask_ratio_by_count_and_an_override():
    model = tiny(AudioMAEForPreTraining, mask_ratio=0.75)
    x = torch.randn(3, 16, 8)
    with torch.no_grad():
        default = model(x, generator=torch.Generator().manual_seed(0), output_hidden_states=True)
        half = model(x, mask_ratio=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default.mask.sum(1), torch.full((3,), 6))  # 8 - int(8 * 0.25)
    assert default.hidden_states[0].shape[1] == 1 + 2
    assert torch.equal(half.mask.sum(1), torch.full((3,), 4))


def test_decoder_unshuffles_visible_latents_and_mask_tokens_step_by_step():
    model = tiny(AudioMAEForPreTraining)
    x = torch.randn(2, 16, 8)
    noise = torch.rand(2, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x, noise=noise)
        # The encoder on the 4 lowest-noise patches, then fc_norm (MAE's final encoder norm).
        ids_keep = noise.argsort(dim=1)[:, :4]
        latent = layer_norm_by_hand(
            model.audiomae(x, ids_keep=ids_keep).last_hidden_state, model.audiomae.fc_norm
        )
        decoder = model.decoder
        embedded = latent @ decoder.embed.weight.T + decoder.embed.bias
        tokens = decoder.mask_token[0, 0].expand(2, 8, -1).clone()
        for b in range(2):
            tokens[b, ids_keep[b]] = embedded[b, 1:]
        hidden = torch.cat([embedded[:, :1], tokens], dim=1) + decoder.pos_embed
        for block in decoder.blocks:
            hidden = block(hidden, None)
        pixels = layer_norm_by_hand(hidden, decoder.norm) @ decoder.pred.weight.T + decoder.pred.bias
    assert torch.equal(out.mask, torch.ones(2, 8, dtype=torch.bool).scatter(1, ids_keep, False))
    torch.testing.assert_close(out.logits, pixels[:, 1:], rtol=0, atol=1e-5)
    # MAE's parameter layout (a checkpoint's mask token is (1, 1, width)) and the decoder's own heads.
    assert decoder.mask_token.shape == (1, 1, 12)
    assert [block.attn.num_heads for block in decoder.blocks] == [3]
    assert [block.attn.num_heads for block in model.audiomae.blocks] == [2]


def test_decoder_tokens_follow_the_activations_dtype_under_autocast():
    # Mask tokens and positions are float32 parameters and buffers: cast to the bf16 activations, the
    # decoder's residual stream stays in bf16 rather than being promoted to float32.
    model = tiny(AudioMAEForPreTraining)
    seen = []
    model.decoder.blocks[0].register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randn(2, 16, 8), noise=torch.rand(2, 8))
    assert seen == [torch.bfloat16]


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruction_loss_by_hand_over_masked_real_patches(norm_pix_loss):
    model = tiny(AudioMAEForPreTraining, norm_pix_loss=norm_pix_loss)
    x = torch.randn(2, 14, 8)  # the last time column is partly zero padding
    pred = torch.randn(2, 8, P * P)
    mask = torch.tensor([[True, False, True, True, False, False, True, False]] * 2)
    patch_mask = torch.ones(2, 8)
    patch_mask[1, 4:] = 0
    padded = torch.cat([x, torch.zeros(2, 2, 8)], dim=1)
    total, count = 0.0, 0
    for b in range(2):
        for j in range(8):
            t, f = divmod(j, 2)
            target = padded[b, t * P : (t + 1) * P, f * P : (f + 1) * P].reshape(-1)
            if norm_pix_loss:
                mean = target.sum() / target.numel()
                var = (target - mean).pow(2).sum() / (target.numel() - 1)  # unbiased, as MAE
                target = (target - mean) / math.sqrt(var + 1e-6)
            if mask[b, j] and patch_mask[b, j]:
                total, count = total + (pred[b, j] - target).pow(2).mean(), count + 1
    loss = model.reconstruction_loss(x, pred, mask, patch_mask)
    torch.testing.assert_close(loss, total / count, rtol=0, atol=1e-6)
    assert model.reconstruction_loss(x, pred, torch.zeros_like(mask)) == 0  # nothing masked: 0, not NaN


def test_patchify_and_unpatchify_of_a_two_channel_input():
    model = tiny(AudioMAEForPreTraining, num_channels=2)
    x = torch.randn(1, 2, 16, 8)
    patches = model.patchify(x)
    assert patches.shape == (1, 8, P * P * 2)
    t, f = 2, 1  # patch 5: pixels in (time, frequency, channel) order
    expected = x[0, :, t * P : (t + 1) * P, f * P : (f + 1) * P].permute(1, 2, 0).reshape(-1)
    torch.testing.assert_close(patches[0, 5], expected, rtol=0, atol=0)
    torch.testing.assert_close(model.unpatchify(patches), x, rtol=0, atol=0)
    torch.testing.assert_close(model.unpatchify(patches, num_frames=10), x[:, :, :10], rtol=0, atol=0)


def test_decoder_parameters_sit_after_the_last_block_for_layer_decay():
    model = AudioMAEForPreTraining(config(num_hidden_layers=3))
    assert model.get_layer_id("decoder.pred.weight") == 4 and model.get_layer_id("decoder.mask_token") == 4
    assert model.get_layer_id("audiomae.blocks.2.norm1.weight") == 3
    assert model.get_layer_id("audiomae.cls_token") == 0


def test_config_defaults_are_audiomae_recipe_by_behaviour():
    # Only the sizes are set: patch-out, mask ratio, pixel normalisation and pooling are the defaults.
    sizes = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, patch_size=P, max_length=40)
    sizes |= dict(num_mel_bins=20, decoder_hidden_size=8, decoder_num_hidden_layers=1)
    sizes |= dict(decoder_num_attention_heads=2)
    torch.manual_seed(0)
    classifier = AudioMAEForAudioClassification(AudioMAEConfig(**sizes, num_labels=2)).train()
    x = torch.randn(2, 40, 20)  # a 10 x 5 grid
    # Patch-out 0.2 / 0.2: 8 of 10 time columns, 4 of 5 frequency rows.
    assert classifier(x, output_hidden_states=True).hidden_states[0].shape[1] == 1 + 8 * 4
    assert isinstance(classifier.audiomae.norm, torch.nn.Identity)  # global pool: no final norm
    assert classifier.audiomae.fc_norm.eps == 1e-6  # timm's LayerNorm eps
    pretraining = AudioMAEForPreTraining(AudioMAEConfig(**sizes)).eval()
    with torch.no_grad():
        out = pretraining(x, generator=torch.Generator().manual_seed(0))
    # Mask ratio 0.8: MAE keeps int(50 * (1 - 0.8)) = 9 patches (the float product is just under 10).
    assert torch.equal(out.mask.sum(1), torch.full((2,), 41))
    # norm_pix_loss: targets normalised per patch (unbiased variance, as MAE).
    pixels = pretraining.patchify(x)
    normalised = (pixels - pixels.mean(-1, keepdim=True)) / (pixels.var(-1, keepdim=True) + 1e-6).sqrt()
    loss = (out.logits - normalised).pow(2).mean(-1)[out.mask].mean()
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=1e-5)


# ---- CosineClassifier --------------------------------------------------------------------------------


def test_cosine_classifier_on_token_sequences_and_its_initial_weight_range():
    head = CosineClassifier(16, 300, scale=2.5)
    bound = 1 / math.sqrt(16)  # kaiming-uniform with a = sqrt(5): nn.Linear's default range
    assert 0.95 * bound < head.weight.abs().max() <= bound
    h = torch.randn(2, 3, 16)  # the last axis is the embedding, whatever comes before it
    w = head.weight.detach()
    expected = 2.5 * torch.einsum(
        "btd,cd->btc", h / h.norm(dim=-1, keepdim=True), w / w.norm(dim=-1, keepdim=True)
    )
    torch.testing.assert_close(head(h), expected, rtol=0, atol=1e-5)
    assert isinstance(head.scale, float) and head.scale == 2.5
    assert head.extra_repr() == "in_features=16, num_labels=300, scale=2.5"


@pytest.mark.parametrize("name", ["in_features", "num_labels"])
@pytest.mark.parametrize("bad", [True, 3.0, 0, -1])
def test_cosine_classifier_rejects_sizes_that_are_not_positive_ints(name, bad):
    with pytest.raises(ValueError, match=f"CosineClassifier {name} must be a positive int"):
        CosineClassifier(**{"in_features": 4, "num_labels": 3, name: bad}, scale=1.0)


@pytest.mark.parametrize("bad", [True, "56", math.nan, -1.0])
def test_cosine_classifier_rejects_a_scale_that_is_not_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match="scale"):
        CosineClassifier(4, 3, scale=bad)


def test_cosine_classifier_takes_the_smallest_sizes_and_a_scale_below_one():
    head = CosineClassifier(1, 1, scale=0.5)
    h = torch.tensor([[2.0], [-3.0]])
    # In one dimension the cosine is the product of the signs.
    expected = 0.5 * torch.sign(h) * torch.sign(head.weight.detach()[0, 0])
    torch.testing.assert_close(head(h), expected, rtol=0, atol=1e-6)
