"""AudioSet-style sources and the resumable AudioStream, on tiny data written to tmp_path.

The fixtures mirror the Hub layouts exactly (agkphysics/AudioSet Parquet under data/<split>/,
confit-style WebDataset tars with <key>.flac + <key>.json) so the local loads go through the same
``datasets`` builders as the Hub ids. Every record carries a distinct class so batches can be
traced back to the records they came from.
"""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import threading
import time

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import Audio, ClassLabel, Dataset, Features, IterableDataset, List, Value

from hf_audiorep.data import sources as sources_module
from hf_audiorep.data.arguments import DataArguments, StreamFactory
from hf_audiorep.data.decode import CorruptAudioError, crop_or_pad, decode_audio
from hf_audiorep.data.embedded import EMBEDDED_ONTOLOGY, load_embedded_corpus
from hf_audiorep.data.ontology import (
    AUDIOSET_ONTOLOGY,
    LabelGroup,
    LabelMapper,
    LabelVocabulary,
    UnknownLabelError,
    labels_to_multi_hot,
)
from hf_audiorep.data.semi_supervised import SemiSupervisedBatches
from hf_audiorep.data.sources import load_audio_source
from hf_audiorep.data.stream import AudioStream, stop_prefetch_threads

SR = 16000
CLIP = 0.25  # seconds: 4000 samples at 16 kHz
CORRUPT = b"this is not a flac file" * 4


def _tone(seconds: float, sr: int, freq: float = 440.0, amp: float = 0.4) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _flac(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="FLAC")
    return buf.getvalue()


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(autouse=True)
def _no_datasets_shutdown_sleep(monkeypatch):
    """datasets sleeps 5 s whenever a shuffled multi-shard Parquet iterator finishes (a guard for
    reader threads at interpreter exit); harmless once per epoch in training, slow in tests."""
    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


# The 10 records of the Parquet fixture: (sample rate, seconds, channels, AudioSet classes).
# Record 0 is stereo, record 1 is 44.1 kHz, record 2 is corrupt, record 4 is shorter than a clip.
PARQUET_RECORDS = [
    (48000, 0.5, 2, [0, 137]),
    (44100, 0.4, 1, [1]),
    (48000, 0.3, 1, [2]),  # bytes replaced by garbage
    (48000, 0.5, 1, [3]),
    (48000, 0.1, 1, [4]),
    (48000, 0.3, 1, [5]),
    (48000, 0.3, 1, [6]),
    (48000, 0.5, 1, [7]),
    (48000, 0.3, 1, [8]),
    (48000, 0.3, 1, [9]),
]
CORRUPT_INDEX = 2
GOOD_PARQUET = [i for i in range(len(PARQUET_RECORDS)) if i != CORRUPT_INDEX]


def _parquet_record(i: int) -> dict:
    sr, seconds, channels, classes = PARQUET_RECORDS[i]
    wave = _tone(seconds, sr, freq=200.0 + 50 * i)
    if channels == 2:  # left: the tone; right: a DC offset; the mono mix is their mean
        wave = np.stack([wave, np.full_like(wave, 0.2)], axis=1)
    audio = CORRUPT if i == CORRUPT_INDEX else _flac(wave, sr)
    return {
        "video_id": f"vid{i:03d}",
        "audio": {"bytes": audio, "path": f"audio/bal_train/vid{i:03d}.flac"},
        "labels": [AUDIOSET_ONTOLOGY.mids[c] for c in classes],
        "human_labels": [AUDIOSET_ONTOLOGY.names[c] for c in classes],
    }


@pytest.fixture(scope="module")
def parquet_root(tmp_path_factory):
    """agkphysics/AudioSet layout: data/bal_train/{00,01}.parquet (5 records each) + data/eval."""
    root = tmp_path_factory.mktemp("agkphysics")
    features = Features(
        {
            "video_id": Value("string"),
            "audio": Audio(),
            "labels": List(Value("string")),
            "human_labels": List(Value("string")),
        }
    )
    for split, shards in (("bal_train", [range(0, 5), range(5, 10)]), ("eval", [range(0, 2)])):
        (root / "data" / split).mkdir(parents=True)
        for k, ids in enumerate(shards):
            rows = [_parquet_record(i) for i in ids]
            table = {key: [r[key] for r in rows] for key in features}
            path = root / "data" / split / f"{k:02d}.parquet"
            Dataset.from_dict(table, features=features).to_parquet(str(path))
    return root


def _expected_parquet_target(i: int) -> np.ndarray:
    return labels_to_multi_hot(PARQUET_RECORDS[i][3], len(AUDIOSET_ONTOLOGY))


# WebDataset fixture: 2 shards of 4 samples, 16 kHz FLAC + JSON in the confit layout.
WDS_CORRUPT_KEY = "s0005"


def _wds_sample(i: int) -> tuple[str, bytes, dict]:
    key = f"s{i:04d}"
    meta = {"id": f"vid{i}", "label": [AUDIOSET_ONTOLOGY.names[10 + i]], "label_id": [10 + i]}
    if i == 3:  # a name this library does not know: the mapper falls back to the integer ids
        meta["label"] = ["Some other spelling"]
    audio = CORRUPT if key == WDS_CORRUPT_KEY else _flac(_tone(0.2 + 0.05 * i, SR, 300.0 + 20 * i), SR)
    return key, audio, meta


