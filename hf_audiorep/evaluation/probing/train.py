"""Training a probe head on a feature cache for many epochs, and scoring it on another.

The encoder is out of the loop: an epoch is a pass over the cached features, so a probe trains for as many
epochs as it needs at the cost of reading the cache. AdamW (the library's parameter groups: no decay on
biases, gates and class weights), linear warmup then cosine decay, minibatches in a seeded random order; the
head's constraints (`ProbeHead.project_`) are restored after every step. BCE for multi-label tagging, cross-
entropy for single-label classification. Scores are the library's: macro mAP over the classes with a positive
(and accuracy for single-label data).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ...training.optim import build_optimizer, build_param_groups, build_scheduler
from ..metrics import accuracy, mean_average_precision
from .cache import FeatureCache
from .heads import ProbeHead

logger = logging.getLogger(__name__)

__all__ = ["evaluate_probe", "predict", "probe_loss", "train_probe"]


def probe_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """BCE on multi-hot ``labels`` (tagging), else cross-entropy on their argmax (one-hot classes)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.cross_entropy(logits, labels.argmax(dim=1))


def train_probe(
    head: ProbeHead,
    cache: FeatureCache,
    *,
    epochs: int = 100,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    weight_decay: float = 3e-4,
    warmup_ratio: float = 0.05,
    multi_label: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """Trains ``head`` on every clip of ``cache`` for ``epochs`` epochs.

    Returns ``{"history": [{"epoch", "loss"}, ...], "steps", "seconds"}`` (``loss``: the epoch's mean
    training loss). The head ends in eval mode on ``device``.
    """
    for field, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive integer, got {value!r}")
    if cache.num_labels != head.num_labels:
        raise ValueError(f"the cache has {cache.num_labels} classes but the head {head.num_labels}")
    device = torch.device(device or "cpu")
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
    return {"history": history, "steps": max_steps, "seconds": time.perf_counter() - started}


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
