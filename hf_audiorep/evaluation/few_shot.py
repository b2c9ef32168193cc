"""Few-shot open-set evaluation: how well a frozen encoder's embeddings tell apart classes it never saw.

ContrastASC's claim is that contrastive training keeps embeddings useful on unseen categories. The test is
a sequence of N-way K-shot episodes on held-out classes: each draws ``n_way`` classes, then ``k_shot``
support and ``n_query`` query clips of each (without replacement, so no clip is both), fits a classifier on
the support embeddings and scores it on the queries. Two classifiers, both on L2-normalised embeddings:

- ``prototype``: each class's prototype is the mean of its support embeddings, and a query goes to the
  prototype of highest cosine similarity (prototypical networks, Snell et al. 2017, with SimpleShot's L2
  normalisation, Wang et al. 2019). No hyperparameter: it is the protocol ContrastASC proposes.
- ``logistic``: scikit-learn's multinomial ``LogisticRegression`` fitted on the support set (the few-shot
  baseline of Tian et al. 2020, "Rethinking few-shot image classification"). L2 regularisation with
  ``C=1`` (scikit-learn's default) on unit-norm features: with a handful of clips in hundreds of
  dimensions the support is always separable, so without the penalty the fit would only grow the weights
  without bound. The features are not standardised: mean and variance estimated from K clips per class
  are mostly noise.

Scores:

- per episode, *macro* accuracy: the mean over the episode's classes of the share of their queries
  classified correctly. With a fixed ``n_query`` it equals plain accuracy; with ``n_query=None`` (every
  remaining clip is a query) class sizes differ, and macro accuracy keeps a large class from dominating.
- over episodes: the mean, the sample standard deviation and the half-width of a 95 % Student-t interval,
  ``t(0.975, E - 1) * std / sqrt(E)``. The t quantile rather than 1.96 keeps the interval honest for a few
  episodes; at a hundred the two agree to 1 %. The interval is over the choice of episodes only: the
  episodes reuse one set of clips, so it says how precisely the mean is known on *this* data, not how it
  would vary on other recordings of the same classes.

Episode ``i`` depends only on ``(seed, i)`` and the labels: two encoders evaluated with the same seed see
the same episodes (their per-episode accuracies pair up), and more episodes extend the same sequence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from threadpoolctl import threadpool_limits

logger = logging.getLogger(__name__)

__all__ = [
    "FEW_SHOT_METHODS",
    "Episode",
    "FewShotResult",
    "FewShotScore",
    "clip_labels",
    "few_shot_encoder",
    "few_shot_evaluate",
    "sample_episodes",
]

FEW_SHOT_METHODS = ("prototype", "logistic")
# The column the encoder's embeddings are written to for the duration of one evaluation.
_EMBEDDING_COLUMN = "few_shot_embedding"


@dataclass(frozen=True)
class Episode:
    """One N-way K-shot episode.

    Attributes:
        classes: the episode's ``n_way`` classes (values of the labels it was drawn from).
        support, query: indices into those labels; disjoint.
        support_labels, query_labels: the class of each support and query clip, as a position in ``classes``.
    """

    classes: np.ndarray
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


@dataclass(frozen=True)
class FewShotScore:
    """One classifier's scores over the episodes (see the module docstring for how they are computed).

    Attributes:
        accuracy: mean per-episode macro accuracy.
        std: sample standard deviation of the per-episode accuracies (0 for a single episode).
        ci95: half-width of the 95 % t-interval of the mean (None for a single episode).
        episode_accuracies: every episode's accuracy, in episode order.
    """

    accuracy: float
    std: float
    ci95: float | None
    episode_accuracies: list[float]


@dataclass(frozen=True)
class FewShotResult:
    """The outcome of a few-shot evaluation; ``to_dict()`` is plain JSON.

    Attributes:
        n_way, k_shot, n_query: the episode shape (``n_query`` None: every remaining clip is a query).
        num_episodes, seed: how many episodes, drawn from which seed.
        chance_accuracy: ``1 / n_way``, what guessing scores.
        num_clips: clips the episodes were drawn from.
        classes: the classes with enough clips for an episode; excluded_classes: the others.
        scores: per method (``prototype``, ``logistic``).
    """

    n_way: int
    k_shot: int
    n_query: int | None
    num_episodes: int
    seed: int
    chance_accuracy: float
    num_clips: int
    classes: list
    excluded_classes: list
    scores: dict[str, FewShotScore]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def format_table(self) -> str:
        """A short human-readable summary: the protocol, then one row per method."""
        queries = "all other clips" if self.n_query is None else f"{self.n_query}"
        lines = [
            f"{self.n_way}-way {self.k_shot}-shot, queries per class: {queries}, {self.num_episodes} "
            f"episode(s) (seed {self.seed}) over {len(self.classes)} class(es), {self.num_clips} clips; "
            f"chance {self.chance_accuracy:.3f}",
        ]
        if self.excluded_classes:
            lines.append(f"excluded (too few clips): {', '.join(map(str, self.excluded_classes))}")
        lines.append(f"{'method':<12}{'accuracy':>10}{'95% CI':>10}{'std':>8}")
        for method, score in self.scores.items():
            ci = "n/a" if score.ci95 is None else f"±{score.ci95:.3f}"
            lines.append(f"{method:<12}{score.accuracy:>10.3f}{ci:>10}{score.std:>8.3f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Episodes
# ----------------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "an integer" if minimum <= 0 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(
            f"labels must be a non-empty sequence with one class per clip, got shape {labels.shape}"
        )
    return labels


def _classes_with_enough_clips(labels: np.ndarray, need: int):
    """``(classes, members, excluded)``: the classes with at least ``need`` clips, the clip indices of each,
    and the classes with fewer."""
    values, inverse = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inverse == c) for c in range(len(values))]
    keep = [c for c in range(len(values)) if len(members[c]) >= need]
    excluded = [values[c] for c in range(len(values)) if len(members[c]) < need]
    return values[keep], [members[c] for c in keep], excluded


def sample_episodes(
    labels: Sequence,
    n_way: int | None,
    k_shot: int,
    n_query: int | None,
    num_episodes: int,
    seed: int,
) -> list[Episode]:
    """Draw N-way K-shot episodes from the clips of ``labels``.

    Args:
        labels: one class per clip (integers or strings).
        n_way: classes per episode, at least 2; None for every class with enough clips.
        k_shot: support clips per class.
        n_query: query clips per class; None for every clip of the class not in the support.
        num_episodes: how many episodes.
        seed: a non-negative integer; episode ``i`` is a function of ``(seed, i)`` and ``labels`` alone.

    A class needs ``k_shot + n_query`` clips (``k_shot + 1`` with ``n_query=None``); those with fewer are
    left out of every episode (and logged).

    Raises:
        ValueError: an invalid argument, or fewer than ``n_way`` (or 2) classes with enough clips.
    """
    labels = _check_labels(labels)
    _check_int("n_way", n_way, 2, allow_none=True)
    _check_int("k_shot", k_shot, 1)
    _check_int("n_query", n_query, 1, allow_none=True)
    _check_int("num_episodes", num_episodes, 1)
    _check_int("seed", seed, 0)
    need = k_shot + (1 if n_query is None else n_query)
    classes, members, excluded = _classes_with_enough_clips(labels, need)
    ways = len(classes) if n_way is None else n_way
    if len(classes) < max(ways, 2):
        asked = f"n_way={n_way}" if n_way is not None else "n_way=None (every class, --n-way all)"
        raise ValueError(
            f"{asked} needs {max(ways, 2)} classes with at least {need} clips each "
            f"(k_shot={k_shot} + n_query={n_query if n_query is not None else '1 or more'}), but only "
            f"{len(classes)} of the {len(classes) + len(excluded)} classes have that many"
            + (f" (too few: {', '.join(map(str, excluded))})" if excluded else "")
        )
    if excluded:
        logger.info("few-shot episodes leave out %d class(es) with fewer than %d clips", len(excluded), need)
    episodes = []
    for index in range(num_episodes):
        rng = np.random.default_rng([seed, index])
        chosen = np.sort(rng.choice(len(classes), size=ways, replace=False))
        support, query, query_labels = [], [], []
        for position, c in enumerate(chosen):
            clips = rng.permutation(members[c])
            rest = clips[k_shot:] if n_query is None else clips[k_shot : k_shot + n_query]
            support.append(clips[:k_shot])
            query.append(rest)
            query_labels.append(np.full(len(rest), position))
        episodes.append(
            Episode(
                classes=classes[chosen],
                support=np.concatenate(support),
                support_labels=np.repeat(np.arange(ways), k_shot),
                query=np.concatenate(query),
                query_labels=np.concatenate(query_labels),
            )
        )
    return episodes


# ----------------------------------------------------------------------------------------------------
# Classifiers
# ----------------------------------------------------------------------------------------------------


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(x.dtype).tiny)


def _prototype(support, support_labels, query, ways: int, C: float) -> np.ndarray:
    prototypes = np.stack([support[support_labels == c].mean(axis=0) for c in range(ways)])
    # A mean of unit vectors is shorter than one; cosine similarity needs it normalised again.
    return np.argmax(query @ _l2_normalise(prototypes).T, axis=1)


def _logistic(support, support_labels, query, ways: int, C: float) -> np.ndarray:
    return LogisticRegression(C=C, max_iter=1000).fit(support, support_labels).predict(query)


_CLASSIFIERS = {"prototype": _prototype, "logistic": _logistic}


def _check_methods(methods, C) -> None:
    if isinstance(methods, str) or not methods or any(m not in _CLASSIFIERS for m in methods):
        raise ValueError(f"methods must be a non-empty sequence of {FEW_SHOT_METHODS}, got {methods!r}")
    if isinstance(C, bool) or not isinstance(C, int | float) or not C > 0:
        raise ValueError(f"C must be a positive number, got {C!r}")


def _summarise(accuracies: list[float]) -> FewShotScore:
    values = np.asarray(accuracies, dtype=np.float64)
    count = len(values)
    std = float(values.std(ddof=1)) if count > 1 else 0.0
    ci95 = float(stats.t.ppf(0.975, count - 1) * std / math.sqrt(count)) if count > 1 else None
    return FewShotScore(float(values.mean()), std, ci95, [float(v) for v in values])


def few_shot_evaluate(
    embeddings,
    labels: Sequence,
    *,
    n_way: int | None = 5,
    k_shot: int = 5,
    n_query: int | None = 15,
    num_episodes: int = 100,
    seed: int = 0,
    methods: Sequence[str] = FEW_SHOT_METHODS,
    C: float = 1.0,
) -> FewShotResult:
    """Few-shot accuracy of precomputed clip embeddings (see the module docstring for the protocol).

    Args:
        embeddings: ``(clips, dim)`` array, one row per clip.
        labels: one class per clip (integers or strings); the result names classes by these values.
        n_way, k_shot, n_query, num_episodes, seed: the episodes, as in :func:`sample_episodes`.
        methods: any of ``"prototype"`` and ``"logistic"``.
        C: the logistic regression's inverse L2-regularisation strength.

    Returns:
        a :class:`FewShotResult`.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = _check_labels(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(
            f"embeddings must be a (clips, dim) array with one row per label ({len(labels)}), "
            f"got shape {embeddings.shape}"
        )
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    _check_methods(methods, C)
    episodes = sample_episodes(labels, n_way, k_shot, n_query, num_episodes, seed)
    unit = _l2_normalise(embeddings)
    accuracies: dict[str, list[float]] = {method: [] for method in methods}
    # One BLAS thread: each fit is tiny, and extra threads only contend (as in the linear probe).
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for episode in episodes:
            ways = len(episode.classes)
            support, query = unit[episode.support], unit[episode.query]
            for method in methods:
                predicted = _CLASSIFIERS[method](support, episode.support_labels, query, ways, C)
                accuracies[method].append(balanced_accuracy_score(episode.query_labels, predicted))
    unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if unconverged:
        logger.warning("%d few-shot logistic regressions did not converge", unconverged)
    for other in caught:  # only non-convergence is summed up: anything else is passed on as it came
        if not issubclass(other.category, ConvergenceWarning):
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    classes, _, excluded = _classes_with_enough_clips(labels, k_shot + (1 if n_query is None else n_query))
    return FewShotResult(
        n_way=len(episodes[0].classes),
        k_shot=k_shot,
        n_query=n_query,
        num_episodes=num_episodes,
        seed=seed,
        chance_accuracy=1.0 / len(episodes[0].classes),
        num_clips=len(labels),
        classes=classes.tolist(),
        excluded_classes=np.asarray(excluded).tolist(),
        scores={method: _summarise(values) for method, values in accuracies.items()},
    )


# ----------------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------------


def clip_labels(dataset, label_column: str) -> list:
    """One class per clip of ``dataset``'s ``label_column``, by name when the column is a ``ClassLabel``.

    A list-valued column (the embedded corpus's multi-label ``labels``) must hold exactly one label per clip,
    as the single-event clips of its ``heldout`` split do; a clip with none or several is an error. A string
    with ``;`` holds several labels, as in the recipes.
    """
    from ..data.sources import _class_label_of

    columns = list(dataset.column_names)
    if label_column not in columns:
        raise ValueError(f"label_column {label_column!r} is not a column of the dataset; it has {columns}")
    class_label = _class_label_of(dataset.features[label_column])
    ids = dataset["clip_id"] if "clip_id" in columns else None
    labels = []
    for row, value in enumerate(dataset[label_column]):
        if isinstance(value, str) and ";" in value:
            # The recipes read "dog;siren" as two labels (a metadata.csv's multi-label cell): so does this.
            value = [token.strip() for token in value.split(";") if token.strip()]
        if isinstance(value, list | tuple):
            if len(value) != 1:
                clip = f"clip {ids[row]!r}" if ids is not None else f"row {row}"
                shown = [class_label.int2str(v) if class_label else v for v in value]
                raise ValueError(
                    f"{clip} has {len(value)} labels in {label_column!r} ({shown}); few-shot classification "
                    "needs exactly one label per clip (single-event clips, e.g. the embedded corpus's "
                    "heldout split, or a single-label column such as a scene)"
                )
            value = value[0]
        if value is None or isinstance(value, dict):
            raise ValueError(
                f"row {row} of {label_column!r} is {value!r}: a label column holds one class per clip"
            )
        labels.append(class_label.int2str(int(value)) if class_label is not None else value)
    return labels


def _as_teacher(model, feature_extractor):
    """``model`` as the library's frozen encoder, which embeds clips of any supported kind."""
    from ..objectives.teachers import _CLAP_MODEL_TYPES, _LIBRARY_PREFIX, FrozenTeacher, _model_type

    if isinstance(model, FrozenTeacher):
        return model
    model_type = _model_type(model)
    if model_type in _CLAP_MODEL_TYPES:
        kind = "clap"
    else:
        kind = "hf_audiorep" if model_type.startswith(_LIBRARY_PREFIX) else "auto"
    return FrozenTeacher(model, feature_extractor, kind)


@contextlib.contextmanager
def _restored(model):
    """The frozen encoder switches ``model`` to eval mode and freezes it; a model that is still being trained
    (a recipe's periodic evaluation) gets both back."""
    if model is None:
        yield
        return
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    try:
        yield
    finally:
        model.train(was_training)
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)


