"""CAT configuration: the Convolutional Audio Transformer of "Representation-Regularized Convolutional Audio
Transformer for Audio Understanding" (arXiv 2601.21612), and its stem-less ancestor EAT.

One config serves the encoder ([`CATModel`]), the classifier ([`CATForAudioClassification`]) and bootstrap
pre-training ([`CATForPreTraining`]): the pre-training fields (masking, decoder, target normalisation, loss
weights, EMA schedule) sit beside the encoder's, so a pre-training checkpoint is also a fine-tuning starting
point. With ``use_multi_resolution_stem=False`` the model is EAT (a plain 16 x 16 patch embedding, 12 blocks).
"""

from __future__ import annotations

from typing import Any

from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig

__all__ = ["CAT_PRESETS", "CATConfig"]


CAT_PRESETS: dict[str, dict[str, Any]] = {
    # The reference CAT (realzhouchushu/CAT, `conv_clap` modes): multi-resolution stem at strides 4/8/16
    # with 256/384 channels, 11 post-LN blocks of width 768, CLAP representation regularization through a
    # 768 -> 512 projector of the final CLS. The encoder has 88,774,784 parameters (see CATModel).
    "cat-base": {},
    # Pre-trains in minutes on a 2-core CPU: same input geometry and stem layout as cat-base (so the feature
    # extractor and the masking carry over), at 1/4 width and 4 blocks: 2,133,152 encoder parameters,
    # 2,352,352 with the pre-training decoder and RR projector.
    "cat-small": {
        "stem_channels": (32, 64),
        "hidden_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 3,
        "decoder_dim": 192,
        "decoder_layers": 2,
        "decoder_groups": 8,
        "average_top_k_layers": 4,
        "clone_batch": 2,
        # A teacher that follows the student within a few hundred steps: with AudioSet's 0.9998 -> 0.99999
        # over 100k updates a CPU-length run would regress a teacher that barely leaves its initialisation.
        "ema_decay": 0.99,
        "ema_end_decay": 0.999,
        "ema_anneal_end_steps": 300,
    },
    # EAT-base (cwx-worst-one/EAT): no stem (one 16 x 16 conv patch embedding), 12 blocks, targets averaged
    # over all 12, 16 clones per clip, no representation regularization: 85,254,144 encoder parameters
    # (87,840,000 with the CNN decoder: EAT's "88M").
    "eat-base": {
        "use_multi_resolution_stem": False,
        "num_hidden_layers": 12,
        "average_top_k_layers": 12,
        "rr_embedding_dim": 0,
        "rr_loss_weight": 0.0,
        "clone_batch": 16,
    },
}

_POSITIVE_INTS = (
    "num_mel_bins",
    "max_length",
    "patch_size",
    "num_channels",
    "stem_kernel_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mask_length",
    "clone_batch",
    "decoder_dim",
    "decoder_kernel_size",
    "decoder_groups",
    "decoder_layers",
    "average_top_k_layers",
    "ema_anneal_end_steps",
)
_PROBABILITIES = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "drop_path_rate",
    "classifier_dropout",
    "finetune_mask_ratio",
    "mask_ratio",
)
_NON_NEGATIVE = ("mask_prob_adjust", "cls_loss_weight", "rr_loss_weight", "initializer_range")
_FLAGS = ("use_multi_resolution_stem", "qkv_bias", "instance_norm_targets", "layer_norm_targets")
_CHOICES = {
    "pooling": ("cls", "mean"),
    "rr_loss_type": ("mse", "cosine", "l1"),
    "cls_rr_reduction": ("sum", "mean"),
}
# Strides of the first two stem stages (ConvMAE's 4x then 2x); the last one makes up the patch size.
STEM_STRIDES = (4, 2)


