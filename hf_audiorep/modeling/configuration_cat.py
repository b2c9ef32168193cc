"""CAT configuration: the Convolutional Audio Transformer of "Representation-Regularized Convolutional Audio
Transformer for Audio Understanding" (arXiv 2601.21612), and its stem-less ancestor EAT.

One config serves the encoder ([`CATModel`]), the classifier ([`CATForAudioClassification`]) and bootstrap
pre-training ([`CATForPreTraining`]): the pre-training fields (masking, decoder, target normalisation, loss
weights, EMA schedule) sit beside the encoder's, so a pre-training checkpoint is also a fine-tuning starting
point. With ``use_multi_resolution_stem=False`` the model is EAT (a plain 16 x 16 patch embedding, 12 blocks).
The fields CAT shares with BAT (patch grid, transformer, classification, pre-training) are declared once, in
`BootstrapViTConfig`; this module adds the stem and restates CAT's own defaults.

Invalid values raise a ``ValueError`` naming the field, as in every config of the library (`_config_checks`);
the checks of the shared fields and of their relations are `BootstrapViTConfig`'s.
"""

from typing import Any

from huggingface_hub.dataclasses import validated_field

from ._bootstrap_config import BootstrapViTConfig
from ._config_checks import each, length, non_negative, odd, positive, strict_config

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
        # Students see 40 % of the patches, not the reference's 20 %: with 4-s clips (a 25 x 8 grid) 80 %
        # masking leaves a 4-block encoder 40 patches, and in a 600-step run its probe rose less than at 60 %
        # or 40 % masking (docs/benchmarks.md, "More steps and less masking for the main job").
        "mask_ratio": 0.6,
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
class CATConfig(BootstrapViTConfig):
    r"""Configuration of [`CATModel`], [`CATForAudioClassification`] and [`CATForPreTraining`].

    The defaults build the reference CAT (preset ``"cat-base"``); ``"eat-base"`` is EAT and ``"cat-small"``
    a CPU-sized model with the same input geometry. Every field of [`BootstrapViTConfig`] applies (patch grid,
    transformer, classification, pre-training); CAT's defaults differ from EAT's there in:

        num_hidden_layers (`int`, defaults to 11): CAT trades EAT's 12th block for the stem.
        average_top_k_layers (`int`, defaults to 11): teacher layers averaged into the targets (all of them).
        clone_batch (`int`, defaults to 4): independently masked student copies per clip (EAT: 16).
        rr_embedding_dim (`int`, defaults to 512): output of the RR projector (CLAP's embedding size).
        decoder_type (`str`, defaults to `"cnn"`): EAT's CNN decoder, as the reference; `"transformer"` is
            BAT's decoder, see [`BootstrapViTConfig`].

    The transformer blocks are data2vec 2.0's post-LN blocks (no final norm).

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

    Example:

    ```python
    >>> from hf_audiorep.modeling.configuration_cat import CATConfig
    >>> config = CATConfig.from_preset("cat-base", num_labels=527, problem_type="multi_label_classification")
    ```
    """

    model_type = "audiorep-cat"
    _presets = CAT_PRESETS
    _family = "CAT"

    num_hidden_layers: int = validated_field(positive, default=11)
    clone_batch: int = validated_field(positive, default=4)
    average_top_k_layers: int = validated_field(positive, default=11)
    rr_embedding_dim: int = validated_field(non_negative, default=512)
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

    def __post_init__(self, **kwargs):
        # Tuples keep a loaded config equal to the one that was saved; strict checks them as two ints.
        self.stem_channels, self.stem_depths = tuple(self.stem_channels), tuple(self.stem_depths)
        super().__post_init__(**kwargs)

    def validate_geometry(self) -> None:
        super().validate_geometry()
        if self.use_multi_resolution_stem and self.patch_size % (STEM_STRIDES[0] * STEM_STRIDES[1]):
            raise ValueError(
                f"CATConfig.patch_size ({self.patch_size}) must be a multiple of 8 with the multi-resolution "
                "stem (strides 4, 2, p/8)"
            )

    @property
    def stem_strides(self) -> tuple[int, int, int]:
        """Strides of the three stem stages: (4, 2, patch_size // 8), cumulatively 4, 8 and patch_size."""
        return (*STEM_STRIDES, self.patch_size // (STEM_STRIDES[0] * STEM_STRIDES[1]))
