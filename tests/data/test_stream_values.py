"""``AudioStream`` (hf_audiorep/data/stream.py) against numbers worked out independently: the record order
from numpy's generator (map-style) or from ``datasets``' own shuffle and split (streams), the crop offsets
from ``default_rng([seed, epoch, rank, position])``, the raw position and the counts after each batch when
records are corrupt, the padding and lengths of every row, and the bucketed batches from
``DurationBucketer`` driven by hand.

Every clip is a ramp ``k / 32768`` (exact in 16-bit WAV), so a row's first sample names the crop offset, and
every record has its own class, so a row's label names its record."""

from __future__ import annotations

import json
import logging

import datasets
import numpy as np
import pytest
import torch
from datasets import Audio, ClassLabel, Dataset, Features, List
from datasets.distributed import split_dataset_by_node

from hf_audiorep.data.bucketing import DurationBucketer, is_partial
from hf_audiorep.data.stream import ALL_FAILED_LIMIT, AudioStream, _pad_and_stack

SR = 16000
CORRUPT = b"this is not a wav file" * 4
SCALE = 32768.0


@pytest.fixture(autouse=True)
def _no_datasets_shutdown_sleep(monkeypatch):
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def _dataset(lengths, corrupt=()) -> Dataset:
    """Record i: a ramp of ``lengths[i]`` samples (or garbage bytes when ``i in corrupt``), class i."""
    names = [f"c{i}" for i in range(len(lengths))]
    features = Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))})
    audio = [
        {"bytes": CORRUPT, "path": None}
        if i in corrupt
        else {"array": (np.arange(n) / SCALE).astype(np.float32), "sampling_rate": SR}
        for i, n in enumerate(lengths)
    ]
    return Dataset.from_dict(
        {"audio": audio, "labels": [[i] for i in range(len(lengths))]}, features=features
    )


def _stream(source, **overrides) -> AudioStream:
    kwargs = dict(batch_size=2, clip_seconds=0.05, num_decode_threads=0, return_index=True)  # 800 samples
    return AudioStream(source, **{**kwargs, **overrides})


def _records(batch) -> list[int]:
    """The record behind each row, from its label."""
    return [int(row.nonzero()[0]) for row in batch["labels"]]


def _chunks(values, size: int, drop_last: bool) -> list[list[int]]:
    out = [list(values[i : i + size]) for i in range(0, len(values), size)]
    return out[:-1] if drop_last and out and len(out[-1]) < size else out


# ------------------------------------------------------------------------------- order and sharding


@pytest.fixture(scope="module")
def eleven():
    return _dataset([1000] * 11)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_map_style_order_is_the_seeded_permutation_cut_and_dealt_to_the_ranks(eleven, world_size, drop_last):
    permutation = np.random.default_rng([5, 2]).permutation(11)
    if drop_last:  # every rank the same number of records: the ragged tail of the permutation is cut
        permutation = permutation[: 11 - 11 % world_size]
    for rank in range(world_size):
        stream = _stream(eleven, train=True, seed=5, rank=rank, world_size=world_size, drop_last=drop_last)
        stream.set_epoch(2)
        expected = _chunks(permutation[rank::world_size].tolist(), 2, drop_last)
        batches = list(stream)
        assert [b["indices"].tolist() for b in batches] == expected
        assert [_records(b) for b in batches] == expected  # the labels travel with their record
        assert len(stream) == len(expected)


def test_evaluation_reads_in_dataset_order_and_keeps_the_last_partial_batch(eleven):
    for rank in (0, 1):
        stream = _stream(eleven, train=False, rank=rank, world_size=2, batch_size=4)
        expected = _chunks(list(range(rank, 11, 2)), 4, drop_last=False)  # 6 and 5 records
        assert [b["indices"].tolist() for b in stream] == expected
        assert len(stream) == len(expected) == 2
    assert len(_stream(eleven, train=False, batch_size=4)) == 3  # ceil(11 / 4)
    assert len(_stream(eleven, train=True, batch_size=4)) == 2  # floor(11 / 4): training drops the tail


