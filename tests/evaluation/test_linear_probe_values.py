"""The linear probe's numbers against scikit-learn called directly: its hyper-parameters reach every fit,
soft and edge-case labels are read as documented, classes are counted over both splits, and its errors name
the split and the argument at fault. ``linear_probe_encoder`` hands its arguments to both splits."""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score
from sklearn.preprocessing import StandardScaler

from hf_audiorep.evaluation import linear_probe, linear_probe_encoder

# the module, not the function `hf_audiorep.evaluation` exports under the same name
linear_probe_module = importlib.import_module("hf_audiorep.evaluation.linear_probe")


def _noisy(n: int, dim: int, classes: int, seed: int):
    """Weakly separable multi-label data: the regularisation strength changes the ranking."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((classes, dim)) * 0.4
    Y = (rng.random((n, classes)) < 0.3).astype(np.float32)
    X = Y @ centres + rng.standard_normal((n, dim))
    return X.astype(np.float32), Y


def _macro_ap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over the test classes with a positive of scikit-learn's AP: the probe's documented mAP."""
    present = [c for c in range(targets.shape[1]) if targets[:, c].any()]
    return float(np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in present]))


def _reference_multi_label(train_X, train_Y, test_X, test_Y, C=1.0, max_iter=1000):
    scaler = StandardScaler().fit(train_X)
    fit_X, score_X = scaler.transform(train_X), scaler.transform(test_X)
    positive = np.asarray(train_Y, dtype=np.float64) >= 0.5
    scores = np.zeros(test_Y.shape)
    for c in range(train_Y.shape[1]):
        if 0 < positive[:, c].sum() < len(positive):
            model = LogisticRegression(C=C, max_iter=max_iter).fit(fit_X, positive[:, c])
            scores[:, c] = model.decision_function(score_X)
    return _macro_ap(scores, test_Y)


def _reference_single_label(train_X, train_y, test_X, test_y, num_classes, C=1.0, max_iter=1000):
    scaler = StandardScaler().fit(train_X)
    model = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(train_X), train_y)
    scores = np.full((len(test_X), num_classes), np.finfo(np.float32).min, dtype=np.float64)
    scores[:, model.classes_] = model.predict_log_proba(scaler.transform(test_X))
    return _macro_ap(scores, np.eye(num_classes)[test_y]), float((scores.argmax(1) == test_y).mean())


@pytest.fixture(scope="module")
def noisy():
    return (*_noisy(120, 40, 4, seed=0), *_noisy(80, 40, 4, seed=1))


def test_multi_label_map_equals_scikit_learn_at_the_given_c(noisy):
    train_X, train_Y, test_X, test_Y = noisy
    strong = _reference_multi_label(train_X, train_Y, test_X, test_Y, C=1e-3)
    weak = _reference_multi_label(train_X, train_Y, test_X, test_Y, C=1.0)
    assert abs(strong - weak) > 1e-3  # the data make C matter, so the test below can tell them apart
    assert linear_probe(train_X, train_Y, test_X, test_Y, C=1e-3)["probe_mAP"] == pytest.approx(
        strong, abs=1e-9
    )
    assert linear_probe(train_X, train_Y, test_X, test_Y)["probe_mAP"] == pytest.approx(weak, abs=1e-9)


def test_max_iter_reaches_the_fits_and_unconverged_fits_are_counted_in_a_warning(noisy, caplog):
    train_X, train_Y, test_X, test_Y = noisy
    expected = _reference_multi_label(train_X, train_Y, test_X, test_Y, max_iter=1)
    assert abs(expected - _reference_multi_label(train_X, train_Y, test_X, test_Y)) > 1e-4
    with caplog.at_level(logging.WARNING, logger=linear_probe_module.__name__):
        result = linear_probe(train_X, train_Y, test_X, test_Y, max_iter=1)
    assert result["probe_mAP"] == pytest.approx(expected, abs=1e-9)
    assert "4 of the probe's logistic regressions did not converge in max_iter=1 iterations" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=linear_probe_module.__name__):
        linear_probe(train_X, train_Y, test_X, test_Y)
    assert "did not converge" not in caplog.text


def test_soft_targets_at_one_half_count_as_positive(noisy):
    train_X, train_Y, test_X, test_Y = noisy
    soft = train_Y * 0.5  # every positive at exactly the documented threshold
    assert linear_probe(train_X, soft, test_X, test_Y)["probe_mAP"] == pytest.approx(
        _reference_multi_label(train_X, train_Y, test_X, test_Y), abs=1e-9
    )


def test_a_class_with_one_train_positive_is_fitted_and_one_positive_everywhere_is_constant(noisy):
    train_X, train_Y, test_X, test_Y = noisy
    train_Y = train_Y.copy()
    train_Y[:, 0] = 0.0
    train_Y[np.flatnonzero(test_Y[:, 0])[0] % len(train_Y), 0] = 1.0  # exactly one positive clip
    train_Y[:, 1] = 1.0  # every clip positive: no classifier can be fitted
    expected = _reference_multi_label(train_X, train_Y, test_X, test_Y)
    constant_class_0 = train_Y.copy()
    constant_class_0[:, 0] = 0.0
    assert abs(expected - _reference_multi_label(train_X, constant_class_0, test_X, test_Y)) > 1e-4
    assert linear_probe(train_X, train_Y, test_X, test_Y)["probe_mAP"] == pytest.approx(expected, abs=1e-9)


