"""Resumable checkpoints on disk: atomic write, discovery of the latest complete one, rotation, resume.

Layout of ``<output_dir>/checkpoints/step_<n>/``::

    model.safetensors                 accelerate save_state: weights (safetensors)
    optimizer.bin, scheduler.bin      accelerate save_state: torch.save'd state dicts of tensors and numbers
    random_states_<rank>.pkl          accelerate save_state: python/numpy/torch RNG states, one per rank
    extra_<name>.safetensors/.json    tensors / other values of each ``extra_state`` object (e.g. the EMA)
    trainer_state.json                step, epoch and data-stream position of every rank; written last

A checkpoint is written to ``.tmp-step_<n>`` and renamed to ``step_<n>`` (``os.replace``, atomic on POSIX)
only once complete, so a crash never leaves a ``step_*`` directory that "latest" could pick half-written.

Loading never unpickles arbitrary objects: weights are safetensors, and accelerate 1.15 reads
``optimizer.bin``, ``scheduler.bin`` and the RNG files through ``accelerate.utils.load``, i.e.
``torch.load(weights_only=True)`` plus an allow-list of numpy array types for the RNG states. Only
accelerate's ``register_for_checkpointing`` objects are read with ``weights_only=False``; that is why
``extra_state`` objects are stored here as safetensors + JSON instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import gather_object
from accelerate.utils import load as accelerate_safe_load
from safetensors.torch import load_file, save_file

logger = get_logger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_NAME = "trainer_state.json"
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_EXTRA_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
FORMAT_VERSION = 1


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root`` (``step_<n>`` holding a ``trainer_state.json``), oldest first.

    ``.tmp-*`` leftovers of an interrupted save are not listed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), entry))
    return [path for _, path in sorted(found)]


def find_latest_checkpoint(root: str | os.PathLike) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint directory to resume from: ``None``, ``"latest"`` (``None`` when there is none yet,
    so a relaunched job starts fresh the first time) or a path to a complete checkpoint."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        return find_latest_checkpoint(checkpoints_root(output_dir))
    path = Path(resume_from_checkpoint)
    if not (path / TRAINER_STATE_NAME).is_file():
        raise ValueError(
            f"resume_from_checkpoint={resume_from_checkpoint!r} is not a complete checkpoint directory "
            f"(no {TRAINER_STATE_NAME}); pass 'latest' or a {CHECKPOINTS_DIR}/step_<n> directory"
        )
    return path


def rotate_checkpoints(root: str | os.PathLike, save_total_limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond ``save_total_limit``; returns the deleted paths."""
    if save_total_limit is None:
        return []
    checkpoints = list_checkpoints(root)
    doomed = checkpoints[: max(0, len(checkpoints) - save_total_limit)]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def _fsync_json(path: Path, payload: Any) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _publish(tmp_dir: Path, final_dir: Path) -> None:
    """Atomically make ``tmp_dir`` visible as ``final_dir``, replacing an older save of the same step."""
    if final_dir.exists():
        # os.replace cannot overwrite a non-empty directory: move the old one aside first, so the step
        # is always present under one of the two names.
        trash = final_dir.with_name(TMP_PREFIX + "old-" + final_dir.name)
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash)
    else:
        os.replace(tmp_dir, final_dir)
    dir_fd = os.open(final_dir.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


# ----------------------------------------------------------------------------------------------- extra state


def named_extra_state(extra_state) -> dict[str, Any]:
    """``extra_state`` as ``{name: obj}`` (a list gets names ``"0"``, ``"1"``...), validated."""
    if extra_state is None:
        return {}
    if isinstance(extra_state, Mapping):
        items = dict(extra_state)
    else:
        items = {str(i): obj for i, obj in enumerate(extra_state)}
    for name, obj in items.items():
        if not isinstance(name, str) or not _EXTRA_NAME.match(name):
            raise ValueError(f"extra_state name {name!r} must be made of letters, digits, '_', '.' or '-'")
        if not (
            callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))
        ):
            raise TypeError(
                f"extra_state[{name!r}] ({type(obj).__name__}) needs state_dict() and load_state_dict()"
            )
    return items


def save_extra_state(directory: Path, name: str, obj) -> None:
    """Store ``obj.state_dict()`` — a flat dict of tensors and JSON values — as safetensors + JSON."""
    state = obj.state_dict()
    if not isinstance(state, Mapping):
        raise TypeError(f"extra_state[{name!r}].state_dict() must return a dict, got {type(state).__name__}")
    # Copies on CPU: safetensors refuses tensors that share storage (tied weights) or live on a GPU.
    tensors = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items() if torch.is_tensor(v)
    }
    values = {k: v for k, v in state.items() if not torch.is_tensor(v)}
    try:
        payload = json.dumps(values)
    except TypeError as err:
        raise TypeError(
            f"extra_state[{name!r}].state_dict() must hold only tensors and JSON values at its top "
            f"level: {err}"
        ) from err
    save_file(tensors, directory / f"extra_{name}.safetensors", metadata={"format": "pt"})
    (directory / f"extra_{name}.json").write_text(payload)


