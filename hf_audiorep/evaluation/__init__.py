"""Evaluation: tagging/classification metrics and probes."""

from pathlib import Path

from .linear_probe import extract_embeddings, linear_probe, linear_probe_encoder
from .metrics import TaggingScores, accuracy, mean_average_precision
from .predict import collect_predictions, evaluate_classifier
from .probe import ProbeArguments, build_linear_probe, write_probe_results

#: Local path of the `evaluate` metric module: ``evaluate.load(MAP_METRIC_PATH)`` works offline.
MAP_METRIC_PATH = str(Path(__file__).parent / "metric_modules" / "audioset_map" / "audioset_map.py")

__all__ = [
    "MAP_METRIC_PATH",
    "ProbeArguments",
    "TaggingScores",
    "accuracy",
    "build_linear_probe",
    "collect_predictions",
    "evaluate_classifier",
    "extract_embeddings",
    "linear_probe",
    "linear_probe_encoder",
    "mean_average_precision",
    "write_probe_results",
]
