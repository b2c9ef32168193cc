"""The distillation recipe run as users run it: a teacher's columns computed once, a CP-Mobile student
trained from them, scored closed-set, on unseen devices and few-shot on held-out scenes."""

from __future__ import annotations

import json
import math

import pytest
from recipe_utils import as_argv, load_recipe
from transformers import AutoModel, AutoModelForAudioClassification

from hf_audiorep import config_from_preset
from hf_audiorep.data.embedded.scene_corpus import HELDOUT_SCENES, SCENE_CLASSES
from hf_audiorep.modeling import AudioFbankFeatureExtractor, CPMobileForAudioClassification
from hf_audiorep.objectives import FrozenTeacher

pytestmark = pytest.mark.slow

CORPUS = {"num_train_clips": 22, "num_eval_clips": 0, "num_test_clips": 33}


def _teacher(path, names=SCENE_CLASSES):
    id2label = dict(enumerate(names))
    config = config_from_preset(
        "audiomae-tiny",
        num_labels=len(names),
        id2label=id2label,
        label2id={n: i for i, n in id2label.items()},
        problem_type="single_label_classification",
        max_length=112,
    )
    AutoModelForAudioClassification.from_config(config).save_pretrained(path)
    AudioFbankFeatureExtractor(target_length=112).save_pretrained(path)
    return path


def _args(output_dir, teacher, **overrides) -> list[str]:
    options = {
        **CORPUS,
        "teacher": str(teacher),
        "preset": "cp-mobile-6k",
        "max_steps": 3,
        "per_device_batch_size": 8,
        "warmup_steps": 1,
        "eval_steps": 0,
        "checkpointing_steps": 0,
        "num_decode_threads": 1,
        "crd_negatives": 16,
        "few_shot_episodes": 4,
        "teacher_batch_size": 8,
        "output_dir": str(output_dir),
        "cpu": "true",
    }
    options.update(overrides)
    return as_argv(options)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("distill")


@pytest.fixture(scope="module")
def run(recipe, tmp_path_factory, monkeypatch_module):
    teacher = _teacher(tmp_path_factory.mktemp("teacher"))
    output = tmp_path_factory.mktemp("student")
    calls = []
    original = FrozenTeacher.logits

    def counted(self, waveforms, lengths, sample_rate):
        calls.append(len(waveforms))
        return original(self, waveforms, lengths, sample_rate)

    monkeypatch_module.setattr(FrozenTeacher, "logits", counted)
    recipe.main(_args(output, teacher, output_norm="layer"))
    return output, calls


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_the_student_is_saved_with_its_options(run):
    output, _ = run
    student = AutoModelForAudioClassification.from_pretrained(output)
    assert isinstance(student, CPMobileForAudioClassification)
    assert student.config.output_norm == "layer"
    # the closed-set scenes only: the held-out ones are never trained, they are for few-shot evaluation
    assert [student.config.id2label[i] for i in range(student.config.num_labels)] == list(SCENE_CLASSES)
    # the loss's heads and memory banks are training state, not part of the published student
    assert not any("distillation" in key or "memory" in key for key in student.state_dict())


def test_the_teacher_runs_once_over_the_training_split_and_never_in_a_step(run):
    _, calls = run
    # teacher logits only while the columns are computed: 22 clips in batches of 8, not 3 steps x 8 more
    assert calls == [8, 8, 6]


def test_results_hold_every_measure_beside_the_initialisation(run):
    output, _ = run
    results = json.loads((output / "eval_results.json").read_text())
    assert results["test_num_clips"] == 33
    assert 0 < results["unseen_device_num_clips"] < 33
    for key in ("few_shot", "few_shot_at_initialisation"):
        few_shot = results[key]
        assert few_shot["n_way"] == len(HELDOUT_SCENES) and few_shot["k_shot"] == 5
        assert sorted(few_shot["classes"]) == sorted(HELDOUT_SCENES)
        assert math.isclose(few_shot["chance_accuracy"], 1 / len(HELDOUT_SCENES))
    student = AutoModelForAudioClassification.from_pretrained(output)
    assert results["cost"]["parameters"] == sum(p.numel() for p in student.parameters())
    assert results["cost"]["macs"] > 0


def test_a_teacher_with_other_labels_is_refused(recipe, tmp_path):
    teacher = _teacher(tmp_path / "teacher", names=("a", "b", "c"))
    with pytest.raises(ValueError, match="KD needs one label order"):
        recipe.main(_args(tmp_path / "out", teacher))


def test_the_teacher_is_required(recipe, tmp_path):
    with pytest.raises(ValueError, match="--teacher is required"):
        recipe.main(_args(tmp_path / "out", "", max_steps=1))


def test_an_encoder_without_a_head_teaches_by_crd_alone(recipe, tmp_path):
    teacher = tmp_path / "encoder"
    config = config_from_preset("audiomae-tiny", max_length=112)
    AutoModel.from_config(config).save_pretrained(teacher)
    AudioFbankFeatureExtractor(target_length=112).save_pretrained(teacher)
    recipe.main(_args(tmp_path / "out", teacher, kd_weight=0, max_steps=1, few_shot_split=""))
    results = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert "few_shot" not in results and results["test_num_clips"] == 33


def test_dir_devices_name_the_training_splits_devices(recipe):
    from types import SimpleNamespace

    from datasets import ClassLabel, Dataset, Features

    from hf_audiorep.objectives import SceneAugmentationArguments

    devices = Features({"device": ClassLabel(names=["A", "B", "S1"])})
    source = SimpleNamespace(dataset=Dataset.from_dict({"device": [0, 2]}, features=devices))
    assert recipe._dir_device_ids(SceneAugmentationArguments(dir_devices="A, S1"), source) == (0, 2)
    assert recipe._dir_device_ids(SceneAugmentationArguments(), source) == (0,)  # CP-JKU: device A only
    assert recipe._dir_device_ids(SceneAugmentationArguments(dir_devices=""), source) is None  # every clip
    assert recipe._dir_device_ids(SceneAugmentationArguments(dir_prob=0.0), source) is None
    with pytest.raises(ValueError, match=r"unknown devices \['Z'\]"):
        recipe._dir_device_ids(SceneAugmentationArguments(dir_devices="A,Z"), source)
    unlabelled = SimpleNamespace(dataset=Dataset.from_dict({"clip": [0]}))
    with pytest.raises(ValueError, match="no device labels"):
        recipe._dir_device_ids(SceneAugmentationArguments(), unlabelled)
