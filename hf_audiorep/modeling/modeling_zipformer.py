"""Zipformer encoder and audio classifier: the UTS audio encoder (arXiv 2603.25767) and its multi-label
tagging (MTC) head, after Yao et al. 2023 ("Zipformer: A faster and better encoder for ASR") and icefall's
``Zipformer2`` / AudioSet tagging model (``egs/audioset/AT/zipformer``).

The encoder is a U-Net-like sequence of stacks: `Conv2dSubsampling` takes 100 frames/s fbank to 50 frames/s;
each stack downsamples by its ``downsampling_factor`` (`SimpleDownsample`), runs its Zipformer layers, repeats
frames back to 50 frames/s and mixes the result with its input (`BypassModule`); the widest channels of the
most recent stacks form the output, downsampled once more to 25 frames/s. The building blocks and where they
depart from icefall are in `_zipformer_layers`.

The layers of all stacks are one ``blocks`` list numbered across stacks (``blocks.{i}``), so layer-wise lr
decay and LoRA see the layers in the order the input meets them; ``stacks.{s}`` holds what surrounds stack
``s``'s layers (its downsampling and output bypass).

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

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
    LayerDecayMixin,
    check_spectrogram_inputs,
    classification_output,
    classifier_head,
    init_cosine_classifier,
    masked_mean,
)
from ._zipformer_layers import (
    BiasNorm,
    BypassModule,
    Conv2dSubsampling,
    SimpleDownsample,
    SimpleUpsample,
    ZipformerEncoderLayer,
    compact_rel_positional_encoding,
    convert_num_channels,
    downsampled_lengths,
    full_dim_output,
    padding_mask,
)
from .configuration_zipformer import ZipformerConfig

__all__ = [
    "ZipformerForAudioClassification",
    "ZipformerModel",
    "ZipformerModelOutput",
    "ZipformerPreTrainedModel",
    "ZipformerStack",
]

#: the shortest input: Conv2dSubsampling turns T frames into (T - 7) // 2
MIN_FRAMES = 9


@dataclass
class ZipformerModelOutput(BaseModelOutputWithPooling):
    r"""
    Output of [`ZipformerModel`].

    last_hidden_state (`torch.FloatTensor` of shape `(batch, frames, hidden_size)`):
        The encoder output at 25 frames/s (``50 / output_downsampling_factor``); zero on padding frames.
    pooler_output (`torch.FloatTensor` of shape `(batch, hidden_size)`):
        Mean of ``last_hidden_state`` over each clip's valid frames.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*, returned with `output_hidden_states=True`):
        ``1 + num_stacks`` tensors shaped like ``last_hidden_state`` (same rate and width, zero on padding):
        the front end's output, then the encoder output as it stands after each stack (every channel from the
        most recent stack that has it, zeros for channels no stack has produced yet), all brought to the
        output rate by the final downsampling. Stack ``s`` itself runs at ``50 / downsampling_factor[s]``
        frames/s (``config.frame_rates``); the last entry is ``last_hidden_state``.
    attention_mask (`torch.LongTensor` of shape `(batch, frames)`):
        1 on the valid frames of ``last_hidden_state``.
    output_lengths (`torch.LongTensor` of shape `(batch,)`):
        Valid frames of ``last_hidden_state`` per clip.
    attentions (`tuple(torch.FloatTensor)`, *optional*, returned with `output_attentions=True`):
        One tensor per layer, ``(batch, num_heads, T_s, T_s)`` with ``T_s`` the frames of the layer's stack
        (at ``config.frame_rates[s]``): the softmax weights that the layer's two self-attentions and its
        non-linear attention share; padding keys get zero weight.
    """

    attention_mask: torch.LongTensor | None = None
    output_lengths: torch.LongTensor | None = None


class ZipformerPreTrainedModel(LayerDecayMixin, PreTrainedModel):
    config: ZipformerConfig
    base_model_prefix = "zipformer"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    # Layer decay: the front end sits below layer 0 (see get_layer_id for the stacks' own parameters).
    embedding_param_prefixes = ("embed.",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["ZipformerEncoderLayer"]
    # The relative-position scores are an additive float mask: SDPA's math and memory-efficient kernels
    # take it, flash attention cannot.
    _supports_sdpa = True

    def get_layer_id(self, param_name: str) -> int:
        """``embed.*`` 0, ``blocks.i`` ``i + 1``; a stack's downsampling gets its first layer's id, its output
        bypass its last layer's; the output downsampling and the head the top id."""
        name = param_name.removeprefix(f"{self.base_model_prefix}.")
        if name.startswith("stacks."):
            stack = int(name.split(".")[1])
            first = sum(self.config.num_encoder_layers[:stack])
            if ".downsample." in name:
                return first + 1
            return first + self.config.num_encoder_layers[stack]
        return super().get_layer_id(param_name)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """icefall's initialisation: PyTorch's default ranges, shrunk by ``initial_scale`` where icefall uses
        a ``ScaledLinear`` / ``ScaledConv2d`` (weights U(+-s/sqrt(fan_in)), biases U(+-0.1 s)); BiasNorm
        ``log_scale`` 1 and a tiny bias; bypass scales 0.5; equal downsampling weights."""
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            scale = getattr(module, "initial_scale", 1.0)
            bound = module.weight[0].numel() ** -0.5
            init.uniform_(module.weight, -bound * scale, bound * scale)
            if module.bias is not None:
                bias_bound = 0.1 * scale if scale != 1.0 else bound
                init.uniform_(module.bias, -bias_bound, bias_bound)
        elif isinstance(module, BiasNorm):
            init.constant_(module.log_scale, 1.0)
            init.normal_(module.bias, std=1e-4)
        elif isinstance(module, BypassModule):
            init.constant_(module.bypass_scale, 0.5)
        elif isinstance(module, SimpleDownsample):
            init.zeros_(module.bias)
        elif isinstance(module, CosineClassifier):
            init_cosine_classifier(module)


