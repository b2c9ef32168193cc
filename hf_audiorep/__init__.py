"""hf_audiorep: general-purpose audio representation models for the Hugging Face ecosystem.

Importing the package registers every config, model, head and feature extractor with the
transformers Auto classes, so ``AutoModel.from_pretrained(dir)`` and
``pipeline("audio-classification", model=dir)`` work on checkpoints saved by this library.
"""

from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
)

from .modeling import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEModel,
    CATConfig,
    CATForAudioClassification,
    CATForPreTraining,
    CATModel,
)
from .modeling.configuration_audiomae import AUDIOMAE_PRESETS
from .modeling.configuration_cat import CAT_PRESETS

__version__ = "0.1.0.dev0"

# (config, base model, classification head, pre-training model, feature extractor) per architecture.
_ARCHITECTURES = [
    (
        AudioMAEConfig,
        AudioMAEModel,
        AudioMAEForAudioClassification,
        AudioMAEForPreTraining,
        AudioFbankFeatureExtractor,
    ),
    (CATConfig, CATModel, CATForAudioClassification, CATForPreTraining, AudioFbankFeatureExtractor),
]
#: every preset name of every architecture -> its config class
PRESETS = {name: AudioMAEConfig for name in AUDIOMAE_PRESETS}
PRESETS.update({name: CATConfig for name in CAT_PRESETS})


def _register_auto_classes() -> None:
    for config_cls, base_cls, head_cls, pretraining_cls, fe_cls in _ARCHITECTURES:
        # exist_ok: the package may be imported again (e.g. under remote code or importlib.reload).
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, base_cls, exist_ok=True)
        AutoModelForAudioClassification.register(config_cls, head_cls, exist_ok=True)
        AutoModelForPreTraining.register(config_cls, pretraining_cls, exist_ok=True)
        AutoFeatureExtractor.register(config_cls, fe_cls, exist_ok=True)


def config_from_preset(name: str, **overrides):
    """Build the config of any architecture from a preset name such as ``"audiomae-base"``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].from_preset(name, **overrides)


_register_auto_classes()

from .pipelines import register_pipeline  # noqa: E402  (needs the registered classes above)

register_pipeline()

__all__ = [
    "AudioFbankFeatureExtractor",
    "AudioMAEConfig",
    "AudioMAEForAudioClassification",
    "AudioMAEForPreTraining",
    "AudioMAEModel",
    "CATConfig",
    "CATForAudioClassification",
    "CATForPreTraining",
    "CATModel",
    "PRESETS",
    "config_from_preset",
]
