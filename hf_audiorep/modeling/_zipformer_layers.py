"""Building blocks of the Zipformer encoder (Yao et al., 2023, "Zipformer: A faster and better encoder for
automatic speech recognition"), after the structure of icefall's ``Zipformer2`` (k2-fsa/icefall,
``egs/librispeech/ASR/zipformer/{zipformer,scaling,subsampling}.py``).

Module and parameter names follow icefall's inside a layer (``self_attn_weights.in_proj``,
``feed_forward1.out_proj``, ``conv_module1.depthwise_conv``, ``bypass_mid.bypass_scale``, ...), so a
checkpoint converts by renaming its prefixes (see ``hf_audiorep.conversion.icefall_zipformer``). Tensors are
batch-first, ``(batch, frames, channels)``, where icefall's are ``(frames, batch, channels)``.

What matches icefall in eval mode, weight for weight: `Conv2dSubsampling` (the ConvNeXt-style front end,
100 -> 50 frames/s), `SimpleDownsample` / `SimpleUpsample` / `BypassModule` around each stack, the encoder
layer (three feed-forwards, `NonlinAttention`, two `SelfAttention` and two `ConvolutionModule` modules sharing
one `RelPositionMultiheadAttentionWeights`, `BiasNorm`, SwooshL / SwooshR) and the compact relative positional
encoding. Where icefall lets padding leak into a clip's valid frames, these blocks do not, so that a clip's
output never depends on the rest of its batch:

- the ConvNeXt's 7 x 7 depthwise conv sees zeros past a clip's end, as it would on the clip alone (icefall
  feeds it the conv outputs of the padding);
- `SimpleDownsample` pads a clip's last group with copies of its last valid frame, as icefall does at the end
  of an unpadded sequence (icefall's batched run mixes padding frames into that group).

On an unpadded clip both are exactly icefall's computation.

icefall's training-time regularisers that act on gradients only (Balancer, Whiten, ScaleGrad, the limits on
``bypass_scale`` and on BiasNorm's ``log_scale``) are left out: the forward pass is the same without them.
Its schedules (``ScheduledFloat``) become constants: dropout after the feed-forward activation and on the
front end's output (icefall's final 0.1), on the positional encodings (0.15), and the per-clip feature masks
above ``encoder_unmasked_dim`` (12.5 %). Layer skipping, module skipping (``*_skip_rate``), constant
attention and the positional-score skip are not implemented.

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_layers import GradientCheckpointingLayer

__all__ = [
    "BiasNorm",
    "BypassModule",
    "Conv2dSubsampling",
    "ConvNeXt",
    "ConvolutionModule",
    "FeedforwardModule",
    "NonlinAttention",
    "RelPositionMultiheadAttentionWeights",
    "SelfAttention",
    "SharedAttention",
    "SimpleDownsample",
    "SimpleUpsample",
    "SwooshL",
    "SwooshR",
    "ZipformerEncoderLayer",
    "compact_rel_positional_encoding",
    "convert_num_channels",
    "downsampled_lengths",
    "full_dim_output",
    "padding_mask",
    "scaled_linear",
    "swoosh_l",
    "swoosh_r",
]

#: the score given to padding keys; exp(-1000 + score) is exactly 0 in every float type
MASKED_SCORE = -1000.0


# --------------------------------------------------------------------------------------------
# Activations, norm, initialisation scale
# --------------------------------------------------------------------------------------------


def swoosh_l(x: torch.Tensor) -> torch.Tensor:
    """SwooshL(x) = log(1 + exp(x - 4)) - 0.08 x - 0.035 (the paper's eq. 9)."""
    return F.softplus(x - 4.0) - 0.08 * x - 0.035


def swoosh_r(x: torch.Tensor) -> torch.Tensor:
    """SwooshR(x) = log(1 + exp(x - 1)) - 0.08 x - 0.313261687 (zero at x = 0)."""
    return F.softplus(x - 1.0) - 0.08 * x - 0.313261687


class SwooshL(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swoosh_l(x)


class SwooshR(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swoosh_r(x)


def scaled_linear(
    in_features: int, out_features: int, bias: bool = True, initial_scale: float = 1.0
) -> nn.Linear:
    """An ``nn.Linear`` that the model's ``_init_weights`` initialises at ``initial_scale`` times the default
    range (icefall's ``ScaledLinear``: weight ~ U(+-s/sqrt(fan_in)), bias ~ U(+-0.1 s))."""
    layer = nn.Linear(in_features, out_features, bias=bias)
    layer.initial_scale = initial_scale
    return layer


class BiasNorm(nn.Module):
    """icefall's LayerNorm replacement: ``x * rms(x - bias)^-1 * exp(log_scale)`` over the channels.

    The bias enters only the scale, never the output, and ``log_scale`` is one learned scalar: a channel kept
    large on purpose cannot defeat the normalisation as it can a LayerNorm's.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scales = (x - self.bias).pow(2).mean(dim=-1, keepdim=True).pow(-0.5) * self.log_scale.exp()
        return x * scales


class BypassModule(nn.Module):
    """Learned per-channel interpolation ``orig + (x - orig) * bypass_scale`` between a module's input and
    output.

    icefall also uses it for random layer skipping and keeps the scale in [0.2, 1] through the gradients;
    neither changes the forward pass, and neither is implemented here.
    """

    def __init__(self, num_channels: int):
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((num_channels,), 0.5))

    def forward(self, orig: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return orig + (x - orig) * self.bypass_scale


# --------------------------------------------------------------------------------------------
# Frame-rate changes and masks
# --------------------------------------------------------------------------------------------


def padding_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(batch, num_frames)`` bool, True on padding frames (at or past each clip's length)."""
    return torch.arange(num_frames, device=lengths.device)[None, :] >= lengths[:, None]


def downsampled_lengths(lengths: torch.Tensor, factor: int) -> torch.Tensor:
    """Valid frames after downsampling by ``factor``: a partial last group still makes a frame (ceil)."""
    return (lengths + factor - 1) // factor


class SimpleDownsample(nn.Module):
    """Downsampling by a learned softmax-weighted average of each group of ``downsample`` consecutive frames.

    ``forward(x, lengths)``: ``(batch, T, C)`` -> ``(batch, ceil(T / downsample), C)``. The frames past each
    clip's length are replaced by its last valid frame first, so its last (partial) group is padded as icefall
    pads an unpadded sequence, whatever the batch's padding holds.
    """

    def __init__(self, downsample: int):
        super().__init__()
        self.downsample = downsample
        self.bias = nn.Parameter(torch.zeros(downsample))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        batch, num_frames, channels = x.shape
        ds = self.downsample
        out_frames = (num_frames + ds - 1) // ds
        positions = torch.arange(out_frames * ds, device=x.device)
        last_valid = (lengths - 1).clamp(min=0)
        index = torch.minimum(positions[None, :], last_valid[:, None])  # (batch, out_frames * ds)
        x = torch.gather(x, 1, index[:, :, None].expand(batch, out_frames * ds, channels))
        weights = self.bias.softmax(dim=0).to(x.dtype)
        return (x.reshape(batch, out_frames, ds, channels) * weights[:, None]).sum(dim=2)


class SimpleUpsample(nn.Module):
    """Repeats every frame ``upsample`` times (no parameters, as icefall's)."""

    def __init__(self, upsample: int):
        super().__init__()
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(self.upsample, dim=1)


def convert_num_channels(x: torch.Tensor, num_channels: int) -> torch.Tensor:
    """Keep the first ``num_channels`` channels, or zero-pad up to them: how a stack takes its narrower or
    wider input."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    return F.pad(x, (0, num_channels - x.shape[-1]))


def full_dim_output(outputs: list[torch.Tensor], output_dim: int) -> torch.Tensor:
    """The encoder output from the stacks' outputs: each channel from the most recent stack that has it.
    Channels that no stack has produced yet are zeros (only when ``outputs`` is a prefix of the stacks)."""
    pieces = [outputs[-1]]
    current = outputs[-1].shape[-1]
    for output in reversed(outputs[:-1]):
        if output.shape[-1] > current:
            pieces.append(output[..., current:])
            current = output.shape[-1]
    return convert_num_channels(torch.cat(pieces, dim=-1), output_dim)


# --------------------------------------------------------------------------------------------
# Front end: Conv2dSubsampling with one ConvNeXt block
# --------------------------------------------------------------------------------------------


class ConvNeXt(nn.Module):
    """icefall's ConvNeXt block over ``(batch, channels, frames, freqs)``: depthwise k x k conv, 1x1 conv to
    ``hidden_ratio`` x channels, SwooshL, 1x1 conv back (initial scale 0.01), residual."""

    def __init__(self, channels: int, hidden_ratio: int = 3, kernel_size: int = 7):
        super().__init__()
        hidden = channels * hidden_ratio
        self.depthwise_conv = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.pointwise_conv2 = nn.Conv2d(hidden, channels, kernel_size=1)
        self.pointwise_conv2.initial_scale = 0.01

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        hidden = x if frame_mask is None else x * frame_mask[:, None, :, None].to(x.dtype)
        hidden = self.pointwise_conv2(swoosh_l(self.pointwise_conv1(self.depthwise_conv(hidden))))
        return x + hidden


class Conv2dSubsampling(nn.Module):
    """The front end: 100 -> 50 frames/s, ``num_mel_bins`` -> ``out_channels``.

    Three 3 x 3 convs with SwooshR (the second strides 2 in time and frequency, the third 2 in frequency), one
    `ConvNeXt` block, a linear projection of the flattened ``(channels, freqs)`` and a `BiasNorm`. An input of
    ``T`` frames gives ``(T - 7) // 2``; the valid output frames of a clip read only its valid input frames.
    """

    def __init__(
        self,
        num_mel_bins: int,
        out_channels: int,
        channels: tuple[int, int, int] = (8, 32, 128),
        dropout: float = 0.0,
    ):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=(0, 1))
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, stride=2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size=3, stride=(1, 2))
        self.convnext = ConvNeXt(c3)
        self.out_width = (((num_mel_bins - 1) // 2) - 1) // 2
        self.out = nn.Linear(self.out_width * c3, out_channels)
        self.out_norm = BiasNorm(out_channels)
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def output_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return ((lengths - 7) // 2).clamp(min=0)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = swoosh_r(self.conv1(x.unsqueeze(1)))
        x = swoosh_r(self.conv2(x))
        x = swoosh_r(self.conv3(x))
        lengths = self.output_lengths(lengths)
        x = self.convnext(x, ~padding_mask(lengths, x.shape[2]))
        batch, channels, frames, freqs = x.shape
        x = self.out(x.transpose(1, 2).reshape(batch, frames, channels * freqs))
        return self.dropout(self.out_norm(x)), lengths


# --------------------------------------------------------------------------------------------
# Relative positions and the shared attention weights
# --------------------------------------------------------------------------------------------


def compact_rel_positional_encoding(
    num_frames: int, dim: int, device=None, dtype=torch.float32, length_factor: float = 1.0
) -> torch.Tensor:
    """icefall's ``CompactRelPositionalEncoding``: ``(2 T - 1, dim)`` rows for offsets ``-(T - 1) .. T - 1``.

    Offsets are compressed logarithmically, mapped into (-pi/2, pi/2) by atan and Fourier-encoded there, so
    nearby offsets stay distinguishable and distant ones blur; the last channel is a constant 1 (a bias).
    """
    offsets = torch.arange(-(num_frames - 1), num_frames, device=device, dtype=torch.float32)[:, None]
    freqs = 1 + torch.arange(dim // 2, device=device, dtype=torch.float32)
    compression_length = dim**0.5
    compressed = (
        compression_length
        * offsets.sign()
        * ((offsets.abs() + compression_length).log() - math.log(compression_length))
    )
    length_scale = length_factor * dim / (2.0 * math.pi)
    angles = (compressed / length_scale).atan() * freqs
    encoding = torch.zeros(offsets.shape[0], dim, device=device, dtype=torch.float32)
    encoding[:, 0::2] = angles.cos()
    encoding[:, 1::2] = angles.sin()
    encoding[:, -1] = 1.0
    return encoding.to(dtype)


class SharedAttention:
    """One layer's attention weights, computed once and applied by its three consumers.

    Holds the queries, keys and the additive bias (relative-position scores, padding keys at -1000) of
    `RelPositionMultiheadAttentionWeights`, and with the eager implementation the softmax weights themselves.
    `apply` multiplies values by the weights: ``torch.matmul`` on the stored weights (eager), or
    ``scaled_dot_product_attention`` with the bias as its float mask (sdpa), which never stores the weights.
    Queries and keys carry the scale (icefall folds ``head_dim ** -0.5`` into the projection), so it is 1.
    """

    def __init__(self, query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor, implementation: str):
        self.query, self.key, self.bias = query, key, bias
        self.weights = None
        if implementation != "sdpa":
            self.weights = torch.matmul(query, key.transpose(-2, -1)).add(bias).softmax(dim=-1)

    def apply(self, values: torch.Tensor, first_head_only: bool = False) -> torch.Tensor:
        """``values`` ``(batch, heads, T, d)`` (one head with ``first_head_only``) -> same shape."""
        heads = slice(0, 1) if first_head_only else slice(None)
        if self.weights is not None:
            return torch.matmul(self.weights[:, heads], values)
        return F.scaled_dot_product_attention(
            self.query[:, heads], self.key[:, heads], values, attn_mask=self.bias[:, heads], scale=1.0
        )


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Multi-head attention scores with relative positions (Transformer-XL-like, icefall's variant).

    One projection gives per-head queries, keys and a small positional query ``p``; the score of query
    ``i`` and key ``j`` is ``q_i . k_j + p_i . P(j - i)`` with ``P`` the projected
    `compact_rel_positional_encoding`.
    """

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int, pos_head_dim: int):
        super().__init__()
        self.num_heads, self.query_head_dim, self.pos_head_dim = num_heads, query_head_dim, pos_head_dim
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = scaled_linear(embed_dim, in_proj_dim, initial_scale=query_head_dim**-0.25)
        self.linear_pos = scaled_linear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        key_padding_mask: torch.Tensor | None,
        implementation: str,
    ) -> SharedAttention:
        batch, num_frames, _ = x.shape
        heads, qd, pd = self.num_heads, self.query_head_dim, self.pos_head_dim
        proj = self.in_proj(x)
        # unflatten, not reshape, of these slices: a reshape's view-or-copy test on a slice compares sizes,
        # which `torch.export` would keep as a guard that refuses a batch of one clip.
        query = proj[..., : heads * qd].unflatten(-1, (heads, qd)).transpose(1, 2)
        key = proj[..., heads * qd : 2 * heads * qd].unflatten(-1, (heads, qd)).transpose(1, 2)
        pos_query = proj[..., 2 * heads * qd :].unflatten(-1, (heads, pd)).transpose(1, 2)
        # (heads, pd, 2T - 1): the positional keys of every offset -(T - 1) .. T - 1
        pos_keys = self.linear_pos(pos_emb).reshape(-1, heads, pd).permute(1, 2, 0)
        rel_scores = torch.matmul(pos_query, pos_keys).contiguous()  # (batch, heads, T, 2T - 1)
        # Row i, column j reads offset j - i, i.e. column (T - 1) - i + j of rel_scores: a strided view.
        s0, s1, s2, s3 = rel_scores.stride()
        bias = rel_scores.as_strided(
            (batch, heads, num_frames, num_frames),
            (s0, s1, s2 - s3, s3),
            storage_offset=rel_scores.storage_offset() + s3 * (num_frames - 1),
        )
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask[:, None, None, :], MASKED_SCORE)
        return SharedAttention(query, key, bias, implementation)


