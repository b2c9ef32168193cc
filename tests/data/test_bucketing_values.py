"""The duration bucketer (hf_audiorep/data/bucketing.py) on hand-made examples: every number below is worked
out in the comments (running totals, ``clips * longest`` against ``max_duration``), and the random choice
among ready buckets is recomputed with numpy's generator directly."""

from __future__ import annotations

import numpy as np
import pytest

from hf_audiorep.data.bucketing import (
    Clip,
    DurationBucketer,
    bucket_by_duration,
    check_bucketing_arguments,
    estimate_bucket_boundaries,
    is_partial,
    padded_duration,
    padding_waste,
)


def _keys(batch) -> list:
    return [clip.key for clip in batch]


def _bucketer(durations, **settings) -> DurationBucketer:
    """A bucketer holding clips named by their position in ``durations`` (never full: big buffer)."""
    bucketer = DurationBucketer(**{"buffer_duration": 1000.0, **settings})
    for key, duration in enumerate(durations):
        bucketer.add(key, duration, item=f"item{key}")
    return bucketer


# --------------------------------------------------------------------------------- padded duration


def test_padded_duration_and_padding_waste_by_hand():
    assert padded_duration([]) == 0.0
    assert padded_duration([2.0, 5.0, 1.0]) == 15.0  # 3 clips * 5 s
    assert padded_duration([4.0]) == 4.0
    # real 8 + 8 = 16 s, padded 15 + 8 = 23 s
    assert padding_waste([[2.0, 5.0, 1.0], [4.0, 4.0]]) == pytest.approx(1.0 - 16.0 / 23.0)
    assert padding_waste([[3.0, 3.0]]) == 0.0
    assert padding_waste([[0.2, 0.5]]) == pytest.approx(0.3)  # under a second padded: 1 - 0.7 / 1.0
    assert padding_waste([]) == 0.0
    assert padding_waste([[], []]) == 0.0  # nothing padded: no division by zero


# ------------------------------------------------------------------------------------- boundaries


def test_boundaries_by_hand():
    # Sorted: 1 1 1 1 2 2 3 5, running total 1 2 3 4 6 8 11 16.
    durations = [5.0, 1.0, 2.0, 1.0, 3.0, 1.0, 2.0, 1.0]
    # 2 buckets: the total reaches 8 (= 16 / 2) at the 6th clip, 2 s (inclusive bound).
    assert estimate_bucket_boundaries(durations, 2) == [2.0]
    # 4 buckets: targets 4, 8, 12 are reached at the 4th (1 s), 6th (2 s) and 8th clip (5 s); the last is
    # the longest clip, which the open last bucket holds anyway, so it is no bound.
    assert estimate_bucket_boundaries(durations, 4) == [1.0, 2.0]
    # 8 buckets: targets 2, 4, ..., 14 reached at clips 2, 4, 5, 6, 7, 8, 8: 1, 1, 2, 2, 3, 5, 5 s -> merged.
    assert estimate_bucket_boundaries(durations, 8) == [1.0, 2.0, 3.0]
    # total 8, half (4) reached at the 4th 1-s clip; a bound at the longest clip is dropped:
    assert estimate_bucket_boundaries([1.0, 1.0, 4.0, 1.0, 1.0], 2) == [1.0]
    assert estimate_bucket_boundaries([1.0, 4.0], 2) == []  # total 5, half reached at the 4-s clip
    assert estimate_bucket_boundaries(durations, 1) == []
    assert estimate_bucket_boundaries([], 3) == []
    assert all(isinstance(b, float) for b in estimate_bucket_boundaries(np.array([1, 2, 3, 4]), 2))


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "3", None])
def test_boundaries_need_a_positive_integer_bucket_count(bad):
    with pytest.raises(ValueError, match="num_buckets must be a positive integer"):
        estimate_bucket_boundaries([1.0, 2.0], bad)


# --------------------------------------------------------------------------------------- settings


