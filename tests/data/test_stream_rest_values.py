"""``AudioStream`` (hf_audiorep/data/stream.py): the extra columns, the constructor's checks and defaults,
and the prefetch thread's hand-off, against values worked out by hand.

Extra columns: every feature spelling (``ArrayXD`` with fixed and open dimensions, ``LargeList``, lists of
arrays, unsigned and boolean scalars) comes back with the shape and dtype the docstring promises, and a
stream with no features infers them from its first record. A record whose extra value does not fit is
skipped and counted, never batched. Each record's values name the record (record ``i`` holds ``i``), and
every record has its own class, so a row's label says which record its extras must come from."""

from __future__ import annotations

import io
import logging
import math
import threading
import time

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import (
    Array2D,
    Audio,
    ClassLabel,
    Dataset,
    Features,
    IterableDataset,
    LargeList,
    List,
    Value,
)

from hf_audiorep.data import stream as stream_module
from hf_audiorep.data.sources import load_audio_source
from hf_audiorep.data.stream import AudioStream, _feature_layout, stop_prefetch_threads

SR = 16000
SCALE = 32768.0


@pytest.fixture(autouse=True)
def _no_datasets_shutdown_sleep(monkeypatch):
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def _ramp(n: int) -> np.ndarray:
    return (np.arange(n) / SCALE).astype(np.float32)


def _dataset(n: int, length: int = 400, **columns) -> Dataset:
    """Record i: a ramp of ``length`` samples, class i, and the given extra ``columns`` as
    ``name=(values, feature)``."""
    names = [f"c{i}" for i in range(n)]
    data = {
        "audio": [{"array": _ramp(length), "sampling_rate": SR} for _ in range(n)],
        "labels": [[i] for i in range(n)],
    }
    features = {"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))}
    for name, (values, feature) in columns.items():
        data[name] = values
        features[name] = feature
    return Dataset.from_dict(data, features=Features(features))


def _stream(source, **overrides) -> AudioStream:
    kwargs = dict(batch_size=2, clip_seconds=0.05, num_decode_threads=0, train=False, drop_last=False)
    return AudioStream(source, **{**kwargs, **overrides})


def _records(batch) -> list[int]:
    return [int(row.nonzero()[0]) for row in batch["labels"]]


def _prefetch_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "audio-stream-prefetch"}


# ------------------------------------------------------------------------------- feature spellings


def test_the_feature_layout_of_every_spelling():
    f32, i32 = Value("float32"), Value("int32")
    assert _feature_layout(f32) == (f32, ())
    assert _feature_layout(List(f32, length=3)) == (f32, (3,))
    assert _feature_layout(List(f32, length=1)) == (f32, (1,))
    assert _feature_layout(List(f32)) == (f32, (-1,))
    assert _feature_layout(LargeList(f32)) == (f32, (-1,))
    assert _feature_layout(List(List(i32, length=2))) == (i32, (-1, 2))
    # the old ``[Value(...)]`` spelling (datasets now turns it into List, but a raw list can still be met)
    assert _feature_layout([f32]) == (f32, (-1,))
    assert _feature_layout([[i32]]) == (i32, (-1, -1))
    assert _feature_layout([f32, i32]) == ([f32, i32], ())  # not a one-element list: a leaf
    # ArrayXD: its dims (None where open), also under a list
    assert _feature_layout(Array2D(shape=(2, 3), dtype="float32")) == (f32, (2, 3))
    assert _feature_layout(Array2D(shape=(None, 3), dtype="int32")) == (i32, (-1, 3))
    assert _feature_layout(List(Array2D(shape=(2, 3), dtype="float32"))) == (f32, (-1, 2, 3))


