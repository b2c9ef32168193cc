"""The UTS recipe run as users run it: MTC on a vocabulary mined from the corpus captions, or on the ontology
labels; the vocabulary saved with the model and beside it; probes at initialisation and at the end."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recipe_utils import as_argv, load_recipe
from transformers import AutoConfig, AutoModel

from hf_audiorep.data.embedded import ATTRIBUTE_TASKS, EMBEDDED_ONTOLOGY, load_embedded_corpus
from hf_audiorep.data.tags import TagSystem
from hf_audiorep.evaluation.linear_probe import C_GRID
from hf_audiorep.modeling import ZipformerForAudioClassification, ZipformerModel

pytestmark = pytest.mark.slow

CORPUS = {"clip_seconds": 1.0, "num_train_clips": 48, "num_eval_clips": 0, "num_test_clips": 24}


def _args(output_dir, **overrides) -> list[str]:
    options = {
        **CORPUS,
        "max_steps": 2,
        "per_device_batch_size": 8,
        "warmup_steps": 1,
        "checkpointing_steps": 0,
        "num_decode_threads": 1,
        "vocabulary_size": 12,
        "probe_tasks": "events,loudness",
        "output_dir": str(output_dir),
        "cpu": "true",
    }
    options.update(overrides)
    return as_argv(options)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("pretrain_uts")


@pytest.fixture(scope="module")
def tags_run(recipe, tmp_path_factory):
    output = tmp_path_factory.mktemp("uts-tags")
    summary = recipe.main(_args(output))
    return output, summary


def test_mined_vocabulary_is_the_models_labels_and_a_label_file(tags_run):
    output, _ = tags_run
    vocabulary = TagSystem.from_pretrained(output / "label_12.json")
    config = AutoConfig.from_pretrained(output)
    assert config.num_labels == len(vocabulary) == 12
    assert [config.id2label[i] for i in range(12)] == list(vocabulary.names)
    assert config.problem_type == "multi_label_classification"
    # the tags come from the captions, not from the ontology
    assert not set(vocabulary.names) <= set(EMBEDDED_ONTOLOGY.names)
    assert isinstance(AutoModel.from_pretrained(output), ZipformerModel)


def test_results_hold_probes_at_initialisation_and_end_and_the_tag_summary(tags_run):
    output, summary = tags_run
    results = json.loads((output / "eval_results.json").read_text())
    assert results["labels"] == "tags" and results["num_labels"] == 12
    assert results["tag_system"]["num_clips"] == CORPUS["num_train_clips"]
    for probes in (results["probes"], results["probes_at_initialisation"]):
        assert set(probes) >= {"events/probe_mAP", "loudness/probe_accuracy", "loudness/chance_accuracy"}
        assert probes["events/probe_num_clips"] == CORPUS["num_test_clips"]
        assert probes["events/probe_num_train_clips"] == CORPUS["num_train_clips"]
        # each probe's penalty was chosen on its train clips (the default)
        assert probes["events/probe_C"] in C_GRID and probes["loudness/probe_C"] in C_GRID
    assert results["probes"] != results["probes_at_initialisation"]  # the encoder changed
    assert summary["events/probe_mAP"] == results["probes"]["events/probe_mAP"]


def test_ontology_labels_train_on_the_corpus_classes(recipe, tmp_path, monkeypatch):
    priors = []
    original = recipe.init_bias_from_prior
    monkeypatch.setattr(recipe, "init_bias_from_prior", lambda m, f: (priors.append(f), original(m, f)))
    recipe.main(_args(tmp_path, labels="ontology", probe_tasks="", max_steps=1, classifier_norm="batch"))
    # the fresh head started at the training split's label frequencies
    train = load_embedded_corpus(clip_seconds=1.0, num_train=48, num_validation=0, num_test=24)["train"]
    expected = np.zeros(len(EMBEDDED_ONTOLOGY.names))
    for labels in train["labels"]:
        expected[labels] += 1
    assert len(priors) == 1 and np.allclose(priors[0], expected / len(train))
    model = ZipformerForAudioClassification.from_pretrained(tmp_path)
    assert [model.config.id2label[i] for i in range(model.config.num_labels)] == list(EMBEDDED_ONTOLOGY.names)
    # --classifier_norm reached the head, and its statistics were trained and saved
    assert model.config.classifier_norm == "batch" and model.classifier_norm.num_batches_tracked == 1
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["labels"] == "ontology" and "test_mAP" in results and "probes" not in results
    # the loss a prior-only learner ends at, as BCE of the frequencies against every clip's labels
    multi_hot = torch.zeros(len(train), len(expected))
    for i, labels in enumerate(train["labels"]):
        multi_hot[i, labels] = 1
    prior = torch.as_tensor(expected / len(train), dtype=torch.float32).expand_as(multi_hot)
    bce = F.binary_cross_entropy(prior, multi_hot).item()
    assert results["label_prior_bce"] == pytest.approx(bce, rel=1e-5)
    assert not list(tmp_path.glob("label_*.json"))


def test_a_saved_vocabulary_labels_the_clips(recipe, tags_run, tmp_path):
    output, _ = tags_run
    recipe.main(_args(tmp_path, vocabulary_file=output / "label_12.json", probe_tasks="", max_steps=1))
    assert AutoConfig.from_pretrained(tmp_path).id2label == AutoConfig.from_pretrained(output).id2label


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"labels": "audioset"}, "--labels must be one of"),
        ({"objective": "captioning"}, "--objective must be one of"),
        ({"objective": "ar", "text_field": "summary"}, "--text_field must be one of"),
        ({"objective": "par", "parallel_decoding_prob": 1.5}, "--parallel_decoding_prob must be in"),
        ({"objective": "contrastive", "text_pooling": "max"}, "--text_pooling must be cls or mean"),
        ({"objective": "ar", "decoder_preset": "bart-large"}, "unknown text preset"),
        ({"vocabulary_size": 0}, "--vocabulary_size must be >= 1"),
        ({"probe_tasks": "events,tempo_of_birds"}, "unknown probe task"),
        ({"probe_C": "none"}, "--probe_C must be a positive number or 'auto', got 'none'"),
        ({"probe_C": "0"}, "--probe_C must be a positive number or 'auto', got '0'"),
    ],
)
def test_bad_arguments_are_clear_errors(recipe, tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        recipe.main(_args(tmp_path, **overrides))


def test_a_head_norm_outside_its_choices_is_a_usage_error(recipe, capsys):
    with pytest.raises(SystemExit) as exit_:
        recipe.main(["--classifier_norm", "layer"])
    assert exit_.value.code == 2
    assert "invalid choice: 'layer' (choose from 'none', 'batch')" in capsys.readouterr().err


@pytest.mark.parametrize(("probe_C", "expected"), [(None, 0.1), ("0.5", 0.5)])
def test_probe_C_is_chosen_by_cross_validation_unless_given(recipe, tmp_path, monkeypatch, probe_C, expected):
    linear_probe_module = importlib.import_module("hf_audiorep.evaluation.linear_probe")
    calls = []

    def select(train_X, train_Y, multi_label, **kwargs):
        calls.append(len(train_X))
        return 0.1, {}

    monkeypatch.setattr(linear_probe_module, "select_C", select)
    given = {} if probe_C is None else {"probe_C": probe_C}
    recipe.main(_args(tmp_path, probe_tasks="events", max_steps=1, **given))
    results = json.loads((tmp_path / "eval_results.json").read_text())
    # by default the initialisation and the trained encoder are each fitted at the C cross-validation gave
    assert calls == ([CORPUS["num_train_clips"]] * 2 if probe_C is None else [])
    assert results["probes"]["events/probe_C"] == expected
    assert results["probes_at_initialisation"]["events/probe_C"] == expected


def test_every_attribute_task_is_a_probe_task(recipe):
    from hf_audiorep.evaluation import corpus_probe_tasks

    assert [task.name for task in corpus_probe_tasks()] == ["events", *ATTRIBUTE_TASKS]


def test_the_default_optimizer_is_the_measured_one_and_scaled_adam_is_one_flag_set_away(recipe, tmp_path):
    # AdamW 2e-3 + cosine + clipping at 1 won the 3-seed comparison (docs/benchmarks.md); ScaledAdam clips
    # by itself, so asking for it while the clipping default stands is an error that says what to pass.
    defaults = recipe.UTSTrainingArguments(output_dir=str(tmp_path))
    assert (defaults.optimizer, defaults.lr_scheduler) == ("adamw", "cosine")
    assert (defaults.learning_rate, defaults.max_grad_norm) == (2e-3, 1.0)
    with pytest.raises(ValueError, match="max_grad_norm 0 with optimizer scaled_adam"):
        recipe.main(_args(tmp_path, optimizer="scaled_adam", lr_scheduler="eden", learning_rate=0.045))
    scaled = recipe.UTSTrainingArguments(
        output_dir=str(tmp_path), optimizer="scaled_adam", lr_scheduler="eden", max_grad_norm=0
    )
    assert scaled.max_grad_norm is None
