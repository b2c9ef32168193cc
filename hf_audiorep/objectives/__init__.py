"""Training objectives: how a batch becomes a loss, one module per family, for the loop's ``step_fn``.

The engine (`hf_audiorep.training`) is the same for every system; what differs between them lives here:
supervised classification, consistency regularization, masked-autoencoder and bootstrap (EMA-teacher)
pre-training, the losses several of them share, and frozen teachers that serve embeddings or logits.
"""

from .bootstrap import BootstrapPretrainingStep, build_ema_teacher
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
    "ClassifierWithProjection",
    "ContrastiveArguments",
    "SupConClassificationStep",
    "TEACHER_EMBEDDING_COLUMN",
    "DEVICE_COLUMN",
    "TEACHER_LOGITS_COLUMN",
    "DistillationArguments",
    "DistillationStep",
    "SceneAugmentationArguments",
    "StudentWithDistillation",
    "build_distillation_loss",
    "TEACHER_KINDS",
    "AugmentationArguments",
    "BootstrapPretrainingStep",
    "ConsistencyArguments",
    "ConsistencyClassificationStep",
    "ContrastiveMemory",
    "CRDEmbed",
    "CRDLoss",
    "DistillationLoss",
    "DistillationLossOutput",
    "FrozenTeacher",
    "InBatchCRDLoss",
    "MaskedAutoencoderStep",
    "ProjectionHead",
    "SupervisedClassificationStep",
    "build_ema_teacher",
    "clap_input_features",
    "consistency_loss",
    "evaluate_reconstruction",
    "kd_loss",
    "init_bias_from_prior",
    "prior_only_bce",
    "init_classifier_from_probe",
    "mixup_supcon_loss",
    "nce_loss",
    "precompute_teacher_embeddings",
    "waveform_features",
]
