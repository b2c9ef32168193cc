"""``AudioStream``: the resumable batch iterator every recipe trains and evaluates from.

Raw records come in a deterministic order for (seed, epoch, rank); a background thread decodes
them with a thread pool (soundfile and torch's resampler release the GIL), crops or pads them, and
collates fixed-size batches, one batch ahead of the training step. The stream is consumed in the
main process, not by DataLoader workers, so its position is known exactly: ``state_dict()`` after
``k`` batches names the raw record that follows the last one used, and a fresh stream given that
state resumes there without decoding anything it skips.

Corrupt records are skipped and counted in ``stats``, never raised; but a stream whose first
records all fail (wrong column, unreadable dataset) raises, because it would otherwise spin.

With ``max_duration`` the batches are dynamic instead: clips keep their own length (up to
``clip_seconds``), are grouped by duration into buckets (``hf_audiorep.data.bucketing``) and batched so
that each batch's padded duration stays under ``max_duration`` seconds; resuming stays exact.

Besides audio and labels, a batch can carry any other columns of the records (captions, tag
strings, token ids, teacher embeddings, per-frame targets), collated by kind or by one user
``collate_fn``, and each clip's index in the dataset (``return_index``).
"""

from __future__ import annotations

import atexit
import copy
import functools
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from datasets import (
    Array2D,
    Array3D,
    Array4D,
    Array5D,
    ClassLabel,
    Dataset,
    IterableDataset,
    LargeList,
    List,
    Value,
)
from datasets.distributed import split_dataset_by_node

from ..hub_errors import translate_hub_errors
from .bucketing import DurationBucketer, check_bucketing_arguments, is_partial
from .decode import crop_or_pad, decode_audio
from .ontology import labels_to_multi_hot
from .sources import AudioSource, load_audio_source

logger = logging.getLogger(__name__)

# A stream whose first records all fail is misconfigured, not unlucky: raise after this many.
ALL_FAILED_LIMIT = 32
_KEPT_ERRORS = 5

# Prefetch threads still running, with their stop flags. A stream iterator left open until the end of the
# program (an abandoned generator, a cycled unlabelled stream) would otherwise leave its daemon thread
# decoding while the interpreter finalises, and native decoders torn down under a live thread abort the
# process ("terminate called without an active exception") after the run has finished.
_LIVE_PRODUCERS: dict[threading.Thread, threading.Event] = {}
_LIVE_LOCK = threading.Lock()
# Long enough for a decode in flight to finish; a stuck reader must not hang the exit forever.
_EXIT_JOIN_SECONDS = 10.0


def stop_prefetch_threads(timeout: float = _EXIT_JOIN_SECONDS) -> int:
    """Stop every running prefetch thread and wait for them (at most ``timeout`` s in all).

    Runs at interpreter exit; returns how many threads were still alive when it gave up waiting."""
    with _LIVE_LOCK:
        producers = list(_LIVE_PRODUCERS.items())
    for _, stop in producers:
        stop.set()
    deadline = time.monotonic() + timeout
    for thread, _ in producers:
        thread.join(max(0.0, deadline - time.monotonic()))
    return sum(thread.is_alive() for thread, _ in producers)


atexit.register(stop_prefetch_threads)


# Batch keys the stream itself fills; no extra column or collate_fn output may take them.
_BATCH_KEYS = ("waveforms", "lengths", "labels")


class _Extra(NamedTuple):
    """How one extra column is batched: ``stack`` (numbers of one ``shape`` -> a ``(B, *shape)``
    tensor), ``ragged`` (numbers of any shape -> a list of tensors) or ``list`` (values as stored)."""

    kind: str
    shape: tuple[int, ...] = ()
    dtype: np.dtype | None = None


class _Example(NamedTuple):
    """One decoded clip, ready to collate."""

    waveform: np.ndarray
    length: int
    target: np.ndarray
    index: int
    extras: dict[str, Any]


def _feature_layout(feature) -> tuple[object, tuple[int, ...]]:
    """The leaf feature of a (nested) list or array feature and its shape (-1 where open)."""
    shape: list[int] = []
    while True:
        if isinstance(feature, List):
            shape.append(feature.length if feature.length > 0 else -1)
            feature = feature.feature
        elif isinstance(feature, LargeList):
            shape.append(-1)
            feature = feature.feature
        elif isinstance(feature, list) and len(feature) == 1:  # the old ``[Value(...)]`` spelling
            shape.append(-1)
            feature = feature[0]
        elif isinstance(feature, Array2D | Array3D | Array4D | Array5D):
            shape += [-1 if d is None else int(d) for d in feature.shape]
            feature = Value(feature.dtype)
        else:
            return feature, tuple(shape)


