"""Linear probes of one frozen encoder on several tasks of a corpus: what its representation knows.

UTS's claim is about *which* downstream tasks a label system serves: event labels in domain, mined tags out
of domain (speech and music attributes). On the embedded corpus the in-domain task is event tagging (the
ontology labels) and the out-of-domain ones are the attribute tasks the ontology does not name
(``hf_audiorep.data.embedded.ATTRIBUTE_TASKS``: speech pitch, music tempo, room, recording quality, ...),
each a single-label probe on the clips it applies to. :func:`probe_tasks` embeds each split once and fits
one logistic-regression probe per task (:func:`~hf_audiorep.evaluation.linear_probe`) on those
embeddings, so encoders pre-trained with different labels, objectives or architectures compare directly.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..data.sources import load_audio_source
from ..data.stream import AudioStream
from .linear_probe import chance_baseline, extract_embeddings, linear_probe

logger = logging.getLogger(__name__)

__all__ = ["EVENTS", "ProbeTask", "corpus_probe_tasks", "embed_splits", "fit_task_probes", "probe_tasks"]

#: the name of the in-domain task: the dataset's own (ontology) labels
EVENTS = "events"


@dataclass(frozen=True)
class ProbeTask:
    """One probe: the labels it reads and the clips it uses.

    Attributes:
        name: the key prefix of its metrics (``"events"``, ``"speech_pitch"``).
        label_column: the column of labels (``None``: the dataset's own label column).
        multi_label: tagging (one binary classifier per class, mAP) or single-label (accuracy too).
        applies: ``applies(label value) -> bool``: the clips the task is defined on (``None``: all).
    """

    name: str
    label_column: str | None = None
    multi_label: bool = True
    applies: Callable[[object], bool] | None = None


def corpus_probe_tasks(names: Sequence[str] | None = None) -> list[ProbeTask]:
    """The embedded corpus's probe tasks: ``events`` (multi-label, in domain) and every attribute task
    (single-label, on the clips that have the attribute); ``names`` keeps those named, in that order."""
    from ..data.embedded import ATTRIBUTE_TASKS

    tasks = {EVENTS: ProbeTask(EVENTS)}
    for task in ATTRIBUTE_TASKS.values():
        tasks[task.name] = ProbeTask(task.name, task.column, multi_label=False, applies=task.applies)
    if names is None:
        return list(tasks.values())
    unknown = [name for name in names if name not in tasks]
    if unknown:
        raise ValueError(f"unknown probe task(s) {unknown}; the corpus has {sorted(tasks)}")
    return [tasks[name] for name in names]


def _embed_split(model, feature_extractor, dataset, *, batch_size, clip_seconds, limit, device):
    """Pooled embeddings, dataset-label targets and dataset indices of (the first ``limit``) clips."""
    stream = AudioStream(
        load_audio_source(dataset),
        batch_size=batch_size,
        sample_rate=feature_extractor.sampling_rate,
        clip_seconds=clip_seconds,
        train=False,
        return_index=True,
    )
    indices: list[np.ndarray] = []

    def batches():
        for batch in stream if limit is None else itertools.islice(stream, -(-limit // batch_size)):
            indices.append(batch["indices"].cpu().numpy())
            yield batch

    X, Y = extract_embeddings(model, batches(), feature_extractor, device)
    index = np.concatenate(indices)
    if limit is not None:
        X, Y, index = X[:limit], Y[:limit], index[:limit]
    return X, Y, index


def _task_data(task: ProbeTask, dataset, X, Y, index):
    """The rows of one task: (X, targets) on the clips it applies to."""
    if task.label_column is None:
        return X, Y
    values = np.asarray(dataset[task.label_column])[index]
    keep = np.array([task.applies(v) for v in values], dtype=bool) if task.applies else np.ones(len(X), bool)
    if not keep.any():
        raise ValueError(f"probe task {task.name!r}: no clip of the split has the attribute")
    return X[keep], values[keep].astype(np.int64)


def embed_splits(
    model,
    feature_extractor,
    splits: Mapping[str, object],
    *,
    batch_size: int = 16,
    clip_seconds: float = 10.0,
    train_clips: int | None = None,
    test_clips: int | None = None,
    device=None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{"train": (X, Y, index), "test": ...}``: the pooled embeddings of each split, its dataset-label
    targets and the dataset rows they came from, which :func:`fit_task_probes` reads (the arguments are
    :func:`probe_tasks`'s)."""
    missing = [role for role in ("train", "test") if role not in splits]
    if missing:
        raise ValueError(f"splits needs 'train' and 'test', missing {missing}")
    options = {"batch_size": batch_size, "clip_seconds": clip_seconds, "device": device}
    return {
        role: _embed_split(model, feature_extractor, splits[role], limit=limit, **options)
        for role, limit in (("train", train_clips), ("test", test_clips))
    }


def fit_task_probes(
    embedded: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    splits: Mapping[str, object],
    tasks: Sequence[ProbeTask],
    C: float | str = 1.0,
) -> dict[str, float]:
    """One linear probe per task on :func:`embed_splits`'s embeddings of ``splits`` (see
    :func:`probe_tasks`)."""
    if not tasks:
        raise ValueError("give at least one probe task")
    results: dict[str, float] = {}
    for task in tasks:
        train, test = (_task_data(task, splits[role], *embedded[role]) for role in ("train", "test"))
        metrics = {
            **linear_probe(*train, *test, multi_label=task.multi_label, C=C),
            **chance_baseline(train[1], test[1]),
        }
        logger.info(
            "probe %s: mAP %.4f%s (C=%g)",
            task.name,
            metrics["probe_mAP"],
            f", accuracy {metrics['probe_accuracy']:.4f}" if "probe_accuracy" in metrics else "",
            metrics["probe_C"],
        )
        results.update({f"{task.name}/{key}": value for key, value in metrics.items()})
    return results


def probe_tasks(
    model,
    feature_extractor,
    splits: Mapping[str, object],
    tasks: Sequence[ProbeTask],
    *,
    batch_size: int = 16,
    clip_seconds: float = 10.0,
    train_clips: int | None = None,
    test_clips: int | None = None,
    device=None,
    C: float | str = 1.0,
) -> dict[str, float]:
    """Linear-probe ``model``'s frozen ``pooler_output`` on each task of ``tasks``.

    The encoder runs once per clip: each split is embedded once and every task fits its probe on the rows
    it applies to.

    Args:
        model: an encoder returning ``pooler_output``, or a model whose ``base_model`` is one.
        feature_extractor: has ``batch_features`` and ``sampling_rate`` (the model's own front end).
        splits: ``{"train": Dataset, "test": Dataset}``, map-style, with the tasks' label columns (the
            ``events`` task reads the dataset's own labels).
        tasks: e.g. :func:`corpus_probe_tasks`.
        batch_size: clips per encoder call.
        clip_seconds: every clip is cropped or zero-padded to this length at the feature extractor's
            ``sampling_rate`` (default: AudioSet's 10 s).
        train_clips, test_clips: the first this many clips of each split (all when None); only the
            batches that hold them are decoded and encoded.
        C: the probes' inverse L2 strength, or ``"auto"``: chosen per task by cross-validation on its
            train clips (:func:`~hf_audiorep.evaluation.linear_probe.select_C`), what a comparison of
            encoders wants.

    Returns:
        ``{"<task>/probe_mAP", "<task>/probe_accuracy" (single-label), "<task>/probe_num_clips", ...}``:
        every metric of :func:`~hf_audiorep.evaluation.linear_probe`, prefixed with the task's name, and the
        trivial baseline's ``chance_mAP`` (and ``chance_accuracy``).
    """
    if not tasks:
        raise ValueError("give at least one probe task")
    embedded = embed_splits(
        model,
        feature_extractor,
        splits,
        batch_size=batch_size,
        clip_seconds=clip_seconds,
        train_clips=train_clips,
        test_clips=test_clips,
        device=device,
    )
    return fit_task_probes(embedded, splits, tasks, C)