@pytest.fixture(scope="module")
def wds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    for shard, ids in enumerate((range(0, 4), range(4, 8))):
        (root / "20k" / "train").mkdir(parents=True, exist_ok=True)
        with tarfile.open(root / "20k" / "train" / f"shard-{shard:05d}.tar", "w") as tar:
            for i in ids:
                key, audio, meta = _wds_sample(i)
                for name, data in ((f"{key}.flac", audio), (f"{key}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return root


def _class_dataset(n: int = 11) -> Dataset:
    """A map-style Dataset like the embedded corpus: Audio column, labels = [ClassLabel index]."""
    names = [f"c{i}" for i in range(n)]
    features = Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))})
    audio = [{"array": _tone(0.2 + 0.02 * i, SR, 100.0 + 37 * i), "sampling_rate": SR} for i in range(n)]
    return Dataset.from_dict({"audio": audio, "labels": [[i] for i in range(n)]}, features=features)


@pytest.fixture(scope="module")
def class_dataset():
    return _class_dataset()


def _ids(batches) -> list[int]:
    """The record behind each clip: every fixture record has a distinct lowest class index."""
    return [int(row.nonzero()[0]) for b in batches for row in b["labels"]]


def _clone(value):
    if torch.is_tensor(value):
        return value.clone()
    return [_clone(v) for v in value] if isinstance(value, list) else value


def _collect(stream) -> list[dict]:
    return [{k: _clone(v) for k, v in b.items()} for b in stream]


def _assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("waveforms", "lengths", "labels"):
            torch.testing.assert_close(x[key], y[key], rtol=0, atol=0)


# ------------------------------------------------------------------------------------ ontology


def test_audioset_ontology_table():
    assert len(AUDIOSET_ONTOLOGY) == 527
    assert len(set(AUDIOSET_ONTOLOGY.mids)) == 527
    assert (AUDIOSET_ONTOLOGY.mids[0], AUDIOSET_ONTOLOGY.names[0]) == ("/m/09x0r", "Speech")
    assert (AUDIOSET_ONTOLOGY.mids[137], AUDIOSET_ONTOLOGY.names[137]) == ("/m/04rlf", "Music")
    assert AUDIOSET_ONTOLOGY.names[1] == "Male speech, man speaking"  # quoted CSV field with a comma
    assert AUDIOSET_ONTOLOGY.mid_to_index["/m/07hvw1"] == 526
    assert AUDIOSET_ONTOLOGY.id2label[137] == "Music"


def test_label_mapper_accepts_mids_names_indices_and_json():
    mapper = AUDIOSET_ONTOLOGY.label_mapper()
    assert mapper(["/m/04rlf", "Speech", 5]) == [0, 5, 137]
    assert mapper("/m/09x0r,/m/04rlf") == [0, 137]
    assert mapper("Male speech, man speaking;Music") == [1, 137]
    assert mapper({"label": ["Music"], "label_id": [3]}) == [137]
    assert mapper({"label": ["unknown name"], "label_id": [3]}) == [3]
    assert mapper(None) == []
    with pytest.raises(ValueError, match="unknown class label"):
        mapper(["/m/notamid"])
    with pytest.raises(ValueError, match="outside"):
        mapper(527)
    target = AUDIOSET_ONTOLOGY.multi_hot(["/m/09x0r", "/m/04rlf"])
    assert target.dtype == np.float32 and target.sum() == 2 and target[0] == target[137] == 1
    with pytest.raises(ValueError):
        labels_to_multi_hot([3], 3)
    assert LabelMapper(3, {"a": 0})(["a", 2]) == [0, 2]