def test_single_label_counts_classes_over_both_splits_and_floors_unseen_ones():
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((5, 12)) * 3.0
    train_y = rng.integers(0, 3, 90)  # classes 0-2 in train
    test_y = np.concatenate([rng.integers(0, 3, 30), [4, 4]])  # class 4 only in test, class 3 nowhere
    train_X = (centres[train_y] + rng.standard_normal((90, 12))).astype(np.float32)
    test_X = (centres[test_y] + rng.standard_normal((32, 12))).astype(np.float32)
    expected_map, expected_accuracy = _reference_single_label(train_X, train_y, test_X, test_y, num_classes=5)
    for train_Y, test_Y in [(train_y, test_y), (np.eye(3)[train_y], test_y), (train_y, np.eye(5)[test_y])]:
        result = linear_probe(train_X, train_Y, test_X, test_Y, multi_label=False)
        assert result["probe_num_classes"] == 5
        assert result["probe_accuracy"] == pytest.approx(expected_accuracy, abs=1e-12)
        assert result["probe_mAP"] == pytest.approx(expected_map, abs=1e-9)
    # one-hot over more columns than any clip uses: the column count is the class count, from either split
    for train_Y, test_Y in [(np.eye(7)[train_y], np.eye(7)[test_y]), (np.eye(7)[train_y], test_y)]:
        assert linear_probe(train_X, train_Y, test_X, test_Y, multi_label=False)["probe_num_classes"] == 7
    # the largest index of either split counts: train has class 4, test only classes 0-2
    train_y4 = np.where(np.arange(90) < 5, 4, train_y)
    result = linear_probe(train_X, train_y4, test_X[:30], test_y[:30], multi_label=False)
    assert result["probe_num_classes"] == 5


def test_single_label_fit_gets_c_and_max_iter():
    rng = np.random.default_rng(8)
    centres = rng.standard_normal((3, 30)) * 0.3  # weakly separable: C and the iteration cap both matter
    train_y, test_y = rng.integers(0, 3, 90), rng.integers(0, 3, 60)
    train_X = centres[train_y] + rng.standard_normal((90, 30))
    test_X = centres[test_y] + rng.standard_normal((60, 30))

    def reference(**options):
        return _reference_single_label(train_X, train_y, test_X, test_y, num_classes=3, **options)[0]

    expected = reference(C=1e-2, max_iter=2)
    assert min(abs(reference(max_iter=2) - expected), abs(reference(C=1e-2) - expected)) > 1e-6
    result = linear_probe(train_X, train_y, test_X, test_y, multi_label=False, C=1e-2, max_iter=2)
    assert result["probe_mAP"] == pytest.approx(expected, abs=1e-9)


def test_single_label_with_one_train_class_predicts_it_everywhere():
    rng = np.random.default_rng(4)
    train_X, test_X = rng.standard_normal((20, 6)), rng.standard_normal((10, 6))
    test_y = np.array([2, 2, 0, 1, 2, 2, 0, 2, 1, 2])
    result = linear_probe(train_X, np.full(20, 2), test_X, test_y, multi_label=False)
    assert result["probe_accuracy"] == pytest.approx(0.6)
    assert result["probe_num_classes"] == 3
    # every class ranks the clips at chance: AP = prevalence
    expected = np.mean([np.mean(test_y == c) for c in range(3)])
    assert result["probe_mAP"] == pytest.approx(expected, abs=1e-9)


def test_a_single_test_clip_is_enough():
    X, Y = _noisy(60, 8, 3, seed=5)
    one = linear_probe(X, Y, X[:1], np.array([[1.0, 0.0, 0.0]]))
    assert one["probe_num_clips"] == 1 and one["probe_num_classes_evaluated"] == 1
    assert one["probe_mAP"] == pytest.approx(1.0)  # one positive clip ranks first


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"train_X": np.zeros(10, np.float32)}, r"train_X must be a non-empty \(clips, features\) array"),
        ({"test_X": np.zeros((0, 8), np.float32), "test_Y": np.zeros((0, 3))}, "test_X must be a non-empty"),
        ({"test_X": np.full((5, 8), np.inf, np.float32)}, "test_X contains NaN or infinite"),
        ({"test_Y": np.zeros((5,))}, r"test_Y must be \(clips, classes\) multi-hot"),
        ({"test_Y": np.zeros((5, 4))}, "train_Y has 3 classes but test_Y has 4"),
        ({"max_iter": 0}, "max_iter must be a positive integer, got 0"),
        ({"max_iter": True}, "max_iter must be a positive integer, got True"),
        ({"max_iter": 10.0}, "max_iter must be a positive integer, got 10.0"),
    ],
)
def test_errors_name_the_split_and_the_argument(arguments, match):
    X, Y = _noisy(5, 8, 3, seed=6)
    kwargs = {"train_X": X, "train_Y": Y, "test_X": X, "test_Y": Y, **arguments}
    with pytest.raises(ValueError, match=match):
        linear_probe(**kwargs)


