"""The shared ViT layers (hf_audiorep/modeling/_layers.py) value by value, each against an independent
computation: attention written out head by head (scaled dot product, key padding, the output gate, dropout
only in training), the feed-forward and blocks, stochastic depth, the patch embedding as a sum over each
16 x 16 tile, the initialisation bound, the positions, MAE's masks from the noise, token gathering, pooling,
the input checks and the layer ids."""

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hf_audiorep.modeling import AudioMAEConfig
from hf_audiorep.modeling._layers import (
    Attention,
    ChannelLayerNorm,
    ConfigView,
    DropPath,
    LayerDecayMixin,
    Mlp,
    PatchEmbed,
    PostLNBlock,
    PreLNBlock,
    SpectrogramModelMixin,
    check_spectrogram_inputs,
    classification_output,
    classifier_head,
    drop_path,
    drop_path_rates,
    eager_attention_forward,
    frames_to_patch_mask,
    gather_tokens,
    get_2d_sincos_pos_embed,
    init_patch_projection_,
    masked_mean,
    masking_from_noise,
    pad_to_patches,
    patch_grid_shape,
    patch_out_mask_2d,
    pool_tokens,
    random_masking,
    sincos_pos_embed_like,
    spectrogram_as_image,
    token_attention_mask,
    visible_indices,
    without_stochastic_depth,
)

HIDDEN, HEADS = 12, 3
HEAD_DIM = HIDDEN // HEADS


def config(attn="eager", **overrides) -> AudioMAEConfig:
    fields = dict(hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=2, max_length=64)
    cfg = AudioMAEConfig(**{**fields, "num_mel_bins": 32, **overrides})
    cfg._attn_implementation = attn
    return cfg