def test_bucketer_settings_and_defaults():
    bucketer = DurationBucketer(10.0, num_buckets=3)
    assert bucketer.max_duration == 10.0 and bucketer.num_buckets == 3
    assert bucketer.buffer_duration == 60.0  # 2 * 3 buckets * 10 s
    assert bucketer.boundaries is None and bucketer.max_batch_size is None
    assert bucketer.seed == [0] and bucketer.buffered_duration == 0.0 and len(bucketer) == 0
    assert DurationBucketer(10, buffer_duration=25).buffer_duration == 25.0
    assert DurationBucketer(10, seed=5).seed == [5]
    assert DurationBucketer(10, seed=(7, 1)).seed == [7, 1]
    assert DurationBucketer(10, seed=np.int64(4)).seed == [4]
    assert DurationBucketer(10, boundaries=[1, 3]).boundaries == [1.0, 3.0]
    with pytest.raises(ValueError, match="must be sorted"):
        DurationBucketer(10, boundaries=[3.0, 1.0])
    with pytest.raises(ValueError, match="max_duration"):
        DurationBucketer(0.0)
    default = DurationBucketer(2.0)
    assert default.num_buckets == 30 and default.buffer_duration == 120.0  # 2 * 30 buckets * 2 s
    # the bucketer checks its own settings
    with pytest.raises(ValueError, match="bucket_buffer_duration must be >= max_duration"):
        DurationBucketer(10.0, buffer_duration=5.0)
    with pytest.raises(ValueError, match="batch_size"):
        DurationBucketer(10.0, max_batch_size=0)
    with pytest.raises(ValueError, match="num_buckets"):
        DurationBucketer(10.0, num_buckets=0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((0, 3), "max_duration must be a positive number"),
        ((-1.0, 3), "max_duration must be a positive number"),
        ((True, 3), "max_duration must be a positive number"),
        (("10", 3), "max_duration must be a positive number"),
        ((float("nan"), 3), "max_duration must be a positive number"),
        ((10.0, 0), "num_buckets must be a positive integer"),
        ((10.0, True), "num_buckets must be a positive integer"),
        ((10.0, 2.0), "num_buckets must be a positive integer"),
        ((10.0, 3, 9.99), r"bucket_buffer_duration must be >= max_duration \(10.0\)"),
        ((10.0, 3, float("nan")), "bucket_buffer_duration"),
        ((10.0, 3, None, 0), "batch_size"),
        ((10.0, 3, None, True), "batch_size"),
        ((10.0, 3, None, 2.0), "batch_size"),
    ],
)
def test_bad_bucketing_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        check_bucketing_arguments(*arguments)


def test_good_bucketing_arguments_pass():
    check_bucketing_arguments(10, 1)
    check_bucketing_arguments(0.5, np.int64(3), 0.5, np.int64(1))  # buffer == max_duration: one batch fits
    check_bucketing_arguments(10.0, 30, None, None)
    check_bucketing_arguments(np.float64(2.0), 2, 4.0, 8)


# ---------------------------------------------------------------------------------------- filling


def test_clips_go_to_the_bucket_of_their_inclusive_bound():
    bucketer = _bucketer([6.0, 2.0, 5.0, 1.0, 0.0, 2.5], max_duration=10.0, boundaries=[2.0, 5.0])
    # bucket <= 2: keys 1 (2 s), 3, 4 (0 s is a duration); bucket (2, 5]: keys 2 (5 s), 5; open bucket: key 0
    assert bucketer.keys() == [1, 3, 4, 2, 5, 0]
    assert len(bucketer) == 6
    assert bucketer.buffered_duration == pytest.approx(16.5)


@pytest.mark.parametrize("bad", [-0.5, float("nan")])
def test_a_negative_or_missing_duration_is_refused(bad):
    bucketer = DurationBucketer(10.0)
    with pytest.raises(ValueError, match="durations must be >= 0"):
        bucketer.add("k", bad)
    assert len(bucketer) == 0 and bucketer.buffered_duration == 0.0


