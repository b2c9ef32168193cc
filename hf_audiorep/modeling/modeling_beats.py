"""BEATs encoder and audio classifier (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers",
2022), the teacher of ContrastASC.

The computation is that of microsoft/unilm ``beats/`` (a fairseq wav2vec2-style encoder over spectrogram
patches), checked against it numerically on a tiny random model (``tests/fixtures/beats``):

- 16 x 16 patches of the fbank by a strided conv (a partial last time patch is dropped, as the reference's
  conv drops it), LayerNorm, a linear projection to the encoder width;
- a grouped convolution over the patch sequence added as positional embedding (wav2vec2's), then LayerNorm
  (post-LN) and the blocks;
- in every block, multi-head attention with a T5-style bucketed relative position bias shared by all blocks,
  optionally scaled per query and head by WavLM's gate (``gru_rel_pos``), and post-LN residuals scaled by
  DeepNet's alpha (``deep_norm``).

Attention goes through ``ALL_ATTENTION_FUNCTIONS`` (SDPA by default); the relative position bias travels
as the ``position_bias`` argument of transformers' SDPA kernel, which folds it into SDPA's additive float
mask, so the fused flash kernels (which take no bias) are not used; the eager kernel adds it to its mask. The
reference scales the query by 1/32 and subtracts each row's maximum before multiplying back by 32, a guard
against fp16 overflow that leaves the softmax unchanged, so it is not reproduced.

Parameter names follow the reference (``self_attn.q_proj``, ``fc1``, ``final_layer_norm``, ...) under the
``beats.`` prefix, except for four changes made by `hf_audiorep.conversion.beats`: the blocks are the
library's ``encoder.blocks.{i}`` (the name LoRA and layer-wise decay look for) rather than
``encoder.layers.{i}``, the weight-normalised positional conv is one plain weight, the relative position table
(one module shared by every reference block) is stored once as ``encoder.relative_attention_bias``, and the
gate parameters take WavLM's names in transformers (``gru_rel_pos_linear``, ``gru_rel_pos_const``).
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ._heads import CosineClassifier
from ._layers import (
    LayerDecayMixin,
    check_spectrogram_inputs,
    classification_output,
    classifier_head,
    eager_attention_forward,
    init_cosine_classifier,
    masked_mean,
)
from .configuration_beats import BEATsConfig

__all__ = [
    "BEATsForAudioClassification",
    "BEATsModel",
    "BEATsPreTrainedModel",
    "reference_patch_padding_mask",
    "relative_position_buckets",
]

# Outputs of the gate's projection: two gates (a, b), each the sum of 4 units (WavLM's fixed layout).
_GATE_UNITS = 8


def relative_position_buckets(
    num_tokens: int, num_buckets: int, max_distance: int, device: torch.device | None = None
) -> torch.Tensor:
    """T5's bidirectional bucketing of ``key - query`` offsets: ``(num_tokens, num_tokens)`` long bucket ids.

    Half the buckets per direction (positive offsets in the upper half); within one direction, offsets below a
    quarter of ``num_buckets`` get a bucket each, longer ones share logarithmically wider buckets up to
    ``max_distance``, beyond which they share the last one.
    """
    positions = torch.arange(num_tokens, device=device)
    offsets = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (offsets > 0).long() * half
    distance = offsets.abs()
    max_exact = half // 2
    # Clamped to 1 inside the log only so that the unused branch of `where` stays finite for distance 0.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    far = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, far)


def reference_patch_padding_mask(frame_padding: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The reference's reduction of a frame-level padding mask (True on padding) to its patch sequence.

    BEATs drops the last ``frames % num_patches`` frames and calls patch ``p`` padding when the
    ``frames // num_patches`` consecutive frames from ``p * (frames // num_patches)`` are all padding. That is
    not the patch's own time column (patches run frequency-fastest), but with trailing padding it marks the
    same tail of the sequence to within one time column; it is kept because the released fine-tuned models
    were trained and evaluated with it.
    """
    batch, num_frames = frame_padding.shape
    if num_frames < num_patches:
        raise ValueError(
            f"a padding mask of {num_frames} frames cannot be reduced to {num_patches} patches the "
            "reference's way (num_mel_bins / patch_size must not exceed patch_size)"
        )
    frames = frame_padding[:, : num_frames - num_frames % num_patches]
    return frames.reshape(batch, num_patches, -1).all(dim=-1)