def linear(x, layer):
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def manual_attention(attn, x, key_real=None):
    """Multi-head attention head by head: q, k, v are the thirds of the fused projection, each split into
    heads of ``HEAD_DIM`` consecutive channels; scores q.k / sqrt(head_dim), padded keys excluded; the gate
    ``sigmoid(x W_g + b_g)`` multiplies each head's output (one value per head or per channel)."""
    qkv = linear(x, attn.qkv)
    heads = []
    for h in range(HEADS):
        q, k, v = (
            qkv[..., part * HIDDEN + h * HEAD_DIM : part * HIDDEN + (h + 1) * HEAD_DIM] for part in range(3)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(HEAD_DIM)
        if key_real is not None:
            scores = scores.masked_fill(~key_real[:, None, :], float("-inf"))
        heads.append(torch.softmax(scores, dim=-1) @ v)
    out = torch.cat(heads, dim=-1)
    if attn.gate_proj is not None:
        gate = torch.sigmoid(linear(x, attn.gate_proj))
        if gate.shape[-1] == HEADS:
            gate = gate.repeat_interleave(HEAD_DIM, dim=-1)
        out = out * gate
    return linear(out, attn.proj)


# ---- attention ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("gate", ["none", "headwise", "elementwise"])
def test_attention_is_scaled_dot_product_per_head_with_key_padding_and_gate(backend, gate):
    torch.manual_seed(0)
    cfg = config(backend)
    attn = Attention(cfg, gate=gate).double().eval()
    if gate != "none":  # gates far from 0.5, so that a wrong gate shape or position shows
        nn.init.normal_(attn.gate_proj.weight, std=1.0)
        nn.init.normal_(attn.gate_proj.bias, std=2.0)
    x = torch.randn(2, 5, HIDDEN, dtype=torch.float64)
    with torch.no_grad():
        out, _ = attn(x)
        torch.testing.assert_close(out, manual_attention(attn, x))
        # [CLS, 4 patches]; clip 1's last two patches are padding: no query may read them.
        patch_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
        mask = token_attention_mask(cfg, x, patch_mask)
        key_real = torch.tensor([[True] * 5, [True, True, True, False, False]])
        masked, _ = attn(x, mask)
        torch.testing.assert_close(masked, manual_attention(attn, x, key_real))
        assert (masked[1] - out[1]).abs().max() > 1e-3, "the padding must change clip 1"
        torch.testing.assert_close(masked[0], out[0])
        junk = x.clone()
        junk[1, 3:] = 100 * torch.randn(2, HIDDEN, dtype=torch.float64)
        torch.testing.assert_close(attn(junk, mask)[0][1, :3], masked[1, :3])
    if gate == "none":
        assert attn.gate_proj is None and set(attn.state_dict()) == {
            "qkv.weight",
            "qkv.bias",
            "proj.weight",
            "proj.bias",
        }
    else:
        assert attn.gate_proj.out_features == (HEADS if gate == "headwise" else HIDDEN)
        assert attn.gate_proj.in_features == HIDDEN
    assert attn.gate == gate  # read by BAT to report each block's gate


def test_eager_kernel_returns_tokens_major_output_and_probabilities():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, HEADS, 5, HEAD_DIM) for _ in range(3))
    additive = torch.zeros(2, 1, 5, 5)
    additive[1, ..., 4] = torch.finfo(torch.float32).min
    module = nn.Module().eval()
    out, probs = eager_attention_forward(module, q, k, v, additive, scaling=0.3)
    expected_probs = torch.softmax(q @ k.transpose(-2, -1) * 0.3 + additive, dim=-1)
    torch.testing.assert_close(probs, expected_probs)
    assert probs[1, ..., 4].max() == 0 and probs[0, ..., 4].min() > 0
    torch.testing.assert_close(out, (expected_probs @ v).transpose(1, 2))
    assert out.shape == (2, 5, HEADS, HEAD_DIM) and out.is_contiguous()
    # Dropout on the probabilities only in training.
    torch.testing.assert_close(
        eager_attention_forward(module, q, k, v, additive, scaling=0.3, dropout=0.5)[0], out
    )
    torch.testing.assert_close(
        eager_attention_forward(module, q, k, v, None, scaling=0.3, dropout=0.5)[1],
        torch.softmax(q @ k.transpose(-2, -1) * 0.3, dim=-1),
    )
    module.train()
    _, dropped = eager_attention_forward(module, q, k, v, None, scaling=0.3, dropout=0.5)
    assert (dropped == 0).float().mean() > 0.3
    # bf16 inputs: probabilities normalised in float32, returned in bf16.
    _, probs16 = eager_attention_forward(module.eval(), q.bfloat16(), k.bfloat16(), v.bfloat16(), None, 0.3)
    assert probs16.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_attention_dropout_only_in_training(backend):
    torch.manual_seed(2)
    attn = Attention(config(backend, attention_probs_dropout_prob=0.5)).double()
    x = torch.randn(2, 6, HIDDEN, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(attn.eval()(x)[0], manual_attention(attn, x))
        attn.train()
        torch.manual_seed(3)
        first = attn(x)[0]
    assert (first - manual_attention(attn, x)).abs().max() > 1e-3, "training must drop attention weights"
    assert attn.scaling == HEAD_DIM**-0.5 and attn.is_causal is False


def test_attention_options_and_the_live_backend():
    assert Attention(config(qkv_bias=False)).qkv.bias is None
    assert Attention(config()).qkv.bias is not None
    with pytest.raises(
        ValueError, match=r"^gate must be one of \('none', 'headwise', 'elementwise'\), got 'x'"
    ):
        Attention(config(), gate="x")
    # The kernel is looked up at call time from the config.
    cfg = config("eager")
    torch.manual_seed(4)
    attn = Attention(cfg).eval()
    x = torch.randn(1, 4, HIDDEN)
    _, probs = attn(x)
    assert probs.shape == (1, HEADS, 4, 4)
    cfg._attn_implementation = "sdpa"
    out, probs = attn(x)
    assert probs is None
    torch.testing.assert_close(out, manual_attention(attn, x), atol=1e-5, rtol=1e-4)


# ---- feed-forward, stochastic depth, blocks ---------------------------------------------------------


def test_mlp_is_fc2_of_gelu_of_fc1_and_its_width_follows_the_ratio():
    torch.manual_seed(5)
    mlp = Mlp(config(mlp_ratio=2.5)).eval()
    assert (mlp.fc1.in_features, mlp.fc1.out_features, mlp.fc2.out_features) == (HIDDEN, 30, HIDDEN)
    x = torch.randn(2, 3, HIDDEN)
    torch.testing.assert_close(mlp(x), linear(nn.functional.gelu(linear(x, mlp.fc1)), mlp.fc2))
    dropped = Mlp(config(hidden_dropout_prob=0.5)).train()(x)
    assert (dropped == 0).float().mean() > 0.3, "hidden dropout applies to the output in training"


def test_drop_path_is_the_identity_at_eval_or_rate_zero_and_checks_its_rate():
    x = torch.randn(64, 3, 4)
    assert drop_path(x, 0.0, training=True) is x and drop_path(x, 0.5, training=False) is x
    torch.manual_seed(6)
    dropped = drop_path(x, 0.5, training=True)
    scale = dropped / x
    kept = scale[:, 0, 0]
    assert set(kept.unique().tolist()) == {0.0, 2.0}
    torch.testing.assert_close(scale, kept[:, None, None].expand_as(x))
    module = DropPath(0.5)
    assert module.eval()(x) is x
    torch.manual_seed(6)
    torch.testing.assert_close(module.train()(x), dropped)
    assert module.extra_repr() == "drop_prob=0.5" and DropPath().drop_prob == 0.0
    assert DropPath(0.0).train()(x) is x
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"^drop_prob must be in \[0, 1\), got {bad}$"):
            DropPath(bad)


def test_drop_path_rates_rise_linearly_and_can_be_switched_off():
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert drop_path_rates(0.3, 2) == [0.0, 0.3]
    assert drop_path_rates(0.3, 1) == [0.0] and drop_path_rates(0.3, 0) == []
    blocks = nn.Sequential(*(PreLNBlock(config(), drop_path=r) for r in drop_path_rates(0.2, 3)))
    assert [b.drop_path.drop_prob for b in blocks] == pytest.approx([0.0, 0.1, 0.2])
    assert without_stochastic_depth(blocks) is blocks
    assert [b.drop_path.drop_prob for b in blocks] == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("block_type", [PreLNBlock, PostLNBlock])
