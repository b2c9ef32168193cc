"""CAT's and BAT's shared bootstrap machinery (modeling/_bootstrap.py) against computations written out here:
the inverse block mask drawn by counting, the teacher targets as the mean of instance-normalised layers, the
CNN decoder layer by layer, the encoder's token preparation, the classification head, the initialisation,
and the pre-training losses over masked, non-padding patches (architectures.md §2(b), §2(c))."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.utils.output_capturing import OutputRecorder

from hf_audiorep.modeling._bootstrap import (
    MASK_NOISE_STD,
    BootstrapCNNDecoder,
    BootstrapTransformerDecoder,
    build_decoder,
    compute_block_mask_2d,
    make_teacher_targets,
    recorded_outputs,
    scatter_visible,
)
from hf_audiorep.modeling._layers import Attention, Mlp, PreLNBlock, random_masking
from hf_audiorep.modeling.configuration_bat import BATConfig
from hf_audiorep.modeling.configuration_cat import CATConfig
from hf_audiorep.modeling.modeling_bat import BATForAudioClassification, BATForPreTraining, BATModel
from hf_audiorep.modeling.modeling_cat import CATModel

# A 4 x 2 patch grid (64 frames x 32 mel bins, 16 x 16 patches): 8 patches.
TINY = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_length=64,
    num_mel_bins=32,
    num_labels=3,
    transformer_decoder_dim=8,
    transformer_decoder_layers=1,
    transformer_decoder_heads=2,
    decoder_dim=16,
    decoder_layers=2,
    decoder_groups=4,
    average_top_k_layers=2,
    clone_batch=2,
    mask_ratio=0.5,
    mask_length=3,
)


def bat_config(**overrides) -> BATConfig:
    return BATConfig(**{**TINY, **overrides})


# ---- the inverse block mask -------------------------------------------------------------------------


def reference_block_mask(batch, grid_t, grid_f, ratio, length, adjust, seed):
    """The mask written out cell by cell, from the same draws (centres, then one uniform score per cell).

    A centre at (t, f) marks the cells t - length // 2 .. t + (length - 1 - length // 2) (likewise in f),
    cut at the borders. The visible cells are the ``int(N * (1 - ratio))`` (at least 1) marked cells with
    the highest scores, topped up with the highest-scoring unmarked cells when too few are marked.
    """
    generator = torch.Generator().manual_seed(seed)
    cells = grid_t * grid_f
    num_visible = max(1, int(cells * (1 - ratio)))
    num_centres = int(cells * ((1 - ratio) + adjust) / length**2)
    centres = (
        torch.randint(0, cells, (batch, num_centres), generator=generator).tolist()
        if num_centres > 0
        else [[] for _ in range(batch)]
    )
    scores = torch.rand(batch, cells, generator=generator)
    low, high = length // 2, length - 1 - length // 2
    mask = torch.ones(batch, cells, dtype=torch.bool)
    for row in range(batch):
        marked = set()
        for centre in centres[row]:
            t, f = divmod(centre, grid_f)
            for dt in range(-low, high + 1):
                for df in range(-low, high + 1):
                    if 0 <= t + dt < grid_t and 0 <= f + df < grid_f:
                        marked.add((t + dt) * grid_f + f + df)
        order = sorted(range(cells), key=lambda c: (c in marked, scores[row, c].item()), reverse=True)
        mask[row, order[:num_visible]] = False
    return mask, num_centres


@pytest.mark.parametrize(
    "batch, grid_t, grid_f, ratio, length, adjust",
    [
        (3, 64, 8, 0.8, 5, 0.07),  # EAT / CAT: 512 patches, 102 visible
        (4, 12, 5, 0.6, 3, 0.07),  # too many blocks marked: trimmed
        (4, 10, 6, 0.5, 4, 0.0),  # an even block length: its asymmetric neighbourhood
        (2, 9, 7, 0.3, 2, 0.2),
        (3, 6, 4, 0.9, 3, 0.5),  # one centre per row
        (2, 5, 4, 0.7, 5, 0.0),  # no centre: random visible cells
    ],
)
def test_block_mask_is_the_written_out_dilation_trimmed_to_the_exact_count(
    batch, grid_t, grid_f, ratio, length, adjust
):
    mask = compute_block_mask_2d(
        batch, grid_t, grid_f, ratio, length, adjust, generator=torch.Generator().manual_seed(7)
    )
    expected, _ = reference_block_mask(batch, grid_t, grid_f, ratio, length, adjust, seed=7)
    assert mask.dtype == torch.bool and mask.shape == (batch, grid_t * grid_f)
    hidden = grid_t * grid_f - max(1, int(grid_t * grid_f * (1 - ratio)))
    assert mask.sum(dim=1).tolist() == [hidden] * batch
    assert torch.equal(mask, expected)


def test_block_mask_centre_count_follows_the_over_draw():
    # int(512 * (0.2 + 0.07) / 25) = 5 centres, int(60 * 0.9 / 9) = 6, int(20 * 0.3 / 25) = 0.
    assert reference_block_mask(1, 64, 8, 0.8, 5, 0.07, 0)[1] == 5
    assert reference_block_mask(1, 12, 5, 0.6, 3, 0.5, 0)[1] == 6
    assert reference_block_mask(1, 5, 4, 0.7, 5, 0.0, 0)[1] == 0


def test_block_mask_defaults_are_eats():
    # mask_ratio 0.8, mask_length 5, mask_prob_adjust 0.07 (architectures.md §2(c)).
    drawn = compute_block_mask_2d(3, 64, 8, generator=torch.Generator().manual_seed(2))
    expected, centres = reference_block_mask(3, 64, 8, 0.8, 5, 0.07, seed=2)
    assert centres == 5 and torch.equal(drawn, expected)


def test_block_mask_keeps_one_patch_and_accepts_the_open_bounds():
    # int(4 * 0.1) = 0 visible rounds up to 1; mask_ratio 0 hides nothing; mask_prob_adjust 0 is allowed.
    assert compute_block_mask_2d(2, 2, 2, 0.9, 1).sum(dim=1).tolist() == [3, 3]
    assert not compute_block_mask_2d(2, 3, 3, 0.0, 2).any()
    assert compute_block_mask_2d(1, 4, 4, 0.5, 2, mask_prob_adjust=0.0).sum().item() == 8
    # A generator alone decides the device; an explicit device wins.
    assert compute_block_mask_2d(1, 4, 4, generator=torch.Generator()).device.type == "cpu"
    assert compute_block_mask_2d(1, 4, 4, generator=torch.Generator(), device="meta").device.type == "meta"
    assert compute_block_mask_2d(1, 4, 4, device="meta").device.type == "meta"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batch_size=0), ValueError, "batch_size must be a positive int"),
        (dict(batch_size=True), ValueError, "batch_size"),
        (dict(grid_t=2.0), ValueError, "grid_t must be a positive int"),
        (dict(grid_f=-1), ValueError, "grid_f"),
        (dict(mask_length=0), ValueError, "mask_length"),
        (dict(mask_ratio=1.0), ValueError, "mask_ratio must be in"),
        (dict(mask_ratio=-0.01), ValueError, "mask_ratio"),
        (dict(mask_prob_adjust=-0.01), ValueError, "mask_prob_adjust must be >= 0"),
    ],
)
def test_block_mask_rejects_bad_arguments(kwargs, error, match):
    arguments = dict(batch_size=2, grid_t=4, grid_f=4, mask_ratio=0.5, mask_length=2, mask_prob_adjust=0.1)
    with pytest.raises(error, match=match):
        compute_block_mask_2d(**{**arguments, **kwargs})


# ---- teacher targets ------------------------------------------------------------------------------


def instance_norm_by_hand(layer, real=None, eps=1e-5):
    """Per clip and channel over the (real) patch tokens: (x - mean) / sqrt(biased var + eps), float64."""
    layer = layer.double()
    real = torch.ones(layer.shape[:2], dtype=torch.bool) if real is None else real.bool()
    out = torch.empty_like(layer)
    for clip in range(layer.shape[0]):
        tokens = layer[clip, real[clip]]
        mean = tokens.mean(dim=0)
        var = ((tokens - mean) ** 2).mean(dim=0)
        out[clip] = (layer[clip] - mean) / torch.sqrt(var + eps)
    return out


def layer_norm_by_hand(x, eps=1e-5):
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def teacher_layers(num_layers=4, batch=2, tokens=7, hidden=5, scale=0.004):
    """FFN states (CLS first) of small spread, so that the epsilon of every norm shows in the result."""
    generator = torch.Generator().manual_seed(3)
    return [
        (torch.randn(batch, 1 + tokens, hidden, generator=generator) * scale * (i + 1) + i).to(torch.float16)
        for i in range(num_layers)
    ]


def test_teacher_targets_are_the_layer_normed_mean_of_the_instance_normed_top_layers():
    layers = teacher_layers()
    patches = [layer[:, 1:] for layer in layers]
    targets = make_teacher_targets(layers, top_k=3)
    averaged = sum(instance_norm_by_hand(p) for p in patches[-3:]) / 3
    assert targets.dtype == torch.float32 and targets.shape == (2, 7, 5)
    torch.testing.assert_close(targets.double(), layer_norm_by_hand(averaged), rtol=0, atol=2e-4)

    # Each switch off on its own.
    plain_mean = sum(p.double() for p in patches[-2:]) / 2
    torch.testing.assert_close(
        make_teacher_targets(layers, 2, instance_norm=False, layer_norm=False).double(),
        plain_mean,
        rtol=0,
        atol=1e-5,
    )
    torch.testing.assert_close(
        make_teacher_targets(layers, 2, instance_norm=False).double(),
        layer_norm_by_hand(plain_mean),
        rtol=0,
        atol=2e-4,
    )
    torch.testing.assert_close(
        make_teacher_targets(layers, 4, layer_norm=False).double(),
        sum(instance_norm_by_hand(p) for p in patches) / 4,
        rtol=0,
        atol=2e-4,
    )


def test_teacher_targets_leave_padding_out_of_the_instance_statistics():
    layers = teacher_layers(num_layers=2, batch=3)
    patch_mask = torch.ones(3, 7, dtype=torch.long)
    patch_mask[1, 4:] = 0
    patch_mask[2, 1:] = 0  # a single real patch: its own mean, so it normalises to 0
    targets = make_teacher_targets(layers, 1, layer_norm=False, patch_mask=patch_mask)
    expected = instance_norm_by_hand(layers[-1][:, 1:], patch_mask)
    torch.testing.assert_close(targets.double(), expected, rtol=0, atol=2e-4)
    torch.testing.assert_close(targets[2, 0], torch.zeros(5), rtol=0, atol=1e-6)
    # A bool mask works the same.
    torch.testing.assert_close(
        make_teacher_targets(layers, 1, layer_norm=False, patch_mask=patch_mask.bool()), targets
    )


@pytest.mark.parametrize(
    "states, top_k, kwargs, error, match",
    [
        ("tensor", 1, {}, TypeError, "non-empty sequence"),
        ("empty", 1, {}, TypeError, "non-empty sequence"),
        ("ok", 0, {}, ValueError, r"top_k must be an int in \[1, 3\]"),
        ("ok", 4, {}, ValueError, "top_k"),
        ("ok", True, {}, ValueError, "top_k"),
        ("ok", 2.0, {}, ValueError, "top_k"),
        ("cls_only", 1, {}, ValueError, "1 \\+ patches"),
        ("two_d", 1, {}, ValueError, "every ffn state"),
        ("ragged", 1, {}, ValueError, "same shape"),
        ("ok", 1, {"patch_mask": torch.ones(2, 6)}, ValueError, r"patch_mask must be \(batch, patches\)"),
        ("ok", 1, {"patch_mask": torch.ones(3, 7)}, ValueError, "patch_mask"),
    ],
)
def test_teacher_targets_reject_bad_inputs(states, top_k, kwargs, error, match):
    layers = teacher_layers(num_layers=3)
    given = {
        "ok": layers,
        "tensor": layers[0],
        "empty": [],
        "cls_only": [layer[:, :1] for layer in layers],
        "two_d": [layer[:, :, 0] for layer in layers],
        "ragged": [layers[0], layers[1][:, :5]],
    }[states]
    with pytest.raises(error, match=match):
        make_teacher_targets(given, top_k, **kwargs)
    # The boundary values pass.
    make_teacher_targets(layers, 1)
    make_teacher_targets(layers, 3)
    # One patch is enough to build a target (F.instance_norm needs two: that switch is off here).
    make_teacher_targets([layer[:, :2] for layer in layers], 1, instance_norm=False)


def test_a_one_patch_clip_normalises_to_zeros_as_a_one_real_patch_clip_does():
    layers = teacher_layers(num_layers=1, tokens=1)
    targets = make_teacher_targets(layers, 1, layer_norm=False)
    torch.testing.assert_close(targets, torch.zeros(2, 1, 5))


# ---- decoders -------------------------------------------------------------------------------------


def test_scatter_visible_puts_the_visible_tokens_at_their_patches_in_order():
    filler = torch.zeros(2, 5, 3)
    visible = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 3, 3) + 1
    mask = torch.tensor([[True, False, False, True, False], [False, True, True, False, False]])
    out = scatter_visible(filler, visible, mask)
    expected = torch.zeros(2, 5, 3)
    expected[0, [1, 2, 4]] = visible[0]
    expected[1, [0, 3, 4]] = visible[1]
    assert torch.equal(out, expected)
    assert torch.equal(filler, torch.zeros(2, 5, 3)), "the filler is not written into"


def cnn_decoder_by_hand(decoder, encoded, mask, grid_t, filler=None):
    """EAT's Decoder2d written out: scatter, [conv -> channel LN (eps 1e-5, no affine) -> GELU
    (+ the previous layer's output when the widths match)] per layer, then the projection."""
    rows, num_patches = mask.shape
    width = encoded.shape[-1]
    tokens = torch.zeros(rows, num_patches, width) if filler is None else filler.clone()
    for row in range(rows):
        tokens[row, (~mask[row]).nonzero()[:, 0]] = encoded[row, 1:]
    grid_f = num_patches // grid_t
    x = tokens.view(rows, grid_t, grid_f, width).permute(0, 3, 1, 2)
    for layer in decoder.layers:
        conv = layer.conv
        y = F.conv2d(x, conv.weight, conv.bias, padding=conv.kernel_size[0] // 2, groups=conv.groups)
        mean = y.mean(dim=1, keepdim=True)
        var = ((y - mean) ** 2).mean(dim=1, keepdim=True)
        y = F.gelu((y - mean) / torch.sqrt(var + 1e-5))
        x = y + x if y.shape == x.shape else y
    return decoder.proj(x.permute(0, 2, 3, 1).reshape(rows, num_patches, -1))


# The first layer with and without its residual; a 5 x 5 kernel keeps the grid with padding 2.
@pytest.mark.parametrize("decoder_dim, kernel", [(16, 3), (8, 3), (16, 5)])
def test_cnn_decoder_is_the_written_out_conv_stack(decoder_dim, kernel):
    config = bat_config(
        decoder_dim=decoder_dim, decoder_layers=3, decoder_groups=4, decoder_kernel_size=kernel
    )
    torch.manual_seed(0)
    decoder = BootstrapCNNDecoder(config).eval()
    assert [layer.conv.groups for layer in decoder.layers] == [4, 4, 4]
    assert [layer.conv.in_channels for layer in decoder.layers] == [16, decoder_dim, decoder_dim]
    assert decoder.layers[0].norm.eps == 1e-5 and not decoder.layers[0].norm.elementwise_affine
    # A 4 x 3 grid: time and frequency must not be swapped.
    mask = torch.tensor([[True, False] * 6, [False, True] * 6, [True] * 6 + [False] * 6])
    encoded = torch.randn(3, 1 + 6, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = decoder(encoded, mask, 4)
        expected = cnn_decoder_by_hand(decoder, encoded, mask, 4)
    assert out.shape == (3, 12, 16)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_cnn_decoder_fills_hidden_patches_with_small_noise_in_training_only():
    config = bat_config(decoder_layers=1)
    decoder = BootstrapCNNDecoder(config)
    seen = {}
    decoder.layers[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0].clone()))
    rows, grid_t, grid_f = 8, 8, 4
    mask = torch.zeros(rows, grid_t * grid_f, dtype=torch.bool)
    mask[:, ::2] = True
    encoded = torch.randn(rows, 1 + 16, 16)
    with torch.no_grad():
        decoder.train()(encoded, mask, grid_t)
    tokens = seen["x"].permute(0, 2, 3, 1).reshape(rows, grid_t * grid_f, 16)
    noise = tokens[mask]
    assert torch.equal(tokens[~mask], encoded[:, 1:].reshape(-1, 16))
    assert MASK_NOISE_STD == 0.01
    assert 0.008 < noise.std().item() < 0.012 and abs(noise.mean().item()) < 0.002
    with torch.no_grad():
        decoder.eval()(encoded, mask, grid_t)
    assert not seen["x"].permute(0, 2, 3, 1).reshape(rows, -1, 16)[mask].any()


def test_cnn_decoder_noise_follows_the_activations_dtype_under_autocast():
    # Under mixed precision the encoder hands over bf16 tokens: the noise must be drawn in their dtype.
    decoder = BootstrapCNNDecoder(bat_config(decoder_layers=1)).train()
    mask = torch.tensor([[True, False] * 4])
    encoded = torch.randn(1, 1 + 4, 16).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = decoder(encoded, mask, 4)
    assert out.shape == (1, 8, 16) and out.dtype == torch.bfloat16


def test_build_decoder_follows_the_decoder_type():
    assert type(build_decoder(bat_config(decoder_type="cnn"))) is BootstrapCNNDecoder
    decoder = build_decoder(bat_config(decoder_type="transformer"))
    assert type(decoder) is BootstrapTransformerDecoder
    assert len(decoder.blocks) == 1 and decoder.embed.out_features == 8
    assert decoder.blocks[0].attn.num_heads == 2
    assert decoder.norm.eps == 1e-6, "the ViT blocks' epsilon (config.layer_norm_eps), not torch's default"


def test_recorded_outputs_name_the_blocks_the_attention_and_the_ffn_outputs():
    recorded = recorded_outputs(PreLNBlock)
    assert set(recorded) == {"hidden_states", "attentions", "ffn_states"}
    assert recorded["hidden_states"] is PreLNBlock and recorded["attentions"] is Attention
    ffn = recorded["ffn_states"]
    assert isinstance(ffn, OutputRecorder) and ffn.target_class is Mlp and ffn.layer_name == "blocks"
    # The encoders record exactly these, and ffn_states are the blocks' Mlp outputs.
    model = BATModel(bat_config()).eval()
    captured = []
    for block in model.blocks:
        block.mlp.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        outputs = model(torch.randn(2, 64, 32), output_ffn_states=True, output_hidden_states=True)
    assert len(outputs.ffn_states) == 2
    for state, mlp_out in zip(outputs.ffn_states, captured, strict=True):
        assert torch.equal(state, mlp_out)


# ---- the encoder's tokens -------------------------------------------------------------------------


def test_encoder_feeds_cls_then_visible_patches_with_their_positions():
    model = BATModel(bat_config()).eval()
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(x=args[0].clone()))
    # 48 frames: a 3 x 2 grid, the first 6 positions of the 4 x 2 table.
    clip = torch.randn(2, 48, 32)
    mask = torch.tensor([[True, False, False, True, False, True], [False, False, True, True, True, False]])
    with torch.no_grad():
        model(clip, mask=mask)
        patches = model.patch_embed(clip) + model.pos_embed[:, :6]
    expected = torch.stack(
        [torch.cat([model.cls_token[0], patches[row, (~mask[row]).nonzero()[:, 0]]]) for row in range(2)]
    )
    torch.testing.assert_close(seen["x"], expected, rtol=0, atol=1e-6)


