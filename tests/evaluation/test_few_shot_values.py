"""Few-shot values the behaviour tests leave open, each against a computation written out here: every
episode's prototype and logistic predictions and macro accuracy, the mean, sample std and t-interval over
episodes, how episodes are drawn and which classes have enough clips, every check's bounds and message, the
summary table, the documented defaults, the encoder kind chosen for each model, and what the encoder hands the
embedding pass (the audio column, batch size, a frozen model whose state comes back) and does with its rows
(undecoded clips left out, every setting passed on)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from clap_utils import PROJECTION_DIM, TINY_HTSAT, TINY_ROBERTA, clap_extractor
from datasets import Dataset
from probing_utils import tiny_wav2vec2
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from transformers import ClapAudioModelWithProjection, ClapConfig, ClapModel

from hf_audiorep import AudioMAEConfig, AudioMAEModel
from hf_audiorep.evaluation import clip_labels, few_shot, few_shot_encoder, few_shot_evaluate, sample_episodes
from hf_audiorep.evaluation.few_shot import (
    FewShotResult,
    FewShotScore,
    _as_teacher,
    _l2_normalise,
    _summarise,
)
from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.objectives import teachers
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


# ----------------------------------------------------------------------------------------------------
# Episodes, prototypes, scores and checks against computations written out here
# ----------------------------------------------------------------------------------------------------


def _overlapping_clips(seed=0):
    """Four classes of unequal size (5 to 8 clips) in overlapping blobs, each clip scaled by a random length:
    predictions change if the clips or the prototypes are not normalised, macro and plain accuracy differ, and
    accuracy varies from episode to episode."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(["w", "x", "y", "z"]), [5, 6, 7, 8])
    centres = rng.normal(size=(4, 3))
    embeddings = centres[np.searchsorted(["w", "x", "y", "z"], labels)] + 0.9 * rng.normal(size=(26, 3))
    return embeddings * rng.uniform(0.1, 10.0, size=(26, 1)), labels


def _cosine(a, b):
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
        sum(x * x for x in a) * sum(y * y for y in b)
    )


def _prototype_by_hand(embeddings, episode):
    """Prototypical networks on unit vectors, one clip at a time: each class's prototype is the plain mean of
    its unit support vectors, and a query goes to the prototype of highest cosine."""
    unit = [row / math.sqrt(sum(v * v for v in row)) for row in np.asarray(embeddings, dtype=np.float64)]
    prototypes = []
    for position in range(len(episode.classes)):
        members = [
            unit[i] for i, c in zip(episode.support, episode.support_labels, strict=True) if c == position
        ]
        prototypes.append(sum(members) / len(members))
    return np.array([int(np.argmax([_cosine(unit[q], p) for p in prototypes])) for q in episode.query])


def _logistic_by_hand(embeddings, episode, C):
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    fit = LogisticRegression(C=C, max_iter=1000).fit(unit[episode.support], episode.support_labels)
    return fit.predict(unit[episode.query])


def _macro_accuracy(truth, predicted):
    """The mean over classes of the share of each class's queries classified correctly."""
    shares = [np.mean(predicted[truth == c] == c) for c in np.unique(truth)]
    return float(np.mean(shares))


def test_every_episode_is_scored_as_computed_by_hand():
    embeddings, labels = _overlapping_clips()
    options = {"n_way": 3, "k_shot": 2, "n_query": None, "num_episodes": 12, "seed": 3}
    result = few_shot_evaluate(embeddings, labels, C=0.05, **options)
    episodes = sample_episodes(labels, options["n_way"], 2, None, 12, 3)
    prototype = [_macro_accuracy(e.query_labels, _prototype_by_hand(embeddings, e)) for e in episodes]
    logistic = [_macro_accuracy(e.query_labels, _logistic_by_hand(embeddings, e, 0.05)) for e in episodes]
    assert result.scores["prototype"].episode_accuracies == pytest.approx(prototype)
    assert result.scores["logistic"].episode_accuracies == pytest.approx(logistic)
    # The data tell the variants apart: accuracy varies, and C matters for the logistic fit.
    assert len(set(prototype)) > 3
    assert logistic != [
        _macro_accuracy(e.query_labels, _logistic_by_hand(embeddings, e, 1.0)) for e in episodes
    ]
    # Over the episodes: the mean, the sample std and the half-width t(0.975, 11) * std / sqrt(12).
    for method, values in (("prototype", prototype), ("logistic", logistic)):
        score = result.scores[method]
        mean = sum(values) / 12
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / 11)
        assert score.accuracy == pytest.approx(mean) and score.std == pytest.approx(std)
        assert score.ci95 == pytest.approx(2.200985160091639 * std / math.sqrt(12))
    assert result.n_way == 3 and result.chance_accuracy == pytest.approx(1 / 3)
    assert result.num_clips == 26 and result.k_shot == 2 and result.n_query is None
    assert result.num_episodes == 12 and result.seed == 3
    assert result.classes == ["w", "x", "y", "z"] and result.excluded_classes == []


