"""`TrainingArguments`' checks at their edges, each refusal's whole message, what the command line's "none"
and 0 become, the warmup length, and the dicts that go to logs and trackers (the Hub token masked)."""

import math
import re

import pytest

from hf_audiorep.training.arguments import TrainingArguments
from hf_audiorep.training.optim import LR_SCHEDULERS, OPTIMIZERS


def args(tmp_path, **overrides) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path / "run"), **overrides)


# Accepted exactly at each edge.
EDGES = [
    {"max_steps": 1, "per_device_batch_size": 1, "gradient_accumulation_steps": 1, "logging_steps": 1},
    {"eval_steps": 1, "checkpointing_steps": 1, "save_total_limit": 1},
    {"learning_rate": 1e-12, "min_learning_rate": 1e-12},
    {"min_learning_rate": 0.0},
    {"weight_decay": 0.0},
    {"adam_beta1": 0.0, "adam_beta2": 0.0, "scaled_adam_beta2": 0.0},
    {"adam_epsilon": 1e-30},
    {"layer_decay": 1.0},
    {"warmup_steps": 0, "warmup_ratio": 0.0},
    {"warmup_ratio": 0.999},
    {"max_grad_norm": 1e-9},
    {"eden_lr_batches": 1e-9, "eden_lr_epochs": 1e-9, "scaled_adam_scalar_lr_scale": 1e-9},
    {"eden_steps_per_epoch": 1e-9, "scaled_adam_clipping_scale": 1e-9},
    {"scaled_adam_clipping_update_period": 1},
    {"scaled_adam_param_min_rms": 1e-9, "scaled_adam_param_max_rms": 2e-9},
    {"optimizer": "scaled_adam", "layer_decay": 1.0, "max_grad_norm": 0},
    {"mixed_precision": "bf16"},
    {"hub_model_id": "org/name"},
]


@pytest.mark.parametrize("overrides", EDGES)
def test_each_value_at_its_edge_is_accepted(tmp_path, overrides):
    made = args(tmp_path, **overrides)
    for name, value in overrides.items():
        if value != 0 or name not in ("max_grad_norm", "eden_steps_per_epoch"):
            assert getattr(made, name) == value