def test_the_buffer_is_full_at_buffer_duration_and_then_the_boundaries_are_estimated():
    bucketer = DurationBucketer(max_duration=4.0, num_buckets=2, buffer_duration=10.0)
    for key, duration in enumerate([4.0, 1.0, 3.0]):
        bucketer.add(key, duration)
    # 8 s of 10: still staged in arrival order, no boundaries yet
    assert not bucketer.full and bucketer.boundaries is None
    assert bucketer.keys() == [0, 1, 2] and len(bucketer) == 3
    bucketer.add(3, 2.0)  # exactly 10 s: full
    assert bucketer.full and bucketer.buffered_duration == 10.0
    # Sorted 1 2 3 4, running total 1 3 6 10: half (5) is reached at the 3-s clip.
    assert bucketer.boundaries == [3.0]
    assert bucketer.keys() == [1, 2, 3, 0]  # bucket <= 3 s (arrival order), then the 4-s clip
    assert not DurationBucketer(4.0, buffer_duration=10.0).full


# --------------------------------------------------------------------------------------- batching


def test_pop_takes_the_ready_bucket_then_the_fullest_then_raises_when_empty():
    # max 10 s, bounds [3]: bucket 0 gets 2 3 1 3 (keys 0-3), bucket 1 gets 4 4 (keys 4, 5).
    bucketer = _bucketer([2.0, 3.0, 1.0, 3.0, 4.0, 4.0], max_duration=10.0, boundaries=[3.0])
    # Bucket 0: 2 clips -> 2 * 3 = 6, 3 clips -> 9, 4 clips -> 12 > 10: a batch of 3, and the 4th waits
    # (ready). Bucket 1: 2 * 4 = 8 s holds both, with room left (not ready).
    batch = bucketer.pop(0)
    assert _keys(batch) == [0, 1, 2] and [c.item for c in batch] == ["item0", "item1", "item2"]
    assert bucketer.buffered_duration == pytest.approx(17.0 - 6.0)
    # No bucket ready: the one holding the most audio (8 s against 3 s) gives its partial batch.
    assert _keys(bucketer.pop(1)) == [4, 5]
    assert bucketer.buffered_duration == pytest.approx(3.0)
    assert _keys(bucketer.pop(2)) == [3]
    assert bucketer.buffered_duration == 0.0 and len(bucketer) == 0
    with pytest.raises(IndexError, match="empty"):
        bucketer.pop(3)


def test_the_fullest_bucket_is_the_one_with_the_most_audio_not_the_most_clips():
    # bounds [1]: bucket 0 holds 1 1 1 (3 s, 3 clips), bucket 1 holds 2.5 2.5 (5 s, 2 clips); none is ready.
    bucketer = _bucketer([1.0, 1.0, 1.0, 2.5, 2.5], max_duration=100.0, boundaries=[1.0])
    assert _keys(bucketer.pop(0)) == [3, 4]
    # reversed: bucket 0 now has more audio than bucket 1
    bucketer = _bucketer([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.5, 2.5], max_duration=100.0, boundaries=[1.0])
    assert _keys(bucketer.pop(0)) == [0, 1, 2, 3, 4, 5]


def _drawn(seed, index, candidates: int) -> int:
    """The ready bucket (among ``candidates``) numpy's generator picks for batch ``index``."""
    return int(np.random.default_rng([*seed, index]).integers(candidates))


def test_a_batch_of_exactly_max_duration_is_full():
    # Bucket 0: 2.5 x 4 = 10 s: the 4th clip still fits (10 is not > 10) and the batch is ready (10 >= 10)
    # although no 5th clip waits. Bucket 1: 6 6 6, two of which make 12 > 10: ready, a batch of one.
    outcomes = set()
    for index in range(8):
        bucketer = _bucketer([2.5, 2.5, 2.5, 2.5, 6.0, 6.0, 6.0], max_duration=10.0, boundaries=[3.0])
        chosen = _drawn([0], index, 2)  # both buckets are ready
        assert _keys(bucketer.pop(index)) == ([0, 1, 2, 3] if chosen == 0 else [4])
        outcomes.add(chosen)
    assert outcomes == {0, 1}
    # A 3.5-s clip after 2.5 2.5 2.5 makes 4 * 3.5 = 14 > 10: the batch stops at 3 clips.
    assert _keys(_bucketer([2.5, 2.5, 2.5, 3.5], max_duration=10.0, boundaries=[]).pop(0)) == [0, 1, 2]


def test_sub_second_clips_and_budgets():
    # 0.2-s clips under a 0.5-s budget: 2 fit (0.4), 3 do not (0.6 > 0.5).
    bucketer = _bucketer([0.2] * 5, max_duration=0.5, boundaries=[])
    assert [_keys(bucketer.pop(i)) for i in range(3)] == [[0, 1], [2, 3], [4]]


