"""Training objectives: how a batch becomes a loss, one module per family, for the loop's ``step_fn``.

The engine (`hf_audiorep.training`) is the same for every system; what differs between them lives here:
supervised classification, consistency regularization, masked-autoencoder and bootstrap (EMA-teacher)
pre-training, UTS's text objectives (AR / PAR captioning, audio-text contrastive), the losses several of them
share, and frozen teachers that serve embeddings or logits.
"""

from .audio_text import AudioTextContrastiveStep, embedding_regularizer, symmetric_info_nce
from .bootstrap import BootstrapPretrainingStep, build_ema_teacher
from .captioning import CaptioningStep, caption_decoder_inputs, caption_loss
from .classification import (
    AugmentationArguments,
    SupervisedClassificationStep,
    init_bias_from_prior,
    init_classifier_from_probe,
    prior_only_bce,
)
from .consistency import ConsistencyArguments, ConsistencyClassificationStep
from .contrastive import (
    ClassifierWithProjection,
    ContrastiveArguments,
    ProjectionHead,
    SupConClassificationStep,
    mixup_supcon_loss,
)
from .distillation import (
    ContrastiveMemory,
    CRDEmbed,
    CRDLoss,
    DistillationLoss,
    DistillationLossOutput,
    InBatchCRDLoss,
    kd_loss,
    nce_loss,
)
from .distillation_step import (
    DEVICE_COLUMN,
    TEACHER_EMBEDDING_COLUMN,
    TEACHER_LOGITS_COLUMN,
    DistillationArguments,
    DistillationStep,
    SceneAugmentationArguments,
    StudentWithDistillation,
    build_distillation_loss,
)
from .features import waveform_features
from .losses import consistency_loss
from .masked_autoencoder import MaskedAutoencoderStep, evaluate_reconstruction
from .teachers import TEACHER_KINDS, FrozenTeacher, clap_input_features, precompute_teacher_embeddings

__all__ = [
    "AudioTextContrastiveStep",
    "AugmentationArguments",
    "BootstrapPretrainingStep",
    "CRDEmbed",
    "CRDLoss",
    "CaptioningStep",
    "ClassifierWithProjection",
    "ConsistencyArguments",
    "ConsistencyClassificationStep",
    "ContrastiveArguments",
    "ContrastiveMemory",
    "DEVICE_COLUMN",
    "DistillationArguments",
    "DistillationLoss",
    "DistillationLossOutput",
    "DistillationStep",
    "FrozenTeacher",
    "InBatchCRDLoss",
    "MaskedAutoencoderStep",
    "ProjectionHead",
    "SceneAugmentationArguments",
    "StudentWithDistillation",
    "SupConClassificationStep",
    "SupervisedClassificationStep",
    "TEACHER_EMBEDDING_COLUMN",
    "TEACHER_KINDS",
    "TEACHER_LOGITS_COLUMN",
    "build_distillation_loss",
    "build_ema_teacher",
    "caption_decoder_inputs",
    "caption_loss",
    "clap_input_features",
    "consistency_loss",
    "embedding_regularizer",
    "evaluate_reconstruction",
    "init_bias_from_prior",
    "init_classifier_from_probe",
    "kd_loss",
    "mixup_supcon_loss",
    "nce_loss",
    "precompute_teacher_embeddings",
    "prior_only_bce",
    "symmetric_info_nce",
    "waveform_features",
]
