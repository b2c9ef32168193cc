"""Linear probe: how linearly separable a frozen encoder's clip embeddings are on a labelled corpus.

Every pre-training recipe ends with it (and can plot it against the pre-training step): embed the train
and test clips with the frozen encoder's ``pooler_output``, standardise the features with the train
statistics, fit an L2-regularised logistic regression (scikit-learn, one binary model per class for
multi-label tagging, one multinomial model for single-label classification) and score the test clips
with the library's mAP.

The classifiers run with a single BLAS thread: each fit is a few hundred small matrix-vector products,
which extra threads only slow down (measured: 0.92 s per class with 2 OpenBLAS threads against 0.04 s
with one, for 1,600 x 768 features on a busy 2-core machine).
"""

from __future__ import annotations

import functools
import logging
import numbers
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from scipy.special import log_softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from .metrics import accuracy, mean_average_precision

logger = logging.getLogger(__name__)

__all__ = [
    "C_GRID",
    "chance_baseline",
    "clip_input_statistics",
    "extract_embeddings",
    "fit_linear_classifier",
    "linear_probe",
    "linear_probe_encoder",
    "parse_C",
    "select_C",
]

#: the inverse L2 strengths `select_C` tries: powers of ten, as CLIP's linear-probe sweep
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
#: `linear_probe`'s C chosen by `select_C`
AUTO_C = "auto"