# Refused just past each edge, with the whole message.
REFUSED = [
    ({"max_steps": 0}, "max_steps must be a positive integer, got 0"),
    ({"per_device_batch_size": -1}, "per_device_batch_size must be a positive integer, got -1"),
    ({"gradient_accumulation_steps": 1.0}, "gradient_accumulation_steps must be a positive integer, got 1.0"),
    ({"logging_steps": True}, "logging_steps must be a positive integer, got True"),
    ({"eval_steps": -1}, "eval_steps must be a positive integer or None, got -1"),
    ({"checkpointing_steps": -2}, "checkpointing_steps must be a positive integer or None, got -2"),
    ({"save_total_limit": 0}, "save_total_limit must be a positive integer or None, got 0"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0, got 0.0"),
    ({"min_learning_rate": -1e-9}, "min_learning_rate must be in [0, learning_rate=0.0001], got -1e-09"),
    ({"min_learning_rate": 2e-4}, "min_learning_rate must be in [0, learning_rate=0.0001], got 0.0002"),
    ({"weight_decay": -1e-9}, "weight_decay must be >= 0, got -1e-09"),
    ({"adam_beta1": 1.0}, "adam_beta1 must be in [0, 1), got 1.0"),
    ({"adam_beta2": -0.1}, "adam_beta2 must be in [0, 1), got -0.1"),
    ({"scaled_adam_beta2": 1.0}, "scaled_adam_beta2 must be in [0, 1), got 1.0"),
    ({"adam_epsilon": 0.0}, "adam_epsilon must be > 0, got 0.0"),
    ({"layer_decay": 0.0}, "layer_decay must be in (0, 1] (1 = off), got 0.0"),
    ({"layer_decay": 1.01}, "layer_decay must be in (0, 1] (1 = off), got 1.01"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0, got -1"),
    ({"warmup_ratio": 1.0}, "warmup_ratio must be in [0, 1), got 1.0"),
    ({"warmup_ratio": -0.1}, "warmup_ratio must be in [0, 1), got -0.1"),
    ({"warmup_steps": 1, "warmup_ratio": 0.1}, "set only one of warmup_steps (1) and warmup_ratio (0.1)"),
    ({"lr_scheduler": "step"}, f"lr_scheduler must be one of {LR_SCHEDULERS}, got 'step'"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0 (0/None: no clipping), got -1.0"),
    ({"optimizer": "sgd"}, f"optimizer must be one of {OPTIMIZERS}, got 'sgd'"),
    ({"eden_lr_batches": 0.0}, "eden_lr_batches must be > 0, got 0.0"),
    ({"eden_lr_epochs": -1.0}, "eden_lr_epochs must be > 0, got -1.0"),
    ({"scaled_adam_scalar_lr_scale": 0.0}, "scaled_adam_scalar_lr_scale must be > 0, got 0.0"),
    (
        {"eden_steps_per_epoch": -1.0},
        "eden_steps_per_epoch must be > 0 (0/None: no epoch factor), got -1.0",
    ),
    (
        {"scaled_adam_clipping_scale": -1.0},
        "scaled_adam_clipping_scale must be > 0 (0/None: no clipping), got -1.0",
    ),
    (
        {"scaled_adam_clipping_update_period": 0},
        "scaled_adam_clipping_update_period must be a positive integer, got 0",
    ),
    (
        {"scaled_adam_param_min_rms": 0.0},
        "need 0 < scaled_adam_param_min_rms < scaled_adam_param_max_rms, got 0.0 and 3.0",
    ),
    (
        {"scaled_adam_param_min_rms": 3.0},
        "need 0 < scaled_adam_param_min_rms < scaled_adam_param_max_rms, got 3.0 and 3.0",
    ),
    (
        {"optimizer": "scaled_adam", "layer_decay": 0.5, "max_grad_norm": 0},
        "layer_decay=0.5 applies to AdamW only; ScaledAdam scales each tensor's update by its own RMS "
        "instead (use layer_decay=1)",
    ),
    (
        {"optimizer": "scaled_adam"},
        "max_grad_norm=1.0 would clip the gradients before ScaledAdam, which clips them itself relative to "
        "the median recent norm (scaled_adam_clipping_scale): pass max_grad_norm 0 with optimizer "
        "scaled_adam",
    ),
    (
        {"mixed_precision": "fp32"},
        "mixed_precision must be one of ('no', 'fp16', 'bf16', 'fp8') or None, got 'fp32'",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), REFUSED)
def test_each_value_past_its_edge_is_refused_with_its_message(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        args(tmp_path, **overrides)


def test_an_empty_output_dir_is_refused():
    with pytest.raises(ValueError, match=r"^output_dir must be a non-empty path$"):
        TrainingArguments(output_dir="")


def test_command_line_none_and_zero_mean_off(tmp_path):
    made = args(
        tmp_path,
        mixed_precision="None",
        resume_from_checkpoint=" none ",
        log_with="",
        hub_model_id="NONE",
        hub_token="none",
        eval_steps=0,
        checkpointing_steps=0,
        max_grad_norm=0,
        eden_steps_per_epoch=0,
        scaled_adam_clipping_scale=0,
    )
    for name in (
        "mixed_precision",
        "resume_from_checkpoint",
        "log_with",
        "hub_model_id",
        "hub_token",
        "eval_steps",
        "checkpointing_steps",
        "max_grad_norm",
        "eden_steps_per_epoch",
        "scaled_adam_clipping_scale",
    ):
        assert getattr(made, name) is None, name
    # Other strings and values are kept as given.
    kept = args(
        tmp_path, mixed_precision="no", resume_from_checkpoint="latest", eval_steps=5, max_grad_norm=2.5
    )
    assert (kept.mixed_precision, kept.resume_from_checkpoint, kept.eval_steps, kept.max_grad_norm) == (
        "no",
        "latest",
        5,
        2.5,
    )


def test_warmup_length_betas_and_the_defaults(tmp_path):
    assert args(tmp_path, warmup_steps=7, max_steps=100).num_warmup_steps == 7
    assert args(tmp_path, warmup_ratio=0.101, max_steps=100).num_warmup_steps == math.ceil(10.1) == 11
    assert args(tmp_path, max_steps=100).num_warmup_steps == 0
    made = args(tmp_path, adam_beta1=0.8, adam_beta2=0.95, scaled_adam_beta2=0.9)
    assert made.adam_betas == (0.8, 0.95) and made.scaled_adam_betas == (0.8, 0.9)
    default = args(tmp_path)
    assert (default.max_steps, default.learning_rate, default.min_learning_rate, default.weight_decay) == (
        1000,
        1e-4,
        1e-6,
        0.05,
    )
    assert (default.eval_steps, default.checkpointing_steps, default.save_total_limit) == (None, 500, 2)
    assert default.hub_model_id is None and default.max_grad_norm == 1.0


def test_the_dicts_for_logs_and_trackers_mask_the_token(tmp_path):
    made = args(tmp_path, hub_token="hf_secret", eval_steps=5)
    values = made.to_dict()
    assert values["hub_token"] == "<HUB_TOKEN>" and values["eval_steps"] == 5
    assert made.hub_token == "hf_secret"  # only the dict is masked
    assert args(tmp_path).to_dict()["hub_token"] is None
    sanitized = made.to_sanitized_dict()
    assert sanitized["hub_token"] == "<HUB_TOKEN>"
    assert sanitized["eval_steps"] == 5 and sanitized["learning_rate"] == 1e-4 and sanitized["cpu"] is False
    assert sanitized["checkpointing_steps"] == 500 and sanitized["resume_from_checkpoint"] == "None"
    assert all(isinstance(value, (int, float, str, bool)) for value in sanitized.values())
    assert set(sanitized) == set(values)


def test_the_hub_repository_id_is_derived_from_the_output_folder_and_checked(tmp_path):
    derived = TrainingArguments(output_dir=str(tmp_path / "my-run"), push_to_hub=True)
    assert derived.hub_model_id == "my-run"
    assert TrainingArguments(output_dir=str(tmp_path / "my-run")).hub_model_id is None
    given = TrainingArguments(output_dir=str(tmp_path / "my-run"), push_to_hub=True, hub_model_id="org/x")
    assert given.hub_model_id == "org/x"
    with pytest.raises(ValueError) as excinfo:
        TrainingArguments(output_dir=str(tmp_path / "bad name!"), push_to_hub=True)
    assert str(excinfo.value).startswith(
        "hub_model_id 'bad name!' is not a valid Hub repository id (derived from output_dir's folder name; "
        "pass --hub_model_id): "
    )
    with pytest.raises(ValueError) as excinfo:
        args(tmp_path, hub_model_id="a/b/c")
    assert str(excinfo.value).startswith("hub_model_id 'a/b/c' is not a valid Hub repository id: ")