class ZipformerStack(nn.Module):
    """What surrounds one stack's layers: `SimpleDownsample` in, `SimpleUpsample` and the output
    `BypassModule` out (icefall's ``DownsampledZipformer2Encoder``), or nothing for a stack at 50 frames/s."""

    def __init__(self, config: ZipformerConfig, index: int):
        super().__init__()
        self.index = index
        self.dim = config.encoder_dim[index]
        self.downsampling_factor = factor = config.downsampling_factor[index]
        self.downsample = self.upsample = self.out_combiner = None
        if factor != 1:
            self.downsample = SimpleDownsample(factor)
            self.upsample = SimpleUpsample(factor)
            self.out_combiner = BypassModule(self.dim)

    def enter(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The stack's input at its own rate, and the valid frames per clip there."""
        if self.downsample is None:
            return hidden_states, lengths
        downsampled = self.downsample(hidden_states, lengths)
        return downsampled, downsampled_lengths(lengths, self.downsampling_factor)

    def leave(self, stack_input: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """Back to 50 frames/s, mixed with the stack's input."""
        if self.upsample is None:
            return hidden_states
        # Frame t of the stack's input reads frame t // factor: the repeat cut to that length, gathered
        # directly so that `torch.export` need not compare the two lengths (it would fix their parity).
        frames = torch.arange(stack_input.shape[1], device=hidden_states.device) // self.upsample.upsample
        upsampled = hidden_states.index_select(1, frames)
        return self.out_combiner(stack_input, upsampled)


class ZipformerModel(ZipformerPreTrainedModel):
    """The Zipformer encoder (icefall's ``encoder_embed`` + ``Zipformer2``).

    ``forward(input_values, attention_mask=None, output_hidden_states=None)``:

    - ``input_values`` ``(batch, frames, num_mel_bins)``: 80-bin fbank at 100 frames/s, as
      `ZipformerFbankFeatureExtractor` returns it; at least 9 frames.
    - ``attention_mask`` ``(batch, frames)``: 1 on valid frames, a prefix of each row (the feature extractor's
      padding mask). Padding never changes a clip's valid outputs: attention ignores padding keys, the
      convolutions see zeros there, and the downsamplings pad a clip with its own last frame.

    Returns `ZipformerModelOutput`: ``last_hidden_state`` ``(batch, ceil(((frames - 7) // 2) / 2),
    hidden_size)`` at 25 frames/s, ``pooler_output`` (masked mean over valid frames), ``attention_mask`` /
    ``output_lengths`` of the output frames, and ``hidden_states`` on request (see `ZipformerModelOutput`).

    zipformer-m has 65,907,959 parameters, zipformer-small 1,304,991 (see `ZIPFORMER_PRESETS`).
    """

    # AutoModel on a saved captioner or contrastive model loads the encoder alone: the decoder, text tower,
    # projections and logit scale are left out by design, not worth an "UNEXPECTED" report on every load.
    _keys_to_ignore_on_load_unexpected = [
        r"^caption_decoder\.",
        r"^enc_to_dec_proj\.",
        r"^text_model\.",
        r"^(audio|text)_projection\.",
        r"^logit_scale$",
    ]

    def __init__(self, config: ZipformerConfig):
        super().__init__(config)
        self.config = config
        self.embed = Conv2dSubsampling(
            config.num_mel_bins,
            config.encoder_dim[0],
            channels=config.subsampling_channels,
            dropout=config.hidden_dropout_prob,
        )
        self.blocks = nn.ModuleList(
            [
                ZipformerEncoderLayer(
                    embed_dim=config.encoder_dim[s],
                    pos_dim=config.pos_dim,
                    num_heads=config.num_heads[s],
                    query_head_dim=config.query_head_dim[s],
                    pos_head_dim=config.pos_head_dim[s],
                    value_head_dim=config.value_head_dim[s],
                    feedforward_dim=config.feedforward_dim[s],
                    cnn_module_kernel=config.cnn_module_kernel[s],
                    dropout=config.hidden_dropout_prob,
                )
                for s in range(config.num_stacks)
                for _ in range(config.num_encoder_layers[s])
            ]
        )
        self.stacks = nn.ModuleList([ZipformerStack(config, s) for s in range(config.num_stacks)])
        self.position_dropout = nn.Dropout(config.position_dropout_prob)
        self.downsample_output = SimpleDownsample(config.output_downsampling_factor)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The front end's output norm, the last module of `Conv2dSubsampling` that returns the frames alone:
        transformers' `enable_input_require_grads` (PEFT's path to adapters under reentrant checkpointing)
        hooks the returned module's output tensor, and the front end itself returns ``(frames, lengths)``."""
        return self.embed.out_norm

    def stack_blocks(self, stack: int) -> list[ZipformerEncoderLayer]:
        """The layers of stack ``stack``, in order."""
        first = sum(self.config.num_encoder_layers[:stack])
        return list(self.blocks[first : first + self.config.num_encoder_layers[stack]])

    def feature_masks(self, batch: int, device, dtype) -> list[torch.Tensor | None]:
        """icefall's training-time feature masks, one ``(batch, 1, encoder_dim)`` per stack (None in eval
        mode): per clip, the channels above ``encoder_unmasked_dim`` are zeroed with probability
        ``feature_mask_prob``, the upper half of them about twice as often."""
        prob = self.config.feature_mask_prob
        if not self.training or prob == 0:
            return [None] * self.config.num_stacks
        keep1 = (torch.rand(batch, 1, device=device) > prob).to(dtype)
        keep2 = keep1 * (torch.rand(batch, 1, device=device) > prob).to(dtype)
        masks = []
        for dim, unmasked in zip(self.config.encoder_dim, self.config.encoder_unmasked_dim, strict=True):
            middle = unmasked + (dim - unmasked) // 2
            mask = torch.ones(batch, dim, device=device, dtype=dtype)
            mask[:, unmasked:middle] = keep1
            mask[:, middle:] = keep2
            masks.append(mask[:, None, :])
        return masks

    def _output(self, outputs: list[torch.Tensor], lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.downsample_output(full_dim_output(outputs, self.config.hidden_size), lengths)
        return hidden * mask[..., None].to(hidden.dtype)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ZipformerModelOutput:
        config = self.config
        check_spectrogram_inputs(input_values, attention_mask, config.num_mel_bins, config.max_length)
        batch, num_frames = input_values.shape[:2]
        if num_frames < MIN_FRAMES:
            raise ValueError(
                f"input_values has {num_frames} frames; the Zipformer needs at least {MIN_FRAMES}"
            )
        if output_hidden_states is None:
            output_hidden_states = config.output_hidden_states
        if output_attentions is None:
            output_attentions = config.output_attentions
        device = input_values.device
        if attention_mask is None:
            lengths = torch.full((batch,), num_frames, device=device, dtype=torch.long)
        else:
            attention_mask = attention_mask.to(device)
            lengths = attention_mask.long().sum(dim=-1)
            if not torch.equal(attention_mask.bool(), ~padding_mask(lengths, num_frames)):
                raise ValueError("attention_mask must be 1 on a prefix of each row (valid frames first)")

        hidden_states, lengths = self.embed(input_values.to(self.embed.conv1.weight.dtype), lengths)
        factor = config.output_downsampling_factor
        out_lengths = downsampled_lengths(lengths, factor)
        out_mask = ~padding_mask(out_lengths, (hidden_states.shape[1] + factor - 1) // factor)
        feature_masks = self.feature_masks(batch, device, hidden_states.dtype)
        # sdpa never forms the weights; the eager path gives the same outputs (to rounding) and keeps them.
        implementation = "eager" if output_attentions else config._attn_implementation
        all_attentions = [] if output_attentions else None
        outputs, all_hidden_states = [], []
        if output_hidden_states:
            all_hidden_states.append(self._output([hidden_states], lengths, out_mask))
        for s, stack in enumerate(self.stacks):
            hidden_states = convert_num_channels(hidden_states, config.encoder_dim[s])
            x, stack_lengths = stack.enter(hidden_states, lengths)
            pad = padding_mask(stack_lengths, x.shape[1])
            pos_emb = compact_rel_positional_encoding(
                x.shape[1], config.pos_dim, device=device, dtype=x.dtype
            )
            pos_emb = self.position_dropout(pos_emb)
            if feature_masks[s] is not None:
                x = x * feature_masks[s]
            for block in self.stack_blocks(s):
                x = block(x, pos_emb, pad, implementation, all_attentions)
                if feature_masks[s] is not None:
                    x = x * feature_masks[s]
            hidden_states = stack.leave(hidden_states, x)
            outputs.append(hidden_states)
            if output_hidden_states:
                all_hidden_states.append(self._output(outputs, lengths, out_mask))

        if output_hidden_states:
            last_hidden_state = all_hidden_states[-1]
        else:
            last_hidden_state = self._output(outputs, lengths, out_mask)
        return ZipformerModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=masked_mean(last_hidden_state, out_mask, dim=1),
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            attention_mask=out_mask.long(),
            output_lengths=out_lengths,
        )


def _normalise_valid_frames(
    norm: nn.BatchNorm1d, frames: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``norm`` over the valid frames only, so that padding never enters the batch statistics; padded frames
    come back as zeros (the clip's mean skips them)."""
    if mask is None:
        return norm(frames.flatten(0, 1)).view_as(frames)
    valid = mask.bool()
    normalised = frames.new_zeros(frames.shape)
    normalised[valid] = norm(frames[valid])
    return normalised


def add_mtc_head(model: nn.Module, config: ZipformerConfig) -> None:
    """Give ``model`` Auden's MTC head as ``dropout``, ``classifier_norm`` and ``classifier`` (read by
    `mtc_logits`): the tagger's head, and the captioner's multi-task head under the same names."""
    model.dropout = nn.Dropout(config.classifier_dropout)
    # Standardised frames let plain gradient steps fit the small directions that tell clips apart rather
    # than the one large direction an untrained encoder's frames share (docs/benchmarks.md).
    model.classifier_norm = None
    if config.classifier_norm == "batch" and config.num_labels > 0:
        model.classifier_norm = nn.BatchNorm1d(config.hidden_size, affine=False)
    model.classifier = classifier_head(config)


def mtc_logits(head: nn.Module, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Auden's MTC head on the encoder's frames: ``head.dropout`` and ``head.classifier`` on every frame
    (after ``head.classifier_norm`` when set), logits averaged over each clip's valid frames. Shared by the
    tagger and the captioner's multi-task head, so both read the frames the same way."""
    if head.classifier_norm is not None:
        frames = _normalise_valid_frames(head.classifier_norm, frames, mask)
    return masked_mean(head.classifier(head.dropout(frames)), mask, dim=1)


class ZipformerForAudioClassification(ZipformerPreTrainedModel):
    """Zipformer encoder + Auden's MTC head: dropout and a linear layer on every output frame, logits averaged
    over each clip's valid frames (icefall's AudioSet tagger has the same head).

    The loss follows ``config.problem_type``: ``multi_label_classification`` is MTC's BCE with logits,
    mean-reduced (Auden and icefall sum it over the batch and classes, which their ScaledAdam learning rates
    are tuned for).
    """

    def __init__(self, config: ZipformerConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.zipformer = ZipformerModel(config)
        add_mtc_head(self, config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ):
        r"""
        labels (`torch.Tensor`, *optional*): ``(batch, num_labels)`` multi-hot floats for
            ``multi_label_classification``, ``(batch,)`` class indices for ``single_label_classification``.
        """
        outputs: ZipformerModelOutput = self.zipformer(
            input_values,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        logits = mtc_logits(self, outputs.last_hidden_state, outputs.attention_mask)
        return classification_output(self, logits, labels, outputs, **kwargs)
