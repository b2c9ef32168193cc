"""CAT's model file against computations written out here (hf_audiorep/modeling/modeling_cat.py): the
multi-resolution stem stage by stage on a tiny input (strided patchifying convs, channel LayerNorms, the
masked depthwise convolutions of the CBlocks, their 1x1-conv MLPs, the side outputs summed into the token
grid and the token projection), and the encoder around it (stem or EAT's patch embedding, positions, CLS,
``pre_norm``, the post-LN blocks, stochastic depth) from its own parts.

Tiny configs: a 48 x 32 spectrogram is a 3 x 2 grid of 16 x 16 patches, so every value takes milliseconds."""

import pytest
import torch
import torch.nn.functional as F
from family_utils import randomised

from hf_audiorep.modeling.configuration_cat import CATConfig
from hf_audiorep.modeling.modeling_cat import (
    CATForAudioClassification,
    CATForPreTraining,
    CATModel,
    MultiResolutionStem,
)

P = 16  # CAT's patch: strides 4, 2, 2
GRID_T, GRID_F = 3, 2  # not square, so a swapped time / frequency axis shows
STEM_EPS = 1e-5  # torch's default, which the reference's conv-stem LayerNorms keep
TINY = dict(
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    stem_channels=(4, 6),
    stem_depths=(2, 1),  # unequal, so each stage must take its own depth
    stem_mlp_ratio=1.5,
    stem_kernel_size=3,
    max_length=GRID_T * P,
    num_mel_bins=GRID_F * P,
    num_labels=3,
    # Large enough that a LayerNorm built with another eps gives other values.
    layer_norm_eps=0.1,
    average_top_k_layers=2,
    rr_embedding_dim=4,
    decoder_dim=8,
    decoder_groups=4,
)


def tiny_config(**overrides) -> CATConfig:
    return CATConfig(**{**TINY, **overrides})


# ---- the stem by hand ---------------------------------------------------------------------------------


