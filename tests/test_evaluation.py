import evaluate
import numpy as np
import pytest
import torch

from hf_audiorep.evaluation import MAP_METRIC_PATH, accuracy, mean_average_precision


def _ap_by_hand(scores, targets):
    """Average precision from its definition: mean precision at the rank of each positive."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at_k * hits).sum() / hits.sum())


def test_map_matches_definition_and_skips_classes_without_positives():
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 6)) < 0.3).astype(int)
    targets[:, 4] = 0  # a class absent from the evaluation set: excluded, not scored as 0
    scores = rng.random((50, 6))
    result = mean_average_precision(scores, targets)
    expected = np.mean([_ap_by_hand(scores[:, c], targets[:, c]) for c in (0, 1, 2, 3, 5)])
    assert result.mAP == pytest.approx(expected, abs=1e-9)
    assert result.num_classes_evaluated == 5
    assert result.per_class_ap[4] is None
    assert result.num_clips == 50


def test_map_perfect_and_torch_inputs():
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    result = mean_average_precision(targets * 5 - 1, targets)
    assert result.mAP == pytest.approx(1.0)
    assert result.mAUC == pytest.approx(1.0)


def test_map_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.full((3, 2), np.nan), np.ones((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        mean_average_precision(np.zeros(3), np.zeros(3))


def test_evaluate_metric_module_loads_offline_and_agrees():
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 8)) < 0.25).astype(int)
    targets[0] = 1
    scores = rng.normal(size=(40, 8))
    metric = evaluate.load(MAP_METRIC_PATH)
    out = metric.compute(predictions=scores.tolist(), references=targets.tolist())
    assert out["mAP"] == pytest.approx(mean_average_precision(scores, targets).mAP, abs=1e-6)
    assert out["num_clips"] == 40


def test_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        accuracy(logits, [0, 1])