def test_arrays_large_lists_unsigned_and_boolean_columns_are_stacked_with_their_dtypes():
    n = 5
    fixed = [[[i, i + 1, i + 2], [i + 3, i + 4, i + 5]] for i in range(n)]  # (2, 3)
    open_rows = [[[i + 0.5] * 3] * 2 for i in range(n)]  # (2, 3) read from the first record ...
    open_rows[3] = [[3.5] * 3]  # ... so record 3, of shape (1, 3), is corrupt
    dataset = _dataset(
        n,
        fixed=(fixed, Array2D(shape=(2, 3), dtype="float32")),
        open=(open_rows, Array2D(shape=(None, 3), dtype="float32")),
        large=([[i, -i] for i in range(n)], LargeList(Value("float32"))),
        u8=([250 + i for i in range(n)], Value("uint8")),
        flag=([i % 2 == 0 for i in range(n)], Value("bool")),
    )
    columns = ("fixed", "open", "large", "u8", "flag")
    stream = _stream(dataset, extra_columns=columns)
    assert stream.extra_shapes == {"fixed": (2, 3), "open": (2, 3), "large": (2,), "u8": (), "flag": ()}
    assert stream.extra_dims == {"large": 2}
    batches = list(stream)
    assert [_records(b) for b in batches] == [[0, 1], [2, 4]]
    assert stream.stats["skipped"] == 1 and "has shape (1, 3), expected (2, 3)" in stream.stats["errors"][0]
    for batch in batches:
        rows = _records(batch)
        expected = {
            "fixed": (torch.tensor([fixed[i] for i in rows], dtype=torch.float32), torch.float32),
            "open": (torch.tensor([open_rows[i] for i in rows], dtype=torch.float32), torch.float32),
            "large": (torch.tensor([[i, -i] for i in rows], dtype=torch.float32), torch.float32),
            "u8": (torch.tensor([250 + i for i in rows]), torch.int64),
            "flag": (torch.tensor([i % 2 == 0 for i in rows]), torch.bool),
        }
        for name, (values, dtype) in expected.items():
            assert batch[name].dtype == dtype, name
            assert torch.equal(batch[name], values), name


