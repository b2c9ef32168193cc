"""Bootstrap pre-training (data2vec 2.0 / EAT) and the model plumbing CAT and BAT share.

CAT (`modeling_cat`) and BAT (`modeling_bat`) are two ViTs over spectrogram patches pre-trained the same way:

- the student encodes ``clone_batch`` copies of each clip, each under its own inverse block mask
  (`compute_block_mask_2d`), seeing only ~20 % of the patches;
- a decoder fills in the hidden patches and regresses the EMA teacher's targets (`make_teacher_targets`: the
  instance-normalised average of the teacher's top FFN outputs, layer-normalised). The decoder is EAT's CNN
  (`BootstrapCNNDecoder`) or pre-LN transformer blocks (`BootstrapTransformerDecoder`), by
  ``config.decoder_type``;
- the student's CLS is pulled toward the mean target (utterance-level loss) and, through a linear projector,
  optionally toward a frozen encoder's clip embedding (CAT's representation regularization, RR).

What differs between the two families is the encoder (CAT's conv stem and post-LN blocks, BAT's gated pre-LN
blocks); everything around it is here, once: the masks and targets, both decoders, the output types, the
weight initialisation, the encoder's token preparation (`BootstrapEncoderMixin`), the classification
head (`BootstrapClassifierMixin`) and the pre-training forward and losses (`BootstrapPreTrainingMixin`). The
teacher is not part of any model: it is an EMA copy of the encoder owned by the training step
(`hf_audiorep.objectives.bootstrap`), which passes its targets in, so the forward stays a pure function of
its inputs.

Only torch and transformers are imported here, so the file ships as Hub remote code with either family.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from ._heads import CosineClassifier
from ._layers import (
    Attention,
    ChannelLayerNorm,
    ConfigView,
    LayerDecayMixin,
    Mlp,
    PreLNBlock,
    SpectrogramModelMixin,
    _uniform_noise,
    classification_output,
    classifier_head,
    frames_to_patch_mask,
    gather_tokens,
    init_cosine_classifier,
    init_patch_projection_,
    masked_mean,
    pad_to_patches,
    pool_tokens,
    random_masking,
    sincos_pos_embed_like,
    token_attention_mask,
    visible_indices,
)

__all__ = [
    "BootstrapCNNDecoder",
    "BootstrapClassifierMixin",
    "BootstrapEncoderMixin",
    "BootstrapForPreTrainingOutput",
    "BootstrapModelOutput",
    "BootstrapPreTrainedModel",
    "BootstrapPreTrainingMixin",
    "BootstrapTransformerDecoder",
    "build_decoder",
    "compute_block_mask_2d",
    "make_teacher_targets",
    "recorded_outputs",
]

# Std of the noise that stands in for hidden patches at the CNN decoder input (data2vec's mask_noise_std).
MASK_NOISE_STD = 0.01
# EAT builds its CNN decoder's channel LayerNorms with torch's default epsilon (the ViT blocks use 1e-6).
_CNN_DECODER_NORM_EPS = 1e-5


# --------------------------------------------------------------------------------------------
# Masking and targets
# --------------------------------------------------------------------------------------------


def compute_block_mask_2d(
    batch_size: int,
    grid_t: int,
    grid_f: int,
    mask_ratio: float = 0.8,
    mask_length: int = 5,
    mask_prob_adjust: float = 0.07,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """data2vec 2.0 / EAT inverse block masking on a ``grid_t x grid_f`` patch grid.

    Rather than masking blocks, it keeps blocks VISIBLE, so the student sees a few contiguous regions and must
    infer everything around them (a harder, less local task than random masking):

    1. draw ``int(N * ((1 - mask_ratio) + mask_prob_adjust) / mask_length**2)`` centres per row, uniformly
       with replacement (``N = grid_t * grid_f``);
    2. mark the ``mask_length x mask_length`` neighbourhood of every centre visible (cut at the borders);
    3. drop random visible cells, or add random other cells, until exactly
       ``max(1, int(N * (1 - mask_ratio)))`` are visible, so every row hides the same number of patches
       (the batch stays rectangular);
    4. invert.

    ``mask_prob_adjust`` over-draws centres to compensate for overlapping blocks, so step 3 mostly trims.
    Returns a ``(batch_size, N)`` bool tensor, True on MASKED patches. Pass ``generator`` for
    reproducible masks.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("grid_t", grid_t),
        ("grid_f", grid_f),
        ("mask_length", mask_length),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if mask_prob_adjust < 0:
        raise ValueError(f"mask_prob_adjust must be >= 0, got {mask_prob_adjust}")
    device = device if device is not None else (generator.device if generator is not None else "cpu")
    num_cells = grid_t * grid_f
    num_visible = max(1, int(num_cells * (1.0 - mask_ratio)))
    num_centres = int(num_cells * ((1.0 - mask_ratio) + mask_prob_adjust) / mask_length**2)

    source = generator.device if generator is not None else device
    centres = torch.zeros(batch_size, num_cells, device=source)
    if num_centres > 0:
        drawn = torch.randint(0, num_cells, (batch_size, num_centres), generator=generator, device=source)
        centres.scatter_(1, drawn, 1.0)
    centres = centres.to(device).view(batch_size, 1, grid_t, grid_f)
    # Dilation by a mask_length window = marking each centre's neighbourhood; cell i is covered by the
    # centres in [i - (mask_length - 1 - half), i + half], hence the asymmetric padding for even lengths.
    half = mask_length // 2
    before, after = mask_length - 1 - half, half
    marked = F.max_pool2d(F.pad(centres, (before, after, before, after)), kernel_size=mask_length, stride=1)
    marked = marked.view(batch_size, num_cells)

    # Marked cells score in [1, 2), the others in [0, 1): the top `num_visible` are a uniform random subset
    # of the marked cells when there are too many, and all of them plus random others when too few.
    score = marked + _uniform_noise((batch_size, num_cells), generator, device)
    keep = score.topk(num_visible, dim=1).indices
    mask = torch.ones(batch_size, num_cells, dtype=torch.bool, device=device)
    return mask.scatter_(1, keep, False)