def test_one_vocabulary_type_serves_audioset_the_corpus_and_mined_tags():
    for vocabulary in (AUDIOSET_ONTOLOGY, EMBEDDED_ONTOLOGY):
        assert isinstance(vocabulary, LabelVocabulary)
        i = len(vocabulary) - 1
        assert (
            vocabulary.index(vocabulary.names[i])
            == vocabulary.index(vocabulary.ids[i])
            == vocabulary.index(i)
        )
        assert vocabulary.label_mapper()([vocabulary.ids[0], vocabulary.names[i]]) == [0, i]
        assert vocabulary.multi_hot([i]).sum() == 1 and vocabulary.id2label[i] == vocabulary.names[i]
    assert EMBEDDED_ONTOLOGY.group_of(EMBEDDED_ONTOLOGY.index("Dog bark")).name == "Animal calls"
    assert AUDIOSET_ONTOLOGY.group_of(0) is None and AUDIOSET_ONTOLOGY.main_classes == tuple(range(527))

    # A tag vocabulary mined from captions is a plain list of names: ids are the names.
    tags = LabelVocabulary.from_names(["dog", "bark", "rain"])
    assert (tags.ids, tags.names, len(tags), tags.parent_of) == (
        tags.names,
        ("dog", "bark", "rain"),
        3,
        (None,) * 3,
    )
    assert tags.label_mapper()("rain; dog") == [0, 2] and tags.label2id == {"dog": 0, "bark": 1, "rain": 2}
    np.testing.assert_array_equal(tags.multi_hot(["bark"]), [0, 1, 0])
    assert LabelVocabulary.from_names(["a"]) == LabelVocabulary(("a",), ("a",))  # hashable, comparable
    for vocabulary in (tags, EMBEDDED_ONTOLOGY, AUDIOSET_ONTOLOGY):  # picklable, for process pools
        again = pickle.loads(pickle.dumps(vocabulary))
        assert (
            again == vocabulary
            and type(again) is type(vocabulary)
            and again.index(vocabulary.names[-1]) == len(vocabulary) - 1
        )
    for unknown in ("cat", 3, -1, True):
        with pytest.raises(UnknownLabelError, match="not a class name, id or index"):
            tags.index(unknown)
    assert issubclass(UnknownLabelError, KeyError) and issubclass(UnknownLabelError, ValueError)

    grouped = LabelVocabulary(
        ("/x/0", "/x/1", "/x/2"), ("a", "b", "c"), (LabelGroup("/g/0", "g", (0, 2)),), {1}
    )
    assert grouped.parent_of == (0, None, 0) and grouped.main_classes == (0, 2)
    for kwargs, message in (
        ({"ids": ("a", "b"), "names": ("x",)}, "one id per name"),
        ({"ids": ("a", "a"), "names": ("x", "y")}, "ids must be unique"),
        ({"ids": ("a", "b"), "names": ("b", "c")}, "id of one class and the name of another"),
        ({"ids": (), "names": ()}, "at least one class"),
        ({"ids": ("a",), "names": ("x",), "heldout": {1}}, "held-out"),
        (
            {"ids": ("a",), "names": ("x",), "groups": (LabelGroup("g", "g", (0,)),) * 2},
            "more than one group",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            LabelVocabulary(**kwargs)


# -------------------------------------------------------------------------------------- decode


def test_decode_downmixes_and_resamples():
    left = _tone(0.3, 48000, 440.0)
    stereo = np.stack([left, np.full_like(left, 0.2)], axis=1)
    out = decode_audio({"bytes": _flac(stereo, 48000), "path": "x.flac"}, 16000)
    assert out.dtype == np.float32 and out.shape == (len(left) // 3,)
    expected = 0.5 * _tone(0.3, 16000, 440.0) + 0.1  # mean of the two channels, at 16 kHz
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=2e-3)

    mono_441 = _tone(0.4, 44100)
    assert decode_audio(_flac(mono_441, 44100), 16000).shape == (int(np.ceil(len(mono_441) * 160 / 441)),)
    # a decoded datasets value and a plain array at the target rate pass through unchanged
    wave = _tone(0.1, 16000)
    np.testing.assert_array_equal(decode_audio({"array": wave, "sampling_rate": 16000}, 16000), wave)
    np.testing.assert_array_equal(decode_audio(wave, 16000, sampling_rate=16000), wave)


def test_decode_paths_and_torchcodec_decoder(tmp_path):
    wave = _tone(0.1, 32000)
    path = tmp_path / "clip.wav"
    sf.write(path, wave, 32000, subtype="FLOAT")
    from_path = decode_audio(str(path), 16000)
    assert from_path.shape == (1600,)
    torchcodec = pytest.importorskip("torchcodec.decoders")
    from_decoder = decode_audio(torchcodec.AudioDecoder(str(path)), 16000)
    np.testing.assert_allclose(from_decoder, from_path, atol=1e-4)


def test_decode_errors_are_typed():
    with pytest.raises(CorruptAudioError, match="cannot decode"):
        decode_audio({"bytes": CORRUPT, "path": "bad.flac"}, 16000)
    with pytest.raises(CorruptAudioError, match="no samples"):
        decode_audio({"array": np.zeros(0, np.float32), "sampling_rate": 16000}, 16000)
    with pytest.raises(CorruptAudioError, match="NaN"):
        decode_audio({"array": np.array([0.0, np.nan], np.float32), "sampling_rate": 16000}, 16000)
    assert issubclass(CorruptAudioError, ValueError)
    with pytest.raises(TypeError, match="sampling_rate"):
        decode_audio(np.zeros(10, np.float32), 16000)
    with pytest.raises(TypeError):
        decode_audio(3.5, 16000)


def test_crop_or_pad():
    wave = np.arange(10, dtype=np.float32)
    out, length = crop_or_pad(wave, 4, train=False)
    np.testing.assert_array_equal(out, [0, 1, 2, 3])
    assert length == 4
    starts = {int(crop_or_pad(wave, 4, np.random.default_rng(s), train=True)[0][0]) for s in range(40)}
    assert starts <= set(range(7)) and len(starts) > 3
    a = crop_or_pad(wave, 4, np.random.default_rng(7), train=True)[0]
    np.testing.assert_array_equal(a, crop_or_pad(wave, 4, np.random.default_rng(7), train=True)[0])
    padded, length = crop_or_pad(wave[:3], 5)
    np.testing.assert_array_equal(padded, [0, 1, 2, 0, 0])
    assert length == 3


# ------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("streaming", [True, False])
def test_parquet_audioset_layout(parquet_root, tmp_path, streaming, caplog):
    source = load_audio_source(str(parquet_root), split="train", streaming=streaming, cache_dir=str(tmp_path))
    assert source.layout == "audioset-parquet"
    assert isinstance(source.dataset, IterableDataset if streaming else Dataset)
    assert (source.audio_column, source.label_column) == ("audio", "labels")
    assert source.label_names == AUDIOSET_ONTOLOGY.names

    stream = AudioStream(source, batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    with caplog.at_level("WARNING"):
        batches = _collect(stream)
    assert [b["waveforms"].shape for b in batches] == [(4, 4000), (4, 4000), (1, 4000)]  # eval keeps the tail
    for b in batches:
        assert b["waveforms"].dtype == torch.float32 and b["lengths"].dtype == torch.int64
        assert b["labels"].shape[1] == 527 and b["labels"].dtype == torch.float32
    labels = torch.cat([b["labels"] for b in batches]).numpy()
    np.testing.assert_array_equal(labels, np.stack([_expected_parquet_target(i) for i in GOOD_PARQUET]))
    lengths = torch.cat([b["lengths"] for b in batches]).tolist()
    assert lengths[GOOD_PARQUET.index(4)] == 1600  # 0.1 s at 48 kHz -> 1600 samples at 16 kHz, then padded
    assert all(n == 4000 for i, n in zip(GOOD_PARQUET, lengths, strict=True) if i != 4)
    short = torch.cat([b["waveforms"] for b in batches])[GOOD_PARQUET.index(4)]
    assert short[1600:].abs().max() == 0 and short[:1600].abs().max() > 0.1
    # the stereo clip is the channel mean: 0.5 * tone + 0.1 (the right channel's DC / 2)
    stereo = batches[0]["waveforms"][0].numpy()
    np.testing.assert_allclose(stereo[200:3800], 0.5 * _tone(CLIP, SR, 200.0)[200:3800] + 0.1, atol=2e-3)

    assert stream.stats["decoded"] == 9 and stream.stats["skipped"] == 1
    assert "record 2" in stream.stats["errors"][0] and "cannot decode" in stream.stats["errors"][0]
    assert any("skipped a corrupt record" in r.message for r in caplog.records)
    assert stream.state_dict()["examples_consumed"] == 10


def test_parquet_split_directories(parquet_root):
    test = load_audio_source(str(parquet_root), split="test", streaming=True)
    assert len(list(test.dataset)) == 2  # data/eval
    with pytest.raises(ValueError, match="no .parquet files for split 'validation_x'"):
        load_audio_source(str(parquet_root), split="validation_x", streaming=True)


def test_webdataset_layout_with_json_labels(wds_root):
    source = load_audio_source(str(wds_root), split="train", config_name="20k", streaming=True)
    assert source.layout == "webdataset"
    assert (source.audio_column, source.label_column) == ("flac", "json")
    assert source.dataset.num_shards == 2
    stream = AudioStream(source, batch_size=3, sample_rate=SR, clip_seconds=CLIP, train=False)
    batches = _collect(stream)
    good = [i for i in range(8) if f"s{i:04d}" != WDS_CORRUPT_KEY]
    assert _ids(batches) == [10 + i for i in good]  # names resolve; sample 3 falls back to label_id
    assert stream.stats["skipped"] == 1 and stream.stats["decoded"] == 7
    lengths = torch.cat([b["lengths"] for b in batches]).tolist()
    assert lengths == [min(4000, int(round((0.2 + 0.05 * i) * SR))) for i in good]


def test_audiofolder_layouts(tmp_path):
    by_folder = tmp_path / "folders"
    for name in ("dog", "cat"):
        (by_folder / name).mkdir(parents=True)
        for k in range(2):
            sf.write(by_folder / name / f"{k}.wav", _tone(0.1, 22050), 22050)
    source = load_audio_source(str(by_folder), cache_dir=str(tmp_path / "cache"))
    assert source.layout == "audiofolder" and source.label_names == ("cat", "dog")
    batches = _collect(AudioStream(source, batch_size=8, sample_rate=SR, clip_seconds=CLIP, train=False))
    assert batches[0]["labels"].sum(0).tolist() == [2.0, 2.0]
    assert batches[0]["lengths"].tolist() == [1600] * 4

    with_metadata = tmp_path / "meta"
    with_metadata.mkdir()
    for k in range(3):
        sf.write(with_metadata / f"{k}.flac", _tone(0.1, SR), SR)
    (with_metadata / "metadata.csv").write_text(
        'file_name,labels\n0.flac,/m/09x0r\n1.flac,"/m/09x0r;/m/04rlf"\n2.flac,Music\n'
    )
    source = load_audio_source(str(with_metadata), streaming=True)
    assert source.label_names == AUDIOSET_ONTOLOGY.names
    batch = next(iter(AudioStream(source, batch_size=3, sample_rate=SR, clip_seconds=CLIP, train=False)))
    assert [sorted(row.nonzero()[:, 0].tolist()) for row in batch["labels"]] == [[0], [0, 137], [137]]


def test_datasets_object_with_classlabels(class_dataset):
    source = load_audio_source(class_dataset)
    assert source.layout == "dataset" and source.num_classes == 11
    assert source.label_names[3] == "c3"
    batches = _collect(AudioStream(source, batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False))
    assert _ids(batches) == list(range(11))


def test_hub_ids_go_through_load_dataset(monkeypatch, parquet_root, wds_root):
    """The Hub path cannot run offline: check it calls load_dataset with the Hub id, config and split,
    and that the Hub layouts are recognised on what the builders return for local copies."""
    calls = []
    real_load_dataset = datasets.load_dataset

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs["split"], kwargs["streaming"]))
        if path == "agkphysics/AudioSet":
            builder, files = "parquet", sorted((parquet_root / "data" / "bal_train").glob("*.parquet"))
        else:
            builder, files = "webdataset", sorted((wds_root / "20k" / "train").glob("*.tar"))
        return real_load_dataset(
            builder, data_files={"train": [str(f) for f in files]}, split="train", streaming=True
        )

    monkeypatch.setattr(sources_module.datasets, "load_dataset", fake_load_dataset)
    source = load_audio_source("agkphysics/AudioSet", split="train", streaming=True)
    assert calls[-1] == ("agkphysics/AudioSet", "balanced", "train", True)
    assert (source.layout, source.label_column) == ("audioset-parquet", "labels")
    load_audio_source("agkphysics/AudioSet", split="eval", config_name="unbalanced", streaming=True)
    assert calls[-1] == ("agkphysics/AudioSet", "unbalanced", "test", True)
    source = load_audio_source("confit/audioset-16khz-wds", split="train", streaming=True)
    assert calls[-1] == ("confit/audioset-16khz-wds", "20k", "train", True)
    assert (source.layout, source.label_column, source.audio_column) == ("webdataset", "json", "flac")


# ------------------------------------------------------------------------- order and sharding


def _stream(source, **kwargs) -> AudioStream:
    defaults = {"batch_size": 2, "sample_rate": SR, "clip_seconds": CLIP, "num_decode_threads": 2}
    return AudioStream(source, **{**defaults, **kwargs})


def test_map_style_order_and_sharding(class_dataset):
    source = load_audio_source(class_dataset)
    first = _ids(_stream(source, train=True, seed=3))
    assert first == _ids(_stream(source, train=True, seed=3))  # same seed, same order
    assert first != _ids(_stream(source, train=True, seed=4))
    later = _stream(source, train=True, seed=3)
    later.set_epoch(1)
    assert _ids(later) != first  # a new epoch is a new permutation
    assert len(first) == 10  # 11 records, batches of 2, the last partial batch dropped

    # training: each rank gets floor(11 / 2) = 5 records -> 2 full batches each, disjoint
    ranks = [_stream(source, train=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in ranks] == [2, 2]
    r0, r1 = (_ids(s) for s in ranks)
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
    # evaluation: every record exactly once across ranks
    e0, e1 = (_ids(_stream(source, train=False, rank=r, world_size=2)) for r in (0, 1))
    assert sorted(e0 + e1) == list(range(11)) and not set(e0) & set(e1)


@pytest.mark.parametrize("train", [False, True])
def test_stream_sharding_over_two_shards(parquet_root, train, caplog):
    source = load_audio_source(str(parquet_root), split="train", streaming=True)
    ranks = [_stream(source, train=train, rank=r, world_size=2, drop_last=False) for r in (0, 1)]
    for stream in ranks:
        stream.set_epoch(1)  # the shard order is shuffled per epoch, identically on every rank
    with caplog.at_level("WARNING"):
        per_rank = [_ids(stream) for stream in ranks]
    assert not any("not a multiple of world_size" in r.message for r in caplog.records)
    assert not set(per_rank[0]) & set(per_rank[1])
    expected = sorted(min(PARQUET_RECORDS[i][3]) for i in GOOD_PARQUET)
    assert sorted(per_rank[0] + per_rank[1]) == expected
    with pytest.raises(TypeError, match="no len"):
        len(_stream(source))


def test_stream_shuffle_depends_on_seed_and_epoch(parquet_root):
    source = load_audio_source(str(parquet_root), split="train", streaming=True)
    orders = {}
    for seed, epoch in ((0, 0), (0, 0), (0, 1), (0, 2)):
        stream = _stream(source, train=True, seed=seed, shuffle_buffer=8)
        stream.set_epoch(epoch)
        orders.setdefault((seed, epoch), []).append(_ids(stream))
    assert orders[(0, 0)][0] == orders[(0, 0)][1]
    assert len({tuple(o[0]) for o in orders.values()}) == 3


def test_odd_shard_count_warns(parquet_root, caplog):
    source = load_audio_source(str(parquet_root), split="train", streaming=True)
    with caplog.at_level("WARNING"):
        per_rank = [_ids(_stream(source, train=False, rank=r, world_size=3)) for r in range(3)]
    assert any("not a multiple of world_size" in r.message for r in caplog.records)
    assert sorted(sum(per_rank, [])) == sorted(min(PARQUET_RECORDS[i][3]) for i in GOOD_PARQUET)


def test_batches_do_not_depend_on_decode_threads(parquet_root):
    """Random crops come from (seed, epoch, rank, position), not from thread timing."""
    source = load_audio_source(str(parquet_root), split="train", streaming=True)
    make = lambda n: _stream(source, train=True, seed=2, clip_seconds=0.1, num_decode_threads=n)  # noqa: E731
    runs = [_collect(make(n)) for n in (0, 3)]
    _assert_same_batches(*runs)
    crops = {tuple(b["waveforms"][0, :8].tolist()) for b in runs[0]}
    assert len(crops) == len(runs[0])  # and the crops really differ from clip to clip


# ------------------------------------------------------------------------------------- resume


def _resume_matches(make_stream, k: int, epoch: int) -> None:
    full = make_stream()
    full.set_epoch(epoch)
    reference = _collect(full)
    assert len(reference) > k

    partial = make_stream()
    partial.set_epoch(epoch)
    iterator = iter(partial)
    head = [{key: v.clone() for key, v in next(iterator).items()} for _ in range(k)]
    state = partial.state_dict()
    iterator.close()
    assert state["epoch"] == epoch and state["examples_consumed"] >= k * full.batch_size

    resumed = make_stream()
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)  # what a training loop does at the top of the epoch: keeps the position
    tail = _collect(resumed)
    _assert_same_batches(head + tail, reference)
    assert resumed.stats == full.stats  # skipped records are counted once, not again after resume


def test_exact_resume_map_style(class_dataset):
    source = load_audio_source(class_dataset)
    _resume_matches(lambda: _stream(source, train=True, seed=5, clip_seconds=0.1), k=2, epoch=1)


def test_exact_resume_streamed_parquet(parquet_root):
    """Epoch 1 on purpose: datasets' own IterableDataset.skip() loses the epoch's shuffle."""
    source = load_audio_source(str(parquet_root), split="train", streaming=True)
    make = lambda: _stream(source, train=True, seed=5, clip_seconds=0.1, shuffle_buffer=4)  # noqa: E731
    _resume_matches(make, k=1, epoch=1)
    _resume_matches(make, k=2, epoch=0)


def test_epoch_bookkeeping(class_dataset):
    stream = _stream(load_audio_source(class_dataset), train=True, seed=1)
    assert len(_collect(stream)) == 5
    assert _collect(stream) == []  # a finished epoch stays finished until set_epoch
    stream.set_epoch(1)
    iterator = iter(stream)
    next(iterator)
    iterator.close()  # stopping early leaves the position after the batch taken
    assert stream.state_dict()["examples_consumed"] == 2 and stream.state_dict()["epoch"] == 1
    assert len(_collect(stream)) == 4


def _prefetch_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "audio-stream-prefetch" and t.is_alive()]


