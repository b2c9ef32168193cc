"""The Zipformer building blocks (hf_audiorep/modeling/_zipformer_layers.py) value by value, each against a
computation written out here from icefall's Zipformer2 formulas (numpy, loops or torch.nn.functional with the
module's weights): SwooshL / SwooshR, BiasNorm, the bypass, padding masks and downsampled lengths, the
downsampling (tail padded with the clip's last frame) and upsampling, channel conversion, the full-width
output, the ConvNeXt with its frame mask, the front end's lengths and values, the compact relative positional
encoding, the shared attention (eager and sdpa, padding keys), the feed-forward, non-linear attention,
self-attention and convolution modules, and a whole layer (its order, and padding that never reaches a
clip's valid frames). Tiny shapes, fixed seeds: the file runs in about a second."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hf_audiorep.modeling._zipformer_layers import (
    MASKED_SCORE,
    BiasNorm,
    BypassModule,
    Conv2dSubsampling,
    ConvNeXt,
    ConvolutionModule,
    FeedforwardModule,
    NonlinAttention,
    RelPositionMultiheadAttentionWeights,
    SelfAttention,
    SharedAttention,
    SimpleDownsample,
    SimpleUpsample,
    SwooshL,
    SwooshR,
    ZipformerEncoderLayer,
    compact_rel_positional_encoding,
    convert_num_channels,
    downsampled_lengths,
    full_dim_output,
    padding_mask,
    scaled_linear,
    swoosh_l,
    swoosh_r,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomise_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn from N(0, 0.5^2): no zero bias or 0.5 bypass scale hides a wrong formula."""
    generator = gen(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    return module


def np_swoosh_l(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x - 4.0) - 0.08 * x - 0.035


def np_swoosh_r(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x - 1.0) - 0.08 * x - 0.313261687


def t_swoosh_l(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np_swoosh_l(x.detach().double().numpy())).to(x.dtype)


def t_swoosh_r(x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np_swoosh_r(x.detach().double().numpy())).to(x.dtype)


def linear_by_hand(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    out = torch.einsum("...i,oi->...o", x, layer.weight.detach())
    return out if layer.bias is None else out + layer.bias.detach()


# ---- activations, norm, bypass, init scale --------------------------------------------------------------


def test_swoosh_l_and_r_follow_the_papers_formulas_on_a_wide_range():
    x = torch.tensor([-40.0, -5.0, -1.0, -0.3, 0.0, 0.5, 1.0, 3.0, 4.0, 7.5, 40.0], dtype=torch.float64)
    expected_l = np_swoosh_l(x.numpy())
    expected_r = np_swoosh_r(x.numpy())
    np.testing.assert_allclose(swoosh_l(x).numpy(), expected_l, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(swoosh_r(x).numpy(), expected_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(SwooshL()(x).numpy(), expected_l, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(SwooshR()(x).numpy(), expected_r, rtol=1e-12, atol=1e-12)
    # fixed points by hand: SwooshR(0) = log(1 + e^-1) - 0.313261687 ~ 0, SwooshL(4) = log 2 - 0.32 - 0.035
    assert abs(swoosh_r(torch.zeros((), dtype=torch.float64)).item()) < 1e-9
    assert swoosh_l(torch.tensor(4.0, dtype=torch.float64)).item() == pytest.approx(math.log(2) - 0.355)


def test_scaled_linear_is_a_plain_linear_carrying_its_initial_scale():
    layer = scaled_linear(5, 3, initial_scale=0.25)
    assert isinstance(layer, torch.nn.Linear)
    assert (layer.in_features, layer.out_features, layer.initial_scale) == (5, 3, 0.25)
    assert layer.bias is not None and layer.bias.shape == (3,)
    default = scaled_linear(4, 2)
    assert default.initial_scale == 1.0 and default.bias is not None
    assert scaled_linear(4, 2, bias=False).bias is None


def test_bias_norm_starts_at_zero_bias_and_log_scale_one():
    norm = BiasNorm(6)
    assert norm.bias.shape == (6,) and norm.bias.eq(0).all()
    assert norm.log_scale.shape == () and norm.log_scale.item() == 1.0
    x = torch.randn(2, 3, 6, generator=gen(0), dtype=torch.float64)
    rms = np.sqrt((x.numpy() ** 2).mean(-1, keepdims=True))
    np.testing.assert_allclose(norm.double()(x).detach().numpy(), x.numpy() / rms * math.e, rtol=1e-10)


def test_bias_norm_divides_by_the_rms_around_the_bias_but_never_subtracts_it():
    norm = BiasNorm(5).double()
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 0.3]))
        norm.log_scale.fill_(-0.7)
    x = torch.randn(3, 4, 5, generator=gen(1), dtype=torch.float64)
    xn, bn = x.numpy(), norm.bias.detach().numpy()
    rms = np.sqrt(((xn - bn) ** 2).mean(-1, keepdims=True))
    expected = xn / rms * math.exp(-0.7)
    np.testing.assert_allclose(norm(x).detach().numpy(), expected, rtol=1e-10)


def test_bypass_starts_halfway_and_interpolates_per_channel():
    bypass = BypassModule(4)
    assert bypass.bypass_scale.shape == (4,) and bypass.bypass_scale.eq(0.5).all()
    scale = torch.tensor([0.2, 1.0, 0.0, 0.7])
    with torch.no_grad():
        bypass.bypass_scale.copy_(scale)
    orig = torch.randn(2, 3, 4, generator=gen(2))
    x = torch.randn(2, 3, 4, generator=gen(3))
    out = bypass(orig, x)
    torch.testing.assert_close(out, (1 - scale) * orig + scale * x)
    # scale 1 passes the module's output, scale 0 its input (no clamping in the forward pass, train or eval)
    torch.testing.assert_close(out[..., 1], x[..., 1])
    torch.testing.assert_close(out[..., 2], orig[..., 2])
    torch.testing.assert_close(bypass.train()(orig, x), out)


# ---- masks and lengths -----------------------------------------------------------------------------------


def test_padding_mask_is_true_at_and_past_each_length():
    mask = padding_mask(torch.tensor([3, 0, 5, 1]), 5)
    expected = [
        [False, False, False, True, True],
        [True, True, True, True, True],
        [False, False, False, False, False],
        [False, True, True, True, True],
    ]
    assert mask.dtype == torch.bool and mask.tolist() == expected


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_downsampled_lengths_round_a_partial_group_up(factor):
    lengths = list(range(0, 14))
    out = downsampled_lengths(torch.tensor(lengths), factor)
    assert out.tolist() == [math.ceil(n / factor) for n in lengths]


# ---- downsampling, upsampling, channels, the full-width output ---------------------------------------------


def downsample_by_hand(x: np.ndarray, lengths: list[int], bias: np.ndarray) -> np.ndarray:
    factor = len(bias)
    weights = np.exp(bias - bias.max())
    weights = weights / weights.sum()
    batch, num_frames, channels = x.shape
    out_frames = -(-num_frames // factor)
    out = np.zeros((batch, out_frames, channels))
    for b in range(batch):
        last = max(lengths[b] - 1, 0)
        for g in range(out_frames):
            for k in range(factor):
                out[b, g] += weights[k] * x[b, min(g * factor + k, last)]
    return out


def test_simple_downsample_starts_uniform():
    module = SimpleDownsample(3)
    assert module.downsample == 3 and module.bias.shape == (3,) and module.bias.eq(0).all()
    x = torch.randn(1, 6, 2, generator=gen(4))
    torch.testing.assert_close(module(x, torch.tensor([6])), x.reshape(1, 2, 3, 2).mean(2))


@pytest.mark.parametrize(("factor", "num_frames"), [(2, 7), (3, 7), (3, 9), (4, 5)])
def test_simple_downsample_weights_groups_and_pads_each_tail_with_its_last_frame(factor, num_frames):
    module = SimpleDownsample(factor)
    bias = torch.randn(factor, generator=gen(factor))
    with torch.no_grad():
        module.bias.copy_(bias)
    # full, odd, one frame, none (a clip of length 0 reads its frame 0)
    lengths = [num_frames, num_frames - 2, 1, 0]
    x = torch.randn(4, num_frames, 3, generator=gen(5), dtype=torch.float64)
    out = module(x, torch.tensor(lengths))
    assert out.dtype == torch.float64
    expected = downsample_by_hand(x.numpy(), lengths, bias.double().numpy())
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_simple_downsample_keeps_the_input_dtype():
    module = SimpleDownsample(2)
    x = torch.randn(1, 4, 2, generator=gen(6)).to(torch.bfloat16)
    assert module(x, torch.tensor([4])).dtype == torch.bfloat16


def test_simple_upsample_repeats_each_frame():
    module = SimpleUpsample(3)
    assert module.upsample == 3 and not list(module.parameters())
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])  # (2, 2, 2)
    out = module(x)
    expected = torch.tensor(
        [
            [[1.0, 2.0]] * 3 + [[3.0, 4.0]] * 3,
            [[5.0, 6.0]] * 3 + [[7.0, 8.0]] * 3,
        ]
    )
    assert torch.equal(out, expected)


def test_convert_num_channels_truncates_keeps_or_zero_pads():
    x = torch.randn(2, 3, 5, generator=gen(7))
    assert torch.equal(convert_num_channels(x, 3), x[..., :3])
    assert torch.equal(convert_num_channels(x, 5), x)
    wider = convert_num_channels(x, 8)
    assert wider.shape == (2, 3, 8)
    assert torch.equal(wider[..., :5], x) and wider[..., 5:].eq(0).all()


def test_full_dim_output_takes_each_channel_from_the_most_recent_stack_that_has_it():
    g = gen(8)
    widths = [6, 10, 4, 8, 3]
    outputs = [torch.randn(2, 3, w, generator=g) for w in widths]
    out = full_dim_output(outputs, 12)
    assert out.shape == (2, 3, 12)
    # channels 0..2 from the last stack (3), 3..7 from stack 3 (8), 8..9 from stack 1 (10), 10..11 zeros:
    # stacks 2 (4) and 0 (6) are narrower than a more recent stack and give nothing
    expected = torch.cat(
        [outputs[4], outputs[3][..., 3:8], outputs[1][..., 8:10], torch.zeros(2, 3, 2)], dim=-1
    )
    assert torch.equal(out, expected)
    # an output_dim below the widest truncates; one stack alone is itself
    assert torch.equal(full_dim_output(outputs, 9), expected[..., :9])
    assert torch.equal(full_dim_output(outputs[:1], 6), outputs[0])


# ---- the front end ---------------------------------------------------------------------------------------


def test_convnext_layout_and_initial_scale():
    block = ConvNeXt(4)
    assert block.depthwise_conv.kernel_size == (7, 7) and block.depthwise_conv.padding == (3, 3)
    assert block.depthwise_conv.groups == 4 and block.depthwise_conv.in_channels == 4
    assert block.depthwise_conv.out_channels == 4
    assert (block.pointwise_conv1.in_channels, block.pointwise_conv1.out_channels) == (4, 12)
    assert block.pointwise_conv1.kernel_size == (1, 1)
    assert (block.pointwise_conv2.in_channels, block.pointwise_conv2.out_channels) == (12, 4)
    assert block.pointwise_conv2.kernel_size == (1, 1)
    assert block.pointwise_conv2.initial_scale == 0.01
    other = ConvNeXt(2, hidden_ratio=2, kernel_size=3)
    assert other.pointwise_conv1.out_channels == 4 and other.depthwise_conv.padding == (1, 1)


def convnext_by_hand(block: ConvNeXt, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    hidden = x if keep is None else x * keep[:, None, :, None].to(x.dtype)
    conv = block.depthwise_conv
    k = conv.kernel_size[0]
    hidden = F.conv2d(hidden, conv.weight, conv.bias, padding=k // 2, groups=x.shape[1])
    hidden = torch.einsum("bcft,hc->bhft", hidden, block.pointwise_conv1.weight[:, :, 0, 0])
    hidden = t_swoosh_l(hidden + block.pointwise_conv1.bias[None, :, None, None])
    hidden = torch.einsum("bhft,ch->bcft", hidden, block.pointwise_conv2.weight[:, :, 0, 0])
    return x + hidden + block.pointwise_conv2.bias[None, :, None, None]


def test_convnext_zeroes_padding_frames_for_its_conv_but_keeps_them_in_the_residual():
    block = randomise_(ConvNeXt(3, hidden_ratio=2, kernel_size=5), 9).double()
    x = torch.randn(2, 3, 8, 4, generator=gen(10), dtype=torch.float64)
    keep = ~padding_mask(torch.tensor([8, 5]), 8)
    with torch.no_grad():
        out = block(x, keep)
        torch.testing.assert_close(out, convnext_by_hand(block, x, keep))
        torch.testing.assert_close(block(x), convnext_by_hand(block, x, None))
        # clip 1's valid frames do not see its padding
        x2 = x.clone()
        x2[1, :, 5:] = 1e3
        torch.testing.assert_close(block(x2, keep)[1, :, :5], out[1, :, :5])


def test_subsampling_output_lengths():
    lengths = torch.tensor([0, 5, 7, 8, 9, 10, 23, 100])
    expected = [max((n - 7) // 2, 0) for n in lengths.tolist()]
    assert Conv2dSubsampling.output_lengths(lengths).tolist() == expected == [0, 0, 0, 0, 1, 1, 8, 46]


def test_subsampling_layout():
    front = Conv2dSubsampling(num_mel_bins=19, out_channels=6, channels=(2, 3, 4), dropout=0.3)
    assert front.out_width == 4  # 19 -> conv2 9 -> conv3 4 frequency bins
    assert (front.conv1.in_channels, front.conv1.out_channels, front.conv1.kernel_size) == (1, 2, (3, 3))
    assert front.conv1.padding == (0, 1) and front.conv1.stride == (1, 1)
    assert (front.conv2.in_channels, front.conv2.out_channels, front.conv2.stride) == (2, 3, (2, 2))
    assert front.conv2.kernel_size == (3, 3) and front.conv2.padding == (0, 0)
    assert (front.conv3.in_channels, front.conv3.out_channels, front.conv3.stride) == (3, 4, (1, 2))
    assert front.conv3.kernel_size == (3, 3) and front.conv3.padding == (0, 0)
    assert (
        front.convnext.depthwise_conv.in_channels == 4 and front.convnext.pointwise_conv1.out_channels == 12
    )
    assert (front.out.in_features, front.out.out_features) == (16, 6)
    assert front.out_norm.bias.shape == (6,) and front.dropout.p == 0.3
    default = Conv2dSubsampling(num_mel_bins=80, out_channels=8)
    assert [c.out_channels for c in (default.conv1, default.conv2, default.conv3)] == [8, 32, 128]
    assert default.out_width == 19 and default.out.in_features == 19 * 128 and default.dropout.p == 0.0


def subsampling_by_hand(front: Conv2dSubsampling, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    h = t_swoosh_r(F.conv2d(x[:, None], front.conv1.weight, front.conv1.bias, padding=(0, 1)))
    h = t_swoosh_r(F.conv2d(h, front.conv2.weight, front.conv2.bias, stride=2))
    h = t_swoosh_r(F.conv2d(h, front.conv3.weight, front.conv3.bias, stride=(1, 2)))
    frames = h.shape[2]
    keep = torch.tensor([[t < max((n - 7) // 2, 0) for t in range(frames)] for n in lengths])
    h = convnext_by_hand(front.convnext, h, keep)
    batch, channels, _, freqs = h.shape
    flat = torch.zeros(batch, frames, channels * freqs, dtype=h.dtype)
    for c in range(channels):
        for f in range(freqs):
            flat[:, :, c * freqs + f] = h[:, c, :, f]  # channel-major, as icefall flattens
    out = linear_by_hand(flat, front.out)
    rms = ((out - front.out_norm.bias).pow(2).mean(-1, keepdim=True)).sqrt()
    return out / rms * front.out_norm.log_scale.exp()


def test_subsampling_values_and_lengths_and_padding_never_reaching_valid_frames():
    front = randomise_(Conv2dSubsampling(num_mel_bins=11, out_channels=5, channels=(2, 3, 2)), 11).double()
    front.eval()
    x = torch.randn(2, 23, 11, generator=gen(12), dtype=torch.float64)
    lengths = [23, 16]
    with torch.no_grad():
        out, out_lengths = front(x, torch.tensor(lengths))
        assert out.shape == (2, 8, 5) and out_lengths.tolist() == [8, 4]
        torch.testing.assert_close(out, subsampling_by_hand(front, x, lengths))
        x2 = x.clone()
        x2[1, 16:] = 50.0
        torch.testing.assert_close(front(x2, torch.tensor(lengths))[0][1, :4], out[1, :4])


def test_subsampling_dropout_acts_on_the_normalised_output_in_training_only():
    front = randomise_(
        Conv2dSubsampling(num_mel_bins=11, out_channels=64, channels=(2, 2, 2), dropout=0.5), 13
    )
    x = torch.randn(1, 15, 11, generator=gen(14))
    with torch.no_grad():
        clean, _ = front.eval()(x, torch.tensor([15]))
        torch.manual_seed(0)
        dropped, _ = front.train()(x, torch.tensor([15]))
    zero = dropped == 0
    assert 0 < zero.sum() < zero.numel()
    torch.testing.assert_close(dropped[~zero], 2 * clean[~zero])


# ---- positions and attention -----------------------------------------------------------------------------


def rel_encoding_by_hand(num_frames: int, dim: int, length_factor: float = 1.0) -> np.ndarray:
    rows = []
    root = math.sqrt(dim)
    for offset in range(-(num_frames - 1), num_frames):
        sign = (offset > 0) - (offset < 0)
        compressed = root * sign * (math.log(abs(offset) + root) - math.log(root))
        angle = math.atan(compressed / (length_factor * dim / (2 * math.pi)))
        row = []
        for f in range(dim // 2):
            row += [math.cos(angle * (f + 1)), math.sin(angle * (f + 1))]
        row[-1] = 1.0
        rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize(("num_frames", "dim", "length_factor"), [(4, 8, 1.0), (6, 6, 1.0), (3, 10, 2.5)])
def test_compact_rel_positional_encoding_values(num_frames, dim, length_factor):
    encoding = compact_rel_positional_encoding(num_frames, dim, length_factor=length_factor)
    assert encoding.dtype == torch.float32 and encoding.shape == (2 * num_frames - 1, dim)
    expected = rel_encoding_by_hand(num_frames, dim, length_factor)
    np.testing.assert_allclose(encoding.numpy(), expected, rtol=0, atol=2e-6)
    # offset 0 is the middle row: every cosine 1, every sine 0, the bias channel 1
    assert encoding[num_frames - 1].tolist() == [1.0, 0.0] * (dim // 2 - 1) + [1.0, 1.0]


def test_compact_rel_positional_encoding_dtype():
    encoding = compact_rel_positional_encoding(3, 4, dtype=torch.float64)
    assert encoding.dtype == torch.float64
    np.testing.assert_allclose(encoding.numpy(), rel_encoding_by_hand(3, 4), rtol=0, atol=1e-6)


def attention_by_hand(q, k, bias, values):
    scores = torch.einsum("bhid,bhjd->bhij", q, k) + bias
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return weights, torch.einsum("bhij,bhjd->bhid", weights, values)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_shared_attention_applies_softmax_of_scores_plus_bias_with_scale_one(implementation):
    g = gen(15)
    q, k = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 4, generator=g)
    bias = torch.randn(2, 3, 5, 5, generator=g)
    bias[1, :, :, 3:] = MASKED_SCORE
    values = torch.randn(2, 3, 5, 2, generator=g)
    shared = SharedAttention(q, k, bias, implementation)
    assert shared.query is q and shared.key is k and shared.bias is bias
    weights, expected = attention_by_hand(q, k, bias, values)
    if implementation == "eager":
        torch.testing.assert_close(shared.weights, weights)
    else:
        assert shared.weights is None
    torch.testing.assert_close(shared.apply(values), expected, rtol=1e-5, atol=1e-5)
    first = shared.apply(values[:, :1], first_head_only=True)
    assert first.shape == (2, 1, 5, 2)
    torch.testing.assert_close(first, expected[:, :1], rtol=1e-5, atol=1e-5)
    # masked keys get exactly zero weight
    assert weights[1, :, :, 3:].eq(0).all()


def test_masked_score_gives_exactly_zero_weight():
    assert MASKED_SCORE == -1000.0
    scores = torch.tensor([3.0, MASKED_SCORE + 2.0]).softmax(0)
    assert scores[1].item() == 0.0


def test_rel_position_attention_weights_layout_and_initial_scales():
    module = RelPositionMultiheadAttentionWeights(
        embed_dim=8, pos_dim=6, num_heads=2, query_head_dim=4, pos_head_dim=3
    )
    assert (module.num_heads, module.query_head_dim, module.pos_head_dim) == (2, 4, 3)
    assert (module.in_proj.in_features, module.in_proj.out_features) == (8, (2 * 4 + 3) * 2)
    assert module.in_proj.bias is not None and module.in_proj.initial_scale == pytest.approx(4**-0.25)
    assert (module.linear_pos.in_features, module.linear_pos.out_features) == (6, 6)
    assert module.linear_pos.bias is None and module.linear_pos.initial_scale == 0.05


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_rel_position_attention_scores_by_hand(implementation):
    heads, qd, pd, embed, pos_dim, T = 2, 3, 2, 5, 4, 4
    module = randomise_(RelPositionMultiheadAttentionWeights(embed, pos_dim, heads, qd, pd), 16)
    x = torch.randn(2, T, embed, generator=gen(17))
    pos_emb = torch.randn(2 * T - 1, pos_dim, generator=gen(18))
    pad = padding_mask(torch.tensor([4, 2]), T)
    with torch.no_grad():
        shared = module(x, pos_emb, pad, implementation)
        proj = linear_by_hand(x, module.in_proj)
        pos_keys = linear_by_hand(pos_emb, module.linear_pos)  # row r: offset r - (T - 1)
    q = torch.empty(2, heads, T, qd)
    k = torch.empty(2, heads, T, qd)
    bias = torch.empty(2, heads, T, T)
    for b in range(2):
        for h in range(heads):
            for i in range(T):
                q[b, h, i] = proj[b, i, h * qd : (h + 1) * qd]
                k[b, h, i] = proj[b, i, heads * qd + h * qd : heads * qd + (h + 1) * qd]
                p = proj[b, i, 2 * heads * qd + h * pd : 2 * heads * qd + (h + 1) * pd]
                for j in range(T):
                    # the score of key j for query i reads offset j - i
                    score = p @ pos_keys[(T - 1) + j - i, h * pd : (h + 1) * pd]
                    bias[b, h, i, j] = MASKED_SCORE if pad[b, j] else score
    torch.testing.assert_close(shared.query, q)
    torch.testing.assert_close(shared.key, k)
    torch.testing.assert_close(shared.bias, bias)
    values = torch.randn(2, heads, T, 3, generator=gen(19))
    weights, expected = attention_by_hand(q, k, bias, values)
    if implementation == "eager":
        torch.testing.assert_close(shared.weights, weights)
    else:
        assert shared.weights is None
    with torch.no_grad():
        torch.testing.assert_close(shared.apply(values), expected, rtol=1e-5, atol=1e-5)
    # without a mask nothing is at the masked score
    with torch.no_grad():
        unmasked = module(x, pos_emb, None, implementation)
    assert unmasked.bias.gt(MASKED_SCORE / 2).all()


# ---- the modules of a layer ------------------------------------------------------------------------------


def test_feedforward_layout_and_values():
    module = FeedforwardModule(4, 7, dropout=0.2)
    assert (module.in_proj.in_features, module.in_proj.out_features) == (4, 7)
    assert (module.out_proj.in_features, module.out_proj.out_features) == (7, 4)
    assert module.out_proj.initial_scale == 0.1 and module.dropout.p == 0.2
    module = randomise_(module, 20).eval()
    x = torch.randn(2, 3, 4, generator=gen(21))
    with torch.no_grad():
        expected = linear_by_hand(t_swoosh_l(linear_by_hand(x, module.in_proj)), module.out_proj)
        torch.testing.assert_close(module(x), expected)


def test_feedforward_dropout_is_after_the_activation_in_training():
    module = randomise_(FeedforwardModule(3, 64, dropout=0.5), 22).train()
    x = torch.randn(1, 1, 3, generator=gen(23))
    with torch.no_grad():
        torch.manual_seed(4)
        out = module(x)
        torch.manual_seed(4)
        hidden = F.dropout(t_swoosh_l(linear_by_hand(x, module.in_proj)), 0.5, training=True)
        torch.testing.assert_close(out, linear_by_hand(hidden, module.out_proj))


def shared_of(batch: int, heads: int, T: int, seed: int, pad: torch.Tensor | None = None):
    g = gen(seed)
    q, k = torch.randn(batch, heads, T, 3, generator=g), torch.randn(batch, heads, T, 3, generator=g)
    bias = torch.randn(batch, heads, T, T, generator=g)
    if pad is not None:
        bias = bias.masked_fill(pad[:, None, None, :], MASKED_SCORE)
    weights = attention_by_hand(q, k, bias, torch.zeros(batch, heads, T, 1))[0]
    return q, k, bias, weights


def test_nonlin_attention_layout_and_values_with_the_first_heads_weights():
    module = NonlinAttention(8, hidden_channels=6)
    assert module.hidden_channels == 6
    assert (module.in_proj.in_features, module.in_proj.out_features) == (8, 18)
    assert (module.out_proj.in_features, module.out_proj.out_features) == (6, 8)
    assert module.out_proj.initial_scale == 0.05
    module = randomise_(module, 24)
    x = torch.randn(2, 5, 8, generator=gen(25))
    q, k, bias, weights = shared_of(2, 3, 5, 26)
    with torch.no_grad():
        proj = linear_by_hand(x, module.in_proj)
        s, v, y = proj[..., :6], proj[..., 6:12], proj[..., 12:]
        attended = torch.einsum("bij,bjd->bid", weights[:, 0], v * torch.tanh(s))
        expected = linear_by_hand(attended * y, module.out_proj)
        for implementation in ("eager", "sdpa"):
            out = module(x, SharedAttention(q, k, bias, implementation))
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_self_attention_layout_and_values_head_by_head():
    module = SelfAttention(6, num_heads=2, value_head_dim=3)
    assert module.num_heads == 2
    assert (module.in_proj.in_features, module.in_proj.out_features) == (6, 6)
    assert (module.out_proj.in_features, module.out_proj.out_features) == (6, 6)
    assert module.out_proj.initial_scale == 0.05
    module = randomise_(SelfAttention(5, num_heads=2, value_head_dim=3), 27)
    x = torch.randn(2, 4, 5, generator=gen(28))
    q, k, bias, weights = shared_of(2, 2, 4, 29)
    with torch.no_grad():
        values = linear_by_hand(x, module.in_proj)  # (2, 4, 6): head h is channels 3h .. 3h + 2
        heads = [
            torch.einsum("bij,bjd->bid", weights[:, h], values[..., 3 * h : 3 * h + 3]) for h in range(2)
        ]
        expected = linear_by_hand(torch.cat(heads, dim=-1), module.out_proj)
        for implementation in ("eager", "sdpa"):
            out = module(x, SharedAttention(q, k, bias, implementation))
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_convolution_module_layout():
    module = ConvolutionModule(4, kernel_size=5)
    assert (module.in_proj.in_features, module.in_proj.out_features) == (4, 8)
    conv = module.depthwise_conv
    assert (conv.in_channels, conv.out_channels, conv.groups) == (4, 4, 4)
    assert conv.kernel_size == (5,) and conv.padding == (2,)
    assert (module.out_proj.in_features, module.out_proj.out_features) == (4, 4)
    assert module.out_proj.initial_scale == 0.05


def convolution_by_hand(module: ConvolutionModule, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
    channels = x.shape[-1]
    proj = linear_by_hand(x, module.in_proj)
    glu = proj[..., :channels] * torch.sigmoid(proj[..., channels:])
    if pad is not None:
        glu = glu * (~pad)[..., None]
    weight, conv_bias = module.depthwise_conv.weight[:, 0], module.depthwise_conv.bias  # (C, K)
    K = weight.shape[1]
    T = x.shape[1]
    conv = torch.zeros_like(glu)
    for t in range(T):
        for m in range(K):
            source = t + m - K // 2
            if 0 <= source < T:
                conv[:, t] += glu[:, source] * weight[:, m]
    conv = conv + conv_bias
    return linear_by_hand(t_swoosh_r(conv), module.out_proj)


def test_convolution_module_values_with_padding_frames_zeroed():
    module = randomise_(ConvolutionModule(3, kernel_size=3), 30).double()
    x = torch.randn(2, 6, 3, generator=gen(31), dtype=torch.float64)
    pad = padding_mask(torch.tensor([6, 4]), 6)
    with torch.no_grad():
        out = module(x, pad)
        torch.testing.assert_close(out, convolution_by_hand(module, x, pad))
        torch.testing.assert_close(module(x, None), convolution_by_hand(module, x, None))
        # the valid frames of clip 1 equal the clip alone
        alone = module(x[1:, :4], None)
        torch.testing.assert_close(out[1:, :4], alone)


# ---- a whole layer ---------------------------------------------------------------------------------------


def tiny_layer(dropout: float = 0.0) -> ZipformerEncoderLayer:
    return ZipformerEncoderLayer(
        embed_dim=8,
        pos_dim=6,
        num_heads=2,
        query_head_dim=4,
        pos_head_dim=2,
        value_head_dim=3,
        feedforward_dim=16,
        cnn_module_kernel=3,
        dropout=dropout,
    )


def test_encoder_layer_layout():
    layer = tiny_layer(dropout=0.25)
    assert [
        layer.feed_forward1.in_proj.out_features,
        layer.feed_forward2.in_proj.out_features,
        layer.feed_forward3.in_proj.out_features,
    ] == [12, 16, 20]
    assert {m.dropout.p for m in (layer.feed_forward1, layer.feed_forward2, layer.feed_forward3)} == {0.25}
    assert layer.nonlin_attention.hidden_channels == 6
    assert layer.self_attn_weights.num_heads == 2 and layer.self_attn_weights.query_head_dim == 4
    assert layer.self_attn_weights.pos_head_dim == 2 and layer.self_attn_weights.linear_pos.in_features == 6
    assert layer.self_attn1.in_proj.out_features == 6 and layer.self_attn2.in_proj.out_features == 6
    assert layer.conv_module1.depthwise_conv.kernel_size == (3,)
    assert layer.conv_module2.depthwise_conv.kernel_size == (3,)
    assert layer.bypass.bypass_scale.shape == (8,) and layer.bypass_mid.bypass_scale.shape == (8,)
    assert layer.norm.bias.shape == (8,)
    default = ZipformerEncoderLayer(8, 6, 2, 4, 2, 3, 16, 3)
    assert default.feed_forward2.dropout.p == 0.0


def layer_by_hand(layer: ZipformerEncoderLayer, h: torch.Tensor, pos_emb, pad, implementation):
    """The paper's Fig. 3, written out from the (separately checked) modules."""
    attention = layer.self_attn_weights(h, pos_emb, pad, implementation)
    x = h + layer.feed_forward1(h)
    x = x + layer.nonlin_attention(x, attention)
    x = x + layer.self_attn1(x, attention)
    x = x + layer.conv_module1(x, pad)
    x = x + layer.feed_forward2(x)
    mid = layer.bypass_mid.bypass_scale
    x = h + (x - h) * mid
    x = x + layer.self_attn2(x, attention)
    x = x + layer.conv_module2(x, pad)
    x = x + layer.feed_forward3(x)
    norm = layer.norm
    x = x * (x - norm.bias).pow(2).mean(-1, keepdim=True).rsqrt() * norm.log_scale.exp()
    return h + (x - h) * layer.bypass.bypass_scale


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_encoder_layer_order_and_padding_that_never_reaches_valid_frames(implementation):
    layer = randomise_(tiny_layer(), 32).eval()
    x = torch.randn(2, 6, 8, generator=gen(33))
    pos_emb = compact_rel_positional_encoding(6, 6)
    pad = padding_mask(torch.tensor([6, 4]), 6)
    with torch.no_grad():
        out = layer(x, pos_emb, pad, implementation)
        torch.testing.assert_close(out, layer_by_hand(layer, x, pos_emb, pad, implementation))
        alone = layer(x[1:, :4], compact_rel_positional_encoding(4, 6), None, implementation)
        torch.testing.assert_close(out[1:, :4], alone, rtol=1e-5, atol=1e-5)
        x2 = x.clone()
        x2[1, 4:] = 30.0
        torch.testing.assert_close(layer(x2, pos_emb, pad, implementation)[1, :4], out[1, :4])


def test_encoder_layer_defaults_are_no_mask_and_sdpa():
    layer = randomise_(tiny_layer(), 34).eval()
    x = torch.randn(1, 5, 8, generator=gen(35))
    pos_emb = compact_rel_positional_encoding(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, pos_emb), layer_by_hand(layer, x, pos_emb, None, "sdpa"))


def test_encoder_layer_uses_sdpa_unless_told_otherwise():
    layer = tiny_layer().eval()
    seen = []
    layer.self_attn_weights.register_forward_hook(lambda module, args, output: seen.append(output))
    x = torch.randn(1, 4, 8, generator=gen(36))
    pos_emb = compact_rel_positional_encoding(4, 6)
    with torch.no_grad():
        layer(x, pos_emb)
        layer(x, pos_emb, None, "eager")
    # sdpa never stores the weights; eager does
    assert seen[0].weights is None and seen[1].weights is not None


@pytest.mark.parametrize("num_mel_bins", [11, 16, 17, 18, 19, 80])
def test_subsampling_output_width_is_what_the_two_frequency_strides_leave(num_mel_bins):
    def conv_out(size: int, kernel: int, stride: int) -> int:
        return (size - kernel) // stride + 1

    width = conv_out(conv_out(num_mel_bins, 3, 2), 3, 2)  # conv1 keeps the width (padding 1)
    front = Conv2dSubsampling(num_mel_bins=num_mel_bins, out_channels=3, channels=(1, 1, 2)).eval()
    assert front.out_width == width and front.out.in_features == 2 * width
    with torch.no_grad():
        out, lengths = front(torch.randn(1, 11, num_mel_bins, generator=gen(37)), torch.tensor([11]))
    assert out.shape == (1, 2, 3) and lengths.tolist() == [2]
