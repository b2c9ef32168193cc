"""Tagging and classification metrics, computed with scikit-learn.

mAP follows the AudioSet convention: the average precision of every class that has at least one
positive in the evaluation set, averaged with equal weight (macro). Classes with no positive have an
undefined AP and are left out rather than counted as zero, so a small evaluation split does not
penalise rare classes it happens not to contain. The number of classes and clips that entered the
mean is returned with it, because AudioSet copies differ in which clips are still available.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class TaggingScores:
    mAP: float
    mAUC: float
    num_clips: int
    num_classes_evaluated: int
    per_class_ap: list[float | None]

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        out = asdict(self)
        out.pop("per_class_ap")
        return {f"{prefix}{k}": v for k, v in out.items()}


def _as_2d(name: str, array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (clips, classes) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def mean_average_precision(scores, targets) -> TaggingScores:
    """Macro mAP (and mAUC) over the classes that have at least one positive.

    ``scores``: (clips, classes) logits or probabilities (AP depends only on the ranking);
    ``targets``: (clips, classes) multi-hot in {0, 1} (soft labels are rounded at 0.5).
    """
    scores = _as_2d("scores", scores)
    targets = _as_2d("targets", targets)
    if scores.shape != targets.shape:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must have the same shape")
    binary = (targets >= 0.5).astype(np.int64)
    positives = binary.sum(axis=0)
    valid = np.flatnonzero(positives > 0)
    if valid.size == 0:
        raise ValueError("no class has a positive example: mAP is undefined")
    per_class: list[float | None] = [None] * scores.shape[1]
    aps = average_precision_score(binary[:, valid], scores[:, valid], average=None)
    for c, ap in zip(valid, np.atleast_1d(aps), strict=True):
        per_class[c] = float(ap)
    # AUC also needs a negative; a class present in every clip has none.
    auc_cols = valid[positives[valid] < len(binary)]
    mauc = (
        float(roc_auc_score(binary[:, auc_cols], scores[:, auc_cols], average="macro"))
        if auc_cols.size
        else float("nan")
    )
    return TaggingScores(
        mAP=float(np.mean(np.atleast_1d(aps))),
        mAUC=mauc,
        num_clips=int(scores.shape[0]),
        num_classes_evaluated=int(valid.size),
        per_class_ap=per_class,
    )


def accuracy(logits, labels) -> float:
    """Top-1 accuracy for single-label classification (labels are class indices)."""
    logits = _as_2d("logits", logits)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if len(labels) != len(logits):
        raise ValueError(f"{len(logits)} predictions but {len(labels)} labels")
    return float((logits.argmax(axis=1) == labels).mean())
