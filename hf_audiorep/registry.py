"""One declarative entry per architecture: everything else that enumerates architectures reads it.

Registration with the transformers Auto classes, the Hub's ``auto_map`` and remote-code bundle
(:mod:`hf_audiorep.hub`), the audio-classification pipeline's choice of models, the presets behind
:func:`config_from_preset`, and the shared model tests all iterate over :data:`ARCHITECTURES`. Adding a
system is its modeling files plus one :class:`Architecture` below.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.configuration_utils import PreTrainedConfig

from .modeling.configuration_audiomae import AUDIOMAE_PRESETS, AudioMAEConfig
from .modeling.configuration_bat import BAT_PRESETS, BATConfig
from .modeling.configuration_beats import BEATS_PRESETS, BEATsConfig
from .modeling.configuration_cat import CAT_PRESETS, CATConfig
from .modeling.configuration_cp_mobile import CP_MOBILE_PRESETS, CPMobileConfig
from .modeling.configuration_zipformer import ZIPFORMER_PRESETS, ZipformerConfig
from .modeling.feature_extraction_beats import BEATsFeatureExtractor
from .modeling.feature_extraction_fbank import AudioFbankFeatureExtractor, ZipformerFbankFeatureExtractor
from .modeling.feature_extraction_log_mel import LogMelFeatureExtractor
from .modeling.modeling_audiomae import AudioMAEForAudioClassification, AudioMAEForPreTraining, AudioMAEModel
from .modeling.modeling_bat import BATForAudioClassification, BATForPreTraining, BATModel
from .modeling.modeling_beats import BEATsForAudioClassification, BEATsModel
from .modeling.modeling_cat import CATForAudioClassification, CATForPreTraining, CATModel
from .modeling.modeling_cp_mobile import CPMobileForAudioClassification, CPMobileModel
from .modeling.modeling_zipformer import ZipformerForAudioClassification, ZipformerModel
from .modeling.modeling_zipformer_caption import ZipformerForConditionalGeneration
from .modeling.processing_zipformer import ZipformerProcessor

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "VIT_BLOCK_LORA_TARGETS",
    "ZIPFORMER_LORA_TARGETS",
    "Architecture",
    "architecture_for",
    "config_from_preset",
    "feature_extractor_for",
    "register_auto_classes",
]


@dataclass(frozen=True, eq=False)  # identity equality: one record per family, and hashable
class Architecture:
    """What the library knows about one model family.

    Attributes:
        name: short name (``"audiomae"``, ``"cat"``, ``"bat"``).
        config_class: its ``PreTrainedConfig``; ``config_class.model_type`` identifies the family.
        base_model: the encoder, loaded by ``AutoModel``.
        heads: ``{Auto class: model class}`` for every task head (``AutoModelForAudioClassification``,
            ``AutoModelForPreTraining``, ...). Each is registered with its Auto class and gets an ``auto_map``
            entry on the Hub.
        feature_extractor: the front end, loaded by ``AutoFeatureExtractor``.
        presets: ``{preset name: field overrides}`` understood by ``config_class.from_preset``.
        processor, tokenizer: for systems with text (UTS); registered with ``AutoProcessor`` /
            ``AutoTokenizer`` when set.
        card_notes: what a user of a published checkpoint must know about this implementation (where it
            departs from, or guesses at, the paper); the model card prints it under "Implementation notes".
        lora_target_modules: the layers LoRA adapts by default (:mod:`hf_audiorep.adapters`), as names inside
            one encoder block (``"attn.qkv"``); empty when the family has no default and targets must be
            given.
        bf16_inference: whether inference at ``precision="auto"`` (:mod:`hf_audiorep.precision`) runs the
            family in bfloat16 on a CPU with AMX: set where that was measured to pay (docs/benchmarks.md,
            "Fast CPU inference"), left False where it was not (the Zipformer) or was not measured.
    """

    name: str
    config_class: type[PreTrainedConfig]
    base_model: type[PreTrainedModel]
    heads: Mapping[type, type[PreTrainedModel]]
    feature_extractor: type
    presets: Mapping[str, Mapping[str, Any]]
    processor: type | None = None
    tokenizer: type | None = None
    card_notes: str = ""
    lora_target_modules: tuple[str, ...] = ()
    bf16_inference: bool = False

    def __post_init__(self) -> None:
        # Read-only views: a frozen record whose dicts could still be edited would not be declarative.
        object.__setattr__(self, "heads", MappingProxyType(dict(self.heads)))
        object.__setattr__(self, "presets", MappingProxyType(dict(self.presets)))
        if isinstance(self.lora_target_modules, str):  # a lone name would be read letter by letter
            raise TypeError(f"{self.name}: lora_target_modules must be a tuple of names, not one string")
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        if AutoModel in self.heads:
            raise ValueError(f"{self.name}: the AutoModel class is base_model, not a head")
        for model_class in (self.base_model, *self.heads.values()):
            # transformers resolves a head from its config; a head built on another config would never load.
            if getattr(model_class, "config_class", None) not in (None, self.config_class):
                raise ValueError(
                    f"{self.name}: {model_class.__name__} is built on {model_class.config_class.__name__}, "
                    f"not {self.config_class.__name__}"
                )

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def auto_models(self) -> dict[type, type[PreTrainedModel]]:
        """``{AutoModel: base model, Auto class: head, ...}``: every model class and the Auto class that
        loads it."""
        return {AutoModel: self.base_model, **self.heads}

    @property
    def classes(self) -> tuple[type, ...]:
        """Every class of the family (config, models, feature extractor, processor, tokenizer), in that order:
        what the Hub's remote-code bundle must be able to import."""
        optional = (self.processor, self.tokenizer)
        return (
            self.config_class,
            self.base_model,
            *self.heads.values(),
            self.feature_extractor,
            *(cls for cls in optional if cls is not None),
        )