def _wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_abandoned_iterators_are_stopped_at_exit(class_dataset):
    """An iterator nobody closes keeps its prefetch thread; the exit hook stops and joins it, so no decoder
    is still running while the interpreter tears down native libraries."""
    assert _wait_until(lambda: not _prefetch_threads())
    stream = _stream(load_audio_source(class_dataset), train=True, seed=1)
    abandoned = iter(stream)
    next(abandoned)
    assert len(_prefetch_threads()) == 1
    assert stop_prefetch_threads(timeout=10.0) == 0
    assert not _prefetch_threads()
    del abandoned


def test_closing_semi_supervised_batches_stops_the_unlabelled_stream(class_dataset):
    source = load_audio_source(class_dataset)
    labeled = _stream(source, train=True, seed=1)
    unlabeled = _stream(source, train=True, seed=2, batch_size=1)
    batches = SemiSupervisedBatches(labeled, unlabeled)
    iterator = iter(batches)
    next(iterator)
    next(iterator)
    assert len(_prefetch_threads()) == 2
    iterator.close()  # what a training loop does when it stops mid-epoch
    assert _wait_until(lambda: not _prefetch_threads())
    assert unlabeled.state_dict()["examples_consumed"] == 2  # its position is kept
    assert batches.state_dict()["labeled"]["examples_consumed"] == 4