def test_a_lone_clip_longer_than_max_duration_is_a_ready_batch():
    # bucket 1 holds one 12-s clip (padded 12 >= 10: ready); bucket 0's 1 1 has more clips but is not ready.
    bucketer = _bucketer([1.0, 1.0, 12.0], max_duration=10.0, boundaries=[5.0])
    assert _keys(bucketer.pop(0)) == [2]
    # two over-long clips in one bucket: one per batch
    bucketer = _bucketer([12.0, 11.0], max_duration=10.0, boundaries=[])
    assert _keys(bucketer.pop(0)) == [0] and _keys(bucketer.pop(1)) == [1]


def test_max_batch_size_caps_a_batch_and_makes_it_ready():
    bucketer = _bucketer([1.0, 1.0, 1.0], max_duration=100.0, boundaries=[], max_batch_size=2)
    assert _keys(bucketer.pop(0)) == [0, 1]
    assert _keys(bucketer.pop(1)) == [2]
    # bucket 0 holds exactly max_batch_size clips (2 s): ready by the cap, so it is taken although bucket 1
    # (5 s, not ready: one clip, far below 100 s) holds more audio.
    bucketer = _bucketer([1.0, 1.0, 5.0], max_duration=100.0, boundaries=[2.0], max_batch_size=2)
    assert _keys(bucketer.pop(0)) == [0, 1]
    # a cap of one: both buckets are ready, one clip per batch
    for index in range(4):
        bucketer = _bucketer([0.5, 5.0, 5.0], max_duration=100.0, boundaries=[1.0], max_batch_size=1)
        assert _keys(bucketer.pop(index)) == [[0], [1]][_drawn([0], index, 2)]


def test_the_choice_among_ready_buckets_is_drawn_from_the_seed_and_the_batch_index():
    # bounds [1, 2], max 4 s: bucket 0 holds 1 x 5 (4 fit), bucket 1 holds 2 x 3 (2 fit), bucket 2 holds
    # 3 x 2 (1 fits): each has a clip that does not fit its next batch, so all three are ready.
    durations = [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0]
    first_key = {0: 0, 1: 5, 2: 8}  # the key each bucket's batch starts with
    drawn = set()
    for seed in ((7, 1), (3,)):
        for index in range(12):
            bucketer = _bucketer(durations, max_duration=4.0, boundaries=[1.0, 2.0], seed=seed)
            chosen = _drawn(seed, index, 3)
            batch = bucketer.pop(index)
            assert batch[0].key == first_key[chosen]
            drawn.add(chosen)
    assert drawn == {0, 1, 2}  # the draw really varies with the index


def test_flush_packs_the_leftovers_of_all_buckets_in_duration_order():
    # bounds [2, 5]: bucket 0 gets keys 0 (1 s), 2 (1.5 s); bucket 1 keys 1 (4 s), 4 (3 s); bucket 2 key 3.
    bucketer = _bucketer([1.0, 4.0, 1.5, 6.0, 3.0], max_duration=10.0, boundaries=[2.0, 5.0])
    # None is ready (1.5 * 2, 4 * 2, 6: all < 10 with room left): merged 1 1.5 4 3 6 is cut into
    # 1 1.5 (3 * 4 = 12 > 10), then 4 3 (3 * 6 = 18 > 10), then 6.
    seen = []
    for batch in bucketer.flush(0):
        seen.append((_keys(batch), bucketer.buffered_duration, len(bucketer)))
    assert seen == [([0, 2], 13.0, 3), ([1, 4], 6.0, 1), ([3], 0.0, 0)]
    assert list(bucketer.flush(3)) == []


def test_flush_takes_the_ready_batches_first_with_their_draws():
    # bounds [1]: bucket 0 holds 1 x 5 (4 fit in 4 s: ready), bucket 1 holds 3 (not ready).
    bucketer = _bucketer([1.0, 1.0, 3.0, 1.0, 1.0, 1.0], max_duration=4.0, boundaries=[1.0])
    batches = [_keys(b) for b in bucketer.flush(5)]
    # the ready batch 0 1 3 4, then the leftovers 5 (1 s) and 2 (3 s): 2 * 3 = 6 > 4, two batches.
    assert batches == [[0, 1, 3, 4], [5], [2]]