def beats_eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    position_bias: torch.Tensor | None = None,
    **kwargs: Unpack[TransformersKwargs],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The library's eager attention with BEATs' relative position bias added to its additive mask (the
    eager counterpart of what transformers' SDPA kernel does with ``position_bias``)."""
    if position_bias is not None:
        attention_mask = position_bias if attention_mask is None else attention_mask + position_bias
    return eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout, **kwargs)


class BEATsAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections and an optional relative position bias,
    gated per query and head when ``config.gru_rel_pos``.

    The gate (WavLM's) reads the query projection of each head: ``Linear(head_dim, 8)`` summed in two groups
    of 4 gives ``a, b = sigmoid(...)``, and the bias of that query's row is scaled by ``a (b c - 1) + 2`` with
    a learned per-head ``c``.
    """

    def __init__(self, config: BEATsConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        # Read by the SDPA integration: an encoder never uses a causal mask.
        self.is_causal = False
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.gru_rel_pos_linear = None
        if config.gru_rel_pos:
            self.gru_rel_pos_linear = nn.Linear(self.head_dim, _GATE_UNITS)
            self.gru_rel_pos_const = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))

    def _gated(self, position_bias: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        # query: (B, heads, N, head_dim), before scaling; position_bias: (1, heads, N, N).
        batch, heads, num_tokens, _ = query.shape
        gates = self.gru_rel_pos_linear(query).view(batch, heads, num_tokens, 2, _GATE_UNITS // 2).sum(-1)
        gate_a, gate_b = torch.sigmoid(gates).chunk(2, dim=-1)
        scale = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
        return scale * position_bias

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, num_tokens, _ = hidden_states.shape
        shape = (batch, num_tokens, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        if position_bias is not None:
            if self.gru_rel_pos_linear is not None:
                position_bias = self._gated(position_bias, query)
            position_bias = position_bias.expand(batch, -1, -1, -1).to(query.dtype)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, beats_eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            position_bias=position_bias,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch, num_tokens, -1)
        return self.out_proj(attn_output), attn_weights


class BEATsEncoderLayer(GradientCheckpointingLayer):
    """One fairseq transformer block: post-LN (optionally with deep-norm residual scaling) or pre-LN."""

    def __init__(self, config: BEATsConfig):
        super().__init__()
        self.layer_norm_first = config.layer_norm_first
        # DeepNet: the residual branch is up-weighted by (2N)^(1/4) before each post-LN.
        self.residual_scale = (2 * config.num_hidden_layers) ** 0.25 if config.deep_norm else 1.0
        self.self_attn = BEATsAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.activation_dropout = nn.Dropout(config.activation_dropout)
        if config.deep_norm:
            # DeepNet's initialisation, read by `_init_weights`: xavier-normal, the value, output and
            # feed-forward projections scaled down by beta = (8N)^(-1/4).
            beta = (8 * config.num_hidden_layers) ** -0.25
            attention = self.self_attn
            for linear, gain in (
                (attention.q_proj, 1.0),
                (attention.k_proj, 1.0),
                (attention.v_proj, beta),
                (attention.out_proj, beta),
                (self.fc1, beta),
                (self.fc2, beta),
            ):
                linear.deep_norm_gain = gain

    def _feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.activation_dropout(self.activation(self.fc1(hidden_states)))
        return self.dropout(self.fc2(hidden_states))

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        if self.layer_norm_first:
            attn_output, _ = self.self_attn(
                self.self_attn_layer_norm(hidden_states), attention_mask, position_bias, **kwargs
            )
            hidden_states = hidden_states + self.dropout(attn_output)
            return hidden_states + self._feed_forward(self.final_layer_norm(hidden_states))
        attn_output, _ = self.self_attn(hidden_states, attention_mask, position_bias, **kwargs)
        hidden_states = self.self_attn_layer_norm(
            hidden_states * self.residual_scale + self.dropout(attn_output)
        )
        return self.final_layer_norm(hidden_states * self.residual_scale + self._feed_forward(hidden_states))


class BEATsPositionalConvEmbedding(nn.Module):
    """wav2vec2's positional embedding: ``GELU(grouped Conv1d)`` over the token sequence, same length out.

    The reference parametrises the conv weight with weight norm; here it is the plain weight that
    parametrisation computes (`hf_audiorep.conversion.beats` folds it), so inference is identical and
    fine-tuning updates the weight directly.
    """

    def __init__(self, config: BEATsConfig):
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        # An even kernel with padding k // 2 yields one output more than its input: drop the last.
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0
        self.activation = nn.GELU()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        positions = self.conv(hidden_states.transpose(1, 2))
        if self.num_pad_remove:
            positions = positions[:, :, : -self.num_pad_remove]
        return self.activation(positions).transpose(1, 2)


class BEATsEncoder(nn.Module):
    """Positional conv, LayerNorm (before the blocks when post-LN, after them when pre-LN) and the blocks,
    with one relative position table shared by all of them."""

    def __init__(self, config: BEATsConfig):
        super().__init__()
        self.config = config
        self.pos_conv = BEATsPositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_attention_bias = None
        if config.relative_position_embedding:
            self.relative_attention_bias = nn.Embedding(config.num_buckets, config.num_attention_heads)
        self.blocks = nn.ModuleList([BEATsEncoderLayer(config) for _ in range(config.num_hidden_layers)])

    def position_bias(self, num_tokens: int) -> torch.Tensor | None:
        """``(1, heads, N, N)`` relative position bias before gating, or None without one."""
        if self.relative_attention_bias is None:
            return None
        table = self.relative_attention_bias
        buckets = relative_position_buckets(
            num_tokens, self.config.num_buckets, self.config.max_distance, device=table.weight.device
        )
        return table(buckets).permute(2, 0, 1).unsqueeze(0)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> torch.Tensor:
        if padding_mask is not None:
            # Padding must not leak into real tokens through the positional conv.
            hidden_states = hidden_states.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        hidden_states = hidden_states + self.pos_conv(hidden_states)
        if not self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        hidden_states = self.dropout(hidden_states)

        attention_mask = create_bidirectional_mask(
            config=self.config,
            inputs_embeds=hidden_states,
            attention_mask=None if padding_mask is None else (~padding_mask).long(),
        )
        position_bias = self.position_bias(hidden_states.shape[1])
        for layer in self.blocks:
            if self.training and self.config.layerdrop > 0 and torch.rand(()) < self.config.layerdrop:
                continue
            hidden_states = layer(hidden_states, attention_mask, position_bias, **kwargs)
        if self.config.layer_norm_first:
            hidden_states = self.layer_norm(hidden_states)
        return hidden_states


class BEATsPreTrainedModel(LayerDecayMixin, PreTrainedModel):
    config: BEATsConfig
    base_model_prefix = "beats"
    # Layer-wise lr decay: what runs before block 0 (the encoder's LayerNorm does in the post-LN checkpoints;
    # the relative position table feeds every block and is kept with the embeddings).
    embedding_param_prefixes = (
        "patch_embedding.",
        "layer_norm.",
        "post_extract_proj.",
        "encoder.pos_conv.",
        "encoder.layer_norm.",
        "encoder.relative_attention_bias.",
    )
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["BEATsEncoderLayer"]
    _supports_sdpa = True
    # The relative position bias is an additive score term: kernels without a bias input cannot run it.
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    _can_record_outputs = {"hidden_states": BEATsEncoderLayer, "attentions": BEATsAttention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The reference's initialisation: BERT's N(0, 0.02) for linear and embedding weights, the positional
        conv at N(0, sqrt(4 / (kernel * width))), and with deep-norm xavier-normal projections (the gains that
        `BEATsEncoderLayer` attaches to them).

        transformers calls this on modules that hold parameters themselves, never on the blocks around them,
        so every rule is keyed on the module that owns the weight.
        """
        super()._init_weights(module)  # LayerNorm -> ones / zeros
        config = self.config
        if isinstance(module, nn.Conv1d):  # the positional conv, BEATs' only 1-D conv
            init.normal_(module.weight, std=math.sqrt(4.0 / (module.kernel_size[0] * config.hidden_size)))
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            gain = getattr(module, "deep_norm_gain", None)
            if gain is None:
                init.normal_(module.weight, std=config.initializer_range)
            else:
                init.xavier_normal_(module.weight, gain=gain)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=config.initializer_range)
        elif isinstance(module, CosineClassifier):
            init_cosine_classifier(module)
        elif isinstance(module, nn.Conv2d):  # the patch conv keeps torch's default initialisation
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, BEATsAttention) and module.gru_rel_pos_linear is not None:
            init.ones_(module.gru_rel_pos_const)