def _instance_norm_tokens(
    layer: torch.Tensor, patch_mask: torch.Tensor | None, eps: float = 1e-5
) -> torch.Tensor:
    """Normalise every channel over the tokens of each clip (``F.instance_norm`` on ``(B, H, N)``); with
    ``patch_mask`` the statistics come from the real (non-padding) tokens only.

    Written out rather than through ``F.instance_norm``, which refuses a single token: a one-patch clip
    normalises to zeros here, as a clip with one real patch does under ``patch_mask``."""
    if patch_mask is None:
        patch_mask = layer.new_ones(layer.shape[:2])
    weights = patch_mask.to(layer.dtype).unsqueeze(-1)
    count = weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (layer * weights).sum(dim=1, keepdim=True) / count
    var = ((layer - mean).pow(2) * weights).sum(dim=1, keepdim=True) / count
    return (layer - mean) * torch.rsqrt(var + eps)


@torch.no_grad()
def make_teacher_targets(
    ffn_states: Sequence[torch.Tensor],
    top_k: int,
    instance_norm: bool = True,
    layer_norm: bool = True,
    patch_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The regression targets Y of data2vec 2.0 / EAT / CAT / BAT from a teacher's per-block FFN outputs.

    Args:
        ffn_states: ``encoder(..., output_ffn_states=True).ffn_states`` of the (EMA) teacher encoder
            (`CATModel`, `BATModel`) on the unmasked clips: one ``(B, 1 + N, H)`` tensor per block, CLS first.
        top_k: how many of the last blocks to average (``config.average_top_k_layers``).
        instance_norm: instance-normalise each layer over its tokens first (per clip, per channel), so layers
            of different scale weigh the same in the average.
        layer_norm: apply a parameter-free LayerNorm over channels to the average.
        patch_mask: optional ``(B, N)``, 1 on real patches: padding is left out of the instance statistics.

    Returns ``(B, N, H)`` float32, patch tokens only. Computed without gradient: the targets are a
    stop-gradient by construction.
    """
    if isinstance(ffn_states, torch.Tensor) or not isinstance(ffn_states, Sequence) or not ffn_states:
        raise TypeError("ffn_states must be a non-empty sequence of (batch, 1 + patches, hidden) tensors")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= len(ffn_states):
        raise ValueError(
            f"top_k must be an int in [1, {len(ffn_states)}] (the number of layers), got {top_k!r}"
        )
    shape = ffn_states[0].shape
    if len(shape) != 3 or shape[1] < 2 or any(state.shape != shape for state in ffn_states):
        raise ValueError(
            f"every ffn state must be (batch, 1 + patches, hidden) with the same shape, got "
            f"{[tuple(state.shape) for state in ffn_states]}"
        )
    if patch_mask is not None and tuple(patch_mask.shape) != (shape[0], shape[1] - 1):
        raise ValueError(
            f"patch_mask must be (batch, patches) = {(shape[0], shape[1] - 1)}, got {tuple(patch_mask.shape)}"
        )
    target = None
    for state in ffn_states[-top_k:]:
        layer = state[:, 1:].float()  # drop CLS
        if instance_norm:
            layer = _instance_norm_tokens(layer, patch_mask)
        target = layer if target is None else target + layer
    target = target / top_k
    if layer_norm:
        target = F.layer_norm(target, target.shape[-1:])
    return target


# --------------------------------------------------------------------------------------------
# Decoders
# --------------------------------------------------------------------------------------------


def scatter_visible(filler: torch.Tensor, visible_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``filler`` ``(rows, N, D)`` with the visible patches (False in ``mask``) replaced by ``visible_tokens``
    ``(rows, V, D)``, which must be in ascending patch order (the order the encoders gather them in)."""
    # masked_scatter fills the True positions in row-major order: patch by patch, ascending.
    return filler.masked_scatter((~mask).unsqueeze(-1).expand(filler.shape), visible_tokens)


class _CNNDecoderLayer(nn.Module):
    """Grouped conv, parameter-free channel LayerNorm, GELU: one layer of EAT's CNN decoder."""

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, padding=kernel_size // 2, groups=groups)
        self.norm = ChannelLayerNorm(out_dim, eps=_CNN_DECODER_NORM_EPS, elementwise_affine=False)
        self.act = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(hidden_states)))