def test_padding_and_hidden_patches_keep_out_of_the_real_tokens():
    # Clip of 2 real time steps (patches 0..3) padded to 4 (patches 4..7); patches 0 and 5 hidden. The real
    # visible tokens and the CLS must be those of the unpadded clip with patch 0 hidden.
    model = BATModel(bat_config()).eval()
    clip = torch.randn(1, 64, 32)
    attention_mask = torch.zeros(1, 64, dtype=torch.long)
    attention_mask[:, :32] = 1
    mask = torch.tensor([[True, False, False, False, False, True, False, False]])
    with torch.no_grad():
        padded = model(clip, attention_mask=attention_mask, mask=mask).last_hidden_state
        alone = model(clip[:, :32], mask=mask[:, :4]).last_hidden_state
    torch.testing.assert_close(padded[:, :4], alone, rtol=0, atol=1e-5)


def test_cat_stem_does_not_read_padding_content():
    # CAT's conv stem mixes neighbouring patches: padding frames (hidden or not) must not reach real tokens.
    config = CATConfig(**{**TINY, "stem_channels": (4, 8), "stem_depths": (1, 1)})
    model = CATModel(config).eval()
    clip = torch.randn(1, 64, 32)
    attention_mask = torch.zeros(1, 64, dtype=torch.long)
    attention_mask[:, :32] = 1
    changed = clip.clone()
    changed[:, 32:] += 3.0
    mask = torch.tensor([[False, True, False, False, True, False, False, True]])
    with torch.no_grad():
        before = model(clip, attention_mask=attention_mask, mask=mask).last_hidden_state
        after = model(changed, attention_mask=attention_mask, mask=mask).last_hidden_state
        unmasked = model(clip, attention_mask=attention_mask).last_hidden_state
        unmasked_after = model(changed, attention_mask=attention_mask).last_hidden_state
    # Tokens 0..3 are CLS and visible real patches 0, 2, 3.
    torch.testing.assert_close(after[:, :4], before[:, :4], rtol=0, atol=1e-5)
    # With padding as well, a hidden real patch (patch 1: frames 0..15, mel bins 16..31) stays out.
    hidden_real = clip.clone()
    hidden_real[:, :16, 16:] += 3.0
    with torch.no_grad():
        hidden_after = model(hidden_real, attention_mask=attention_mask, mask=mask).last_hidden_state
    torch.testing.assert_close(hidden_after[:, :4], before[:, :4], rtol=0, atol=1e-5)
    with pytest.raises(ValueError):
        model(clip, attention_mask=attention_mask[:, :40])  # the encoder checks its mask too
    torch.testing.assert_close(unmasked_after[:, :5], unmasked[:, :5], rtol=0, atol=1e-5)
    # Without padding: a hidden patch's content (patch 1: frames 0..15, mel bins 16..31) stays out too.
    hidden_changed = clip.clone()
    hidden_changed[:, :16, 16:] += 3.0
    with torch.no_grad():
        kept = model(clip, mask=mask).last_hidden_state
        kept_changed = model(hidden_changed, mask=mask).last_hidden_state
        plain = model(clip).last_hidden_state
        all_real = model(clip, attention_mask=torch.ones(1, 64, dtype=torch.long)).last_hidden_state
    torch.testing.assert_close(kept_changed, kept, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain, all_real, rtol=0, atol=1e-5)


