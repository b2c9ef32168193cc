"""Probes on several tasks of one corpus: each task's probe sees exactly the clips it applies to, with their
own labels, from one embedding pass per split; the trivial baseline is computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_audiorep import AudioMAEConfig, AudioMAEModel
from hf_audiorep.data.embedded import ATTRIBUTE_TASKS, load_embedded_corpus
from hf_audiorep.evaluation import ProbeTask, corpus_probe_tasks, linear_probe, probe_tasks
from hf_audiorep.evaluation import task_probes as task_probes_module
from hf_audiorep.evaluation.linear_probe import chance_baseline
from hf_audiorep.modeling import AudioFbankFeatureExtractor

SIZES = {"clip_seconds": 1.0, "num_train": 40, "num_validation": 0, "num_test": 24}


@pytest.fixture(scope="module")
def corpus():
    return load_embedded_corpus(**SIZES)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=112)
    return AudioMAEModel(config).eval(), AudioFbankFeatureExtractor(target_length=112)


def _embeddings(model, fe, dataset):
    """Every clip's pooled embedding, one clip at a time, in dataset order: the independent path."""
    rows = []
    for audio in dataset.cast_column("audio", dataset.features["audio"].__class__(sampling_rate=16000))[
        "audio"
    ]:
        inputs = fe(audio["array"], sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            rows.append(model(**inputs).pooler_output[0].numpy())
    return np.stack(rows)


def test_each_task_probes_its_own_clips_and_labels(corpus, encoder):
    model, fe = encoder
    loudness = ATTRIBUTE_TASKS["loudness"]
    pitch = ATTRIBUTE_TASKS["speech_pitch"]
    tasks = corpus_probe_tasks(["events", "loudness", "speech_pitch"])
    results = probe_tasks(
        model, fe, {"train": corpus["train"], "test": corpus["test"]}, tasks, clip_seconds=1.0
    )

    X = {role: _embeddings(model, fe, corpus[role]) for role in ("train", "test")}
    events = linear_probe(
        X["train"], _multi_hot(corpus["train"]), X["test"], _multi_hot(corpus["test"]), multi_label=True
    )
    assert results["events/probe_mAP"] == pytest.approx(events["probe_mAP"], abs=1e-3)
    for task in (loudness, pitch):
        kept = {role: np.array([task.applies(v) for v in corpus[role][task.column]]) for role in X}
        y = {role: np.asarray(corpus[role][task.column])[kept[role]] for role in X}
        expected = linear_probe(
            X["train"][kept["train"]], y["train"], X["test"][kept["test"]], y["test"], multi_label=False
        )
        assert results[f"{task.name}/probe_num_clips"] == kept["test"].sum()
        assert results[f"{task.name}/probe_num_train_clips"] == kept["train"].sum()
        assert results[f"{task.name}/probe_accuracy"] == pytest.approx(expected["probe_accuracy"], abs=1e-9)
        majority = np.bincount(y["train"]).argmax()
        assert results[f"{task.name}/chance_accuracy"] == pytest.approx(np.mean(y["test"] == majority))
    assert kept["test"].sum() < len(corpus["test"])  # speech pitch applies to some clips only


def _multi_hot(dataset) -> np.ndarray:
    classes = dataset.features["labels"].feature.num_classes
    out = np.zeros((len(dataset), classes), np.float32)
    for row, labels in enumerate(dataset["labels"]):
        out[row, labels] = 1.0
    return out


def test_each_split_is_embedded_once_and_limits_take_the_first_clips(corpus, encoder, monkeypatch):
    model, fe = encoder
    calls = []
    real = task_probes_module.extract_embeddings

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(task_probes_module, "extract_embeddings", counting)
    results = probe_tasks(
        model, fe, {"train": corpus["train"], "test": corpus["test"]}, corpus_probe_tasks(),
        clip_seconds=1.0, batch_size=8, train_clips=20, test_clips=12,
    )  # fmt: skip
    assert len(calls) == 2  # one pass per split for all the tasks
    assert results["events/probe_num_train_clips"] == 20 and results["events/probe_num_clips"] == 12


def test_chance_is_the_prevalence_and_the_majority_class():
    chance = chance_baseline(np.array([0, 0, 1, 2]), np.array([1, 1, 0, 1]))
    assert chance == {"chance_mAP": pytest.approx((0.25 + 0.75) / 2), "chance_accuracy": 0.25}
    multi = chance_baseline(np.zeros((2, 3)), np.array([[1, 0, 0], [1, 1, 0]], np.float32))
    assert multi == {"chance_mAP": pytest.approx((1.0 + 0.5) / 2)}


def test_errors(corpus, encoder):
    model, fe = encoder
    splits = {"train": corpus["train"], "test": corpus["test"]}
    with pytest.raises(ValueError, match="at least one probe task"):
        probe_tasks(model, fe, splits, [])
    with pytest.raises(ValueError, match=r"missing \['test'\]"):
        probe_tasks(model, fe, {"train": corpus["train"]}, corpus_probe_tasks(["events"]))
    nowhere = ProbeTask("nowhere", "loudness", multi_label=False, applies=lambda value: False)
    with pytest.raises(ValueError, match="'nowhere': no clip of the split has the attribute"):
        probe_tasks(model, fe, splits, [nowhere], clip_seconds=1.0)
    with pytest.raises(ValueError, match="unknown probe task"):
        corpus_probe_tasks(["events", "colour"])