def test_pop_and_flush_without_boundaries_estimate_them_first():
    # Sorted 1 2 3 4, running total 1 3 6 10: half (5) is reached at the 3-s clip: bounds [3].
    # Bucket 0 holds keys 1 (1 s), 2 (3 s), 3 (2 s): 1 then 2 * 3 = 6 > 4, so [1] is ready; bucket 1 holds
    # key 0 (4 s), ready (4 >= 4).
    for index in range(4):
        expected = [[1], [0]][_drawn([0], index, 2)]
        bucketer = _bucketer([4.0, 1.0, 3.0, 2.0], max_duration=4.0, num_buckets=2)
        assert bucketer.boundaries is None
        assert _keys(bucketer.pop(index)) == expected and bucketer.boundaries == [3.0]
        bucketer = _bucketer([4.0, 1.0, 3.0, 2.0], max_duration=4.0, num_buckets=2)
        batches = [_keys(b) for b in bucketer.flush(index)]
        assert bucketer.boundaries == [3.0] and batches[0] == expected
        assert sorted(k for b in batches for k in b) == [0, 1, 2, 3]
        assert bucketer.buffered_duration == 0.0 and len(bucketer) == 0


# ------------------------------------------------------------------------------------ drop_last


def test_is_partial_by_hand():
    def clips(*durations):
        return [Clip(key, d, None) for key, d in enumerate(durations)]

    assert is_partial([], 10.0)
    assert is_partial(clips(2.0, 3.0), 10.0)  # a third 3-s clip: 9 <= 10
    assert is_partial(clips(2.0, 3.0), 9.0)  # exactly fits
    assert not is_partial(clips(2.0, 3.0), 8.9)
    assert not is_partial(clips(12.0), 10.0)  # a lone over-long clip is a full batch
    assert not is_partial(clips(1.0, 1.0), 100.0, max_batch_size=2)  # the cap is reached
    assert is_partial(clips(1.0, 1.0), 100.0, max_batch_size=3)


def test_drop_last_keeps_a_last_batch_full_by_the_cap():
    # 10 clips of 1 s, at most 5 per batch: two batches of 5, the last full by the cap (not by duration).
    kept = list(
        bucket_by_duration(((i, 1.0, None) for i in range(10)), 100.0, max_batch_size=5, drop_last=True)
    )
    assert [_keys(b) for b in kept] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    # with room left: dropped
    dropped = list(bucket_by_duration(((i, 1.0, None) for i in range(7)), 100.0, drop_last=True))
    assert dropped == []
    assert list(bucket_by_duration([], 10.0, drop_last=True)) == []


class _Rule:
    """The batching rule written out on plain lists of keys (no bucketer): ``buckets`` of keys into
    ``durations``, a batch takes clips while ``clips * longest <= max_duration``, a bucket is ready when the
    next clip does not fit or the batch is at least ``max_duration``, the ready bucket is drawn with
    ``default_rng([*seed, index])``, else the bucket with the most audio gives its batch."""

    def __init__(self, durations, bounds, max_duration, seed):
        self.durations, self.bounds, self.max, self.seed = durations, bounds, max_duration, list(seed)
        self.buckets = [[] for _ in range(len(bounds) + 1)]

    def add(self, key):
        self.buckets[sum(self.durations[key] > b for b in self.bounds)].append(key)

    def size(self, keys):
        longest = 0.0
        for n, key in enumerate(keys):
            longest = max(longest, self.durations[key])
            if n > 0 and (n + 1) * longest > self.max:
                return n
        return len(keys)

    def ready(self, keys):
        return bool(keys) and (
            self.size(keys) < len(keys) or len(keys) * max(self.durations[k] for k in keys) >= self.max
        )

    def any_ready(self):
        return any(self.ready(b) for b in self.buckets)

    def take(self, index):
        candidates = [i for i, b in enumerate(self.buckets) if self.ready(b)]
        if candidates:
            chosen = candidates[int(np.random.default_rng([*self.seed, index]).integers(len(candidates)))]
        else:
            chosen = int(np.argmax([sum(self.durations[k] for k in b) for b in self.buckets]))
        n = self.size(self.buckets[chosen])
        batch = self.buckets[chosen][:n]
        del self.buckets[chosen][:n]
        return batch

    def pack(self):
        """The end of the pass: the leftovers in bucket order, cut by the same size rule."""
        merged = [k for b in self.buckets for k in b]
        self.buckets = [[] for _ in self.buckets]
        batches = []
        while merged:
            n = self.size(merged)
            batches.append(merged[:n])
            merged = merged[n:]
        return batches