#: LoRA on every linear layer of a ViT block (``_layers.Attention`` and ``Mlp``): the fused q/k/v and output
#: projections and both MLP layers (QLoRA, Dettmers et al. 2023, needed LoRA on every linear layer to match
#: full fine-tuning). BAT's attention gate (``attn.gate_proj``) is not adapted unless named.
VIT_BLOCK_LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")

#: LoRA in a Zipformer layer: the shared attention-weight projection, both self-attentions' value and
#: output projections and the three feed-forwards. The non-linear attention, the convolution modules (GLU
#: gates) and the positional projection are left as they are.
ZIPFORMER_LORA_TARGETS = (
    "self_attn_weights.in_proj",
    "self_attn1.in_proj",
    "self_attn1.out_proj",
    "self_attn2.in_proj",
    "self_attn2.out_proj",
    "feed_forward1.in_proj",
    "feed_forward1.out_proj",
    "feed_forward2.in_proj",
    "feed_forward2.out_proj",
    "feed_forward3.in_proj",
    "feed_forward3.out_proj",
)

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        name="audiomae",
        config_class=AudioMAEConfig,
        base_model=AudioMAEModel,
        heads={
            AutoModelForAudioClassification: AudioMAEForAudioClassification,
            AutoModelForPreTraining: AudioMAEForPreTraining,
        },
        feature_extractor=AudioFbankFeatureExtractor,
        presets=AUDIOMAE_PRESETS,
        lora_target_modules=VIT_BLOCK_LORA_TARGETS,
        bf16_inference=True,
    ),
    Architecture(
        name="cat",
        config_class=CATConfig,
        base_model=CATModel,
        heads={
            AutoModelForAudioClassification: CATForAudioClassification,
            AutoModelForPreTraining: CATForPreTraining,
        },
        feature_extractor=AudioFbankFeatureExtractor,
        presets=CAT_PRESETS,
        lora_target_modules=VIT_BLOCK_LORA_TARGETS,
        bf16_inference=True,
    ),
    Architecture(
        name="bat",
        config_class=BATConfig,
        base_model=BATModel,
        heads={
            AutoModelForAudioClassification: BATForAudioClassification,
            AutoModelForPreTraining: BATForPreTraining,
        },
        feature_extractor=AudioFbankFeatureExtractor,
        presets=BAT_PRESETS,
        lora_target_modules=VIT_BLOCK_LORA_TARGETS,
        bf16_inference=True,
        card_notes=(
            "BAT's authors released the encoder's shape (ViT-B/16 with gated attention), not its training "
            "code. The gate formula (a sigmoid gate on the attention output, per head or per element as "
            "`attention_gate` in config.json says, or none), the pre-LN "
            "layout, the front end, the pre-training decoder and every pre-training hyper-parameter (EAT's) "
            "are this library's choices, listed in `BATConfig`'s docstring. These weights were not checked "
            "against the authors' released checkpoint."
        ),
    ),
    Architecture(
        name="beats",
        config_class=BEATsConfig,
        base_model=BEATsModel,
        heads={AutoModelForAudioClassification: BEATsForAudioClassification},
        feature_extractor=BEATsFeatureExtractor,
        presets=BEATS_PRESETS,
        lora_target_modules=(
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.out_proj",
            "fc1",
            "fc2",
        ),
        bf16_inference=True,
        card_notes=(
            "BEATs (microsoft/unilm beats/), the ContrastASC teacher, checked numerically against the "
            "reference code on a tiny random model with every path on (gated relative position bias, "
            "deep-norm, positional conv, padding mask): outputs agree within 1e-5. The released checkpoints "
            "are not on the Hub and none was converted here: build the config from a checkpoint's own cfg "
            "(hf_audiorep.conversion.beats); the beats-iter3 preset's values (relative position bias with "
            "its gate, deep-norm, 320 buckets up to 800) are believed, not verified. The weight-normalised "
            "positional conv is folded into a plain weight, so fine-tuning updates that weight directly; the "
            "reference's layer-wise gradient scaling is not reproduced (use layer-wise learning-rate decay). "
            "Padding is reduced to patches the reference's way, which is not exactly each patch's own frames."
        ),
    ),
    Architecture(
        name="zipformer",
        config_class=ZipformerConfig,
        base_model=ZipformerModel,
        heads={
            AutoModelForAudioClassification: ZipformerForAudioClassification,
            AutoModelForSpeechSeq2Seq: ZipformerForConditionalGeneration,
        },
        feature_extractor=ZipformerFbankFeatureExtractor,
        presets=ZIPFORMER_PRESETS,
        processor=ZipformerProcessor,
        lora_target_modules=ZIPFORMER_LORA_TARGETS,
        card_notes=(
            "The Zipformer encoder of UTS, ported from icefall's Zipformer2 and checked against it "
            "numerically (eval mode, unpadded clips: max abs error below 1e-5). Where icefall lets a batch's "
            "padding reach a clip's last frames (its ConvNeXt front end and its downsampling read padding "
            "frames), this port does not: a clip's output does not depend on its batch. Training-only "
            "regularisers are simplified: icefall's dropout schedules are constants (their final values), "
            "and its gradient-only modules (Balancer, Whiten), layer and module skipping are left out. The "
            "zipformer-m preset uses Auden's feed-forward widths (3 x encoder_dim), not icefall's "
            "Zipformer-M; which one the UTS paper used is unknown. The MTC loss is mean-reduced BCE (Auden "
            "and icefall sum it)."
        ),
    ),
    Architecture(
        name="cp_mobile",
        config_class=CPMobileConfig,
        base_model=CPMobileModel,
        heads={AutoModelForAudioClassification: CPMobileForAudioClassification},
        feature_extractor=LogMelFeatureExtractor,
        presets=CP_MOBILE_PRESETS,
        card_notes=(
            "CP-Mobile as the CP-JKU DCASE code builds it (checked numerically against the DCASE 2024 "
            "baseline and the DCASE 2023 CP-Mobile with GRN: identical logits from the same weights). "
            "ContrastASC's student released no code, so its layout is a guess: by default (embedding_size "
            "unset) the output block's 1x1 convolution emits the classes, as in the CP-JKU network, and the "
            "clip embedding is the pooled last feature map; with embedding_size set, the output block emits "
            "an embedding of that size and a linear or cosine head classifies it. The LayerNorm option of "
            "the output block (output_norm='layer') is a LayerNorm over channels at each time-frequency "
            "position, our reading of ContrastASC's change. Which sizes the paper's 6K-126K students have is "
            "unknown; the presets span the CP-JKU width settings. Clips are independent of their batch's "
            "padding (padded columns are zeroed where they would mix in); the CP-JKU code, trained on "
            "fixed 1-s clips, has no padding to handle."
        ),
    ),
)


