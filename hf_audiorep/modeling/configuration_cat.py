"""CAT configuration: the Convolutional Audio Transformer of "Representation-Regularized Convolutional Audio
Transformer for Audio Understanding" (arXiv 2601.21612), and its stem-less ancestor EAT.

One config serves the encoder ([`CATModel`]), the classifier ([`CATForAudioClassification`]) and bootstrap
pre-training ([`CATForPreTraining`]): the pre-training fields (masking, decoder, target normalisation, loss
weights, EMA schedule) sit beside the encoder's, so a pre-training checkpoint is also a fine-tuning starting
point. With ``use_multi_resolution_stem=False`` the model is EAT (a plain 16 x 16 patch embedding, 12 blocks).

The config is a strict dataclass (see `_config_checks`): an invalid value raises a ``ValueError`` naming the
field and the value (also a ``TypeError`` when its type is wrong, and strict's ``StrictDataclassError`` either
way). ``__init__``, `from_preset` and a ``config.json`` get every check; an override passed to
``from_pretrained`` is checked on its own at once, and against the other fields by ``save_pretrained``.
"""

from typing import Any, Literal, Self

from huggingface_hub.dataclasses import validated_field
from transformers.configuration_utils import PreTrainedConfig

from ._config_checks import (
    activation,
    at_least,
    divisible_by,
    each,
    length,
    non_negative,
    odd,
    positive,
    rate,
    strict_config,
    unit_interval,
)

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
        # No CLS (utterance) term, and clips pooled as the mean of their patches. The CLS target is the clip
        # mean of per-clip instance-normalised targets: nearly the same small vector for every clip, which a
        # post-LN CLS cannot reach. At 8 clips x 2 clones its gradient on the encoder was 50-800x the patch
        # term's and collapsed the encoder below its random initialisation within 50 steps, at weight 1
        # ("sum" or "mean") and at 0.1; without it the probe rises (docs/benchmarks.md, "Why CAT's bootstrap
        # did not learn", experiments/diag_bootstrap.py).
        "cls_loss_weight": 0.0,
        "pooling": "mean",
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

# Strides of the first two stem stages (ConvMAE's 4x then 2x); the last one makes up the patch size.
STEM_STRIDES = (4, 2)


@strict_config
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

    num_mel_bins: int = validated_field(positive, default=128)
    max_length: int = validated_field(positive, default=1024)
    patch_size: int = validated_field(positive, default=16)
    num_channels: int = validated_field(positive, default=1)
    use_multi_resolution_stem: bool = True
    # Lists (JSON gives them back) become tuples in __post_init__; `length` checks a list set later.
    stem_channels: tuple[int, int] | list[int] = validated_field(
        [length(2), each(positive)], default=(256, 384)
    )
    stem_depths: tuple[int, int] | list[int] = validated_field(
        [length(2), each(non_negative)], default=(2, 2)
    )
    stem_mlp_ratio: float | int = validated_field(positive, default=4.0)
    # An even depthwise kernel cannot be padded symmetrically: the grid would shift.
    stem_kernel_size: int = validated_field([positive, odd], default=5)
    # Half the channels encode each grid axis as sin/cos pairs.
    hidden_size: int = validated_field([positive, divisible_by(4)], default=768)
    num_hidden_layers: int = validated_field(positive, default=11)
    num_attention_heads: int = validated_field(positive, default=12)
    mlp_ratio: float | int = validated_field(positive, default=4.0)
    qkv_bias: bool = True
    layer_norm_eps: float | int = validated_field(positive, default=1e-6)
    hidden_act: str = validated_field(activation, default="gelu")
    hidden_dropout_prob: float | int = validated_field(rate, default=0.0)
    attention_probs_dropout_prob: float | int = validated_field(rate, default=0.0)
    drop_path_rate: float | int = validated_field(rate, default=0.0)
    initializer_range: float | int = validated_field(non_negative, default=0.02)
    pooling: Literal["cls", "mean"] = "cls"
    classifier_dropout: float | int = validated_field(rate, default=0.0)
    finetune_mask_ratio: float | int = validated_field(rate, default=0.0)
    mask_ratio: float | int = validated_field(rate, default=0.8)
    mask_length: int = validated_field(positive, default=5)
    mask_prob_adjust: float | int = validated_field(non_negative, default=0.07)
    clone_batch: int = validated_field(positive, default=4)
    decoder_dim: int = validated_field(positive, default=768)
    decoder_kernel_size: int = validated_field([positive, odd], default=3)
    decoder_groups: int = validated_field(positive, default=16)
    decoder_layers: int = validated_field(positive, default=6)
    average_top_k_layers: int = validated_field(positive, default=11)
    instance_norm_targets: bool = True
    layer_norm_targets: bool = True
    cls_loss_weight: float | int = validated_field(non_negative, default=1.0)
    rr_loss_weight: float | int = validated_field(non_negative, default=1.0)
    rr_embedding_dim: int = validated_field(non_negative, default=512)
    rr_layer: int = validated_field(at_least(-1), default=-1)
    rr_loss_type: Literal["mse", "cosine", "l1"] = "mse"
    cls_rr_reduction: Literal["sum", "mean"] = "sum"
    ema_decay: float | int = validated_field(unit_interval, default=0.9998)
    ema_end_decay: float | int = validated_field(unit_interval, default=0.99999)
    ema_anneal_end_steps: int = validated_field(positive, default=100000)

    def __post_init__(self, **kwargs):
        # Tuples keep a loaded config equal to the one that was saved; strict checks them as two ints.
        self.stem_channels, self.stem_depths = tuple(self.stem_channels), tuple(self.stem_depths)
        super().__post_init__(**kwargs)

    # ---- relations between fields: strict runs every validate_* after __init__ and before saving ----------

    def validate_geometry(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"CATConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        for name in ("num_mel_bins", "max_length"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(
                    f"CATConfig.{name} ({getattr(self, name)}) must be a multiple of patch_size "
                    f"({self.patch_size})"
                )
        if self.use_multi_resolution_stem and self.patch_size % (STEM_STRIDES[0] * STEM_STRIDES[1]):
            raise ValueError(
                f"CATConfig.patch_size ({self.patch_size}) must be a multiple of 8 with the multi-resolution "
                "stem (strides 4, 2, p/8)"
            )

    def validate_pretraining(self) -> None:
        for name in ("hidden_size", "decoder_dim"):
            if getattr(self, name) % self.decoder_groups:
                raise ValueError(
                    f"CATConfig.decoder_groups ({self.decoder_groups}) must divide {name} "
                    f"({getattr(self, name)})"
                )
        if self.average_top_k_layers > self.num_hidden_layers:
            raise ValueError(
                f"CATConfig.average_top_k_layers ({self.average_top_k_layers}) must be <= num_hidden_layers "
                f"({self.num_hidden_layers})"
            )
        if self.rr_layer >= self.num_hidden_layers:
            raise ValueError(
                f"CATConfig.rr_layer ({self.rr_layer}) must be -1 (final CLS) or a block index below "
                f"num_hidden_layers ({self.num_hidden_layers})"
            )
        if self.ema_end_decay < self.ema_decay:
            raise ValueError(
                f"CATConfig.ema_end_decay ({self.ema_end_decay}) must be >= ema_decay ({self.ema_decay})"
            )

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
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """Build a named architecture (see `CAT_PRESETS`); keyword arguments override its fields."""
        if name not in CAT_PRESETS:
            raise ValueError(f"unknown CAT preset {name!r}; available: {sorted(CAT_PRESETS)}")
        return cls(**{**CAT_PRESETS[name], **overrides})
