"""Building blocks shared by the spectrogram transformers of hf_audiorep.

One attention (with an optional output gate, BAT's gated attention), one block per normalisation
style, a view of the config for narrower decoder blocks, one patch embedding, the MAE 2-D sin-cos
positions, the patch masks used for pre-training (MAE random masking) and fine-tuning patch-out
(AudioMAE's 2-D columns and rows; CAT's random tokens), and what every encoder does around its
blocks: input checks and patch-grid geometry (`SpectrogramModelMixin`), dropping the masked
patches (`visible_indices`, `gather_tokens`), the ``[CLS, patches]`` attention mask, pooling
(`pool_tokens`: ``"cls"`` or a padding-aware ``"mean"``) and the classification head's output.
One idea has one name across the models: ``mask`` is a bool ``(batch, num_patches)`` tensor, True
on the patches an encoder does not see; ``patch_out`` draws a fine-tuning one; ``pooling`` is
``"cls"`` or ``"mean"``. Every model of the library builds on these, so their module and
parameter names follow timm's ``vision_transformer`` (``norm1``, ``attn.qkv``, ``attn.proj``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``patch_embed.proj``): converting a timm or fairseq checkpoint
is then a key rename, never a reshape.

The blocks read these fields from the model config: ``hidden_size``, ``num_attention_heads``,
``mlp_ratio``, ``qkv_bias``, ``layer_norm_eps``, ``hidden_act``, ``hidden_dropout_prob`` and
``attention_probs_dropout_prob``. The attention keeps a reference to the config so that
``model.set_attn_implementation(...)`` takes effect at run time.

Spectrograms are ``(batch, frames, mel_bins)`` and are treated as an image of height ``frames``
and width ``mel_bins`` (AudioMAE's layout). Patches are numbered row-major over the
``(time, frequency)`` grid: patch ``t * grid_f + f``.

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from ._heads import CosineClassifier

__all__ = [
    "ATTENTION_GATES",
    "Attention",
    "ChannelLayerNorm",
    "ConfigView",
    "DropPath",
    "LayerDecayMixin",
    "Mlp",
    "PatchEmbed",
    "PostLNBlock",
    "PreLNBlock",
    "SpectrogramModelMixin",
    "check_spectrogram_inputs",
    "classification_output",
    "classifier_head",
    "drop_path",
    "drop_path_rates",
    "eager_attention_forward",
    "frames_to_patch_mask",
    "gather_tokens",
    "geometry_mismatches",
    "get_2d_sincos_pos_embed",
    "init_patch_projection_",
    "masked_mean",
    "masking_from_noise",
    "pad_to_patches",
    "patch_grid_shape",
    "patch_out_mask_2d",
    "pool_tokens",
    "random_masking",
    "sincos_pos_embed_like",
    "spectrogram_as_image",
    "token_attention_mask",
    "visible_indices",
    "without_stochastic_depth",
]


# --------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------

#: output gates of `Attention`: none, one per head, one per channel
ATTENTION_GATES = ("none", "headwise", "elementwise")


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; the reference the fused kernels are tested against.

    ``query``/``key``/``value`` are ``(batch, heads, tokens, head_dim)``; ``attention_mask`` is
    the additive float mask that ``create_bidirectional_mask`` builds for the eager backend.
    Returns ``(batch, tokens, heads, head_dim)`` and the attention probabilities.
    """
    scores = torch.matmul(query, key.transpose(-2, -1)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    # Softmax in float32: with bf16 scores the normalisation of 500+ keys loses precision.
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()
    return output, probs


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with one fused ``qkv`` projection (timm layout).

    The kernel is looked up per call through ``ALL_ATTENTION_FUNCTIONS`` from
    ``config._attn_implementation`` ("sdpa" by default, "eager", "flash_attention_2",
    "flex_attention", or any registered ``AttentionInterface``), so a model can switch kernels
    after it is built. Key padding is expressed by ``attention_mask`` in the format the chosen
    backend expects (build it with ``transformers.masking_utils.create_bidirectional_mask``).

    ``gate`` adds an output gate, the "G1" position of Qiu et al. (2025, "Gated Attention for Large Language
    Models"): the attention output is multiplied by ``sigmoid(x W_g + b_g)`` before the output projection,
    with ``x`` this module's input (the normalised block input in a pre-LN block). ``"headwise"`` gives one
    gate per head and token (``W_g``: hidden -> heads), ``"elementwise"`` one per channel (hidden -> hidden);
    ``"none"`` is the plain attention, with exactly its parameters and numerics. A gate that can close lets a
    head attend to nothing, where softmax must put its weight somewhere, and adds a non-linearity between the
    value and output projections.
    """

    def __init__(self, config, gate: str = "none"):
        super().__init__()
        if gate not in ATTENTION_GATES:
            raise ValueError(f"gate must be one of {ATTENTION_GATES}, got {gate!r}")
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        # Read by the SDPA / flash integrations: an encoder never uses a causal mask.
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        # No module at all without a gate, so ungated checkpoints (timm, AudioMAE, EAT, CAT) keep their keys.
        self.gate = gate
        self.gate_proj = None
        if gate != "none":
            gate_width = self.num_heads if gate == "headwise" else config.hidden_size
            self.gate_proj = nn.Linear(config.hidden_size, gate_width)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, num_tokens, _ = hidden_states.shape
        # (B, N, 3 * D) -> 3 x (B, heads, N, head_dim), in the channel order of timm's fused qkv.
        qkv = self.qkv(hidden_states).view(batch_size, num_tokens, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        if self.gate_proj is not None:
            # (B, N, heads, 1) head-wise or (B, N, heads, head_dim) element-wise, from the input of q, k, v.
            gate = torch.sigmoid(self.gate_proj(hidden_states)).view(
                batch_size, num_tokens, self.num_heads, -1
            )
            attn_output = attn_output * gate
        attn_output = attn_output.reshape(batch_size, num_tokens, -1)
        return self.proj_drop(self.proj(attn_output)), attn_weights


# --------------------------------------------------------------------------------------------
# Feed-forward, stochastic depth, blocks
# --------------------------------------------------------------------------------------------


class Mlp(nn.Module):
    """Two-layer feed-forward network ``fc2(drop(act(fc1(x))))`` with width ``hidden * mlp_ratio``."""

    def __init__(self, config):
        super().__init__()
        intermediate_size = int(config.hidden_size * config.mlp_ratio)
        self.fc1 = nn.Linear(config.hidden_size, intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.drop(self.act(self.fc1(hidden_states)))
        return self.drop(self.fc2(hidden_states))


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for whole samples with probability ``drop_prob``.

    Survivors are scaled by ``1 / (1 - drop_prob)`` so the expected branch output is unchanged and
    no rescaling is needed at evaluation time.
    """
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1.0 - drop_prob
    # One draw per sample, broadcast over tokens and channels.
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
    keep = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
    # Scale the (batch, 1, 1) draw, not the activations: one full-size multiply instead of two.
    return hidden_states * keep.div_(keep_prob)


class DropPath(nn.Module):
    """Module form of :func:`drop_path` (per-sample stochastic depth)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Per-block stochastic depth rising linearly from 0 at the first block to ``max_rate`` at the last, as
    in timm (plain Python floats: no tensor is created, so models build on the meta device)."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


def without_stochastic_depth(module: nn.Module) -> nn.Module:
    """``module`` with every `DropPath` switched off. MAE and data2vec pre-train without stochastic depth,
    which is a fine-tuning setting: the config keeps its rate for the classifier built from the checkpoint."""
    for submodule in module.modules():
        if isinstance(submodule, DropPath):
            submodule.drop_prob = 0.0
    return module


class PreLNBlock(GradientCheckpointingLayer):
    """Pre-LayerNorm transformer block of timm's ViT (AudioMAE, BEATs-style encoders).

    ``x = x + drop_path(attn(norm1(x)))``; ``x = x + drop_path(mlp(norm2(x)))``.
    The residual stream is never normalised inside the block, so the encoder needs a final norm.
    ``gate`` is the attention's output gate (see `Attention`), computed from ``norm1(x)``.
    """

    def __init__(self, config, drop_path: float = 0.0, gate: str = "none"):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config, gate=gate)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.attn(self.norm1(hidden_states), attention_mask, **kwargs)
        hidden_states = hidden_states + self.drop_path(attn_output)
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


class PostLNBlock(GradientCheckpointingLayer):
    """Post-LayerNorm block of data2vec 2.0 / EAT (``AltBlock`` with ``layer_norm_first=False``).

    ``x = norm1(x + drop_path(attn(x)))``; ``x = norm2(x + drop_path(post_mlp_dropout(mlp(x))))``.
    Each sub-layer's output is normalised after the residual sum, so the block output is already
    normalised and the encoder has no final norm. Teachers that regress the FFN output (data2vec's
    ``ffn_targets``) can record ``mlp`` with an ``OutputRecorder`` instead of a second return value.
    """

    def __init__(self, config, drop_path: float = 0.0, post_mlp_dropout: float = 0.0):
        super().__init__()
        self.attn = Attention(config)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.post_mlp_dropout = nn.Dropout(post_mlp_dropout)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.drop_path = DropPath(drop_path)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        attn_output, _ = self.attn(hidden_states, attention_mask, **kwargs)
        hidden_states = self.norm1(hidden_states + self.drop_path(attn_output))
        ffn_output = self.post_mlp_dropout(self.mlp(hidden_states))
        return self.norm2(hidden_states + self.drop_path(ffn_output))


class ConfigView:
    """A model config seen with a few fields replaced: the blocks of a decoder narrower than its encoder.

    The shared blocks read their sizes from ``hidden_size`` and ``num_attention_heads``; every other field
    (activation, eps, dropout, ``_attn_implementation``) is read live from the model config, so
    ``model.set_attn_implementation(...)`` reaches a decoder's blocks as well as the encoder's.
    """

    def __init__(self, config, **fields):
        self._config = config
        self.__dict__.update(fields)

    def __getattr__(self, name: str):
        if name == "_config":  # not set yet (copy / unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self._config, name)


# --------------------------------------------------------------------------------------------
# Patches and positions
# --------------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    """Non-overlapping square patches of a spectrogram, projected to ``hidden_size`` by a conv.

    Input ``(batch, frames, mel_bins)`` (one channel) or ``(batch, channels, frames, mel_bins)``;
    output ``(batch, grid_t * grid_f, hidden_size)`` with patches in row-major ``(t, f)`` order.
    A (1, 1024, 128) AudioSet clip with 16x16 patches gives a 64 x 8 grid of 512 patches. Both
    sides must already be multiples of ``patch_size``: a strided conv would silently drop the rest.
    """

    def __init__(self, patch_size: int, hidden_size: int, num_channels: int = 1):
        super().__init__()
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.proj = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def grid_shape(self, num_frames: int, num_bins: int) -> tuple[int, int]:
        """``(grid_t, grid_f)`` for a ``num_frames x num_bins`` spectrogram."""
        return num_frames // self.patch_size, num_bins // self.patch_size

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        spectrogram = spectrogram_as_image(spectrogram, self.num_channels, self.patch_size, "PatchEmbed")
        return self.proj(spectrogram).flatten(2).transpose(1, 2)


def spectrogram_as_image(
    spectrogram: torch.Tensor, num_channels: int, patch_size: int, who: str
) -> torch.Tensor:
    """A spectrogram as the ``(batch, channels, frames, bins)`` image a patchifying conv takes, checked to
    tile into whole patches (a strided conv would silently drop the rest); ``who`` names the caller in errors.
    """
    if spectrogram.ndim == 3:
        spectrogram = spectrogram.unsqueeze(1)
    if spectrogram.ndim != 4 or spectrogram.shape[1] != num_channels:
        raise ValueError(
            f"{who} expects (batch, frames, bins) or (batch, {num_channels}, frames, bins), "
            f"got shape {tuple(spectrogram.shape)}"
        )
    height, width = spectrogram.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"spectrogram size {height}x{width} is not a multiple of patch_size={patch_size}")
    return spectrogram


def patch_grid_shape(num_frames: int, num_mel_bins: int, patch_size: int) -> tuple[int, int]:
    """``(grid_t, grid_f)`` of a ``num_frames``-frame input once its time axis is padded to whole patches."""
    # A ceiling without negative operands: the ONNX exporter rounds a negative floor division toward zero.
    return (num_frames + patch_size - 1) // patch_size, num_mel_bins // patch_size


def pad_to_patches(input_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zero-pad the time axis (``-2``) to a multiple of ``patch_size``; the partial last patch is kept, since
    it holds real frames (`frames_to_patch_mask` counts it as real).

    Written for `torch.export` and ONNX: a symbolic length (a ``SymInt``, not an ``int``) is padded by its
    amount even when that is zero (a branch on it would fix the example's case in the graph), and the modulo
    has no negative operand (the ONNX exporter translates one with C's truncation, not Python's floor)."""
    pad = (patch_size - input_values.shape[-2] % patch_size) % patch_size
    if isinstance(pad, int) and pad == 0:
        return input_values
    return nn.functional.pad(input_values, (0, 0, 0, pad))


def init_patch_projection_(conv: nn.Conv2d) -> None:
    """MAE's initialisation of a patchifying conv: xavier-uniform as the Linear it is, over
    ``(out, in * k * k)``, and a zero bias.

    The bound is computed here because xavier on a reshaped view would lose the "already loaded" flag that
    the guarded ``transformers.initialization`` functions keep on the parameter.
    """
    fan_out, fan_in = conv.weight.shape[0], conv.weight[0].numel()
    bound = (6.0 / (fan_in + fan_out)) ** 0.5
    init.uniform_(conv.weight, -bound, bound)
    if conv.bias is not None:
        init.zeros_(conv.bias)


def get_2d_sincos_pos_embed(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sine-cosine positions of MAE / AudioMAE, as a float32 ``(grid_h * grid_w [+1], dim)``.

    The first ``dim / 2`` channels encode the column (width, i.e. frequency) index and the last
    ``dim / 2`` the row (height, i.e. time) index, in MAE's order; each half is
    ``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 10000 ** (-k / (dim / 4))``. Rows are flattened
    row-major, so the first ``n * grid_w`` rows equal the embedding of an ``n``-row grid: shorter
    clips take a prefix. With ``cls_token`` an all-zero row is prepended for the CLS position.
    """
    if dim <= 0 or dim % 4:
        raise ValueError(f"2-D sin-cos positions need a dimension divisible by 4, got {dim}")
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"grid sizes must be positive, got {grid_h}x{grid_w}")
    # float64 like MAE's numpy code, so float32 checkpoints match bit for bit after the final cast.
    quarter = dim // 4
    inv_freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij"
    )

    def encode(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * inv_freq
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    embedding = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        embedding = torch.cat([embedding.new_zeros(1, dim), embedding], dim=0)
    return embedding.float()


def sincos_pos_embed_like(buffer: torch.Tensor, grid_size: tuple[int, int], cls_token: bool) -> torch.Tensor:
    """The fixed positions of a ``grid_size`` patch grid (with a zero CLS row first when ``cls_token``) for a
    ``(1, positions, dim)`` position buffer, on its device and in its dtype."""
    embedding = get_2d_sincos_pos_embed(buffer.shape[-1], *grid_size, cls_token=cls_token)
    return embedding.unsqueeze(0).to(device=buffer.device, dtype=buffer.dtype)


# --------------------------------------------------------------------------------------------
# Patch masks
# --------------------------------------------------------------------------------------------


def _uniform_noise(shape: tuple[int, ...], generator: torch.Generator | None, device) -> torch.Tensor:
    """Uniform noise drawn on the generator's device (where its state lives), then moved."""
    source = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source).to(device)


def random_masking(
    batch: int,
    num_patches: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking of ``int(num_patches * ratio)`` patches.

    Returns ``(ids_keep, mask, ids_restore)``:

    - ``ids_keep`` ``(batch, len_keep)`` long: indices of the visible patches (in shuffled order,
      as MAE; gather the encoder input with it);
    - ``mask`` ``(batch, num_patches)`` bool, True where a patch is masked (the loss positions);
    - ``ids_restore`` ``(batch, num_patches)`` long: gathering ``cat([visible, mask_tokens], 1)``
      with it puts every token back at its patch position (the decoder input).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    if batch <= 0 or num_patches <= 0:
        raise ValueError(f"batch and num_patches must be positive, got {batch} and {num_patches}")
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    return masking_from_noise(_uniform_noise((batch, num_patches), generator, device), ratio)


def masking_from_noise(noise: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`random_masking` with given uniform noise ``(batch, num_patches)``: per row the patches with the
    lowest noise stay visible. The same noise gives the same masks whatever the batch, which makes batched
    and one-by-one runs comparable (``ViTMAEForPreTraining``'s ``noise``)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    len_keep = max(1, int(noise.shape[1] * (1.0 - ratio)))
    # argsort of the permutation inverts it.
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones_like(noise, dtype=torch.bool)
    mask[:, :len_keep] = False
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def patch_out_mask_2d(
    batch: int,
    grid_t: int,
    grid_f: int,
    mask_t_prob: float,
    mask_f_prob: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AudioMAE's fine-tuning patch-out (``random_masking_2d``): drop whole time columns and
    frequency rows of the patch grid.

    Each clip drops its own random ``grid_t - keep_t`` time columns and ``grid_f - keep_f``
    frequency rows, with ``keep_t = int(grid_t * (1 - mask_t_prob))`` (at least 1; same for f),
    so every clip keeps the same number of patches and the batch stays rectangular.

    Returns ``(ids_keep, mask)``: ``ids_keep`` ``(batch, keep_t * keep_f)`` long, indices of the
    kept patches in the row-major ``(t, f)`` grid, ascending (the order does not change the
    encoder's output, which is permutation-equivariant once positions are added); ``mask``
    ``(batch, grid_t * grid_f)`` bool, True where a patch is dropped.
    """
    for name, prob in (("mask_t_prob", mask_t_prob), ("mask_f_prob", mask_f_prob)):
        if not 0.0 <= prob < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {prob}")
    if batch <= 0 or grid_t <= 0 or grid_f <= 0:
        raise ValueError(f"batch and grid sizes must be positive, got {batch}, {grid_t}x{grid_f}")
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    keep_t = max(1, int(grid_t * (1.0 - mask_t_prob)))
    keep_f = max(1, int(grid_f * (1.0 - mask_f_prob)))
    kept_t = torch.argsort(_uniform_noise((batch, grid_t), generator, device), dim=1)[:, :keep_t]
    kept_f = torch.argsort(_uniform_noise((batch, grid_f), generator, device), dim=1)[:, :keep_f]
    kept_t, kept_f = kept_t.sort(dim=1).values, kept_f.sort(dim=1).values
    # Outer "product" of the kept columns and rows, as flat row-major indices.
    ids_keep = (kept_t[:, :, None] * grid_f + kept_f[:, None, :]).reshape(batch, keep_t * keep_f)
    mask = torch.ones(batch, grid_t * grid_f, dtype=torch.bool, device=device)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask


def frames_to_patch_mask(attention_mask: torch.Tensor, patch_size: int, grid_f: int) -> torch.Tensor:
    """Frame-level ``attention_mask`` ``(batch, frames)`` -> patch-level mask ``(batch, grid_t * grid_f)``.

    1 marks a real patch. A patch is padding only when ALL its frames are padding: a patch that
    straddles the end of a clip still carries signal. Frames beyond a multiple of ``patch_size``
    count as padding (the model zero-pads the spectrogram the same way). Dtype is long, as
    transformers' 2-D attention masks.
    """
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be (batch, frames), got shape {tuple(attention_mask.shape)}")
    batch, num_frames = attention_mask.shape
    grid_t = (num_frames + patch_size - 1) // patch_size
    frames = torch.zeros(batch, grid_t * patch_size, dtype=torch.bool, device=attention_mask.device)
    frames[:, :num_frames] = attention_mask.bool()
    real_columns = frames.view(batch, grid_t, patch_size).any(dim=-1)
    return real_columns[:, :, None].expand(batch, grid_t, grid_f).reshape(batch, grid_t * grid_f).long()


def visible_indices(mask: torch.Tensor, batch: int, num_patches: int) -> torch.Tensor:
    """``(batch, num_visible)`` ascending indices of the patches a bool ``mask`` (True = hidden) leaves
    visible; every row must leave as many (the batch stays rectangular)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a bool tensor, True on masked patches; got "
            f"{mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__}"
        )
    if tuple(mask.shape) != (batch, num_patches):
        raise ValueError(
            f"mask must be (batch, num_patches) = {(batch, num_patches)}, got {tuple(mask.shape)}"
        )
    kept = (~mask).sum(dim=1)
    if bool((kept != kept[0]).any()):
        raise ValueError(
            f"every row of mask must leave the same number of patches visible (the batch stays rectangular), "
            f"got {sorted(set(kept.tolist()))}; compute_block_mask_2d and patch_out_mask_2d guarantee it"
        )
    return (~mask).nonzero()[:, 1].view(batch, int(kept[0]))


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``tokens[b, indices[b]]`` for every row ``b``: ``(batch, N[, dim])`` -> ``(batch, K[, dim])``."""
    if tokens.ndim == 3:
        indices = indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return torch.gather(tokens, 1, indices)


def token_attention_mask(config, hidden_states: torch.Tensor, patch_mask: torch.Tensor | None):
    """The attention mask, in the format of ``config``'s attention backend, for ``[CLS, patches]`` tokens
    whose patches are real where ``patch_mask`` ``(batch, patches)`` is 1; the CLS token always attends."""
    token_mask = None
    if patch_mask is not None:
        token_mask = torch.cat([patch_mask.new_ones(patch_mask.shape[0], 1), patch_mask], dim=1)
    return create_bidirectional_mask(config=config, inputs_embeds=hidden_states, attention_mask=token_mask)


def masked_mean(
    values: torch.Tensor, weights: torch.Tensor | None = None, dim: int | None = None
) -> torch.Tensor:
    """Mean of ``values`` over ``dim`` (all elements when None) where the 0/1 ``weights`` are 1.

    ``weights`` has the leading dimensions of ``values`` and is broadcast over the rest (with ``dim=None`` it
    must have the shape of ``values``). An empty selection (all padding, nothing masked) gives 0, not NaN.
    """
    if weights is None:
        return values.mean() if dim is None else values.mean(dim=dim)
    if dim is None and weights.shape != values.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} must have the shape of values {tuple(values.shape)}"
        )
    weights = weights.to(values.dtype)
    weights = weights.reshape(*weights.shape, *(1,) * (values.ndim - weights.ndim))
    if dim is None:
        return (values * weights).sum() / weights.sum().clamp(min=1.0)
    return (values * weights).sum(dim=dim) / weights.sum(dim=dim).clamp(min=1.0)


def pool_tokens(sequence_output: torch.Tensor, patch_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """``[CLS, patches]`` ``(batch, 1 + N, hidden)`` -> ``(batch, hidden)``: the CLS token (``"cls"``) or the
    mean of the patches that are 1 in ``patch_mask`` (``"mean"``; all of them when it is None)."""
    if pooling == "cls":
        return sequence_output[:, 0]
    if pooling != "mean":
        raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    return masked_mean(sequence_output[:, 1:], patch_mask, dim=1)


# --------------------------------------------------------------------------------------------
# Classification heads
# --------------------------------------------------------------------------------------------


def classifier_head(config) -> nn.Module:
    """``Linear(hidden_size, num_labels)``, or with ``config.classifier == "cosine"`` ContrastASC's
    `CosineClassifier` at ``config.cosine_scale``; with ``num_labels=0`` the identity, so the "logits" are the
    pooled embedding."""
    if config.num_labels <= 0:
        return nn.Identity()
    if config.classifier == "cosine":
        return CosineClassifier(config.hidden_size, config.num_labels, config.cosine_scale)
    return nn.Linear(config.hidden_size, config.num_labels)


def init_cosine_classifier(module: CosineClassifier) -> None:
    """`CosineClassifier.reset_parameters` through transformers' guarded init, for a family's
    ``_init_weights``: a head loaded from a checkpoint is left as loaded, a new one gets random directions."""
    init.kaiming_uniform_(module.weight, a=math.sqrt(5))


def classification_output(
    model, logits: torch.Tensor, labels: torch.Tensor | None, encoder_outputs, **kwargs
) -> SequenceClassifierOutput:
    """A head's output: ``logits``, the loss of ``model.config.problem_type`` when ``labels`` are given, and
    the encoder's hidden states and attentions."""
    loss = None
    if labels is not None:
        loss = model.loss_function(labels, logits, model.config, **kwargs)
    return SequenceClassifierOutput(
        loss=loss,
        logits=logits,
        hidden_states=encoder_outputs.hidden_states,
        attentions=encoder_outputs.attentions,
    )


# --------------------------------------------------------------------------------------------
# Conv-net helpers and input checks
# --------------------------------------------------------------------------------------------


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW feature map (per time-frequency position).

    ConvNeXt / ConvMAE normalise conv features this way. It subclasses ``nn.LayerNorm``, so its
    parameters are ``weight`` / ``bias`` exactly as a LayerNorm applied to the permuted map, and the
    generic LayerNorm initialisation applies.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.ndim != 4:
            raise ValueError(
                f"ChannelLayerNorm expects (batch, channels, H, W), got {tuple(hidden_states.shape)}"
            )
        return super().forward(hidden_states.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def check_spectrogram_inputs(
    input_values,
    attention_mask,
    num_mel_bins: int,
    max_length: int,
    num_channels: int = 1,
) -> None:
    """Raise a clear TypeError / ValueError for inputs a spectrogram encoder cannot take.

    ``input_values`` must be a tensor ``(batch, frames, num_mel_bins)`` (one channel) or
    ``(batch, channels, frames, num_mel_bins)`` with at most ``max_length`` frames;
    ``attention_mask``, when given, ``(batch, frames)``.
    """
    if not isinstance(input_values, torch.Tensor):
        raise TypeError(f"input_values must be a torch.Tensor, got {type(input_values).__name__}")
    if not input_values.is_floating_point():
        raise TypeError(f"input_values must be a floating-point spectrogram, got dtype {input_values.dtype}")
    single_channel = num_channels == 1
    expected = "(batch, frames, num_mel_bins)"
    if not single_channel:
        expected = "(batch, channels, frames, num_mel_bins)"
    if input_values.ndim != (3 if single_channel else 4) or (
        not single_channel and input_values.shape[1] != num_channels
    ):
        raise ValueError(f"input_values must be {expected}, got shape {tuple(input_values.shape)}")
    if input_values.shape[0] == 0 or input_values.shape[-2] == 0:
        raise ValueError(f"input_values is empty: shape {tuple(input_values.shape)}")
    num_frames, num_bins = input_values.shape[-2:]
    if num_bins != num_mel_bins:
        raise ValueError(f"input_values has {num_bins} mel bins but config.num_mel_bins is {num_mel_bins}")
    if num_frames > max_length:
        raise ValueError(
            f"input_values has {num_frames} frames, more than config.max_length={max_length}; "
            "crop the clip or build the model with a larger max_length"
        )
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != (input_values.shape[0], num_frames):
            raise ValueError(
                f"attention_mask must be (batch, frames) = {(input_values.shape[0], num_frames)}, "
                f"got {tuple(attention_mask.shape)}"
            )


class SpectrogramModelMixin:
    """Input checks and patch-grid geometry of a ``PreTrainedModel`` over spectrogram patches; reads
    ``num_mel_bins``, ``max_length``, ``num_channels`` and ``patch_size`` from its config."""

    def _check_inputs(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        config = self.config
        check_spectrogram_inputs(
            input_values, attention_mask, config.num_mel_bins, config.max_length, config.num_channels
        )

    def grid_shape(self, num_frames: int) -> tuple[int, int]:
        """``(grid_t, grid_f)`` of a ``num_frames``-frame input (after padding to whole patches)."""
        return patch_grid_shape(num_frames, self.config.num_mel_bins, self.config.patch_size)


# --------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay
# --------------------------------------------------------------------------------------------

_BLOCK_PARAM = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


class LayerDecayMixin:
    """Layer ids of a ViT-style ``PreTrainedModel`` for layer-wise lr decay (BEiT / MAE ``lr_decay``).

    A parameter gets 0 when its name (without the ``base_model_prefix``) starts with one of
    ``embedding_param_prefixes`` (what sits below the first block), ``i + 1`` inside ``blocks.i``, and
    ``num_hidden_layers + 1`` otherwise (final norms, heads, decoders).
    """

    embedding_param_prefixes: tuple[str, ...] = ()

    def get_layer_id(self, param_name: str) -> int:
        name = param_name.removeprefix(f"{self.base_model_prefix}.")
        if name.startswith(self.embedding_param_prefixes):
            return 0
        match = _BLOCK_PARAM.search(name)
        if match:
            return int(match.group(1)) + 1
        return self.config.num_hidden_layers + 1

    def layer_ids(self) -> dict[str, int]:
        """``{parameter name: layer id}`` for every parameter, see `get_layer_id`."""
        return {name: self.get_layer_id(name) for name, _ in self.named_parameters()}

    def freeze_feature_encoder(self) -> None:
        """Stop training what sits below the first block (the parameters of layer id 0: the patch projection
        or convolutional stem, and the CLS token and positional parameters where the family has them).

        transformers' audio-classification example calls it unless run with ``--freeze_feature_encoder
        False`` (there it freezes wav2vec2's convolutional waveform encoder); the library's own recipes never
        do.
        """
        for name, param in self.named_parameters():
            if self.get_layer_id(name) == 0:
                param.requires_grad = False

    @property
    def num_layer_ids(self) -> int:
        """Number of distinct layer ids (``num_hidden_layers + 2``)."""
        return self.config.num_hidden_layers + 2


def geometry_mismatches(source, target, fields) -> list[str]:
    """``"<field> <checkpoint's> (checkpoint) != <model's> (model)"`` for every field of ``fields`` where the
    two configs differ: weights copied across such a difference would be silently wrong."""
    return [
        f"{field} {getattr(source, field)} (checkpoint) != {getattr(target, field)} (model)"
        for field in fields
        if getattr(source, field) != getattr(target, field)
    ]