def test_blocks_in_training_drop_each_residual_branch_per_sample(block_type):
    torch.manual_seed(7)
    block = block_type(config(), drop_path=0.5).train()
    x = torch.randn(32, 4, HIDDEN)
    with torch.no_grad():
        out = block(x)
        # A sample whose both branches were dropped is the input (pre-LN) or norm2(norm1(x)) (post-LN).
        identity = x if block_type is PreLNBlock else block.norm2(block.norm1(x))
        same = (out - identity).flatten(1).abs().max(dim=1).values < 1e-6
    assert 0 < same.sum() < 32
    with torch.no_grad():
        block.eval()
        if block_type is PreLNBlock:
            h = x + block.attn(block.norm1(x))[0]
            expected = h + block.mlp(block.norm2(h))
        else:
            h = block.norm1(x + block.attn(x)[0])
            expected = block.norm2(h + block.mlp(h))
        torch.testing.assert_close(block(x), expected)


def test_post_ln_block_applies_its_post_mlp_dropout_in_training_only():
    torch.manual_seed(8)
    block = PostLNBlock(config(), post_mlp_dropout=0.9)
    x = torch.randn(2, 4, HIDDEN)
    with torch.no_grad():
        h = block.norm1(x + block.attn(x)[0])
        torch.testing.assert_close(block.eval()(x), block.norm2(h + block.mlp(h)))
        assert (block.train()(x) - block.norm2(h + block.mlp(h))).abs().max() > 1e-3


def test_gated_pre_ln_block_gates_from_the_normalised_input():
    torch.manual_seed(9)
    block = PreLNBlock(config(), gate="headwise").eval()
    nn.init.normal_(block.attn.gate_proj.bias, std=3.0)
    x = 3 + 2 * torch.randn(2, 4, HIDDEN)
    with torch.no_grad():
        h = x + manual_attention(block.attn, block.norm1(x))
        torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))


def test_config_view_overrides_some_fields_and_reads_the_rest_live():
    cfg = config("eager")
    view = ConfigView(cfg, hidden_size=8, num_attention_heads=2)
    assert (view.hidden_size, view.num_attention_heads, view.layer_norm_eps) == (8, 2, cfg.layer_norm_eps)
    cfg._attn_implementation = "sdpa"
    assert view._attn_implementation == "sdpa" and cfg.hidden_size == HIDDEN
    clone = copy.deepcopy(view)
    assert clone.hidden_size == 8 and clone.mlp_ratio == cfg.mlp_ratio
    with pytest.raises(AttributeError):
        view.no_such_field  # noqa: B018
    attn = Attention(view)
    assert attn.qkv.in_features == 8 and attn.num_heads == 2 and attn.head_dim == 4


# ---- patches and positions -----------------------------------------------------------------------


def test_patch_embedding_projects_each_tile_row_major():
    torch.manual_seed(10)
    embed = PatchEmbed(patch_size=4, hidden_size=5, num_channels=2)
    x = torch.randn(2, 2, 12, 8)  # a 3 x 2 grid of 4 x 4 tiles, two channels
    out = embed(x)
    assert out.shape == (2, 6, 5) and embed.grid_shape(12, 8) == (3, 2) and embed.grid_shape(13, 9) == (3, 2)
    weight = embed.proj.weight.reshape(5, -1)
    for t in range(3):
        for f in range(2):
            tile = x[:, :, 4 * t : 4 * t + 4, 4 * f : 4 * f + 4].reshape(2, -1)
            torch.testing.assert_close(out[:, t * 2 + f], tile @ weight.T + embed.proj.bias)
    one = PatchEmbed(4, 5)
    torch.testing.assert_close(one(x[:, 0]), one(x[:, :1]))
    with pytest.raises(
        ValueError, match=r"^PatchEmbed expects \(batch, frames, bins\) or \(batch, 2, frames"
    ):
        embed(x[:, :1])
    with pytest.raises(ValueError, match=r"^spectrogram size 10x8 is not a multiple of patch_size=4$"):
        embed(x[:, :, :10])
    with pytest.raises(ValueError, match=r"size 12x6 is not"):
        embed(x[..., :6])
    with pytest.raises(ValueError, match="^Stem expects"):
        spectrogram_as_image(torch.zeros(2, 3, 4, 4, 4), 1, 4, "Stem")
    assert spectrogram_as_image(torch.zeros(2, 8, 4), 1, 4, "x").shape == (2, 1, 8, 4)