class BootstrapCNNDecoder(nn.Module):
    """EAT's light CNN decoder (``Decoder2d``): the token grid as an image, ``decoder_layers`` grouped 3 x 3
    convolutions with a residual between consecutive layers of equal width, then
    Linear(decoder_dim -> hidden).

    Its input puts the student's visible tokens back at their patches and fills the hidden ones with
    N(0, 0.01^2) noise in training mode, as data2vec 2.0 does (it keeps the decoder from keying on a constant
    mask token), and with zeros, the noise's mean, in eval mode, so evaluation is deterministic. A conv
    decoder suffices because the encoder already did the global reasoning; it only has to spread the visible
    tokens' information to their masked neighbours.
    """

    def __init__(self, config):
        super().__init__()
        width = config.decoder_dim
        self.layers = nn.ModuleList(
            [
                _CNNDecoderLayer(
                    config.hidden_size if i == 0 else width,
                    width,
                    config.decoder_kernel_size,
                    config.decoder_groups,
                )
                for i in range(config.decoder_layers)
            ]
        )
        self.proj = nn.Linear(width, config.hidden_size)

    def forward(
        self, encoded: torch.Tensor, mask: torch.Tensor, grid_t: int, patch_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``encoded`` ``(rows, 1 + visible, hidden)`` (CLS first), ``mask`` ``(rows, N)`` True on hidden
        patches -> predictions ``(rows, N, hidden)``, row-major. The CLS and ``patch_mask`` are not used: the
        reference's convolutions see padding patches as it sees any other."""
        rows, num_patches = mask.shape
        visible_tokens = encoded[:, 1:]
        shape = (rows, num_patches, visible_tokens.shape[-1])
        if self.training:
            filler = (
                torch.randn(shape, device=visible_tokens.device, dtype=visible_tokens.dtype) * MASK_NOISE_STD
            )
        else:
            filler = visible_tokens.new_zeros(shape)
        tokens = scatter_visible(filler, visible_tokens, mask)
        hidden_states = tokens.transpose(1, 2).reshape(rows, shape[-1], grid_t, num_patches // grid_t)
        residual = hidden_states
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            if hidden_states.shape == residual.shape:
                hidden_states = hidden_states + residual
            residual = hidden_states
        return self.proj(hidden_states.flatten(2).transpose(1, 2))


class BootstrapTransformerDecoder(nn.Module):
    """A ViT decoder in place of EAT's CNN (BAT's "ViT decoder"): MAE's decoder layout with data2vec 2.0's
    regression output.

    Linear(hidden -> transformer_decoder_dim) of ``[CLS, visible tokens]``, a learned mask token at every
    hidden patch, fixed 2-D sin-cos positions (a zero row for the CLS), ``transformer_decoder_layers`` pre-LN
    blocks with global attention over the CLS and every patch (padding patches left out of the attention),
    a LayerNorm and Linear(transformer_decoder_dim -> hidden). It predicts every patch, as the CNN decoder
    does; the loss reads the hidden ones. The blocks are ungated: the gate is a property of the encoder being
    pre-trained, and the decoder is thrown away after pre-training.

    ``transformer_decoder_positions="conv"`` replaces the absolute positions by a depthwise convolution over
    the patch grid, added to the tokens (GELU, as wav2vec 2.0's positional conv). Why: with absolute
    positions the decoder can predict the teacher's positional share of the targets without the encoder,
    and at CPU scale the encoder then collapsed (docs/benchmarks.md); a hidden patch told apart only by its
    visible neighbours makes the decoder read them, as the CNN decoder must.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        width = config.transformer_decoder_dim
        grid_t, grid_f = config.grid_size
        self.embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_conv = None
        if config.transformer_decoder_positions == "conv":
            kernel = config.decoder_kernel_size
            self.pos_conv = nn.Conv2d(width, width, kernel, padding=kernel // 2, groups=width)
        self.register_buffer("pos_embed", torch.zeros(1, 1 + grid_t * grid_f, width), persistent=False)
        self.pos_embed.copy_(self.sincos_pos_embed())  # right without weight init too, as the encoders'
        block_config = ConfigView(
            config, hidden_size=width, num_attention_heads=config.transformer_decoder_heads
        )
        self.blocks = nn.ModuleList(
            [PreLNBlock(block_config) for _ in range(config.transformer_decoder_layers)]
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.proj = nn.Linear(width, config.hidden_size)

    def sincos_pos_embed(self) -> torch.Tensor:
        """Fixed decoder positions for the ``max_length`` grid, CLS row first: ``(1, 1 + N, width)``."""
        return sincos_pos_embed_like(self.pos_embed, self.config.grid_size, cls_token=True)

    def forward(
        self, encoded: torch.Tensor, mask: torch.Tensor, grid_t: int, patch_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``encoded`` ``(rows, 1 + visible, hidden)`` (CLS first), ``mask`` ``(rows, N)`` True on hidden
        patches, ``patch_mask`` ``(rows, N)`` 1 on real patches -> predictions ``(rows, N, hidden)``."""
        hidden_states = self.embed(encoded)
        rows, num_patches = mask.shape
        filler = self.mask_token.to(hidden_states.dtype).expand(rows, num_patches, hidden_states.shape[-1])
        patches = scatter_visible(filler, hidden_states[:, 1:], mask)
        if self.pos_conv is None:
            hidden_states = torch.cat([hidden_states[:, :1], patches], dim=1)
            # Row-major (t, f) positions: a shorter clip uses a prefix of the grid, as in the encoder.
            hidden_states = hidden_states + self.pos_embed[:, : 1 + num_patches].to(hidden_states.dtype)
        else:
            grid = patches.transpose(1, 2).reshape(rows, patches.shape[-1], grid_t, num_patches // grid_t)
            patches = patches + F.gelu(self.pos_conv(grid)).flatten(2).transpose(1, 2)
            hidden_states = torch.cat([hidden_states[:, :1], patches], dim=1)
        attention_mask = token_attention_mask(self.config, hidden_states, patch_mask)
        for block in self.blocks:
            hidden_states = block(hidden_states, attention_mask)
        return self.proj(self.norm(hidden_states[:, 1:]))


def build_decoder(config) -> nn.Module:
    """The pre-training decoder ``config.decoder_type`` names."""
    if config.decoder_type == "transformer":
        return BootstrapTransformerDecoder(config)
    return BootstrapCNNDecoder(config)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass
class BootstrapModelOutput(BaseModelOutputWithPooling):
    r"""
    Output of the bootstrap encoders ([`CATModel`], [`BATModel`]): `BaseModelOutputWithPooling` plus the
    blocks' feed-forward outputs.

    ffn_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_ffn_states=True`):
        One `(batch, 1 + tokens, hidden)` tensor per block: the FFN output `t` before the residual sum (and,
        in a post-LN block, before `norm2`): what a data2vec teacher regresses, CLS first.
    """

    ffn_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class BootstrapForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`CATForPreTraining`] and [`BATForPreTraining`]. `B` is the number of clips, `C` =
    `config.clone_batch`; student rows are ordered clip by clip (clip `i` -> rows `i*C .. i*C+C-1`).

    loss (`torch.FloatTensor` of shape `()`):
        `patch_loss + cls_loss_weight * cls_loss + rr_loss_weight * rr_loss`.
    patch_loss (`torch.FloatTensor` of shape `()`): squared error / sqrt(hidden), averaged over the masked,
        non-padding patches of all student rows.
    cls_loss (`torch.FloatTensor` of shape `()`): per-row squared error of the final CLS against the clip's
        mean target, / sqrt(hidden), summed (`cls_rr_reduction="sum"`) or averaged over the `B*C` rows.
    rr_loss (`torch.FloatTensor` of shape `()`, *optional*): representation regularization, reduced likewise;
        None without `rr_targets`.
    predictions (`torch.FloatTensor` of shape `(B*C, num_patches, hidden)`): the decoder's output on
        every patch.
    mask (`torch.BoolTensor` of shape `(B*C, num_patches)`): True on the patches hidden from the student.
        Boolean, not ViTMAE's 0/1 float, because it indexes patches wherever it is used; compare two with
        `torch.equal`, not by subtraction.
    student_cls (`torch.FloatTensor` of shape `(B*C, hidden)`): the student's final CLS tokens.
    hidden_states, attentions (*optional*): the student encoder's, on request.
    """

    loss: torch.FloatTensor | None = None
    patch_loss: torch.FloatTensor | None = None
    cls_loss: torch.FloatTensor | None = None
    rr_loss: torch.FloatTensor | None = None
    predictions: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    student_cls: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None

    @property
    def logits(self) -> torch.FloatTensor | None:
        """Alias of `predictions`, for code that reads every model's main output as ``logits``."""
        return self.predictions


# --------------------------------------------------------------------------------------------
# Model plumbing
# --------------------------------------------------------------------------------------------


def recorded_outputs(block_class: type) -> dict:
    """A bootstrap encoder's ``_can_record_outputs``: each block's output as ``hidden_states``, the attention
    weights, and the blocks' Mlp outputs as ``ffn_states`` (data2vec's FFN targets `t`)."""
    return {
        "hidden_states": block_class,
        "attentions": Attention,
        "ffn_states": OutputRecorder(Mlp, layer_name="blocks"),
    }


class BootstrapPreTrainedModel(SpectrogramModelMixin, LayerDecayMixin, PreTrainedModel):
    """The base of CAT's and BAT's ``*PreTrainedModel``: the v5 contract and data2vec's initialisation. The
    family sets ``config``, ``base_model_prefix``, ``embedding_param_prefixes``, ``_no_split_modules`` and
    ``_can_record_outputs`` (`recorded_outputs` of its block)."""

    # A pre-training checkpoint carries its decoder (and RR projector); loading it as an encoder or a
    # classifier drops them by design, which is not worth an "UNEXPECTED" report on every load.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\.", r"^rr_projector\."]
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """data2vec/EAT initialisation through the guarded ``transformers.initialization`` functions.

        Linear layers: normal(0, ``initializer_range``) (BERT init, as data2vec), zero bias. Patchifying
        convolutions (kernel = stride > 1: patch embedding, stem stages, side outputs): xavier-uniform over
        ``(out, in * k * k)``, as MAE/EAT initialise the patch projection. Other convolutions (1x1, depthwise,
        decoder): PyTorch's default, which the reference leaves them at. CLS and mask tokens: normal(0,
        ``initializer_range``). The sin-cos ``pos_embed`` buffers are recomputed on every call because
        ``from_pretrained`` re-creates non-persistent buffers uninitialised.
        """
        super()._init_weights(module)  # LayerNorms (incl. channel ones) -> ones / zeros
        std = self.config.initializer_range
        if module is getattr(self, "classifier", None) and isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, CosineClassifier):
            init_cosine_classifier(module)
        elif isinstance(module, nn.Conv2d):
            kernel, stride = module.kernel_size, module.stride
            if module.groups == 1 and kernel == stride and max(kernel) > 1:
                init_patch_projection_(module)
            else:
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                if module.bias is not None:
                    bound = 1.0 / math.sqrt(module.weight[0].numel())
                    init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, BootstrapEncoderMixin):
            init.normal_(module.cls_token, std=std)
            init.copy_(module.pos_embed, module.sincos_pos_embed())
        elif isinstance(module, BootstrapTransformerDecoder):
            init.normal_(module.mask_token, std=std)
            init.copy_(module.pos_embed, module.sincos_pos_embed())