@pytest.mark.parametrize("train", [True, False])
def test_a_streamed_dataset_follows_datasets_own_shuffle_and_split(train):
    dataset = _dataset([900] * 12)
    streamed = dataset.to_iterable_dataset(num_shards=4)
    for rank in (0, 1):
        stream = _stream(
            streamed, train=train, seed=7, shuffle_buffer=3, rank=rank, world_size=2, drop_last=False
        )
        stream.set_epoch(1)
        records = [r for b in stream for r in _records(b)]
        # the same records through datasets itself: shuffled with the seed and buffer, then split by node
        reference = streamed.shuffle(seed=7, buffer_size=3) if train else streamed
        reference = split_dataset_by_node(reference, rank=rank, world_size=2)
        reference.set_epoch(1)
        expected = [row["labels"][0] for row in reference]
        assert records == expected and len(expected) == 6
    if train:  # the buffer size is passed on: another buffer, another order
        other = _stream(streamed, train=True, seed=7, shuffle_buffer=6, drop_last=False)
        other.set_epoch(1)
        reference = streamed.shuffle(seed=7, buffer_size=6)
        reference.set_epoch(1)
        assert [r for b in other for r in _records(b)] == [row["labels"][0] for row in reference]


def test_an_odd_shard_count_is_read_by_every_rank_and_warned_about(caplog):
    streamed = _dataset([900] * 6).to_iterable_dataset(num_shards=3)
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.stream"):
        per_rank = [
            [r for b in _stream(streamed, train=False, rank=rank, world_size=2) for r in _records(b)]
            for rank in (0, 1)
        ]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(6)) and not set(per_rank[0]) & set(per_rank[1])
    assert any("3 shards, not a multiple of world_size=2" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.stream"):
        _stream(_dataset([900] * 4).to_iterable_dataset(num_shards=4), train=False, rank=1, world_size=2)
    assert not caplog.records


# ----------------------------------------------------------------------------- crops and padding


def _offsets(batch) -> list[int]:
    return [round(float(row[0]) * SCALE) for row in batch["waveforms"]]


def test_training_crops_come_from_seed_epoch_rank_and_position():
    lengths = [3000 + 37 * i for i in range(6)]
    dataset = _dataset(lengths)
    stream = _stream(dataset, train=True, seed=3, rank=1, world_size=2, drop_last=False, num_decode_threads=2)
    stream.set_epoch(4)
    position = 0  # the record's position in this rank's order
    for batch in stream:
        for row, index, length in zip(
            batch["waveforms"], batch["indices"].tolist(), batch["lengths"], strict=True
        ):
            high = lengths[index] - 800 + 1
            offset = int(np.random.default_rng([3, 4, 1, position]).integers(0, high))
            expected = torch.arange(offset, offset + 800, dtype=torch.float32) / SCALE
            torch.testing.assert_close(row, expected, rtol=0, atol=0)
            assert int(length) == 800
            position += 1
    assert position == 3
    # evaluation crops from the start
    for batch in _stream(dataset, train=False):
        assert _offsets(batch) == [0] * len(batch["indices"])


def test_short_clips_are_zero_padded_and_keep_their_length():
    dataset = _dataset([300, 1200, 800, 50])
    batches = list(_stream(dataset, train=False, batch_size=4))
    assert len(batches) == 1
    waves, lengths = batches[0]["waveforms"], batches[0]["lengths"]
    assert waves.shape == (4, 800) and waves.dtype == torch.float32 and lengths.dtype == torch.int64
    assert lengths.tolist() == [300, 800, 800, 50]
    for row, n in zip(waves, (300, 800, 800, 50), strict=True):
        torch.testing.assert_close(row[:n], torch.arange(n, dtype=torch.float32) / SCALE, rtol=0, atol=0)
        assert torch.count_nonzero(row[n:]) == 0


def test_pad_and_stack_pads_at_the_end_to_the_longest():
    out = _pad_and_stack([np.ones(3, np.float32), np.full(5, 2.0, np.float32), np.ones(1, np.float32)])
    expected = np.array([[1, 1, 1, 0, 0], [2, 2, 2, 2, 2], [1, 0, 0, 0, 0]], dtype=np.float32)
    assert out.dtype == np.float32 and np.array_equal(out, expected)
    same = _pad_and_stack([np.arange(4, dtype=np.float32), np.ones(4, np.float32)])
    assert np.array_equal(same, np.array([[0, 1, 2, 3], [1, 1, 1, 1]], dtype=np.float32))


def test_bucketed_clips_keep_their_length_up_to_clip_seconds_and_are_padded_to_the_batch():
    # clip_seconds 0.05 s = 800 samples: the 1200- and 2000-sample clips are cropped (from the start at
    # evaluation), the others keep their own length.
    lengths = [300, 1200, 500, 2000, 100]
    stream = _stream(
        _dataset(lengths),
        train=False,
        batch_size=None,
        max_duration=1.0,
        num_buckets=1,
        bucket_buffer_duration=1.0,
    )
    batches = list(stream)
    assert [_records(b) for b in batches] == [[0, 1, 2, 3, 4]]  # 5 clips * 800 samples = 0.25 s <= 1 s
    waves, got = batches[0]["waveforms"], batches[0]["lengths"].tolist()
    assert got == [300, 800, 500, 800, 100] and waves.shape == (5, 800)
    for row, n in zip(waves, got, strict=True):
        torch.testing.assert_close(row[:n], torch.arange(n, dtype=torch.float32) / SCALE, rtol=0, atol=0)
        assert torch.count_nonzero(row[n:]) == 0
    # Training: the long clips are cropped at the offsets of their positions, the short ones are whole.
    stream = _stream(
        _dataset(lengths),
        train=True,
        seed=2,
        batch_size=None,
        max_duration=1.0,
        num_buckets=1,
        bucket_buffer_duration=1.0,
        drop_last=False,
    )
    stream.set_epoch(1)
    order = np.random.default_rng([2, 1]).permutation(5).tolist()
    (batch,) = list(stream)
    for row, index, n in zip(
        batch["waveforms"], batch["indices"].tolist(), batch["lengths"].tolist(), strict=True
    ):
        position = order.index(index)
        if lengths[index] > 800:
            offset = int(np.random.default_rng([2, 1, 0, position]).integers(0, lengths[index] - 800 + 1))
            assert n == 800
        else:
            offset = 0
            assert n == lengths[index]
        expected = torch.arange(offset, offset + n, dtype=torch.float32) / SCALE
        torch.testing.assert_close(row[:n], expected, rtol=0, atol=0)


# -------------------------------------------------------------------------------------- bad items


@pytest.mark.parametrize("threads", [0, 2])
def test_a_corrupt_record_is_skipped_and_the_position_after_each_batch_is_exact(threads):
    dataset = _dataset([900] * 7, corrupt=(1, 4))
    stream = _stream(dataset, train=False, drop_last=False, num_decode_threads=threads)
    seen = []
    for batch in stream:
        state = stream.state_dict()
        seen.append(
            (
                batch["indices"].tolist(),
                state["examples_consumed"],
                state["stats"]["decoded"],
                state["stats"]["skipped"],
            )
        )
    # good records 0 2 | 3 5 | 6: the raw position after each batch is one past its last record
    assert seen == [([0, 2], 3, 2, 1), ([3, 5], 6, 4, 2), ([6], 7, 5, 2)]
    assert stream.state_dict()["examples_consumed"] == 7
    errors = stream.stats["errors"]
    assert len(errors) == 2
    assert errors[0].startswith("record 1 of epoch 0: ") and errors[1].startswith("record 4 of epoch 0: ")
    # Resuming after the first batch reads on at record 3 and counts nothing twice.
    resumed = _stream(dataset, train=False, drop_last=False, num_decode_threads=threads)
    resumed.load_state_dict(
        {"epoch": 0, "examples_consumed": 3, "stats": {"decoded": 2, "skipped": 1, "errors": errors[:1]}}
    )
    assert [b["indices"].tolist() for b in resumed] == [[3, 5], [6]]
    assert resumed.stats == {"decoded": 5, "skipped": 2, "errors": errors}


def test_a_dropped_tail_still_counts_its_records():
    dataset = _dataset([900] * 6, corrupt=(2,))
    stream = _stream(dataset, train=False, drop_last=True, num_decode_threads=2)
    assert [b["indices"].tolist() for b in stream] == [[0, 1], [3, 4]]  # record 5 alone is dropped
    assert stream.state_dict()["examples_consumed"] == 6
    assert stream.stats["decoded"] == 5 and stream.stats["skipped"] == 1
    assert list(stream) == []  # the epoch is over
    assert stream.state_dict()["examples_consumed"] == 6 and stream.stats["decoded"] == 5
    # a corrupt record read with the last partial batch is counted with it
    stream = _stream(_dataset([900] * 6, corrupt=(5,)), train=False, drop_last=False)
    assert [b["indices"].tolist() for b in stream] == [[0, 1], [2, 3], [4]]
    assert stream.stats["skipped"] == 1 and stream.stats["errors"][0].startswith("record 5 of epoch 0: ")
    assert stream.state_dict()["examples_consumed"] == 6


def test_only_the_first_errors_are_kept_and_warnings_thin_out_at_powers_of_two(caplog):
    dataset = _dataset([900] * 12, corrupt=range(10))
    stream = _stream(dataset, train=False)
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.stream"):
        batches = list(stream)
    assert [b["indices"].tolist() for b in batches] == [[10, 11]]
    assert stream.stats["skipped"] == 10 and stream.stats["decoded"] == 2
    assert [e.split(":")[0] for e in stream.stats["errors"]] == [f"record {i} of epoch 0" for i in range(5)]
    warned = [r.getMessage() for r in caplog.records if "skipped a corrupt record" in r.getMessage()]
    # the 1st to 5th, then the 8th (a power of two); not the 6th, 7th, 9th, 10th
    assert [int(m.split("(")[1].split()[0]) for m in warned] == [1, 2, 3, 4, 5, 8]
    assert "record 7 of epoch 0" in warned[-1]


@pytest.mark.parametrize("bucketed", [False, True])
def test_a_stream_whose_first_records_all_fail_raises_after_the_limit(bucketed):
    assert ALL_FAILED_LIMIT == 32
    bucketing = (
        dict(batch_size=None, max_duration=1.0, num_buckets=1, bucket_buffer_duration=1.0) if bucketed else {}
    )
    bad = _dataset([900] * 34, corrupt=range(32))
    with pytest.raises(ValueError, match="the first 32 records of the stream all failed"):
        list(_stream(bad, train=False, drop_last=False, **bucketing))
    # 31 failures, then good records: a stream with bad luck, not a wrong column
    unlucky = _dataset([900] * 33, corrupt=range(31))
    stream = _stream(unlucky, train=False, drop_last=False, **bucketing)
    assert [r for b in stream for r in _records(b)] == [31, 32]
    assert stream.stats["skipped"] == 31
    # A stream that decoded before (a resumed one) only skips
    resumed = _stream(bad, train=False, drop_last=False, **bucketing)
    resumed.load_state_dict(
        {"epoch": 0, "examples_consumed": 0, "stats": {"decoded": 1, "skipped": 0, "errors": []}}
    )
    assert [r for b in resumed for r in _records(b)] == [32, 33]
    # all of a short stream failing raises at its end
    with pytest.raises(ValueError, match="the first 3 records of the stream all failed"):
        list(_stream(_dataset([900] * 3, corrupt=range(3)), train=False, **bucketing))


# ------------------------------------------------------------------------------------------- state


def test_state_dict_and_its_checks(eleven):
    stream = _stream(eleven, train=True, seed=4, rank=1, world_size=2)
    stream.set_epoch(3)
    iterator = iter(stream)
    next(iterator)
    iterator.close()
    state = stream.state_dict()
    assert state == {
        "epoch": 3,
        "examples_consumed": 2,
        "seed": 4,
        "rank": 1,
        "world_size": 2,
        "stats": {"decoded": 2, "skipped": 0, "errors": []},
    }
    state["stats"]["decoded"] = 99  # a copy: the stream's own stats are not touched
    assert stream.stats["decoded"] == 2
    stream.set_epoch(3)  # the same epoch keeps the position
    assert stream.state_dict()["examples_consumed"] == 2
    stream.set_epoch(4)  # another starts over
    assert stream.state_dict()["examples_consumed"] == 0 and stream.epoch == 4
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        stream.set_epoch(-1)

    fresh = _stream(eleven, train=True, seed=4, rank=1, world_size=2)
    with pytest.raises(ValueError, match=r"missing \['examples_consumed'\]"):
        fresh.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match="examples_consumed must be >= 0"):
        fresh.load_state_dict({"epoch": 1, "examples_consumed": -2})
    with pytest.raises(ValueError, match="world_size=3 but this stream has world_size=2"):
        fresh.load_state_dict({"epoch": 1, "examples_consumed": 2, "world_size": 3})
    with pytest.raises(ValueError, match="seed=9 but this stream has seed=4"):
        fresh.load_state_dict({"epoch": 1, "examples_consumed": 2, "seed": 9})
    fresh.load_state_dict({"epoch": 3, "examples_consumed": 2, "seed": 9, "world_size": 3}, strict=False)
    assert fresh.epoch == 3 and fresh.state_dict()["examples_consumed"] == 2
    # resumes right after the first batch of rank 1 (epoch 3): the rest of its records
    permutation = np.random.default_rng([4, 3]).permutation(11)[:10][1::2]
    assert [b["indices"].tolist() for b in fresh] == _chunks(permutation[2:].tolist(), 2, drop_last=True)


