"""Dynamic batching by duration: the bucketer (hf_audiorep/data/bucketing.py) on synthetic durations, and
``AudioStream(max_duration=...)`` on variable-length clips: coverage, the padded-duration bound, length
homogeneity, determinism and exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import Audio, ClassLabel, Dataset, Features, List

from hf_audiorep.data.arguments import DataArguments, StreamFactory
from hf_audiorep.data.bucketing import (
    DurationBucketer,
    bucket_by_duration,
    estimate_bucket_boundaries,
    padded_duration,
    padding_waste,
)
from hf_audiorep.data.sources import load_audio_source
from hf_audiorep.data.stream import AudioStream

SR = 16000


@pytest.fixture(autouse=True)
def _no_datasets_shutdown_sleep(monkeypatch):
    # datasets waits out its reader threads when an iterator closes; nothing here needs it.
    import datasets.iterable_dataset

    monkeypatch.setattr(datasets.iterable_dataset.time, "sleep", lambda *_: None, raising=False)


def _durations(n: int, seed: int = 0) -> np.ndarray:
    """A mix like a captioned-audio corpus: many 10-s clips, a log-normal spread of 1-30 s clips."""
    rng = np.random.default_rng(seed)
    spread = np.clip(rng.lognormal(np.log(6.0), 0.7, n), 1.0, 30.0)
    return np.where(rng.random(n) < 0.4, 10.0, spread)


def _triples(durations):
    return ((i, float(d), None) for i, d in enumerate(durations))


def _batch_durations(batches) -> list[list[float]]:
    return [[clip.duration for clip in batch] for batch in batches]


# ------------------------------------------------------------------------------------------ bucketer


def test_boundaries_split_the_total_duration_evenly():
    # Total 16 s: the 2-bucket bound is where the running total reaches 8 s.
    assert estimate_bucket_boundaries([4, 1, 2, 1, 1, 4, 2, 1], 2) == [2.0]
    bounds = estimate_bucket_boundaries(_durations(20000), 10)
    assert len(bounds) <= 9 and bounds == sorted(bounds)
    d = _durations(20000)
    totals = np.bincount(np.searchsorted(bounds, d), weights=d)
    # Equal shares, but for the bucket of the 10-s spike (40% of the clips), which cannot be split, and
    # the one after it, which gets what is left of its share.
    spike = int(np.searchsorted(bounds, 10.0))
    others = np.delete(totals, [spike, spike + 1])
    assert len(others) >= 3 and others.max() < 1.05 * others.min()
    assert totals[spike] > 4 * others.mean()
    assert estimate_bucket_boundaries([10.0] * 50, 30) == []  # one length: one bucket
    with pytest.raises(ValueError, match="num_buckets"):
        estimate_bucket_boundaries([1.0], 0)


def test_every_clip_once_padded_duration_bounded_and_far_less_padding_than_unbucketed():
    durations = _durations(5000)
    batches = list(bucket_by_duration(_triples(durations), max_duration=120.0, num_buckets=30))
    keys = sorted(clip.key for batch in batches for clip in batch)
    assert keys == list(range(len(durations)))
    for batch in _batch_durations(batches):
        assert padded_duration(batch) <= 120.0 or len(batch) == 1
    bucketed = padding_waste(_batch_durations(batches))
    # The same rule with one bucket is duration-capped batching in arrival order (random lengths).
    unbucketed = padding_waste(
        _batch_durations(bucket_by_duration(_triples(durations), max_duration=120.0, num_buckets=1))
    )
    assert unbucketed > 0.3  # random lengths waste a lot...
    assert bucketed < 0.25 * unbucketed  # ...and 30 buckets most of it


@pytest.mark.parametrize("num_clips", [5000, 777])
def test_the_end_of_a_pass_packs_the_leftovers_of_all_buckets_together(num_clips):
    # Each of 30 buckets ends the pass with less than a batch; packed across buckets (in duration order)
    # they make full batches but for the last, instead of up to 30 small ones.
    batches = _batch_durations(bucket_by_duration(_triples(_durations(num_clips)), 120.0, num_buckets=30))
    assert sum(padded_duration(b) < 60.0 for b in batches) <= 1


def test_a_clip_longer_than_max_duration_is_a_batch_of_its_own():
    durations = [2.0, 3.0, 50.0, 2.5, 2.0, 3.0]
    batches = list(bucket_by_duration(_triples(durations), max_duration=10.0, num_buckets=2))
    long = [b for b in batches if any(c.key == 2 for c in b)]
    assert len(long) == 1 and [c.key for c in long[0]] == [2]
    assert sorted(c.key for b in batches for c in b) == list(range(6))


def test_the_batch_size_cap_and_drop_last():
    durations = [1.0] * 23
    batches = list(bucket_by_duration(_triples(durations), max_duration=100.0, max_batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    dropped = list(
        bucket_by_duration(_triples(durations), max_duration=100.0, max_batch_size=5, drop_last=True)
    )
    assert [len(b) for b in dropped] == [5, 5, 5, 5]
    # A last batch that is full (no room for another clip) is kept.
    full = list(bucket_by_duration(_triples([1.0] * 20), max_duration=4.5, drop_last=True))
    assert [len(b) for b in full] == [4] * 5


def test_the_buffer_bounds_the_waiting_audio():
    durations = _durations(3000, seed=1)
    bucketer = DurationBucketer(max_duration=60.0, num_buckets=8, buffer_duration=500.0)
    peak, taken = 0.0, 0
    for key, duration, _ in _triples(durations):
        bucketer.add(key, duration)
        peak = max(peak, bucketer.buffered_duration)
        while bucketer.full:
            bucketer.pop(taken)
            taken += 1
    assert peak < 500.0 + durations.max()
    assert bucketer.boundaries is not None and 3 <= len(bucketer.boundaries) <= 7


def test_the_same_seed_gives_the_same_batches_and_another_seed_another_order():
    durations = _durations(2000, seed=2)

    def run(seed):
        batches = bucket_by_duration(_triples(durations), max_duration=90.0, num_buckets=10, seed=seed)
        return [[c.key for c in batch] for batch in batches]

    assert run(3) == run(3)
    assert run(3) != run(4)


def _run_and_cut(durations, cut: int, **settings):
    """All batches (as keys) of one pass, and what a stream saves after batch ``cut``."""
    bucketer = DurationBucketer(**settings)
    batches, taken, saved = [], 0, None
    for key, duration, _ in _triples(durations):
        bucketer.add(key, duration)
        while bucketer.full:
            batches.append([c.key for c in bucketer.pop(taken)])
            taken += 1
            if taken == cut and saved is None:
                saved = (list(bucketer.boundaries), sorted(bucketer.keys()), taken, key + 1, bucketer.full)
    batches += [[c.key for c in b] for b in bucketer.flush(taken)]
    return batches, saved


def _continue(durations, saved, drain_first: bool, **settings):
    boundaries, waiting, taken, read, _ = saved
    bucketer = DurationBucketer(**{**settings, "boundaries": boundaries})
    for key in waiting:
        bucketer.add(key, float(durations[key]))
    batches = []
    while drain_first and bucketer.full:  # the saved run would have gone on draining before reading more
        batches.append([c.key for c in bucketer.pop(taken)])
        taken += 1
    for key in range(read, len(durations)):
        bucketer.add(key, float(durations[key]))
        while bucketer.full:
            batches.append([c.key for c in bucketer.pop(taken)])
            taken += 1
    return batches + [[c.key for c in b] for b in bucketer.flush(taken)]


def test_a_bucketer_rebuilt_from_its_waiting_keys_continues_identically():
    # What AudioStream saves: the boundaries, the waiting keys (in arrival order) and the batches taken.
    durations = _durations(1500, seed=3)
    settings = dict(max_duration=80.0, num_buckets=6, buffer_duration=600.0, seed=(7, 1))
    reference, saved = _run_and_cut(durations, 40, **settings)
    assert _continue(durations, saved, drain_first=True, **settings) == reference[40:]


def test_a_rebuilt_bucketer_that_is_still_full_drains_before_it_reads_on():
    # A state saved while the buffer is still full: reading the next clip first would change the draw.
    durations = [5.0, 2.0, 3.0, 9.0, 1.0, 8.0, 6.0, 5.0, 8.0, 8.0, 4.0, 6.0]
    settings = dict(max_duration=10.0, num_buckets=3, buffer_duration=12.0, boundaries=[3.0, 6.0], seed=1)
    reference, saved = _run_and_cut(durations, 3, **settings)
    assert saved[-1]  # still full
    assert _continue(durations, saved, drain_first=True, **settings) == reference[3:]
    assert _continue(durations, saved, drain_first=False, **settings) != reference[3:]


# -------------------------------------------------------------------------------------------- stream


def _variable_dataset(n: int = 48, seed: int = 0) -> Dataset:
    """Clips of 0.05-0.6 s, each with its own class (so a batch row names its clip) and a constant level."""
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(0.05, 0.6, n)
    names = [f"c{i}" for i in range(n)]
    features = Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))})
    audio = [
        {"array": np.full(int(s * SR), 0.01 * (i + 1), dtype=np.float32), "sampling_rate": SR}
        for i, s in enumerate(seconds)
    ]
    return Dataset.from_dict({"audio": audio, "labels": [[i] for i in range(n)]}, features=features)


@pytest.fixture(scope="module")
def variable_dataset():
    return _variable_dataset()


def _stream(dataset, **overrides) -> AudioStream:
    kwargs = dict(
        batch_size=None,
        clip_seconds=0.5,
        train=True,
        seed=3,
        max_duration=1.2,
        num_buckets=4,
        bucket_buffer_duration=3.0,
        return_index=True,
        drop_last=False,
        num_decode_threads=0,
    )
    kwargs.update(overrides)
    return AudioStream(dataset, **kwargs)


def _collect(stream) -> list[dict]:
    return [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in stream]


def _assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("waveforms", "lengths", "labels", "indices"):
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


def test_stream_batches_cover_the_epoch_within_max_duration(variable_dataset):
    stream = _stream(variable_dataset)
    batches = _collect(stream)
    indices = sorted(int(i) for b in batches for i in b["indices"])
    assert indices == list(range(len(variable_dataset)))
    assert stream.stats["decoded"] == len(variable_dataset)
    limit = round(0.5 * SR)
    for batch in batches:
        waves, lengths = batch["waveforms"], batch["lengths"]
        assert waves.shape == (len(lengths), int(lengths.max()))  # padded to the longest clip only
        assert waves.shape[0] * waves.shape[1] <= 1.2 * SR
        assert int(lengths.max()) <= limit  # cropped to clip_seconds
        for row, length, index, target in zip(waves, lengths, batch["indices"], batch["labels"], strict=True):
            assert torch.all(row[length:] == 0)
            level = 0.01 * (int(index) + 1)
            torch.testing.assert_close(row[:length], torch.full((int(length),), level), atol=1e-4, rtol=0)
            assert target.nonzero().flatten().tolist() == [int(index)]  # labels travel with their clip
    # Clips keep their own length: a 0.05-0.5 s spread, not all padded to clip_seconds.
    all_lengths = torch.cat([b["lengths"] for b in batches])
    assert all_lengths.min() < 0.2 * SR and (all_lengths == limit).sum() < len(all_lengths)
    assert json.loads(json.dumps(stream.state_dict())) == stream.state_dict()
    with pytest.raises(TypeError, match="len"):
        len(stream)


def test_stream_batches_are_length_homogeneous():
    dataset = _variable_dataset(160, seed=1)
    stream = _stream(dataset, max_duration=2.0, num_buckets=6, bucket_buffer_duration=10.0)

    def waste(batches):
        return padding_waste([(b["lengths"].double() / SR).tolist() for b in batches])

    bucketed = waste(_collect(stream))
    one_bucket = waste(
        _collect(_stream(dataset, max_duration=2.0, num_buckets=1, bucket_buffer_duration=10.0))
    )
    assert one_bucket > 0.2 and bucketed < 0.5 * one_bucket


def test_stream_is_deterministic_and_independent_of_decode_threads(variable_dataset):
    a = _collect(_stream(variable_dataset, num_decode_threads=0))
    b = _collect(_stream(variable_dataset, num_decode_threads=3))
    _assert_same_batches(a, b)
    other = _collect(_stream(variable_dataset, seed=4))
    assert [b["indices"].tolist() for b in other] != [b["indices"].tolist() for b in a]


def _resume_matches(make, k: int, epoch: int) -> dict:
    full = make()
    full.set_epoch(epoch)
    reference = _collect(full)
    assert len(reference) > k

    partial = make()
    partial.set_epoch(epoch)
    iterator = iter(partial)
    head = [{key: v.clone() for key, v in next(iterator).items()} for _ in range(k)]
    state = json.loads(json.dumps(partial.state_dict()))  # as the checkpoint's trainer_state.json holds it
    iterator.close()

    resumed = make()
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)
    tail = _collect(resumed)
    _assert_same_batches(head + tail, reference)
    assert resumed.stats == full.stats  # waiting clips decoded again are not counted twice
    return state


def test_exact_resume_mid_epoch_and_in_the_end_of_epoch_packing(variable_dataset):
    make = lambda: _stream(variable_dataset, num_decode_threads=2)  # noqa: E731
    total = len(_collect(make()))
    waiting = []
    for k in (1, 5, total - 2):
        state = _resume_matches(make, k, epoch=0)
        waiting.append(len(state["bucketing"]["waiting"]))
    assert waiting[1] > 0  # resumed with clips waiting in the buckets
    _resume_matches(make, 3, epoch=1)


def test_exact_resume_after_every_batch_with_a_tight_buffer(variable_dataset):
    # A buffer of one batch: after a batch is taken the buffer is often still full, and the resumed stream
    # must take the next batch before it reads on, as the interrupted one did.
    make = lambda: _stream(  # noqa: E731
        variable_dataset, max_duration=0.7, bucket_buffer_duration=1.0, num_buckets=3
    )
    total = len(_collect(make()))
    for k in range(1, total):
        _resume_matches(make, k, epoch=0)


def test_exact_resume_of_a_streamed_dataset(variable_dataset):
    streamed = variable_dataset.to_iterable_dataset(num_shards=4)
    source = load_audio_source(streamed)
    make = lambda: _stream(source, shuffle_buffer=8)  # noqa: E731
    batches = _collect(make())
    assert sorted(int(i) for b in batches for i in b["indices"]) == list(range(len(variable_dataset)))
    _resume_matches(make, 4, epoch=1)


def _is_partial(batch, max_duration: float = 1.2) -> bool:
    seconds = batch["lengths"].double() / SR
    return bool((len(seconds) + 1) * seconds.max() <= max_duration)


def test_boundaries_are_kept_across_epochs_and_drop_last_drops_only_a_partial_last_batch(variable_dataset):
    dropping, keeping = _stream(variable_dataset, drop_last=True), _stream(variable_dataset, drop_last=False)
    boundaries, dropped = None, 0
    for epoch in range(4):
        dropping.set_epoch(epoch)
        keeping.set_epoch(epoch)
        assert (
            dropping.state_dict()["bucketing"]["waiting"] == []
            and dropping.state_dict()["bucketing"]["batches"] == 0
        )
        a, b = _collect(dropping), _collect(keeping)
        partial = _is_partial(b[-1])
        assert len(a) == len(b) - partial
        _assert_same_batches(a, b[: len(a)])
        dropped += partial
        if boundaries is None:
            boundaries = dropping.state_dict()["bucketing"]["boundaries"]
            assert boundaries
        assert dropping.state_dict()["bucketing"]["boundaries"] == boundaries  # estimated once
    assert dropped > 0


def test_states_of_the_other_batching_are_refused(variable_dataset):
    bucketed = _stream(variable_dataset)
    iterator = iter(bucketed)
    next(iterator)
    next(iterator)
    state = bucketed.state_dict()
    iterator.close()
    assert state["bucketing"]["waiting"]
    fixed = AudioStream(variable_dataset, batch_size=4, clip_seconds=0.5, seed=3, num_decode_threads=0)
    with pytest.raises(ValueError, match="max_duration"):
        fixed.load_state_dict(state)
    fixed_iter = iter(fixed)
    next(fixed_iter)
    fixed_state = fixed.state_dict()
    fixed_iter.close()
    with pytest.raises(ValueError, match="fixed-size batches"):
        _stream(variable_dataset).load_state_dict(fixed_state)
    with pytest.raises(ValueError, match="max_duration=1.2 vs 2.0"):
        _stream(variable_dataset, max_duration=2.0).load_state_dict(state)
    _stream(variable_dataset, max_duration=2.0).load_state_dict(state, strict=False)  # warns only


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_duration": 0.0}, "max_duration"),
        ({"num_buckets": 0}, "num_buckets"),
        ({"bucket_buffer_duration": 0.5}, "bucket_buffer_duration"),
        ({"batch_size": 0}, "batch_size"),
        ({"max_duration": None}, "batch_size"),  # batch_size=None needs max_duration
    ],
)
def test_invalid_bucketing_arguments(variable_dataset, overrides, message):
    with pytest.raises(ValueError, match=message):
        _stream(variable_dataset, **overrides)


def test_data_arguments_make_training_streams_bucketed(variable_dataset):
    with pytest.raises(ValueError, match="num_buckets"):
        DataArguments(max_duration=600, num_buckets=0)
    assert DataArguments(max_duration=0).max_duration is None  # 0 = off on the command line
    data = DataArguments(clip_seconds=0.5, num_decode_threads=0, max_duration=1.2, num_buckets=4)
    source = load_audio_source(variable_dataset)
    factory = StreamFactory(
        {"train": source, "eval": source}, data, batch_size=8, sample_rate=SR, seed=0, rank=0, world_size=1
    )
    train = factory("train", train=True)
    assert train.is_bucketed and train.max_duration == 1.2 and train.num_buckets == 4
    assert train.batch_size is None and train.bucket_buffer_duration == 2 * 4 * 1.2
    evaluation = factory("eval", train=False)
    assert not evaluation.is_bucketed and evaluation.batch_size == 8
