"""The embedded corpus: ontology, determinism, splits, captions, cache, decoding, learnability."""

import inspect
import io
import os
import re
import time

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from datasets import Audio, ClassLabel, DatasetDict, List

from hf_audiorep.data.embedded import (
    ATTRIBUTE_TASKS,
    EMBEDDED_ONTOLOGY,
    SCENES,
    corpus,
    corpus_cache_path,
    load_embedded_corpus,
    synth,
)

ONTOLOGY = EMBEDDED_ONTOLOGY
MAIN = set(ONTOLOGY.main_classes)
SMALL = dict(seed=0, num_train=16, num_validation=8, num_test=30, num_heldout=12, clip_seconds=2.0)
TINY = dict(seed=0, num_train=8, num_validation=0, num_test=8, num_heldout=6, clip_seconds=1.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    cache = tmp_path_factory.mktemp("corpus")
    return load_embedded_corpus(**SMALL, cache_dir=cache), cache


def _audio_bytes(dataset):
    return [a["bytes"] for a in dataset.cast_column("audio", Audio(decode=False))["audio"]]


def _centroid(waveform: np.ndarray, sample_rate: int = 16000) -> float:
    power = np.abs(np.fft.rfft(waveform)) ** 2
    return float((power * np.fft.rfftfreq(waveform.size, 1 / sample_rate)).sum() / power.sum())


# ---------------------------------------------------------------------------- ontology and scenes


def test_ontology_shape():
    assert len(ONTOLOGY) >= 30 and len(ONTOLOGY.families) >= 6
    assert len(set(ONTOLOGY.names)) == len(ONTOLOGY) and len(set(ONTOLOGY.ids)) == len(ONTOLOGY)
    assert all(re.fullmatch(r"/hf/e/\d{3}", mid) for mid in ONTOLOGY.ids)
    assert all(re.fullmatch(r"/hf/f/\d{2}", family.id) for family in ONTOLOGY.families)
    for family_index, family in enumerate(ONTOLOGY.families):
        assert len(family.children) >= 5
        assert all(ONTOLOGY.parent_of[child] == family_index for child in family.children)
    assert sorted(c for f in ONTOLOGY.families for c in f.children) == list(range(len(ONTOLOGY)))
    assert set(ONTOLOGY.recipes) <= set(synth.RECIPES)
    assert ONTOLOGY.index("Dog bark") == ONTOLOGY.index(ONTOLOGY.ids[ONTOLOGY.names.index("Dog bark")])
    with pytest.raises(KeyError):
        ONTOLOGY.index("Didgeridoo")


def test_heldout_classes_span_families():
    assert len(ONTOLOGY.heldout) >= 6
    assert len({ONTOLOGY.parent_of[i] for i in ONTOLOGY.heldout}) >= 3
    assert MAIN.isdisjoint(ONTOLOGY.heldout) and len(MAIN) + len(ONTOLOGY.heldout) == len(ONTOLOGY)


def test_scenes_cover_every_class():
    assert len(SCENES) >= 8 and len({s.name for s in SCENES}) == len(SCENES)
    weighted = {name for scene in SCENES for name, weight in scene.weights if weight > 0}
    assert weighted == set(ONTOLOGY.names)
    rng = np.random.default_rng(0)
    for scene in SCENES:
        params = scene.draw_background(rng)
        background = synth.render_background(params, 8000, 16000, rng)
        assert background.dtype == np.float32 and np.isfinite(background).all()
        assert np.sqrt(np.mean(background**2)) == pytest.approx(1.0, rel=1e-3)


# ---------------------------------------------------------------------------- synthesis


def test_every_recipe_renders_and_varies():
    for name in synth.RECIPES:
        events = [synth.synthesize(name, np.random.default_rng(seed), 16000, 10.0) for seed in range(4)]
        for event in events:
            assert event.waveform.dtype == np.float32 and event.waveform.ndim == 1
            assert np.isfinite(event.waveform).all() and np.max(np.abs(event.waveform)) == pytest.approx(1.0)
            assert event.units >= 1
        # Random parameters, not a template: the spectral centroid moves between instances.
        centroids = np.array([_centroid(e.waveform) for e in events])
        assert centroids.std() / centroids.mean() > 0.02, name
        assert len({e.waveform.tobytes() for e in events}) == 4, name


def test_recipes_respect_max_seconds_and_sample_rate():
    for name in synth.RECIPES:
        for sample_rate, seconds in ((16000, 0.5), (32000, 1.0)):
            waveform = synth.synthesize(name, np.random.default_rng(1), sample_rate, seconds).waveform
            assert 0 < waveform.size <= round(seconds * sample_rate), name
            assert np.isfinite(waveform).all(), name


def test_synthesize_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown sound recipe"):
        synth.synthesize("theremin", np.random.default_rng(0))
    with pytest.raises(ValueError, match="sample_rate"):
        synth.synthesize("bell", np.random.default_rng(0), sample_rate=8000)
    with pytest.raises(ValueError, match="max_seconds"):
        synth.synthesize("bell", np.random.default_rng(0), max_seconds=0)


# ---------------------------------------------------------------------------- splits and columns


def test_splits_columns_and_features(small):
    dataset, _ = small
    assert isinstance(dataset, DatasetDict) and list(dataset) == ["train", "validation", "test", "heldout"]
    sizes = {split: len(rows) for split, rows in dataset.items()}
    assert sizes == {"train": 16, "validation": 8, "test": 30, "heldout": 12}
    features = dataset["train"].features
    assert isinstance(features["audio"], Audio) and features["audio"].sampling_rate == 16000
    assert isinstance(features["labels"], List) and isinstance(features["labels"].feature, ClassLabel)
    assert features["labels"].feature.names == list(ONTOLOGY.names)
    columns = {"clip_id", "audio", "labels", "label_names", "caption", "scene", "events"}
    assert set(features) == columns | set(ATTRIBUTE_TASKS)  # attribute columns: test_corpus_attributes.py
    assert len(set(dataset["train"]["clip_id"]) | set(dataset["test"]["clip_id"])) == 46


def test_labels_events_and_scenes_are_consistent(small):
    dataset, _ = small
    scene_names = {s.name for s in SCENES}
    for split in ("train", "validation", "test"):
        for row in dataset[split]:
            assert len(row["labels"]) in range(1, 5) and row["labels"] == sorted(set(row["labels"]))
            assert row["labels"] == sorted({e["label"] for e in row["events"]})
            assert row["label_names"] == [ONTOLOGY.names[i] for i in row["labels"]]
            assert row["scene"] in scene_names
            for event in row["events"]:
                assert 0.0 <= event["onset_s"] < event["offset_s"] <= SMALL["clip_seconds"] + 1e-4
                assert -5.0 <= event["snr_db"] <= 20.0 and event["repetitions"] >= 1
    # Clips hold several events on average: the task is multi-label, not multi-class.
    counts = [len(labels) for labels in dataset["train"]["labels"]]
    assert np.mean(counts) >= 1.5 and np.mean(counts) <= 3.0 and max(counts) > 1


def test_heldout_classes_only_in_heldout_split(small):
    dataset, _ = small
    for split in ("train", "validation", "test"):
        assert not {c for labels in dataset[split]["labels"] for c in labels} & ONTOLOGY.heldout
    heldout_labels = dataset["heldout"]["labels"]
    assert all(len(labels) == 1 and labels[0] in ONTOLOGY.heldout for labels in heldout_labels)
    # Dealt evenly: 12 clips over 6 classes is 2 support/query clips per class.
    assert sorted(np.bincount([labels[0] for labels in heldout_labels])[sorted(ONTOLOGY.heldout)]) == [2] * 6


def test_every_main_class_has_a_test_positive(small, tmp_path):
    dataset, _ = small
    assert {c for labels in dataset["test"]["labels"] for c in labels} == MAIN
    # Also in the smallest allowed split, where clips carry several guaranteed classes each.
    minimum = -(-len(MAIN) // corpus.MAX_EVENTS)
    tiny = load_embedded_corpus(
        seed=3,
        num_train=0,
        num_validation=0,
        num_test=minimum,
        num_heldout=0,
        clip_seconds=1.0,
        cache_dir=tmp_path,
    )
    assert len(tiny["train"]) == 0 and len(tiny["heldout"]) == 0
    assert {c for labels in tiny["test"]["labels"] for c in labels} == MAIN


def test_captions_describe_the_clip(small):
    dataset, _ = small
    captions = []
    for split in ("train", "test", "heldout"):
        for row in dataset[split]:
            caption = row["caption"]
            assert caption[0].isupper() and caption.endswith(".") and len(caption.split()) >= 5
            text = caption.lower()
            for event in row["events"]:
                phrases = ONTOLOGY.phrases[event["label"]]
                assert any(p in text for p in phrases.clauses + phrases.nouns), (caption, event)
            scene = next(s for s in SCENES if s.name == row["scene"])
            assert any(place in text for place in scene.places), caption
            captions.append(caption)
    assert len(set(captions)) >= 0.9 * len(captions)  # templates and synonyms vary


def test_audio_decodes_through_the_audio_column(small):
    dataset, _ = small
    decoded = dataset["train"][0]["audio"]
    samples = decoded.get_all_samples()
    assert samples.sample_rate == 16000 and tuple(samples.data.shape) == (1, 32000)
    array = dataset["test"][1]["audio"]["array"]
    peak = np.max(np.abs(array))
    assert 0.05 < peak <= 1.0 and np.std(array) > 1e-3
    data, rate = sf.read(io.BytesIO(_audio_bytes(dataset["validation"])[0]))
    info = sf.info(io.BytesIO(_audio_bytes(dataset["validation"])[0]))
    assert rate == 16000 and info.format == "FLAC" and info.subtype == "PCM_16" and data.shape == (32000,)


def test_clips_of_one_class_differ(small):
    dataset, _ = small
    # Two single-event held-out clips of the same class are two different renderings.
    heldout = dataset["heldout"]
    first = {}
    for index, labels in enumerate(heldout["labels"]):
        first.setdefault(labels[0], []).append(index)
    a, b = next(v for v in first.values() if len(v) >= 2)[:2]
    wave_a, wave_b = heldout[a]["audio"]["array"], heldout[b]["audio"]["array"]
    assert not np.allclose(wave_a, wave_b)
    assert abs(_centroid(wave_a) - _centroid(wave_b)) > 10.0  # Hz


# ---------------------------------------------------------------------------- determinism and cache


def test_same_seed_same_corpus_other_seed_differs(tmp_path, monkeypatch):
    first = load_embedded_corpus(**TINY, cache_dir=tmp_path / "a")
    monkeypatch.setattr(corpus, "_CHUNK_CLIPS", 3)  # written in several Arrow chunks: same corpus
    # ... rendered by two worker processes: same corpus
    again = load_embedded_corpus(**TINY, cache_dir=tmp_path / "b", num_proc=2)
    other = load_embedded_corpus(**{**TINY, "seed": 1}, cache_dir=tmp_path / "c")
    for split in ("train", "test", "heldout"):
        assert _audio_bytes(first[split]) == _audio_bytes(again[split])
        for column in ("labels", "caption", "scene", "events"):
            assert list(first[split][column]) == list(again[split][column])
    assert _audio_bytes(first["train"])[0] != _audio_bytes(other["train"])[0]
    assert list(first["train"]["labels"]) != list(other["train"]["labels"])
    # Clips depend on (seed, split, index): growing one split leaves the others, and the first clips
    # of a split that already dealt every class once, unchanged.
    grown = load_embedded_corpus(**{**TINY, "num_train": 12, "num_heldout": 9}, cache_dir=tmp_path / "d")
    assert _audio_bytes(grown["test"]) == _audio_bytes(first["test"])
    assert _audio_bytes(grown["heldout"])[:6] == _audio_bytes(first["heldout"])


def test_second_load_is_a_fast_cache_hit(small, monkeypatch):
    dataset, cache = small
    path = corpus_cache_path(**SMALL, cache_dir=cache)
    assert path.parent == cache and (path / "corpus.json").is_file()
    assert not list(cache.glob(".tmp-*"))

    def no_generation(*args, **kwargs):
        raise AssertionError("a cached corpus must not be regenerated")

    monkeypatch.setattr(corpus, "_split_rows", no_generation)
    again = load_embedded_corpus(**SMALL, cache_dir=cache)  # no generation: `no_generation` would raise
    assert list(again["test"]["caption"]) == list(dataset["test"]["caption"])
    assert _audio_bytes(again["train"]) == _audio_bytes(dataset["train"])
    assert corpus_cache_path(**{**SMALL, "seed": 1}, cache_dir=cache) != path


def test_cache_path_takes_the_loader_defaults():
    load, path = (inspect.signature(f).parameters for f in (load_embedded_corpus, corpus_cache_path))
    # num_proc only decides how many processes render the clips: the corpus does not depend on it.
    assert {k: p.default for k, p in load.items() if k != "num_proc"} == {
        k: p.default for k, p in path.items()
    }


def test_default_cache_dir_follows_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert corpus_cache_path(**TINY).parent == tmp_path / "hf_audiorep" / "corpus"


def test_crash_leaves_no_cache_and_stale_temporaries_are_ignored(tmp_path, monkeypatch):
    path = corpus_cache_path(**TINY, cache_dir=tmp_path)
    original = corpus._split_rows

    def crash_on_test(split, *args, **kwargs):
        if split == "test":
            raise RuntimeError("simulated crash")
        return original(split, *args, **kwargs)

    monkeypatch.setattr(corpus, "_split_rows", crash_on_test)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_embedded_corpus(**TINY, cache_dir=tmp_path)
    assert not path.exists() and not list(tmp_path.glob(".tmp-*"))
    monkeypatch.setattr(corpus, "_split_rows", original)

    # Leftovers of a crashed run: an old temporary directory, a recent one (maybe another live
    # process), and a final directory without its completion marker.
    stale, live = tmp_path / f".tmp-{path.name}-stale", tmp_path / f".tmp-{path.name}-live"
    for leftover in (stale, live, path / "train"):
        leftover.mkdir(parents=True)
        (leftover / "junk.arrow").write_bytes(b"not an arrow file")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    dataset = load_embedded_corpus(**TINY, cache_dir=tmp_path)
    assert len(dataset["train"]) == TINY["num_train"] and (path / "corpus.json").is_file()
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"num_test": 3}, "num_test=3 is too small"),
        ({"num_train": 2.5}, "num_train"),
        ({"clip_seconds": 0.1}, "clip_seconds"),
        ({"sample_rate": 8000}, "sample_rate"),
        ({"num_proc": 0}, "num_proc"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_embedded_corpus(**{**TINY, **kwargs}, cache_dir=tmp_path)


# ---------------------------------------------------------------------------- learnability


def _log_mel_stats(dataset) -> np.ndarray:
    waveforms = np.stack([sf.read(io.BytesIO(b), dtype="float32")[0] for b in _audio_bytes(dataset)])
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=64)
    log_mel = torch.log(mel(torch.from_numpy(waveforms)) + 1e-6)
    return torch.cat([log_mel.mean(-1), log_mel.std(-1)], dim=1).numpy()