def _wav(n: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, _ramp(n), SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _records_without_features():
    for i in range(5):
        yield {
            "audio": {"bytes": _wav(300 + i), "path": None},
            "labels": [i],
            "embedding": [i + 0.25, i + 0.5],  # python floats: batched float32, not float64
            "caption": f"clip {i}",
            "tags": [f"t{i}", "x"],  # strings: a list per clip, as stored
            "token_ids": list(range(i, 2 * i + 1)),  # ragged ints
            "frames": [[i + 0.5] * 2] * (i + 1),  # ragged floats
        }


def test_a_stream_without_features_infers_every_column_from_its_first_record():
    streamed = IterableDataset.from_generator(_records_without_features)
    assert streamed.features is None
    source = load_audio_source(
        streamed, audio_column="audio", label_column="labels", label_names=[f"k{i}" for i in range(5)]
    )
    stream = _stream(
        source,
        extra_columns=("embedding", "caption", "tags"),
        ragged_columns=("token_ids", "frames"),
        batch_size=3,
    )
    assert stream.extra_shapes == {"embedding": (2,)}
    seen = []
    for batch in stream:
        rows = _records(batch)
        seen += rows
        assert batch["lengths"].tolist() == [300 + i for i in rows]
        assert batch["embedding"].dtype == torch.float32
        assert batch["embedding"].tolist() == [[i + 0.25, i + 0.5] for i in rows]
        assert batch["caption"] == [f"clip {i}" for i in rows]
        assert all(type(c) is str for c in batch["caption"])
        assert batch["tags"] == [[f"t{i}", "x"] for i in rows]
        for row, i in enumerate(rows):
            tokens, frames = batch["token_ids"][row], batch["frames"][row]
            assert torch.is_tensor(tokens) and tokens.dtype == torch.int64
            assert tokens.tolist() == list(range(i, 2 * i + 1))
            assert torch.is_tensor(frames) and frames.dtype == torch.float32
            assert frames.tolist() == [[i + 0.5] * 2] * (i + 1)
    assert seen == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------- what the feature decides


def test_ragged_columns_keep_their_feature_dtype_and_fixed_length_ones_stay_lists():
    tokens = [list(range(i)) for i in range(4)]  # the first record has no token at all
    dataset = _dataset(
        4,
        token_ids=(tokens, List(Value("int64"))),
        triple=([[i, i + 0.5, i + 1] for i in range(4)], List(Value("float32"), length=3)),
    )
    stream = _stream(dataset, ragged_columns=("token_ids", "triple"))
    assert stream.extra_shapes == {}
    for batch in stream:
        assert isinstance(batch["token_ids"], list) and isinstance(batch["triple"], list)
        for row, i in enumerate(_records(batch)):
            assert (
                batch["token_ids"][row].dtype == torch.int64 and batch["token_ids"][row].tolist() == tokens[i]
            )
            assert batch["triple"][row].dtype == torch.float32
            assert batch["triple"][row].tolist() == [i, i + 0.5, i + 1]


def test_an_open_width_is_the_first_records_and_records_of_another_width_are_skipped():
    rows = [[0.0, 0.5, 1.0], [1.0, 1.5], [2.0, 2.5, 3.0], [3.0], [4.0, 4.5, 5.0]]
    stream = _stream(_dataset(5, emb=(rows, List(Value("float32")))), extra_columns=("emb",))
    assert stream.extra_dims == {"emb": 3}
    batches = list(stream)
    assert [_records(b) for b in batches] == [[0, 2], [4]]  # records 1 and 3 skipped, not batched
    assert [b["emb"].tolist() for b in batches] == [[rows[0], rows[2]], [rows[4]]]
    assert stream.stats["skipped"] == 2
    # a width of one is a width like any other
    single = _stream(
        _dataset(3, one=([[i + 0.5] for i in range(3)], List(Value("float32")))), extra_columns=("one",)
    )
    assert single.extra_dims == {"one": 1}
    assert [b["one"].tolist() for b in single] == [[[0.5], [1.5]], [[2.5]]]


def test_a_missing_value_in_a_numeric_column_is_a_corrupt_record():
    values = [None, 1.5, 2.5, None]
    stream = _stream(_dataset(4, weight=(values, Value("float32"))), extra_columns=("weight",))
    assert stream.extra_shapes == {"weight": ()}  # from the feature, although the first record is None
    batches = list(stream)
    assert [_records(b) for b in batches] == [[1, 2]]
    assert batches[0]["weight"].dtype == torch.float32 and batches[0]["weight"].tolist() == [1.5, 2.5]
    assert stream.stats["skipped"] == 2
    assert all("extra column 'weight' is missing" in e for e in stream.stats["errors"])


def test_columns_that_cannot_be_batched_as_numbers_are_refused_by_name():
    dataset = _dataset(
        3,
        caption=([f"clip {i}" for i in range(3)], Value("string")),
        emb=([None, [1.0], [2.0]], List(Value("float32"))),
        tags=([[f"t{i}", "x"] for i in range(3)], List(Value("string"))),
    )
    with pytest.raises(
        ValueError,
        match=r"^ragged column 'caption' must hold arrays of numbers; its first record is 'clip 0'$",
    ):
        _stream(dataset, ragged_columns=("caption",))
    with pytest.raises(
        ValueError, match=r"^extra column 'emb' must hold arrays of numbers; its first record is None$"
    ):
        _stream(dataset, extra_columns=("emb",))
    with pytest.raises(
        ValueError, match=r"^ragged column 'tags' must hold .* its first record is \['t0', 'x'\]$"
    ):
        _stream(dataset, ragged_columns=("tags",))
    assert [b["tags"] for b in _stream(dataset, extra_columns=("tags",))] == [
        [["t0", "x"], ["t1", "x"]],
        [["t2", "x"]],
    ]


def test_a_collate_fn_gets_the_values_as_stored_and_nothing_is_inferred():
    tokens = [[], [1], [2, 2]]  # an empty first record: a shape nobody could infer
    dataset = _dataset(3, token_ids=(tokens, List(Value("int64"))))
    stream = _stream(dataset, extra_columns=("token_ids",), collate_fn=lambda records: {"raw": records})
    assert stream.extra_shapes == {}
    assert [b["raw"] for b in stream] == [[{"token_ids": []}, {"token_ids": [1]}], [{"token_ids": [2, 2]}]]
    # a collate_fn must return a dict; the error reaches the caller
    bad = _stream(dataset, extra_columns=("token_ids",), collate_fn=lambda records: [1])
    with pytest.raises(TypeError, match=r"^collate_fn must return a dict of batch entries, got list$"):
        list(bad)


def test_a_stream_whose_records_all_fail_quotes_its_first_three_errors():
    names = ["c0"]
    bad = Dataset.from_dict(
        {"audio": [{"bytes": b"not a wav file" * 8, "path": None}] * 40, "labels": [[0]] * 40},
        features=Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))}),
    )
    with pytest.raises(ValueError) as raised:
        list(_stream(bad))
    message = str(raised.value)
    head, errors = message.split(" First errors: ")
    assert head == (
        "the first 32 records of the stream all failed to decode or label, so the dataset or the column "
        "choice is wrong (audio_column='audio', label_column='labels')."
    )
    quoted = errors.split(" | ")
    assert len(quoted) == 3
    assert [e.split(": ")[0] for e in quoted] == [f"record {k} of epoch 0" for k in range(3)]