def test_scores_of_two_episodes_and_of_one():
    # Two episodes: std |a - b| / sqrt(2) (ddof 1), half-width t(0.975, 1) * std / sqrt(2).
    two = _summarise([0.5, 1.0])
    assert two.accuracy == 0.75 and two.std == pytest.approx(0.5 / math.sqrt(2))
    assert two.ci95 == pytest.approx(12.706204736174694 * 0.5 / 2) and two.episode_accuracies == [0.5, 1.0]
    three = _summarise([0.25, 0.5, 0.75])
    assert three.std == pytest.approx(0.25) and three.ci95 == pytest.approx(
        4.302652729749462 * 0.25 / math.sqrt(3)
    )
    one = _summarise([0.25])
    assert (one.accuracy, one.std, one.ci95, one.episode_accuracies) == (0.25, 0.0, None, [0.25])
    assert all(type(v) is float for v in (two.accuracy, two.std, two.ci95, *two.episode_accuracies))


def test_episodes_are_drawn_afresh_and_listed_in_class_order():
    labels = np.repeat(np.arange(6), 4)
    episodes = sample_episodes(labels, 3, 2, 1, 30, 11)
    # each episode its own draw: many different class triples and supports
    assert len({tuple(e.classes) for e in episodes}) > 5 and len({tuple(e.support) for e in episodes}) == 30
    for e in episodes:
        assert e.classes.tolist() == sorted(e.classes.tolist())
        assert e.support_labels.tolist() == [0, 0, 1, 1, 2, 2] and e.query_labels.tolist() == [0, 1, 2]
        # support then query of each class in turn, all of the class's clips used (2 + 1 of 4: one left)
        assert labels[e.support].tolist() == np.repeat(e.classes, 2).tolist()
        assert labels[e.query].tolist() == e.classes.tolist()
    # n_query None: the k_shot support clips, every other clip of the class a query
    for e in sample_episodes(labels, None, 1, None, 5, 0):
        assert e.classes.tolist() == list(range(6)) and len(e.support) == 6 and len(e.query) == 18
        assert e.query_labels.tolist() == np.repeat(np.arange(6), 3).tolist()


def test_a_class_needs_k_shot_plus_n_query_clips():
    # a: 5 clips, b: 4, c: 3, d: 2
    labels = ["a"] * 5 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2
    embeddings = np.random.default_rng(0).normal(size=(len(labels), 3))
    cases = [
        ((2, 2), ["a", "b"], ["c", "d"]),
        ((2, None), ["a", "b", "c"], ["d"]),
        ((1, None), list("abcd"), []),
    ]
    for (k_shot, n_query), kept, excluded in cases:
        episodes = sample_episodes(labels, None, k_shot, n_query, 3, 0)
        assert all(e.classes.tolist() == kept for e in episodes)
        result = few_shot_evaluate(
            embeddings, labels, n_way=None, k_shot=k_shot, n_query=n_query, num_episodes=2
        )
        assert (result.classes, result.excluded_classes, result.n_way) == (kept, excluded, len(kept))
        assert result.chance_accuracy == pytest.approx(1 / len(kept))


