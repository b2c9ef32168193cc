"""The fields every bootstrap-pre-trained ViT config shares: CAT / EAT (`CATConfig`) and BAT (`BATConfig`).

Both families are a ViT over 16 x 16 patches of a log-mel spectrogram, fine-tuned with CLS or mean pooling,
and pre-trained by data2vec 2.0's bootstrap objective (an EMA teacher, inverse block masking, masked clones,
patch and CLS regression, optional representation regularization). `BootstrapViTConfig` declares those fields
and checks them once; a family config subclasses it, adds its own fields (CAT's conv stem, BAT's attention
gate), restates the defaults it changes, and names its presets (``_presets``, ``_family``).

The defaults are EAT's (data2vec 2.0 for audio, ViT-B on 1024 x 128 inputs, 16 clones, the CNN decoder).
Like every config of the library it is a strict dataclass (see `_config_checks`); it has no ``model_type``
and is never instantiated on its own.
"""

from typing import Any, Literal, Self

from huggingface_hub.dataclasses import validated_field
from transformers.configuration_utils import PreTrainedConfig

from ._config_checks import (
    activation,
    at_least,
    divisible_by,
    non_negative,
    odd,
    positive,
    rate,
    strict_config,
    unit_interval,
)

__all__ = ["BootstrapViTConfig"]


