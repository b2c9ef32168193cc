"""Edge cases of the tagging and classification metrics, each checked against a computation by hand.

Written to kill the mutants of ``hf_audiorep/evaluation/metrics.py`` that test_evaluation.py let
survive (docs/testing.md): per-class AP values, the 0.5 rounding of soft labels, a class with a single
positive, a class present in every clip (AP yes, AUC no), tensors that still require grad, and the
flat dictionaries' default names.
"""

import math

import numpy as np
import pytest
import torch

from hf_audiorep.evaluation.metrics import accuracy, classification_scores, mean_average_precision


def _ap_by_hand(scores, targets):
    """Mean precision at the rank of each positive (no ties in these tests)."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at_k * hits).sum() / hits.sum())


def _auc_by_hand(scores, targets):
    """Probability that a positive outranks a negative (no ties in these tests)."""
    pos, neg = scores[targets == 1], scores[targets == 0]
    return float(np.mean([p > n for p in pos for n in neg]))


def test_per_class_ap_and_auc_equal_their_definitions():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.3, 0.6, 0.3], [0.2, 0.2, 0.95], [0.1, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    result = mean_average_precision(scores, targets)
    expected_ap = [_ap_by_hand(scores[:, c], targets[:, c]) for c in range(3)]
    assert result.per_class_ap == pytest.approx(expected_ap)
    assert result.mAP == pytest.approx(np.mean(expected_ap))
    expected_auc = [_auc_by_hand(scores[:, c], targets[:, c]) for c in range(3)]
    assert result.mAUC == pytest.approx(np.mean(expected_auc))


def test_a_class_with_a_single_positive_is_evaluated():
    scores = np.array([[0.9, 0.2], [0.1, 0.8], [0.4, 0.3], [0.3, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])  # class 1: exactly one positive
    result = mean_average_precision(scores, targets)
    assert result.num_classes_evaluated == 2
    assert result.per_class_ap[1] == pytest.approx(1.0)
    assert result.mAP == pytest.approx((_ap_by_hand(scores[:, 0], targets[:, 0]) + 1.0) / 2)


def test_soft_labels_are_rounded_at_one_half_inclusive():
    scores = np.array([[0.9], [0.1], [0.5], [0.2]])
    soft = np.array([[0.5], [0.49], [0.0], [0.51]])  # 0.5 and 0.51 count as positives, 0.49 not
    result = mean_average_precision(scores, soft)
    assert result.per_class_ap[0] == pytest.approx(_ap_by_hand(scores[:, 0], np.array([1, 0, 0, 1])))


def test_a_class_in_every_clip_has_an_ap_but_no_auc():
    scores = np.array([[0.9, 0.6], [0.8, 0.3], [0.1, 0.5]])
    targets = np.array([[1, 1], [0, 1], [1, 1]])  # class 1 has no negative: AUC undefined for it
    result = mean_average_precision(scores, targets)
    assert result.per_class_ap[1] == pytest.approx(1.0)
    assert result.num_classes_evaluated == 2
    assert result.mAUC == pytest.approx(_auc_by_hand(scores[:, 0], targets[:, 0]))
    # Every class everywhere: mAP is 1 and mAUC is NaN, not an error.
    only_positives = mean_average_precision(scores, np.ones_like(targets))
    assert only_positives.mAP == pytest.approx(1.0)
    assert math.isnan(only_positives.mAUC)


def test_tensors_that_require_grad_and_half_precision_are_accepted():
    logits = torch.tensor([[2.0, -1.0], [-1.0, 1.0], [0.5, 0.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert mean_average_precision(logits, targets).mAP == pytest.approx(1.0)
    assert mean_average_precision(logits.detach().bfloat16(), targets).mAP == pytest.approx(1.0)
    assert accuracy(logits, torch.tensor([0, 0, 0])) == pytest.approx(2 / 3)
    assert classification_scores(logits, torch.tensor([0, 1, 1])).accuracy == pytest.approx(2 / 3)


def test_tagging_scores_as_dict_drops_the_per_class_list():
    result = mean_average_precision(np.array([[0.9], [0.1]]), np.array([[1], [0]]))
    assert result.as_dict() == {"mAP": 1.0, "mAUC": 1.0, "num_clips": 2, "num_classes_evaluated": 1}
    assert set(result.as_dict("eval_")) == {f"eval_{k}" for k in result.as_dict()}


def test_classification_scores_accuracy_recall_and_default_names():
    labels = np.array([0, 0, 0, 1, 2])
    predicted = np.array([0, 0, 0, 1, 0])  # 4 of 5 right; class 2 never predicted
    scores = classification_scores(np.eye(3)[predicted], labels)
    assert scores.accuracy == pytest.approx(4 / 5)
    # F1 by hand: class 0: P 3/4, R 1 -> 6/7; class 1: 1; class 2: 0.
    assert scores.macro_f1 == pytest.approx((6 / 7 + 1 + 0) / 3)
    assert scores.per_class_recall == [1.0, 1.0, 0.0]
    flat = scores.as_dict()
    assert flat["accuracy"] == pytest.approx(4 / 5) and flat["num_clips"] == 5
    assert flat["per_class_recall"] == {"0": 1.0, "1": 1.0, "2": 0.0}
    assert flat["never_predicted"] == ["2"]


def test_labels_as_a_column_are_flattened():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    column = np.array([[0], [1], [1], [2]])  # (clips, 1), as a dataset column may come
    assert accuracy(logits, column) == pytest.approx(3 / 4)
    assert classification_scores(logits, torch.as_tensor(column)).accuracy == pytest.approx(3 / 4)


def test_errors_name_the_argument_at_fault():
    nan = np.full((3, 2), np.nan)
    with pytest.raises(ValueError, match="^scores contains NaN"):
        mean_average_precision(nan, np.ones((3, 2)))
    with pytest.raises(ValueError, match="^targets contains NaN"):
        mean_average_precision(np.ones((3, 2)), nan)
    with pytest.raises(ValueError, match="^logits must be a 2-D"):
        accuracy(np.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError, match="^logits contains NaN"):
        classification_scores(nan, [0, 1, 1])