def test_grid_shape_padding_and_patch_projection_init():
    assert patch_grid_shape(40, 32, 16) == (3, 2) and patch_grid_shape(48, 33, 16) == (3, 2)
    x = torch.randn(2, 40, 8)
    padded = pad_to_patches(x, 16)
    assert padded.shape == (2, 48, 8) and torch.equal(padded[:, :40], x) and not padded[:, 40:].any()
    assert pad_to_patches(padded, 16) is padded
    assert pad_to_patches(torch.randn(2, 3, 40, 8), 16).shape == (2, 3, 48, 8)
    conv = nn.Conv2d(1, 64, kernel_size=16, stride=16)
    nn.init.constant_(conv.bias, 1.0)
    init_patch_projection_(conv)
    bound = math.sqrt(6.0 / (256 + 64))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.99 * bound
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.03)
    assert not conv.bias.any()
    no_bias = nn.Conv2d(2, 8, kernel_size=4, stride=4, bias=False)
    init_patch_projection_(no_bias)
    assert no_bias.weight.abs().max() <= math.sqrt(6.0 / (32 + 8))


def test_sincos_positions_checks_and_the_buffer_form():
    for dim, h, w in ((0, 2, 2), (-4, 2, 2), (6, 2, 2)):
        with pytest.raises(
            ValueError, match=rf"^2-D sin-cos positions need a dimension divisible by 4, got {dim}$"
        ):
            get_2d_sincos_pos_embed(dim, h, w)
    for h, w in ((0, 2), (2, 0)):
        with pytest.raises(ValueError, match=rf"^grid sizes must be positive, got {h}x{w}$"):
            get_2d_sincos_pos_embed(8, h, w)
    table = get_2d_sincos_pos_embed(8, 3, 2)
    assert table.shape == (6, 8) and table.dtype == torch.float32
    # Row (t=2, f=1): columns encode f in the first half, t in the second; w_k = 10000 ** (-k / 2).
    expected = [math.sin(1), math.sin(1e-2), math.cos(1), math.cos(1e-2)]
    expected += [math.sin(2), math.sin(2e-2), math.cos(2), math.cos(2e-2)]
    assert table[5].tolist() == pytest.approx(expected, abs=1e-7)
    assert table[0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]  # position (0, 0): sin 0, cos 1
    buffer = torch.zeros(1, 7, 8, dtype=torch.float64)
    like = sincos_pos_embed_like(buffer, (3, 2), cls_token=True)
    assert like.dtype == torch.float64 and like.shape == (1, 7, 8)
    torch.testing.assert_close(like[0, 1:], table.double())
    assert not like[0, 0].any()
    assert sincos_pos_embed_like(buffer, (3, 2), cls_token=False).shape == (1, 6, 8)


# ---- masks, gathering, pooling -------------------------------------------------------------------


def test_masking_from_noise_keeps_the_lowest_noise_and_restores_positions():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2], [0.0, 0.8, 0.6, 0.4, 0.1, 0.95]])
    ids_keep, mask, ids_restore = masking_from_noise(noise, 0.5)  # keep int(6 * 0.5) = 3
    assert ids_keep.tolist() == [[1, 5, 3], [0, 4, 3]]  # ascending noise order, as MAE
    assert mask.tolist() == [
        [True, False, True, False, True, False],
        [False, True, True, False, False, True],
    ]
    assert mask.dtype == torch.bool and ids_restore.dtype == torch.long
    shuffled = noise.argsort(dim=1)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), torch.arange(6).expand(2, 6))
    # Ratio edges: at least one patch stays visible; 0 masks nothing.
    _, mask, _ = masking_from_noise(noise, 0.99)
    assert mask.sum(dim=1).tolist() == [5, 5] and not mask[0, 1] and not mask[1, 0]
    _, mask, _ = masking_from_noise(noise, 0.0)
    assert not mask.any()
    _, mask, _ = masking_from_noise(torch.rand(1, 10), 0.75)  # int(10 * 0.25) = 2 visible
    assert mask.sum() == 8
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=rf"^mask ratio must be in \[0, 1\), got {bad}$"):
            masking_from_noise(noise, bad)


def test_random_masking_draws_its_noise_from_the_generator_on_the_requested_device():
    expected = masking_from_noise(torch.rand(3, 8, generator=torch.Generator().manual_seed(5)), 0.6)
    got = random_masking(3, 8, 0.6, generator=torch.Generator().manual_seed(5))
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    torch.manual_seed(11)
    noise = torch.rand(2, 4)
    torch.manual_seed(11)
    assert torch.equal(random_masking(2, 4, 0.5)[1], masking_from_noise(noise, 0.5)[1])
    on_meta = random_masking(2, 4, 0.5, generator=torch.Generator().manual_seed(0), device="meta")
    assert all(t.device.type == "meta" for t in on_meta)
    assert random_masking(2, 4, 0.5, device="meta")[1].device.type == "meta"
    assert random_masking(2, 4, 0.5)[1].device.type == "cpu"
    for batch, patches in ((0, 4), (2, 0)):
        with pytest.raises(
            ValueError, match=f"^batch and num_patches must be positive, got {batch} and {patches}$"
        ):
            random_masking(batch, patches, 0.5)
    with pytest.raises(ValueError, match="^mask ratio must be in"):
        random_masking(2, 4, -0.5)