def test_bucketed_state_names_its_settings_and_waiting_records():
    dataset = _dataset([400, 800, 400, 800, 400, 800, 400, 800])
    stream = _stream(dataset, train=False, batch_size=3, max_duration=0.1, num_buckets=2)
    assert stream.bucket_buffer_duration == pytest.approx(2 * 2 * 0.1)  # the default: 2 per bucket
    state = stream.state_dict()
    assert state["bucketing"] == {
        "max_duration": 0.1,
        "num_buckets": 2,
        "buffer_duration": pytest.approx(0.4),
        "max_batch_size": 3,
        "boundaries": None,
        "waiting": [],
        "batches": 0,
    }
    assert json.loads(json.dumps(state)) == state


def _bucketed_reference(durations, good, order, settings, seed, drop_last):
    """The batches (as positions) of a bucketed stream, from DurationBucketer driven by hand."""
    bucketer = DurationBucketer(
        settings["max_duration"],
        settings["num_buckets"],
        settings["bucket_buffer_duration"],
        max_batch_size=settings.get("batch_size"),
        seed=seed,
    )
    batches, taken = [], 0
    for position, index in enumerate(order):
        if index not in good:
            continue
        bucketer.add(position, durations[index])
        while bucketer.full:
            batches.append(bucketer.pop(taken))
            taken += 1
    rest = list(bucketer.flush(taken))
    if drop_last and rest and is_partial(rest[-1], settings["max_duration"], settings.get("batch_size")):
        rest = rest[:-1]
    return [[order[c.key] for c in batch] for batch in batches + rest]


