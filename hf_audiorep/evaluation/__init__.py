"""Evaluation: tagging/classification metrics, the linear probe of pre-training runs, and layer-wise
probing of frozen encoders (`probing`: Convex Gated Probing and its comparison probes), and few-shot
open-set evaluation (`few_shot`: N-way K-shot episodes on held-out classes)."""

from pathlib import Path

from .captioning import (
    BLEU_METRIC_PATH,
    CIDER_METRIC_PATH,
    caption_metrics,
    evaluate_captioning,
    generate_captions,
)
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
from .linear_probe import chance_baseline, extract_embeddings, linear_probe, linear_probe_encoder
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
from .retrieval import embed_audio_text, retrieval_recall, zero_shot_tagging
from .task_probes import EVENTS, ProbeTask, corpus_probe_tasks, probe_tasks

#: Local path of the `evaluate` metric module: ``evaluate.load(MAP_METRIC_PATH)`` works offline.
MAP_METRIC_PATH = str(Path(__file__).parent / "metric_modules" / "audioset_map" / "audioset_map.py")

__all__ = [
    "BLEU_METRIC_PATH",
    "CIDER_METRIC_PATH",
    "ConvexGatedProbe",
    "EVENTS",
    "Episode",
    "FEW_SHOT_METHODS",
    "FeatureCache",
    "FewShotResult",
    "FewShotScore",
    "LayerFeatureEncoder",
    "MAP_METRIC_PATH",
    "PROBES",
    "PROBE_PLOT_NAME",
    "ProbeArguments",
    "ProbeTask",
    "ProbedEncoder",
    "TaggingScores",
    "accuracy",
    "build_feature_cache",
    "build_linear_probe",
    "chance_baseline",
    "build_probe",
    "caption_metrics",
    "clip_labels",
    "collect_predictions",
    "corpus_probe_tasks",
    "embed_audio_text",
    "evaluate_captioning",
    "evaluate_classifier",
    "evaluate_probe",
    "extract_embeddings",
    "few_shot_encoder",
    "few_shot_evaluate",
    "generate_captions",
    "linear_probe",
    "linear_probe_encoder",
    "mean_average_precision",
    "model_cost",
    "plot_curves",
    "probe_report",
    "probe_tasks",
    "retrieval_recall",
    "sample_episodes",
    "train_probe",
    "write_probe_results",
    "zero_shot_tagging",
]