def test_visible_indices_and_gathering():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    indices = visible_indices(mask, 2, 4)
    assert indices.tolist() == [[1, 3], [0, 1]]
    tokens = torch.arange(2 * 4 * 3).float().view(2, 4, 3)
    torch.testing.assert_close(
        gather_tokens(tokens, indices), torch.stack([tokens[0, [1, 3]], tokens[1, [0, 1]]])
    )
    assert gather_tokens(tokens[..., 0], indices).tolist() == [[3.0, 9.0], [12.0, 15.0]]
    with pytest.raises(
        TypeError, match=r"^mask must be a bool tensor, True on masked patches; got torch.int64$"
    ):
        visible_indices(mask.long(), 2, 4)
    with pytest.raises(TypeError, match="got list$"):
        visible_indices([[True]], 1, 1)
    with pytest.raises(ValueError, match=r"^mask must be \(batch, num_patches\) = \(2, 5\), got \(2, 4\)$"):
        visible_indices(mask, 2, 5)
    with pytest.raises(ValueError, match=r"the same number of patches visible .*got \[1, 2\]"):
        visible_indices(torch.tensor([[True, False, True], [False, False, True]]), 2, 3)


def test_masked_mean_and_pooling():
    values = torch.arange(2 * 3 * 2).float().view(2, 3, 2)
    weights = torch.tensor([[1, 0, 1], [0, 0, 0]])
    got = masked_mean(values, weights, dim=1)
    torch.testing.assert_close(got, torch.stack([(values[0, 0] + values[0, 2]) / 2, torch.zeros(2)]))
    full = torch.tensor([[[1, 0], [1, 1], [0, 0]], [[0, 0], [0, 0], [1, 0]]])
    assert masked_mean(values, full).item() == pytest.approx((0 + 2 + 3 + 10) / 4)
    assert masked_mean(values, torch.zeros_like(full)).item() == 0.0
    assert masked_mean(values).item() == pytest.approx(values.mean().item())
    torch.testing.assert_close(masked_mean(values, dim=1), values.mean(dim=1))
    with pytest.raises(ValueError, match=r"^weights \(2, 3\) must have the shape of values \(2, 3, 2\)$"):
        masked_mean(values, weights)
    tokens = torch.randn(2, 4, 5)  # [CLS, 3 patches]
    assert torch.equal(pool_tokens(tokens, None, "cls"), tokens[:, 0])
    torch.testing.assert_close(pool_tokens(tokens, None, "mean"), tokens[:, 1:].mean(dim=1))
    patch_mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    expected = torch.stack([tokens[0, 1:3].mean(0), tokens[1, 2:4].mean(0)])
    torch.testing.assert_close(pool_tokens(tokens, patch_mask, "mean"), expected)
    with pytest.raises(ValueError, match="^pooling must be 'cls' or 'mean', got 'max'$"):
        pool_tokens(tokens, None, "max")


def test_heads_and_channel_layer_norm():
    head = classifier_head(config(num_labels=3))
    assert isinstance(head, nn.Linear) and (head.in_features, head.out_features) == (HIDDEN, 3)
    assert isinstance(classifier_head(config(num_labels=0)), nn.Identity)
    calls = []
    model = SimpleNamespace(
        config="cfg", loss_function=lambda labels, logits, cfg, **kw: calls.append((labels, cfg, kw)) or 7.0
    )
    encoder = SimpleNamespace(hidden_states=("h",), attentions=("a",))
    logits = torch.zeros(2, 3)
    out = classification_output(model, logits, None, encoder)
    assert (
        out.loss is None and out.logits is logits and out.hidden_states == ("h",) and out.attentions == ("a",)
    )
    assert calls == []
    labels = torch.ones(2, 3)
    assert classification_output(model, logits, labels, encoder, num_items_in_batch=2).loss == 7.0
    assert calls == [(labels, "cfg", {"num_items_in_batch": 2})]
    norm = ChannelLayerNorm(4)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 3, 5)
    expected = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (4,), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2))
    with pytest.raises(
        ValueError, match=r"^ChannelLayerNorm expects \(batch, channels, H, W\), got \(4, 3, 5\)$"
    ):
        norm(x[0])


# ---- input checks and layer ids -----------------------------------------------------------------