def _index(attribute: str, values: Iterator[tuple[str, Architecture]]) -> dict[str, Architecture]:
    # Two entries claiming one model type or one preset name would make loading depend on the order.
    index: dict[str, Architecture] = {}
    for key, architecture in values:
        if key in index:
            raise ValueError(
                f"{attribute} {key!r} is claimed by both {index[key].name} and {architecture.name}"
            )
        index[key] = architecture
    return index


_BY_MODEL_TYPE = _index("model_type", ((a.model_type, a) for a in ARCHITECTURES))
_BY_PRESET = _index("preset", ((name, a) for a in ARCHITECTURES for name in a.presets))

#: every preset name of every architecture -> its config class
PRESETS: dict[str, type[PreTrainedConfig]] = {name: a.config_class for name, a in _BY_PRESET.items()}


def architecture_for(model_type: str) -> Architecture:
    """The entry whose config has ``model_type`` (e.g. ``"audiorep-cat"``)."""
    if model_type not in _BY_MODEL_TYPE:
        known = ", ".join(_BY_MODEL_TYPE)
        raise ValueError(f"model_type {model_type!r} is not an hf_audiorep architecture ({known})")
    return _BY_MODEL_TYPE[model_type]


def register_auto_classes() -> None:
    """Register every architecture's config, models, feature extractor (and processor, tokenizer) with the
    transformers Auto classes."""
    for architecture in ARCHITECTURES:
        config_class = architecture.config_class
        # exist_ok: the package may be imported again (e.g. under remote code or importlib.reload).
        AutoConfig.register(architecture.model_type, config_class, exist_ok=True)
        for auto_class, model_class in architecture.auto_models.items():
            auto_class.register(config_class, model_class, exist_ok=True)
        AutoFeatureExtractor.register(config_class, architecture.feature_extractor, exist_ok=True)
        if architecture.processor is not None:
            AutoProcessor.register(config_class, architecture.processor, exist_ok=True)
        if architecture.tokenizer is not None:
            AutoTokenizer.register(config_class, tokenizer_class=architecture.tokenizer, exist_ok=True)


def config_from_preset(name: str, **overrides: Any) -> PreTrainedConfig:
    """Build the config of any architecture from a preset name such as ``"audiomae-base"``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].from_preset(name, **overrides)


def feature_extractor_for(config: PreTrainedConfig):
    """A fresh front end for a model of ``config``: its family's feature extractor with default settings, the
    ViTs' fixed-length Kaldi fbank cut to the model's ``max_length`` frames (its position table)."""
    extractor = architecture_for(config.model_type).feature_extractor
    if extractor is AudioFbankFeatureExtractor:
        return extractor(target_length=config.max_length)
    return extractor()