def _tensor_dtype(kind: str) -> np.dtype | None:
    """The dtype a numeric column is batched in, from a numpy dtype kind; ``None`` if not numeric."""
    # float32 for every float (as waveforms and targets are), int64 for every integer (torch's index dtype).
    return {
        "f": np.dtype(np.float32),
        "i": np.dtype(np.int64),
        "u": np.dtype(np.int64),
        "b": np.dtype(bool),
    }.get(kind)


def _numeric_array(value) -> np.ndarray | None:
    """``value`` as an array when it is a number or a regular (nested) list of numbers, else ``None``."""
    if value is None or isinstance(value, str | bytes | Mapping):
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # nested lists of uneven lengths
        return None
    return array if _tensor_dtype(array.dtype.kind) is not None else None


def _feature_dtype(leaf) -> np.dtype | None:
    if isinstance(leaf, ClassLabel):
        return np.dtype(np.int64)
    if isinstance(leaf, Value):
        try:
            return _tensor_dtype(np.dtype(leaf.pa_type.to_pandas_dtype()).kind)
        except (NotImplementedError, TypeError):  # strings, timestamps, decimals...
            return None
    return None


@dataclass
class _Chunk:
    """What the producer thread hands to the consumer: a batch (or the end) and the bookkeeping
    that becomes true once the consumer yields it."""

    batch: dict[str, Any] | None
    consumed: int  # raw records of this epoch consumed up to and including this batch
    decoded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    bucketing: dict | None = None  # a bucketed stream's buckets after this batch (see AudioStream.state_dict)