def test_spectrogram_input_checks_name_what_is_wrong():
    good = torch.zeros(2, 64, 32)
    check_spectrogram_inputs(good, None, 32, 64)
    check_spectrogram_inputs(good, torch.ones(2, 64), 32, 64)
    check_spectrogram_inputs(torch.zeros(2, 3, 10, 32), None, 32, 64, num_channels=3)
    cases = [
        ((good.tolist(), None), TypeError, "^input_values must be a torch.Tensor, got list$"),
        (
            (good.long(), None),
            TypeError,
            "^input_values must be a floating-point spectrogram, got dtype torch.int64$",
        ),
        (
            (good[0], None),
            ValueError,
            r"^input_values must be \(batch, frames, num_mel_bins\), got shape \(64, 32\)$",
        ),
        ((torch.zeros(0, 4, 32), None), ValueError, r"^input_values is empty: shape \(0, 4, 32\)$"),
        ((torch.zeros(2, 0, 32), None), ValueError, "^input_values is empty"),
        (
            (torch.zeros(2, 4, 16), None),
            ValueError,
            "^input_values has 16 mel bins but config.num_mel_bins is 32$",
        ),
        (
            (torch.zeros(2, 65, 32), None),
            ValueError,
            "^input_values has 65 frames, more than config.max_length=64",
        ),
        ((good, [[1] * 64] * 2), TypeError, "^attention_mask must be a torch.Tensor, got list$"),
        (
            (good, torch.ones(2, 63)),
            ValueError,
            r"^attention_mask must be \(batch, frames\) = \(2, 64\), got \(2, 63\)$",
        ),
    ]
    for (values, mask), error, message in cases:
        with pytest.raises(error, match=message):
            check_spectrogram_inputs(values, mask, 32, 64)
    for shape in ((2, 64, 32), (2, 2, 64, 32)):
        with pytest.raises(
            ValueError, match=r"^input_values must be \(batch, channels, frames, num_mel_bins\)"
        ):
            check_spectrogram_inputs(torch.zeros(shape), None, 32, 64, num_channels=3)

    class Model(SpectrogramModelMixin):
        config = SimpleNamespace(num_mel_bins=32, max_length=64, num_channels=1, patch_size=16)

    Model()._check_inputs(good, None)
    with pytest.raises(ValueError, match="more than config.max_length=64"):
        Model()._check_inputs(torch.zeros(1, 80, 32), None)
    assert Model().grid_shape(40) == (3, 2)


def test_layer_ids_follow_the_blocks():
    class Encoder(LayerDecayMixin, nn.Module):
        base_model_prefix = "enc"
        embedding_param_prefixes = ("patch_embed", "cls_token")
        config = SimpleNamespace(num_hidden_layers=4)

        def __init__(self):
            super().__init__()
            self.cls_token = nn.Parameter(torch.zeros(1))
            self.blocks = nn.ModuleList(nn.Linear(1, 1) for _ in range(2))
            self.norm = nn.LayerNorm(1)

    encoder = Encoder()
    assert encoder.get_layer_id("enc.patch_embed.proj.weight") == 0
    assert encoder.get_layer_id("patch_embed.proj.weight") == 0
    assert encoder.get_layer_id("enc.blocks.2.attn.qkv.weight") == 3
    assert encoder.get_layer_id("decoder.blocks.10.mlp.fc1.bias") == 11
    assert encoder.get_layer_id("blocks.0.norm1.weight") == 1
    assert encoder.get_layer_id("enc.subblocks.1.weight") == 5  # not a block of the encoder
    assert encoder.get_layer_id("enc.norm.weight") == 5 and encoder.get_layer_id("head.weight") == 5
    assert encoder.layer_ids() == {
        "cls_token": 0,
        "blocks.0.weight": 1,
        "blocks.0.bias": 1,
        "blocks.1.weight": 2,
        "blocks.1.bias": 2,
        "norm.weight": 5,
        "norm.bias": 5,
    }
    assert encoder.num_layer_ids == 6


def test_frames_to_patch_mask_marks_a_patch_real_when_any_of_its_frames_is():
    for dtype in (torch.long, torch.bool, torch.float32):
        attention_mask = torch.zeros(3, 40, dtype=dtype)  # 40 frames: columns of 16, 16 and 8 (+8 padding)
        attention_mask[0] = 1
        attention_mask[1, :16] = 1
        attention_mask[2, 33] = 1  # one real frame inside the partial last column
        got = frames_to_patch_mask(attention_mask, patch_size=16, grid_f=2)
        expected = [
            [
                int(bool(attention_mask[b, t * 16 : (t + 1) * 16].bool().any()))
                for t in range(3)
                for _ in range(2)
            ]
            for b in range(3)
        ]
        assert got.tolist() == expected == [[1] * 6, [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1]]
        assert got.dtype == torch.long
    assert frames_to_patch_mask(torch.ones(1, 32), 16, 3).tolist() == [[1] * 6]
    assert frames_to_patch_mask(torch.ones(1, 17), 16, 1).tolist() == [[1, 1]]
    with pytest.raises(ValueError, match=r"^attention_mask must be \(batch, frames\), got shape \(40,\)$"):
        frames_to_patch_mask(torch.ones(40), 16, 2)