# --------------------------------------------------------------------------------------------
# The modules of a layer
# --------------------------------------------------------------------------------------------


class FeedforwardModule(nn.Module):
    """Linear, SwooshL, dropout, linear (initial scale 0.1)."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: float):
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = scaled_linear(feedforward_dim, embed_dim, initial_scale=0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(swoosh_l(self.in_proj(x))))


class NonlinAttention(nn.Module):
    """The paper's non-linear attention: ``out_proj(attend(x * tanh(s)) * y)`` with ``s, x, y`` three
    projections of the input, attended with the first head's weights only."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, 3 * hidden_channels)
        self.out_proj = scaled_linear(hidden_channels, channels, initial_scale=0.05)

    def forward(self, x: torch.Tensor, attention: SharedAttention) -> torch.Tensor:
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        x = (x * s.tanh()).unsqueeze(1)  # (batch, 1, T, hidden): one "head"
        x = attention.apply(x, first_head_only=True).squeeze(1)
        return self.out_proj(x * y)


class SelfAttention(nn.Module):
    """Values and output projection of an attention whose weights come from elsewhere (`SharedAttention`)."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim)
        self.out_proj = scaled_linear(num_heads * value_head_dim, embed_dim, initial_scale=0.05)

    def forward(self, x: torch.Tensor, attention: SharedAttention) -> torch.Tensor:
        batch, num_frames, _ = x.shape
        values = self.in_proj(x).reshape(batch, num_frames, self.num_heads, -1).transpose(1, 2)
        x = attention.apply(values).transpose(1, 2).reshape(batch, num_frames, -1)
        return self.out_proj(x)


class ConvolutionModule(nn.Module):
    """GLU, depthwise conv over time (padding frames zeroed first), SwooshR, linear (initial scale 0.05)."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.out_proj = scaled_linear(channels, channels, initial_scale=0.05)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        x, gate = self.in_proj(x).chunk(2, dim=-1)
        x = x * gate.sigmoid()
        if key_padding_mask is not None:
            x = x.masked_fill(key_padding_mask[..., None], 0.0)
        # contiguous: a Linear on the transposed view folds its batch only after a size test, which
        # `torch.export` would keep as a guard that refuses a batch of one clip (the values are the same).
        x = self.depthwise_conv(x.transpose(1, 2)).transpose(1, 2).contiguous()
        return self.out_proj(swoosh_r(x))