# ------------------------------------------------------------------------------------- errors


def test_all_records_failing_raises(tmp_path):
    bad = Dataset.from_dict(
        {"audio": [{"bytes": CORRUPT, "path": None}] * 5, "labels": [[0]] * 5},
        features=Features({"audio": Audio(), "labels": List(ClassLabel(names=["a"]))}),
    )
    with pytest.raises(ValueError, match="all failed"):
        _collect(_stream(load_audio_source(bad), train=False))


def test_invalid_arguments(class_dataset):
    source = load_audio_source(class_dataset)
    with pytest.raises(ValueError, match="batch_size"):
        AudioStream(source, batch_size=0)
    with pytest.raises(ValueError, match="rank"):
        AudioStream(source, batch_size=2, rank=2, world_size=2)
    with pytest.raises(TypeError, match="AudioSource"):
        AudioStream([1, 2], batch_size=2)
    stream = AudioStream(source, batch_size=2, seed=1)
    with pytest.raises(ValueError, match="seed=0"):
        stream.load_state_dict({"epoch": 0, "examples_consumed": 4, "seed": 0})
    with pytest.raises(ValueError, match="label_column"):
        load_audio_source(class_dataset, label_column="missing")
    with pytest.raises(ValueError, match="split 'nope'"):
        load_audio_source(datasets.DatasetDict(train=class_dataset), split="nope")