# ------------------------------------------------------------------------------- arguments, defaults


def test_every_argument_check_names_the_argument_and_the_value():
    dataset = _dataset(2, caption=(["a", "b"], Value("string")))
    cases = [
        ({"batch_size": None}, ValueError, r"^batch_size must be a positive integer \(None is allowed only"),
        ({"batch_size": True}, ValueError, r"^batch_size must be a positive integer, got True$"),
        ({"batch_size": 2.0}, ValueError, r"^batch_size must be a positive integer, got 2.0$"),
        ({"sample_rate": 0}, ValueError, r"^sample_rate must be a positive integer, got 0$"),
        ({"world_size": 0}, ValueError, r"^world_size must be a positive integer, got 0$"),
        ({"shuffle_buffer": 0}, ValueError, r"^shuffle_buffer must be a positive integer, got 0$"),
        ({"clip_seconds": 0}, ValueError, r"^clip_seconds must be positive, got 0$"),
        ({"clip_seconds": math.nan}, ValueError, r"^clip_seconds must be positive, got nan$"),
        ({"rank": -1}, ValueError, r"^rank must be in \[0, world_size=1\), got -1$"),
        ({"num_decode_threads": -1}, ValueError, r"^num_decode_threads must be >= 0, got -1$"),
        ({"collate_fn": "tokenize"}, TypeError, r"^collate_fn must be callable, got str$"),
        (
            {"collate_fn": dict, "ragged_columns": ("caption",)},
            ValueError,
            r"^collate_fn replaces the collation of every extra column: leave ragged_columns empty$",
        ),
        ({"extra_columns": (1,)}, TypeError, r"^extra_columns must be column names, got 1$"),
        ({"ragged_columns": (None,)}, TypeError, r"^ragged_columns must be column names, got None$"),
        ({"extra_columns": ("caption", "caption")}, ValueError, r"^extra_columns has duplicates"),
        ({"ragged_columns": ("caption", "caption")}, ValueError, r"^ragged_columns has duplicates"),
        ({"extra_columns": ("audio",)}, ValueError, r"^extra column 'audio' is the audio column$"),
    ]
    for overrides, error, message in cases:
        with pytest.raises(error, match=message):
            _stream(dataset, **overrides)
    with pytest.raises(TypeError, match=r"^source must be an AudioSource or a datasets object, got list$"):
        AudioStream([1, 2], batch_size=2)
    assert _stream(dataset, batch_size=np.int64(2), clip_seconds=0.01).batch_size == 2


