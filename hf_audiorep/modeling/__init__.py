"""Model code: torch + transformers only, single-dot imports, shippable as Hub remote code."""

from ._bootstrap import compute_block_mask_2d, make_teacher_targets
from ._heads import CosineClassifier
from ._layers import frames_to_patch_mask, get_2d_sincos_pos_embed
from .configuration_audiomae import AudioMAEConfig
from .configuration_bat import BAT_PRESETS, BATConfig
from .configuration_beats import BEATS_PRESETS, BEATsConfig
from .configuration_cat import CAT_PRESETS, CATConfig
from .configuration_cp_mobile import CP_MOBILE_PRESETS, CPMobileConfig
from .configuration_zipformer import DECODER_PRESETS, TEXT_ENCODER_PRESETS, ZIPFORMER_PRESETS, ZipformerConfig
from .feature_extraction_base import BaseAudioFeatureExtractor
from .feature_extraction_beats import BEATsFeatureExtractor
from .feature_extraction_fbank import AudioFbankFeatureExtractor, ZipformerFbankFeatureExtractor, kaldi_fbank
from .feature_extraction_log_mel import LogMelFeatureExtractor, stft_log_mel
from .modeling_audiomae import (
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEForPreTrainingOutput,
    AudioMAEModel,
    AudioMAEPreTrainedModel,
)
from .modeling_bat import (
    BATForAudioClassification,
    BATForPreTraining,
    BATForPreTrainingOutput,
    BATModel,
    BATModelOutput,
    BATPreTrainedModel,
)
from .modeling_beats import (
    BEATsForAudioClassification,
    BEATsModel,
    BEATsPreTrainedModel,
)
from .modeling_cat import (
    CATForAudioClassification,
    CATForPreTraining,
    CATForPreTrainingOutput,
    CATModel,
    CATModelOutput,
    CATPreTrainedModel,
    MultiResolutionStem,
)
from .modeling_cp_mobile import (
    CPMobileForAudioClassification,
    CPMobileModel,
    CPMobileModelOutput,
    CPMobilePreTrainedModel,
)
from .modeling_zipformer import (
    ZipformerForAudioClassification,
    ZipformerModel,
    ZipformerModelOutput,
    ZipformerPreTrainedModel,
)
from .modeling_zipformer_caption import (
    ZipformerCaptionOutput,
    ZipformerForConditionalGeneration,
    caption_decoder_config,
    init_decoder_from_bart,
)
from .modeling_zipformer_clap import (
    ZipformerAudioTextOutput,
    ZipformerForAudioTextContrastive,
    init_text_encoder_from,
)
from .processing_zipformer import ZipformerProcessor

__all__ = [
    "AudioFbankFeatureExtractor",
    "AudioMAEConfig",
    "AudioMAEForAudioClassification",
    "AudioMAEForPreTraining",
    "AudioMAEForPreTrainingOutput",
    "AudioMAEModel",
    "AudioMAEPreTrainedModel",
    "BATConfig",
    "BATForAudioClassification",
    "BATForPreTraining",
    "BATForPreTrainingOutput",
    "BATModel",
    "BATModelOutput",
    "BATPreTrainedModel",
    "BAT_PRESETS",
    "BEATS_PRESETS",
    "BEATsConfig",
    "BEATsFeatureExtractor",
    "BEATsForAudioClassification",
    "BEATsModel",
    "BEATsPreTrainedModel",
    "BaseAudioFeatureExtractor",
    "CATConfig",
    "CATForAudioClassification",
    "CATForPreTraining",
    "CATForPreTrainingOutput",
    "CATModel",
    "CATModelOutput",
    "CATPreTrainedModel",
    "CAT_PRESETS",
    "CPMobileConfig",
    "CPMobileForAudioClassification",
    "CPMobileModel",
    "CPMobileModelOutput",
    "CPMobilePreTrainedModel",
    "CP_MOBILE_PRESETS",
    "CosineClassifier",
    "DECODER_PRESETS",
    "LogMelFeatureExtractor",
    "MultiResolutionStem",
    "TEXT_ENCODER_PRESETS",
    "ZIPFORMER_PRESETS",
    "ZipformerAudioTextOutput",
    "ZipformerCaptionOutput",
    "ZipformerConfig",
    "ZipformerFbankFeatureExtractor",
    "ZipformerForAudioClassification",
    "ZipformerForAudioTextContrastive",
    "ZipformerForConditionalGeneration",
    "ZipformerModel",
    "ZipformerModelOutput",
    "ZipformerPreTrainedModel",
    "ZipformerProcessor",
    "caption_decoder_config",
    "compute_block_mask_2d",
    "frames_to_patch_mask",
    "get_2d_sincos_pos_embed",
    "init_decoder_from_bart",
    "init_text_encoder_from",
    "kaldi_fbank",
    "make_teacher_targets",
    "stft_log_mel",
]
