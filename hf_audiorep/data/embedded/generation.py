"""Generating an embedded corpus into its on-disk cache: the machinery the event corpus
(:mod:`.corpus`) and the scene corpus (:mod:`.scene_corpus`) share.

A corpus describes itself with a :class:`CorpusSpec` (its splits, features and the function that
renders a chunk of a split's rows); :func:`load_or_generate` then serves it from the cache, or
renders it (chunks of a split in worker processes, one split in memory at a time) into a temporary
directory that is renamed into place, so that a crash never leaves half a cache behind. Each
configuration lives in a sub-directory named by a hash of it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import inspect
import io
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "CorpusSpec",
    "bind_cache_path",
    "cache_root",
    "check_generation_arguments",
    "config_hash",
    "flac_bytes",
    "generation_workers",
    "load_or_generate",
]

logger = logging.getLogger(__name__)

MARKER = "corpus.json"
"""Written last into a finished cache directory: a directory without it is not a cache."""
_STALE_SECONDS = 3600.0
# Below this many clips, starting worker processes (each imports the library) costs more than it saves.
PARALLEL_MIN_CLIPS = 512


@dataclass(frozen=True)
class CorpusSpec:
    """What the shared machinery needs to know about one corpus.

    ``rows_job((split, num_clips, config, start, stop))`` returns the columns of clips ``start`` to
    ``stop`` of a split; it must be a module-level function (worker processes receive it pickled).
    ``config[f"num_{split}"]`` is the size of each split. ``title`` names the corpus in logs and
    progress bars, ``cache_name`` is the default cache folder under ``$HF_HOME/hf_audiorep``.
    """

    title: str
    cache_name: str
    splits: tuple[str, ...]
    features: object  # datasets.Features
    description: str
    rows_job: Callable[[tuple], dict[str, list]]
    chunk_clips: int = 128
    parallel_min_clips: int = PARALLEL_MIN_CLIPS


def flac_bytes(waveform: np.ndarray, sample_rate: int) -> bytes:
    pcm = np.round(np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16)
    buffer = io.BytesIO()
    # Level 0: the fastest encoder setting; FLAC's higher levels save only a few percent on noisy audio.
    sf.write(buffer, pcm, sample_rate, format="FLAC", subtype="PCM_16", compression_level=0.0)
    return buffer.getvalue()


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_generation_arguments(seed, counts: dict[str, object], clip_seconds, sample_rate) -> None:
    """The checks every corpus makes: a non-negative integer seed and split sizes, a sample rate of
    at least 16 kHz (several recipes live up to 7 kHz), a clip length in [0.5, 60] s."""
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not _is_int(sample_rate) or sample_rate < 16000:
        raise ValueError(f"sample_rate must be an integer >= 16000 Hz, got {sample_rate!r}")
    is_number = isinstance(clip_seconds, int | float | np.number) and not isinstance(clip_seconds, bool)
    if not is_number or not 0.5 <= clip_seconds <= 60:
        raise ValueError(f"clip_seconds must be a number in [0.5, 60], got {clip_seconds!r}")
    for name, value in counts.items():
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def generation_workers(num_proc: int | None, total_clips: int, min_clips: int = PARALLEL_MIN_CLIPS) -> int:
    if num_proc is not None:
        if num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {num_proc}")
        return num_proc
    if total_clips < min_clips:
        return 1
    return max(1, min(os.cpu_count() or 1, 8))


def cache_root(cache_dir: str | os.PathLike | None, name: str) -> Path:
    """``cache_dir``, else ``$HF_HOME/hf_audiorep/<name>``, else
    ``${XDG_CACHE_HOME:-~/.cache}/hf_audiorep/<name>``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hf_audiorep" / name
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hf_audiorep" / name


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _quiet_progress_bars():
    """Silences datasets' per-split "Saving the dataset" bars, restoring the user's setting afterwards."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _write_splits(spec: CorpusSpec, config: dict, directory: Path, num_proc: int | None) -> None:
    """Generates the splits one at a time into ``directory`` (``<split>/`` each, in
    ``Dataset.save_to_disk`` format), so that only one split is ever held in memory.

    Clips are independent (one RNG per clip), so chunks of a split are rendered by ``num_proc`` worker
    processes; the result is identical to a sequential run.
    """
    from datasets import Dataset, DatasetInfo, concatenate_datasets
    from tqdm.auto import tqdm

    info = DatasetInfo(description=spec.description, features=spec.features)
    total = sum(config[f"num_{split}"] for split in spec.splits)
    workers = generation_workers(num_proc, total, spec.parallel_min_clips)
    pool = None
    if workers > 1:
        # The platform's default start method (fork on Linux, as datasets' own num_proc uses): the workers
        # only run numpy and soundfile, and spawn would re-import torch and transformers in each of them.
        pool = concurrent.futures.ProcessPoolExecutor(workers)
    written = []
    progress = tqdm(total=total, desc=f"Generating {spec.title}", unit="clip", disable=None)
    try:
        for split in spec.splits:
            num_clips = config[f"num_{split}"]
            if num_clips == 0:
                continue  # datasets cannot save and reload a table without rows; _read_splits makes it
            # Chunks bound the memory of Arrow conversion (several times the audio bytes while it runs).
            jobs = [
                (split, num_clips, config, start, start + spec.chunk_clips)
                for start in range(0, num_clips, spec.chunk_clips)
            ]
            chunks = []
            for rows in pool.map(spec.rows_job, jobs) if pool else map(spec.rows_job, jobs):
                chunks.append(Dataset.from_dict(rows, features=spec.features, info=info.copy(), split=split))
                progress.update(len(next(iter(rows.values()))))
            dataset = concatenate_datasets(chunks, info=info.copy(), split=split)
            with _quiet_progress_bars():
                dataset.save_to_disk(str(directory / split))
            written.append(split)
    finally:
        progress.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    # The same index file DatasetDict.save_to_disk writes, so that datasets.load_from_disk(path)
    # also opens the cache; our own marker is written last, by the caller.
    (directory / "dataset_dict.json").write_text(json.dumps({"splits": written}))


def _read_splits(spec: CorpusSpec, config: dict, directory: Path):
    from datasets import Dataset, DatasetDict

    return DatasetDict(
        {
            split: Dataset.load_from_disk(str(directory / split))
            if config[f"num_{split}"]
            else Dataset.from_dict({name: [] for name in spec.features}, features=spec.features, split=split)
            for split in spec.splits
        }
    )


def _remove_stale_temporaries(root: Path, key: str) -> None:
    """Deletes temporary directories of this configuration left by a crashed run (older than an
    hour: a live run finishes in minutes, so they cannot belong to one)."""
    for path in root.glob(f".tmp-{key}-*"):
        try:
            if time.time() - path.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def load_or_generate(
    spec: CorpusSpec, config: dict, cache_dir: str | os.PathLike | None, num_proc: int | None
):
    """The corpus of ``config`` as a ``datasets.DatasetDict``: read from its cache directory
    (``cache_root(cache_dir, spec.cache_name) / config_hash(config)``), or generated into it first."""
    key = config_hash(config)
    root = cache_root(cache_dir, spec.cache_name)
    final = root / key
    if (final / MARKER).is_file():
        try:
            return _read_splits(spec, config, final)
        except Exception as err:  # a damaged cache is regenerated, not fatal
            logger.warning("%s cache %s is unreadable (%s); regenerating it", spec.title, final, err)
            shutil.rmtree(final, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root, key)
    if final.exists():  # without its marker: not a finished cache
        shutil.rmtree(final, ignore_errors=True)

    start = time.perf_counter()
    tmp = root / f".tmp-{key}-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        _write_splits(spec, config, tmp, num_proc)
        (tmp / MARKER).write_text(json.dumps(config, indent=2))
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same configuration first; its copy is identical.
            if not (final / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.perf_counter() - start
    logger.info("generated %s (%s) in %.1f s into %s", spec.title, config, elapsed, final)
    return _read_splits(spec, config, final)


def bind_cache_path(loader: Callable, make_config: Callable[..., dict], cache_name: str, doc: str):
    """A function that takes ``loader``'s arguments, with its defaults (without ``num_proc``: a corpus
    does not depend on it), and returns the cache directory of that configuration, so that the two
    cannot drift apart. ``make_config`` takes the loader's arguments but ``cache_dir``."""
    signature = inspect.Signature(
        [p for p in inspect.signature(loader).parameters.values() if p.name != "num_proc"],
        return_annotation="Path",
    )

    def cache_path(*args, **kwargs) -> Path:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        cache_dir = arguments.pop("cache_dir")
        return cache_root(cache_dir, cache_name) / config_hash(make_config(**arguments))

    cache_path.__signature__ = signature
    cache_path.__doc__ = doc
    return cache_path
