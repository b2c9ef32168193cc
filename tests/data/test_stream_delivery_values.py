"""``AudioStream`` (hf_audiorep/data/stream.py): which records reach a batch and when the position moves.

The position (``state_dict``) must follow the batches the caller *received*, never the ones the prefetch
thread made ahead, nor those of an iterator that is no longer the stream's latest or that belongs to an
epoch that has been left. Every record of the epoch reaches exactly one batch, also across a resume with
clips waiting in the buckets. Checked on ramp clips (``k / 32768``, exact in 16-bit WAV) whose label names
their record, against positions worked out by hand."""

from __future__ import annotations

import threading
import time

import datasets
import numpy as np
import pytest
import torch
from datasets import Audio, ClassLabel, Dataset, Features, List

from hf_audiorep.data.bucketing import DurationBucketer
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.sources import load_audio_source
from hf_audiorep.data.stream import AudioStream

SR = 16000
SCALE = 32768.0
CORRUPT = b"this is not a wav file" * 4


@pytest.fixture(autouse=True)
def _no_datasets_shutdown_sleep(monkeypatch):
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def _audio(lengths, corrupt=()) -> list[dict]:
    return [
        {"bytes": CORRUPT, "path": None}
        if i in corrupt
        else {"array": (np.arange(n) / SCALE).astype(np.float32), "sampling_rate": SR}
        for i, n in enumerate(lengths)
    ]


def _dataset(lengths, corrupt=()) -> Dataset:
    """Record i: a ramp of ``lengths[i]`` samples (garbage bytes when ``i in corrupt``), class i."""
    names = [f"c{i}" for i in range(len(lengths))]
    features = Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))})
    return Dataset.from_dict(
        {"audio": _audio(lengths, corrupt), "labels": [[i] for i in range(len(lengths))]}, features=features
    )


def _stream(source, **overrides) -> AudioStream:
    kwargs = dict(batch_size=2, clip_seconds=0.05, num_decode_threads=0, return_index=True)  # 800 samples
    return AudioStream(source, **{**kwargs, **overrides})


def _records(batch) -> list[int]:
    return [int(row.nonzero()[0]) for row in batch["labels"]]


# ------------------------------------------------------------------------------- the position


def test_the_position_counts_delivered_batches_not_prefetched_ones():
    stream = _stream(_dataset([900] * 8), train=False, num_decode_threads=2)
    iterator = iter(stream)
    assert next(iterator)["indices"].tolist() == [0, 1]
    time.sleep(0.3)  # whatever the prefetch thread has made by now, it was not delivered
    assert stream.state_dict()["examples_consumed"] == 2 and stream.stats["decoded"] == 2
    assert next(iterator)["indices"].tolist() == [2, 3]
    assert stream.state_dict()["examples_consumed"] == 4 and stream.stats["decoded"] == 4
    iterator.close()
    assert stream.state_dict()["examples_consumed"] == 4
    assert [b["indices"].tolist() for b in stream] == [[4, 5], [6, 7]]  # the rest, once


def test_only_the_latest_iterator_of_the_current_epoch_moves_the_position():
    stream = _stream(_dataset([900] * 10), train=False)
    first = iter(stream)
    assert next(first)["indices"].tolist() == [0, 1]
    second = iter(stream)  # starts where the first left off, and is now the stream's iterator
    assert next(second)["indices"].tolist() == [2, 3]
    assert stream.state_dict()["examples_consumed"] == 4
    # the first still yields its own batches, but they no longer move the position or the counts
    assert next(first)["indices"].tolist() == [2, 3]
    assert next(first)["indices"].tolist() == [4, 5]
    assert stream.state_dict()["examples_consumed"] == 4 and stream.stats["decoded"] == 4
    first.close()
    # leaving the epoch: batches of the old epoch's iterator count for nothing
    stream.set_epoch(1)
    assert next(second)["indices"].tolist() == [4, 5]
    state = stream.state_dict()
    assert (state["epoch"], state["examples_consumed"], state["stats"]["decoded"]) == (1, 0, 4)
    second.close()
    assert [b["indices"].tolist() for b in stream] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_the_prefetch_thread_is_a_daemon():
    # A non-daemon thread would be joined before the exit hook that stops it runs: an abandoned iterator
    # would then hang the interpreter's exit.
    iterator = iter(_stream(_dataset([900] * 6), train=False))
    next(iterator)
    threads = [t for t in threading.enumerate() if t.name == "audio-stream-prefetch" and t.is_alive()]
    assert threads and all(t.daemon for t in threads)
    iterator.close()