class ZipformerEncoderLayer(GradientCheckpointingLayer):
    """One Zipformer block (the paper's Fig. 3, icefall's ``Zipformer2EncoderLayer``).

    ff1, non-linear attention, self-attention 1, conv 1, ff2, a mid-layer bypass to the block input,
    self-attention 2, conv 2, ff3, BiasNorm and a final bypass. Both self-attentions and the non-linear
    attention reuse one set of attention weights. Feed-forward widths are 3/4, 1 and 5/4 of
    ``feedforward_dim``.
    """

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        value_head_dim: int,
        feedforward_dim: int,
        cnn_module_kernel: int,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.bypass = BypassModule(embed_dim)
        self.bypass_mid = BypassModule(embed_dim)
        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim, num_heads, query_head_dim, pos_head_dim
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel)
        self.norm = BiasNorm(embed_dim)

    def forward(
        self,
        hidden_states: torch.Tensor,
        pos_emb: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_implementation: str = "sdpa",
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``attentions``: a list that receives the layer's attention weights ``(batch, heads, T, T)``
        (eager attention only: sdpa never forms them)."""
        orig = hidden_states
        attention = self.self_attn_weights(hidden_states, pos_emb, key_padding_mask, attn_implementation)
        if attentions is not None:
            attentions.append(attention.weights)
        x = hidden_states + self.feed_forward1(hidden_states)
        x = x + self.nonlin_attention(x, attention)
        x = x + self.self_attn1(x, attention)
        x = x + self.conv_module1(x, key_padding_mask)
        x = x + self.feed_forward2(x)
        x = self.bypass_mid(orig, x)
        x = x + self.self_attn2(x, attention)
        x = x + self.conv_module2(x, key_padding_mask)
        x = x + self.feed_forward3(x)
        return self.bypass(orig, self.norm(x))