# ------------------------------------------------------------------------------- extra columns


def _with_embeddings(dataset: Dataset, width: int = 3, fixed: bool = True) -> Dataset:
    """Record i gets the embedding [i, i + 0.5, i + 1, ...], so a batch row names its record."""
    rows = [[i + 0.5 * k for k in range(width)] for i in range(len(dataset))]
    feature = List(Value("float32"), length=width if fixed else -1)
    return dataset.add_column("rr_embedding", rows, feature=feature)


def test_extra_columns_are_batched(class_dataset):
    for fixed in (True, False):  # the width comes from the feature, or from the first record
        dataset = _with_embeddings(class_dataset, fixed=fixed)
        stream = _stream(load_audio_source(dataset), train=True, seed=3, extra_columns=("rr_embedding",))
        assert stream.extra_dims == {"rr_embedding": 3}
        batches = _collect(stream)
        for batch in batches:
            assert batch["rr_embedding"].shape == (2, 3) and batch["rr_embedding"].dtype == torch.float32
            ids = [int(row.nonzero()[0]) for row in batch["labels"]]
            expected = torch.tensor([[i + 0.5 * k for k in range(3)] for i in ids])
            torch.testing.assert_close(batch["rr_embedding"], expected)
    # a stream of the same records: same batches, width read from the first record
    streamed = _with_embeddings(class_dataset, fixed=False).to_iterable_dataset(num_shards=1)
    eval_batches = _collect(_stream(streamed, train=False, extra_columns=["rr_embedding"]))
    assert torch.cat([b["rr_embedding"][:, 0] for b in eval_batches]).tolist() == list(range(11))


def test_extra_column_with_bad_values_is_a_corrupt_record(class_dataset):
    rows = [[float(i)] * 3 for i in range(len(class_dataset))]
    rows[4] = [4.0, 4.0]  # wrong length
    rows[7] = [float("nan")] * 3
    dataset = class_dataset.add_column("rr_embedding", rows, feature=List(Value("float32")))
    stream = _stream(load_audio_source(dataset), train=False, extra_columns=("rr_embedding",))
    ids = _ids(_collect(stream))
    assert ids == [i for i in range(11) if i not in (4, 7)]
    assert stream.stats["skipped"] == 2
    assert any("has shape (2,), expected (3,)" in e for e in stream.stats["errors"])
    assert any("NaN" in e for e in stream.stats["errors"])


