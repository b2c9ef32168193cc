"""Few-shot values the behaviour tests leave open: the summary table written out by hand, the documented
defaults, the encoder kind chosen for each model, and the refusal of an iterable dataset."""

from __future__ import annotations

import inspect

import pytest
from datasets import Dataset
from probing_utils import tiny_wav2vec2

from hf_audiorep import AudioMAEConfig, AudioMAEModel
from hf_audiorep.evaluation import few_shot_encoder, few_shot_evaluate
from hf_audiorep.evaluation.few_shot import FewShotResult, FewShotScore, _as_teacher
from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.objectives.teachers import FrozenTeacher


def _result(n_query, excluded, ci95):
    return FewShotResult(
        n_way=3,
        k_shot=2,
        n_query=n_query,
        num_episodes=4,
        seed=7,
        chance_accuracy=1 / 3,
        num_clips=40,
        classes=["a", "b", "c"],
        excluded_classes=excluded,
        scores={
            "prototype": FewShotScore(0.75, 0.125, ci95, [0.5, 0.75, 1.0, 0.75]),
            "logistic": FewShotScore(0.5, 0.0, None, [0.5]),
        },
    )


def test_the_table_written_out():
    table = _result(5, ["d", 4], 0.2).format_table()
    assert table.split("\n") == [
        "3-way 2-shot, queries per class: 5, 4 episode(s) (seed 7) over 3 class(es), 40 clips; chance 0.333",
        "excluded (too few clips): d, 4",
        "method        accuracy    95% CI     std",
        "prototype        0.750    ±0.200   0.125",
        "logistic         0.500       n/a   0.000",
    ]
    # every clip not in the support is a query; nothing excluded: no such line
    lines = _result(None, [], None).format_table().split("\n")
    assert lines[0].startswith("3-way 2-shot, queries per class: all other clips, 4 episode(s)")
    assert len(lines) == 4 and lines[1].startswith("method")
    assert lines[2] == "prototype        0.750       n/a   0.125"


def test_documented_defaults():
    expected = {"n_way": 5, "k_shot": 5, "n_query": 15, "num_episodes": 100, "seed": 0, "C": 1.0}
    for function in (few_shot_evaluate, few_shot_encoder):
        parameters = inspect.signature(function).parameters
        assert {name: parameters[name].default for name in expected} == expected
        assert parameters["methods"].default == ("prototype", "logistic")
    assert inspect.signature(few_shot_encoder).parameters["batch_size"].default == 16
    assert inspect.signature(few_shot_encoder).parameters["device"].default is None


def test_each_model_gets_its_encoder_kind():
    model = AudioMAEModel(AudioMAEConfig.from_preset("audiomae-tiny", max_length=112))
    fe = AudioFbankFeatureExtractor(target_length=112)
    teacher = _as_teacher(model, fe)
    assert teacher.kind == "hf_audiorep" and teacher.model is model
    assert _as_teacher(teacher, None) is teacher  # a ready encoder is used as it is
    wav2vec2, wav2vec2_fe = tiny_wav2vec2()
    assert _as_teacher(wav2vec2, wav2vec2_fe).kind == "auto"
    assert isinstance(teacher, FrozenTeacher)


def test_an_iterable_dataset_is_refused_by_name():
    data = Dataset.from_dict({"labels": [0, 1]}).to_iterable_dataset()
    with pytest.raises(
        TypeError, match=r"^dataset must be a map-style datasets\.Dataset .*got IterableDataset$"
    ):
        few_shot_encoder(None, None, data, label_column="labels")
