"""CP-Mobile configuration: the receptive-field-regularised mobile CNN of the CP-JKU DCASE systems, the
student of ContrastASC (arXiv 2510.03728).

CP-Mobile (Schmid et al., DCASE 2023) is a stem of two strided 3x3 convolutions followed by stages of
inverted bottleneck blocks (1x1 expansion, 3x3 depthwise, 1x1 projection) and an output block (a 1x1
convolution, a norm and global average pooling). Its size is set by three numbers, the base channels, the
channel multiplier per stage and the expansion rate, which span the paper's 6K-126K parameter students (see
`CP_MOBILE_PRESETS`). Sources: fschmid56/cpjku_dcase23 ``models/cp_mobile_clean.py`` (DCASE23, with GRN)
and CPJKU/dcase2024_task1_baseline ``models/baseline.py`` (DCASE24 baseline, no GRN).

Invalid values raise a ``ValueError`` naming the field, as in every config of the library (`_config_checks`).
"""

from typing import Any, Literal, Self

from huggingface_hub.dataclasses import validated_field
from transformers.configuration_utils import PreTrainedConfig

from ._config_checks import each, positive, strict_config

__all__ = ["CP_MOBILE_PRESETS", "CPMobileConfig", "make_divisible"]

#: per-block strides (frequency, time) of the DCASE 2024 baseline: b3 halves time, b4 frequency
DCASE24_STRIDES = ((1, 1), (1, 1), (1, 2), (2, 1), (1, 1), (1, 1))
#: per-block strides of the DCASE 2023 CP-Mobile: b2 halves both axes, b4 frequency
DCASE23_STRIDES = ((1, 1), (2, 2), (1, 1), (2, 1), (1, 1), (1, 1))

# Parameter counts below are of CPMobileForAudioClassification with 10 classes in the reference layout
# (embedding_size=None); tests/models/cp_mobile checks them.
CP_MOBILE_PRESETS: dict[str, dict[str, Any]] = {
    # The small end of ContrastASC's "6K-126K" students: 5,722 parameters. Also the library's CPU preset (a
    # training step on 32 one-second clips takes well under a second on one CPU core).
    "cp-mobile-6k": {"base_channels": 8},
    "cp-mobile-18k": {"base_channels": 16},  # 18,624
    "cp-mobile-35k": {"base_channels": 24},  # 35,062
    # The DCASE 2024 Task 1 baseline, 61,148 parameters as its README reports (the config's defaults).
    "cp-mobile-dcase24": {},
    "cp-mobile-77k": {"base_channels": 24, "channels_multiplier": 2.3, "expansion_rate": 3.0},  # 77,302
    # fschmid56/cpjku_dcase23's default CP-Mobile, with GRN: 126,952, the large end of the paper's range.
    "cp-mobile-dcase23": {
        "channels_multiplier": 2.3,
        "expansion_rate": 3.0,
        "use_grn": True,
        "strides": DCASE23_STRIDES,
    },
}


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10 %
    below ``value``: the channel rounding of MobileNet, which CP-Mobile sizes every layer with."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _non_empty(values) -> None:
    if len(values) == 0:
        raise ValueError("must have at least one entry, got none")


def _stride_pairs(strides) -> None:
    if not all(
        isinstance(pair, tuple | list)
        and len(pair) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair)
        for pair in strides
    ):
        raise ValueError(f"must be one (frequency, time) pair of positive ints per block, got {strides!r}")


def _positive_or_none(value) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"must be positive or None, got {value!r}")