def test_too_few_classes_is_refused_in_words():
    labels = ["a"] * 5 + ["b"] * 4 + ["c"] * 1
    with pytest.raises(ValueError) as error:
        sample_episodes(labels, None, 4, None, 3, 0)
    assert str(error.value) == (
        "n_way=None (every class, --n-way all) needs 2 classes with at least 5 clips each (k_shot=4 + "
        "n_query=1 or more), "
        "but only 1 of the 3 classes have that many (too few: b, c)"
    )
    with pytest.raises(ValueError) as error:
        sample_episodes(["a"] * 3 + ["b"] * 3, 3, 1, 2, 3, 0)
    assert str(error.value) == (
        "n_way=3 needs 3 classes with at least 3 clips each (k_shot=1 + n_query=2), "
        "but only 2 of the 2 classes have that many"
    )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_way": 1}, "n_way must be an integer >= 2 or None, got 1"),
        ({"n_way": True}, "n_way must be an integer >= 2 or None, got True"),
        ({"k_shot": None}, "k_shot must be an integer >= 1, got None"),
        ({"k_shot": 1.0}, "k_shot must be an integer >= 1, got 1.0"),
        ({"n_query": 0}, "n_query must be an integer >= 1 or None, got 0"),
        ({"num_episodes": None}, "num_episodes must be an integer >= 1, got None"),
        ({"seed": -1}, "seed must be an integer, got -1"),
        ({"seed": None}, "seed must be an integer, got None"),
        (
            {"methods": ("prototype", "knn")},
            "methods must be a non-empty sequence of ('prototype', 'logistic'), got ('prototype', 'knn')",
        ),
        ({"methods": ()}, "methods must be a non-empty sequence of ('prototype', 'logistic'), got ()"),
        ({"C": -1.0}, "C must be a positive number, got -1.0"),
        ({"C": True}, "C must be a positive number, got True"),
        ({"C": "1"}, "C must be a positive number, got '1'"),
    ],
)
def test_invalid_arguments_are_refused_in_words(arguments, message):
    embeddings, labels = np.ones((12, 2)), np.repeat([0, 1, 2], 4)
    with pytest.raises(ValueError) as error:
        few_shot_evaluate(embeddings, labels, **{"n_way": 2, "k_shot": 1, "n_query": 1, **arguments})
    assert str(error.value) == message


def test_the_smallest_valid_arguments_are_accepted():
    embeddings, labels = np.eye(4)[np.repeat([0, 1, 2], 2)], np.repeat([0, 1, 2], 2)
    for arguments in (
        {"n_way": 2, "k_shot": 1, "n_query": 1, "num_episodes": 1, "seed": 0},
        {"n_way": np.int64(2), "k_shot": np.int64(1), "n_query": np.int64(1), "num_episodes": np.int64(1)},
        {"n_way": 3, "k_shot": 1, "n_query": 1, "num_episodes": 2, "C": 0.5, "methods": ("logistic",)},
        {"n_way": 3, "k_shot": 1, "n_query": 1, "num_episodes": 2, "C": 2},
    ):
        result = few_shot_evaluate(embeddings, labels, **arguments)
        assert all(score.accuracy == 1.0 for score in result.scores.values())


def test_invalid_data_is_refused_in_words():
    with pytest.raises(ValueError) as error:
        few_shot_evaluate(np.ones((6, 2)), np.ones((2, 3)))
    assert str(error.value) == "labels must be a non-empty sequence with one class per clip, got shape (2, 3)"
    with pytest.raises(ValueError) as error:
        few_shot_evaluate(np.ones((4, 2, 1)), [0, 0, 1, 1])
    assert (
        str(error.value)
        == "embeddings must be a (clips, dim) array with one row per label (4), got shape (4, 2, 1)"
    )
    with pytest.raises(ValueError) as error:
        few_shot_evaluate(np.ones(4), [0, 0, 1, 1])
    assert "got shape (4,)" in str(error.value)
    infinite = np.ones((4, 2))
    infinite[2, 1] = np.inf
    with pytest.raises(ValueError, match="^embeddings contain NaN or infinite values$"):
        few_shot_evaluate(infinite, [0, 0, 1, 1], n_way=2, k_shot=1, n_query=1)


