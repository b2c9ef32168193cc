"""The training engine every system shares: the Accelerate loop (with optimizer and schedule hooks), its
arguments, optimizer groups and schedules, EMA and checkpoints. Objectives are in `hf_audiorep.objectives`."""

from .arguments import TrainingArguments
from .checkpoint import (
    find_latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rotate_checkpoints,
    save_checkpoint,
)
from .ema import ModelEMA
from .loop import BatchSource, OptimizerFn, SchedulerFn, TrainLoop
from .optim import (
    build_optimizer,
    build_param_groups,
    build_scaled_adam,
    build_scheduler,
    default_layer_id,
    lr_multiplier,
    optimizer_from_args,
    scheduler_from_args,
)
from .scaled_adam import Eden, ScaledAdam

__all__ = [
    "BatchSource",
    "Eden",
    "ModelEMA",
    "OptimizerFn",
    "ScaledAdam",
    "SchedulerFn",
    "TrainLoop",
    "TrainingArguments",
    "build_optimizer",
    "build_param_groups",
    "build_scaled_adam",
    "build_scheduler",
    "default_layer_id",
    "find_latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_multiplier",
    "optimizer_from_args",
    "rotate_checkpoints",
    "save_checkpoint",
    "scheduler_from_args",
]