@strict_config
class CPMobileConfig(PreTrainedConfig):
    r"""Configuration of [`CPMobileModel`] and [`CPMobileForAudioClassification`].

    The defaults build the DCASE 2024 Task 1 baseline (preset ``"cp-mobile-dcase24"``).

    Input:
        num_mel_bins (`int`, defaults to 256): mel bins of the input (`LogMelFeatureExtractor`).
        num_channels (`int`, defaults to 1): input channels; with more than one, ``input_values`` is
            ``(batch, channels, frames, num_mel_bins)``.

    Network (names of the CP-JKU code):
        base_channels (`int`, defaults to 32): channels after the stem, rounded to a multiple of 8; the
            stem's first convolution has a quarter of them.
        channels_multiplier (`float`, defaults to 1.8): stage ``s`` has ``base_channels * m**s`` channels,
            rounded to a multiple of 8 (`stage_channels`).
        expansion_rate (`float`, defaults to 2.1): width of a block's expansion relative to its input
            channels, rounded to a multiple of 8.
        n_blocks (`tuple[int, ...]`, defaults to `(3, 2, 1)`): blocks per stage (one or more stages).
        strides (`tuple[tuple[int, int], ...]`, defaults to the DCASE24 strides): ``(frequency, time)``
            stride of each block's depthwise convolution, one pair per block (``sum(n_blocks)``), in the
            order the input meets them. The CP-JKU code names them by block (``b2=(2, 2), b4=(2, 1)`` in
            DCASE23 is ``((1, 1), (2, 2), (1, 1), (2, 1), (1, 1), (1, 1))`` here). The stem adds a stride of
            4 on both axes.
        use_grn (`bool`, defaults to `False`): global response normalisation (ConvNeXt-V2) after each block's
            residual sum, with two scalar parameters per block, as in the DCASE23 CP-Mobile.

    Output block and head:
        output_norm (`"batch"` or `"layer"`, defaults to `"batch"`): the output block's norm, BatchNorm as in
            the CP-JKU code or a LayerNorm over channels at each time-frequency position (ContrastASC's
            change); both have the same parameters.
        embedding_size (`int`, optional): ``None`` (default) keeps the reference layout, in which the output
            block's 1x1 convolution emits the classes and its pooled output is the logits; the clip
            embedding (`CPMobileModel`'s ``pooler_output``) is then the pooled last feature map. An int
            ``D`` gives ContrastASC's layout: the output block is part of `CPMobileModel` and emits a
            ``D``-dim clip embedding, and a separate head (`classifier`) maps it to the classes.
        classifier (`"linear"` or `"cosine"`, defaults to `"linear"`): the head on the embedding: a linear
            layer, or ``cosine_scale * cos(W_c, h)`` (`CosineClassifier`). ``"cosine"`` needs an
            `embedding_size`.
        cosine_scale (`float`, defaults to 56.0): scale of the cosine classifier's logits.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the output block's LayerNorm.

    Derived (read-only): ``hidden_size`` is the width of the clip embedding (`embedding_size`, or the last
    stage's channels), ``num_hidden_layers`` the number of blocks (``sum(n_blocks)``), which layer-wise lr
    decay counts.

    Example:

    ```python
    >>> from hf_audiorep.modeling.configuration_cp_mobile import CPMobileConfig
    >>> config = CPMobileConfig.from_preset("cp-mobile-dcase24", num_labels=10)
    >>> student = CPMobileConfig.from_preset(  # ContrastASC-style: LN output block, cosine head
    ...     "cp-mobile-dcase24", num_labels=10, output_norm="layer", embedding_size=128, classifier="cosine")
    ```
    """

    model_type = "audiorep-cp-mobile"

    num_mel_bins: int = validated_field(positive, default=256)
    num_channels: int = validated_field(positive, default=1)
    base_channels: int = validated_field(positive, default=32)
    channels_multiplier: float | int = validated_field(positive, default=1.8)
    expansion_rate: float | int = validated_field(positive, default=2.1)
    n_blocks: tuple[int, ...] | list[int] = validated_field([_non_empty, each(positive)], default=(3, 2, 1))
    strides: tuple[tuple[int, int], ...] | list = validated_field(_stride_pairs, default=DCASE24_STRIDES)
    use_grn: bool = False
    output_norm: Literal["batch", "layer"] = "batch"
    embedding_size: int | None = validated_field(_positive_or_none, default=None)
    classifier: Literal["linear", "cosine"] = "linear"
    cosine_scale: float | int = validated_field(positive, default=56.0)
    layer_norm_eps: float | int = validated_field(positive, default=1e-5)

    def __post_init__(self, **kwargs):
        # Tuples, whatever config.json's lists: a loaded config then equals the one that was saved.
        self.n_blocks = tuple(self.n_blocks)
        self.strides = tuple(tuple(pair) for pair in self.strides)
        super().__post_init__(**kwargs)

    # ---- relations between fields: strict runs every validate_* after __init__ and before saving ----------

    def validate_strides(self) -> None:
        if len(self.strides) != sum(self.n_blocks):
            raise ValueError(
                f"CPMobileConfig.strides has {len(self.strides)} entries but n_blocks {self.n_blocks} makes "
                f"{sum(self.n_blocks)} blocks: give one (frequency, time) stride per block"
            )

    def validate_head(self) -> None:
        if self.classifier == "cosine" and self.embedding_size is None:
            raise ValueError(
                "CPMobileConfig.classifier='cosine' needs an embedding_size: in the reference layout "
                "(embedding_size=None) the output block's convolution is the classifier"
            )

    # ---- derived -------------------------------------------------------------------------------------

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels after the stem, then of each stage (the CP-JKU ``channels_per_stage``)."""
        base = make_divisible(self.base_channels)
        return (
            base,
            *(make_divisible(base * self.channels_multiplier**s) for s in range(len(self.n_blocks))),
        )

    @property
    def hidden_size(self) -> int:
        """Width of the clip embedding (`CPMobileModel`'s ``pooler_output``)."""
        return self.embedding_size if self.embedding_size is not None else self.stage_channels[-1]

    @property
    def num_hidden_layers(self) -> int:
        """The inverted bottleneck blocks of all stages (``blocks.{i}``)."""
        return sum(self.n_blocks)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """Build a named architecture (see `CP_MOBILE_PRESETS`); keyword arguments override its fields."""
        if name not in CP_MOBILE_PRESETS:
            raise ValueError(f"unknown CP-Mobile preset {name!r}; available: {sorted(CP_MOBILE_PRESETS)}")
        return cls(**{**CP_MOBILE_PRESETS[name], **overrides})
