"""Training a probe head on a feature cache for many epochs, and scoring it on another.

The encoder is out of the loop: an epoch is a pass over the cached features, so a probe trains for as many
epochs as it needs at the cost of reading the cache. AdamW (the library's parameter groups: no decay on
biases, gates and class weights), linear warmup then cosine decay, minibatches in a seeded random order; the
head's constraints (`ProbeHead.project_`) are restored after every step. BCE for multi-label tagging, cross-
entropy for single-label classification. Scores are the library's: macro mAP over the classes with a positive
(and accuracy for single-label data).

The linear head, whose fit is convex, can instead be fitted to its optimum (``optimizer="lbfgs"``): the
pooled vectors are computed once and the library's L2-regularised logistic regression (scikit-learn's L-BFGS,
`fit_linear_classifier`) is fitted on them and written into the head. An AdamW head stops wherever its
epochs end, which acts as a penalty of its own and on the corpus cost pre-trained encoders more than random
ones (docs/benchmarks.md, "A linear probe fitted to its optimum").
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ...training.optim import build_optimizer, build_param_groups, build_scheduler
from ..linear_probe import C_GRID, fit_linear_classifier, select_C
from ..metrics import accuracy, mean_average_precision
from .cache import FeatureCache
from .heads import LinearProbe, ProbeHead

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO_CENTRING_SHARE",
    "OPTIMIZERS",
    "evaluate_probe",
    "fit_linear_head",
    "position_means",
    "position_share",
    "predict",
    "probe_loss",
    "train_probe",
]

#: ``center_positions="auto"`` centres the tokens when their positions' means hold more than this share of
#: their variance: the encoders measured sit far on either side of it, and centring helped CGP only on the
#: one above it (docs/benchmarks.md, "Why CGP did not close the gap").
AUTO_CENTRING_SHARE = 0.5
#: how `train_probe` fits a head: AdamW epochs (every head) or L-BFGS to the optimum (the linear head)
OPTIMIZERS = ("adamw", "lbfgs")


def probe_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """BCE on multi-hot ``labels`` (tagging), else cross-entropy on their argmax (one-hot classes)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.cross_entropy(logits, labels.argmax(dim=1))


def _normalised_tokens(cache: FeatureCache, batch_size: int):
    """``(features, mask)`` batches of ``cache`` in float64: the tokens normalised as the heads normalise them
    (LayerNorm without affine) and the real-token mask, so that sums over many clips do not drift."""
    for start in range(0, len(cache), batch_size):
        features, mask, _ = cache.read(slice(start, start + batch_size), "cpu")
        yield F.layer_norm(features.float(), (cache.hidden_size,)).double(), mask.double()


@torch.no_grad()
def position_means(cache: FeatureCache, batch_size: int = 256) -> torch.Tensor:
    """Each layer's mean normalised token at each position over the clips of ``cache`` where that token is
    real: ``(layers, tokens, dim)`` float32, 0 at a position no clip reaches."""
    total = torch.zeros(cache.num_layers, cache.num_tokens, cache.hidden_size, dtype=torch.float64)
    count = torch.zeros(cache.num_tokens, dtype=torch.float64)
    for features, mask in _normalised_tokens(cache, batch_size):
        total += torch.einsum("bltd,bt->ltd", features, mask)
        count += mask.sum(dim=0)
    return (total / count.clamp(min=1)[None, :, None]).float()


@torch.no_grad()
def position_share(cache: FeatureCache, means: torch.Tensor | None = None, batch_size: int = 256) -> float:
    """The share of the normalised real tokens' variance (summed over the layers) that their positions'
    means hold: 1 when a token is its position's pattern whatever the clip, 0 when position says nothing.
    ``means``: the cache's `position_means`, when already computed."""
    means = (position_means(cache, batch_size) if means is None else means).double()
    squares = torch.zeros(cache.num_layers, dtype=torch.float64)
    count = torch.zeros(cache.num_tokens, dtype=torch.float64)
    for features, mask in _normalised_tokens(cache, batch_size):
        squares += torch.einsum("bltd,bt->l", features.pow(2), mask)
        count += mask.sum(dim=0)
    tokens = count.sum().clamp(min=1)
    overall = torch.einsum("ltd,t->ld", means, count) / tokens
    total = squares / tokens - overall.pow(2).sum(-1)
    between = torch.einsum("lt,t->l", means.pow(2).sum(-1), count) / tokens - overall.pow(2).sum(-1)
    return float(between.sum() / total.sum().clamp(min=1e-12))