def test_single_label_errors_name_the_split():
    X = np.random.default_rng(7).standard_normal((6, 4))
    y = np.array([0, 1, 0, 1, 0, 1])
    with pytest.raises(
        ValueError, match=r"test_Y must be \(clips,\) class indices or \(clips, classes\) one-hot"
    ):
        linear_probe(X, y, X, np.zeros((6, 2, 1)), multi_label=False)
    assert linear_probe(X, y, X, y, multi_label=False, max_iter=1)["probe_num_classes"] == 2  # 1 is allowed


def test_linear_probe_encoder_passes_its_arguments_to_both_splits(monkeypatch, noisy):
    train_X, train_Y, test_X, test_Y = noisy
    calls = []

    def fake_extract(model, batches, feature_extractor, device, max_batches, input_statistics):
        assert model == "model" and feature_extractor == "fe"
        calls.append((batches, device, max_batches, input_statistics))
        return (train_X, train_Y, None) if batches == "train batches" else (test_X, test_Y, None)

    monkeypatch.setattr(linear_probe_module, "_extract", fake_extract)
    result = linear_probe_encoder(
        "model", "train batches", "test batches", "fe", device="cuda:1", C=1e-3, max_iter=1,
        max_train_batches=3, max_test_batches=2,
    )  # fmt: skip
    assert calls == [("train batches", "cuda:1", 3, False), ("test batches", "cuda:1", 2, False)]
    assert result == linear_probe(train_X, train_Y, test_X, test_Y, C=1e-3, max_iter=1)
    assert result != linear_probe(train_X, train_Y, test_X, test_Y, C=1e-3)  # so max_iter is seen to arrive
    # and C, at the default max_iter (also the default C=1)
    penalised = linear_probe_encoder("model", "train batches", "test batches", "fe", C=1e-3)
    assert penalised == linear_probe(train_X, train_Y, test_X, test_Y, C=1e-3)
    assert (
        linear_probe_encoder("model", "train batches", "test batches", "fe")
        == linear_probe(train_X, train_Y, test_X, test_Y)
        != penalised
    )
    assert "probe_accuracy" not in result  # multi-label by default
    single = linear_probe_encoder(
        "model", "train batches", "test batches", "fe", multi_label=False
    )  # one-hot rows of a 4-class problem
    assert "probe_accuracy" in single


def test_C_auto_fits_with_the_C_cross_validation_picks_and_reports_it(noisy):
    train_X, train_Y, test_X, test_Y = noisy
    chosen, _ = linear_probe_module.select_C(train_X, train_Y, True)
    assert chosen != 1.0  # the data make the choice differ from the default, so the test can tell
    auto = linear_probe(train_X, train_Y, test_X, test_Y, C="auto")
    assert auto == linear_probe(train_X, train_Y, test_X, test_Y, C=chosen)
    assert auto["probe_C"] == chosen and isinstance(auto["probe_C"], float)
    assert linear_probe(train_X, train_Y, test_X, test_Y)["probe_C"] == 1.0
    # single-label targets too: the classes' indices, cross-validated as one-hot rows
    train_y, test_y = train_Y.argmax(1), test_Y.argmax(1)
    single_chosen, _ = linear_probe_module.select_C(train_X, train_y, False)
    single = linear_probe(train_X, train_y, test_X, test_y, multi_label=False, C="auto")
    assert single == linear_probe(train_X, train_y, test_X, test_y, multi_label=False, C=single_chosen)


def test_C_auto_is_linear_probes_only_and_bad_Cs_are_refused(noisy):
    train_X, train_Y, test_X, test_Y = noisy
    for bad in ("AUTO", "1", 0.0, -1.0, float("nan"), None):
        with pytest.raises(ValueError, match="C must be positive, got "):
            linear_probe(train_X, train_Y, test_X, test_Y, C=bad)
    with pytest.raises(ValueError, match="C must be positive, got 'auto'"):
        linear_probe_module.fit_linear_classifier(train_X, train_Y, C="auto")


@pytest.mark.parametrize(
    ("given", "expected"),
    [("auto", "auto"), (" Auto ", "auto"), ("0.5", 0.5), ("1e2", 100.0), (3, 3.0), (0.25, 0.25)],
)
def test_parse_C_reads_a_command_line_value(given, expected):
    assert linear_probe_module.parse_C(given) == expected


@pytest.mark.parametrize("given", ["0", "-1", "nan", "inf", "ten", "", None])
def test_parse_C_refuses_what_is_not_a_positive_number_or_auto(given):
    with pytest.raises(ValueError, match=r"C must be a positive number or 'auto', got "):
        linear_probe_module.parse_C(given)