def patchify_conv(x: torch.Tensor, conv: torch.nn.Conv2d, s: int) -> torch.Tensor:
    """A non-overlapping s x s conv as a sum over each cell's s x s block."""
    b, c, h, w = x.shape
    blocks = x.view(b, c, h // s, s, w // s, s)
    assert conv.weight.shape[2:] == (s, s)
    return torch.einsum("bcisjt,ocst->boij", blocks, conv.weight) + conv.bias.view(1, -1, 1, 1)


def pointwise(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    assert conv.weight.shape[2:] == (1, 1)
    return torch.einsum("bchw,oc->bohw", x, conv.weight[:, :, 0, 0]) + conv.bias.view(1, -1, 1, 1)


def channel_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + STEM_EPS) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(
        1, -1, 1, 1
    )


def depthwise(x: torch.Tensor, conv: torch.nn.Conv2d, k: int) -> torch.Tensor:
    """A k x k per-channel conv with 'same' zero padding, as a sum of shifted copies."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (k // 2,) * 4)
    out = conv.bias.view(1, -1, 1, 1).expand_as(x).clone()
    for i in range(k):
        for j in range(k):
            out = out + padded[:, :, i : i + h, j : j + w] * conv.weight[:, 0, i, j].view(1, -1, 1, 1)
    return out


def cblock(x: torch.Tensor, block, visible_cells: torch.Tensor | None, k: int) -> torch.Tensor:
    mixed = pointwise(channel_norm(x, block.norm1), block.conv1)
    if visible_cells is not None:
        mixed = mixed * visible_cells
    x = x + pointwise(depthwise(mixed, block.dwconv, k), block.conv2)
    hidden = F.gelu(pointwise(channel_norm(x, block.norm2), block.mlp.fc1))
    return x + pointwise(hidden, block.mlp.fc2)


def stem_by_hand(stem: MultiResolutionStem, spectrogram: torch.Tensor, visible: torch.Tensor | None, k: int):
    """Stage 1 (stride 4) and 2 (stride 8) with their CBlocks, each side output one cell per patch, stage 3
    (stride 16) through the token projection, all three summed per patch in row-major (t, f) order."""
    b = spectrogram.shape[0]
    x = spectrogram.unsqueeze(1)
    side_sum = 0
    for stage, (s, cells_per_patch) in enumerate(((4, 4), (2, 2))):
        x = channel_norm(patchify_conv(x, stem.stage_embeds[stage].proj, s), stem.stage_embeds[stage].norm)
        cells = None
        if visible is not None:
            # Cell (i, j) of this stage lies in patch (i // cells_per_patch, j // cells_per_patch).
            grid = visible.view(b, 1, GRID_T, GRID_F).float()
            cells = torch.kron(grid, torch.ones(cells_per_patch, cells_per_patch))
            assert cells.shape[-2:] == x.shape[-2:]
        for block in stem.stages[stage]:
            x = cblock(x, block, cells, k)
        side = patchify_conv(x, stem.side_outputs[stage], cells_per_patch)  # (b, H, GRID_T, GRID_F)
        side_sum = side_sum + side.flatten(2).transpose(1, 2)
    last = channel_norm(patchify_conv(x, stem.stage_embeds[2].proj, 2), stem.stage_embeds[2].norm)
    tokens = last.flatten(2).transpose(1, 2)
    tokens = tokens @ stem.token_proj.weight.T + stem.token_proj.bias
    return tokens + side_sum


@pytest.mark.parametrize("masked", [False, True])
def test_stem_equals_the_stage_by_stage_computation(masked):
    config = tiny_config()
    stem = randomised(MultiResolutionStem(config)).eval()
    assert [len(blocks) for blocks in stem.stages] == [2, 1]
    spectrogram = torch.randn(2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(1))
    visible = None
    if masked:
        visible = torch.tensor(
            [[True, False, True, True, False, True], [False, True, True, False, True, True]]
        )
    with torch.no_grad():
        tokens = stem(spectrogram, visible)
        expected = stem_by_hand(stem, spectrogram, visible, k=3)
    assert tokens.shape == (2, GRID_T * GRID_F, config.hidden_size)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-4)


def test_stem_computes_and_returns_in_its_weights_dtype():
    """As the other families' patch embeddings: the tokens go on to the encoder's own LayerNorm, in the
    weights' dtype. A bfloat16 spectrogram into a float32 stem is cast up; the float32 spectrogram a feature
    extractor gives, into a bfloat16 stem (a model loaded with dtype=torch.bfloat16), is cast down."""
    stem = randomised(MultiResolutionStem(tiny_config())).eval()
    spectrogram = torch.randn(1, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(3))
    visible = torch.tensor([[True, True, False, True, True, False]])
    with torch.no_grad():
        tokens = stem(spectrogram.bfloat16(), visible)
        reference = stem(spectrogram.bfloat16().float(), visible)
        assert tokens.dtype == torch.float32
        torch.testing.assert_close(tokens, reference, rtol=0, atol=0)
        low = stem.bfloat16()(spectrogram, visible)
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low, stem(spectrogram.bfloat16(), visible), rtol=0, atol=0)


def test_stem_layers_have_the_reference_shapes():
    """Kernels, strides, widths and norms of every stem layer (ConvMAE's stem at strides 4, 8 and 16)."""
    stem = MultiResolutionStem(tiny_config(stem_kernel_size=5, stem_mlp_ratio=4.0))
    convs = {name: m for name, m in stem.named_modules() if isinstance(m, torch.nn.Conv2d)}
    geometry = {
        name: (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.groups)
        for name, m in convs.items()
    }
    assert geometry["stage_embeds.0.proj"] == (1, 4, (4, 4), (4, 4), (0, 0), 1)
    assert geometry["stage_embeds.1.proj"] == (4, 6, (2, 2), (2, 2), (0, 0), 1)
    assert geometry["stage_embeds.2.proj"] == (6, 8, (2, 2), (2, 2), (0, 0), 1)
    assert geometry["side_outputs.0"] == (4, 8, (4, 4), (4, 4), (0, 0), 1)
    assert geometry["side_outputs.1"] == (6, 8, (2, 2), (2, 2), (0, 0), 1)
    for stage, width in ((0, 4), (1, 6)):
        assert geometry[f"stages.{stage}.0.conv1"] == (width, width, (1, 1), (1, 1), (0, 0), 1)
        assert geometry[f"stages.{stage}.0.dwconv"] == (width, width, (5, 5), (1, 1), (2, 2), width)
        assert geometry[f"stages.{stage}.0.conv2"] == (width, width, (1, 1), (1, 1), (0, 0), 1)
        assert geometry[f"stages.{stage}.0.mlp.fc1"] == (width, 4 * width, (1, 1), (1, 1), (0, 0), 1)
        assert geometry[f"stages.{stage}.0.mlp.fc2"] == (4 * width, width, (1, 1), (1, 1), (0, 0), 1)
    assert (stem.token_proj.in_features, stem.token_proj.out_features) == (8, 8)
    norms = [m for m in stem.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 + 2 * 3  # one per stage embedding, two per CBlock
    assert all(norm.eps == STEM_EPS for norm in norms)


# ---- the encoder ----------------------------------------------------------------------------------------


def encoder_by_hand(model: CATModel, input_values: torch.Tensor) -> torch.Tensor:
    """``[CLS, patches + sin-cos positions]`` through ``pre_norm`` and the post-LN blocks, no final norm."""
    config = model.config
    if config.use_multi_resolution_stem:
        patches = model.stem(input_values)
    else:
        x = input_values if input_values.ndim == 4 else input_values.unsqueeze(1)
        patches = patchify_conv(x, model.patch_embed.proj, P).flatten(2).transpose(1, 2)
    patches = patches + model.pos_embed[:, : patches.shape[1]]
    hidden = torch.cat([model.cls_token.expand(len(input_values), -1, -1), patches], dim=1)
    hidden = F.layer_norm(hidden, (config.hidden_size,), model.pre_norm.weight, model.pre_norm.bias, 0.1)
    for block in model.blocks:
        hidden = block(hidden, None)
    return hidden


@pytest.mark.parametrize("use_stem", [True, False])
def test_encoder_is_stem_positions_cls_pre_norm_and_post_ln_blocks(use_stem):
    model = randomised(CATModel(tiny_config(use_multi_resolution_stem=use_stem))).eval()
    assert model.get_input_embeddings() is (model.stem if use_stem else model.patch_embed)
    assert (model.stem is None) is not use_stem and (model.patch_embed is None) is use_stem
    assert model.norm is None and model.pre_norm.eps == 0.1
    input_values = torch.randn(2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = model(input_values)
        expected = encoder_by_hand(model, input_values)
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(output.pooler_output, expected[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use_stem", [True, False])
def test_encoder_takes_the_configured_number_of_input_channels(use_stem):
    """``num_channels`` reaches the first conv of either front end: a (B, 2, T, F) input, one set of weights
    per channel."""
    model = randomised(CATModel(tiny_config(use_multi_resolution_stem=use_stem, num_channels=2))).eval()
    first = model.stem.stage_embeds[0].proj if use_stem else model.patch_embed.proj
    assert first.in_channels == 2
    input_values = torch.randn(2, 2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        output = model(input_values)
        expected = encoder_by_hand(model, input_values)
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-4, atol=1e-4)


def test_eat_patch_embedding_takes_the_input_in_its_weights_dtype():
    """Without the stem (EAT), a bfloat16 spectrogram into a float32 encoder is cast up before the patch
    projection: the values are those of the same spectrogram given in float32."""
    model = randomised(CATModel(tiny_config(use_multi_resolution_stem=False))).eval()
    spectrogram = torch.randn(
        2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(5)
    ).bfloat16()
    with torch.no_grad():
        output = model(spectrogram)
        expected = encoder_by_hand(model, spectrogram.float())
    assert output.last_hidden_state.dtype == torch.float32
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-4, atol=1e-4)


def test_encoder_dropout_and_stochastic_depth_follow_the_config():
    config = tiny_config(hidden_dropout_prob=0.25, drop_path_rate=0.3, num_hidden_layers=3)
    model = CATModel(config)
    assert len(model.blocks) == 3 and model.dropout.p == 0.25
    assert [block.drop_path.drop_prob for block in model.blocks] == pytest.approx([0.0, 0.15, 0.3])
    # The classifier keeps it; the pre-training student runs without it (as the reference pre-training).
    classifier = CATForAudioClassification(config)
    assert [block.drop_path.drop_prob for block in classifier.cat.blocks] == pytest.approx([0.0, 0.15, 0.3])
    student = CATForPreTraining(config)
    assert all(block.drop_path.drop_prob == 0.0 for block in student.cat.blocks)
    assert student.config.drop_path_rate == 0.3