def load_extra_state(directory: Path, name: str, obj) -> None:
    tensor_file, json_file = directory / f"extra_{name}.safetensors", directory / f"extra_{name}.json"
    if not (tensor_file.is_file() and json_file.is_file()):
        raise ValueError(
            f"checkpoint {directory} has no state for extra_state[{name!r}]; it was saved with a different "
            "set of extra_state objects"
        )
    state: dict[str, Any] = dict(load_file(tensor_file))
    state.update(json.loads(json_file.read_text()))
    obj.load_state_dict(state)


# --------------------------------------------------------------------------------------- save / load a run


@contextmanager
def _quiet_accelerate_io():
    """accelerate logs one INFO line per file it saves or loads (five per checkpoint), which floods a CPU
    run's console; our own single line says the same. At DEBUG verbosity they are kept."""
    loggers = [logging.getLogger(name) for name in ("accelerate.accelerator", "accelerate.checkpointing")]
    levels = [lg.level for lg in loggers]
    quiet = not logging.getLogger(__name__).isEnabledFor(logging.DEBUG)
    try:
        for lg in loggers:
            if quiet:
                lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    global_step: int,
    epoch: int,
    data_state: Mapping,
    extra_state: Mapping[str, Any] | None = None,
    save_total_limit: int | None = None,
) -> Path:
    """Write ``checkpoints/step_<global_step>`` atomically; call on every process.

    ``epoch`` and ``data_state`` are this process's own: each rank streams its own shard, so each rank's
    position is kept and restored separately.
    """
    root = checkpoints_root(output_dir)
    tmp_dir = root / f"{TMP_PREFIX}step_{global_step}"
    final_dir = root / f"step_{global_step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a leftover from a crash at this very step
        tmp_dir.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _quiet_accelerate_io():
        accelerator.save_state(str(tmp_dir))  # safe_serialization=True: weights as safetensors
    if accelerator.is_main_process:
        for name, obj in (extra_state or {}).items():
            save_extra_state(tmp_dir, name, obj)
    try:
        mine = json.dumps({"epoch": epoch, "data": dict(data_state)})
    except TypeError as err:
        raise TypeError(f"train_batches.state_dict() must be JSON-serializable: {err}") from err
    ranks = [json.loads(s) for s in gather_object([mine])]
    accelerator.wait_for_everyone()  # every rank's RNG file is on disk before the checkpoint is published
    if accelerator.is_main_process:
        trainer_state = {
            "format_version": FORMAT_VERSION,
            "global_step": global_step,
            "epoch": epoch,
            "world_size": accelerator.num_processes,
            "ranks": ranks,
        }
        _fsync_json(tmp_dir / TRAINER_STATE_NAME, trainer_state)
        _publish(tmp_dir, final_dir)
        for path in rotate_checkpoints(root, save_total_limit):
            logger.info(f"deleted old checkpoint {path}")
        logger.info(f"saved checkpoint {final_dir}")
    accelerator.wait_for_everyone()
    return final_dir


def load_checkpoint(
    accelerator: Accelerator, checkpoint: str | os.PathLike, extra_state: Mapping[str, Any] | None = None
) -> dict:
    """Restore model, optimizer, scheduler, RNG and ``extra_state``; call on every process.

    Returns this process's ``{"global_step", "epoch", "data"}``; the caller restores the data stream.
    """
    checkpoint = Path(checkpoint)
    trainer_state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    if trainer_state.get("world_size") != accelerator.num_processes:
        raise ValueError(
            f"checkpoint {checkpoint} was written by {trainer_state.get('world_size')} processes but this "
            f"run has {accelerator.num_processes}: each rank's data position cannot be mapped onto a "
            "different world size"
        )
    with _quiet_accelerate_io():
        accelerator.load_state(str(checkpoint))
    _check_rng_restored(checkpoint, accelerator.process_index)
    for name, obj in (extra_state or {}).items():
        load_extra_state(checkpoint, name, obj)
    mine = trainer_state["ranks"][accelerator.process_index]
    return {
        "global_step": int(trainer_state["global_step"]),
        "epoch": int(mine["epoch"]),
        "data": mine["data"],
    }


def _check_rng_restored(checkpoint: Path, process_index: int) -> None:
    # accelerate logs (at INFO) and carries on when it cannot read the RNG file; a silent fallback would
    # break exact resume (dropout, masking and augmentation draws), so verify it worked.
    rng_file = checkpoint / f"random_states_{process_index}.pkl"
    try:
        saved = accelerate_safe_load(rng_file)["torch_manual_seed"]
    except Exception as err:
        raise RuntimeError(
            f"could not restore the RNG state of rank {process_index} from {rng_file}: {err}"
        ) from err
    if not torch.equal(saved, torch.get_rng_state()):
        raise RuntimeError(
            f"accelerate did not restore the RNG state of rank {process_index} from {rng_file}"
        )
