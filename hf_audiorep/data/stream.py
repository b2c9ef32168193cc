"""``AudioStream``: the resumable batch iterator every recipe trains and evaluates from.

Raw records come in a deterministic order for (seed, epoch, rank); a background thread decodes
them with a thread pool (soundfile and torch's resampler release the GIL), crops or pads them, and
collates fixed-size batches, one batch ahead of the training step. The stream is consumed in the
main process, not by DataLoader workers, so its position is known exactly: ``state_dict()`` after
``k`` batches names the raw record that follows the last one used, and a fresh stream given that
state resumes there without decoding anything it skips.

Corrupt records are skipped and counted in ``stats``, never raised; but a stream whose first
records all fail (wrong column, unreadable dataset) raises, because it would otherwise spin.
"""

from __future__ import annotations

import atexit
import copy
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.distributed import split_dataset_by_node

from ..hub_errors import translate_hub_errors
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


@dataclass
class _Chunk:
    """What the producer thread hands to the consumer: a batch (or the end) and the bookkeeping
    that becomes true once the consumer yields it."""

    batch: dict[str, torch.Tensor] | None
    consumed: int  # raw records of this epoch consumed up to and including this batch
    decoded: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


class AudioStream:
    """Batches ``{"waveforms": (B, S) float32, "lengths": (B,) int64, "labels": (B, C) float32}``.

    With ``extra_columns``, batches also carry ``batch[name]``: a ``(B, D)`` float32 tensor per column,
    e.g. precomputed teacher embeddings (``training.rr_teacher.precompute_teacher_embeddings``).

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
        extra_columns: dataset columns of fixed-length float lists to batch alongside the audio. Their
            width ``D`` is the column feature's fixed length, else that of the first record. A record
            whose value has another length, or a non-finite value, is skipped and counted as corrupt.

    Epochs: ``__iter__`` yields the rest of the current epoch and does not advance it; call
    ``set_epoch(e)`` before each epoch. ``set_epoch`` with the current epoch keeps the position, so
    a loop that calls it after ``load_state_dict`` resumes mid-epoch.
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
    ):
        if not isinstance(source, AudioSource):
            if not isinstance(source, Dataset | IterableDataset):
                raise TypeError(
                    f"source must be an AudioSource or a datasets object, got {type(source).__name__}"
                )
            source = load_audio_source(source)
        positive = {
            "batch_size": batch_size,
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
        if source.num_classes == 0:
            raise ValueError("the source has an empty label vocabulary")

        self.source = source
        self.batch_size = int(batch_size)
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

        self.extra_columns = self._check_extra_columns(source, extra_columns)
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
        self.extra_dims = {name: self._column_width(source.dataset, name) for name in self.extra_columns}

    @staticmethod
    def _check_extra_columns(source: AudioSource, extra_columns) -> tuple[str, ...]:
        if isinstance(extra_columns, str):
            extra_columns = (extra_columns,)
        names = tuple(extra_columns)
        features = source.dataset.features
        for name in names:
            if not isinstance(name, str):
                raise TypeError(f"extra_columns must be column names, got {name!r}")
            if name in ("waveforms", "lengths", "labels"):
                raise ValueError(f"extra column {name!r} would overwrite the batch key of the same name")
            if name == source.audio_column:
                raise ValueError(f"extra column {name!r} is the audio column")
            if features is not None and name not in features:
                raise ValueError(
                    f"extra column {name!r} is not in the dataset; its columns are {list(features)}"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"extra_columns has duplicates: {list(names)}")
        return names

    @staticmethod
    def _column_width(dataset, name: str) -> int:
        """Width of a column of float lists: the feature's fixed length, else the first record's."""
        feature = (dataset.features or {}).get(name)
        length = getattr(feature, "length", -1)
        if isinstance(length, int) and length > 0:
            return length
        # Only this column is read: no audio is decoded; a stream reads its first record (one request).
        column = dataset.select_columns([name])
        first = column[0][name] if isinstance(column, Dataset) else next(iter(column))[name]
        value = np.asarray(first, dtype=np.float32)
        if value.ndim != 1 or value.size == 0:
            raise ValueError(
                f"extra column {name!r} must hold a non-empty list of floats per record; the first "
                f"record has shape {value.shape}"
            )
        return int(value.size)

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

    def __len__(self) -> int:
        """Batches per epoch on this rank (map-style datasets only)."""
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

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "examples_consumed": self._consumed,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "stats": copy.deepcopy(self.stats),
        }

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
        self.epoch = int(state["epoch"])
        self._consumed = int(state["examples_consumed"])
        if self._consumed < 0:
            raise ValueError(f"examples_consumed must be >= 0, got {self._consumed}")
        if "stats" in state:
            self.stats = copy.deepcopy(state["stats"])

    # -------------------------------------------------------------------------- raw records

    def _epoch_indices(self) -> np.ndarray:
        n = len(self._dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.train else np.arange(n)
        if self.drop_last:
            order = order[: n - n % self.world_size]
        return order[self.rank :: self.world_size]

    def _raw_records(self, epoch: int, start: int) -> Iterator[dict]:
        """This rank's records of ``epoch`` from position ``start``, still encoded."""
        if not self.is_streaming:
            indices = self._epoch_indices()
            for lo in range(start, len(indices), self.batch_size):
                rows = self._dataset[indices[lo : lo + self.batch_size].tolist()]
                columns = list(rows)
                for values in zip(*rows.values(), strict=True):
                    yield dict(zip(columns, values, strict=True))
            return
        # datasets' IterableDataset.skip() drops the epoch of the shuffle (datasets 5.2), so after
        # set_epoch(e > 0) it would skip into a different order. Skipping the first records here,
        # before decoding, costs the same reads and keeps the order exact.
        self._dataset.set_epoch(epoch)
        # A stream opens its remote files only here: a Hub that cannot be reached must say so in one line,
        # not as a traceback from inside datasets' reader.
        with translate_hub_errors(None):
            yield from itertools.islice(self._dataset, start, None)

    # ---------------------------------------------------------------------------- decoding

    def _prepare(self, record: dict, epoch: int, position: int):
        """Decode one record; the crop RNG depends only on (seed, epoch, rank, position), so the
        result does not depend on which thread ran it or when."""
        try:
            wave = decode_audio(record[self.source.audio_column], self.sample_rate)
            rng = np.random.default_rng([self.seed, epoch, self.rank, position]) if self.train else None
            wave, length = crop_or_pad(wave, self.num_samples, rng, self.train)
            column = self.source.label_column
            indices = self.source.label_to_index(record[column]) if column else []
            extras = {name: self._extra_value(record[name], name) for name in self.extra_columns}
            return wave, length, labels_to_multi_hot(indices, self.num_classes), extras
        except Exception as err:  # noqa: BLE001 - any per-record failure is a skipped record
            return f"record {position} of epoch {epoch}: {type(err).__name__}: {err}"

    def _extra_value(self, value, name: str) -> np.ndarray:
        if value is None:
            raise ValueError(f"extra column {name!r} is missing")
        array = np.asarray(value, dtype=np.float32)
        if array.shape != (self.extra_dims[name],):
            raise ValueError(
                f"extra column {name!r} has shape {array.shape}, expected ({self.extra_dims[name]},)"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"extra column {name!r} holds NaN or infinite values")
        return array

    @staticmethod
    def _collate(examples: list) -> dict[str, torch.Tensor]:
        batch = {
            "waveforms": torch.from_numpy(np.stack([e[0] for e in examples])),
            "lengths": torch.tensor([e[1] for e in examples], dtype=torch.int64),
            "labels": torch.from_numpy(np.stack([e[2] for e in examples])),
        }
        for name in examples[0][3]:
            batch[name] = torch.from_numpy(np.stack([e[3][name] for e in examples]))
        return batch

    def _produce(self, epoch: int, start: int, out: queue.Queue, stop: threading.Event) -> None:
        def put(item) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        threads = self.num_decode_threads
        pool = ThreadPoolExecutor(threads, thread_name_prefix="audio-decode") if threads else None
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

        try:
            end = start  # position after the last raw record pulled
            for position, record in enumerate(self._raw_records(epoch, start), start):
                if stop.is_set():
                    return
                end = position + 1
                if pool:
                    inflight.append((position, pool.submit(self._prepare, record, epoch, position)))
                else:
                    inflight.append((position, self._prepare(record, epoch, position)))
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
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(err)
        finally:
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
            with _LIVE_LOCK:
                _LIVE_PRODUCERS.pop(threading.current_thread(), None)

    def _all_failed_message(self, count: int, errors: list[str]) -> str:
        return (
            f"the first {count} records of the stream all failed to decode or label, so the dataset or the "
            f"column choice is wrong (audio_column={self.source.audio_column!r}, "
            f"label_column={self.source.label_column!r}). First errors: " + " | ".join(errors[:3])
        )

    # ---------------------------------------------------------------------------- iteration

    def _commit(self, chunk: _Chunk) -> None:
        self._consumed = chunk.consumed
        self.stats["decoded"] += chunk.decoded
        for message in chunk.errors:
            self.stats["skipped"] += 1
            n = self.stats["skipped"]
            if len(self.stats["errors"]) < _KEPT_ERRORS:
                self.stats["errors"].append(message)
            if n <= _KEPT_ERRORS or (n & (n - 1)) == 0:  # the first few, then at powers of two
                logger.warning("skipped a corrupt record (%d skipped so far): %s", n, message)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """The batches of this rank for the current epoch, from the restored position on."""
        token = object()
        self._active = token
        epoch, start = self.epoch, self._consumed
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