class CATConfig(PreTrainedConfig):
    r"""Configuration of [`CATModel`], [`CATForAudioClassification`] and [`CATForPreTraining`].

    The defaults build the reference CAT (preset ``"cat-base"``); ``"eat-base"`` is EAT and ``"cat-small"``
    a CPU-sized model with the same input geometry.

    Front end and patch grid:
        num_mel_bins (`int`, defaults to 128): mel bins of the input; a multiple of `patch_size`.
        max_length (`int`, defaults to 1024): the longest input in frames (10.24 s); a multiple of
            `patch_size`. It sizes the fixed position table; shorter inputs use its first rows.
        patch_size (`int`, defaults to 16): side of the square patches the transformer sees.
        num_channels (`int`, defaults to 1): input channels.

    Multi-resolution stem (CAT's Multi-resolution Block; ConvMAE-style, hierarchical):
        use_multi_resolution_stem (`bool`, defaults to `True`): the conv stem; `False` gives EAT's plain
            patch embedding.
        stem_channels (`tuple[int, int]`, defaults to `(256, 384)`): widths of the stride-4 and stride-8
            stages.
        stem_depths (`tuple[int, int]`, defaults to `(2, 2)`): conv blocks (CBlocks) per stage.
        stem_mlp_ratio (`float`, defaults to 4.0): width of the CBlocks' 1x1-conv MLP.
        stem_kernel_size (`int`, defaults to 5): odd kernel of the CBlocks' depthwise conv.
        The stage strides are 4, 2 and ``patch_size // 8`` (4, 8, 16 cumulatively), so `patch_size` must be
        a multiple of 8 when the stem is on.

    Transformer (data2vec 2.0 post-LN blocks, no final norm):
        hidden_size (`int`, defaults to 768): width.
        num_hidden_layers (`int`, defaults to 11): CAT trades EAT's 12th block for the stem.
        num_attention_heads (`int`, defaults to 12), mlp_ratio (`float`, defaults to 4.0), qkv_bias (`bool`,
            defaults to `True`), layer_norm_eps (`float`, defaults to 1e-6), hidden_act (`str`, defaults to
            `"gelu"`), hidden_dropout_prob and attention_probs_dropout_prob (`float`, defaults to 0.0).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the last block, rising linearly from
            0 (the reference fine-tunes with 0.1 and pre-trains with 0).
        initializer_range (`float`, defaults to 0.02): std of the Linear and CLS initialisation.

    Classification:
        pooling (`str`, defaults to `"cls"`): `"cls"` (the final CLS token, as EAT/CAT fine-tune) or
            `"mean"` (mean of the patch tokens that are neither dropped nor padding).
        classifier_dropout (`float`, defaults to 0.0): dropout before the head.
        finetune_mask_ratio (`float`, defaults to 0.0): fraction of patch tokens dropped at random per clip
            in training mode. EAT/CAT's fine-tuning ``mask_ratio`` (0.2 on AS-20K) is NOT a token drop: it
            sets the SpecAugment widths (``freqm = 128 * r``, ``timem = T * r``), which the training step's
            SpecAugment already covers; keep this at 0 for reference parity.

    Pre-training (bootstrap SSL with an EMA teacher):
        mask_ratio (`float`, defaults to 0.8), mask_length (`int`, defaults to 5), mask_prob_adjust
            (`float`, defaults to 0.07): inverse block masking, see `compute_block_mask_2d`.
        clone_batch (`int`, defaults to 4): independently masked student copies per clip (EAT: 16).
        decoder_dim (`int`, defaults to 768), decoder_kernel_size (`int`, defaults to 3), decoder_groups
            (`int`, defaults to 16), decoder_layers (`int`, defaults to 6): EAT's CNN decoder.
        average_top_k_layers (`int`, defaults to 11): teacher layers averaged into the targets.
        instance_norm_targets (`bool`, defaults to `True`): instance-normalise each teacher layer over
            tokens.
        layer_norm_targets (`bool`, defaults to `True`): layer-normalise the averaged target.
        cls_loss_weight (`float`, defaults to 1.0): weight of the CLS (utterance) alignment term.
        rr_loss_weight (`float`, defaults to 1.0): weight of representation regularization.
        rr_embedding_dim (`int`, defaults to 512): output of the RR projector (the frozen encoder's
            embedding size, CLAP: 512); 0 means no projector and no RR.
        rr_layer (`int`, defaults to -1): -1 regularises the final CLS token; ``i >= 0`` the CLS of block
            ``i``'s feed-forward output (the reference's ``clap_loss_layer = i + 1``).
        rr_loss_type (`str`, defaults to `"mse"`): `"mse"`, `"cosine"` or `"l1"`.
        cls_rr_reduction (`str`, defaults to `"sum"`): `"sum"` sums the CLS and RR terms over the local
            student samples, which is what fairseq's sample-size normalisation does in effect; `"mean"`
            averages them.
        ema_decay (`float`, defaults to 0.9998), ema_end_decay (`float`, defaults to 0.99999),
            ema_anneal_end_steps (`int`, defaults to 100000): the teacher's decay ramp (read by the training
            step).

    Example:

    ```python
    >>> from hf_audiorep.modeling.configuration_cat import CATConfig
    >>> config = CATConfig.from_preset("cat-base", num_labels=527, problem_type="multi_label_classification")
    ```
    """

    model_type = "audiorep-cat"

    num_mel_bins: int = 128
    max_length: int = 1024
    patch_size: int = 16
    num_channels: int = 1
    use_multi_resolution_stem: bool = True
    stem_channels: tuple[int, int] = (256, 384)
    stem_depths: tuple[int, int] = (2, 2)
    stem_mlp_ratio: float = 4.0
    stem_kernel_size: int = 5
    hidden_size: int = 768
    num_hidden_layers: int = 11
    num_attention_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    initializer_range: float = 0.02
    pooling: str = "cls"
    classifier_dropout: float = 0.0
    finetune_mask_ratio: float = 0.0
    mask_ratio: float = 0.8
    mask_length: int = 5
    mask_prob_adjust: float = 0.07
    clone_batch: int = 4
    decoder_dim: int = 768
    decoder_kernel_size: int = 3
    decoder_groups: int = 16
    decoder_layers: int = 6
    average_top_k_layers: int = 11
    instance_norm_targets: bool = True
    layer_norm_targets: bool = True
    cls_loss_weight: float = 1.0
    rr_loss_weight: float = 1.0
    rr_embedding_dim: int = 512
    rr_layer: int = -1
    rr_loss_type: str = "mse"
    cls_rr_reduction: str = "sum"
    ema_decay: float = 0.9998
    ema_end_decay: float = 0.99999
    ema_anneal_end_steps: int = 100000

    def __post_init__(self, **kwargs):
        # JSON gives lists back; tuples keep a loaded config equal to the one that was saved.
        for name in ("stem_channels", "stem_depths"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        super().__post_init__(**kwargs)
        self._validate()

    # ---- validation -------------------------------------------------------------------------------------

    def _fail(self, name: str, requirement: str) -> None:
        raise ValueError(f"CATConfig.{name} {requirement}, got {getattr(self, name)!r}")

    def _validate(self) -> None:
        """Reject hyperparameters that would fail deep inside torch, naming the offending field."""
        for name in (*_POSITIVE_INTS, "rr_embedding_dim", "rr_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"CATConfig.{name} must be an int, got {value!r}")
        for name in _POSITIVE_INTS:
            if getattr(self, name) <= 0:
                self._fail(name, "must be positive")
        numbers = (
            *_PROBABILITIES,
            *_NON_NEGATIVE,
            "mlp_ratio",
            "stem_mlp_ratio",
            "layer_norm_eps",
            "ema_decay",
            "ema_end_decay",
        )
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"CATConfig.{name} must be a number, got {value!r}")
        for name in _PROBABILITIES:
            if not 0.0 <= getattr(self, name) < 1.0:
                self._fail(name, "must be in [0, 1)")
        for name in _NON_NEGATIVE:
            if getattr(self, name) < 0:
                self._fail(name, "must be >= 0")
        for name in ("mlp_ratio", "stem_mlp_ratio", "layer_norm_eps"):
            if getattr(self, name) <= 0:
                self._fail(name, "must be positive")
        for name in ("ema_decay", "ema_end_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                self._fail(name, "must be in [0, 1]")
        for name in _FLAGS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"CATConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                self._fail(name, f"must be one of {choices}")
        if self.hidden_act not in ACT2FN:
            self._fail("hidden_act", "must be an activation in transformers' ACT2FN")
        self._validate_geometry()
        self._validate_stem()
        self._validate_pretraining()

    def _validate_geometry(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CATConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_size % 4:
            # Half the channels encode each grid axis as sin/cos pairs.
            self._fail("hidden_size", "must be divisible by 4 for the 2-D sin-cos positions")
        for name in ("num_mel_bins", "max_length"):
            if getattr(self, name) % self.patch_size:
                self._fail(name, f"must be a multiple of patch_size ({self.patch_size})")

    def _validate_stem(self) -> None:
        for name in ("stem_channels", "stem_depths"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            ):
                self._fail(name, "must be two ints (one per stem stage before the last)")
        if any(c <= 0 for c in self.stem_channels):
            self._fail("stem_channels", "must be positive")
        if any(d < 0 for d in self.stem_depths):
            self._fail("stem_depths", "must be >= 0")
        if self.stem_kernel_size % 2 == 0:
            # An even depthwise kernel cannot be padded symmetrically: the grid would shift.
            self._fail("stem_kernel_size", "must be odd")
        if self.use_multi_resolution_stem and self.patch_size % (STEM_STRIDES[0] * STEM_STRIDES[1]):
            self._fail(
                "patch_size", "must be a multiple of 8 with the multi-resolution stem (strides 4, 2, p/8)"
            )

    def _validate_pretraining(self) -> None:
        for name in ("hidden_size", "decoder_dim"):
            if getattr(self, name) % self.decoder_groups:
                raise ValueError(
                    f"CATConfig.decoder_groups ({self.decoder_groups}) must divide {name} "
                    f"({getattr(self, name)})"
                )
        if self.decoder_kernel_size % 2 == 0:
            self._fail("decoder_kernel_size", "must be odd")
        if self.average_top_k_layers > self.num_hidden_layers:
            raise ValueError(
                f"CATConfig.average_top_k_layers ({self.average_top_k_layers}) must be <= num_hidden_layers "
                f"({self.num_hidden_layers})"
            )
        if self.rr_embedding_dim < 0:
            self._fail("rr_embedding_dim", "must be >= 0 (0 = no RR projector)")
        if not -1 <= self.rr_layer < self.num_hidden_layers:
            self._fail(
                "rr_layer", f"must be -1 (final CLS) or a block index in [0, {self.num_hidden_layers})"
            )
        if self.ema_end_decay < self.ema_decay:
            self._fail("ema_end_decay", f"must be >= ema_decay ({self.ema_decay})")

    # ---- derived -------------------------------------------------------------------------------------

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(time, frequency)`` patches of a ``max_length``-frame input: (64, 8) for AudioSet clips."""
        return self.max_length // self.patch_size, self.num_mel_bins // self.patch_size

    @property
    def stem_strides(self) -> tuple[int, int, int]:
        """Strides of the three stem stages: (4, 2, patch_size // 8), cumulatively 4, 8 and patch_size."""
        return (*STEM_STRIDES, self.patch_size // (STEM_STRIDES[0] * STEM_STRIDES[1]))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CATConfig:
        """Build a named architecture (see `CAT_PRESETS`); keyword arguments override its fields."""
        if name not in CAT_PRESETS:
            raise ValueError(f"unknown CAT preset {name!r}; available: {sorted(CAT_PRESETS)}")
        return cls(**{**CAT_PRESETS[name], **overrides})