def _interrupted_after(make, k: int):
    """The record positions of the first ``k`` batches of a fresh ``make()`` stream and its state then (the
    iterator closed, as a run stopped after its k-th step)."""
    stream = make()
    iterator = iter(stream)
    head = [_records(next(iterator)) for _ in range(k)]
    state = stream.state_dict()
    iterator.close()
    return head, state


def test_a_bucketed_stream_resumed_from_every_batch_delivers_every_record_once():
    # Clips of 600 and 1500 samples (kept whole: clip_seconds is 1600 samples), batches of at most 0.3 s
    # padded (4800 samples), a buffer of 0.5 s: after each batch some clips still wait in the buckets, and
    # a resumed stream must read those again, and only those (every other record before the position was
    # used), then carry on as the interrupted run did.
    lengths = [600, 1500] * 8
    settings = dict(
        batch_size=None, clip_seconds=0.1, max_duration=0.3, num_buckets=2, bucket_buffer_duration=0.5
    )

    def make():
        return _stream(_dataset(lengths, corrupt=(3,)), train=False, drop_last=False, **settings)

    reference = [_records(b) for b in make()]
    assert sorted(r for b in reference for r in b) == [i for i in range(16) if i != 3]
    assert all(len(b) * max(lengths[i] for i in b) <= 0.3 * SR for b in reference)
    waited = 0
    for k in range(1, len(reference)):
        head, state = _interrupted_after(make, k)
        used = {r for b in head for r in b}
        # waiting: the records read (up to the position) and not used, less the corrupt one
        assert set(state["bucketing"]["waiting"]) == set(range(state["examples_consumed"])) - used - {3}
        assert state["bucketing"]["batches"] == k
        waited += bool(state["bucketing"]["waiting"])
        resumed = make()
        resumed.load_state_dict(state)
        tail = [_records(b) for b in resumed]
        assert head + tail == reference
        assert resumed.stats["decoded"] == 15 and resumed.stats["skipped"] == 1
        assert resumed.state_dict()["bucketing"]["waiting"] == []
    assert waited >= 3


def _bucketer_batches(lengths, settings) -> list[list[int]]:
    """The batches (as record positions) of an unshuffled bucketed stream, from ``DurationBucketer`` driven
    by hand: each clip added in order, a batch taken while the buffer is full, the rest flushed."""
    bucketer = DurationBucketer(
        settings["max_duration"],
        settings["num_buckets"],
        settings["bucket_buffer_duration"],
        max_batch_size=settings["batch_size"],
        seed=(0, 0, 0),
    )
    batches = []
    for position, n in enumerate(lengths):
        bucketer.add(position, min(n, round(settings["clip_seconds"] * SR)) / SR)
        while bucketer.full:
            batches.append([c.key for c in bucketer.pop(len(batches))])
    return batches + [[c.key for c in batch] for batch in bucketer.flush(len(batches))]


@pytest.mark.parametrize(
    "lengths",
    [
        [1500, 700, 500, 2500, 500, 700, 1500, 2500, 1500, 2500, 500, 700],
        [3000, 500, 2500, 500, 500, 500, 700, 700, 500, 3000],
    ],
)
def test_a_resumed_bucketed_stream_takes_the_batches_still_due_before_it_reads_on(lengths):
    # Two buckets (the bound is estimated from the first fill) and a buffer of 0.25 s. First list: after the
    # 3rd batch the buffer still holds 0.25 s (records 6 and 7), so the interrupted run took the next batch
    # before reading record 8; a resumed stream must do the same (reading record 8 first makes a second
    # bucket ready and changes the draw). Second list: after the 4th batch every record has been read and
    # the buffer is still full with no bucket ready, so the run took the fullest bucket's batch before the
    # end-of-epoch packing; a resumed stream that reads nothing new must also take it before packing.
    settings = dict(
        batch_size=None, clip_seconds=0.2, max_duration=0.2, num_buckets=2, bucket_buffer_duration=0.25
    )

    def make():
        return _stream(_dataset(lengths), train=False, seed=0, drop_last=False, **settings)

    reference = [_records(b) for b in make()]
    assert reference == _bucketer_batches(lengths, settings)
    for k in range(1, len(reference)):
        head, state = _interrupted_after(make, k)
        resumed = make()
        resumed.load_state_dict(state)
        assert head + [_records(b) for b in resumed] == reference, k


