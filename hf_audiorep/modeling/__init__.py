"""Model code: torch + transformers only, single-dot imports, shippable as Hub remote code."""

from ._fbank import AudioFbankFeatureExtractor, kaldi_fbank
from .configuration_audiomae import AudioMAEConfig
from .modeling_audiomae import (
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEForPreTrainingOutput,
    AudioMAEModel,
    AudioMAEPreTrainedModel,
)

__all__ = [
    "AudioFbankFeatureExtractor",
    "AudioMAEConfig",
    "AudioMAEForAudioClassification",
    "AudioMAEForPreTraining",
    "AudioMAEForPreTrainingOutput",
    "AudioMAEModel",
    "AudioMAEPreTrainedModel",
    "kaldi_fbank",
]