def _prototype_by_hand_with_zeros(embeddings, episode):
    """As ``_prototype_by_hand``, a clip (or prototype) of zeros staying zero."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    unit = np.divide(embeddings, norms, out=np.zeros_like(embeddings), where=norms > 0)
    prototypes = [unit[episode.support][episode.support_labels == c].mean(axis=0) for c in range(2)]
    prototypes = [p / np.linalg.norm(p) if np.linalg.norm(p) > 0 else p for p in prototypes]
    return np.array([int(np.argmax([unit[q] @ p for p in prototypes])) for q in episode.query])


def test_unit_vectors_and_a_silent_clip():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]], dtype=np.float32)
    unit = _l2_normalise(x)
    assert unit.ravel().tolist() == pytest.approx([0.6, 0.8, 0.0, 0.0, 1.0, 0.0])
    # a clip of zeros embeds to zeros (no NaN): every cosine with it is 0, so it goes to class 0
    embeddings = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 0.0], [0.0, 1.0], [0.1, 1.0], [0.0, 2.0]])
    result = few_shot_evaluate(embeddings, [1, 1, 1, 0, 0, 0], n_way=2, k_shot=1, n_query=2, num_episodes=30)
    for index, episode in enumerate(sample_episodes([1, 1, 1, 0, 0, 0], 2, 1, 2, 30, 0)):
        expected = _macro_accuracy(episode.query_labels, _prototype_by_hand_with_zeros(embeddings, episode))
        assert result.scores["prototype"].episode_accuracies[index] == pytest.approx(expected)


def test_unconverged_fits_and_left_out_classes_are_logged(monkeypatch, caplog):
    def unconverged(support, support_labels, query, ways, C):
        warnings.warn("no convergence", ConvergenceWarning, stacklevel=1)
        return np.zeros(len(query), dtype=int)

    monkeypatch.setitem(few_shot._CLASSIFIERS, "logistic", unconverged)
    labels = [0] * 3 + [1] * 3 + [2] * 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # counted, not passed on
        with caplog.at_level(logging.INFO, logger=few_shot.__name__):
            result = few_shot_evaluate(np.eye(7), labels, n_way=2, k_shot=1, n_query=2, num_episodes=3)
    assert result.scores["logistic"].episode_accuracies == [0.5] * 3
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "few-shot episodes leave out 1 class(es) with fewer than 3 clips"),
        ("WARNING", "3 few-shot logistic regressions did not converge"),
    ]


def test_other_warnings_of_a_fit_are_passed_on(monkeypatch):
    # Non-convergence is summed up in one log line; anything else a fit warns about must still reach the user.
    def odd(support, support_labels, query, ways, C):
        warnings.warn("ill-conditioned support set", RuntimeWarning, stacklevel=1)
        return np.zeros(len(query), dtype=int)

    monkeypatch.setitem(few_shot._CLASSIFIERS, "prototype", odd)
    with pytest.warns(RuntimeWarning, match="ill-conditioned support set"):
        few_shot_evaluate(np.eye(6), [0] * 3 + [1] * 3, n_way=2, k_shot=1, n_query=2, num_episodes=2)


# ----------------------------------------------------------------------------------------------------
# The encoder: what it hands the embedding pass, and what it does with the embeddings
# ----------------------------------------------------------------------------------------------------


def test_a_clap_model_gets_the_clap_kind():
    config = ClapConfig(text_config=TINY_ROBERTA, audio_config=TINY_HTSAT, projection_dim=PROJECTION_DIM)
    assert _as_teacher(ClapModel(config), clap_extractor()).kind == "clap"
    assert _as_teacher(ClapAudioModelWithProjection(config.audio_config), clap_extractor()).kind == "clap"


def _clips(labels):
    """A dataset of ``labels`` with a (never decoded) audio column and a column the encoder must not send."""
    return Dataset.from_dict(
        {
            "clip_id": [f"c{i}" for i in range(len(labels))],
            "audio": [f"clip{i}.wav" for i in range(len(labels))],
            "labels": labels,
        }
    )


class _Calls(list):
    """The embedding pass's calls, and the rows it returns (one per clip)."""

    rows: np.ndarray | None = None


@pytest.fixture
def embedding_pass(monkeypatch):
    """Stands in for the embedding pass: records its arguments and the model's state, returns fixed rows."""
    calls = _Calls()

    def fake(dataset, teacher, column="rr_embedding", batch_size=16, **kwargs):
        model = teacher.model
        calls.append(
            {
                "columns": dataset.column_names,
                "rows": len(dataset),
                "teacher": teacher,
                "column": column,
                "batch_size": batch_size,
                "kwargs": kwargs,
                "training": model.training,
                "trainable": any(p.requires_grad for p in model.parameters()),
            }
        )
        return {column: calls.rows.tolist()}

    monkeypatch.setattr(teachers, "precompute_teacher_embeddings", fake)
    return calls


def _tiny_audiomae():
    torch.manual_seed(0)
    return AudioMAEModel(
        AudioMAEConfig.from_preset("audiomae-tiny", max_length=112)
    ), AudioFbankFeatureExtractor(target_length=112)