def test_patch_out_mask_2d_keeps_the_lowest_noise_columns_and_rows_of_each_clip():
    batch, grid_t, grid_f = 5, 6, 4
    ids_keep, mask = patch_out_mask_2d(
        batch, grid_t, grid_f, 0.5, 0.25, generator=torch.Generator().manual_seed(3)
    )
    # By hand: time noise, then frequency noise, from the same generator; the lowest stay.
    generator = torch.Generator().manual_seed(3)
    noise_t, noise_f = (
        torch.rand(batch, grid_t, generator=generator),
        torch.rand(batch, grid_f, generator=generator),
    )
    for b in range(batch):
        times = sorted(noise_t[b].argsort()[:3].tolist())  # int(6 * 0.5) = 3 columns
        freqs = sorted(noise_f[b].argsort()[:3].tolist())  # int(4 * 0.75) = 3 rows
        expected = [t * grid_f + f for t in times for f in freqs]
        assert ids_keep[b].tolist() == expected
        assert mask[b].tolist() == [i not in expected for i in range(grid_t * grid_f)]
    assert ids_keep.dtype == torch.long and mask.dtype == torch.bool
    # The global RNG without a generator; at least one column and row; nothing dropped at 0.
    torch.manual_seed(1)
    first = patch_out_mask_2d(2, 3, 2, 0.5, 0.5)[0]
    torch.manual_seed(1)
    assert torch.equal(first, patch_out_mask_2d(2, 3, 2, 0.5, 0.5)[0]) and first.shape == (2, 1)
    ids_keep, mask = patch_out_mask_2d(2, 1, 1, 0.99, 0.99)
    assert ids_keep.tolist() == [[0], [0]] and not mask.any()
    ids_keep, mask = patch_out_mask_2d(1, 3, 2, 0.0, 0.5)
    assert ids_keep.shape == (1, 3) and mask.sum() == 3 and (ids_keep % 2).unique().numel() == 1
    on_meta = patch_out_mask_2d(2, 3, 2, 0.5, 0.5, generator=torch.Generator().manual_seed(0), device="meta")
    assert all(t.device.type == "meta" for t in on_meta)
    assert patch_out_mask_2d(2, 3, 2, 0.5, 0.5, device="meta")[1].device.type == "meta"
    for probs, name, bad in (((1.0, 0.0), "mask_t_prob", 1.0), ((0.0, -0.1), "mask_f_prob", -0.1)):
        with pytest.raises(ValueError, match=rf"^{name} must be in \[0, 1\), got {bad}$"):
            patch_out_mask_2d(2, 3, 2, *probs)
    for sizes in ((0, 3, 2), (2, 0, 2), (2, 3, 0)):
        with pytest.raises(
            ValueError, match=rf"^batch and grid sizes must be positive, got {sizes[0]}, {sizes[1]}x"
        ):
            patch_out_mask_2d(*sizes, 0.5, 0.5)