def test_extra_columns_resume_exactly(class_dataset):
    source = load_audio_source(_with_embeddings(class_dataset))
    options = {"train": True, "seed": 5, "clip_seconds": 0.1, "extra_columns": ("rr_embedding",)}
    make = lambda: _stream(source, **options)  # noqa: E731
    reference = _collect(make())
    partial = make()
    iterator = iter(partial)
    head = [{k: v.clone() for k, v in next(iterator).items()}]
    state = partial.state_dict()
    iterator.close()
    assert set(state) == {"epoch", "examples_consumed", "seed", "rank", "world_size", "stats"}
    resumed = make()
    resumed.load_state_dict(state)
    tail = _collect(resumed)
    assert len(head + tail) == len(reference)
    for got, want in zip(head + tail, reference, strict=True):
        assert set(got) == {"waveforms", "lengths", "labels", "rr_embedding"}
        for key in got:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_missing_extra_column_names_it(class_dataset):
    columns = r"'rr_embedding' is not in the dataset; its columns are \['audio', 'labels'\]"
    with pytest.raises(ValueError, match=columns):
        _stream(load_audio_source(class_dataset), extra_columns=("rr_embedding",))
    with pytest.raises(ValueError, match="overwrite the batch key"):
        _stream(load_audio_source(class_dataset), extra_columns=("labels",))


def test_closing_semi_supervised_batches_over_plain_iterables():
    """Any batch source may be a plain iterable (a list iterator has no close()); closing mid-epoch must not
    raise, as it did ("'list_iterator' object has no attribute 'close'", logged during the CR tests)."""

    class Batches:
        epoch = 0

        def __init__(self, items):
            self.items = items

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            return iter(self.items)

    batch = {"waveforms": torch.zeros(2, 4), "lengths": torch.full((2,), 4), "labels": torch.zeros(2, 3)}
    iterator = iter(SemiSupervisedBatches(Batches([batch, batch]), Batches([batch])))
    first = next(iterator)
    assert first["unlabeled_waveforms"].shape == (2, 4)
    iterator.close()  # a training loop stopping mid-epoch


# ----------------------------------------------------------------- text, indices and the collate hook


@pytest.fixture(scope="module")
def corpus_train(tmp_path_factory):
    """The smallest embedded corpus: 8 one-second training clips with captions."""
    corpus = load_embedded_corpus(
        num_train=8,
        num_validation=0,
        num_test=0,
        num_heldout=0,
        clip_seconds=1.0,
        cache_dir=tmp_path_factory.mktemp("corpus"),
    )
    return corpus["train"]


def _check_records(batches, dataset, columns=("caption",)) -> list[int]:
    """Every clip's ``indices`` entry names the record whose columns and labels came back with it."""
    indices = []
    for batch in batches:
        assert batch["indices"].dtype == torch.int64 and batch["indices"].shape == (len(batch["labels"]),)
        for row, index in enumerate(batch["indices"].tolist()):
            record = dataset[index]
            for column in columns:
                assert batch[column][row] == record[column]
            assert batch["labels"][row].nonzero().flatten().tolist() == record["labels"]
            indices.append(index)
    return indices


def test_captions_and_indices_through_a_shuffled_map_style_corpus(corpus_train):
    source = load_audio_source(corpus_train)
    columns = ("caption", "label_names", "events")  # a string, a list of strings, a list of dicts
    options = {"train": True, "seed": 3, "batch_size": 3, "extra_columns": columns, "return_index": True}
    ranks = [_stream(source, rank=r, world_size=2, **options) for r in (0, 1)]
    for stream in ranks:
        stream.set_epoch(1)
    per_rank = [_collect(stream) for stream in ranks]
    for batches in per_rank:
        assert all(isinstance(b["caption"], list) and isinstance(b["caption"][0], str) for b in batches)
    # The dataset rows, before the shuffle: disjoint across ranks, and not in dataset order.
    indices = [_check_records(batches, corpus_train, columns) for batches in per_rank]
    assert not set(indices[0]) & set(indices[1]) and len(indices[0]) == len(indices[1]) == 3
    assert indices[0] + indices[1] != sorted(indices[0] + indices[1])
    assert _collect(ranks[0]) == []  # the epoch is finished, as without the new options


def test_captions_and_indices_through_a_shuffled_stream(corpus_train):
    """For a stream, ``indices`` is the position in this rank's (shuffled) record order of the epoch."""
    streamed = corpus_train.to_iterable_dataset(num_shards=2)
    source = load_audio_source(streamed)
    make = lambda: _stream(  # noqa: E731
        source,
        train=True,
        seed=4,
        shuffle_buffer=4,
        drop_last=False,
        extra_columns=("caption",),
        return_index=True,
    )
    stream = make()
    stream.set_epoch(1)
    batches = _collect(stream)
    # The order the stream reads: the source shuffled with the stream's seed, at the epoch.
    order = source.dataset.shuffle(seed=4, buffer_size=4)
    order.set_epoch(1)
    order = list(order)
    positions = _check_records(batches, order)
    assert positions == list(range(len(corpus_train)))  # every record, in reading order
    assert [r["caption"] for r in order] != list(corpus_train["caption"])  # and that order is shuffled

    # Resuming mid-epoch continues the count exactly.
    partial = make()
    partial.set_epoch(1)
    iterator = iter(partial)
    head = [_clone(next(iterator))]
    state = partial.state_dict()
    iterator.close()
    resumed = make()
    resumed.load_state_dict(state)
    tail = _collect(resumed)
    assert torch.cat([b["indices"] for b in head + tail]).tolist() == positions
    assert [c for b in head + tail for c in b["caption"]] == [r["caption"] for r in order]

    # Unshuffled on one process, the position is the record's position in the stream itself.
    plain = _collect(_stream(source, train=False, extra_columns=("caption",), return_index=True))
    assert _check_records(plain, corpus_train) == list(range(len(corpus_train)))