def test_the_encoder_scores_the_decoded_clips_with_every_setting(embedding_pass):
    labels = ["dog"] * 4 + ["rain"] * 4 + ["bell"] * 4 + ["car"] * 3
    rows = np.random.default_rng(0).normal(size=(len(labels), 5))
    rows[[1, 13]] = np.nan  # two clips could not be decoded: a dog and a car
    embedding_pass.rows = rows
    model, fe = _tiny_audiomae()
    model.eval()
    frozen = [name for name, _ in model.named_parameters()][::2]
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name not in frozen)
    options = {"n_way": 3, "k_shot": 2, "n_query": 1, "num_episodes": 7, "seed": 5, "methods": ("logistic",)}
    result = few_shot_encoder(
        model, fe, _clips(labels), label_column="labels", C=0.01, batch_size=3, device="cpu", **options
    )
    (call,) = embedding_pass
    assert call["columns"] == ["audio"] and call["rows"] == len(labels)
    assert call["column"] == "few_shot_embedding" and call["batch_size"] == 3 and call["kwargs"] == {}
    assert call["teacher"].model is model and call["teacher"].feature_extractor is fe
    assert call["teacher"].kind == "hf_audiorep"
    assert not call["training"] and not call["trainable"]  # the pass sees a frozen encoder
    # the model's own state comes back: eval mode, every other parameter frozen
    assert not model.training
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == frozen
    keep = np.isfinite(rows).all(axis=1)
    expected = few_shot_evaluate(rows[keep], np.array(labels)[keep], C=0.01, **options)
    assert result.to_dict() == expected.to_dict() and result.num_clips == 13
    # C reaches the fit: the default C scores these episodes differently
    assert few_shot_evaluate(rows[keep], np.array(labels)[keep], **options).to_dict() != result.to_dict()


def test_the_encoder_moves_a_model_only_when_asked(embedding_pass, monkeypatch):
    model, fe = _tiny_audiomae()
    moves = []
    monkeypatch.setattr(model, "to", lambda *args, **kwargs: moves.append((args, kwargs)) or model)
    labels = [0, 0, 1, 1]
    embedding_pass.rows = np.eye(4)
    few_shot_encoder(
        model, fe, _clips(labels), label_column="labels", n_way=2, k_shot=1, n_query=1, num_episodes=2
    )
    assert moves == []
    few_shot_encoder(
        model,
        fe,
        _clips(labels),
        label_column="labels",
        n_way=2,
        k_shot=1,
        n_query=1,
        num_episodes=2,
        device="meta",
    )
    assert moves == [(("meta",), {})]


def test_a_ready_frozen_encoder_is_used_as_it_is(embedding_pass):
    model, fe = _tiny_audiomae()
    teacher = FrozenTeacher(model, fe, "hf_audiorep")
    embedding_pass.rows = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    result = few_shot_encoder(
        teacher,
        None,
        _clips([0, 0, 1, 1]),
        label_column="labels",
        n_way=2,
        k_shot=1,
        n_query=1,
        num_episodes=3,
    )
    assert embedding_pass[0]["teacher"] is teacher and result.scores["prototype"].accuracy == 1.0


def test_the_encoder_checks_every_setting_before_embedding(embedding_pass):
    model, fe = _tiny_audiomae()
    data = _clips([0, 0, 1, 1])
    for arguments, message in (
        ({"methods": ["knn"]}, "methods must"),
        ({"C": 0}, "C must"),
        ({"n_way": 2, "k_shot": 0}, "k_shot must"),
        ({"n_way": 2, "k_shot": 1, "n_query": 2}, "n_way=2 needs 2 classes"),
    ):
        with pytest.raises(ValueError, match=f"^{message}"):
            few_shot_encoder(model, fe, data, label_column="labels", **arguments)
    assert embedding_pass == []