def few_shot_encoder(
    model,
    feature_extractor,
    dataset,
    *,
    label_column: str,
    n_way: int | None = 5,
    k_shot: int = 5,
    n_query: int | None = 15,
    num_episodes: int = 100,
    seed: int = 0,
    methods: Sequence[str] = FEW_SHOT_METHODS,
    C: float = 1.0,
    batch_size: int = 16,
    device=None,
) -> FewShotResult:
    """Few-shot accuracy of a frozen encoder on the clips of ``dataset``: one embedding pass, then
    :func:`few_shot_evaluate`.

    Args:
        model: any model of this library (its base encoder's ``pooler_output``), any transformers audio model
            (``pooler_output``, else the masked time-mean of ``last_hidden_state``), a CLAP model (its audio
            embedding), or a ready `~hf_audiorep.objectives.FrozenTeacher`. A classification head is set
            aside. Its training mode and ``requires_grad`` flags are the same afterwards.
        feature_extractor: the model's own feature extractor (ignored for a ``FrozenTeacher``).
        dataset: a map-style ``datasets.Dataset`` with an audio column; clips are embedded whole.
        label_column: one class per clip (see :func:`clip_labels`).
        n_way, k_shot, n_query, num_episodes, seed, methods, C: as in :func:`few_shot_evaluate`.
        batch_size: clips per forward pass.
        device: where the encoder runs (default: where it is).

    The embeddings come from `~hf_audiorep.objectives.precompute_teacher_embeddings`, the library's one
    embedding pass over a dataset for every kind of encoder (decoding, resampling to the encoder's rate,
    batching). A clip that cannot be decoded is left out, with a warning.
    """
    from datasets import Dataset

    from ..data.sources import find_audio_column
    from ..objectives.teachers import FrozenTeacher, precompute_teacher_embeddings

    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"dataset must be a map-style datasets.Dataset (episodes need every clip), got "
            f"{type(dataset).__name__}"
        )
    labels = clip_labels(dataset, label_column)
    # Every argument is checked before the (long) embedding pass.
    _check_methods(methods, C)
    sample_episodes(labels, n_way, k_shot, n_query, num_episodes, seed)
    audio = dataset.select_columns([find_audio_column(dataset, None)])
    with _restored(None if isinstance(model, FrozenTeacher) else model):
        if device is not None:
            model.to(device)
        teacher = _as_teacher(model, feature_extractor)
        embedded = precompute_teacher_embeddings(
            audio, teacher, column=_EMBEDDING_COLUMN, batch_size=batch_size
        )
    embeddings = np.asarray(embedded[_EMBEDDING_COLUMN], dtype=np.float32)
    decoded = np.isfinite(embeddings).all(axis=1)
    if not decoded.all():
        logger.warning("few-shot: %d clip(s) could not be decoded and are left out", int((~decoded).sum()))
    labels = [label for label, keep in zip(labels, decoded, strict=True) if keep]
    return few_shot_evaluate(
        embeddings[decoded],
        labels,
        n_way=n_way,
        k_shot=k_shot,
        n_query=n_query,
        num_episodes=num_episodes,
        seed=seed,
        methods=methods,
        C=C,
    )
