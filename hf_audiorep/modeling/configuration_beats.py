"""BEATs configuration (Chen et al., "BEATs: Audio Pre-Training with Acoustic Tokenizers", 2022).

BEATs is the teacher of ContrastASC: a fairseq-style transformer encoder over 16 x 16 patches of a 128-bin
Kaldi fbank, with a convolutional positional embedding and, in the released checkpoints, a bucketed relative
position bias with a query-dependent ("gated", WavLM's) scale and deep-norm residuals.

The class defaults are those of the reference ``BEATsConfig`` (microsoft/unilm ``beats/BEATs.py``), whose
defaults are *not* the released models: a checkpoint carries its own settings in ``checkpoint["cfg"]``, which
`BEATsConfig.from_reference_cfg` reads. The one departure is ``patch_size``: the reference default, -1, means
"unset" and builds no usable model; 16 is what every released checkpoint sets.

The config is a strict dataclass (see `_config_checks`): an invalid value raises a ``ValueError`` naming the
field and the value.
"""

import logging
from typing import Any, Literal, Self

from huggingface_hub.dataclasses import validated_field
from transformers.configuration_utils import PreTrainedConfig

from ._config_checks import activation, at_least, non_negative, positive, rate, strict_config

__all__ = ["BEATS_PRESETS", "BEATsConfig", "REFERENCE_ACTIVATIONS"]

logger = logging.getLogger(__name__)

BEATS_PRESETS: dict[str, dict[str, Any]] = {
    # The encoder of the released BEATs_iter3 / iter3+ checkpoints (pre-trained and fine-tuned): 12 post-LN
    # blocks of width 768 with deep-norm, the gated relative position bias (320 buckets up to 800 patches) and
    # a 128-tap, 16-group positional conv. These values are believed, not verified: the checkpoints are not on
    # the Hub and none could be read here; they are what third-party ports that load those checkpoints set
    # and what WavLM (whose attention BEATs reuses) uses. A real checkpoint's own cfg, read by
    # `BEATsConfig.from_reference_cfg`, always wins over this preset.
    "beats-iter3": {
        "relative_position_embedding": True,
        "gru_rel_pos": True,
        "deep_norm": True,
        "max_distance": 800,
        "layerdrop": 0.05,
    },
    # Every path of beats-iter3 (patch projection, positional conv, gated relative bias, deep-norm) at a size
    # that trains on a CPU: 2 blocks of width 64.
    "beats-tiny": {
        "patch_embedding_dim": 32,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "relative_position_embedding": True,
        "gru_rel_pos": True,
        "deep_norm": True,
        "num_buckets": 32,
        "max_distance": 128,
    },
}

#: the reference's ``activation_fn`` names -> transformers' ACT2FN names (fairseq's "gelu_accurate" is the
#: tanh approximation, transformers' "gelu_new"; "glu" builds a different feed-forward and is not supported)
REFERENCE_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_accurate": "gelu_new",
    "gelu_fast": "gelu_new",
    "relu": "relu",
    "tanh": "tanh",
    "linear": "linear",
}

# reference cfg key -> BEATsConfig field (same meaning, same value)
_REFERENCE_FIELDS = {
    "input_patch_size": "patch_size",
    "embed_dim": "patch_embedding_dim",
    "conv_bias": "conv_bias",
    "encoder_layers": "num_hidden_layers",
    "encoder_embed_dim": "hidden_size",
    "encoder_ffn_embed_dim": "intermediate_size",
    "encoder_attention_heads": "num_attention_heads",
    "layer_norm_first": "layer_norm_first",
    "deep_norm": "deep_norm",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "activation_dropout": "activation_dropout",
    "encoder_layerdrop": "layerdrop",
    "dropout_input": "input_dropout",
    "conv_pos": "num_conv_pos_embeddings",
    "conv_pos_groups": "num_conv_pos_embedding_groups",
    "relative_position_embedding": "relative_position_embedding",
    "num_buckets": "num_buckets",
    "max_distance": "max_distance",
    "gru_rel_pos": "gru_rel_pos",
    "predictor_dropout": "classifier_dropout",
}
# Reference keys read specially (activation_fn, finetuned_model, predictor_class) or deliberately not carried:
# the layer-wise gradient scaling is a training choice, which this library makes with layer-wise learning-rate
# decay (`get_layer_id`) instead.
_REFERENCE_SPECIAL = {
    "activation_fn",
    "finetuned_model",
    "predictor_class",
    "layer_wise_gradient_decay_ratio",
}


