"""The shared Accelerate training loop and its parts (optimizer groups, schedules, EMA, checkpoints)."""

from .arguments import TrainingArguments
from .bootstrap import BootstrapPretrainingStep, build_ema_teacher
from .checkpoint import (
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from .classification import AugmentationArguments, SupervisedClassificationStep
from .consistency import ConsistencyArguments, ConsistencyClassificationStep, consistency_loss
from .ema import ModelEMA
from .loop import BatchSource, TrainLoop
from .optim import build_optimizer, build_param_groups, build_scheduler, default_layer_id, lr_multiplier
from .pretraining import MaskedAutoencoderStep, evaluate_reconstruction
from .probe import ProbeArguments, build_linear_probe, write_probe_results
from .rr_teacher import (
    TEACHER_KINDS,
    FrozenEmbeddingTeacher,
    clap_input_features,
    precompute_teacher_embeddings,
)

__all__ = [
    "TEACHER_KINDS",
    "AugmentationArguments",
    "BatchSource",
    "BootstrapPretrainingStep",
    "ConsistencyArguments",
    "ConsistencyClassificationStep",
    "FrozenEmbeddingTeacher",
    "MaskedAutoencoderStep",
    "ModelEMA",
    "ProbeArguments",
    "SupervisedClassificationStep",
    "TrainLoop",
    "TrainingArguments",
    "build_ema_teacher",
    "build_linear_probe",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
    "clap_input_features",
    "consistency_loss",
    "default_layer_id",
    "evaluate_reconstruction",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_multiplier",
    "precompute_teacher_embeddings",
    "rotate_checkpoints",
    "save_checkpoint",
    "write_probe_results",
]
