"""Evaluation: tagging/classification metrics and probes."""

from pathlib import Path

from .metrics import TaggingScores, accuracy, mean_average_precision
from .predict import collect_predictions, evaluate_classifier

#: Local path of the `evaluate` metric module: ``evaluate.load(MAP_METRIC_PATH)`` works offline.
MAP_METRIC_PATH = str(Path(__file__).parent / "metric_modules" / "audioset_map" / "audioset_map.py")

__all__ = [
    "MAP_METRIC_PATH",
    "TaggingScores",
    "accuracy",
    "collect_predictions",
    "evaluate_classifier",
    "mean_average_precision",
]
