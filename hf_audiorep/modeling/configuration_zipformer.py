"""Zipformer configuration: the audio encoder of UTS (arXiv 2603.25767), after Yao et al. 2023,
"Zipformer: A faster and better encoder for automatic speech recognition", as icefall's ``Zipformer2``
builds it.

Per-stack fields are tuples with one entry per stack (a single int is broadcast to every stack, as icefall's
``_to_tuple`` does); their common length is the number of stacks. Invalid values raise a ``ValueError``
naming the field, as in every config of the library (`_config_checks`).
"""

from typing import Any, Literal, Self

from huggingface_hub.dataclasses import validated_field
from transformers import BartConfig, BertConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

from ._config_checks import at_least, each, length, positive, rate, strict_config

__all__ = ["DECODER_PRESETS", "TEXT_ENCODER_PRESETS", "ZIPFORMER_PRESETS", "ZipformerConfig"]


ZIPFORMER_PRESETS: dict[str, dict[str, Any]] = {
    # Auden's ZipformerConfig() defaults (AudenAI/Auden src/auden/models/zipformer/model_config.py), the UTS
    # encoder: icefall's Zipformer-M shape with Auden's wider feed-forwards (3 x encoder_dim; icefall's
    # Zipformer-M has (512, 768, 1024, 1536, 1024, 768)). 65,907,959 encoder parameters; with icefall's
    # feed-forwards and a 527-class head 64,258,694, which is icefall's AudioTaggingModel (64,264,454 at
    # icefall 36e0420) less one unused `bypass_scale` per layer (5,760) that this port drops.
    "zipformer-m": {},
    # Trains in minutes on a 2-core CPU: 4 stacks of one layer at 50, 25, 12.5 and 25 frames/s, widths up to
    # 128, a narrower front end (64 channels in its last conv and ConvNeXt): 1,304,991 encoder parameters.
    "zipformer-small": {
        "num_encoder_layers": (1, 1, 1, 1),
        "downsampling_factor": (1, 2, 4, 2),
        "encoder_dim": (64, 96, 128, 96),
        "feedforward_dim": (192, 288, 384, 288),
        "num_heads": (4, 4, 4, 4),
        "encoder_unmasked_dim": (64, 64, 96, 64),
        "cnn_module_kernel": (15, 15, 7, 15),
        "query_head_dim": 16,
        "value_head_dim": 8,
        "pos_head_dim": 4,
        "pos_dim": 24,
        "subsampling_channels": (8, 32, 64),
    },
}

# The text decoder of `ZipformerForConditionalGeneration` (UTS's AR / PAR captioning), as `BartConfig` fields;
# the vocabulary and special-token ids come from the tokenizer it is built for.
DECODER_PRESETS: dict[str, dict[str, Any]] = {
    # BART-base's decoder geometry (facebook/bart-base), so that its weights can initialise it. Auden's
    # caption decoder has 8 heads, sinusoidal positions and untied embeddings (architectures.md 5(a)).
    "bart-base": {
        "d_model": 768,
        "decoder_layers": 6,
        "decoder_attention_heads": 12,
        "decoder_ffn_dim": 3072,
        "max_position_embeddings": 1024,
    },
    # CPU minutes: two layers of width 128.
    "small": {
        "d_model": 128,
        "decoder_layers": 2,
        "decoder_attention_heads": 4,
        "decoder_ffn_dim": 512,
        "max_position_embeddings": 128,
    },
}

# The text encoder of the contrastive model, as `BertConfig` fields (Auden's CLAP: bert-base-uncased).
TEXT_ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "bert-base": {},
    "small": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 512},
}

# Fields with one entry per stack.
PER_STACK_FIELDS = (
    "num_encoder_layers",
    "downsampling_factor",
    "encoder_dim",
    "feedforward_dim",
    "num_heads",
    "encoder_unmasked_dim",
    "cnn_module_kernel",
    "query_head_dim",
    "value_head_dim",
    "pos_head_dim",
)

Stack = tuple[int, ...] | list[int] | int


def _each_positive(values) -> None:
    """A per-stack field: a positive int, or a sequence of them (one per stack)."""
    entries = (values,) if isinstance(values, int) else values
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in entries):
        raise ValueError(f"must be a positive int or positive ints, one per stack, got {values!r}")


def _positive_or_none(value) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"must be positive, got {value!r}")


