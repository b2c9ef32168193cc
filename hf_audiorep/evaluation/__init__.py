"""Evaluation: tagging/classification metrics and probes."""

from pathlib import Path

from .linear_probe import extract_embeddings, linear_probe, linear_probe_encoder
from .metrics import TaggingScores, accuracy, mean_average_precision
from .plot import plot_curves
from .predict import collect_predictions, evaluate_classifier
from .probe import PROBE_PLOT_NAME, ProbeArguments, build_linear_probe, probe_report, write_probe_results

#: Local path of the `evaluate` metric module: ``evaluate.load(MAP_METRIC_PATH)`` works offline.
MAP_METRIC_PATH = str(Path(__file__).parent / "metric_modules" / "audioset_map" / "audioset_map.py")

__all__ = [
    "MAP_METRIC_PATH",
    "PROBE_PLOT_NAME",
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
    "plot_curves",
    "probe_report",
    "write_probe_results",
]