@pytest.mark.parametrize("drop_last", [True, False])
def test_bucketed_batches_are_the_bucketers_draws_seeded_with_seed_epoch_and_rank(drop_last):
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 800, 30).tolist()
    corrupt = {4, 17}
    dataset = _dataset(lengths, corrupt=corrupt)
    settings = dict(batch_size=4, max_duration=0.12, num_buckets=3, bucket_buffer_duration=0.3)
    for rank in (0, 1):
        stream = _stream(
            dataset, train=True, seed=6, rank=rank, world_size=2, drop_last=drop_last, **settings
        )
        stream.set_epoch(2)
        got = [b["indices"].tolist() for b in stream]
        order = np.random.default_rng([6, 2]).permutation(30)[rank::2].tolist()
        good = set(range(30)) - corrupt
        durations = [n / SR for n in lengths]
        expected = _bucketed_reference(durations, good, order, settings, (6, 2, rank), drop_last)
        assert got == expected
        assert len(got) > 3
        for batch in got:  # the padded duration bound, in samples
            assert len(batch) * max(lengths[i] for i in batch) <= 0.12 * SR or len(batch) == 1
        state = stream.state_dict()["bucketing"]
        assert state["waiting"] == [] and state["batches"] == len(got)


def test_a_state_of_the_other_batching_is_accepted_where_nothing_is_lost(caplog):
    dataset = _dataset([400, 800, 400, 800, 400, 800])
    bucketing = dict(batch_size=3, max_duration=0.1, num_buckets=2, bucket_buffer_duration=0.2)
    saved = {
        "max_duration": 0.1,
        "num_buckets": 2,
        "buffer_duration": 0.2,
        "max_batch_size": 3,
        "boundaries": [0, 0.04],
        "waiting": ["3", 5.0],
        "batches": "4",
    }
    # a bucketed state restores its buckets, as numbers
    bucketed = _stream(dataset, train=False, **bucketing)
    bucketed.load_state_dict({"epoch": 1, "examples_consumed": 6, "bucketing": saved})
    state = bucketed.state_dict()
    assert (state["epoch"], state["examples_consumed"]) == (1, 6)
    assert state["bucketing"] == {**saved, "boundaries": [0.0, 0.04], "waiting": [3, 5], "batches": 4}
    assert isinstance(state["bucketing"]["boundaries"][0], float)
    # other settings: refused, or (strict=False) loaded with a warning naming them
    other = _stream(dataset, train=False, **{**bucketing, "num_buckets": 3})
    with pytest.raises(ValueError, match="num_buckets=2 vs 3"):
        other.load_state_dict({"epoch": 1, "examples_consumed": 6, "bucketing": saved})
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.stream"):
        other.load_state_dict({"epoch": 1, "examples_consumed": 6, "bucketing": saved}, strict=False)
    assert any("num_buckets=2 vs 3" in r.getMessage() for r in caplog.records)
    assert other.state_dict()["bucketing"]["waiting"] == [3, 5]
    # a bucketed state with nothing waiting (the end of an epoch) is a plain position for fixed batches
    fixed = _stream(dataset, train=False)
    fixed.load_state_dict({"epoch": 2, "examples_consumed": 6, "bucketing": {**saved, "waiting": []}})
    assert fixed.state_dict()["examples_consumed"] == 6 and "bucketing" not in fixed.state_dict()
    # a fixed-batch state at the start of an epoch is a fresh start for a bucketed stream
    bucketed = _stream(dataset, train=False, **bucketing)
    bucketed.load_state_dict({"epoch": 3, "examples_consumed": 0})
    assert bucketed.state_dict()["bucketing"]["waiting"] == [] and bucketed.epoch == 3
    assert [r for b in bucketed for r in _records(b)] != []
    # a missing batch count is 0, missing waiting records none
    settings = {k: v for k, v in saved.items() if k not in ("waiting", "batches")}
    bucketed.load_state_dict({"epoch": 0, "examples_consumed": 0, "bucketing": settings})
    assert bucketed.state_dict()["bucketing"]["batches"] == 0