def test_the_state_of_a_model_comes_back_after_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model.eval()
    model[0].requires_grad_(False)
    with pytest.raises(RuntimeError, match="inside"), few_shot._restored(model):
        model.train().requires_grad_(True)
        raise RuntimeError("inside")
    assert not model.training and [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    model.train()
    with few_shot._restored(model):
        model.eval().requires_grad_(False)
    assert model.training and [p.requires_grad for p in model.parameters()] == [False, False, True, True]
    with few_shot._restored(None):
        pass


def test_clip_labels_name_the_row_and_keep_plain_values():
    data = Dataset.from_dict({"labels": [[1], [0, 1]], "scene": [3, 7]})
    assert clip_labels(data, "scene") == [3, 7]
    with pytest.raises(ValueError) as error:
        clip_labels(data, "labels")
    assert str(error.value) == (
        "row 1 has 2 labels in 'labels' ([0, 1]); few-shot classification needs exactly one label per "
        "clip (single-event clips, e.g. the embedded corpus's heldout split, or a single-label column such "
        "as a scene)"
    )
    for column, message in (
        (["park", None], "row 1 of 'scene' is None"),
        ([{"a": 1}], "row 0 of 'scene' is {'a': 1}"),
    ):
        with pytest.raises(ValueError) as error:
            clip_labels(Dataset.from_dict({"scene": column}), "scene")
        assert str(error.value) == f"{message}: a label column holds one class per clip"


class _RecordingClassifier:
    """Stands in for a classifier: records each fit's sizes, ``ways`` and ``C``; predicts every query's true
    class."""

    def __init__(self):
        self.calls = []

    def __call__(self, support, support_labels, query, ways, C):
        self.calls.append((len(support), len(query), ways, C))
        return np.repeat(np.arange(ways), len(query) // ways)


def test_the_documented_defaults_are_the_ones_used(monkeypatch, embedding_pass):
    # 6 classes of 20 clips: the default 5-way 5-shot episodes with 15 queries per class fit exactly.
    labels = np.repeat(np.arange(6), 20)
    rows = np.random.default_rng(0).normal(size=(120, 4))
    recorders = {"prototype": _RecordingClassifier(), "logistic": _RecordingClassifier()}
    for method, recorder in recorders.items():
        monkeypatch.setitem(few_shot._CLASSIFIERS, method, recorder)
    embedding_pass.rows = rows
    model, fe = _tiny_audiomae()
    runs = (
        lambda: few_shot_evaluate(rows, labels),
        lambda: few_shot_encoder(model, fe, _clips(labels.tolist()), label_column="labels"),
    )
    for run in runs:
        result = run()
        assert (result.n_way, result.k_shot, result.n_query) == (5, 5, 15)
        assert (result.num_episodes, result.seed) == (100, 0) and list(result.scores) == [
            "prototype",
            "logistic",
        ]
        for recorder in recorders.values():
            assert recorder.calls == [(25, 75, 5, 1.0)] * 100
            recorder.calls.clear()
    assert embedding_pass[0]["batch_size"] == 16


def test_integer_embeddings_and_labels_are_scored():
    embeddings = [[1, 0], [2, 0], [3, 1], [0, 1], [0, 2], [1, 3]]
    result = few_shot_evaluate(embeddings, [0, 0, 0, 1, 1, 1], n_way=2, k_shot=1, n_query=2, num_episodes=4)
    assert result.scores["prototype"].episode_accuracies == [1.0] * 4
    assert result.scores["logistic"].episode_accuracies == [1.0] * 4


def test_the_fits_run_on_one_blas_thread(monkeypatch):
    limits = []

    @contextlib.contextmanager
    def recording(**kwargs):
        limits.append(kwargs)
        yield

    monkeypatch.setattr(few_shot, "threadpool_limits", recording)
    few_shot_evaluate(np.eye(4), [0, 0, 1, 1], n_way=2, k_shot=1, n_query=1, num_episodes=2)
    assert limits == [{"limits": 1, "user_api": "blas"}]


def test_the_encoder_logs_the_clips_it_leaves_out(embedding_pass, caplog):
    model, fe = _tiny_audiomae()
    rows = np.array([[1.0, 0.0], [1.0, 0.1], [np.nan, np.nan], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0]])
    labels = [0, 0, 0, 1, 1, 1]
    options = {"label_column": "labels", "n_way": 2, "k_shot": 1, "n_query": 1, "num_episodes": 2}
    with caplog.at_level(logging.WARNING, logger=few_shot.__name__):
        embedding_pass.rows = rows[[0, 1, 3, 4]]
        few_shot_encoder(model, fe, _clips([0, 0, 1, 1]), **options)
        assert caplog.records == []
        embedding_pass.rows = rows
        result = few_shot_encoder(model, fe, _clips(labels), **options)
    assert [r.getMessage() for r in caplog.records] == [
        "few-shot: 1 clip(s) could not be decoded and are left out"
    ]
    assert result.num_clips == 5


def test_the_encoder_refuses_an_embedding_pass_that_loses_clips(embedding_pass):
    # Every clip keeps its own label: rows that do not pair one to one with the clips are an error, not a
    # silently shortened label list.
    model, fe = _tiny_audiomae()
    embedding_pass.rows = np.eye(4)  # five clips, four rows: the first four clips' labels would still do
    with pytest.raises(ValueError):
        few_shot_encoder(
            model,
            fe,
            _clips([0, 0, 1, 1, 1]),
            label_column="labels",
            n_way=2,
            k_shot=1,
            n_query=1,
            num_episodes=2,
        )