def mae_numpy_sincos(dim, grid_h, grid_w):
    """MAE's ``get_2d_sincos_pos_embed`` (facebookresearch/mae, util/pos_embed.py), in numpy float64."""
    grid = np.stack(np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32)))

    def one_axis(half, positions):
        omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2.0))
        angles = np.einsum("m,d->md", positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(dim // 2, grid[0]), one_axis(dim // 2, grid[1])], axis=1)


def test_sincos_positions_match_maes_numpy_code_bit_for_bit():
    # AudioMAE-base: 768 channels over a 64 x 8 grid, as converted checkpoints expect after the float32 cast.
    expected = torch.from_numpy(mae_numpy_sincos(768, 64, 8)).float()
    assert torch.equal(get_2d_sincos_pos_embed(768, 64, 8), expected)
    assert torch.equal(get_2d_sincos_pos_embed(8, 1, 1), torch.tensor([[0.0, 0, 1, 1, 0, 0, 1, 1]]))
    assert get_2d_sincos_pos_embed(4, 1, 3, cls_token=True).shape == (4, 4)


def test_small_edges_of_the_helpers():
    # Padding to whole patches: 36 frames need 12 more (not 36 % 16 = 4).
    assert pad_to_patches(torch.ones(1, 36, 2), 16).shape == (1, 48, 2)
    # One clip, and rows where the hidden and visible counts differ.
    assert visible_indices(torch.tensor([[False, True, False]]), 1, 3).tolist() == [[0, 2]]
    mask = torch.tensor([[True, False, False], [False, True, False]])
    assert visible_indices(mask, 2, 3).tolist() == [[1, 2], [0, 2]]
    # A single selected element is its own mean; half-precision values keep their dtype.
    values = torch.tensor([[2.0, 5.0, 7.0]])
    assert masked_mean(values, torch.tensor([[0, 1, 0]])).item() == 5.0
    assert masked_mean(values, torch.tensor([[0, 1, 0]]), dim=1).tolist() == [5.0]
    half = masked_mean(values.bfloat16(), torch.tensor([[1.0, 1.0, 0.0]]), dim=1)
    assert half.dtype == torch.bfloat16 and half.item() == 3.5
    assert masked_mean(values.bfloat16(), torch.tensor([[1.0, 1.0, 0.0]])).dtype == torch.bfloat16
    # A regression head has one output.
    head = classifier_head(config(num_labels=1))
    assert isinstance(head, nn.Linear) and head.out_features == 1
    # Uninitialised view (as copy / unpickling see it): a plain AttributeError naming _config.
    with pytest.raises(AttributeError, match="^_config$"):
        ConfigView.__new__(ConfigView).hidden_size  # noqa: B018


def test_classification_output_passes_labels_logits_and_config_to_the_loss():
    seen = []
    model = SimpleNamespace(config="cfg", loss_function=lambda *args, **kw: seen.append((args, kw)) or 1.5)
    encoder = SimpleNamespace(hidden_states=None, attentions=None)
    logits, labels = torch.randn(2, 3), torch.ones(2, 3)
    assert classification_output(model, logits, labels, encoder).loss == 1.5
    ((args, kwargs),) = seen
    assert args[0] is labels and args[1] is logits and args[2] == "cfg" and kwargs == {}


def test_model_input_checks_read_the_config_and_the_mask():
    class Model(SpectrogramModelMixin):
        config = SimpleNamespace(num_mel_bins=32, max_length=64, num_channels=3, patch_size=16)

    Model()._check_inputs(torch.zeros(2, 3, 64, 32), torch.ones(2, 64))
    with pytest.raises(ValueError, match=r"^input_values must be \(batch, channels, frames, num_mel_bins\)"):
        Model()._check_inputs(torch.zeros(2, 64, 32), None)
    with pytest.raises(
        ValueError, match=r"^attention_mask must be \(batch, frames\) = \(2, 64\), got \(2, 60\)$"
    ):
        Model()._check_inputs(torch.zeros(2, 3, 64, 32), torch.ones(2, 60))
    with pytest.raises(ValueError, match="; crop the clip or build the model with a larger max_length$"):
        Model()._check_inputs(torch.zeros(2, 3, 80, 32), None)


@pytest.mark.parametrize("block_type", [PreLNBlock, PostLNBlock])
def test_blocks_pass_the_mask_and_kwargs_to_the_attention_kernel_and_use_the_configs_eps(block_type):
    from transformers import AttentionInterface

    seen = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        seen.append((attention_mask, kwargs))
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("hf_audiorep_test_recording", recording)
    try:
        cfg = config("hf_audiorep_test_recording", layer_norm_eps=0.25)
        torch.manual_seed(12)
        block = block_type(cfg).eval()
        assert all(norm.eps == 0.25 for norm in (block.norm1, block.norm2))
        x = torch.randn(2, 5, HIDDEN)
        additive = torch.zeros(2, 1, 5, 5)
        additive[1, ..., 3:] = torch.finfo(torch.float32).min
        with torch.no_grad():
            out = block(x, additive, output_attentions=True)
    finally:
        del AttentionInterface._global_mapping["hf_audiorep_test_recording"]
    ((mask, kwargs),) = seen
    assert mask is additive
    assert kwargs == {"dropout": 0.0, "scaling": HEAD_DIM**-0.5, "output_attentions": True}
    key_real = torch.tensor([[True] * 5, [True, True, True, False, False]])
    with torch.no_grad():
        if block_type is PreLNBlock:
            h = x + manual_attention(block.attn, block.norm1(x), key_real)
            expected = h + block.mlp(block.norm2(h))
        else:
            h = block.norm1(x + manual_attention(block.attn, x, key_real))
            expected = block.norm2(h + block.mlp(h))
    torch.testing.assert_close(out, expected)


def test_masks_edges_one_clip_one_patch_and_positions_on_the_buffers_device():
    assert random_masking(1, 4, 0.5)[1].shape == (1, 4)
    ids_keep, mask, _ = random_masking(2, 1, 0.5)
    assert ids_keep.tolist() == [[0], [0]] and not mask.any()
    assert not random_masking(2, 4, 0.0)[1].any()
    on_meta = sincos_pos_embed_like(torch.empty(1, 6, 8, device="meta"), (3, 2), cls_token=False)
    assert on_meta.device.type == "meta" and on_meta.shape == (1, 6, 8)


def test_drop_path_keeps_dtype_and_device_and_blocks_default_to_no_dropping():
    torch.manual_seed(13)
    half = drop_path(torch.ones(8, 3, dtype=torch.bfloat16), 0.5, training=True)
    assert half.dtype == torch.bfloat16 and set(half[:, 0].tolist()) <= {0.0, 2.0}
    assert drop_path(torch.empty(4, 3, device="meta"), 0.5, training=True).device.type == "meta"
    pre, post = PreLNBlock(config()), PostLNBlock(config())
    assert pre.drop_path.drop_prob == 0.0 and post.drop_path.drop_prob == 0.0
    assert post.post_mlp_dropout.p == 0.0 and pre.attn.gate_proj is None


def test_eager_kernel_drops_nothing_by_default_even_in_training():
    torch.manual_seed(14)
    q, k, v = (torch.randn(2, HEADS, 6, HEAD_DIM) for _ in range(3))
    module = nn.Module().train()  # training, but no dropout asked for
    out, probs = eager_attention_forward(module, q, k, v, None, scaling=0.5)
    expected = torch.softmax((q @ k.transpose(-2, -1)) * 0.5, dim=-1)
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(out, (expected @ v).transpose(1, 2))


def test_frames_to_patch_mask_stays_on_the_masks_device():
    on_meta = frames_to_patch_mask(torch.ones(2, 40, dtype=torch.long, device="meta"), 16, 2)
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 6) and on_meta.dtype == torch.long