def test_custom_collate_fn(class_dataset):
    captions = [f"clip {i} " + "la " * i for i in range(len(class_dataset))]
    dataset = class_dataset.add_column("caption", captions)

    def tokenize(records):  # what a tokenizer call does: ids padded to the longest, and a mask
        ids = [[len(word) for word in r["caption"].split()] for r in records]
        width = max(map(len, ids))
        return {
            "input_ids": torch.tensor([x + [0] * (width - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
            "caption": [r["caption"] for r in records],
        }

    for source in (dataset, dataset.to_iterable_dataset(num_shards=1)):
        stream = _stream(
            source,
            train=False,
            extra_columns=("caption",),
            collate_fn=tokenize,
            return_index=True,
            batch_size=3,
        )
        batches = _collect(stream)
        for batch in batches:
            assert set(batch) == {
                "waveforms",
                "lengths",
                "labels",
                "indices",
                "input_ids",
                "attention_mask",
                "caption",
            }
            for row, index in enumerate(batch["indices"].tolist()):
                assert batch["caption"][row] == captions[index]
                assert batch["attention_mask"][row].sum() == len(captions[index].split())
        assert torch.cat([b["indices"] for b in batches]).tolist() == list(range(11))

    # The stream's own keys cannot be replaced, and the error reaches the training loop.
    clash = _stream(dataset, extra_columns=("caption",), collate_fn=lambda records: {"labels": 0})
    with pytest.raises(ValueError, match=r"collate_fn returned \['labels'\]"):
        _collect(clash)
    with pytest.raises(ValueError, match="ragged_columns"):
        _stream(dataset, collate_fn=tokenize, ragged_columns=("caption",))
    with pytest.raises(ValueError, match="overwrite the batch key"):
        _stream(dataset.add_column("indices", list(range(11))), extra_columns=("indices",), return_index=True)


def test_extras_of_any_shape(class_dataset):
    """Ragged per-clip arrays come back as lists of tensors; fixed shapes of any rank are stacked."""
    n = len(class_dataset)
    frames = [np.full((i % 4 + 1, 2), i, dtype=np.float32).tolist() for i in range(n)]  # (T_i, 2)
    tokens = [list(range(i, i + i % 3)) for i in range(n)]  # token ids, some clips without any
    dataset = (
        class_dataset.add_column("frames", frames, feature=List(List(Value("float32"))))
        .add_column("token_ids", tokens, feature=List(Value("int64")))
        .add_column("grid", [[[i, -i]] * 3 for i in range(n)], feature=List(List(Value("int32"), 2), 3))
        .add_column("scene_id", [i % 5 for i in range(n)], feature=ClassLabel(num_classes=5))
        .add_column("weight", [0.5 * i for i in range(n)], feature=Value("float64"))
    )
    for source in (dataset, dataset.to_iterable_dataset(num_shards=2)):
        stream = _stream(
            source,
            train=True,
            seed=1,
            drop_last=False,
            extra_columns=("grid", "scene_id", "weight"),
            ragged_columns=("frames", "token_ids"),
            return_index=True,
            batch_size=4,
        )
        assert (
            stream.extra_shapes == {"grid": (3, 2), "scene_id": (), "weight": ()} and stream.extra_dims == {}
        )
        seen = []
        for batch in _collect(stream):
            assert [x.dtype for x in (batch["grid"], batch["scene_id"], batch["weight"])] == [
                torch.int64,
                torch.int64,
                torch.float32,
            ]
            assert isinstance(batch["frames"], list) and isinstance(batch["token_ids"], list)
            for row in range(len(batch["labels"])):
                i = int(batch["labels"][row].nonzero()[0])  # the record, from its distinct class
                assert batch["frames"][row].dtype == torch.float32 and batch["frames"][row].shape == (
                    i % 4 + 1,
                    2,
                )
                assert (batch["frames"][row] == i).all()
                assert (
                    batch["token_ids"][row].dtype == torch.int64
                    and batch["token_ids"][row].tolist() == tokens[i]
                )
                assert batch["grid"][row].tolist() == [[i, -i]] * 3
                assert batch["scene_id"][row].item() == i % 5 and batch["weight"][row].item() == 0.5 * i
                seen.append(i)
        assert sorted(seen) == list(range(n))

    # Without a feature that fixes the shape, the first record decides; an empty one cannot.
    with pytest.raises(ValueError, match="ragged_columns"):
        _stream(
            dataset.map(lambda r: {"token_ids": []}, features=dataset.features), extra_columns=("token_ids",)
        )
    # Ragged numbers are still checked: a non-finite value makes the record corrupt.
    bad = dataset.map(
        lambda r, i: {"frames": [[float("nan")] * 2] if i == 6 else r["frames"]}, with_indices=True
    )
    stream = _stream(bad, train=False, ragged_columns=("frames",))
    assert len(_ids(_collect(stream))) == n - 1 and stream.stats["skipped"] == 1


def test_stream_factory_passes_the_batch_options_through(corpus_train):
    factory = StreamFactory(
        {"train": load_audio_source(corpus_train)},
        DataArguments(clip_seconds=CLIP, num_decode_threads=0),
        batch_size=4,
        sample_rate=SR,
        seed=0,
        rank=0,
        world_size=1,
    )
    stream = factory("train", True, extra_columns="caption", return_index=True, collate_fn=None)
    assert sorted(_check_records(_collect(stream), corpus_train)) == list(range(8))
    stream = factory("train", False, collate_fn=lambda records: {"n": len(records)}, extra_columns=["scene"])
    assert [b["n"] for b in stream] == [4, 4]
