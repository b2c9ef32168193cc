"""AudioMAE configuration: a ViT-B/16 over 1024 x 128 log-mel spectrograms (Huang et al., 2022).

One config serves both stages: the encoder fields, the fine-tuning fields (patch-out, stochastic depth,
pooling) read by [`AudioMAEForAudioClassification`], and the masked-autoencoder fields (decoder size,
mask ratio, normalised-pixel loss) read by [`AudioMAEForPreTraining`]. A pre-training checkpoint is
therefore also a fine-tuning starting point, with nothing to edit.

The config is a strict dataclass (see `_config_checks`): an invalid value raises a ``ValueError`` naming the
field and the value (also a ``TypeError`` when its type is wrong, and strict's ``StrictDataclassError`` either
way). ``__init__``, `from_preset` and a ``config.json`` get every check; an override passed to
``from_pretrained`` is checked on its own at once, and against the other fields by ``save_pretrained``.
"""

from typing import Any, Literal, Self

from huggingface_hub.dataclasses import validated_field
from transformers.configuration_utils import PreTrainedConfig

from ._config_checks import activation, divisible_by, non_negative, positive, rate, strict_config

__all__ = ["AUDIOMAE_PRESETS", "AudioMAEConfig"]


AUDIOMAE_PRESETS: dict[str, dict[str, Any]] = {
    # ViT-B/16 of facebookresearch/AudioMAE (models_vit.vit_base_patch16): pre-LN, 12 x 768, 12
    # heads, on a 64 x 8 grid of 16 x 16 patches of a 10.24 s, 128-bin clip. With a 527-class head
    # it has 85,659,407 trainable parameters, as AudioMAE's fine-tuning log reports.
    "audiomae-base": {},
    # Same input geometry as the base model (so the feature extractor, the position grid and the
    # patch-out fractions carry over unchanged), at 1/4 width and 1/3 depth: 1.93 M parameters with
    # a 527-class head; a training step on 8 clips of 10 s takes about a second on 2 CPU cores.
    # Shorter clips need no other preset, as max_length is only an upper bound. The MAE decoder
    # shrinks by the same 1/4 width (0.45 M parameters), to 2 blocks.
    "audiomae-tiny": {
        "hidden_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 3,
        "decoder_hidden_size": 128,
        "decoder_num_hidden_layers": 2,
        "decoder_num_attention_heads": 4,
    },
}


