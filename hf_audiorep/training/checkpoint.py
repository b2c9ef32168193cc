"""Resumable checkpoints on disk: atomic write, discovery of the latest complete one, rotation, resume.

Layout of ``<output_dir>/checkpoints/step_<n>/``::

    model.safetensors                 accelerate save_state: weights (safetensors)
    optimizer.bin, scheduler.bin      accelerate save_state: torch.save'd state dicts of tensors and numbers
    random_states_<rank>.pkl          accelerate save_state: python/numpy/torch RNG states, one per rank
    extra_<name>.safetensors/.json    tensors / other values of each ``extra_state`` object (e.g. the EMA)
    trainer_state.json                step, epoch and data-stream position of every rank; written last

A checkpoint is written to ``.tmp-step_<n>`` and renamed to ``step_<n>`` (``os.replace``, atomic on POSIX)
only once complete, so a crash never leaves a ``step_*`` directory that "latest" could pick half-written.
The run's final model and the recipes' result files are published with the same primitives
(:func:`staging_dir`, :func:`publish_files`, :func:`write_json_atomic`): written beside their destination
under a ``.tmp-`` name, synced, then renamed into place.

Loading never unpickles arbitrary objects (FSDP's sharded checkpoints aside, see below): weights are
safetensors, and accelerate 1.15 reads ``optimizer.bin``, ``scheduler.bin`` and the RNG files through
``accelerate.utils.load``, i.e. ``torch.load(weights_only=True)`` plus an allow-list of numpy array types
for the RNG states. Only accelerate's ``register_for_checkpointing`` objects are read with
``weights_only=False``; that is why ``extra_state`` objects are stored here as safetensors + JSON instead.

Under FSDP (``recipes/accelerate_configs/fsdp_vit.yaml``: ``fsdp_state_dict_type: SHARDED_STATE_DICT``) the
weights and the optimizer state are sharded: ``save_state`` writes ``pytorch_model_fsdp_0/`` and
``optimizer_0/`` instead of ``model.safetensors`` and ``optimizer.bin``, each a
``torch.distributed.checkpoint`` directory in which every rank writes its own ``__<rank>_0.distcp`` file and
the main process a ``.metadata`` index. Resuming needs the same number of processes (checked below). The
tensors of those files are read with ``torch.load(weights_only=True)``, but ``torch.distributed.checkpoint``
(torch 2.14) unpickles the ``.metadata`` index and the non-tensor entries (``pickle.load``,
``weights_only=False``): resume an FSDP run only from checkpoints it wrote itself. The final model is not
affected: ``save_pretrained`` writes the gathered, full state dict as safetensors.
A model copy kept in ``extra_state`` (an EMA teacher) cannot follow a sharded model:
:func:`check_extra_state_supported` refuses it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, gather_object
from accelerate.utils import load as accelerate_safe_load
from safetensors.torch import load_file, save_file
from torch import nn

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


def _fsync_json(path: Path, payload: Any, default: Callable[[Any], Any] | None = None) -> None:
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=default)
        f.flush()
        os.fsync(f.fileno())


def _json_scalar(value: Any) -> Any:
    return value.item() if callable(getattr(value, "item", None)) else str(value)


def _fsync_dir(directory: Path) -> None:
    """Make the renames into ``directory`` durable (a rename lives in the directory, not in the file)."""
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    _fsync_dir(final_dir.parent)


def staging_dir(parent: str | os.PathLike, name: str) -> Path:
    """A fresh, empty ``parent/.tmp-<name>`` to write a save into before it is published; a leftover of a
    crash under that name is deleted. It lies inside ``parent`` so that the renames that publish it stay
    on one file system (``os.replace`` is atomic only there)."""
    tmp_dir = Path(parent) / f"{TMP_PREFIX}{name}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    return tmp_dir


def publish_files(
    tmp_dir: str | os.PathLike,
    dest_dir: str | os.PathLike,
    last: Sequence[str] = (),
    stale: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Move every file of ``tmp_dir`` into ``dest_dir``, one ``os.replace`` each, then delete ``tmp_dir``.

    For a destination that holds other things too (a run's ``output_dir`` with its ``checkpoints/``), where
    the directory itself cannot be swapped as :func:`save_checkpoint` swaps a step. Each file is fsynced and
    then renamed over its previous version, so a reader sees either the old or the new file, never a
    partial one (and a reader that has the old one open or memory-mapped keeps reading it intact). The
    set of files is published in order: every file not named in ``last`` (sorted, so weight shards come
    before their index), then the deletion of the files in ``dest_dir`` for which ``stale(name)`` is true
    and that this save did not write (e.g. shards of an earlier save with more shards), then ``last`` in
    its order: a file named there is the commit mark of the set. Returns the published paths.
    """
    tmp_dir, dest_dir = Path(tmp_dir), Path(dest_dir)
    names = sorted(p.name for p in tmp_dir.iterdir() if p.is_file())
    for name in names:
        with open(tmp_dir / name, "rb") as f:
            os.fsync(f.fileno())  # the content is on disk before a rename makes it visible
    first = [n for n in names if n not in last]
    marks = [n for n in last if n in names]
    for name in first:
        os.replace(tmp_dir / name, dest_dir / name)
    if stale is not None:
        for old in sorted(dest_dir.iterdir()):
            if old.is_file() and old.name not in names and stale(old.name):
                old.unlink()
    for name in marks:
        os.replace(tmp_dir / name, dest_dir / name)
    _fsync_dir(dest_dir)
    shutil.rmtree(tmp_dir)
    return [dest_dir / n for n in first + marks]


