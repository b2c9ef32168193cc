"""CAT: the Convolutional Audio Transformer (arXiv 2601.21612), its classifier and its bootstrap pre-training.

The encoder is EAT's (data2vec 2.0 for audio): post-LN transformer blocks over 16 x 16 patches of a log-mel
spectrogram, fixed 2-D sin-cos positions on the patches, a learnable CLS token without position, a LayerNorm
over ``[CLS, patches]`` before the first block (data2vec's context-encoder norm, ``pre_norm``) and no final
norm. CAT replaces the single 16 x 16 patch embedding by a hierarchical conv stem, the Multi-resolution
Block (`MultiResolutionStem`, ConvMAE-style), and trades one transformer block for it (11 instead of 12).

Pre-training (`CATForPreTraining`) is EAT's bootstrap objective plus CAT's representation regularization:

- the student encodes ``clone_batch`` copies of each clip, each under its own inverse block mask
  (`compute_block_mask_2d`), seeing only ~20 % of the patches (the stem uses masked convolutions, so hidden
  patches do not leak into visible ones);
- a CNN decoder (or, with ``decoder_type="transformer"``, BAT's transformer decoder) fills in the hidden
  patches and regresses the EMA teacher's targets (`make_teacher_targets`: the instance-normalised average of
  the teacher's top FFN outputs, layer-normalised);
- the student's CLS is pulled toward the mean target (utterance-level loss) and, through a linear projector,
  toward a frozen encoder's clip embedding (RR; CLAP in the paper).

The masks, targets, decoders, losses and heads are shared with BAT and live in `_bootstrap`; this module holds
what is CAT's own: the stem and the encoder. The teacher is not part of this module: it is an EMA copy of
`CATModel` owned by the training step, which passes its targets in (``teacher_targets``), so the forward pass
stays a pure function of its inputs.

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

import torch
from torch import nn

from ._bootstrap import (
    BootstrapClassifierMixin,
    BootstrapCNNDecoder,
    BootstrapEncoderMixin,
    BootstrapForPreTrainingOutput,
    BootstrapModelOutput,
    BootstrapPreTrainedModel,
    BootstrapPreTrainingMixin,
    compute_block_mask_2d,
    make_teacher_targets,
    recorded_outputs,
)
from ._layers import (
    ChannelLayerNorm,
    PatchEmbed,
    PostLNBlock,
    drop_path_rates,
    spectrogram_as_image,
    without_stochastic_depth,
)
from .configuration_cat import CATConfig

__all__ = [
    "CATDecoder",
    "CATForAudioClassification",
    "CATForPreTraining",
    "CATForPreTrainingOutput",
    "CATModel",
    "CATModelOutput",
    "CATPreTrainedModel",
    "CBlock",
    "MultiResolutionStem",
    "compute_block_mask_2d",
    "make_teacher_targets",
]

# The reference builds its conv-stem LayerNorms with torch's default epsilon (the ViT blocks use 1e-6).
_STEM_NORM_EPS = 1e-5

# CAT's names for the shared pieces (its checkpoints and code predate BAT).
CATDecoder = BootstrapCNNDecoder
CATModelOutput = BootstrapModelOutput
CATForPreTrainingOutput = BootstrapForPreTrainingOutput


# --------------------------------------------------------------------------------------------
# Multi-resolution stem
# --------------------------------------------------------------------------------------------


class CMlp(nn.Module):
    """Feed-forward network of 1x1 convolutions (per time-frequency position), as ConvMAE's CBlock uses."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class CBlock(nn.Module):
    """ConvMAE's convolutional block: ``x + conv2(dwconv(visible * conv1(LN(x))))``, then ``x + CMlp(LN(x))``.

    The depthwise ``k x k`` conv is the only operation that mixes positions; multiplying its input by the
    ``visible`` map (1 on visible cells, 0 on masked ones) makes every visible output independent of the
    masked inputs, which is what lets a conv stem take part in masked pre-training.
    """

    def __init__(self, dim: int, mlp_ratio: float, kernel_size: int):
        super().__init__()
        self.norm1 = ChannelLayerNorm(dim, eps=_STEM_NORM_EPS)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = ChannelLayerNorm(dim, eps=_STEM_NORM_EPS)
        self.mlp = CMlp(dim, int(dim * mlp_ratio))

    def forward(self, hidden_states: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        mixed = self.conv1(self.norm1(hidden_states))
        if visible is not None:
            mixed = mixed * visible
        hidden_states = hidden_states + self.conv2(self.dwconv(mixed))
        return hidden_states + self.mlp(self.norm2(hidden_states))


class StemPatchEmbed(nn.Module):
    """Non-overlapping strided conv followed by a channel LayerNorm (one downsampling step of the stem)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size=stride, stride=stride)
        self.norm = ChannelLayerNorm(out_channels, eps=_STEM_NORM_EPS)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(hidden_states))


class MultiResolutionStem(nn.Module):
    """CAT's Multi-resolution Block: a hierarchical conv stem whose stages see the spectrogram at cumulative
    strides 4, 8 and 16 (``patch_size``), fused into one token per 16 x 16 patch.

    ============  ===========================================================  =====================
    stage         operation                                                    output (1024 x 128)
    ============  ===========================================================  =====================
    1             conv k4 s4 (C -> C1) + LN, ``stem_depths[0]`` CBlocks         C1 x 256 x 32
    2             conv k2 s2 (C1 -> C2) + LN, ``stem_depths[1]`` CBlocks        C2 x 128 x 16
    3             conv k2 s2 (C2 -> H) + LN, flatten, Linear(H -> H)            512 tokens x H
    side 1 / 2    conv k4 s4 on stage 1 / conv k2 s2 on stage 2 (-> H)          512 tokens x H each
    fusion        stage 3 + side 1 + side 2
    ============  ===========================================================  =====================

    ``forward(spectrogram, visible=None)``: ``spectrogram`` ``(B, T, F)`` or ``(B, C, T, F)`` with ``T``
    and ``F`` multiples of ``patch_size``; ``visible`` ``(B, grid_t * grid_f)`` bool, True on the patches
    whose information may flow (visible, non-padding). It is upsampled (nearest) to each stage's grid and
    gates every depthwise conv (see `CBlock`), so hidden patches cannot leak into visible ones. Returns
    ``(B, grid_t * grid_f, H)`` in row-major ``(t, f)`` order, like `PatchEmbed`.

    The stem runs with autocast disabled (in its weights' dtype, fp32 normally), as the reference does:
    the long chains of channel LayerNorms and 5 x 5 convolutions are where reduced precision hurts; the
    result is cast back to the input's dtype.
    """

    def __init__(self, config: CATConfig):
        super().__init__()
        c1, c2 = config.stem_channels
        hidden = config.hidden_size
        s1, s2, s3 = config.stem_strides
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.stage_embeds = nn.ModuleList(
            [
                StemPatchEmbed(config.num_channels, c1, s1),
                StemPatchEmbed(c1, c2, s2),
                StemPatchEmbed(c2, hidden, s3),
            ]
        )
        self.stages = nn.ModuleList(
            [
                nn.ModuleList(
                    [CBlock(width, config.stem_mlp_ratio, config.stem_kernel_size) for _ in range(depth)]
                )
                for width, depth in zip((c1, c2), config.stem_depths, strict=True)
            ]
        )
        # Side outputs project the finer stages straight to the token grid (one patch per output cell).
        self.side_outputs = nn.ModuleList(
            [
                nn.Conv2d(c1, hidden, kernel_size=s2 * s3, stride=s2 * s3),
                nn.Conv2d(c2, hidden, kernel_size=s3, stride=s3),
            ]
        )
        self.token_proj = nn.Linear(hidden, hidden)
        # How many cells of each CBlock stage one patch spans per side (4 and 2 for 16 x 16 patches).
        self.stage_upsampling = (s2 * s3, s3)

    def forward(self, spectrogram: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        spectrogram = spectrogram_as_image(
            spectrogram, self.num_channels, self.patch_size, "MultiResolutionStem"
        )
        batch, _, height, width = spectrogram.shape
        grid_t, grid_f = height // self.patch_size, width // self.patch_size
        visible_grid = None
        if visible is not None:
            if tuple(visible.shape) != (batch, grid_t * grid_f):
                raise ValueError(
                    f"visible must be (batch, grid_t * grid_f) = {(batch, grid_t * grid_f)}, got "
                    f"{tuple(visible.shape)}"
                )
            visible_grid = visible.view(batch, 1, grid_t, grid_f)

        # The convolutions' dtype, not token_proj's: a dynamically quantised copy (torch.ao's
        # quantize_dynamic, one of the paths benchmarks/bench_space.py measures) keeps them in float while
        # its Linear layers hold int8 weights behind a method.
        compute_dtype = self.side_outputs[0].weight.dtype
        with torch.autocast(device_type=spectrogram.device.type, enabled=False):
            hidden_states = spectrogram.to(compute_dtype)
            side_tokens = 0
            for embed, blocks, side, factor in zip(
                self.stage_embeds, self.stages, self.side_outputs, self.stage_upsampling, strict=False
            ):
                hidden_states = embed(hidden_states)
                stage_visible = None
                if visible_grid is not None:
                    stage_visible = visible_grid.repeat_interleave(factor, dim=2).repeat_interleave(
                        factor, dim=3
                    )
                    stage_visible = stage_visible.to(compute_dtype)
                for block in blocks:
                    hidden_states = block(hidden_states, stage_visible)
                side_tokens = side_tokens + side(hidden_states).flatten(2).transpose(1, 2)
            tokens = self.stage_embeds[-1](hidden_states).flatten(2).transpose(1, 2)
            tokens = self.token_proj(tokens) + side_tokens
        return tokens  # in the weights' dtype, as the patch embedding of the other families


# --------------------------------------------------------------------------------------------
# The base class and the encoder
# --------------------------------------------------------------------------------------------


class CATPreTrainedModel(BootstrapPreTrainedModel):
    config: CATConfig
    base_model_prefix = "cat"
    # Layer decay: the stem, CLS token and embedding norm sit below block 0; head, decoder and RR projector
    # above the last block.
    embedding_param_prefixes = ("stem.", "patch_embed.", "cls_token", "pre_norm.")
    _no_split_modules = ["PostLNBlock"]
    _can_record_outputs = recorded_outputs(PostLNBlock)


class CATModel(BootstrapEncoderMixin, CATPreTrainedModel):
    """The CAT encoder (the EAT encoder when ``config.use_multi_resolution_stem`` is False).

    Its forward pass is `BootstrapEncoderMixin`'s (inputs, masks, outputs; returns `CATModelOutput`). The
    stem runs masked convolutions: hidden patches (``mask``) and padding patches (``attention_mask``) are
    gated out of every depthwise conv, so their content does not bleed into the visible, real patches.
    ``pre_norm`` normalises ``[CLS, patches]`` before the post-LN blocks, whose last output is
    ``last_hidden_state`` (no final norm).

    The cat-base encoder has 88,774,784 parameters: stem 10,805,888 + 11 blocks x 7,087,872 + CLS 768 +
    ``pre_norm`` 1,536. The 88.77 M of the architecture notes leaves out ``pre_norm``, data2vec's
    context-encoder LayerNorm, which the reference applies to ``[CLS, patches]`` before the first block.
    """

    def __init__(self, config: CATConfig):
        super().__init__(config)
        self.config = config
        if config.use_multi_resolution_stem:
            self.stem = MultiResolutionStem(config)
            self.patch_embed = None
        else:
            self.stem = None
            self.patch_embed = PatchEmbed(config.patch_size, config.hidden_size, config.num_channels)
        self._add_cls_token_and_positions()
        self.pre_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.blocks = nn.ModuleList([PostLNBlock(config, drop_path=rate) for rate in rates])
        self.norm = None  # post-LN blocks: the last block's output is already normalised
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.stem if self.stem is not None else self.patch_embed

    def _embed_patches(self, input_values: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        if self.stem is not None:
            return self.stem(input_values, visible)
        return self.patch_embed(input_values.to(self.patch_embed.proj.weight.dtype))


# --------------------------------------------------------------------------------------------
# Classification and pre-training
# --------------------------------------------------------------------------------------------


class CATForAudioClassification(BootstrapClassifierMixin, CATPreTrainedModel):
    """CAT encoder + ``fc_norm`` + dropout + linear head, as EAT/CAT fine-tune (``use_fc_norm``, CLS pooling).

    In training mode each clip drops a random ``config.finetune_mask_ratio`` of its patch tokens before the
    blocks (unstructured patch-out; 0 by default). The loss follows ``config.problem_type`` (multi-hot float
    labels give BCE-with-logits when it is unset or ``multi_label_classification``).
    """

    def __init__(self, config: CATConfig):
        super().__init__(config)
        self.cat = CATModel(config)
        self._add_head()
        self.post_init()


class CATForPreTraining(BootstrapPreTrainingMixin, CATPreTrainedModel):
    """CAT / EAT bootstrap pre-training: student encoder, decoder (EAT's CNN by default) and RR projector.

    ``forward(input_values, attention_mask=None, teacher_targets=None, rr_targets=None, mask=None)``:

    - ``teacher_targets`` ``(B, N, H)``: the EMA teacher's targets on the unmasked clips, from
      `make_teacher_targets` (required; the teacher lives in the training step);
    - ``rr_targets`` ``(B, rr_embedding_dim)``: a frozen encoder's clip embeddings (CLAP), optional;
    - ``mask`` ``(B * clone_batch, N)`` bool, True = hidden; drawn with `compute_block_mask_2d` from torch's
      global RNG when None.

    Returns `CATForPreTrainingOutput`; the losses are `BootstrapPreTrainingMixin`'s. Stochastic depth is off
    in the student, as in the reference pre-training.
    """

    def __init__(self, config: CATConfig):
        super().__init__(config)
        self.cat = without_stochastic_depth(CATModel(config))
        self._add_pretraining_heads()
        self.post_init()
