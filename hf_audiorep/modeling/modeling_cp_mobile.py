"""CP-Mobile encoder and classifier: the student of ContrastASC (arXiv 2510.03728), after the CP-JKU DCASE
systems (fschmid56/cpjku_dcase23 ``models/cp_mobile_clean.py``, CPJKU/dcase2024_task1_baseline
``models/baseline.py``).

The network sees a log-mel spectrogram as a one-channel image of height ``num_mel_bins`` and width
``frames`` (the CP-JKU layout, so ``(frequency, time)`` strides read as theirs): a stem of two strided 3x3
convolutions, inverted bottleneck blocks (`CPMobileBlock`) in stages, and an output block
(`CPMobileOutputBlock`: a 1x1 convolution, a norm, global average pooling). Where the output block sits
depends on ``config.embedding_size`` (see `CPMobileConfig`):

* ``None``, the reference layout: the output block is the classifier (its convolution emits the classes), and
  the clip embedding is the pooled last feature map. The parameter count is the CP-JKU network's.
* ``D``, ContrastASC's layout: the output block is the end of the encoder and emits a ``D``-dim embedding, on
  which a linear or cosine head (`CosineClassifier`) classifies.

Padding: with an ``attention_mask``, every clip of a batch computes as it would alone, unpadded. Before each
operation that mixes time steps (the 3x3 convolutions, the shortcut's average pooling, GRN's norm over the
feature map, the final pooling) the padded time columns are zeroed, which is what the zero padding of the
convolutions gives a clip on its own; the pooling averages the clip's own columns only. In training mode
BatchNorm's batch statistics still include the padded columns (the CP-JKU systems train on fixed-length 1-s
clips, where there are none).

The modules are named after the paper (``stem``, ``blocks.{i}.expand`` / ``depthwise`` / ``project``,
``grn``, ``output_block``); the CP-JKU checkpoints' ``in_c.{0,1}.{0,1}``, ``stages.s{k}.b{i}.block.{0,1,2}.
{0,1}``, ``after_block_norm`` and ``feed_forward.{0,1}`` map onto them one to one (a key rename).

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ._heads import CosineClassifier
from ._layers import (
    ChannelLayerNorm,
    LayerDecayMixin,
    check_spectrogram_inputs,
    classification_output,
    init_cosine_classifier,
)
from .configuration_cp_mobile import CPMobileConfig, make_divisible

__all__ = [
    "CPMobileBlock",
    "CPMobileForAudioClassification",
    "CPMobileModel",
    "CPMobileModelOutput",
    "CPMobileOutputBlock",
    "CPMobilePreTrainedModel",
    "GlobalResponseNorm",
]

#: the stem's two convolutions both have stride 2 on both axes
STEM_STRIDE = 2


@dataclass
class CPMobileModelOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`CPMobileModel`].

    last_hidden_state (`torch.FloatTensor` of shape `(batch, channels, freq, time)`):
        The last block's feature map (``channels = config.stage_channels[-1]``), zero on padded time
        columns. A feature map, not a token sequence: this is a CNN, and downstream heads pool it.
    pooler_output (`torch.FloatTensor` of shape `(batch, hidden_size)`):
        The clip embedding that distillation and few-shot evaluation read: the mean of ``last_hidden_state``
        over its frequency bins and the clip's own time columns (reference layout), or the output block's
        ``embedding_size``-dim output, pooled the same way (ContrastASC layout).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        ``1 + num_hidden_layers`` feature maps ``(batch, channels_i, freq_i, time_i)``: the stem's output,
        then each block's; the last is ``last_hidden_state``.
    attention_mask (`torch.LongTensor` of shape `(batch, time)`):
        1 on the time columns of ``last_hidden_state`` that come from the clip's own frames.
    """

    attention_mask: torch.LongTensor | None = None


# ---- padding --------------------------------------------------------------------------------------------


def _downsampled(lengths: torch.Tensor | None, stride: int) -> torch.Tensor | None:
    """Valid columns after a 3x3, padding-1 layer of this time stride: column t is centred on input 2t."""
    return None if lengths is None else (lengths + stride - 1) // stride