def write_json_atomic(
    path: str | os.PathLike, payload: Any, default: Callable[[Any], Any] | None = None
) -> None:
    """Write ``payload`` as JSON to ``path`` through a ``.tmp-`` file renamed over it: a reader (or a crash)
    never leaves a truncated file (e.g. the ``eval_results.json`` a model card is written from)."""
    path = Path(path)
    tmp = path.with_name(TMP_PREFIX + path.name)
    _fsync_json(tmp, payload, default)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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


def shards_parameters(accelerator: Accelerator) -> bool:
    """True when each process holds only a shard of the model's parameters: FSDP, or DeepSpeed ZeRO-3."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return getattr(accelerator.state.deepspeed_plugin, "zero_stage", None) == 3
    return False


def check_extra_state_supported(accelerator: Accelerator, extra_state: Mapping[str, Any]) -> None:
    """Refuse ``extra_state`` objects that hold a copy of a model (e.g. a
    :class:`~hf_audiorep.training.ModelEMA`, CAT/BAT's bootstrap teacher) when the parameters are sharded.

    Such an EMA is a full, unsharded copy built before ``prepare``, updated from the student's parameters
    (under FSDP, each rank's shard of them) and saved by the main process alone; under FSDP or ZeRO-3 its
    update would pair whole tensors with shards, and a teacher forward would need the gathers that only the
    prepared model performs. Rather than train a wrong teacher, this raises; DDP and DeepSpeed ZeRO-2
    (which shard gradients and optimizer state but keep whole parameters on every rank) support EMA
    teachers.
    """
    if not shards_parameters(accelerator):
        return
    for name, obj in extra_state.items():
        if isinstance(obj, nn.Module) or isinstance(getattr(obj, "module", None), nn.Module):
            raise NotImplementedError(
                f"extra_state[{name!r}] ({type(obj).__name__}) holds a copy of a model, e.g. an EMA teacher "
                f"(CAT/BAT bootstrap pre-training); it cannot follow a model whose parameters are sharded "
                f"({accelerator.distributed_type}). Train it with DDP or with DeepSpeed ZeRO-2 "
                "(recipes/accelerate_configs/deepspeed_zero2.yaml), which keep whole parameters on every rank"
            )


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
    eval_history: Sequence[Mapping[str, Any]] = (),
    train_loss_totals: tuple[float, int] | None = None,
) -> Path:
    """Write ``checkpoints/step_<global_step>`` atomically; call on every process.

    ``epoch`` and ``data_state`` are this process's own: each rank streams its own shard, so each rank's
    position is kept and restored separately. ``eval_history`` (the main process's evaluations so far) is
    kept so that a resumed run still reports, and plots, the evaluations made before the interruption;
    ``train_loss_totals`` (the loss summed over the run's micro-steps on every process, and their count) so
    that its ``train_loss`` is the whole run's mean.
    """
    root = checkpoints_root(output_dir)
    tmp_dir = root / f"{TMP_PREFIX}step_{global_step}"
    final_dir = root / f"step_{global_step}"
    if accelerator.is_main_process:
        staging_dir(root, final_dir.name)  # deletes a leftover from a crash at this very step
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
            "eval_history": list(eval_history),
        }
        if train_loss_totals is not None:
            loss_sum, micro_steps = train_loss_totals
            trainer_state["train_loss_totals"] = {"loss_sum": loss_sum, "micro_steps": micro_steps}
        # Metrics may be numpy scalars; anything else JSON cannot hold is kept as its text.
        _fsync_json(tmp_dir / TRAINER_STATE_NAME, trainer_state, default=_json_scalar)
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

    Returns this process's ``{"global_step", "epoch", "data"}`` and the run's ``"eval_history"`` and
    ``"train_loss_totals"``; the caller restores the data stream.
    """
    checkpoint = Path(checkpoint)
    trainer_state = json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    if trainer_state.get("world_size") != accelerator.num_processes:
        raise ValueError(
            f"checkpoint {checkpoint} was written by {trainer_state.get('world_size')} processes but this "
            f"run has {accelerator.num_processes}: each rank's data position cannot be mapped onto a "
            "different world size"
        )
    # A resume starts at an optimizer-step boundary. accelerate's GradientState is shared by every
    # Accelerator of the process, and an accumulation interrupted in this process leaves it at "no sync";
    # FSDP2's optimizer load first builds the optimizer's state with a zero-gradient step() through the
    # prepared optimizer, which then skips the step: the saved state would load into nothing, and training
    # would go on with a fresh Adam, silently.
    accelerator.gradient_state._set_sync_gradients(True)
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
        "eval_history": list(trainer_state.get("eval_history", [])),  # absent from older checkpoints
        "train_loss_totals": trainer_state.get("train_loss_totals"),  # None: the resumed part's mean only
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