@strict_config
class BEATsConfig(PreTrainedConfig):
    r"""Configuration of [`BEATsModel`] and [`BEATsForAudioClassification`].

    Args:
        num_mel_bins (`int`, defaults to 128): mel bins of the input fbank (BEATs' front end).
        patch_size (`int`, defaults to 16): side of the square, non-overlapping patches; a partial patch at
            the end of the time axis is dropped, as the reference's strided conv drops it.
        patch_embedding_dim (`int`, defaults to 512): channels of the patch conv (the reference
            ``embed_dim``), layer-normalised and then projected to `hidden_size` when the two differ.
        conv_bias (`bool`, defaults to `False`): bias in the patch conv.
        max_length (`int`, defaults to 3000): the longest input accepted, in 10 ms frames (30 s). Not part of
            the reference, whose relative positions extend to any length: a guard against an accidental
            hour-long input (attention memory grows with its square), as the library's other spectrogram
            models have. Raise it for longer clips; nothing else depends on it.
        hidden_size (`int`, defaults to 768): width of the encoder.
        num_hidden_layers (`int`, defaults to 12): encoder blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 3072): feed-forward width.
        hidden_act (`str`, defaults to `"gelu"`): feed-forward activation (exact GELU, as fairseq's "gelu").
        layer_norm_first (`bool`, defaults to `False`): pre-LN blocks and a final LayerNorm; otherwise post-LN
            blocks with the LayerNorm before the first block.
        deep_norm (`bool`, defaults to `False`): DeepNet's residual scaling ``x * (2 N) ** 0.25 + f(x)`` in
            post-LN blocks (N = `num_hidden_layers`); incompatible with `layer_norm_first`.
        hidden_dropout_prob (`float`, defaults to 0.1): dropout after the positional embedding, the attention
            and the feed-forward network.
        attention_probs_dropout_prob (`float`, defaults to 0.1): dropout on the attention probabilities.
        activation_dropout (`float`, defaults to 0.0): dropout after the feed-forward activation.
        layerdrop (`float`, defaults to 0.0): probability of skipping a whole block in training.
        input_dropout (`float`, defaults to 0.0): dropout on the projected patches.
        num_conv_pos_embeddings (`int`, defaults to 128): kernel size of the convolutional positional
            embedding (over the patch sequence).
        num_conv_pos_embedding_groups (`int`, defaults to 16): groups of that conv; must divide `hidden_size`.
        relative_position_embedding (`bool`, defaults to `False`): add a learned, bucketed relative position
            bias (one per head, shared by all blocks) to the attention scores.
        num_buckets (`int`, defaults to 320): relative position buckets, half per direction.
        max_distance (`int`, defaults to 1280): distance (in patches) beyond which buckets stop growing.
        gru_rel_pos (`bool`, defaults to `False`): scale the relative position bias per query and head by a
            gate computed from the query (WavLM's gated relative position bias); needs
            `relative_position_embedding`.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of every LayerNorm (torch's default, as fairseq).
        classifier_dropout (`float`, defaults to 0.1): dropout before the classification head (the reference
            ``predictor_dropout``).
        classifier (`"linear"` or `"cosine"`, defaults to `"linear"`): the classification head: a linear
            layer, or ContrastASC's ``cosine_scale * cos(W_c, h)`` (`CosineClassifier`, its teacher's head).
        cosine_scale (`float`, defaults to 56.0): scale of the cosine head's logits.
        initializer_range (`float`, defaults to 0.02): standard deviation of the linear and embedding weights
            (BERT's initialisation, as the reference).

    The reference's ``layer_wise_gradient_decay_ratio`` (a gradient scale between blocks, a training choice)
    is not a field: use layer-wise learning-rate decay through `BEATsPreTrainedModel.get_layer_id` instead.
    """

    model_type = "audiorep-beats"

    num_mel_bins: int = validated_field(positive, default=128)
    patch_size: int = validated_field(positive, default=16)
    patch_embedding_dim: int = validated_field(positive, default=512)
    conv_bias: bool = False
    max_length: int = validated_field(positive, default=3000)
    hidden_size: int = validated_field(positive, default=768)
    num_hidden_layers: int = validated_field(positive, default=12)
    num_attention_heads: int = validated_field(positive, default=12)
    intermediate_size: int = validated_field(positive, default=3072)
    hidden_act: str = validated_field(activation, default="gelu")
    layer_norm_first: bool = False
    deep_norm: bool = False
    hidden_dropout_prob: float | int = validated_field(rate, default=0.1)
    attention_probs_dropout_prob: float | int = validated_field(rate, default=0.1)
    activation_dropout: float | int = validated_field(rate, default=0.0)
    layerdrop: float | int = validated_field(rate, default=0.0)
    input_dropout: float | int = validated_field(rate, default=0.0)
    num_conv_pos_embeddings: int = validated_field(at_least(2), default=128)
    num_conv_pos_embedding_groups: int = validated_field(positive, default=16)
    relative_position_embedding: bool = False
    # Half the buckets per direction, half of those exact: at least 4 so that the exact range is not empty.
    num_buckets: int = validated_field(at_least(4), default=320)
    max_distance: int = validated_field(positive, default=1280)
    gru_rel_pos: bool = False
    layer_norm_eps: float | int = validated_field(positive, default=1e-5)
    classifier_dropout: float | int = validated_field(rate, default=0.1)
    classifier: Literal["linear", "cosine"] = "linear"
    cosine_scale: float | int = validated_field(positive, default=56.0)
    initializer_range: float | int = validated_field(non_negative, default=0.02)

    # ---- relations between fields: strict runs every validate_* after __init__ and before saving ----------

    def validate_heads(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BEATsConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )

    def validate_max_length(self) -> None:
        if self.max_length < self.patch_size:
            raise ValueError(
                f"BEATsConfig.max_length ({self.max_length}) must hold at least one patch "
                f"(patch_size={self.patch_size})"
            )

    def validate_conv_pos_groups(self) -> None:
        if self.hidden_size % self.num_conv_pos_embedding_groups:
            raise ValueError(
                f"BEATsConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_conv_pos_embedding_groups ({self.num_conv_pos_embedding_groups})"
            )

    def validate_normalisation(self) -> None:
        if self.deep_norm and self.layer_norm_first:
            raise ValueError(
                "BEATsConfig.deep_norm scales post-LN residuals; it cannot be set with layer_norm_first"
            )

    def validate_relative_positions(self) -> None:
        if self.gru_rel_pos and not self.relative_position_embedding:
            raise ValueError(
                "BEATsConfig.gru_rel_pos gates the relative position bias; it needs "
                "relative_position_embedding"
            )
        if self.num_buckets % 2:
            raise ValueError(
                f"BEATsConfig.num_buckets ({self.num_buckets}) must be even (half per direction)"
            )
        if self.max_distance <= self.num_buckets // 4:
            raise ValueError(
                f"BEATsConfig.max_distance ({self.max_distance}) must exceed the exact-bucket range "
                f"num_buckets // 4 ({self.num_buckets // 4})"
            )

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """Build a named architecture (see `BEATS_PRESETS`); keyword arguments override its fields."""
        if name not in BEATS_PRESETS:
            raise ValueError(f"unknown BEATs preset {name!r}; available: {sorted(BEATS_PRESETS)}")
        return cls(**{**BEATS_PRESETS[name], **overrides})

    @classmethod
    def from_reference_cfg(cls, cfg: dict[str, Any], **overrides: Any) -> Self:
        """The config of a reference checkpoint from its ``checkpoint["cfg"]`` dict (missing keys take the
        reference defaults, as the reference's ``BEATsConfig.update`` does).

        A fine-tuned checkpoint (``finetuned_model`` true) gets ``num_labels = predictor_class`` and the
        multi-label problem type (its predictor is read through a sigmoid). Keys that this library does not
        model are logged and ignored; keyword arguments override the result.
        """
        if not isinstance(cfg, dict):
            raise TypeError(f"cfg must be the checkpoint's cfg dict, got {type(cfg).__name__}")
        fields: dict[str, Any] = {}
        for key, value in cfg.items():
            if key in _REFERENCE_FIELDS:
                fields[_REFERENCE_FIELDS[key]] = value
            elif key not in _REFERENCE_SPECIAL:
                logger.warning("BEATs cfg key %r is not used by BEATsConfig; ignored", key)
        if "activation_fn" in cfg:
            name = cfg["activation_fn"]
            if name not in REFERENCE_ACTIVATIONS:
                raise ValueError(
                    f"cfg['activation_fn'] = {name!r} is not supported; "
                    f"supported: {sorted(REFERENCE_ACTIVATIONS)}"
                )
            fields["hidden_act"] = REFERENCE_ACTIVATIONS[name]
        ratio = cfg.get("layer_wise_gradient_decay_ratio", 1.0)
        if ratio != 1.0:
            logger.info(
                "BEATs cfg layer_wise_gradient_decay_ratio=%s is a training setting and is not carried over; "
                "use layer-wise learning-rate decay instead",
                ratio,
            )
        if cfg.get("finetuned_model", False):
            fields["num_labels"] = int(cfg.get("predictor_class", 527))
            fields["problem_type"] = "multi_label_classification"
        fields.update(overrides)
        return cls(**fields)