@strict_config
class AudioMAEConfig(PreTrainedConfig):
    r"""Configuration of [`AudioMAEModel`], [`AudioMAEForAudioClassification`] and [`AudioMAEForPreTraining`].

    The defaults build the ViT-B/16 encoder that AudioMAE fine-tunes on AudioSet, and the 512-wide, 8-block
    decoder it is pre-trained with.

    Args:
        hidden_size (`int`, defaults to 768): width of the encoder.
        num_hidden_layers (`int`, defaults to 12): number of pre-LN transformer blocks.
        num_attention_heads (`int`, defaults to 12): attention heads per block; must divide `hidden_size`.
        mlp_ratio (`float`, defaults to 4.0): feed-forward width as a multiple of `hidden_size`.
        hidden_act (`str`, defaults to `"gelu"`): feed-forward activation (exact GELU, as timm's `nn.GELU`).
        qkv_bias (`bool`, defaults to `True`): bias in the fused query/key/value projection.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm (timm ViT value).
        hidden_dropout_prob (`float`, defaults to 0.0): dropout on the embeddings, the attention output
            projection and the feed-forward network.
        attention_probs_dropout_prob (`float`, defaults to 0.0): dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.1): stochastic depth rate of the last block; it rises linearly
            from 0 at the first block (AudioMAE fine-tuning uses 0.1). Pre-training does not use it.
        patch_size (`int`, defaults to 16): side of the square, non-overlapping patches.
        num_mel_bins (`int`, defaults to 128): mel bins of the input; a multiple of `patch_size`.
        max_length (`int`, defaults to 1024): the longest input in frames (10.24 s at a 10 ms hop); a multiple
            of `patch_size`. Shorter inputs are accepted and use the first rows of the position grid.
        num_channels (`int`, defaults to 1): input channels of the patch embedding.
        mask_t_prob (`float`, defaults to 0.2): fraction of time-patch columns dropped per clip by the
            fine-tuning patch-out, in training mode only.
        mask_f_prob (`float`, defaults to 0.2): fraction of frequency-patch rows dropped likewise.
        use_cls_pooling (`bool`, defaults to `False`): pool with the normalised CLS token instead of
            AudioMAE's `global_pool` (mean of the patch tokens, then `fc_norm`).
        classifier_dropout (`float`, defaults to 0.0): dropout before the classification head.
        classifier (`"linear"` or `"cosine"`, defaults to `"linear"`): the classification head: a linear
            layer, or ContrastASC's ``cosine_scale * cos(W_c, h)`` (`CosineClassifier`, its teacher's head).
        cosine_scale (`float`, defaults to 56.0): scale of the cosine head's logits.
        initializer_range (`float`, defaults to 0.02): standard deviation of the CLS token initialisation
            (and of the MAE mask token).
        classifier_init_std (`float`, defaults to 0.02): standard deviation of a new classification head.
            AudioMAE's fine-tuning recipe uses 2e-5 on top of a *pre-trained* encoder; from scratch that
            near-zero head stalls training (the encoder gets almost no gradient through `fc_norm` while
            the head only learns the label prior; see docs/benchmarks.md), so the default is timm's 0.02.
        decoder_hidden_size (`int`, defaults to 512): width of the MAE decoder of [`AudioMAEForPreTraining`].
        decoder_num_hidden_layers (`int`, defaults to 8): pre-LN blocks of the decoder (AudioMAE's
            `mae_vit_base_patch16_dec512d8b`).
        decoder_num_attention_heads (`int`, defaults to 16): attention heads per decoder block; must divide
            `decoder_hidden_size`.
        mask_ratio (`float`, defaults to 0.8): fraction of the patches hidden from the encoder in pre-training
            (AudioMAE: 0.8, random unstructured masking).
        norm_pix_loss (`bool`, defaults to `True`): regress each patch normalised by its own mean and variance
            (MAE's `norm_pix_loss`, used by AudioMAE) instead of the raw log-mel values.

    Fine-tuning fields (`mask_t_prob`, `mask_f_prob`, `drop_path_rate`, `use_cls_pooling`'s head,
    `classifier_dropout`) are not used by pre-training, and the decoder fields are not used by the encoder or
    the classifier.

    Example:

    ```python
    >>> from hf_audiorep.modeling.configuration_audiomae import AudioMAEConfig
    >>> config = AudioMAEConfig.from_preset("audiomae-base", num_labels=527,
    ...                                     problem_type="multi_label_classification")
    ```
    """

    model_type = "audiorep-audiomae"

    # Half the channels of the 2-D sin-cos positions encode each grid axis as sin/cos pairs: widths are
    # multiples of 4.
    hidden_size: int = validated_field([positive, divisible_by(4)], default=768)
    num_hidden_layers: int = validated_field(positive, default=12)
    num_attention_heads: int = validated_field(positive, default=12)
    mlp_ratio: float | int = validated_field(positive, default=4.0)
    hidden_act: str = validated_field(activation, default="gelu")
    qkv_bias: bool = True
    layer_norm_eps: float | int = validated_field(positive, default=1e-6)
    hidden_dropout_prob: float | int = validated_field(rate, default=0.0)
    attention_probs_dropout_prob: float | int = validated_field(rate, default=0.0)
    drop_path_rate: float | int = validated_field(rate, default=0.1)
    patch_size: int = validated_field(positive, default=16)
    num_mel_bins: int = validated_field(positive, default=128)
    max_length: int = validated_field(positive, default=1024)
    num_channels: int = validated_field(positive, default=1)
    mask_t_prob: float | int = validated_field(rate, default=0.2)
    mask_f_prob: float | int = validated_field(rate, default=0.2)
    use_cls_pooling: bool = False
    classifier_dropout: float | int = validated_field(rate, default=0.0)
    classifier: Literal["linear", "cosine"] = "linear"
    cosine_scale: float | int = validated_field(positive, default=56.0)
    initializer_range: float | int = validated_field(non_negative, default=0.02)
    classifier_init_std: float | int = validated_field(non_negative, default=0.02)
    decoder_hidden_size: int = validated_field([positive, divisible_by(4)], default=512)
    decoder_num_hidden_layers: int = validated_field(positive, default=8)
    decoder_num_attention_heads: int = validated_field(positive, default=16)
    mask_ratio: float | int = validated_field(rate, default=0.8)
    norm_pix_loss: bool = True

    # ---- relations between fields: strict runs every validate_* after __init__ and before saving ----------

    def validate_heads(self) -> None:
        for width, heads in (
            ("hidden_size", "num_attention_heads"),
            ("decoder_hidden_size", "decoder_num_attention_heads"),
        ):
            if getattr(self, width) % getattr(self, heads):
                raise ValueError(
                    f"AudioMAEConfig.{width} ({getattr(self, width)}) must be divisible by {heads} "
                    f"({getattr(self, heads)})"
                )

    def validate_patch_grid(self) -> None:
        for name in ("num_mel_bins", "max_length"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(
                    f"AudioMAEConfig.{name} ({getattr(self, name)}) must be a multiple of patch_size "
                    f"({self.patch_size})"
                )

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(time, frequency)`` patches of a ``max_length``-frame input: (64, 8) for AudioSet clips."""
        return self.max_length // self.patch_size, self.num_mel_bins // self.patch_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """Build a named architecture (see `AUDIOMAE_PRESETS`); keyword arguments override its fields."""
        if name not in AUDIOMAE_PRESETS:
            raise ValueError(f"unknown AudioMAE preset {name!r}; available: {sorted(AUDIOMAE_PRESETS)}")
        return cls(**{**AUDIOMAE_PRESETS[name], **overrides})
