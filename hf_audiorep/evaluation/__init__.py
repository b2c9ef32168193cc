"""Evaluation: tagging/classification metrics, the linear probe of pre-training runs, and layer-wise
probing of frozen encoders (`probing`: Convex Gated Probing and its comparison probes), and few-shot
open-set evaluation (`few_shot`: N-way K-shot episodes on held-out classes)."""

from pathlib import Path

from .cost import model_cost
from .few_shot import (
    FEW_SHOT_METHODS,
    Episode,
    FewShotResult,
    FewShotScore,
    clip_labels,
    few_shot_encoder,
    few_shot_evaluate,
    sample_episodes,
)
from .linear_probe import extract_embeddings, linear_probe, linear_probe_encoder
from .metrics import TaggingScores, accuracy, mean_average_precision
from .plot import plot_curves
from .predict import collect_predictions, evaluate_classifier
from .probe import PROBE_PLOT_NAME, ProbeArguments, build_linear_probe, probe_report, write_probe_results
from .probing import (
    PROBES,
    ConvexGatedProbe,
    FeatureCache,
    LayerFeatureEncoder,
    ProbedEncoder,
    build_feature_cache,
    build_probe,
    evaluate_probe,
    train_probe,
)
from .task_probes import EVENTS, ProbeTask, corpus_probe_tasks, probe_tasks

#: Local path of the `evaluate` metric module: ``evaluate.load(MAP_METRIC_PATH)`` works offline.
MAP_METRIC_PATH = str(Path(__file__).parent / "metric_modules" / "audioset_map" / "audioset_map.py")

__all__ = [
    "EVENTS",
    "FEW_SHOT_METHODS",
    "MAP_METRIC_PATH",
    "PROBES",
    "PROBE_PLOT_NAME",
    "ConvexGatedProbe",
    "Episode",
    "FeatureCache",
    "FewShotResult",
    "FewShotScore",
    "LayerFeatureEncoder",
    "ProbeArguments",
    "ProbeTask",
    "ProbedEncoder",
    "TaggingScores",
    "accuracy",
    "build_feature_cache",
    "build_linear_probe",
    "build_probe",
    "clip_labels",
    "collect_predictions",
    "corpus_probe_tasks",
    "evaluate_classifier",
    "evaluate_probe",
    "extract_embeddings",
    "few_shot_encoder",
    "few_shot_evaluate",
    "linear_probe",
    "linear_probe_encoder",
    "mean_average_precision",
    "model_cost",
    "plot_curves",
    "probe_report",
    "probe_tasks",
    "sample_episodes",
    "train_probe",
    "write_probe_results",
]