def extract_embeddings(
    model,
    batches: Iterable[dict],
    feature_extractor,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled embeddings and targets of every clip in ``batches``.

    Args:
        model: a base encoder returning ``pooler_output``, or a model whose ``base_model`` is one (a
            classification or pre-training head; the head itself is not used).
        batches: the library's ``{"waveforms", "lengths", "labels"}`` batches, e.g. an
            ``AudioStream(train=False)``.
        feature_extractor: has ``batch_features(waveforms, lengths)`` (the in-step, on-device path).
        device: where to run (default: the model's device).
        max_batches: stop after this many batches.

    Returns:
        ``X`` ``(N, D)`` float32 and ``Y`` ``(N, C)`` numpy arrays. The model is in eval mode meanwhile and
        gets its training mode back afterwards.
    """
    X, Y, _ = _extract(model, batches, feature_extractor, device, max_batches, input_statistics=False)
    return X, Y


@torch.no_grad()
def _extract(model, batches, feature_extractor, device, max_batches, input_statistics: bool):
    """`extract_embeddings`, and with ``input_statistics`` also each clip's `input_statistics` from the same
    pass over the clips (else None)."""
    if not callable(getattr(feature_extractor, "batch_features", None)):
        raise TypeError(
            "feature_extractor must have batch_features(waveforms, lengths), got "
            f"{type(feature_extractor).__name__}"
        )
    if max_batches is not None and (isinstance(max_batches, bool) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    encoder = getattr(model, "base_model", model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    features, targets, statistics = [], [], []
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            waveforms = batch["waveforms"].to(device, non_blocking=True)
            # The filterbank stays in float32 even when the caller runs under autocast.
            with torch.autocast(device.type, enabled=False):
                input_values, attention_mask = feature_extractor.batch_features(
                    waveforms.float(), batch["lengths"].to(device)
                )
            if input_statistics:
                statistics.append(clip_input_statistics(input_values, attention_mask).cpu().numpy())
            outputs = encoder(input_values=input_values, attention_mask=attention_mask)
            pooled = getattr(outputs, "pooler_output", None)
            if pooled is None:
                raise TypeError(
                    f"{type(encoder).__name__} returned no pooler_output; a linear probe needs a pooled clip "
                    "embedding"
                )
            features.append(pooled.float().cpu().numpy())
            targets.append(
                np.asarray(batch["labels"].cpu() if torch.is_tensor(batch["labels"]) else batch["labels"])
            )
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("the batches produced no clips")
    X = np.concatenate(features).astype(np.float32, copy=False)
    return X, np.concatenate(targets), np.concatenate(statistics) if input_statistics else None


def clip_input_statistics(input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each clip's mean and standard deviation of every feature bin over its real frames, ``(B, 2 F)``
    float32, from ``(B, T, F)`` features and their ``(B, T)`` frame mask: the hand-made clip features of the
    trivial baseline a learned encoder must beat (a linear model of log-mel statistics). A clip without a
    real frame gets zeros."""
    values = input_values.float()
    mask = attention_mask.to(values.dtype).unsqueeze(-1)
    frames = mask.sum(dim=1).clamp_min(1.0)
    mean = (values * mask).sum(dim=1) / frames
    variance = ((values - mean.unsqueeze(1)).square() * mask).sum(dim=1) / frames
    return torch.cat([mean, variance.sqrt()], dim=1)


def chance_baseline(train_targets: np.ndarray, test_targets: np.ndarray) -> dict[str, float]:
    """The trivial baseline: a constant score, whose AP for a class is its test prevalence (``chance_mAP``:
    their mean over the classes with a positive), and, for single-label ``(N,)`` class indices, always
    predicting the most frequent train class (``chance_accuracy``). Multi-hot ``(N, C)`` targets are rounded
    at 0.5."""
    test_targets = np.asarray(test_targets)
    if test_targets.ndim == 1:
        majority = np.bincount(np.asarray(train_targets)).argmax()
        # Classes absent from the test split have no AP, so they are left out of the constant's mAP.
        prevalence = np.bincount(test_targets) / len(test_targets)
        return {
            "chance_mAP": float(prevalence[prevalence > 0].mean()),
            "chance_accuracy": float(np.mean(test_targets == majority)),
        }
    prevalence = (test_targets >= 0.5).mean(axis=0)
    return {"chance_mAP": float(prevalence[prevalence > 0].mean())}


def _check_split(name: str, X, Y, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"{name}_X must be a non-empty (clips, features) array, got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{name}_X contains NaN or infinite values")
    if len(Y) != len(X):
        raise ValueError(f"{name}_X has {len(X)} clips but {name}_Y has {len(Y)}")
    if multi_label and Y.ndim != 2:
        raise ValueError(
            f"{name}_Y must be (clips, classes) multi-hot for multi_label=True, got shape {Y.shape}"
        )
    if not multi_label and Y.ndim not in (1, 2):
        raise ValueError(
            f"{name}_Y must be (clips,) class indices or (clips, classes) one-hot, got {Y.shape}"
        )
    return X, Y


def linear_probe(
    train_X,
    train_Y,
    test_X,
    test_Y,
    multi_label: bool = True,
    C: float | str = 1.0,
    max_iter: int = 1000,
) -> dict[str, float]:
    """Fit a logistic-regression probe on ``train`` and score it on ``test``.

    Args:
        train_X, test_X: ``(N, D)`` embeddings; standardised with the train mean and variance.
        train_Y, test_Y: ``(N, C)`` multi-hot targets (soft targets are rounded at 0.5); for
            ``multi_label=False`` also ``(N,)`` class indices.
        multi_label: one binary classifier per class (AudioSet tagging) if True, else one multinomial
            classifier (scene classification).
        C: inverse L2-regularisation strength (scikit-learn's ``C``), or ``"auto"``: the value of
            `C_GRID` that `select_C` picks by cross-validation on the train clips. A comparison of
            different encoders wants ``"auto"``: each encoder's features want their own penalty.
        max_iter: L-BFGS iterations per classifier.

    Returns:
        ``probe_mAP`` and ``probe_mAUC`` (macro over the test classes with a positive), ``probe_accuracy``
        for single-label probes, ``probe_C`` (the C fitted with), and ``probe_num_train_clips``,
        ``probe_num_clips`` (test), ``probe_num_classes`` and ``probe_num_classes_evaluated``. A class
        with no positive (or no negative) in train gets a constant score, which scores chance AP on test.
    """
    _check_fit_options(C, max_iter, allow_auto=True)
    train_X, train_Y = _check_split("train", train_X, train_Y, multi_label)
    test_X, test_Y = _check_split("test", test_X, test_Y, multi_label)
    if train_X.shape[1] != test_X.shape[1]:
        raise ValueError(f"train_X has {train_X.shape[1]} features but test_X has {test_X.shape[1]}")
    if multi_label and train_Y.shape[1] != test_Y.shape[1]:
        raise ValueError(f"train_Y has {train_Y.shape[1]} classes but test_Y has {test_Y.shape[1]}")
    if C == AUTO_C:
        C, _ = select_C(train_X, train_Y, multi_label, max_iter=max_iter)
    weight, bias = _fit(train_X, train_Y, multi_label, C, max_iter)
    logits = test_X.astype(np.float64) @ weight.T + bias
    if multi_label:
        scores, targets, extra = logits, np.asarray(test_Y, dtype=np.float64), {}
    else:
        scores, targets, extra = _single_label_scores(logits, train_Y, test_Y)
    result = mean_average_precision(scores, targets)
    return {
        "probe_mAP": result.mAP,
        "probe_mAUC": result.mAUC,
        **extra,
        "probe_C": float(C),
        "probe_num_train_clips": len(train_X),
        "probe_num_clips": result.num_clips,
        "probe_num_classes": int(targets.shape[1]),
        "probe_num_classes_evaluated": result.num_classes_evaluated,
    }


def _warn_unconverged(caught: list, max_iter: int) -> None:
    unconverged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    if unconverged:
        logger.warning(
            "%d of the probe's logistic regressions did not converge in max_iter=%d iterations",
            unconverged,
            max_iter,
        )


def _single_label_scores(logits, train_Y, test_Y):
    """The single-label probe's scores: the log-probabilities of the classes seen in train (the fitted
    logits' log-softmax), a finite floor for the others (never predicted; it keeps the metrics defined), over
    the classes of both splits."""
    num_classes = max(
        train_Y.shape[1] if train_Y.ndim == 2 else int(train_Y.max()) + 1,
        test_Y.shape[1] if test_Y.ndim == 2 else int(test_Y.max()) + 1,
    )
    train_y = train_Y.argmax(axis=1) if train_Y.ndim == 2 else train_Y.astype(np.int64)
    test_y = test_Y.argmax(axis=1) if test_Y.ndim == 2 else test_Y.astype(np.int64)
    seen = np.unique(train_y)
    scores = np.full((len(logits), num_classes), np.finfo(np.float32).min, dtype=np.float64)
    scores[:, seen] = log_softmax(logits[:, seen], axis=1)
    targets = np.eye(num_classes)[test_y]
    return scores, targets, {"probe_accuracy": accuracy(scores, test_y)}


def linear_probe_encoder(
    model,
    train_batches: Iterable[dict],
    test_batches: Iterable[dict],
    feature_extractor,
    device: str | torch.device | None = None,
    multi_label: bool = True,
    C: float | str = 1.0,
    max_iter: int = 1000,
    max_train_batches: int | None = None,
    max_test_batches: int | None = None,
    baselines: bool = False,
) -> dict[str, float]:
    """`extract_embeddings` on both splits, then `linear_probe`: the probe mAP of a frozen encoder.

    With ``baselines``, the same clips also give the two trivial baselines the encoder's probe is read
    against, from the same pass: ``probe_mAP_chance`` (a constant score, `chance_baseline`) and
    ``probe_mAP_input_statistics``, the same probe (same C, or C chosen the same way) of each clip's
    `clip_input_statistics` instead of its embedding: what the encoder's input already offers a linear
    model without any encoder.
    """
    extract = functools.partial(
        _extract, model, feature_extractor=feature_extractor, device=device, input_statistics=baselines
    )
    train_X, train_Y, train_S = extract(train_batches, max_batches=max_train_batches)
    test_X, test_Y, test_S = extract(test_batches, max_batches=max_test_batches)
    probe = functools.partial(linear_probe, multi_label=multi_label, C=C, max_iter=max_iter)
    result = probe(train_X, train_Y, test_X, test_Y)
    if baselines:
        chance = chance_baseline(_class_targets(train_Y, multi_label), _class_targets(test_Y, multi_label))
        result["probe_mAP_chance"] = chance["chance_mAP"]
        result["probe_mAP_input_statistics"] = probe(train_S, train_Y, test_S, test_Y)["probe_mAP"]
    return result


def _class_targets(Y: np.ndarray, multi_label: bool) -> np.ndarray:
    """Single-label one-hot rows as class indices, as `chance_baseline` reads them."""
    Y = np.asarray(Y)
    return Y.argmax(axis=1) if not multi_label and Y.ndim == 2 else Y


def fit_linear_classifier(
    train_X, train_Y, multi_label: bool = True, C: float = 1.0, max_iter: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """The probe's logistic regression as the weights of a linear layer on the raw embeddings.

    The fit `linear_probe` scores (standardised features, L-BFGS, one binary model per class or one
    multinomial model), with the standardisation folded in: ``logits = X @ weight.T + bias`` on the
    un-standardised ``X`` equals the fitted decision function. Two classes, which scikit-learn fits as one
    binary model, get opposite halves of its log-odds. What LP-FT (Kumar et al., 2022) starts a fine-tuning
    head from.

    A class the train split gives one value only gets a zero weight and the log-odds of its (Laplace-smoothed)
    frequency; a single-label class never seen gets a zero weight and a bias below every seen class's.

    Returns:
        ``weight`` ``(classes, D)`` and ``bias`` ``(classes,)``, float32.
    """
    _check_fit_options(C, max_iter)
    train_X, train_Y = _check_split("train", train_X, train_Y, multi_label)
    weight, bias = _fit(train_X, train_Y, multi_label, C, max_iter)
    return weight.astype(np.float32), bias.astype(np.float32)


def parse_C(value, name: str = "C") -> float | str:
    """A probe's C as given on a command line: a positive number, or ``"auto"`` (chosen by `select_C`);
    anything else is a ValueError naming the option ``name``."""
    if isinstance(value, str) and value.strip().lower() == AUTO_C:
        return AUTO_C
    try:
        C = float(value)
    except (TypeError, ValueError):
        C = float("nan")
    if not C > 0 or not np.isfinite(C):
        raise ValueError(f"{name} must be a positive number or {AUTO_C!r}, got {value!r}")
    return C


def _check_fit_options(C, max_iter, allow_auto: bool = False) -> None:
    chosen_later = allow_auto and C == AUTO_C
    if not chosen_later and (isinstance(C, (str, bool)) or not isinstance(C, numbers.Real) or not C > 0):
        raise ValueError(f"C must be positive, got {C!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")


def _fit(train_X, train_Y, multi_label, C, max_iter) -> tuple[np.ndarray, np.ndarray]:
    """`fit_linear_classifier` on checked arguments, in float64."""
    scaler = StandardScaler().fit(train_X)
    standardised = scaler.transform(train_X)
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if multi_label:
            positive = np.asarray(train_Y, dtype=np.float64) >= 0.5
            weight, bias = _fit_binary_per_class(standardised, positive, C, max_iter)
        else:
            weight, bias = _fit_multinomial(standardised, train_Y, C, max_iter)
    _warn_unconverged(caught, max_iter)
    # w . (x - mean) / scale + b  ==  (w / scale) . x + (b - (w / scale) . mean)
    weight = weight / scaler.scale_
    bias = bias - weight @ scaler.mean_
    if not multi_label:
        # A class no train clip has is never predicted over a seen one: a constant logit below the lowest
        # logit of any seen class on the train clips, by the log of the clip count.
        y = train_Y.argmax(axis=1) if train_Y.ndim == 2 else train_Y.astype(np.int64)
        seen = np.zeros(len(bias), dtype=bool)
        seen[y] = True
        bias[~seen] = (train_X @ weight[seen].T + bias[seen]).min() - np.log(len(y) + 1)
    return weight, bias


def select_C(
    train_X,
    train_Y,
    multi_label: bool = True,
    grid: Iterable[float] = C_GRID,
    folds: int = 3,
    seed: int = 0,
    max_iter: int = 1000,
) -> tuple[float, dict[float, float]]:
    """The inverse L2 strength of ``grid`` whose `fit_linear_classifier` scores the best mAP on held-out train
    clips: the clips are shuffled (``numpy.random.default_rng(seed).permutation``) and split into ``folds``
    near-equal parts (``numpy.array_split``), each held out in turn, and the mAP of each fold (macro over its
    classes with a positive; single-label folds scored by the log-probabilities `linear_probe` scores its test
    clips by) is averaged; a fold without a positive of any class has no mAP and is left out.
    Ties go to the smaller C (the stronger penalty). No test clip is read: a C picked on the test split would
    flatter the probe.

    How much regularisation a linear probe needs depends on the features: on the corpus a pre-trained
    AudioMAE-tiny's probe wants a far weaker penalty than its random initialisation or CAT-small, so any one
    fixed C favours one encoder over another (docs/benchmarks.md, "A linear probe fitted to its optimum").

    Returns ``(C, {C: mean held-out mAP})``.
    """
    grid = tuple(float(C) for C in grid)
    if not grid or not all(C > 0 for C in grid):
        raise ValueError(f"the C grid must hold positive values, got {grid!r}")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    X, Y = _check_split("train", train_X, train_Y, multi_label)
    if len(X) < folds:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} clips, got {len(X)}")
    if not multi_label and Y.ndim == 1:
        Y = np.eye(int(Y.max()) + 1, dtype=np.float32)[Y.astype(np.int64)]
    parts = np.array_split(np.random.default_rng(seed).permutation(len(X)), folds)
    # A fold with no positive of any class has no mAP (small or sparsely labelled sets): it is left out.
    parts_scored = [k for k, part in enumerate(parts) if (np.asarray(Y[part], dtype=np.float64) >= 0.5).any()]
    if not parts_scored:
        raise ValueError(
            f"no held-out fold of the {len(X)} train clips has a positive example: C cannot be chosen by "
            "cross-validation here; give C (recipes/probe.py: --lbfgs_C)"
        )
    scores = {}
    for C in grid:
        held_out = []
        for k in parts_scored:
            part = parts[k]
            fit = np.concatenate([p for j, p in enumerate(parts) if j != k])
            weight, bias = fit_linear_classifier(X[fit], Y[fit], multi_label, C=C, max_iter=max_iter)
            logits, targets = X[part] @ weight.T + bias, Y[part]
            if not multi_label:
                # Scored as `linear_probe` scores its test clips. A multinomial model's logits carry a
                # per-clip shift that the softmax ignores, so a class's raw logit ranks clips differently
                # from its probability: with three or more classes, held-out mAP of raw logits can favour
                # a C that is worse on the log-probabilities the probe is measured by.
                logits, targets, _ = _single_label_scores(logits, Y[fit], targets)
            held_out.append(mean_average_precision(logits, targets).mAP)
        scores[C] = float(np.mean(held_out))
    best = max(grid, key=lambda C: (scores[C], -C))
    return best, scores


def _fit_binary_per_class(X, Y, C, max_iter):
    weight, bias = np.zeros((Y.shape[1], X.shape[1])), np.zeros(Y.shape[1])
    for c in range(Y.shape[1]):
        positives = int(Y[:, c].sum())
        if 0 < positives < len(Y):
            classifier = LogisticRegression(C=C, max_iter=max_iter).fit(X, Y[:, c])
            weight[c], bias[c] = classifier.coef_[0], classifier.intercept_[0]
        else:
            bias[c] = np.log((positives + 0.5) / (len(Y) - positives + 0.5))
    return weight, bias


def _fit_multinomial(X, Y, C, max_iter):
    num_classes = Y.shape[1] if Y.ndim == 2 else int(Y.max()) + 1
    y = Y.argmax(axis=1) if Y.ndim == 2 else Y.astype(np.int64)
    seen = np.unique(y)
    weight, bias = np.zeros((num_classes, X.shape[1])), np.zeros(num_classes)
    if len(seen) > 1:
        classifier = LogisticRegression(C=C, max_iter=max_iter).fit(X, y)
        coef, intercept = classifier.coef_, classifier.intercept_
        if len(classifier.classes_) == 2:
            # Two classes are fitted as one binary model, the log-odds of classes_[1] against classes_[0]
            # (one row): split it into two opposite halves, whose softmax is that model's probability.
            coef, intercept = np.stack([-coef[0], coef[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
        weight[classifier.classes_], bias[classifier.classes_] = coef, intercept
    return weight, bias