@strict_config
class BootstrapViTConfig(PreTrainedConfig):
    r"""Fields shared by [`CATConfig`] and [`BATConfig`]; see those for each family's defaults and presets.

    Front end and patch grid:
        num_mel_bins (`int`, defaults to 128): mel bins of the input; a multiple of `patch_size`.
        max_length (`int`, defaults to 1024): the longest input in frames (10.24 s); a multiple of
            `patch_size`. It sizes the fixed position table; shorter inputs use its first rows.
        patch_size (`int`, defaults to 16): side of the square patches the transformer sees.
        num_channels (`int`, defaults to 1): input channels.

    Transformer:
        hidden_size (`int`, defaults to 768): width; divisible by 4 (half the channels encode each grid axis
            as sin/cos pairs) and by `num_attention_heads`.
        num_hidden_layers (`int`, defaults to 12), num_attention_heads (`int`, defaults to 12), mlp_ratio
            (`float`, defaults to 4.0), qkv_bias (`bool`, defaults to `True`), layer_norm_eps (`float`,
            defaults to 1e-6), hidden_act (`str`, defaults to `"gelu"`), hidden_dropout_prob and
            attention_probs_dropout_prob (`float`, defaults to 0.0).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth of the last block, rising linearly from
            0 (EAT fine-tunes with 0.1 and pre-trains with 0).
        initializer_range (`float`, defaults to 0.02): std of the Linear and CLS initialisation.

    Classification:
        pooling (`str`, defaults to `"cls"`): `"cls"` (the final CLS token, as EAT/CAT fine-tune) or
            `"mean"` (mean of the patch tokens that are neither dropped nor padding).
        classifier_dropout (`float`, defaults to 0.0): dropout before the head.
        classifier (`"linear"` or `"cosine"`, defaults to `"linear"`): the classification head: a linear
            layer, or ContrastASC's ``cosine_scale * cos(W_c, h)`` (`CosineClassifier`, its teacher's head).
        cosine_scale (`float`, defaults to 56.0): scale of the cosine head's logits.
        finetune_mask_ratio (`float`, defaults to 0.0): fraction of patch tokens dropped at random per clip
            in training mode. EAT/CAT's fine-tuning ``mask_ratio`` (0.2 on AS-20K) is NOT a token drop: it
            sets the SpecAugment widths (``freqm = 128 * r``, ``timem = T * r``), which the training step's
            SpecAugment already covers; keep this at 0 for reference parity.

    Pre-training (bootstrap SSL with an EMA teacher):
        mask_ratio (`float`, defaults to 0.8), mask_length (`int`, defaults to 5), mask_prob_adjust
            (`float`, defaults to 0.07): inverse block masking, see `compute_block_mask_2d`.
        clone_batch (`int`, defaults to 16): independently masked student copies per clip (EAT: 16).
        decoder_type (`str`, defaults to `"cnn"`): the decoder that fills in the hidden patches: `"cnn"`,
            EAT's light CNN decoder, or `"transformer"`, pre-LN transformer blocks over every patch (see
            `BootstrapTransformerDecoder`).
        decoder_dim (`int`, defaults to 768), decoder_kernel_size (`int`, defaults to 3), decoder_groups
            (`int`, defaults to 16), decoder_layers (`int`, defaults to 6): the CNN decoder's width, kernel,
            conv groups and depth (read with `decoder_type="cnn"` only; the kernel also sizes the transformer
            decoder's `"conv"` positions).
        transformer_decoder_dim (`int`, defaults to 384), transformer_decoder_layers (`int`, defaults to 6),
            transformer_decoder_heads (`int`, defaults to 6): the transformer decoder's width, depth and heads
            (read with `decoder_type="transformer"` only); its MLP ratio, activation and eps are the
            encoder's.
        transformer_decoder_positions (`str`, defaults to `"sincos"`): how the transformer decoder tells its
            patches apart: `"sincos"`, MAE's fixed 2-D sin-cos positions added to every token, or `"conv"`, no
            absolute positions but a depthwise ``decoder_kernel_size`` convolution over the token grid added
            to it (wav2vec 2.0's and BEATs' convolutional positions), so that a hidden patch is told apart
            only by what its visible neighbours carry, as in the CNN decoder.
        average_top_k_layers (`int`, defaults to 12): teacher layers averaged into the targets.
        instance_norm_targets (`bool`, defaults to `True`): instance-normalise each teacher layer over
            tokens.
        layer_norm_targets (`bool`, defaults to `True`): layer-normalise the averaged target.
        cls_loss_weight (`float`, defaults to 1.0): weight of the CLS (utterance) alignment term.
        rr_loss_weight (`float`, defaults to 1.0): weight of representation regularization.
        rr_embedding_dim (`int`, defaults to 0): output of the RR projector (the frozen encoder's embedding
            size, CLAP: 512); 0 means no projector and no RR.
        rr_layer (`int`, defaults to -1): -1 regularises the final CLS token; ``i >= 0`` the CLS of block
            ``i``'s feed-forward output (the CAT reference's ``clap_loss_layer = i + 1``).
        rr_loss_type (`str`, defaults to `"mse"`): `"mse"`, `"cosine"` or `"l1"`.
        cls_rr_reduction (`str`, defaults to `"sum"`): `"sum"` sums the CLS and RR terms over the local
            student samples, which is what fairseq's sample-size normalisation does in effect; `"mean"`
            averages them.
        ema_decay (`float`, defaults to 0.9998), ema_end_decay (`float`, defaults to 0.99999),
            ema_anneal_end_steps (`int`, defaults to 100000): the teacher's decay ramp (read by the training
            step).
    """

    # Set by each family (unannotated, so they are class attributes, not config fields): its presets
    # ``{name: field overrides}`` and the name its errors use.
    _presets = {}
    _family = ""

    num_mel_bins: int = validated_field(positive, default=128)
    max_length: int = validated_field(positive, default=1024)
    patch_size: int = validated_field(positive, default=16)
    num_channels: int = validated_field(positive, default=1)
    # Half the channels encode each grid axis as sin/cos pairs.
    hidden_size: int = validated_field([positive, divisible_by(4)], default=768)
    num_hidden_layers: int = validated_field(positive, default=12)
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
    classifier: Literal["linear", "cosine"] = "linear"
    cosine_scale: float | int = validated_field(positive, default=56.0)
    finetune_mask_ratio: float | int = validated_field(rate, default=0.0)
    mask_ratio: float | int = validated_field(rate, default=0.8)
    mask_length: int = validated_field(positive, default=5)
    mask_prob_adjust: float | int = validated_field(non_negative, default=0.07)
    clone_batch: int = validated_field(positive, default=16)
    decoder_type: Literal["cnn", "transformer"] = "cnn"
    decoder_dim: int = validated_field(positive, default=768)
    decoder_kernel_size: int = validated_field([positive, odd], default=3)
    decoder_groups: int = validated_field(positive, default=16)
    decoder_layers: int = validated_field(positive, default=6)
    # Divisible by 4: the decoder adds its own 2-D sin-cos positions.
    transformer_decoder_dim: int = validated_field([positive, divisible_by(4)], default=384)
    transformer_decoder_layers: int = validated_field(positive, default=6)
    transformer_decoder_heads: int = validated_field(positive, default=6)
    transformer_decoder_positions: Literal["sincos", "conv"] = "sincos"
    average_top_k_layers: int = validated_field(positive, default=12)
    instance_norm_targets: bool = True
    layer_norm_targets: bool = True
    cls_loss_weight: float | int = validated_field(non_negative, default=1.0)
    rr_loss_weight: float | int = validated_field(non_negative, default=1.0)
    rr_embedding_dim: int = validated_field(non_negative, default=0)
    rr_layer: int = validated_field(at_least(-1), default=-1)
    rr_loss_type: Literal["mse", "cosine", "l1"] = "mse"
    cls_rr_reduction: Literal["sum", "mean"] = "sum"
    ema_decay: float | int = validated_field(unit_interval, default=0.9998)
    ema_end_decay: float | int = validated_field(unit_interval, default=0.99999)
    ema_anneal_end_steps: int = validated_field(positive, default=100000)

    # ---- relations between fields: strict runs every validate_* after __init__ and before saving ----------

    def validate_geometry(self) -> None:
        name = type(self).__name__
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{name}.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        for field in ("num_mel_bins", "max_length"):
            if getattr(self, field) % self.patch_size:
                raise ValueError(
                    f"{name}.{field} ({getattr(self, field)}) must be a multiple of patch_size "
                    f"({self.patch_size})"
                )

    def validate_pretraining(self) -> None:
        name = type(self).__name__
        if self.decoder_type == "cnn":
            for field in ("hidden_size", "decoder_dim"):
                if getattr(self, field) % self.decoder_groups:
                    raise ValueError(
                        f"{name}.decoder_groups ({self.decoder_groups}) must divide {field} "
                        f"({getattr(self, field)})"
                    )
        elif self.transformer_decoder_dim % self.transformer_decoder_heads:
            raise ValueError(
                f"{name}.transformer_decoder_dim ({self.transformer_decoder_dim}) must be divisible by "
                f"transformer_decoder_heads ({self.transformer_decoder_heads})"
            )
        if self.average_top_k_layers > self.num_hidden_layers:
            raise ValueError(
                f"{name}.average_top_k_layers ({self.average_top_k_layers}) must be <= num_hidden_layers "
                f"({self.num_hidden_layers})"
            )
        if self.rr_layer >= self.num_hidden_layers:
            raise ValueError(
                f"{name}.rr_layer ({self.rr_layer}) must be -1 (final CLS) or a block index below "
                f"num_hidden_layers ({self.num_hidden_layers})"
            )
        if self.ema_end_decay < self.ema_decay:
            raise ValueError(
                f"{name}.ema_end_decay ({self.ema_end_decay}) must be >= ema_decay ({self.ema_decay})"
            )

    # ---- derived -------------------------------------------------------------------------------------

    @property
    def grid_size(self) -> tuple[int, int]:
        """``(time, frequency)`` patches of a ``max_length``-frame input: (64, 8) for AudioSet clips."""
        return self.max_length // self.patch_size, self.num_mel_bins // self.patch_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """Build a named architecture (see the family's presets); keyword arguments override its fields."""
        if name not in cls._presets:
            raise ValueError(f"unknown {cls._family} preset {name!r}; available: {sorted(cls._presets)}")
        return cls(**{**cls._presets[name], **overrides})
