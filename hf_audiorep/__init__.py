"""hf_audiorep: general-purpose audio representation models for the Hugging Face ecosystem.

Importing the package registers every architecture of :mod:`hf_audiorep.registry` (config, model, heads,
feature extractor) with the transformers Auto classes, so ``AutoModel.from_pretrained(dir)`` and
``pipeline("audio-classification", model=dir)`` work on checkpoints saved by this library.
"""

from .modeling import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEModel,
    BATConfig,
    BATForAudioClassification,
    BATForPreTraining,
    BATModel,
    BEATsConfig,
    BEATsFeatureExtractor,
    BEATsForAudioClassification,
    BEATsModel,
    CATConfig,
    CATForAudioClassification,
    CATForPreTraining,
    CATModel,
    CPMobileConfig,
    CPMobileForAudioClassification,
    CPMobileModel,
    ZipformerConfig,
    ZipformerForAudioClassification,
    ZipformerModel,
)
from .registry import PRESETS, config_from_preset, register_auto_classes

__version__ = "0.1.0.dev0"

register_auto_classes()

from .pipelines import register_pipeline  # noqa: E402  (needs the registered classes above)

register_pipeline()


# The UTS tag-system builder (hf_audiorep.data.tags), importable from the top level, loaded on first use.
_TAG_SYSTEM_NAMES = (
    "KeywordTagExtractor",
    "LLMTagExtractor",
    "TagSystem",
    "TagSystemBuilder",
    "build_tag_system",
)


def __getattr__(name: str):
    # The error types (hf_audiorep.errors.__all__) are importable from the top level, but loading them
    # imports the data and Hub code, which `import hf_audiorep` (run by every Auto class lookup) should
    # not pay for. The same holds for the tag-system names.
    import importlib

    if name in _TAG_SYSTEM_NAMES:
        return getattr(importlib.import_module(f"{__name__}.data.tags"), name)
    errors = importlib.import_module(f"{__name__}.errors")  # not `from . import`: it would call back here
    if name in errors.__all__:
        return getattr(errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AudioFbankFeatureExtractor",
    "AudioMAEConfig",
    "AudioMAEForAudioClassification",
    "AudioMAEForPreTraining",
    "AudioMAEModel",
    "BATConfig",
    "BATForAudioClassification",
    "BATForPreTraining",
    "BATModel",
    "BEATsConfig",
    "BEATsFeatureExtractor",
    "BEATsForAudioClassification",
    "BEATsModel",
    "CATConfig",
    "CATForAudioClassification",
    "CATForPreTraining",
    "CATModel",
    "CPMobileConfig",
    "CPMobileForAudioClassification",
    "CPMobileModel",
    "PRESETS",
    "ZipformerConfig",
    "ZipformerForAudioClassification",
    "ZipformerModel",
    "config_from_preset",
    *_TAG_SYSTEM_NAMES,
]