def _put_unless_stopped(out: queue.Queue, stop: threading.Event, item) -> bool:
    """Hand ``item`` to the consumer, waiting while the queue is full; False once the consumer stopped."""
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class AudioStream:
    """Batches ``{"waveforms": (B, S) float32, "lengths": (B,) int64, "labels": (B, C) float32}``,
    plus ``indices`` and other columns of the records on request.

    Extra columns (``extra_columns``) are batched by what they hold, decided once per column from its
    feature (or, where the feature is missing or leaves the shape open, from the first record):

    - numbers of one per-clip shape (scalars, fixed-length lists, ``ArrayXD``): a ``(B, *shape)``
      tensor, float32 for floats, int64 for integers and ``ClassLabel``, bool for booleans. A record
      of another shape, or with a NaN or infinite value, is skipped and counted as corrupt (e.g.
      precomputed teacher embeddings, ``objectives.teachers.precompute_teacher_embeddings``).
    - numbers whose shape varies per clip, named in ``ragged_columns`` (token ids, frame targets):
      a list of B tensors (dtypes as above; missing or non-finite values make the record corrupt).
    - anything else (strings such as captions, lists of tag strings, dicts): a list of B values as
      the dataset stores them.

    A ``collate_fn(records) -> dict`` replaces that collation: it gets one ``{column: value}`` dict
    per clip, in batch order, with the values as ``datasets`` returns them (unchecked), and its dict
    is merged into the batch, e.g. ``lambda records: tokenizer([r["caption"] for r in records],
    padding=True, return_tensors="pt")``. It runs in the prefetch thread; an exception it raises is
    raised by the iterator.

    With ``return_index=True`` batches carry ``indices``, a ``(B,)`` int64 tensor:

    - map-style datasets: each clip's row in ``source.dataset``, before the epoch's shuffle and the
      sharding, so ``source.dataset[i]`` is the clip's record in every epoch and on every rank (what
      a per-clip memory bank such as CRD's needs).
    - streamed datasets (``IterableDataset``): the record's position in this rank's record order of
      the epoch, i.e. after the shuffle (``train``) and ``split_dataset_by_node``, counting records
      skipped as corrupt. Exact across resume, unique within the epoch on this rank; but a shuffled
      stream reorders records every epoch and each rank counts its own, so it names a clip only
      within one epoch on one rank (unshuffled on one process: the record's position in the
      stream). For a clip id that survives the shuffle, pass an id column in ``extra_columns``.

    Args:
        source: an ``AudioSource`` (see ``load_audio_source``) or a ``datasets`` object, which is
            wrapped with ``load_audio_source``.
        batch_size: clips per batch on this process.
        sample_rate: rate the waveforms are resampled to.
        clip_seconds: every clip is cropped (randomly when training, from the start otherwise)
            or zero-padded to ``round(clip_seconds * sample_rate)`` samples.
        train: shuffle per epoch, random crops, and drop the last partial batch.
        seed: fixes the record order (with the epoch) and the crops (with epoch, rank, position).
        rank, world_size: this process's shard; every rank must use the same seed.
        shuffle_buffer: buffer size of the approximate shuffle of a streamed dataset.
        num_decode_threads: decoding threads (0 decodes in the prefetch thread itself).
        drop_last: drop the last partial batch (default: ``train``). Map-style datasets then also
            drop the ragged tail of the permutation so every rank gets the same number of records.
        extra_columns: other dataset columns to batch alongside the audio, collated by kind (above). A
            column of float lists whose feature has no fixed length takes its width ``D`` from the
            first record (``extra_dims``), and a record of another length is corrupt.
        ragged_columns: numeric columns whose per-clip shape varies, batched as lists of tensors;
            they need not be repeated in ``extra_columns``.
        collate_fn: ``collate_fn(records) -> dict`` replacing the collation of the extra columns.
        return_index: add each clip's dataset index as ``batch["indices"]`` (above).
        max_duration: dynamic batches by duration: each batch holds clips of similar length whose padded
            duration (``clips * longest``) is at most this many seconds; a clip longer than that is a batch
            of its own. Clips are then cropped to ``clip_seconds`` only when longer (randomly when
            training) and never padded to it: ``waveforms`` is padded to the batch's longest clip.
            ``batch_size`` becomes the most clips per batch (None: no limit). See
            ``hf_audiorep.data.bucketing``.
        num_buckets: duration buckets of a ``max_duration`` stream, their boundaries estimated (so that
            each holds the same total duration) from the clips that first fill the buffer.
        bucket_buffer_duration: seconds of decoded clips waiting in the buckets of a ``max_duration``
            stream (memory: ``4 * sample_rate`` bytes per second); default ``2 * num_buckets *
            max_duration``. Larger mixes more clips per batch decision; smaller uses less memory.

    Epochs: ``__iter__`` yields the rest of the current epoch and does not advance it; call
    ``set_epoch(e)`` before each epoch. ``set_epoch`` with the current epoch keeps the position, so
    a loop that calls it after ``load_state_dict`` resumes mid-epoch.

    Dynamic batches (``max_duration``): the number of batches per epoch is not known in advance (no ``len()``)
    and differs between ranks, which the training loop allows (it counts steps). The bucket boundaries are
    estimated once, on each rank from its own records, and kept for later epochs. At the end of an epoch what
    is left in the buckets is packed in duration order; ``drop_last`` drops only the final batch, and only
    when it has room for another clip as long as its longest. Resuming is exact: the state names the records
    still waiting in the buckets, which a resumed stream reads and decodes again (the same clips, as crops
    depend only on the position) before it reads on.
    """

    def __init__(
        self,
        source,
        *,
        batch_size: int,
        sample_rate: int = 16000,
        clip_seconds: float = 10.0,
        train: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        num_decode_threads: int = 4,
        drop_last: bool | None = None,
        extra_columns: tuple[str, ...] | list[str] = (),
        ragged_columns: tuple[str, ...] | list[str] = (),
        collate_fn: Callable[[list[dict[str, Any]]], Mapping[str, Any]] | None = None,
        return_index: bool = False,
        max_duration: float | None = None,
        num_buckets: int = 30,
        bucket_buffer_duration: float | None = None,
    ):
        if not isinstance(source, AudioSource):
            if not isinstance(source, Dataset | IterableDataset):
                raise TypeError(
                    f"source must be an AudioSource or a datasets object, got {type(source).__name__}"
                )
            source = load_audio_source(source)
        if max_duration is not None:
            check_bucketing_arguments(max_duration, num_buckets, bucket_buffer_duration, batch_size)
        elif batch_size is None:
            raise ValueError("batch_size must be a positive integer (None is allowed only with max_duration)")
        positive = {
            "batch_size": batch_size if batch_size is not None else 1,
            "sample_rate": sample_rate,
            "world_size": world_size,
            "shuffle_buffer": shuffle_buffer,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if num_decode_threads < 0:
            raise ValueError(f"num_decode_threads must be >= 0, got {num_decode_threads}")

        self.source = source
        self.batch_size = int(batch_size) if batch_size is not None else None
        self.max_duration = float(max_duration) if max_duration is not None else None
        self.num_buckets = int(num_buckets)
        self.bucket_buffer_duration = (
            float(bucket_buffer_duration)
            if bucket_buffer_duration is not None
            else 2.0 * self.num_buckets * (self.max_duration or 0.0)
        )
        self._buckets = _fresh_buckets(None)
        self.sample_rate = int(sample_rate)
        self.num_samples = int(round(clip_seconds * sample_rate))
        self.train = bool(train)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_decode_threads = int(num_decode_threads)
        self.drop_last = self.train if drop_last is None else bool(drop_last)
        self.epoch = 0
        self._consumed = 0
        self._active = None  # the iterator allowed to advance the position (the latest one)
        self.stats: dict = {"decoded": 0, "skipped": 0, "errors": []}

        if collate_fn is not None and not callable(collate_fn):
            raise TypeError(f"collate_fn must be callable, got {type(collate_fn).__name__}")
        if collate_fn is not None and ragged_columns:
            raise ValueError(
                "collate_fn replaces the collation of every extra column: leave ragged_columns empty"
            )
        self.collate_fn = collate_fn
        self.return_index = bool(return_index)
        reserved = _BATCH_KEYS + (("indices",) if self.return_index else ())
        ragged = self._check_extra_columns(source, ragged_columns, reserved, "ragged_columns")
        extra = self._check_extra_columns(source, extra_columns, reserved, "extra_columns")
        self.extra_columns = extra + tuple(c for c in ragged if c not in extra)
        columns = [c for c in (source.audio_column, source.label_column) if c]
        columns += [c for c in self.extra_columns if c not in columns]
        # No other column is read; no output format, so the audio stays {"bytes", "path"}.
        dataset = source.dataset.select_columns(columns).with_format(None)
        if isinstance(dataset, IterableDataset):
            if self.train:
                dataset = dataset.shuffle(seed=self.seed, buffer_size=int(shuffle_buffer))
            if self.world_size > 1:
                if dataset.num_shards % self.world_size:
                    logger.warning(
                        "the stream has %d shards, not a multiple of world_size=%d: every rank reads every "
                        "shard and keeps 1 record in %d (correct, but each rank downloads everything)",
                        dataset.num_shards,
                        self.world_size,
                        self.world_size,
                    )
                # Sharded once, here; the batches must not go through accelerator.prepare, which
                # would shard the stream a second time.
                dataset = split_dataset_by_node(dataset, rank=self.rank, world_size=self.world_size)
        self._dataset = dataset
        # With a collate_fn the values go to it as they are: nothing to infer, nothing to read.
        self._extras = (
            {}
            if collate_fn is not None
            else {name: self._extra_spec(source.dataset, name, name in ragged) for name in self.extra_columns}
        )

    @staticmethod
    def _check_extra_columns(source: AudioSource, names, reserved, argument: str) -> tuple[str, ...]:
        if isinstance(names, str):
            names = (names,)
        names = tuple(names)
        features = source.dataset.features
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"{argument} must be column names, got {name!r}")
            if name in reserved:
                raise ValueError(f"extra column {name!r} would overwrite the batch key of the same name")
            if name == source.audio_column:
                raise ValueError(f"extra column {name!r} is the audio column")
            if features is not None and name not in features:
                raise ValueError(
                    f"extra column {name!r} is not in the dataset; its columns are {list(features)}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"{argument} has duplicates: {list(names)}")
        return names

    @staticmethod
    def _extra_spec(dataset, name: str, ragged: bool) -> _Extra:
        """How column ``name`` is batched: from its feature, else (or for a shape the feature leaves
        open) from its first record."""
        feature = (dataset.features or {}).get(name)
        dtype = None
        if feature is not None:
            leaf, shape = _feature_layout(feature)
            dtype = _feature_dtype(leaf)
            if dtype is None and not ragged:
                return _Extra("list")
            if dtype is not None and ragged:
                return _Extra("ragged", dtype=dtype)
            if dtype is not None and -1 not in shape:
                return _Extra("stack", shape, dtype)
        # Only this column is read: no audio is decoded; a stream reads its first record (one request).
        column = dataset.select_columns([name])
        first = column[0][name] if isinstance(column, Dataset) else next(iter(column))[name]
        value = _numeric_array(first)
        if value is None and (ragged or dtype is not None):
            kind = "ragged column" if ragged else "extra column"
            raise ValueError(
                f"{kind} {name!r} must hold arrays of numbers; its first record is {first!r:.80}"
            )
        if value is None:
            return _Extra("list")
        if ragged:
            return _Extra("ragged", dtype=_tensor_dtype(value.dtype.kind))
        if value.size == 0:
            raise ValueError(
                f"extra column {name!r}: the first record is empty, so the shape of the column cannot be "
                f"inferred; name it in ragged_columns if its shape varies from clip to clip"
            )
        return _Extra("stack", value.shape, dtype or _tensor_dtype(value.dtype.kind))

    @property
    def extra_dims(self) -> dict[str, int]:
        """The width ``D`` of each extra column batched as a ``(B, D)`` tensor."""
        return {
            name: spec.shape[0]
            for name, spec in self._extras.items()
            if spec.kind == "stack" and len(spec.shape) == 1
        }

    @property
    def extra_shapes(self) -> dict[str, tuple[int, ...]]:
        """The per-clip shape of each extra column batched as a ``(B, *shape)`` tensor."""
        return {name: spec.shape for name, spec in self._extras.items() if spec.kind == "stack"}

    # ----------------------------------------------------------------------------- properties

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.source.label_names

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def is_streaming(self) -> bool:
        return isinstance(self._dataset, IterableDataset)

    @property
    def is_bucketed(self) -> bool:
        """Dynamic batches by duration (``max_duration``)."""
        return self.max_duration is not None

    def __len__(self) -> int:
        """Batches per epoch on this rank (map-style datasets with fixed-size batches only)."""
        if self.is_bucketed:
            raise TypeError(
                "an AudioStream with max_duration has no len(): its batches are formed on the fly"
            )
        if self.is_streaming:
            raise TypeError("a streamed AudioStream has no len(); train for a number of steps instead")
        n = len(self._epoch_indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    # ------------------------------------------------------------------------------ state

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next ``__iter__`` yields; a new epoch starts from its first record."""
        epoch = int(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch != self.epoch:
            self.epoch, self._consumed = epoch, 0
            self._buckets = _fresh_buckets(self._buckets["boundaries"])

    def _bucketing_settings(self) -> dict:
        return {
            "max_duration": self.max_duration,
            "num_buckets": self.num_buckets,
            "buffer_duration": self.bucket_buffer_duration,
            "max_batch_size": self.batch_size,
        }

    def state_dict(self) -> dict:
        """The position, as JSON data. ``examples_consumed`` counts the raw records read; a bucketed
        stream adds ``bucketing``: its settings, the bucket ``boundaries``, the positions of the records
        still ``waiting`` in the buckets and the number of ``batches`` taken this epoch."""
        state = {
            "epoch": self.epoch,
            "examples_consumed": self._consumed,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "stats": copy.deepcopy(self.stats),
        }
        if self.is_bucketed:
            state["bucketing"] = {**self._bucketing_settings(), **copy.deepcopy(self._buckets)}
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Resume at ``state``: the next ``__iter__`` starts right after the last record consumed.

        The position is exact for the rank that saved it. Loading another rank's state (accelerate
        saves registered objects from the main process only) resumes at that rank's count, which is
        exact unless the ranks skipped different numbers of corrupt records. A different seed or
        world size means a different record order: ``strict`` raises, otherwise a warning is logged.
        """
        missing = {"epoch", "examples_consumed"} - set(state)
        if missing:
            raise ValueError(f"not an AudioStream state: missing {sorted(missing)}")
        for key in ("seed", "world_size"):
            if key in state and state[key] != getattr(self, key):
                message = (
                    f"the state was saved with {key}={state[key]} but this stream has "
                    f"{key}={getattr(self, key)}: the record order differs, so resuming is not exact"
                )
                if strict:
                    raise ValueError(message + " (pass strict=False to resume anyway)")
                logger.warning(message)
        buckets = self._check_bucketing_state(state, strict)
        self.epoch = int(state["epoch"])
        self._consumed = int(state["examples_consumed"])
        if self._consumed < 0:
            raise ValueError(f"examples_consumed must be >= 0, got {self._consumed}")
        self._buckets = buckets
        if "stats" in state:
            self.stats = copy.deepcopy(state["stats"])

    def _check_bucketing_state(self, state: dict, strict: bool) -> dict:
        """The buckets ``state`` restores (a fresh set when it has none to restore)."""
        saved = state.get("bucketing")
        if not self.is_bucketed:
            if saved is not None and saved.get("waiting"):
                raise ValueError(
                    "the state was saved by a stream with max_duration (dynamic batches), with clips still "
                    "waiting in its buckets; this stream has fixed-size batches and would skip them: build "
                    f"it with max_duration={saved.get('max_duration')}"
                )
            return _fresh_buckets(None)
        if saved is None:
            if int(state["examples_consumed"]) > 0:
                raise ValueError(
                    "the state was saved by a stream with fixed-size batches; this stream has max_duration "
                    "(dynamic batches), whose position it cannot continue exactly: resume with the same "
                    "batching, or start the epoch over"
                )
            return _fresh_buckets(None)
        changed = {k: (saved.get(k), v) for k, v in self._bucketing_settings().items() if saved.get(k) != v}
        if changed:
            message = (
                "the state was saved with other bucketing settings (saved, now): "
                + ", ".join(f"{k}={a} vs {b}" for k, (a, b) in changed.items())
                + ": the batches differ from the interrupted run's"
            )
            if strict:
                raise ValueError(message + " (pass strict=False to resume anyway)")
            logger.warning(message)
        return {
            "boundaries": None
            if saved.get("boundaries") is None
            else [float(b) for b in saved["boundaries"]],
            "waiting": [int(k) for k in saved.get("waiting", [])],
            "batches": int(saved.get("batches", 0)),
        }

    # -------------------------------------------------------------------------- raw records

    def _epoch_indices(self) -> np.ndarray:
        n = len(self._dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.train else np.arange(n)
        if self.drop_last:
            order = order[: n - n % self.world_size]
        return order[self.rank :: self.world_size]

    def _raw_records(self, epoch: int, start: int) -> Iterator[tuple[int, dict]]:
        """This rank's records of ``epoch`` from position ``start``, still encoded, each with its
        index (the dataset row for map-style datasets, the position for streams)."""
        if not self.is_streaming:
            indices = self._epoch_indices()
            block = self.batch_size or 64
            for lo in range(start, len(indices), block):
                rows_indices = indices[lo : lo + block].tolist()
                rows = self._dataset[rows_indices]
                columns = list(rows)
                for index, values in zip(rows_indices, zip(*rows.values(), strict=True), strict=True):
                    yield index, dict(zip(columns, values, strict=True))
            return
        # datasets' IterableDataset.skip() drops the epoch of the shuffle (datasets 5.2), so after
        # set_epoch(e > 0) it would skip into a different order. Skipping the first records here,
        # before decoding, costs the same reads and keeps the order exact.
        self._dataset.set_epoch(epoch)
        # A stream opens its remote files only here: a Hub that cannot be reached must say so in one line,
        # not as a traceback from inside datasets' reader.
        with translate_hub_errors(None):
            yield from enumerate(itertools.islice(self._dataset, start, None), start)

    # ---------------------------------------------------------------------------- decoding

    def _prepare(self, record: dict, epoch: int, position: int, index: int) -> _Example | str:
        """Decode one record; the crop RNG depends only on (seed, epoch, rank, position), so the
        result does not depend on which thread ran it or when."""
        try:
            wave = decode_audio(record[self.source.audio_column], self.sample_rate)
            rng = np.random.default_rng([self.seed, epoch, self.rank, position]) if self.train else None
            if self.is_bucketed and len(wave) <= self.num_samples:
                length = len(wave)  # dynamic batches: padded to the batch's longest clip when collated
            else:
                wave, length = crop_or_pad(wave, self.num_samples, rng, self.train)
            column = self.source.label_column
            indices = self.source.vocabulary.indices(record[column]) if column else []
            if self.collate_fn is not None:
                extras = {name: record[name] for name in self.extra_columns}
            else:
                extras = {name: self._extra_value(record[name], name) for name in self.extra_columns}
            return _Example(wave, length, labels_to_multi_hot(indices, self.num_classes), index, extras)
        except Exception as err:  # noqa: BLE001 - any per-record failure is a skipped record
            return f"record {position} of epoch {epoch}: {type(err).__name__}: {err}"

    def _extra_value(self, value, name: str):
        spec = self._extras[name]
        if spec.kind == "list":
            return value
        if value is None:
            raise ValueError(f"extra column {name!r} is missing")
        array = np.array(value, dtype=spec.dtype)  # a copy: writable, and owned by the batch
        if spec.kind == "stack" and array.shape != spec.shape:
            raise ValueError(f"extra column {name!r} has shape {array.shape}, expected {spec.shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"extra column {name!r} holds NaN or infinite values")
        return array

    def _collate(self, examples: list[_Example]) -> dict[str, Any]:
        batch: dict[str, Any] = {
            "waveforms": torch.from_numpy(_pad_and_stack([e.waveform for e in examples])),
            "lengths": torch.tensor([e.length for e in examples], dtype=torch.int64),
            "labels": torch.from_numpy(np.stack([e.target for e in examples])),
        }
        if self.return_index:
            batch["indices"] = torch.tensor([e.index for e in examples], dtype=torch.int64)
        if self.collate_fn is not None:
            extra = self.collate_fn([e.extras for e in examples])
            if not isinstance(extra, Mapping):
                raise TypeError(f"collate_fn must return a dict of batch entries, got {type(extra).__name__}")
            clash = sorted(set(extra) & set(batch))
            if clash:
                raise ValueError(f"collate_fn returned {clash}, which the stream fills itself")
            batch.update(extra)
            return batch
        for name, spec in self._extras.items():
            values = [e.extras[name] for e in examples]
            if spec.kind == "stack":
                batch[name] = torch.from_numpy(np.stack(values))
            elif spec.kind == "ragged":
                batch[name] = [torch.from_numpy(v) for v in values]
            else:
                batch[name] = values
        return batch

    def _produce(self, epoch: int, start, out: queue.Queue, stop: threading.Event) -> None:
        """The prefetch thread: fills ``out`` with chunks (a collated batch and its bookkeeping), then hands
        any error to the consumer, which re-raises it; the decode pool and the producer's registration end
        with it. ``start`` is the raw position (fixed batches) or the bucketing state (dynamic batches)."""
        put = functools.partial(_put_unless_stopped, out, stop)
        threads = self.num_decode_threads
        pool = ThreadPoolExecutor(threads, thread_name_prefix="audio-decode") if threads else None
        try:
            if self.is_bucketed:
                self._produce_bucketed(epoch, start, put, stop, pool)
            else:
                self._produce_fixed(epoch, start, put, stop, pool)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(err)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
            with _LIVE_LOCK:
                _LIVE_PRODUCERS.pop(threading.current_thread(), None)

    def _produce_fixed(
        self, epoch: int, start: int, put: Callable, stop: threading.Event, pool: ThreadPoolExecutor | None
    ) -> None:
        """``_produce`` for fixed batches of ``batch_size`` clips, from raw position ``start``."""
        inflight: deque = deque()
        examples: list = []
        chunk = _Chunk(None, start)
        ever_decoded = self.stats["decoded"] > 0
        failed_in_a_row = 0

        def handle(pos, result) -> bool:
            nonlocal chunk, examples, failed_in_a_row, ever_decoded
            result = result.result() if pool else result
            if isinstance(result, str):
                chunk.skipped += 1
                chunk.errors.append(result)
                failed_in_a_row += 1
                if not ever_decoded and failed_in_a_row >= ALL_FAILED_LIMIT:
                    raise ValueError(self._all_failed_message(failed_in_a_row, chunk.errors))
            else:
                ever_decoded, failed_in_a_row = True, 0
                chunk.decoded += 1
                examples.append(result)
            if len(examples) == self.batch_size:
                chunk.batch, chunk.consumed = self._collate(examples), pos + 1
                examples = []
                done, chunk = chunk, _Chunk(None, pos + 1)
                return put(done)
            return True

        end = start  # position after the last raw record pulled
        for position, (index, record) in enumerate(self._raw_records(epoch, start), start):
            if stop.is_set():
                return
            end = position + 1
            if pool:
                inflight.append((position, pool.submit(self._prepare, record, epoch, position, index)))
            else:
                inflight.append((position, self._prepare(record, epoch, position, index)))
            # Keep one batch of records decoding while earlier results are collated.
            while len(inflight) > (self.batch_size if pool else 0):
                if not handle(*inflight.popleft()):
                    return
        while inflight:
            if not handle(*inflight.popleft()):
                return
        if not ever_decoded and chunk.skipped:
            raise ValueError(self._all_failed_message(chunk.skipped, chunk.errors))
        if examples and not self.drop_last:
            if not put(_Chunk(self._collate(examples), end, chunk.decoded, chunk.skipped, chunk.errors)):
                return
            chunk = _Chunk(None, end)
        chunk.consumed = end  # the end of the epoch, with the bookkeeping of any dropped tail
        put(chunk)

    def _produce_bucketed(
        self,
        epoch: int,
        position: dict,
        put: Callable,
        stop: threading.Event,
        pool: ThreadPoolExecutor | None,
    ) -> None:
        """``_produce`` for dynamic batches: decoded clips wait in duration buckets until a batch is taken.

        ``position`` is the committed state: ``consumed`` raw records read, the positions still
        ``waiting`` in the buckets, the bucket ``boundaries`` and the ``batches`` taken this epoch. The
        waiting records are read and decoded again first, then the buckets are drained as the
        interrupted run would have drained them, before any new record is read.
        """

        threads = self.num_decode_threads
        inflight: deque = deque()
        depth = max(8, 2 * threads) if pool else 0
        bucketer = DurationBucketer(
            self.max_duration,
            self.num_buckets,
            self.bucket_buffer_duration,
            boundaries=position["boundaries"],
            max_batch_size=self.batch_size,
            seed=(self.seed, epoch, self.rank),
        )
        restoring = set(position["waiting"])
        consumed = position["consumed"]  # raw records read before this iterator (waiting ones included)
        batches = position["batches"]
        chunk = _Chunk(None, consumed)
        ever_decoded = self.stats["decoded"] > 0
        failed_in_a_row = 0
        restored = not restoring

        def emit(clips, waiting: list[int] | None = None) -> bool:
            nonlocal chunk, batches
            batches += 1
            chunk.batch = self._collate([clip.item for clip in clips])
            # Counted when used, so that waiting clips decoded again after a resume are not counted twice.
            chunk.decoded += len(clips)
            chunk.consumed = consumed
            chunk.bucketing = {
                "boundaries": list(bucketer.boundaries),
                "waiting": sorted(bucketer.keys()) if waiting is None else waiting,
                "batches": batches,
            }
            done, chunk = chunk, _Chunk(None, consumed)
            return put(done)

        def drain() -> bool:
            while bucketer.full:
                if not emit(bucketer.pop(batches)):
                    return False
            return True

        def handle(pos, result) -> bool:
            nonlocal consumed, ever_decoded, failed_in_a_row, restored
            result = result.result() if pool else result
            if pos < consumed:  # a clip that was waiting in the buckets when the state was saved
                if not isinstance(result, str):
                    bucketer.add(pos, result.length / self.sample_rate, result)
                return True
            if not restored:
                restored = True
                if not drain():  # the buckets as they were, drained as the saved run would have
                    return False
            consumed = pos + 1
            if isinstance(result, str):
                chunk.skipped += 1
                chunk.errors.append(result)
                failed_in_a_row += 1
                if not ever_decoded and failed_in_a_row >= ALL_FAILED_LIMIT:
                    raise ValueError(self._all_failed_message(failed_in_a_row, chunk.errors))
                return True
            ever_decoded, failed_in_a_row = True, 0
            bucketer.add(pos, result.length / self.sample_rate, result)
            return drain()

        start = min(restoring | {consumed})
        for pos, (index, record) in enumerate(self._raw_records(epoch, start), start):
            if stop.is_set():
                return
            if pos < consumed and pos not in restoring:
                continue  # used in a batch before the state was saved: not decoded again
            if pool:
                inflight.append((pos, pool.submit(self._prepare, record, epoch, pos, index)))
            else:
                inflight.append((pos, self._prepare(record, epoch, pos, index)))
            while len(inflight) > depth:
                if not handle(*inflight.popleft()):
                    return
        while inflight:
            if not handle(*inflight.popleft()):
                return
        if not ever_decoded and chunk.skipped:
            raise ValueError(self._all_failed_message(chunk.skipped, chunk.errors))
        if not restored and not drain():
            return
        # One batch behind the packing, to know which is the last (drop_last); each keeps the waiting
        # keys of the moment it was taken.
        held = None
        for clips in bucketer.flush(batches):
            if held is not None and not emit(*held):
                return
            held = (clips, sorted(bucketer.keys()))
        dropped = []
        if held is not None:
            if self.drop_last and is_partial(held[0], self.max_duration, self.batch_size):
                dropped = held[0]
            elif not emit(*held):
                return
        chunk.consumed = consumed  # the end of the epoch, with the bookkeeping of a dropped tail
        chunk.decoded += len(dropped)
        boundaries = None if bucketer.boundaries is None else list(bucketer.boundaries)
        chunk.bucketing = {"boundaries": boundaries, "waiting": [], "batches": batches}
        put(chunk)

    def _all_failed_message(self, count: int, errors: list[str]) -> str:
        return (
            f"the first {count} records of the stream all failed to decode or label, so the dataset or the "
            f"column choice is wrong (audio_column={self.source.audio_column!r}, "
            f"label_column={self.source.label_column!r}). First errors: " + " | ".join(errors[:3])
        )

    # ---------------------------------------------------------------------------- iteration

    def _commit(self, chunk: _Chunk) -> None:
        self._consumed = chunk.consumed
        if chunk.bucketing is not None:
            self._buckets = chunk.bucketing
        self.stats["decoded"] += chunk.decoded
        for message in chunk.errors:
            self.stats["skipped"] += 1
            n = self.stats["skipped"]
            if len(self.stats["errors"]) < _KEPT_ERRORS:
                self.stats["errors"].append(message)
            if n <= _KEPT_ERRORS or (n & (n - 1)) == 0:  # the first few, then at powers of two
                logger.warning("skipped a corrupt record (%d skipped so far): %s", n, message)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The batches of this rank for the current epoch, from the restored position on."""
        token = object()
        self._active = token
        epoch, start = self.epoch, self._consumed
        if self.is_bucketed:
            start = copy.deepcopy(self._buckets) | {"consumed": start}
        out: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()
        producer = threading.Thread(
            target=self._produce, args=(epoch, start, out, stop), name="audio-stream-prefetch", daemon=True
        )
        with _LIVE_LOCK:
            _LIVE_PRODUCERS[producer] = stop
        producer.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                if self._active is token and self.epoch == epoch:
                    self._commit(item)
                if item.batch is None:
                    return
                yield item.batch
        finally:
            # The producer notices the flag within 0.1 s, even while blocked on a full queue. It is
            # not joined: closing a datasets iterator can sleep for seconds (datasets waits out its
            # reader threads), and the producer touches nothing but its own queue.
            stop.set()


def _fresh_buckets(boundaries: list[float] | None) -> dict:
    """A bucketed stream's position within an epoch before its first batch."""
    return {"boundaries": boundaries, "waiting": [], "batches": 0}


def _pad_and_stack(waveforms: list[np.ndarray]) -> np.ndarray:
    """``(B, longest)`` float32, each waveform zero-padded at the end (clips of a bucketed batch differ)."""
    longest = max(len(w) for w in waveforms)
    if all(len(w) == longest for w in waveforms):
        return np.stack(waveforms)
    out = np.zeros((len(waveforms), longest), dtype=np.float32)
    for row, wave in zip(out, waveforms, strict=True):
        row[: len(wave)] = wave
    return out