@pytest.mark.parametrize("seed", [(2, 9), None])
def test_bucket_by_duration_draws_with_the_number_of_batches_taken(seed):
    # A buffer of 8 s over bounds [1], max 4 s: 1-s and 3-s clips, so that both buckets are often ready
    # (1 x 4 fits exactly; 3 3 does not fit) when a batch is taken.
    durations = [1.0, 3.0, 1.0, 1.0, 1.0, 3.0] * 6
    settings = dict(max_duration=4.0, buffer_duration=8.0, boundaries=[1.0])
    if seed is not None:
        settings["seed"] = seed
    triples = ((i, d, f"item{i}") for i, d in enumerate(durations))
    got = list(bucket_by_duration(triples, **settings))
    assert all(c.item == f"item{c.key}" for b in got for c in b)  # the items travel with their clips
    # The same rule written out: read until 8 s wait, then take a batch drawn with the count so far.
    rule = _Rule(durations, [1.0], 4.0, seed or (0,))  # the default seed is 0
    waiting, taken, expected = 0.0, 0, []
    for key, duration in enumerate(durations):
        rule.add(key)
        waiting += duration
        while waiting >= 8.0:
            expected.append(rule.take(taken))
            waiting -= sum(durations[k] for k in expected[-1])
            taken += 1
    while rule.any_ready():
        expected.append(rule.take(taken))
        taken += 1
    expected += rule.pack()
    assert [_keys(b) for b in got] == expected
    assert sorted(c.key for b in got for c in b) == list(range(len(durations)))


def test_flush_draws_each_ready_batch_with_its_own_index():
    # bounds [1, 2], max 4 s: buckets of 1-, 2- and 3-s clips, several ready batches each.
    durations = [1.0] * 9 + [2.0] * 5 + [3.0] * 4
    order = np.random.default_rng(1).permutation(len(durations)).tolist()
    bucketer = DurationBucketer(4.0, buffer_duration=1000.0, boundaries=[1.0, 2.0], seed=(5,))
    rule = _Rule(durations, [1.0, 2.0], 4.0, (5,))
    for key in order:
        bucketer.add(key, durations[key])
        rule.add(key)
    got = [_keys(b) for b in bucketer.flush(11)]
    expected, index = [], 11
    while rule.any_ready():
        expected.append(rule.take(index))
        index += 1
    expected += rule.pack()
    assert got == expected and len(expected) >= 6


def test_bucket_by_duration_uses_the_boundaries_it_is_given():
    # One bucket (no bounds), max 4 s, a buffer of 4 s: 1 s and 3 s alternate; 2 * 3 > 4, so every batch is
    # one clip, taken in arrival order. (Estimated bounds would put the 1-s clips apart: [1, 3], [0], ...)
    triples = ((i, d, None) for i, d in enumerate([1.0, 3.0] * 4))
    got = list(bucket_by_duration(triples, max_duration=4.0, buffer_duration=4.0, boundaries=[]))
    assert [_keys(b) for b in got] == [[i] for i in range(8)]


def test_bucket_by_duration_defaults_wait_for_two_batches_per_bucket():
    # Defaults: 30 buckets and a buffer of 2 * 30 * max_duration: with 1-s clips and max 1 s, the first batch
    # comes once 60 clips were read.
    read = []

    def clips():
        for i in range(100):
            read.append(i)
            yield i, 1.0, None

    batches = bucket_by_duration(clips(), max_duration=1.0)
    first = next(batches)
    assert len(read) == 60 and len(first) == 1
    assert sum(len(b) for b in batches) == 99