def test_batch_size_caps_the_clips_of_a_bucketed_batch():
    # 200-sample clips: 16 would fit in 0.2 s, batch_size allows 3.
    settings = dict(
        batch_size=3, clip_seconds=0.1, max_duration=0.2, num_buckets=1, bucket_buffer_duration=0.2
    )
    batches = [_records(b) for b in _stream(_dataset([200] * 8), train=False, drop_last=False, **settings)]
    assert batches == _bucketer_batches([200] * 8, settings)
    assert sorted(r for b in batches for r in b) == list(range(8))
    assert [len(b) for b in batches] == [3, 3, 2]


# ------------------------------------------------------------------------------- each record


def test_fixed_batches_of_short_clips_are_padded_to_clip_seconds():
    batches = list(_stream(_dataset([300, 500, 100]), train=False, batch_size=3))
    assert batches[0]["waveforms"].shape == (3, 800)  # clip_seconds, not the batch's longest clip
    assert batches[0]["lengths"].tolist() == [300, 500, 100]


def test_a_skipped_record_names_its_position_epoch_and_error_type():
    with pytest.raises(Exception) as raised:  # the exception type, from the decoder itself
        decode_audio({"bytes": CORRUPT, "path": None}, SR)
    stream = _stream(_dataset([900] * 4, corrupt=(2,)), train=True, seed=1)
    stream.set_epoch(3)
    order = np.random.default_rng([1, 3]).permutation(4).tolist()
    list(stream)
    (error,) = stream.stats["errors"]
    assert error.startswith(f"record {order.index(2)} of epoch 3: {type(raised.value).__name__}: ")


def test_a_dataset_without_labels_gives_all_zero_targets():
    dataset = Dataset.from_dict({"audio": _audio([900] * 3)}, features=Features({"audio": Audio(SR)}))
    source = load_audio_source(dataset, label_names=["a", "b"])
    batches = list(_stream(source, train=False, batch_size=3))
    assert len(batches) == 1 and batches[0]["indices"].tolist() == [0, 1, 2]
    torch.testing.assert_close(batches[0]["labels"], torch.zeros(3, 2), rtol=0, atol=0)


def test_a_bucketed_tail_dropped_at_the_end_of_the_epoch_is_still_counted():
    # Five 1000-sample clips (kept whole), at most 0.2 s padded per batch: 3 clips (3000 samples) fit, a 4th
    # (4000) does not. One bucket, a buffer of 3 clips: one batch of 3, then the last 2 packed at the end of
    # the epoch: a partial batch (a 3rd clip would still fit), dropped under drop_last but read and decoded.
    settings = dict(
        batch_size=None, clip_seconds=0.1, max_duration=0.2, num_buckets=1, bucket_buffer_duration=0.2
    )
    for drop_last, expected in ((False, [[0, 1, 2], [4, 5]]), (True, [[0, 1, 2]])):
        stream = _stream(_dataset([1000] * 6, corrupt=(3,)), train=False, drop_last=drop_last, **settings)
        assert [_records(b) for b in stream] == expected
        state = stream.state_dict()
        assert state["examples_consumed"] == 6
        assert state["stats"]["decoded"] == 5 and state["stats"]["skipped"] == 1
        assert state["bucketing"]["waiting"] == [] and state["bucketing"]["batches"] == len(expected)
        assert list(stream) == []  # the epoch is over: nothing is read or counted again
        assert stream.state_dict() == state
    # A last batch full by count (batch_size 2) is not partial, though a third clip would fit in 0.2 s.
    settings = {**settings, "batch_size": 2}
    for lengths, expected in (([1000] * 4, [[0, 1], [2, 3]]), ([1000] * 5, [[0, 1], [2, 3]])):
        stream = _stream(_dataset(lengths), train=False, drop_last=True, **settings)
        assert [_records(b) for b in stream] == expected
        assert stream.stats["decoded"] == len(lengths)