def train_probe(
    head: ProbeHead,
    cache: FeatureCache,
    *,
    center_positions: bool | str = False,
    epochs: int = 100,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    weight_decay: float = 3e-4,
    warmup_ratio: float = 0.05,
    multi_label: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
    optimizer: str = "adamw",
    C: float | None = 1.0,
) -> dict:
    """Trains ``head`` on every clip of ``cache``: for ``epochs`` epochs of AdamW, or with
    ``optimizer="lbfgs"`` (a `LinearProbe` only) to the optimum of the L2-regularised logistic regression
    with inverse strength ``C``, or with ``C=None`` the one of `C_GRID` that cross-validation on the train
    clips picks (`fit_linear_head`; the epoch and AdamW arguments are then unused). With
    ``center_positions=True`` the head first gets the cache's `position_means` to centre its tokens on; with
    ``"auto"`` only when those means hold more than `AUTO_CENTRING_SHARE` of the tokens' variance
    (`position_share`); with False it reads them uncentred.

    Returns ``{"history": [{"epoch", "loss"}, ...], "steps", "seconds", "centred", "position_share"}``
    (``loss``: the epoch's mean training loss, for L-BFGS one row with the fitted head's; ``steps``: 0 for
    L-BFGS; ``position_share`` only when measured, else None), and for L-BFGS ``C`` and ``C_scores`` (the
    cross-validated mAP of each C tried, None when C was given). The head ends in eval mode on ``device``.
    """
    if center_positions not in (True, False, "auto"):
        raise ValueError(f"center_positions must be True, False or 'auto', got {center_positions!r}")
    for field, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive integer, got {value!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if optimizer == "lbfgs" and type(head) is not LinearProbe:
        raise ValueError(
            "optimizer='lbfgs' fits the linear head only (a convex fit); the "
            f"{head.name or type(head).__name__} head trains with optimizer='adamw'"
        )
    if optimizer == "lbfgs" and C is not None and not C > 0:
        raise ValueError(f"C must be positive or None (chosen by cross-validation), got {C!r}")
    if cache.num_labels != head.num_labels:
        raise ValueError(f"the cache has {cache.num_labels} classes but the head {head.num_labels}")
    device = torch.device(device or "cpu")
    means = share = None
    if center_positions:
        means = position_means(cache)
        if center_positions == "auto":
            share = position_share(cache, means)
            means = means if share > AUTO_CENTRING_SHARE else None
            logger.info(
                "the positions' means hold %.2f of the tokens' variance: centring %s",
                share,
                "on" if means is not None else "off",
            )
    head.set_position_means(means)
    if optimizer == "lbfgs":
        started = time.perf_counter()
        fit = fit_linear_head(
            head, cache, C=C, multi_label=multi_label, batch_size=batch_size, device=device, seed=seed
        )
        return {
            "history": [{"epoch": 1, "loss": fit["loss"]}],
            "steps": 0,
            "seconds": time.perf_counter() - started,
            "centred": means is not None,
            "position_share": share,
            "C": fit["C"],
            "C_scores": fit["C_scores"],
        }
    head.to(device).train()
    steps_per_epoch = math.ceil(len(cache) / batch_size)  # the last partial batch too: small sets keep it
    max_steps = epochs * steps_per_epoch
    optimizer = build_optimizer(build_param_groups(head, weight_decay), learning_rate, weight_decay)
    scheduler = build_scheduler(
        optimizer, max_steps, round(warmup_ratio * max_steps), "cosine", learning_rate
    )
    order_rng = np.random.default_rng(seed)
    history, started = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        order, total = order_rng.permutation(len(cache)), 0.0
        for start in range(0, len(cache), batch_size):
            indices = np.sort(order[start : start + batch_size])  # in file order: sequential memory-map reads
            features, mask, labels = cache.read(indices, device)
            loss = probe_loss(head(features, mask), labels, multi_label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            head.project_()
            total += loss.item() * len(indices)
        history.append({"epoch": epoch, "loss": total / len(cache)})
        logger.info("probe epoch %d/%d: loss %.4f", epoch, epochs, history[-1]["loss"])
    head.eval()
    seconds = time.perf_counter() - started
    centred = means is not None
    return {
        "history": history,
        "steps": max_steps,
        "seconds": seconds,
        "centred": centred,
        "position_share": share,
    }


#: folds of the cross-validation that chooses the linear head's C when none is given
CV_FOLDS = 3


def _check_cv_clips(clips: int) -> None:
    # select_C's own error names the folds but not the way around them, a given C.
    if clips < CV_FOLDS:
        raise ValueError(
            f"choosing C by {CV_FOLDS}-fold cross-validation needs at least {CV_FOLDS} train clips, got "
            f"{clips}: set --lbfgs_C to skip the cross-validation (C=... in fit_linear_head and "
            "train_probe), or train on more clips"
        )


@torch.no_grad()
def fit_linear_head(
    head: LinearProbe,
    cache: FeatureCache,
    *,
    C: float | None = 1.0,
    multi_label: bool = True,
    batch_size: int = 64,
    max_iter: int = 1000,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> dict:
    """Fits ``head``'s classifier to the optimum of the L2-regularised logistic regression on its pooled
    vectors of every clip of ``cache`` (`fit_linear_classifier`: standardised, L-BFGS, inverse strength
    ``C``; one binary model per class, or one multinomial model). With ``C=None`` the C of `C_GRID` with the
    best 3-fold cross-validated mAP on the same clips (`select_C`, folds drawn with ``seed``) is used.
    Returns ``{"loss": the fitted head's mean training loss, "C", "C_scores": {C: held-out mAP} or None}``.
    A standardising head gets the pooled vectors' mean and variance as its running statistics and the
    classifier of the standardised vectors, so it gives the fitted logits in eval mode. The cache is read
    in ``batch_size`` clips; only the ``(clips, dim)`` pooled vectors are held. The head ends in eval mode on
    ``device``."""
    device = torch.device(device or "cpu")
    head.to(device).eval()
    pooled = torch.cat(
        [
            head.pool(*head.prepare(*cache.read(slice(start, start + batch_size), device)[:2])).double().cpu()
            for start in range(0, len(cache), batch_size)
        ]
    )
    labels = np.asarray(cache.labels, dtype=np.float32)
    scores = None
    if C is None:
        _check_cv_clips(len(pooled))
        C, scores = select_C(
            pooled.numpy(), labels, multi_label, C_GRID, folds=CV_FOLDS, seed=seed, max_iter=max_iter
        )
        logger.info("C=%g chosen by cross-validation (held-out mAP per C: %s)", C, scores)
    weight, bias = (
        torch.from_numpy(a).double()
        for a in fit_linear_classifier(pooled.numpy(), labels, multi_label, C=C, max_iter=max_iter)
    )  # logits = pooled @ weight.T + bias
    norm = head.standardizer
    if norm is not None:
        # BatchNorm in eval mode gives (x - mean) / sqrt(var + eps): its classifier is the folded one scaled
        # back, so that the whole head computes pooled @ weight.T + bias.
        mean, var = pooled.mean(dim=0), pooled.var(dim=0, unbiased=False)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(var)
        bias = bias + weight @ mean
        weight = weight * (var + norm.eps).sqrt()
    head.classifier.weight.copy_(weight)
    head.classifier.bias.copy_(bias)
    logits = head.classify_pooled(pooled.to(device=device, dtype=head.classifier.weight.dtype))
    loss = probe_loss(logits, torch.from_numpy(labels).to(device), multi_label).item()
    return {"loss": loss, "C": C, "C_scores": scores}


@torch.no_grad()
def predict(
    head: ProbeHead, cache: FeatureCache, batch_size: int = 64, device: str | torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The eval-mode head's logits ``(clips, classes)`` on every clip of ``cache``, in cache order, and the
    cached labels."""
    device = torch.device(device or "cpu")
    was_training = head.training
    head.to(device).eval()
    try:
        logits = [
            head(*cache.read(slice(start, start + batch_size), device)[:2]).float().cpu()
            for start in range(0, len(cache), batch_size)
        ]
    finally:
        head.train(was_training)
    return torch.cat(logits).numpy(), np.asarray(cache.labels, dtype=np.float32)


def evaluate_probe(
    head: ProbeHead,
    cache: FeatureCache,
    multi_label: bool = True,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    prefix: str = "test_",
) -> dict:
    """``{prefix}mAP``, ``mAUC``, ``num_clips``, ``num_classes_evaluated`` (and ``accuracy`` for single-label
    data) of ``head`` on ``cache``."""
    logits, labels = predict(head, cache, batch_size, device)
    results = mean_average_precision(logits, labels).as_dict(prefix)
    if not multi_label:
        results[f"{prefix}accuracy"] = accuracy(logits, labels.argmax(axis=1))
    return results