def test_mean_pooling_reads_the_real_visible_patches():
    model = BATModel(bat_config(pooling="mean")).eval()
    attention_mask = torch.ones(2, 64, dtype=torch.long)
    attention_mask[1, 40:] = 0  # clip 1: time steps 0..2 real (frames 32..39 carry signal)
    mask = torch.tensor([[True, False, True, False, False, True, False, True], [False, True] * 4])
    with torch.no_grad():
        out = model(torch.randn(2, 64, 32), attention_mask=attention_mask, mask=mask)
    tokens = out.last_hidden_state[:, 1:]
    # Clip 1's visible patches 0, 2, 4, 6: 6 is padding.
    torch.testing.assert_close(out.pooler_output[0], tokens[0].mean(0))
    torch.testing.assert_close(out.pooler_output[1], tokens[1, :3].mean(0))


def test_positions_are_the_fixed_sincos_table():
    from hf_audiorep.modeling._layers import get_2d_sincos_pos_embed

    model = BATForPreTraining(bat_config(decoder_type="transformer"))
    torch.testing.assert_close(model.bat.pos_embed[0], get_2d_sincos_pos_embed(16, 4, 2))
    torch.testing.assert_close(model.decoder.pos_embed[0], get_2d_sincos_pos_embed(8, 4, 2, cls_token=True))
    assert model.bat.cls_token.shape == (1, 1, 16) and model.decoder.mask_token.shape == (1, 1, 8)
    # Fixed tables are rebuilt, never stored: checkpoints keep the reference's key set.
    state = model.state_dict()
    assert "bat.pos_embed" not in state and "decoder.pos_embed" not in state
    assert state["decoder.mask_token"].shape == (1, 1, 8)