def _time_mask(lengths: torch.Tensor, num_columns: int) -> torch.Tensor:
    """``(batch, num_columns)`` bool, True on the first ``lengths`` columns."""
    return torch.arange(num_columns, device=lengths.device) < lengths[:, None]


def _zero_padding(feature_map: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """The map with its padded time columns at 0, what a 3x3 convolution's zero padding gives a clip alone."""
    if lengths is None:
        return feature_map
    mask = _time_mask(lengths, feature_map.shape[-1])
    return feature_map * mask[:, None, None, :].to(feature_map.dtype)


def _pool(feature_map: torch.Tensor, time_mask: torch.Tensor | None) -> torch.Tensor:
    """``(batch, channels, freq, time)`` -> ``(batch, channels)``: the mean over frequency and the clip's own
    time columns (``AdaptiveAvgPool2d(1)`` without a mask)."""
    if time_mask is None:
        return feature_map.mean(dim=(2, 3))
    weights = time_mask[:, None, None, :].to(feature_map.dtype)
    count = (time_mask.sum(dim=-1) * feature_map.shape[2]).clamp(min=1).to(feature_map.dtype)
    return (feature_map * weights).sum(dim=(2, 3)) / count[:, None]


# ---- layers ---------------------------------------------------------------------------------------------


class ConvNormActivation(nn.Sequential):
    """Conv2d (no bias, ``same`` padding) + BatchNorm2d (+ ReLU): torchvision's ``Conv2dNormActivation`` as
    CP-Mobile uses it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int | tuple[int, int] = 1,
        groups: int = 1,
        activation: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.norm = nn.BatchNorm2d(out_channels)
        self.activation = nn.ReLU() if activation else nn.Identity()


class GlobalResponseNorm(nn.Module):
    """Global response normalisation (ConvNeXt-V2, Woo et al. 2023) in CP-Mobile's form: a scalar ``gamma``
    and ``beta`` for all channels (two parameters per block).

    Each channel's L2 norm over the feature map, divided by the mean of those norms over channels, rescales
    the channel: ``x + gamma * x * nx + beta``. Both start at 0, so a new block starts as the identity.
    """

    eps = 1e-6

    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        norms = torch.linalg.vector_norm(feature_map, dim=(2, 3), keepdim=True)
        relative = norms / (norms.mean(dim=1, keepdim=True) + self.eps)
        return self.gamma * (feature_map * relative) + self.beta + feature_map


class CPMobileStem(nn.Module):
    """Two 3x3 convolutions of stride 2 (+ BN + ReLU), to a quarter and then all of the base channels."""

    def __init__(self, num_channels: int, base_channels: int):
        super().__init__()
        self.conv1 = ConvNormActivation(num_channels, base_channels // 4, 3, stride=STEM_STRIDE)
        self.conv2 = ConvNormActivation(base_channels // 4, base_channels, 3, stride=STEM_STRIDE)

    def forward(
        self, feature_map: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        for layer in (self.conv1, self.conv2):
            feature_map = layer(_zero_padding(feature_map, lengths))
            lengths = _downsampled(lengths, STEM_STRIDE)
        return _zero_padding(feature_map, lengths), lengths


class CPMobileBlock(nn.Module):
    """Inverted bottleneck: 1x1 expansion (+ BN + ReLU), 3x3 depthwise with the block's stride (+ BN + ReLU),
    1x1 projection (+ BN); the input added back when the channels match (through a 3x3 average pooling of the
    same stride when the block is strided); optional GRN; ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        expansion_rate: float,
        stride: tuple[int, int],
        use_grn: bool,
    ):
        super().__init__()
        expanded = make_divisible(in_channels * expansion_rate)
        self.stride = tuple(stride)
        self.expand = ConvNormActivation(in_channels, expanded, 1)
        self.depthwise = ConvNormActivation(expanded, expanded, 3, stride=self.stride, groups=expanded)
        self.project = ConvNormActivation(expanded, out_channels, 1, activation=False)
        self.shortcut = None
        if in_channels == out_channels:
            strided = self.stride != (1, 1)
            self.shortcut = nn.AvgPool2d(3, stride=self.stride, padding=1) if strided else nn.Identity()
        self.grn = GlobalResponseNorm() if use_grn else None
        self.activation = nn.ReLU()

    def forward(
        self, feature_map: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``feature_map`` is zero on its padded columns; so is the output, of valid lengths returned."""
        hidden = self.depthwise(_zero_padding(self.expand(feature_map), lengths))
        lengths = _downsampled(lengths, self.stride[1])
        hidden = self.project(hidden)
        if self.shortcut is not None:
            hidden = hidden + self.shortcut(feature_map)
        if self.grn is not None:
            hidden = self.grn(_zero_padding(hidden, lengths))
        return _zero_padding(self.activation(hidden), lengths), lengths


class CPMobileOutputBlock(nn.Module):
    """1x1 convolution (no bias), BatchNorm or a LayerNorm over channels, then the mean over frequency and the
    clip's own time columns: ``(batch, in_channels, freq, time)`` -> ``(batch, out_channels)``."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, layer_norm_eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(out_channels)
        elif norm == "layer":
            self.norm = ChannelLayerNorm(out_channels, eps=layer_norm_eps)
        else:
            raise ValueError(f"norm must be 'batch' or 'layer', got {norm!r}")

    def forward(self, feature_map: torch.Tensor, time_mask: torch.Tensor | None = None) -> torch.Tensor:
        return _pool(self.norm(self.conv(feature_map)), time_mask)


# ---- models ---------------------------------------------------------------------------------------------


class CPMobilePreTrainedModel(LayerDecayMixin, PreTrainedModel):
    """Layer ids for layer-wise lr decay: the stem 0, block ``i`` ``i + 1``, the output block and the head
    ``num_hidden_layers + 1``.

    No gradient checkpointing: recomputing a block in the backward pass would update BatchNorm's running
    statistics twice per step, and the feature maps of a model this small are cheap to keep. No attention
    either, so ``attn_implementation`` has nothing to choose.
    """

    config: CPMobileConfig
    base_model_prefix = "cp_mobile"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    embedding_param_prefixes = ("stem.",)
    supports_gradient_checkpointing = False
    _no_split_modules = ["CPMobileBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The CP-JKU initialisation: convolutions Kaiming-normal over their fan-out, linear layers N(0, 0.01)
        with zero bias, norms ones / zeros (and BatchNorm's running statistics reset); GRN's scalars 0."""
        if isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, std=0.01)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, CosineClassifier):
            init_cosine_classifier(module)
        elif isinstance(module, GlobalResponseNorm):
            init.zeros_(module.gamma)
            init.zeros_(module.beta)
        else:
            super()._init_weights(module)


class CPMobileModel(CPMobilePreTrainedModel):
    """The CP-Mobile encoder: stem and blocks (and, with ``config.embedding_size``, the output block).

    ``forward(input_values, attention_mask=None, output_hidden_states=None)``:

    - ``input_values`` ``(batch, frames, num_mel_bins)`` as `LogMelFeatureExtractor` returns it (or
      ``(batch, channels, frames, num_mel_bins)`` with ``config.num_channels > 1``); any number of frames.
    - ``attention_mask`` ``(batch, frames)``: 1 on valid frames, a prefix of each row. A clip's outputs do not
      depend on its padding (see the module docstring).

    Returns `CPMobileModelOutput`: ``last_hidden_state`` (the last feature map), ``pooler_output`` (the clip
    embedding, ``config.hidden_size`` wide), its ``attention_mask`` over time columns, and ``hidden_states``
    on request.
    """

    def __init__(self, config: CPMobileConfig):
        super().__init__(config)
        self.config = config
        channels = config.stage_channels
        self.stem = CPMobileStem(config.num_channels, channels[0])
        stage_of_block = [stage for stage, count in enumerate(config.n_blocks) for _ in range(count)]
        in_channels = (channels[0], *(channels[stage + 1] for stage in stage_of_block[:-1]))
        self.blocks = nn.ModuleList(
            CPMobileBlock(c_in, channels[stage + 1], config.expansion_rate, stride, config.use_grn)
            for c_in, stage, stride in zip(in_channels, stage_of_block, config.strides, strict=True)
        )
        self.output_block = None
        if config.embedding_size is not None:
            self.output_block = CPMobileOutputBlock(
                channels[-1], config.embedding_size, config.output_norm, config.layer_norm_eps
            )
        self.post_init()

    def _lengths(self, attention_mask: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
        if attention_mask is None:
            return None
        attention_mask = attention_mask.to(self.stem.conv1.conv.weight.device)
        lengths = attention_mask.long().sum(dim=-1)
        if not torch.equal(attention_mask.bool(), _time_mask(lengths, num_frames)):
            raise ValueError("attention_mask must be 1 on a prefix of each row (valid frames first)")
        return lengths

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CPMobileModelOutput:
        config = self.config
        # A CNN takes any number of frames: no longest input to check against.
        check_spectrogram_inputs(
            input_values, attention_mask, config.num_mel_bins, math.inf, config.num_channels
        )
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        lengths = self._lengths(attention_mask, input_values.shape[-2])
        weight = self.stem.conv1.conv.weight
        image = input_values.to(device=weight.device, dtype=weight.dtype)
        image = image.unsqueeze(1) if image.ndim == 3 else image
        image = image.transpose(-1, -2)  # (batch, channels, mel bins, frames): the CP-JKU layout

        feature_map, lengths = self.stem(image, lengths)
        all_hidden_states = [feature_map] if output_hidden_states else None
        for block in self.blocks:
            feature_map, lengths = block(feature_map, lengths)
            if output_hidden_states:
                all_hidden_states.append(feature_map)
        time_mask = None if lengths is None else _time_mask(lengths, feature_map.shape[-1])
        if self.output_block is not None:
            pooled = self.output_block(feature_map, time_mask)
        else:
            pooled = _pool(feature_map, time_mask)
        if time_mask is None:
            time_mask = feature_map.new_ones(feature_map.shape[0], feature_map.shape[-1], dtype=torch.bool)
        return CPMobileModelOutput(
            last_hidden_state=feature_map,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attention_mask=time_mask.long(),
        )


class CPMobileForAudioClassification(CPMobilePreTrainedModel):
    """CP-Mobile classifier.

    In the reference layout (``config.embedding_size=None``) ``classifier`` is the output block: a 1x1
    convolution to ``num_labels`` channels and its norm, pooled over the last feature map; the logits are its
    output, as in the CP-JKU network. In ContrastASC's layout it is a linear layer or a `CosineClassifier`
    (``config.classifier``) on the encoder's ``embedding_size``-dim clip embedding. With ``num_labels=0`` the
    logits are the clip embedding itself.

    The loss follows ``config.problem_type`` (``single_label_classification`` for acoustic scenes).
    """

    def __init__(self, config: CPMobileConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cp_mobile = CPMobileModel(config)
        self.classifier = self._head(config)
        self.post_init()

    @staticmethod
    def _head(config: CPMobileConfig) -> nn.Module:
        if config.num_labels == 0:
            return nn.Identity()
        if config.embedding_size is None:
            return CPMobileOutputBlock(
                config.stage_channels[-1], config.num_labels, config.output_norm, config.layer_norm_eps
            )
        if config.classifier == "cosine":
            return CosineClassifier(config.embedding_size, config.num_labels, config.cosine_scale)
        return nn.Linear(config.embedding_size, config.num_labels)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        r"""
        labels (`torch.Tensor`, *optional*): ``(batch,)`` class indices for ``single_label_classification``,
            ``(batch, num_labels)`` multi-hot floats for ``multi_label_classification``.
        """
        outputs: CPMobileModelOutput = self.cp_mobile(
            input_values, attention_mask=attention_mask, output_hidden_states=output_hidden_states
        )
        if isinstance(self.classifier, CPMobileOutputBlock):
            logits = self.classifier(outputs.last_hidden_state, outputs.attention_mask.bool())
        else:
            logits = self.classifier(outputs.pooler_output)
        return classification_output(self, logits, labels, outputs, **kwargs)