@strict_config
class ZipformerConfig(PreTrainedConfig):
    r"""Configuration of [`ZipformerModel`] and [`ZipformerForAudioClassification`].

    The defaults build the UTS encoder (preset ``"zipformer-m"``); ``"zipformer-small"`` is a CPU-sized model
    with the same structure (several stacks, downsampled and upsampled).

    Front end:
        num_mel_bins (`int`, defaults to 80): fbank bins of the input (`ZipformerFbankFeatureExtractor`);
            at least 7.
        max_length (`int`, defaults to 3000): the longest input accepted, in 10 ms frames (30 s). Positions
            are relative and computed per input, so this is only a guard; inputs need at least 9 frames.
        subsampling_channels (`tuple[int, int, int]`, defaults to `(8, 32, 128)`): channels of the three convs
            of `Conv2dSubsampling` (icefall's ``layer{1,2,3}_channels``); its ConvNeXt runs at the third.

    Stacks (one entry per stack; stack ``s`` runs at ``50 / downsampling_factor[s]`` frames/s):
        num_encoder_layers (`tuple[int, ...]`, defaults to `(2, 2, 3, 4, 3, 2)`): layers per stack.
        downsampling_factor (`tuple[int, ...]`, defaults to `(1, 2, 4, 8, 4, 2)`): frame-rate divisor per
            stack, relative to the front end's 50 frames/s.
        encoder_dim (`tuple[int, ...]`, defaults to `(192, 256, 384, 512, 384, 256)`): width per stack. The
            output width is ``max(encoder_dim)`` (`hidden_size`).
        feedforward_dim (`tuple[int, ...]`, defaults to `(576, 768, 1152, 1536, 1152, 768)`): the middle
            feed-forward's width per stack; the first and last are 3/4 and 5/4 of it. These are Auden's
            defaults (3 x encoder_dim), not icefall's Zipformer-M ``(512, 768, 1024, 1536, 1024, 768)``: which
            one the UTS paper trained is unknown, and Auden is the released UTS code.
        num_heads (`tuple[int, ...]`, defaults to `(4, 4, 4, 8, 4, 4)`): attention heads per stack.
        encoder_unmasked_dim (`tuple[int, ...]`, defaults to `(192, 192, 256, 256, 256, 192)`): channels never
            hit by the training feature masks; at most `encoder_dim`.
        cnn_module_kernel (`tuple[int, ...]`, defaults to `(31, 31, 15, 15, 15, 31)`): odd depthwise kernel
            of the convolution modules per stack.
        query_head_dim (defaults to 32), value_head_dim (defaults to 12), pos_head_dim (defaults to 4):
            per-head widths of queries/keys, values and positional queries; an int, or one per stack.
        pos_dim (`int`, defaults to 48): width of the relative positional encoding (even).
        output_downsampling_factor (`int`, defaults to 2): the last downsampling, to 25 frames/s.

    Regularisation (training only; icefall's schedules reduced to their final values):
        hidden_dropout_prob (`float`, defaults to 0.1): after the feed-forward activation and on the front
            end's output.
        position_dropout_prob (`float`, defaults to 0.15): on the positional encodings.
        feature_mask_prob (`float`, defaults to 0.125): per clip and stack, the probability of zeroing the
            channels above ``encoder_unmasked_dim`` (icefall's two nested masks over the two halves of them).
        classifier_dropout (`float`, defaults to 0.1): before the per-frame classifier (Auden's MTC head).
        classifier (`"linear"` or `"cosine"`, defaults to `"linear"`): the per-frame classifier: a linear
            layer, or ContrastASC's ``cosine_scale * cos(W_c, h)`` (`CosineClassifier`, its teacher's head).
        cosine_scale (`float`, defaults to 56.0): scale of the cosine head's logits.
        classifier_norm (`"none"` or `"batch"`, defaults to `"none"`): `"batch"` standardises the frames the
            classifier reads (BatchNorm without affine parameters, statistics over the valid frames of the
            batch; running statistics at evaluation). Our addition, not Auden's: a Zipformer trained from
            scratch otherwise fits its labels slowly at small scale (docs/benchmarks.md, "Why the UTS runs
            stayed at the label prior").

    Text (UTS part 2; each unset on an encoder or a tagger):
        decoder_config (`BartConfig` or `dict`, optional): the caption decoder of
            `ZipformerForConditionalGeneration`, a BART decoder (`DECODER_PRESETS`: ``"bart-base"``,
            ``"small"``); its ``vocab_size`` and special-token ids are the tokenizer's.
        text_frames_norm (`"none"` or `"batch"`, defaults to `"none"`): `"batch"` standardises the encoder
            frames the text heads read, the caption decoder's cross-attention and the contrastive audio
            projection (as `classifier_norm` does for the MTC head; running statistics at evaluation). Our
            addition, not Auden's: on a from-scratch encoder, whose frames share one large direction, the
            decoder learned the captions' language and ignored the audio (docs/benchmarks.md).
        tagging_head (`bool`, defaults to `False`): `ZipformerForConditionalGeneration` also carries the MTC
            head (``num_labels`` outputs), for multi-task pre-training.
        text_config (`BertConfig` or `dict`, optional): the text encoder of `ZipformerForAudioTextContrastive`
            (`TEXT_ENCODER_PRESETS`: ``"bert-base"``, ``"small"``).
        text_pooling (`"cls"` or `"mean"`, defaults to `"cls"`): how the contrastive text tower's states
            become one vector: the [CLS] state (Auden, with a pre-trained BERT) or the mean over the caption's
            tokens. Our addition: a text tower trained from scratch gives every caption nearly the same [CLS]
            state at initialisation, so InfoNCE has no gradient to start from (docs/benchmarks.md).
        projection_dim (`int`, defaults to 1024): the shared audio-text space (Auden's CLAP).
        contrastive_temperature (`float`, defaults to 0.07): the InfoNCE temperature, fixed (Auden) unless
            `learn_temperature`, when it is where the learned temperature starts.

    Shorthands (the names every config of the library has):
        hidden_size (`int`, optional): the output width, ``max(encoder_dim)``. Given a different value, every
            stack's `encoder_dim`, `feedforward_dim` and `encoder_unmasked_dim` are scaled by
            ``hidden_size / max(encoder_dim)`` (rounded, at least 1), a width multiplier; read back it is
            ``max(encoder_dim)``.
        num_attention_heads (`int`, optional): likewise for `num_heads` (read back: ``max(num_heads)``).
        num_hidden_layers (read-only): ``sum(num_encoder_layers)``, the layers numbered across stacks
            (``blocks.{i}`` of the model), which layer-wise lr decay and LoRA count.

    Example:

    ```python
    >>> from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
    >>> config = ZipformerConfig.from_preset("zipformer-m", num_labels=1500,
    ...                                      problem_type="multi_label_classification")
    ```
    """

    model_type = "audiorep-zipformer"

    num_mel_bins: int = validated_field(at_least(7), default=80)
    max_length: int = validated_field(at_least(9), default=3000)
    subsampling_channels: tuple[int, int, int] | list[int] = validated_field(
        [length(3), each(positive)], default=(8, 32, 128)
    )
    num_encoder_layers: Stack = validated_field(_each_positive, default=(2, 2, 3, 4, 3, 2))
    downsampling_factor: Stack = validated_field(_each_positive, default=(1, 2, 4, 8, 4, 2))
    encoder_dim: Stack = validated_field(_each_positive, default=(192, 256, 384, 512, 384, 256))
    feedforward_dim: Stack = validated_field(_each_positive, default=(576, 768, 1152, 1536, 1152, 768))
    num_heads: Stack = validated_field(_each_positive, default=(4, 4, 4, 8, 4, 4))
    encoder_unmasked_dim: Stack = validated_field(_each_positive, default=(192, 192, 256, 256, 256, 192))
    cnn_module_kernel: Stack = validated_field(_each_positive, default=(31, 31, 15, 15, 15, 31))
    query_head_dim: Stack = validated_field(_each_positive, default=32)
    value_head_dim: Stack = validated_field(_each_positive, default=12)
    pos_head_dim: Stack = validated_field(_each_positive, default=4)
    pos_dim: int = validated_field(positive, default=48)
    output_downsampling_factor: int = validated_field(positive, default=2)
    hidden_dropout_prob: float | int = validated_field(rate, default=0.1)
    position_dropout_prob: float | int = validated_field(rate, default=0.15)
    feature_mask_prob: float | int = validated_field(rate, default=0.125)
    classifier_dropout: float | int = validated_field(rate, default=0.1)
    classifier: Literal["linear", "cosine"] = "linear"
    cosine_scale: float | int = validated_field(positive, default=56.0)
    classifier_norm: Literal["none", "batch"] = "none"
    text_frames_norm: Literal["none", "batch"] = "none"
    hidden_size: int | None = validated_field(_positive_or_none, default=None)
    num_attention_heads: int | None = validated_field(_positive_or_none, default=None)
    decoder_config: BartConfig | dict | None = None
    text_config: BertConfig | dict | None = None
    tagging_head: bool = False
    text_pooling: Literal["cls", "mean"] = "cls"
    projection_dim: int = validated_field(positive, default=1024)
    contrastive_temperature: float | int = validated_field(positive, default=0.07)
    learn_temperature: bool = False

    # Both optional: an encoder or tagger has neither; from a dict (a saved config.json) they become configs.
    sub_configs_defaults = {
        "decoder_config": SubConfigSpec(BartConfig, optional=True),
        "text_config": SubConfigSpec(BertConfig, optional=True),
    }

    def __post_init__(self, **kwargs):
        # Broadcast scalars and store tuples: a loaded config then equals the one that was saved.
        lengths = {len(v) for f in PER_STACK_FIELDS if not isinstance(v := getattr(self, f), int)}
        num_stacks = max(lengths) if lengths else 1
        for field in PER_STACK_FIELDS:
            value = getattr(self, field)
            setattr(self, field, (value,) * num_stacks if isinstance(value, int) else tuple(value))
        self.subsampling_channels = tuple(self.subsampling_channels)
        self._apply_width_shorthands()
        super().__post_init__(**kwargs)

    def _apply_width_shorthands(self) -> None:
        if not self.encoder_dim or not self.num_heads:
            return  # empty tuples: validate_stacks reports them
        widest = max(self.encoder_dim)
        if self.hidden_size is not None and self.hidden_size != widest:
            factor = self.hidden_size / widest

            def scale(values):
                return tuple(max(1, round(v * factor)) for v in values)

            self.encoder_dim = scale(self.encoder_dim)
            self.feedforward_dim = scale(self.feedforward_dim)
            unmasked = scale(self.encoder_unmasked_dim)
            self.encoder_unmasked_dim = tuple(map(min, zip(unmasked, self.encoder_dim, strict=False)))
        self.hidden_size = max(self.encoder_dim)
        most_heads = max(self.num_heads)
        if self.num_attention_heads is not None and self.num_attention_heads != most_heads:
            factor = self.num_attention_heads / most_heads
            self.num_heads = tuple(max(1, round(h * factor)) for h in self.num_heads)
        self.num_attention_heads = max(self.num_heads)

    # ---- relations between fields: strict runs every validate_* after __init__ and before saving ----------

    def validate_stacks(self) -> None:
        num_stacks = len(self.num_encoder_layers)
        if num_stacks == 0:
            raise ValueError("ZipformerConfig.num_encoder_layers must have at least one stack")
        for field in PER_STACK_FIELDS:
            if len(getattr(self, field)) != num_stacks:
                raise ValueError(
                    f"ZipformerConfig.{field} has {len(getattr(self, field))} entries but "
                    f"num_encoder_layers has {num_stacks}: every per-stack field needs one entry per stack"
                )
        for i, (unmasked, dim) in enumerate(zip(self.encoder_unmasked_dim, self.encoder_dim, strict=True)):
            if unmasked > dim:
                raise ValueError(
                    f"ZipformerConfig.encoder_unmasked_dim[{i}] ({unmasked}) must be <= "
                    f"encoder_dim[{i}] ({dim})"
                )
        for i, kernel in enumerate(self.cnn_module_kernel):
            if kernel % 2 == 0:
                raise ValueError(
                    f"ZipformerConfig.cnn_module_kernel[{i}] ({kernel}) must be odd "
                    "(symmetric 'same' padding)"
                )
        if self.pos_dim % 2:
            raise ValueError(f"ZipformerConfig.pos_dim ({self.pos_dim}) must be even (cos/sin pairs)")
        for field, derived in (("hidden_size", "encoder_dim"), ("num_attention_heads", "num_heads")):
            if getattr(self, field) != max(getattr(self, derived)):
                raise ValueError(
                    f"ZipformerConfig.{field} ({getattr(self, field)}) must equal max({derived}) "
                    f"({max(getattr(self, derived))})"
                )

    # ---- derived -------------------------------------------------------------------------------------

    @property
    def num_stacks(self) -> int:
        return len(self.num_encoder_layers)

    @property
    def num_hidden_layers(self) -> int:
        """All layers of all stacks, numbered across stacks (``blocks.{i}``)."""
        return sum(self.num_encoder_layers)

    @property
    def frame_rates(self) -> tuple[float, ...]:
        """Frames per second of each stack (for 100 frames/s fbank input)."""
        return tuple(50.0 / factor for factor in self.downsampling_factor)

    @property
    def output_frame_rate(self) -> float:
        """Frames per second of ``last_hidden_state``: 25 with the default output downsampling."""
        return 50.0 / self.output_downsampling_factor

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """Build a named architecture (see `ZIPFORMER_PRESETS`); keyword arguments override its fields."""
        if name not in ZIPFORMER_PRESETS:
            raise ValueError(f"unknown Zipformer preset {name!r}; available: {sorted(ZIPFORMER_PRESETS)}")
        return cls(**{**ZIPFORMER_PRESETS[name], **overrides})
