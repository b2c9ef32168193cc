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
from sklearn.metrics import average_precision_score, f1_score, recall_score, roc_auc_score


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


@dataclass(frozen=True)
class ClassificationScores:
    """Single-label scores. Accuracy alone hides a class the model never predicts when it is rare."""

    accuracy: float
    macro_f1: float
    num_clips: int
    per_class_recall: list[float | None]  # None for a class with no clip in the set
    never_predicted: list[int]  # classes with clips in the set that the model never predicted

    def as_dict(self, prefix: str = "", label_names=None) -> dict:
        """Flat metrics, with ``per_class_recall`` and ``never_predicted`` keyed by label name."""
        names = (
            label_names if label_names is not None else [str(c) for c in range(len(self.per_class_recall))]
        )
        return {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}num_clips": self.num_clips,
            f"{prefix}per_class_recall": {names[c]: r for c, r in enumerate(self.per_class_recall)},
            f"{prefix}never_predicted": [names[c] for c in self.never_predicted],
        }


def classification_scores(logits, labels) -> ClassificationScores:
    """Accuracy, macro-F1 and per-class recall of top-1 predictions (labels are class indices).

    Macro-F1 averages the classes present in the labels or the predictions (scikit-learn's default): a
    class predicted but absent counts as F1 0, a class absent from both does not count.
    """
    logits = _as_2d("logits", logits)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels).reshape(-1)
    if len(labels) != len(logits):
        raise ValueError(f"{len(logits)} predictions but {len(labels)} labels")
    num_classes = logits.shape[1]
    predicted = logits.argmax(axis=1)
    classes = np.arange(num_classes)
    recall = recall_score(labels, predicted, labels=classes, average=None, zero_division=0)
    present = np.isin(classes, labels)
    return ClassificationScores(
        accuracy=float((predicted == labels).mean()),
        macro_f1=float(f1_score(labels, predicted, average="macro", zero_division=0)),
        num_clips=len(labels),
        per_class_recall=[float(r) if p else None for r, p in zip(recall, present, strict=True)],
        never_predicted=[int(c) for c in classes[present & ~np.isin(classes, predicted)]],
    )
