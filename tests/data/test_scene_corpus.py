"""The embedded acoustic-scene corpus: splits, held-out scenes, devices, determinism, cache, separability."""

import io
import re

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from datasets import Audio, ClassLabel, DatasetDict

from hf_audiorep.data.embedded import (
    DEVICES,
    HELDOUT_SCENES,
    SCENE_CLASSES,
    SCENE_NAMES,
    SCENES,
    load_embedded_scenes,
    scene_corpus,
    scene_corpus_cache_path,
)

DEVICE_NAMES = [d.name for d in DEVICES]
SEEN = {d.name for d in DEVICES if d.seen}
# Three clips of every closed-set scene in train, one in validation, three of every device in test.
SMALL = dict(seed=0, num_train=33, num_validation=11, num_test=27, num_heldout=12, clip_seconds=1.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("scenes")
    return load_embedded_scenes(**SMALL, cache_dir=cache), cache


def _audio_bytes(dataset):
    return [a["bytes"] for a in dataset.cast_column("audio", Audio(decode=False))["audio"]]


def _names(dataset, column):
    feature = dataset.features[column]
    return [feature.int2str(v) for v in dataset[column]]


def test_scene_table_holds_out_enough_scenes():
    assert len(SCENE_CLASSES) >= 10 and len(HELDOUT_SCENES) >= 5
    assert not set(SCENE_CLASSES) & set(HELDOUT_SCENES)
    assert SCENE_NAMES == SCENE_CLASSES + HELDOUT_SCENES
    # The event corpus's scenes are all here, and unchanged.
    assert {s.name for s in SCENES} <= set(SCENE_NAMES)


def test_splits_columns_and_features(small):
    dataset, _ = small
    assert isinstance(dataset, DatasetDict) and list(dataset) == ["train", "validation", "test", "heldout"]
    for split, rows in dataset.items():
        assert len(rows) == SMALL[f"num_{split}"]
        features = rows.features
        assert features["audio"].sampling_rate == 32000
        assert isinstance(features["scene"], ClassLabel) and features["scene"].names == list(SCENE_NAMES)
        assert isinstance(features["device"], ClassLabel) and features["device"].names == DEVICE_NAMES
        assert rows["index"] == list(range(len(rows)))
        assert all(re.fullmatch(rf"{split}_\d{{5}}", c) for c in rows["clip_id"])
        assert all(caption.startswith("Ambient sound") for caption in rows["caption"])
    clip = dataset["test"].with_format("numpy")[0]["audio"]
    waveform = np.asarray(clip["array"]) if isinstance(clip, dict) else clip.get_all_samples().data.numpy()
    assert waveform.size == 32000 and np.isfinite(waveform).all() and np.abs(waveform).max() > 0


def test_heldout_scenes_occur_only_in_the_heldout_split(small):
    dataset, _ = small
    for split in ("train", "validation", "test"):
        scenes = _names(dataset[split], "scene")
        assert set(scenes) == set(SCENE_CLASSES), split  # every closed-set scene, and nothing else
        assert max(dataset[split]["scene"]) < len(SCENE_CLASSES)
    assert set(_names(dataset["heldout"], "scene")) == set(HELDOUT_SCENES)


def test_unseen_devices_never_record_training_clips(small):
    dataset, _ = small
    for split in ("train", "validation"):
        assert set(_names(dataset[split], "device")) <= SEEN
        assert all(dataset[split]["seen_device"])
    test_devices = _names(dataset["test"], "device")
    assert set(test_devices) == set(DEVICE_NAMES)  # every device, three clips each
    assert dataset["test"]["seen_device"] == [name in SEEN for name in test_devices]
    assert set(_names(dataset["heldout"], "device")) - SEEN  # held-out scenes through unseen devices too
    train = _names(dataset["train"], "device")
    assert train.count("A") > max(train.count(name) for name in SEEN - {"A"})  # mostly the reference


def test_same_seed_same_audio_other_seed_differs(small, tmp_path, monkeypatch):
    dataset, _ = small
    monkeypatch.setattr(scene_corpus, "_CHUNK_CLIPS", 5)  # written in several Arrow chunks: same corpus
    # ... rendered by two worker processes: same corpus
    again = load_embedded_scenes(**SMALL, cache_dir=tmp_path / "again", num_proc=2)
    for split in dataset:
        assert _audio_bytes(again[split]) == _audio_bytes(dataset[split])
        for column in ("scene", "device", "events", "caption"):
            assert again[split][column] == dataset[split][column]
    only_train = {"num_validation": 0, "num_test": 0, "num_heldout": 0}
    other = load_embedded_scenes(**{**SMALL, **only_train, "seed": 1}, cache_dir=tmp_path / "other")
    assert _audio_bytes(other["train"])[0] != _audio_bytes(dataset["train"])[0]
    # A clip depends on (seed, split, index): a longer split keeps its first clips and the others.
    grown = load_embedded_scenes(**{**SMALL, "num_train": 44, "num_heldout": 0}, cache_dir=tmp_path / "grown")
    assert _audio_bytes(grown["train"])[:33] == _audio_bytes(dataset["train"])
    assert _audio_bytes(grown["test"]) == _audio_bytes(dataset["test"])


def test_second_load_is_a_cache_hit(small, monkeypatch):
    dataset, cache = small
    path = scene_corpus_cache_path(**SMALL, cache_dir=cache)
    assert (path / "corpus.json").is_file() and not list(cache.glob(".tmp-*"))

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached corpus must not be regenerated")

    monkeypatch.setattr(scene_corpus, "_scene_rows", no_generation)
    again = load_embedded_scenes(**SMALL, cache_dir=cache)
    assert _audio_bytes(again["heldout"]) == _audio_bytes(dataset["heldout"])
    # ... while a new configuration is generated, through the same (spied) generator.
    with pytest.raises(AssertionError, match="must not be regenerated"):
        load_embedded_scenes(**{**SMALL, "seed": 3}, cache_dir=cache)
    assert scene_corpus_cache_path(**{**SMALL, "seed": 3}, cache_dir=cache) != path


def test_default_cache_dir_is_apart_from_the_event_corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert scene_corpus_cache_path().parent == tmp_path / "hf_audiorep" / "scenes"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"num_train": 5}, "num_train=5 is too small"),
        ({"num_heldout": 2}, "num_heldout=2 is too small"),
        ({"num_test": 2.5}, "num_test"),
        ({"sample_rate": 8000}, "sample_rate"),
        ({"clip_seconds": 0.1}, "clip_seconds"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_embedded_scenes(**{**SMALL, **kwargs}, cache_dir=tmp_path)


def test_the_same_content_through_two_devices():
    def rng():
        return np.random.default_rng(np.random.SeedSequence(7))

    reference, events = scene_corpus._render_scene(0, DEVICES[0], 1.0, 32000, rng())
    again, _ = scene_corpus._render_scene(0, DEVICES[0], 1.0, 32000, rng())
    phone, phone_events = scene_corpus._render_scene(0, DEVICES[7], 1.0, 32000, rng())
    np.testing.assert_array_equal(reference, again)
    assert events == phone_events and not np.allclose(reference, phone, atol=1e-3)
    # The narrow-band device (S5: 400 Hz - 5 kHz) takes away the lows and highs of the same content.
    spectra = [np.abs(np.fft.rfft(x)) ** 2 for x in (reference, phone)]
    freqs = np.fft.rfftfreq(32000, 1 / 32000)
    mid = (freqs > 800) & (freqs < 3000)
    outer = (freqs < 150) | (freqs > 9000)
    ratios = [s[outer].sum() / s[mid].sum() for s in spectra]
    assert ratios[1] < 0.2 * ratios[0]


@pytest.mark.slow
def test_seen_scenes_are_separable_from_mean_log_mel(tmp_path):
    """A logistic regression on clip-level log-mel statistics beats chance (1/11) by far on the
    closed-set scenes, through every device (measured 0.32-0.33 for seeds 0-1; chance 0.09)."""
    from sklearn.linear_model import LogisticRegression

    dataset = load_embedded_scenes(
        seed=0,
        num_train=176,
        num_validation=0,
        num_test=66,
        num_heldout=0,
        sample_rate=16000,
        cache_dir=tmp_path,
    )
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=256, n_mels=40)

    def statistics(split):
        waveforms = np.stack(
            [sf.read(io.BytesIO(b), dtype="float32")[0] for b in _audio_bytes(dataset[split])]
        )
        log_mel = torch.log(mel(torch.from_numpy(waveforms)) + 1e-8)
        return torch.cat([log_mel.mean(-1), log_mel.std(-1)], dim=1).numpy()

    train, test = statistics("train"), statistics("test")
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    probe = LogisticRegression(max_iter=2000).fit((train - mean) / std, dataset["train"]["scene"])
    accuracy = float(np.mean(probe.predict((test - mean) / std) == np.array(dataset["test"]["scene"])))
    assert accuracy > 2 / len(SCENE_CLASSES), accuracy
