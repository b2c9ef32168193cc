"""Dynamic batching by duration: variable-length clips grouped into batches of similar length.

A batch of variable-length clips is padded to its longest clip, so what memory and compute see is its
*padded* duration, ``len(batch) * max(durations)``. Bucketing keeps that close to the audio really in the
batch: clips are sorted into ``num_buckets`` duration buckets, each bucket fills on its own, and a batch is
taken from one bucket once it holds ``max_duration`` seconds of padded audio. This is lhotse's dynamic
bucketing (``DynamicBucketingSampler``) rewritten for a stream of already-decoded clips:

- bucket boundaries are duration quantiles estimated from the first clips the stream reads (the first fill
  of the buffer), chosen so that every bucket holds the same total duration, hence yields batches at the
  same rate;
- memory is bounded: at most ``buffer_duration`` seconds of clips wait in the buckets (plus one clip);
  once the buffer is full, one batch is taken from a bucket drawn at random among those holding a full
  batch (from the bucket holding the most audio when none does, a partial batch), and reading resumes;
- at the end of the stream the ready batches are taken as before, then what is left is packed in duration
  order across buckets (so the end of an epoch leaves at most one partial batch, not one per bucket);
- every draw depends only on ``seed`` and the number of batches taken before it, so a bucketer rebuilt with
  the same boundaries, the same waiting clips (in arrival order) and that count continues exactly as the
  original: what :class:`~hf_audiorep.data.AudioStream` saves to resume a bucketed stream.

A clip longer than ``max_duration`` forms a batch of its own (it is not cropped here; ``AudioStream`` crops
clips to ``clip_seconds`` before they reach the bucketer).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np


class Clip(NamedTuple):
    """One waiting clip: ``key`` names it (the stream's record position), ``item`` is what is batched."""

    key: Hashable
    duration: float
    item: Any


def padded_duration(durations: Sequence[float]) -> float:
    """What a batch of clips padded to the longest costs: ``len(durations) * max(durations)``."""
    return len(durations) * max(durations) if len(durations) else 0.0


def padding_waste(batches: Iterable[Sequence[float]]) -> float:
    """The fraction of the padded audio of ``batches`` (lists of clip durations) that is padding."""
    real = padded = 0.0
    for durations in batches:
        real += float(sum(durations))
        padded += padded_duration(durations)
    return 1.0 - real / padded if padded > 0 else 0.0


def estimate_bucket_boundaries(durations: Sequence[float], num_buckets: int) -> list[float]:
    """Upper duration bounds of the first ``num_buckets - 1`` buckets (the last is open), so that each bucket
    holds about the same total duration of ``durations``; repeated bounds (many equal durations) are merged,
    so fewer buckets may result."""
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive integer, got {num_buckets!r}")
    values = np.sort(np.asarray(durations, dtype=np.float64))
    if values.size == 0 or num_buckets == 1:
        return []
    cumulative = np.cumsum(values)
    targets = cumulative[-1] * np.arange(1, num_buckets) / num_buckets
    # The clip at which the running total crosses each target closes a bucket (inclusive bound).
    bounds = values[np.minimum(np.searchsorted(cumulative, targets), values.size - 1)]
    return sorted({float(b) for b in bounds if b < values[-1]})


class DurationBucketer:
    """Buckets of waiting clips and the rule that turns them into batches (see the module docstring).

    Args:
        max_duration: padded seconds per batch (``len(batch) * longest clip``).
        num_buckets: buckets to estimate (ignored when ``boundaries`` is given).
        buffer_duration: seconds of clips that wait before a batch is taken; default
            ``2 * num_buckets * max_duration`` (about two full batches per bucket).
        boundaries: the buckets' upper bounds, e.g. from an earlier run; default estimated from the clips
            that first fill the buffer.
        max_batch_size: at most this many clips per batch (None: no limit).
        seed: seeds the choice among ready buckets (an int or a sequence of ints).
    """

    def __init__(
        self,
        max_duration: float,
        num_buckets: int = 30,
        buffer_duration: float | None = None,
        boundaries: Sequence[float] | None = None,
        max_batch_size: int | None = None,
        seed: int | Sequence[int] = 0,
    ):
        check_bucketing_arguments(max_duration, num_buckets, buffer_duration, max_batch_size)
        self.max_duration = float(max_duration)
        self.num_buckets = int(num_buckets)
        self.buffer_duration = (
            float(buffer_duration) if buffer_duration is not None else 2.0 * num_buckets * self.max_duration
        )
        self.max_batch_size = max_batch_size
        self.seed = [int(seed)] if np.ndim(seed) == 0 else [int(s) for s in seed]
        self._staging: list[Clip] = []  # clips read before the boundaries exist
        self._buckets: list[list[Clip]] = []
        self.boundaries: list[float] | None = None
        self.buffered_duration = 0.0
        if boundaries is not None:
            self._set_boundaries(boundaries)

    def _set_boundaries(self, boundaries: Sequence[float]) -> None:
        bounds = [float(b) for b in boundaries]
        if bounds != sorted(bounds):
            raise ValueError(f"bucket boundaries must be sorted, got {bounds}")
        self.boundaries = bounds
        self._buckets = [[] for _ in range(len(bounds) + 1)]

    # ------------------------------------------------------------------------------------------ filling

    @property
    def full(self) -> bool:
        """The buffer holds ``buffer_duration`` seconds: time to take a batch."""
        return self.buffered_duration >= self.buffer_duration

    def __len__(self) -> int:
        return len(self._staging) + sum(len(bucket) for bucket in self._buckets)

    def keys(self) -> list:
        """The keys of the waiting clips, in arrival order within each bucket."""
        return [clip.key for clip in self._staging] + [clip.key for b in self._buckets for clip in b]

    def add(self, key: Hashable, duration: float, item: Any = None) -> None:
        if not duration >= 0:
            raise ValueError(f"clip {key!r} has duration {duration!r}; durations must be >= 0")
        clip = Clip(key, float(duration), item)
        self.buffered_duration += clip.duration
        if self.boundaries is None:
            self._staging.append(clip)
            if self.full:
                self._estimate()
        else:
            self._buckets[bisect.bisect_left(self.boundaries, clip.duration)].append(clip)

    def _estimate(self) -> None:
        staged, self._staging = self._staging, []
        self._set_boundaries(estimate_bucket_boundaries([c.duration for c in staged], self.num_buckets))
        for clip in staged:
            self._buckets[bisect.bisect_left(self.boundaries, clip.duration)].append(clip)

    # ----------------------------------------------------------------------------------------- batching

    def _batch_size(self, bucket: list[Clip]) -> int:
        """How many clips from the front of ``bucket`` make its next batch (at least one)."""
        longest = 0.0
        for count, clip in enumerate(bucket):
            if self.max_batch_size is not None and count == self.max_batch_size:
                return count
            longest = max(longest, clip.duration)
            if count > 0 and (count + 1) * longest > self.max_duration:
                return count
        return len(bucket)

    def _ready(self, bucket: list[Clip]) -> bool:
        # Full: the next clip no longer fits, or the batch reached a limit (a lone over-long clip is full).
        size = self._batch_size(bucket)
        if size < len(bucket) or size == self.max_batch_size:
            return True
        return padded_duration([c.duration for c in bucket]) >= self.max_duration

    def _take(self, bucket: list[Clip], size: int) -> list[Clip]:
        batch = bucket[:size]
        del bucket[:size]
        self.buffered_duration -= sum(c.duration for c in batch)
        if not len(self):
            self.buffered_duration = 0.0  # no float drift survives an empty buffer
        return batch

    def pop(self, batch_index: int) -> list[Clip]:
        """The next batch, from a bucket drawn with ``seed`` and ``batch_index`` among the ready ones (or
        the fullest bucket when none is ready)."""
        if self.boundaries is None:
            self._estimate()
        ready = [i for i, bucket in enumerate(self._buckets) if bucket and self._ready(bucket)]
        if ready:
            rng = np.random.default_rng([*self.seed, int(batch_index)])
            chosen = ready[int(rng.integers(len(ready)))]
        else:
            totals = [sum(c.duration for c in bucket) for bucket in self._buckets]
            if not any(self._buckets):
                raise IndexError("pop from an empty DurationBucketer")
            chosen = int(np.argmax(totals))
        bucket = self._buckets[chosen]
        return self._take(bucket, self._batch_size(bucket))

    def flush(self, batch_index: int) -> Iterator[list[Clip]]:
        """The batches left at the end of the stream: full ones as :meth:`pop` takes them, then the rest
        packed in duration order across buckets. ``batch_index`` is the number of batches taken so far."""
        if self.boundaries is None:
            self._estimate()
        while any(bucket and self._ready(bucket) for bucket in self._buckets):
            yield self.pop(batch_index)
            batch_index += 1
        while len(self):
            # The leftovers of all buckets, shortest bucket first, as one list; taking whole prefixes keeps
            # the remainder a suffix of it, so a restored bucketer packs the same batches.
            merged = [clip for bucket in self._buckets for clip in bucket]
            size = self._batch_size(merged)
            batch = merged[:size]
            taken = {id(c) for c in batch}
            for bucket in self._buckets:
                bucket[:] = [c for c in bucket if id(c) not in taken]
            self.buffered_duration = sum(c.duration for c in merged[size:])
            yield batch


def is_partial(batch: Sequence[Clip], max_duration: float, max_batch_size: int | None = None) -> bool:
    """Whether ``batch`` has room for one more clip as long as its longest (what ``drop_last`` drops)."""
    if not batch or len(batch) == max_batch_size:
        return not batch
    return (len(batch) + 1) * max(c.duration for c in batch) <= max_duration


def check_bucketing_arguments(max_duration, num_buckets, buffer_duration=None, max_batch_size=None) -> None:
    """ValueError naming the argument when a bucketing setting is out of range."""
    if isinstance(max_duration, bool) or not isinstance(max_duration, int | float) or not max_duration > 0:
        raise ValueError(f"max_duration must be a positive number of seconds, got {max_duration!r}")
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int | np.integer) or num_buckets < 1:
        raise ValueError(f"num_buckets must be a positive integer, got {num_buckets!r}")
    if buffer_duration is not None and not buffer_duration >= max_duration:
        raise ValueError(
            f"bucket_buffer_duration must be >= max_duration ({max_duration}) so that a full batch fits, "
            f"got {buffer_duration!r}"
        )
    if max_batch_size is not None and (
        isinstance(max_batch_size, bool)
        or not isinstance(max_batch_size, int | np.integer)
        or max_batch_size < 1
    ):
        raise ValueError(
            "batch_size (with max_duration: the most clips per batch) must be a positive integer or None, "
            f"got {max_batch_size!r}"
        )


def bucket_by_duration(
    clips: Iterable[tuple[Hashable, float, Any]],
    max_duration: float,
    num_buckets: int = 30,
    buffer_duration: float | None = None,
    boundaries: Sequence[float] | None = None,
    max_batch_size: int | None = None,
    seed: int | Sequence[int] = 0,
    drop_last: bool = False,
) -> Iterator[list[Clip]]:
    """Batches of ``(key, duration, item)`` triples from any iterable (a ``datasets.IterableDataset`` mapped
    to its durations, a manifest): :class:`DurationBucketer` over one pass. ``drop_last`` drops the final
    batch of the pass when it is partial (:func:`is_partial`). For decoded audio with resume, use
    ``AudioStream(max_duration=...)``."""
    bucketer = DurationBucketer(max_duration, num_buckets, buffer_duration, boundaries, max_batch_size, seed)
    taken = 0
    for key, duration, item in clips:
        bucketer.add(key, duration, item)
        while bucketer.full:
            yield bucketer.pop(taken)
            taken += 1
    rest = list(bucketer.flush(taken))
    if drop_last and rest and is_partial(rest[-1], max_duration, max_batch_size):
        rest = rest[:-1]
    yield from rest