def transformer_decoder_by_hand(decoder, encoded, mask, grid_t, grid_f):
    rows, num_patches = mask.shape
    embedded = decoder.embed(encoded)
    sequence = decoder.mask_token.expand(rows, 1 + num_patches, -1).clone()
    sequence[:, 0] = embedded[:, 0]
    for row in range(rows):
        sequence[row, 1 + (~mask[row]).nonzero()[:, 0]] = embedded[row, 1:]
    from hf_audiorep.modeling._layers import get_2d_sincos_pos_embed

    if decoder.pos_conv is None:
        # A shorter grid takes the first rows of the max_length table.
        table = get_2d_sincos_pos_embed(sequence.shape[-1], 4, grid_f, cls_token=True)
        hidden = sequence + table[: 1 + num_patches]
    else:
        # Conv positions: each patch plus GELU of a depthwise conv over its (t, f) neighbourhood, zero-padded.
        width, kernel = sequence.shape[-1], decoder.pos_conv.kernel_size[0]
        grid = sequence[:, 1:].reshape(rows, grid_t, grid_f, width).permute(0, 3, 1, 2)
        padded = torch.nn.functional.pad(grid, [kernel // 2] * 4)
        conv = decoder.pos_conv.bias.view(1, width, 1, 1).expand(rows, width, grid_t, grid_f).clone()
        for dt in range(kernel):
            for df in range(kernel):
                tap = decoder.pos_conv.weight[:, 0, dt, df].view(1, width, 1, 1)
                conv = conv + tap * padded[:, :, dt : dt + grid_t, df : df + grid_f]
        conv = torch.nn.functional.gelu(conv).permute(0, 2, 3, 1).reshape(rows, -1, width)
        patches = sequence[:, 1:] + conv
        hidden = torch.cat([sequence[:, :1], patches], dim=1)
    for block in decoder.blocks:
        hidden = block(hidden)
    return decoder.proj(decoder.norm(hidden))[:, 1:]


@pytest.mark.parametrize("positions", ["sincos", "conv"])
def test_transformer_decoder_on_a_shorter_grid_and_under_autocast(positions):
    torch.manual_seed(0)
    config = bat_config(decoder_type="transformer", transformer_decoder_positions=positions)
    decoder = BootstrapTransformerDecoder(config).eval()
    torch.nn.init.normal_(decoder.mask_token)
    mask = torch.tensor([[True, False, True, True, False, False], [False, True, True, False, True, False]])
    encoded = torch.randn(2, 1 + 3, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = decoder(encoded, mask, 3)
        expected = transformer_decoder_by_hand(decoder, encoded, mask, 3, 2)
        # Mixed precision: the fp32 mask token and positions follow the bf16 activations.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = decoder(encoded, mask, 3)
    assert out.shape == (2, 6, 16)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), out, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("positions", ["sincos", "conv"])
def test_conv_positions_give_the_decoder_no_absolute_position(positions):
    """With every patch hidden, the conv decoder can tell patches apart only near the grid's border (the
    conv's zero padding): the interior patches get one prediction. Sin-cos positions give each its own."""
    torch.manual_seed(0)
    config = bat_config(
        decoder_type="transformer", transformer_decoder_positions=positions, max_length=96, num_mel_bins=80
    )
    decoder = BootstrapTransformerDecoder(config).eval()
    torch.nn.init.normal_(decoder.mask_token)
    grid_t, grid_f = 6, 5
    mask = torch.ones(1, grid_t * grid_f, dtype=torch.bool)
    with torch.no_grad():
        out = decoder(torch.randn(1, 1, 16), mask, grid_t).view(grid_t, grid_f, -1)
    interior = out[1:-1, 1:-1].reshape(-1, out.shape[-1])
    spread = (interior - interior[0]).abs().max()
    if positions == "conv":
        assert spread < 1e-5
        assert (out[0, 0] - interior[0]).abs().max() > 1e-3, "the border still differs (zero padding)"
    else:
        assert spread > 1e-2


# ---- initialisation --------------------------------------------------------------------------------


def test_initialisation_follows_data2vec():
    std = 1.5  # wide enough to tell a truncated normal (cut at +-2) from a plain one
    classifier = BATForAudioClassification(bat_config(initializer_range=std, num_labels=64))
    weight = classifier.classifier.weight
    assert weight.abs().max() <= 2.0 and weight.std() > 0.6
    assert not classifier.classifier.bias.any()
    model = BATForPreTraining(
        bat_config(initializer_range=std, decoder_type="transformer", rr_embedding_dim=8)
    )
    for linear in (model.bat.blocks[0].mlp.fc1, model.decoder.proj, model.rr_projector):
        assert 0.8 * std < linear.weight.std() < 1.2 * std and linear.weight.abs().max() > 2.0
        assert not linear.bias.any()
    assert 0.4 * std < model.bat.cls_token.std() < 1.6 * std
    assert 0.3 * std < model.decoder.mask_token.std() < 1.7 * std
    # Patch projection: xavier-uniform over (out, in * k * k), zero bias.
    proj = model.bat.patch_embed.proj
    bound = math.sqrt(6 / (16 + 256))
    assert 0.9 * bound < proj.weight.abs().max() <= bound and not proj.bias.any()
    # Other convolutions (the CNN decoder): PyTorch's default, U(+-1 / sqrt(fan_in)) for weight and bias.
    cnn = BATForPreTraining(
        bat_config(initializer_range=std, decoder_type="cnn", decoder_dim=64, decoder_groups=4)
    )
    conv = cnn.decoder.layers[1].conv
    bound = 1 / math.sqrt(64 // 4 * 9)
    assert 0.9 * bound < conv.weight.abs().max() <= bound
    assert 0.5 * bound < conv.bias.abs().max() <= bound


# ---- classification head ---------------------------------------------------------------------------


def test_classifier_reads_the_normed_pooled_output_and_patches_out_only_in_training():
    model = BATForAudioClassification(bat_config(finetune_mask_ratio=0.5, num_labels=3)).eval()
    clip = torch.randn(2, 64, 32)
    with torch.no_grad():
        logits = model(clip).logits
        pooled = model.bat(clip).pooler_output
    torch.testing.assert_close(logits, model.classifier(model.fc_norm(pooled)))
    assert model.fc_norm.eps == model.config.layer_norm_eps and model.num_labels == 3
    assert model.patch_out(clip) is None
    model.train()
    mask = model.patch_out(clip, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (2, 8) and mask.sum(dim=1).tolist() == [4, 4]
    # MAE's random masking, drawn from the generator given, on the input's device.
    _, expected, _ = random_masking(2, 8, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, expected)
    assert model.patch_out(torch.empty(2, 64, 32, device="meta")).device.type == "meta"
    seen = {}
    model.bat.blocks[0].register_forward_pre_hook(lambda module, args: seen.update(n=args[0].shape[1]))
    model(clip)
    assert seen["n"] == 1 + 4
    explicit = torch.zeros(2, 8, dtype=torch.bool)
    explicit[:, :2] = True
    model(clip, mask=explicit)
    assert seen["n"] == 1 + 6
    model.config.finetune_mask_ratio = 0.0
    assert model.patch_out(clip) is None


# ---- pre-training ----------------------------------------------------------------------------------


def pretraining_inputs(config, seed=0, padded=True):
    generator = torch.Generator().manual_seed(seed)
    batch, clones = 2, config.clone_batch
    attention_mask = torch.ones(batch, 64, dtype=torch.long)
    if padded:
        attention_mask[1, 32:] = 0  # clip 1: patches 4..7 are padding
    mask = compute_block_mask_2d(batch * clones, 4, 2, 0.5, 2, generator=generator)
    return {
        "input_values": torch.randn(batch, 64, 32, generator=generator),
        "attention_mask": attention_mask,
        "teacher_targets": torch.randn(batch, 8, config.hidden_size, generator=generator),
        "rr_targets": torch.randn(batch, config.rr_embedding_dim, generator=generator),
        "mask": mask,
    }


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("rr_loss_type", ["mse", "l1", "cosine"])
def test_pretraining_losses_written_out(reduction, rr_loss_type):
    config = bat_config(
        rr_embedding_dim=6,
        cls_loss_weight=0.3,
        rr_loss_weight=0.7,
        cls_rr_reduction=reduction,
        rr_loss_type=rr_loss_type,
    )
    torch.manual_seed(0)
    model = BATForPreTraining(config).eval()
    inputs = pretraining_inputs(config)
    projected = {}
    model.rr_projector.register_forward_hook(lambda module, args, out: projected.update(out=out))
    with torch.no_grad():
        out = model(**inputs)
    hidden, clones = 16, 2
    targets = inputs["teacher_targets"].repeat_interleave(clones, 0).double()
    real = torch.tensor([[1] * 8, [1] * 4 + [0] * 4]).bool().repeat_interleave(clones, 0)
    scored = inputs["mask"] & real
    squared = ((out.predictions.double() - targets) ** 2).sum(-1) / math.sqrt(hidden)
    # Averaged over the masked real patches of every student row (N_m), not per row.
    torch.testing.assert_close(
        out.patch_loss.double(), squared[scored].sum() / scored.sum(), rtol=1e-6, atol=0
    )
    clip_target = torch.stack([targets[row, real[row]].mean(0) for row in range(4)])
    cls = ((out.student_cls.double() - clip_target) ** 2).sum(-1) / math.sqrt(hidden)
    reduce = torch.sum if reduction == "sum" else torch.mean
    torch.testing.assert_close(out.cls_loss.double(), reduce(cls), rtol=1e-6, atol=0)
    prediction = projected["out"].double()
    rr_target = inputs["rr_targets"].repeat_interleave(clones, 0).double()
    if rr_loss_type == "mse":
        rr = ((prediction - rr_target) ** 2).sum(-1)
    elif rr_loss_type == "l1":
        rr = (prediction - rr_target).abs().sum(-1)
    else:
        rr = 1 - (prediction * rr_target).sum(-1) / (prediction.norm(dim=-1) * rr_target.norm(dim=-1))
    torch.testing.assert_close(out.rr_loss.double(), reduce(rr / math.sqrt(6)), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.loss, out.patch_loss + 0.3 * out.cls_loss + 0.7 * out.rr_loss)
    assert out.logits is out.predictions and torch.equal(out.mask, inputs["mask"])
    assert out.student_cls.shape == (4, 16) and out.predictions.shape == (4, 8, 16)


def test_rr_from_an_intermediate_block_reads_its_ffn_cls():
    config = bat_config(rr_embedding_dim=6, rr_layer=0)
    torch.manual_seed(0)
    model = BATForPreTraining(config).eval()
    inputs = pretraining_inputs(config)
    source = {}
    model.rr_projector.register_forward_pre_hook(lambda module, args: source.update(x=args[0]))
    with torch.no_grad():
        model(**inputs)
        student = model.bat(
            inputs["input_values"].repeat_interleave(2, 0),
            attention_mask=inputs["attention_mask"].repeat_interleave(2, 0),
            mask=inputs["mask"],
            output_ffn_states=True,
        )
    torch.testing.assert_close(source["x"], student.ffn_states[0][:, 0])


def test_without_rr_weight_or_targets_there_is_no_rr_term():
    config = bat_config(rr_embedding_dim=6, rr_loss_weight=0.0, cls_loss_weight=2.0)
    torch.manual_seed(0)
    model = BATForPreTraining(config).eval()
    inputs = pretraining_inputs(config)
    with torch.no_grad():
        out = model(**inputs)
        no_rr = model(**{k: v for k, v in inputs.items() if k != "rr_targets"})
    assert out.rr_loss is None and no_rr.rr_loss is None
    torch.testing.assert_close(out.loss, out.patch_loss + 2.0 * out.cls_loss)
    torch.testing.assert_close(no_rr.loss, out.loss)


def test_unpadded_clips_score_every_masked_patch_and_half_precision_targets_are_read_in_float32():
    config = bat_config(clone_batch=1)
    torch.manual_seed(0)
    model = BATForPreTraining(config).eval()
    inputs = pretraining_inputs(config, padded=False)
    inputs.pop("attention_mask")
    inputs.pop("rr_targets")
    inputs["mask"] = inputs["mask"][:2]
    inputs["teacher_targets"] = inputs["teacher_targets"].bfloat16()
    with torch.no_grad():
        out = model(**inputs)
    targets = inputs["teacher_targets"].double()
    squared = ((out.predictions.double() - targets) ** 2).sum(-1) / 4
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.patch_loss.double(), squared[inputs["mask"]].mean(), rtol=1e-6, atol=0)
    cls = ((out.student_cls.double() - targets.mean(1)) ** 2).sum(-1) / 4
    torch.testing.assert_close(out.cls_loss.double(), cls.sum(), rtol=1e-6, atol=0)


def test_mask_is_drawn_with_the_configured_block_masking():
    config = bat_config(clone_batch=3, mask_ratio=0.6, mask_length=2, mask_prob_adjust=0.3)
    model = BATForPreTraining(config).eval()
    inputs = pretraining_inputs(config)
    inputs.pop("mask")
    inputs.pop("rr_targets")
    torch.manual_seed(5)
    with torch.no_grad():
        out = model(**inputs)
    torch.manual_seed(5)
    expected = compute_block_mask_2d(6, 4, 2, 0.6, 2, 0.3)
    assert torch.equal(out.mask, expected)


def test_gradients_reach_the_decoder_projector_and_encoder_but_not_the_targets():
    config = bat_config(rr_embedding_dim=6)
    torch.manual_seed(0)
    model = BATForPreTraining(config).train()
    inputs = pretraining_inputs(config)
    inputs["teacher_targets"].requires_grad_(True)
    out = model(**inputs)
    out.loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_decoder_sits_after_the_last_block_for_layer_decay():
    model = BATForPreTraining(bat_config(decoder_type="transformer"))
    assert model.get_layer_id("decoder.blocks.0.attn.qkv.weight") == 3
    assert model.get_layer_id("decoder.proj.weight") == 3
    assert model.get_layer_id("bat.blocks.0.attn.qkv.weight") == 1
    assert model.get_layer_id("bat.blocks.1.mlp.fc1.weight") == 2
    assert model.get_layer_id("bat.patch_embed.proj.weight") == 0


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(teacher_targets=None), ValueError, "make_teacher_targets"),
        (dict(teacher_targets=[[0.0]]), TypeError, "teacher_targets must be a tensor"),
        (dict(teacher_targets=torch.zeros(2, 8, 15)), ValueError, r"teacher_targets must be \(batch"),
        (dict(teacher_targets=torch.zeros(1, 8, 16)), ValueError, "teacher_targets"),
        (dict(rr_targets=[[0.0] * 6] * 2), TypeError, "rr_targets must be a tensor"),
        (dict(rr_targets=torch.zeros(2, 5)), ValueError, r"rr_targets must be \(batch, rr_embedding_dim\)"),
        (dict(rr_targets=torch.zeros(3, 6)), ValueError, "rr_targets"),
        (dict(mask=torch.zeros(2, 8, dtype=torch.bool)), ValueError, r"batch \* clone_batch"),
    ],
)
def test_pretraining_rejects_bad_targets(change, error, match):
    config = bat_config(rr_embedding_dim=6)
    model = BATForPreTraining(config)
    inputs = pretraining_inputs(config)
    with pytest.raises(error, match=match):
        model(**{**inputs, **change})


def test_rr_targets_need_a_projector():
    config = bat_config(rr_embedding_dim=0)
    model = BATForPreTraining(config)
    assert model.rr_projector is None
    assert BATForPreTraining(bat_config(rr_embedding_dim=1)).rr_projector.out_features == 1
    inputs = pretraining_inputs(bat_config(rr_embedding_dim=6))
    with pytest.raises(ValueError, match="no RR projector"):
        model(**inputs)
    inputs.pop("rr_targets")
    assert model(**inputs).rr_loss is None