def test_an_indices_column_is_a_plain_extra_column_without_return_index():
    dataset = _dataset(3, indices=([10, 11, 12], Value("int64")))
    batches = list(_stream(dataset, extra_columns=("indices",)))
    assert [b["indices"].tolist() for b in batches] == [[10, 11], [12]]


def test_the_defaults_train_on_shuffled_ten_second_clips_and_drop_the_tail():
    lengths = [300 + 10 * i for i in range(5)]
    names = [f"c{i}" for i in range(5)]
    dataset = Dataset.from_dict(
        {
            "audio": [{"array": _ramp(n), "sampling_rate": SR} for n in lengths],
            "labels": [[i] for i in range(5)],
        },
        features=Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))}),
    )
    stream = AudioStream(dataset, batch_size=2)
    order = np.random.default_rng([0, 0]).permutation(5).tolist()  # seed 0, epoch 0
    batches = list(stream)
    assert [_records(b) for b in batches] == [order[0:2], order[2:4]]  # the last partial batch dropped
    for batch in batches:
        assert set(batch) == {"waveforms", "lengths", "labels"}  # no indices unless asked for
        assert batch["waveforms"].shape == (2, 160000)  # 10 s at 16 kHz
        assert batch["lengths"].tolist() == [lengths[i] for i in _records(batch)]
    assert stream.state_dict()["stats"] == {"decoded": 5, "skipped": 0, "errors": []}
    bucketed = AudioStream(dataset, batch_size=None, max_duration=0.5)
    assert bucketed.state_dict()["bucketing"] == {
        "max_duration": 0.5,
        "num_buckets": 30,
        "buffer_duration": 30.0,  # 2 * num_buckets * max_duration
        "max_batch_size": None,
        "boundaries": None,
        "waiting": [],
        "batches": 0,
    }
    # with max_duration, batch_size is the most clips per batch, and its error says so
    for bad in (0, -1, 2.5, True):
        with pytest.raises(
            ValueError, match=r"^batch_size \(with max_duration: the most clips per batch\) must"
        ):
            AudioStream(dataset, batch_size=bad, max_duration=0.5)
    assert (
        AudioStream(dataset, batch_size=3, max_duration=0.5).state_dict()["bucketing"]["max_batch_size"] == 3
    )


def test_a_stream_with_shards_dividing_world_size_reads_its_own_shards_without_a_warning(caplog):
    dataset = _dataset(8)
    streamed = dataset.to_iterable_dataset(num_shards=4)
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.stream"):
        ranks = [_stream(streamed, rank=r, world_size=2, batch_size=4) for r in (0, 1)]
    assert not [r for r in caplog.records if "shards" in r.getMessage()]
    seen = [[i for b in stream for i in _records(b)] for stream in ranks]
    assert sorted(seen[0] + seen[1]) == list(range(8)) and not set(seen[0]) & set(seen[1])


