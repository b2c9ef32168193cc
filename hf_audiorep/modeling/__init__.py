"""Model code: torch + transformers only, single-dot imports, shippable as Hub remote code."""

from ._fbank import AudioFbankFeatureExtractor, kaldi_fbank
from .configuration_audiomae import AudioMAEConfig
from .configuration_cat import CAT_PRESETS, CATConfig
from .modeling_audiomae import (
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEForPreTrainingOutput,
    AudioMAEModel,
    AudioMAEPreTrainedModel,
)
from .modeling_cat import (
    CATForAudioClassification,
    CATForPreTraining,
    CATForPreTrainingOutput,
    CATModel,
    CATModelOutput,
    CATPreTrainedModel,
    MultiResolutionStem,
    compute_block_mask_2d,
    make_teacher_targets,
)

__all__ = [
    "AudioFbankFeatureExtractor",
    "AudioMAEConfig",
    "AudioMAEForAudioClassification",
    "AudioMAEForPreTraining",
    "AudioMAEForPreTrainingOutput",
    "AudioMAEModel",
    "AudioMAEPreTrainedModel",
    "CATConfig",
    "CATForAudioClassification",
    "CATForPreTraining",
    "CATForPreTrainingOutput",
    "CATModel",
    "CATModelOutput",
    "CATPreTrainedModel",
    "CAT_PRESETS",
    "MultiResolutionStem",
    "compute_block_mask_2d",
    "kaldi_fbank",
    "make_teacher_targets",
]