def test_states_are_copies_both_ways():
    dataset = _dataset([900] * 5, corrupt=(1, 3))
    saved = {"epoch": 0, "examples_consumed": 0, "stats": {"decoded": 0, "skipped": 0, "errors": []}}
    stream = _stream(dataset, train=False, drop_last=False)
    stream.load_state_dict(saved)
    list(stream)  # two corrupt records: the stream's error list grows
    assert saved["stats"] == {"decoded": 0, "skipped": 0, "errors": []}  # the loaded dict is not touched
    state = stream.state_dict()
    state["stats"]["errors"].clear()
    assert len(stream.stats["errors"]) == 2  # nor is the stream by the saved one
    bucketed = _stream(dataset, train=False, batch_size=None, max_duration=1.0, num_buckets=1)
    settings = bucketed.state_dict()["bucketing"]
    bucketed.load_state_dict(
        {"epoch": 0, "examples_consumed": 2, "bucketing": {**settings, "boundaries": [], "waiting": [0]}}
    )
    state = bucketed.state_dict()
    state["bucketing"]["waiting"].append(4)
    state["bucketing"]["boundaries"].append(9.0)
    assert bucketed.state_dict()["bucketing"]["waiting"] == [0]
    assert bucketed.state_dict()["bucketing"]["boundaries"] == []
