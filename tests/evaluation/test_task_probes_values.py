"""Task probes by value, with an encoder whose embedding is what it was given: the clips reach it at the
feature extractor's rate and the asked length, only the batches a limit needs are encoded, a task without
an ``applies`` filter keeps every clip, and the trivial baseline's edges (soft labels at 0.5)."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from hf_audiorep.data.embedded import load_embedded_corpus
from hf_audiorep.evaluation import ProbeTask, corpus_probe_tasks, probe_tasks
from hf_audiorep.evaluation import task_probes as task_probes_module
from hf_audiorep.evaluation.linear_probe import chance_baseline


class _WaveformFeatures:
    """The "features" are the waveforms themselves, at a rate unlike the corpus's 16 kHz."""

    sampling_rate = 8000

    def batch_features(self, waveforms, lengths):
        mask = torch.arange(waveforms.shape[1])[None, :] < lengths[:, None]
        return waveforms, mask.long()


class _WidthEncoder(nn.Module):
    """Embeds each clip as (samples it was given, its valid samples, its energy); counts its calls."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # a device for extract_embeddings
        self.calls = 0

    def forward(self, input_values, attention_mask):
        self.calls += 1
        width = torch.full((len(input_values),), float(input_values.shape[1]))
        valid = attention_mask.sum(1).float()
        energy = input_values.pow(2).mean(1)
        return SimpleNamespace(pooler_output=torch.stack([width, valid, energy], 1))


@pytest.fixture(scope="module")
def corpus():
    data = load_embedded_corpus(clip_seconds=1.0, num_train=30, num_validation=0, num_test=20)
    return {"train": data["train"], "test": data["test"]}


def _embed(monkeypatch, corpus, **options):
    """Run probe_tasks on the loudness task and return the embeddings the probe was fitted on."""
    fitted = []
    real = task_probes_module.linear_probe

    def recording(X_train, y_train, X_test, y_test, **kwargs):
        fitted.append((X_train, X_test))
        return real(X_train, y_train, X_test, y_test, **kwargs)

    monkeypatch.setattr(task_probes_module, "linear_probe", recording)
    encoder = _WidthEncoder()
    results = probe_tasks(encoder, _WaveformFeatures(), corpus, corpus_probe_tasks(["loudness"]), **options)
    return encoder, results, fitted[0]


def test_clips_reach_the_encoder_at_the_extractors_rate_and_the_asked_length(monkeypatch, corpus):
    _, _, (X_train, X_test) = _embed(monkeypatch, corpus, clip_seconds=0.5, batch_size=4)
    # 0.5 s at 8 kHz: the stream resampled the 16 kHz corpus and cropped each 1-s clip
    assert set(X_train[:, 0]) == set(X_test[:, 0]) == {4000.0}
    assert set(X_train[:, 1]) == {4000.0}  # every clip is longer than 0.5 s: all valid
    _, _, (X_long, _) = _embed(monkeypatch, corpus, clip_seconds=1.5, batch_size=4)
    assert set(X_long[:, 0]) == {12000.0} and set(X_long[:, 1]) == {8000.0}  # padded, masked


def test_a_limit_encodes_only_the_batches_it_needs(monkeypatch, corpus):
    encoder, results, (X_train, X_test) = _embed(
        monkeypatch, corpus, clip_seconds=0.5, batch_size=4, train_clips=9, test_clips=4
    )
    assert len(X_train) + len(X_test) <= 9 + 4
    assert encoder.calls == 3 + 1  # ceil(9 / 4) train batches, one test batch; not the 30 + 20 clips
    unlimited, _, _ = _embed(monkeypatch, corpus, clip_seconds=0.5, batch_size=4)
    assert unlimited.calls == 8 + 5


def test_a_task_with_a_column_and_no_filter_keeps_every_clip(corpus):
    everything = ProbeTask("all_loudness", "loudness", multi_label=False)
    results = probe_tasks(_WidthEncoder(), _WaveformFeatures(), corpus, [everything], clip_seconds=0.5)
    assert results["all_loudness/probe_num_train_clips"] == 30
    assert results["all_loudness/probe_num_clips"] == 20
    assert 0.0 <= results["all_loudness/probe_accuracy"] <= 1.0


def test_attribute_tasks_are_single_label_and_events_multi_label():
    tasks = {task.name: task for task in corpus_probe_tasks()}
    assert tasks["events"].multi_label is True and tasks["events"].label_column is None
    assert all(task.multi_label is False and task.applies for name, task in tasks.items() if name != "events")


def test_a_soft_label_of_one_half_counts_as_positive_in_the_baseline():
    targets = np.array([[0.5, 0.0], [0.5, 1.0]], np.float32)
    # prevalence (1, 0.5): with ">" the first class would have none and drop out (0.5)
    assert chance_baseline(np.zeros((2, 2)), targets) == {"chance_mAP": pytest.approx(0.75)}


def test_the_single_label_baseline_with_classes_missing_from_a_split():
    chance = chance_baseline(np.array([3, 3, 0]), np.array([1, 1, 1, 2]))
    # the train majority (3) never occurs in test; the constant's mAP averages the test's classes 1 and 2
    assert chance == {"chance_mAP": pytest.approx((0.75 + 0.25) / 2), "chance_accuracy": 0.0}


def test_documented_defaults(monkeypatch, corpus):
    parameters = inspect.signature(probe_tasks).parameters
    assert parameters["train_clips"].default is None and parameters["test_clips"].default is None
    # By behaviour too (a mutation tool may show the original signature): 10-s clips, batches of 16.
    encoder, _, (X_train, _) = _embed(monkeypatch, corpus, train_clips=17, test_clips=16)
    assert set(X_train[:, 0]) == {80000.0}
    assert encoder.calls == 2 + 1  # 17 train clips in batches of 16, then 16 test clips


def test_C_reaches_every_tasks_probe_and_auto_chooses_per_task(monkeypatch, corpus):
    tasks = corpus_probe_tasks(["speech_rate", "events"])  # speech_rate: only the clips with speech
    options = {"clip_seconds": 0.5, "batch_size": 8}
    fixed = probe_tasks(_WidthEncoder(), _WaveformFeatures(), corpus, tasks, C=0.01, **options)
    assert fixed["speech_rate/probe_C"] == fixed["events/probe_C"] == 0.01
    embedded = task_probes_module.embed_splits(_WidthEncoder(), _WaveformFeatures(), corpus, **options)
    assert fixed == task_probes_module.fit_task_probes(embedded, corpus, tasks, C=0.01)
    default = probe_tasks(_WidthEncoder(), _WaveformFeatures(), corpus, tasks, **options)
    assert default["events/probe_C"] == 1.0
    # "auto": one cross-validation per task, on that task's own train rows
    linear_probe_module = inspect.getmodule(task_probes_module.linear_probe)
    chosen = iter([0.1, 100.0])
    seen = []

    def select(train_X, train_Y, multi_label, **kwargs):
        seen.append((len(train_X), multi_label))
        return next(chosen), {}

    monkeypatch.setattr(linear_probe_module, "select_C", select)
    auto = task_probes_module.fit_task_probes(embedded, corpus, tasks, C="auto")
    assert (auto["speech_rate/probe_C"], auto["events/probe_C"]) == (0.1, 100.0)
    speech_rows = auto["speech_rate/probe_num_train_clips"]
    assert 0 < speech_rows < len(corpus["train"])
    assert seen == [(speech_rows, False), (len(corpus["train"]), True)]