def test_learnable_but_not_trivial(tmp_path):
    """A linear probe on clip-level log-mel statistics beats chance by far but stays far from
    perfect (measured ~0.38-0.41 macro mAP against ~0.07 chance for seeds 0-2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    dataset = load_embedded_corpus(
        seed=0,
        num_train=240,
        num_validation=0,
        num_test=100,
        num_heldout=0,
        clip_seconds=3.0,
        cache_dir=tmp_path,
    )
    classes = sorted(MAIN)

    def multi_hot(split):
        targets = np.zeros((len(dataset[split]), len(ONTOLOGY)))
        for row, labels in enumerate(dataset[split]["labels"]):
            targets[row, labels] = 1
        return targets[:, classes]

    train_features = _log_mel_stats(dataset["train"])
    scaler = StandardScaler().fit(train_features)
    probe = OneVsRestClassifier(LogisticRegression(C=0.5, max_iter=2000))
    probe.fit(scaler.transform(train_features), multi_hot("train"))
    scores = probe.predict_proba(scaler.transform(_log_mel_stats(dataset["test"])))
    targets = multi_hot("test")
    assert (targets.sum(0) > 0).all()
    macro_map = average_precision_score(targets, scores, average="macro")
    chance = targets.mean()
    assert macro_map > max(3 * chance, chance + 0.15), (macro_map, chance)
    assert macro_map < 0.8, macro_map