class BootstrapEncoderMixin:
    """The forward pass of CAT's and BAT's encoders, data2vec 2.0's context encoder: embed the patches (the
    family's ``_embed_patches(input_values, visible)``), add the fixed sin-cos positions, keep the visible
    patches, put a learnable CLS token without position in front, then ``pre_norm`` (if any), dropout, the
    ``blocks`` and the final ``norm`` (if any). data2vec has the one or the other: post-LN blocks (EAT, CAT)
    take a normalised input and need no final norm; pre-LN blocks (BAT) the reverse. The family sets
    ``pre_norm`` and ``norm`` to a LayerNorm or None.

    ``forward(input_values, attention_mask=None, mask=None, output_hidden_states=None,
    output_ffn_states=False)``:

    - ``input_values`` ``(batch, frames, num_mel_bins)`` log-mel features, ``frames <= max_length``;
      frames are zero-padded to a multiple of ``patch_size`` and the positions of the actual grid are used.
    - ``attention_mask`` ``(batch, frames)``, 1 on real frames: patches made only of padding are excluded from
      attention and from mean pooling.
    - ``mask`` ``(batch, num_patches)`` bool, True on hidden patches (e.g. `compute_block_mask_2d`); every row
      must hide the same number. Only the visible tokens (in patch order) go through the blocks.

    Returns `BootstrapModelOutput`: ``last_hidden_state`` ``(batch, 1 + visible patches, hidden)``, CLS
    first (after ``norm`` when there is one); ``pooler_output`` ``(batch, hidden)``: the CLS token, or with
    ``config.pooling == "mean"`` the mean of the visible, non-padding patches; ``hidden_states`` (embeddings
    + each block's output) and ``ffn_states`` (each block's Mlp output, the teacher's targets) on request.
    """

    def _add_cls_token_and_positions(self) -> None:
        config = self.config
        grid_t, grid_f = config.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.register_buffer(
            "pos_embed", torch.zeros(1, grid_t * grid_f, config.hidden_size), persistent=False
        )
        # Filled now as well as in _init_weights: a model built without weight init and given a state dict
        # (which never holds this buffer) must not compute with all-zero positions.
        self.pos_embed.copy_(self.sincos_pos_embed())

    def sincos_pos_embed(self) -> torch.Tensor:
        """The fixed patch positions for the ``max_length`` grid (no CLS row): ``(1, N, hidden)``."""
        return sincos_pos_embed_like(self.pos_embed, self.config.grid_size, cls_token=False)

    def _pool(self, sequence_output: torch.Tensor, patch_mask: torch.Tensor | None) -> torch.Tensor:
        return pool_tokens(sequence_output, patch_mask, self.config.pooling)

    def _cls_and_visible_patches(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[CLS, visible patches + positions]`` ``(batch, 1 + visible, hidden)`` and the visible patches'
        padding mask ``(batch, visible)`` (1 on real patches; None without ``attention_mask``).

        ``visible`` (passed to ``_embed_patches``) is True on the patches whose content may flow: neither
        hidden by ``mask`` nor padding. An embedding that mixes neighbouring patches (CAT's conv stem) must
        honour it; a non-overlapping patch projection can ignore it.
        """
        self._check_inputs(input_values, attention_mask)
        patch_size = self.config.patch_size
        batch = input_values.shape[0]
        grid_t, grid_f = self.grid_shape(input_values.shape[-2])
        num_patches = grid_t * grid_f
        input_values = pad_to_patches(input_values, patch_size)

        patch_mask = None
        if attention_mask is not None:
            patch_mask = frames_to_patch_mask(attention_mask.to(input_values.device), patch_size, grid_f)
        ids_keep = (
            visible_indices(mask.to(input_values.device), batch, num_patches) if mask is not None else None
        )

        visible = None
        if mask is not None or patch_mask is not None:
            visible = torch.ones(batch, num_patches, dtype=torch.bool, device=input_values.device)
            if mask is not None:
                visible &= ~mask.to(visible.device)
            if patch_mask is not None:
                visible &= patch_mask.bool()
        patches = self._embed_patches(input_values, visible)
        # Row-major (t, f) positions: the first grid_t * grid_f rows are those of a shorter grid.
        patches = patches + self.pos_embed[:, :num_patches].to(patches.dtype)
        if ids_keep is not None:
            patches = gather_tokens(patches, ids_keep)
            if patch_mask is not None:
                patch_mask = gather_tokens(patch_mask, ids_keep)

        cls_token = self.cls_token.to(patches.dtype).expand(batch, -1, -1)
        return torch.cat([cls_token, patches], dim=1), patch_mask

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        output_ffn_states: bool = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BootstrapModelOutput:
        r"""
        mask (`torch.BoolTensor` of shape `(batch, num_patches)`, *optional*): True on patches hidden from the
            encoder; every row must hide the same number.
        output_ffn_states (`bool`, *optional*, defaults to `False`): also return every block's FFN output.
        """
        hidden_states, patch_mask = self._cls_and_visible_patches(input_values, attention_mask, mask)
        if self.pre_norm is not None:
            hidden_states = self.pre_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)
        attention = token_attention_mask(self.config, hidden_states, patch_mask)
        for block in self.blocks:
            hidden_states = block(hidden_states, attention, **kwargs)
        # hidden_states (recorded per block) stay the blocks' outputs; the final norm is last_hidden_state's.
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
        return BootstrapModelOutput(
            last_hidden_state=hidden_states, pooler_output=self._pool(hidden_states, patch_mask)
        )


class BootstrapClassifierMixin:
    """Encoder + ``fc_norm`` + dropout + linear head, as EAT/CAT fine-tune (``use_fc_norm``, CLS pooling).

    The family's ``__init__`` sets its encoder under ``base_model_prefix``, then calls `_add_head`. In
    training mode each clip drops a random ``config.finetune_mask_ratio`` of its patch tokens before the
    blocks (unstructured patch-out; 0 by default). The loss follows ``config.problem_type`` (multi-hot float
    labels give BCE-with-logits when it is unset or ``multi_label_classification``).
    """

    def _add_head(self) -> None:
        config = self.config
        self.num_labels = config.num_labels
        self.fc_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = classifier_head(config)

    def patch_out(
        self, input_values: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """A training batch's patch-out mask ``(batch, num_patches)``, True on the dropped patches (drawn at
        random per clip), or None when patch-out is off."""
        ratio = self.config.finetune_mask_ratio
        if not self.training or ratio == 0:
            return None
        grid_t, grid_f = self.grid_shape(input_values.shape[-2])
        _, mask, _ = random_masking(
            input_values.shape[0], grid_t * grid_f, ratio, generator=generator, device=input_values.device
        )
        return mask

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels (`torch.Tensor`, *optional*): ``(batch, num_labels)`` multi-hot floats for
            ``multi_label_classification``, ``(batch,)`` class indices for ``single_label_classification``.
        mask (`torch.BoolTensor`, *optional*): patches to drop, overriding the random patch-out.
        """
        if mask is None and isinstance(input_values, torch.Tensor):
            mask = self.patch_out(input_values)
        outputs = self.base_model(input_values, attention_mask=attention_mask, mask=mask, **kwargs)
        logits = self.classifier(self.dropout(self.fc_norm(outputs.pooler_output)))
        return classification_output(self, logits, labels, outputs, **kwargs)


class BootstrapPreTrainingMixin:
    """Bootstrap pre-training: student encoder (under ``base_model_prefix``), decoder and RR projector.

    ``forward(input_values, attention_mask=None, teacher_targets=None, rr_targets=None, mask=None)``:

    - ``teacher_targets`` ``(B, N, H)``: the EMA teacher's targets on the unmasked clips, from
      `make_teacher_targets` (required; the teacher lives in the training step);
    - ``rr_targets`` ``(B, rr_embedding_dim)``: a frozen encoder's clip embeddings (CLAP), optional;
    - ``mask`` ``(B * clone_batch, N)`` bool, True = hidden; drawn with `compute_block_mask_2d` from torch's
      global RNG when None.

    The student encodes ``clone_batch`` copies of each clip, each under its own mask; the decoder
    (``config.decoder_type``) predicts every patch from the visible ones. Loss terms (see
    `BootstrapForPreTrainingOutput`) follow the EAT/CAT reference: squared errors summed over channels and
    divided by sqrt(dim); RR ``"cosine"`` is ``(1 - cos) / sqrt(dim)`` and ``"l1"`` ``|.|_1 / sqrt(dim)``, the
    reference's scaling of every loss type. Padding patches (``attention_mask``) are left out of the patch
    loss and of the clip-mean CLS target. The family builds its student without stochastic depth, as the
    reference pre-trains.
    """

    def _add_pretraining_heads(self) -> None:
        config = self.config
        self.decoder = build_decoder(config)
        self.rr_projector = (
            nn.Linear(config.hidden_size, config.rr_embedding_dim) if config.rr_embedding_dim > 0 else None
        )

    def get_layer_id(self, param_name: str) -> int:
        """As the encoder's; the decoder sits with the head, after the last block (its ``blocks.i``, if any,
        are not the encoder's)."""
        if param_name.startswith("decoder."):
            return self.config.num_hidden_layers + 1
        return super().get_layer_id(param_name)

    def _check_targets(self, teacher_targets, rr_targets, batch: int, num_patches: int) -> None:
        config = self.config
        if teacher_targets is None:
            raise ValueError(
                f"{type(self).__name__} regresses an EMA teacher's targets, which must be passed as "
                "teacher_targets: "
                "make_teacher_targets(teacher(input_values, attention_mask=attention_mask, "
                "output_ffn_states=True).ffn_states, top_k=config.average_top_k_layers), where teacher is an "
                f"EMA copy of model.{self.base_model_prefix} (see hf_audiorep.objectives.bootstrap)"
            )
        if not isinstance(teacher_targets, torch.Tensor):
            raise TypeError(f"teacher_targets must be a tensor, got {type(teacher_targets).__name__}")
        expected = (batch, num_patches, config.hidden_size)
        if tuple(teacher_targets.shape) != expected:
            raise ValueError(
                f"teacher_targets must be (batch, num_patches, hidden_size) = {expected}, got "
                f"{tuple(teacher_targets.shape)}"
            )
        if rr_targets is None:
            return
        if self.rr_projector is None:
            raise ValueError(
                "rr_targets were given but this model has no RR projector (config.rr_embedding_dim = 0); "
                "build "
                "it with rr_embedding_dim set to the frozen encoder's embedding size"
            )
        if not isinstance(rr_targets, torch.Tensor):
            raise TypeError(f"rr_targets must be a tensor, got {type(rr_targets).__name__}")
        if tuple(rr_targets.shape) != (batch, config.rr_embedding_dim):
            raise ValueError(
                f"rr_targets must be (batch, rr_embedding_dim) = {(batch, config.rr_embedding_dim)}, got "
                f"{tuple(rr_targets.shape)}"
            )

    def _reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        return per_sample.sum() if self.config.cls_rr_reduction == "sum" else per_sample.mean()

    def _rr_loss(self, source: torch.Tensor, rr_targets: torch.Tensor) -> torch.Tensor:
        prediction = self.rr_projector(source).float()
        target = rr_targets.float().repeat_interleave(self.config.clone_batch, dim=0)
        scale = prediction.shape[-1] ** -0.5
        loss_type = self.config.rr_loss_type
        if loss_type == "mse":
            per_sample = (prediction - target).pow(2).sum(dim=-1)
        elif loss_type == "l1":
            per_sample = (prediction - target).abs().sum(dim=-1)
        else:
            per_sample = 1.0 - F.cosine_similarity(prediction, target, dim=-1, eps=1e-6)
        return self._reduce(per_sample * scale)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        teacher_targets: torch.Tensor | None = None,
        rr_targets: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BootstrapForPreTrainingOutput:
        r"""
        teacher_targets (`torch.FloatTensor` of shape `(batch, num_patches, hidden_size)`): the EMA teacher's
            targets, see `make_teacher_targets`.
        rr_targets (`torch.FloatTensor` of shape `(batch, rr_embedding_dim)`, *optional*): frozen-encoder
            embeddings for representation regularization.
        mask (`torch.BoolTensor` of shape `(batch * clone_batch, num_patches)`, *optional*): True on patches
            hidden from the student; drawn with `compute_block_mask_2d` when None.
        """
        config = self.config
        clones = config.clone_batch
        self._check_inputs(input_values, attention_mask)
        batch = input_values.shape[0]
        grid_t, grid_f = self.grid_shape(input_values.shape[-2])
        num_patches = grid_t * grid_f
        self._check_targets(teacher_targets, rr_targets, batch, num_patches)
        device = input_values.device
        if mask is None:
            mask = compute_block_mask_2d(
                batch * clones,
                grid_t,
                grid_f,
                config.mask_ratio,
                config.mask_length,
                config.mask_prob_adjust,
                device=device,
            )
        elif tuple(mask.shape) != (batch * clones, num_patches):
            raise ValueError(
                f"mask must be (batch * clone_batch, num_patches) = {(batch * clones, num_patches)}, got "
                f"{tuple(mask.shape)}"
            )
        mask = mask.to(device)

        use_rr = rr_targets is not None and config.rr_loss_weight > 0
        student_attention_mask = patch_mask = student_patch_mask = None
        if attention_mask is not None:
            student_attention_mask = attention_mask.repeat_interleave(clones, dim=0)
            patch_mask = frames_to_patch_mask(attention_mask.to(device), config.patch_size, grid_f).float()
            student_patch_mask = patch_mask.repeat_interleave(clones, dim=0)
        outputs: BootstrapModelOutput = self.base_model(
            input_values.repeat_interleave(clones, dim=0),
            attention_mask=student_attention_mask,
            mask=mask,
            output_ffn_states=use_rr and config.rr_layer >= 0,
            **kwargs,
        )
        encoded = outputs.last_hidden_state
        student_cls = encoded[:, 0]
        predictions = self.decoder(encoded, mask, grid_t, student_patch_mask)

        # Losses in float32: squared errors of 768-wide vectors summed in bf16 lose too much.
        targets = teacher_targets.to(device=device, dtype=torch.float32)
        scale = config.hidden_size**-0.5
        weights = mask.float()
        if student_patch_mask is not None:
            weights = weights * student_patch_mask
        squared = (predictions.float() - targets.repeat_interleave(clones, dim=0)).pow(2).sum(dim=-1) * scale
        # Nothing masked (mask_ratio 0) gives a zero loss, not NaN.
        patch_loss = masked_mean(squared, weights)

        clip_targets = masked_mean(targets, patch_mask, dim=1).repeat_interleave(clones, dim=0)
        cls_loss = self._reduce((student_cls.float() - clip_targets).pow(2).sum(dim=-1) * scale)
        loss = patch_loss + config.cls_loss_weight * cls_loss

        rr_loss = None
        if use_rr:
            source = student_cls if config.rr_layer < 0 else outputs.ffn_states[config.rr_layer][:, 0]
            rr_loss = self._rr_loss(source, rr_targets.to(device))
            loss = loss + config.rr_loss_weight * rr_loss
        return BootstrapForPreTrainingOutput(
            loss=loss,
            patch_loss=patch_loss,
            cls_loss=cls_loss,
            rr_loss=rr_loss,
            predictions=predictions,
            mask=mask,
            student_cls=student_cls,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