class BEATsModel(BEATsPreTrainedModel):
    """The BEATs encoder.

    ``forward(input_values, attention_mask=None, output_hidden_states=None)``:

    - ``input_values`` ``(batch, frames, num_mel_bins)``: BEATs fbank features (`BEATsFeatureExtractor`).
      Frames past the last whole patch are dropped.
    - ``attention_mask`` ``(batch, frames)``, 1 on real frames; reduced to the patches the reference's way
      (`reference_patch_padding_mask`): padded patches are zeroed before the positional conv, excluded as
      attention keys and from the mean pooling.

    Returns `BaseModelOutputWithPooling`: ``last_hidden_state`` ``(batch, patches, hidden)`` with patches in
    row-major ``(time, frequency)`` order, ``pooler_output`` the mean of the real patches (ContrastASC's
    teacher embedding), and ``hidden_states`` (the blocks' input and each block's output) on request.
    """

    def __init__(self, config: BEATsConfig):
        super().__init__(config)
        self.config = config
        self.patch_embedding = nn.Conv2d(
            1,
            config.patch_embedding_dim,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=config.conv_bias,
        )
        self.layer_norm = nn.LayerNorm(config.patch_embedding_dim, eps=config.layer_norm_eps)
        self.post_extract_proj = (
            nn.Linear(config.patch_embedding_dim, config.hidden_size)
            if config.patch_embedding_dim != config.hidden_size
            else nn.Identity()
        )
        self.input_dropout = nn.Dropout(config.input_dropout)
        self.encoder = BEATsEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Conv2d:
        return self.patch_embedding

    def _check_inputs(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        config = self.config
        check_spectrogram_inputs(input_values, attention_mask, config.num_mel_bins, config.max_length)
        if input_values.shape[1] < config.patch_size:
            raise ValueError(
                f"input_values has {input_values.shape[1]} frames, fewer than one patch "
                f"(patch_size={config.patch_size})"
            )

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        self._check_inputs(input_values, attention_mask)
        weight = self.patch_embedding.weight
        patches = self.patch_embedding(input_values.unsqueeze(1).to(weight.dtype))
        patches = self.layer_norm(patches.flatten(2).transpose(1, 2))
        padding_mask = None
        if attention_mask is not None:
            padding_mask = reference_patch_padding_mask(~attention_mask.bool(), patches.shape[1])
        hidden_states = self.input_dropout(self.post_extract_proj(patches))
        sequence_output = self.encoder(hidden_states, padding_mask, **kwargs)
        pooled = masked_mean(sequence_output, None if padding_mask is None else ~padding_mask, dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled)


class BEATsForAudioClassification(BEATsPreTrainedModel):
    """BEATs encoder + dropout + linear head on the mean of the real patches.

    The reference applies its predictor to every patch and then averages; a linear map commutes with the mean,
    so the logits are the same. It returns ``sigmoid(logits)``; this head returns the logits, with the loss of
    ``config.problem_type`` (``multi_label_classification`` for AudioSet, as the released fine-tuned models).
    """

    def __init__(self, config: BEATsConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.beats = BEATsModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = classifier_head(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels (`torch.Tensor`, *optional*): ``(batch, num_labels)`` multi-hot floats for
            ``multi_label_classification``, ``(batch,)`` class indices for ``single_label_classification``.
        """
        outputs: BaseModelOutputWithPooling = self.beats(
            input_values, attention_mask=attention_mask, **kwargs
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        return classification_output(self, logits, labels, outputs, **kwargs)