def test_states_of_the_other_batching_or_settings_are_refused_with_the_reason():
    dataset = _dataset(4)
    bucketing = dict(max_duration=0.1, num_buckets=2, bucket_buffer_duration=0.2)
    saved = {
        "max_duration": 0.1,
        "num_buckets": 2,
        "buffer_duration": 0.2,
        "max_batch_size": 3,
        "boundaries": None,
        "waiting": [1],
        "batches": 0,
    }
    fixed = _stream(dataset)
    with pytest.raises(ValueError) as raised:
        fixed.load_state_dict({"epoch": 0, "examples_consumed": 2, "bucketing": saved})
    assert str(raised.value) == (
        "the state was saved by a stream with max_duration (dynamic batches), with clips still waiting in "
        "its buckets; this stream has fixed-size batches and would skip them: build it with max_duration=0.1"
    )
    bucketed = _stream(dataset, batch_size=3, **bucketing)
    with pytest.raises(ValueError) as raised:  # one record read is already a position
        bucketed.load_state_dict({"epoch": 0, "examples_consumed": 1})
    assert str(raised.value) == (
        "the state was saved by a stream with fixed-size batches; this stream has max_duration (dynamic "
        "batches), whose position it cannot continue exactly: resume with the same batching, or start the "
        "epoch over"
    )
    other = _stream(dataset, batch_size=4, **{**bucketing, "num_buckets": 3})
    with pytest.raises(ValueError) as raised:
        other.load_state_dict({"epoch": 0, "examples_consumed": 2, "bucketing": saved})
    assert str(raised.value) == (
        "the state was saved with other bucketing settings (saved, now): num_buckets=2 vs 3, "
        "max_batch_size=3 vs 4: the batches differ from the interrupted run's "
        "(pass strict=False to resume anyway)"
    )
    # boundaries not yet estimated stay unestimated
    bucketed.load_state_dict({"epoch": 0, "examples_consumed": 2, "bucketing": saved})
    assert bucketed.state_dict()["bucketing"]["boundaries"] is None
    assert bucketed.state_dict()["bucketing"]["waiting"] == [1]


# --------------------------------------------------------------------------------- the prefetch thread


def test_a_slow_consumer_still_gets_every_batch():
    """The producer waits for a full queue as long as the consumer is there (it retries every 0.1 s)."""
    stream = _stream(_dataset(6), batch_size=2)
    got: list[list[int]] = []

    def consume():
        for batch in stream:
            got.append(_records(batch))
            time.sleep(0.3)  # a training step longer than the producer's 0.1 s wait

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=30)
    assert not consumer.is_alive()
    assert got == [[0, 1], [2, 3], [4, 5]]


def _first_batch_taken(num_records: int):
    """A stream of 2-record batches, its iterator after the first batch and its prefetch thread."""
    before = _prefetch_threads()
    stream = _stream(_dataset(num_records), batch_size=2)
    iterator = iter(stream)
    next(iterator)
    (producer,) = _prefetch_threads() - before
    return stream, iterator, producer


def test_a_finished_producer_is_no_longer_registered():
    _, iterator, producer = _first_batch_taken(4)
    assert stream_module._LIVE_PRODUCERS.get(producer) is not None
    assert len(list(iterator)) == 1
    producer.join(timeout=10)
    assert not producer.is_alive()
    assert producer not in stream_module._LIVE_PRODUCERS


def test_a_closed_iterator_stops_its_producer_while_it_waits_on_a_full_queue():
    stream, iterator, producer = _first_batch_taken(10)
    time.sleep(0.3)  # the next batch fills the queue; the producer waits to hand over the one after it
    iterator.close()  # what a training loop does when it stops mid-epoch
    producer.join(timeout=10)
    assert not producer.is_alive()
    assert stream.state_dict()["examples_consumed"] == 2


def test_stop_prefetch_threads_sets_every_flag_and_gives_up_on_a_stuck_thread(monkeypatch):
    stopped, stuck_stop, release = threading.Event(), threading.Event(), threading.Event()
    polite = threading.Thread(target=stopped.wait, args=(10,), daemon=True)  # ends once its flag is set
    stuck = threading.Thread(target=release.wait, args=(1.5,), daemon=True)  # ignores its flag
    polite.start()
    stuck.start()
    monkeypatch.setattr(stream_module, "_LIVE_PRODUCERS", {polite: stopped, stuck: stuck_stop})
    try:
        assert stop_prefetch_threads(timeout=0.5) == 1  # the stuck one is still alive when it gives up
        assert stopped.is_set() and stuck_stop.is_set()
        assert not polite.is_alive() and stuck.is_alive()
    finally:
        release.set()
        stuck.join()
    monkeypatch.setattr(stream_module, "_LIVE_PRODUCERS", {polite: stopped})
    assert stop_prefetch_threads(timeout=0.5) == 0
