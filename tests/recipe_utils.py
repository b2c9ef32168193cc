"""Running the recipes in-process from tests: loading a recipe file, tiny argument sets."""

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def as_argv(options: dict) -> list[str]:
    """``{"max_steps": 2}`` -> ``["--max_steps", "2"]``: a recipe's command line from a dict of options."""
    return [part for key, value in options.items() for part in (f"--{key}", str(value))]


def load_recipe(name: str):
    """Import ``recipes/<name>.py`` as a module (the recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_recipe", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def tiny_finetune_args(**overrides) -> list[str]:
    """Arguments of a fine-tuning run that takes seconds on a CPU: tiny preset, 2-s clips, small corpus.

    Tests that keep the corpus sizes share one cached corpus; ``overrides`` replace or add options
    (``max_steps=2`` -> ``--max_steps 2``).
    """
    options = {
        "preset": "audiomae-tiny",
        "max_length": 208,
        "clip_seconds": 2.0,
        "num_train_clips": 48,
        "num_eval_clips": 16,
        "num_test_clips": 48,
        "per_device_batch_size": 8,
        "warmup_steps": 2,
        "logging_steps": 2,
        "num_decode_threads": 2,
        "cpu": "true",
    }
    options.update(overrides)
    return as_argv(options)


#: a few-second bootstrap pre-training run (CAT and BAT recipes) on a tiny corpus
RECIPE_TINY = {
    "max_length": "208",
    "clip_seconds": "2.0",
    "num_train_clips": "32",
    "num_eval_clips": "8",
    "num_test_clips": "32",
    "per_device_batch_size": "4",
    "probe_train_clips": "32",
    "warmup_steps": "1",
    "logging_steps": "2",
    "num_decode_threads": "2",
    "ema_decay": "0.9",
    "ema_end_decay": "0.99",
    "ema_anneal_end_steps": "4",
    "cpu": "true",
    "disable_progress_bar": "true",
}


def recipe_args(output_dir, **overrides) -> list[str]:
    options = {**RECIPE_TINY, "output_dir": str(output_dir), **overrides}
    return as_argv(options)


def launch_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an ``accelerate launch`` of CPU processes from a test: offline, a fresh HF_HOME,
    the repository importable, one thread per process (two processes share the machine's cores)."""
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "HF_HOME": str(tmp_path / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
    }
