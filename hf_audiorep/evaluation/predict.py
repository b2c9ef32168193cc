"""Run a classifier over a batch stream and score it, across any number of processes."""

from __future__ import annotations

import logging

import numpy as np
import torch
from accelerate.utils import gather_object

from .metrics import TaggingScores, classification_scores, mean_average_precision

logger = logging.getLogger(__name__)


@torch.no_grad()
def collect_predictions(
    model, batches, feature_extractor, device=None, accelerator=None
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets of this process's share of ``batches`` (an AudioStream at evaluation).

    When the model's parameters are sharded over the processes (FSDP, DeepSpeed ZeRO-3:
    :func:`~hf_audiorep.training.checkpoint.shards_parameters` of ``accelerator``), every forward gathers the
    weights from all ranks, so every rank must run as many forwards as the others, while the shards of an
    evaluation stream can differ by a batch or more at the tail. The ranks then run in lockstep: before each
    batch they agree (one gather of two numbers) whether any rank still has one, and a rank whose shard is
    done runs a one-clip stand-in of silence through the model, whose output it discards. Otherwise nothing
    is exchanged between the processes.
    """
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()

    def forward(waveforms: torch.Tensor, lengths: torch.Tensor):
        features, mask = feature_extractor.batch_features(waveforms, lengths)
        return model(input_values=features, attention_mask=mask)

    if _parameters_sharded(accelerator):
        batches = _in_lockstep(batches, lambda *mine: _agree(accelerator, device, *mine), forward, device)
    logits, targets = [], []
    for batch in batches:
        out = forward(batch["waveforms"].to(device, non_blocking=True), batch["lengths"].to(device))
        _check_columns(out.logits, batch["labels"])
        logits.append(out.logits.float().cpu().numpy())
        targets.append(batch["labels"].numpy())
    model.train(was_training)
    num_classes = getattr(model.config, "num_labels", 0)
    if not logits:
        return np.zeros((0, num_classes), np.float32), np.zeros((0, num_classes), np.float32)
    return np.concatenate(logits), np.concatenate(targets)


def _parameters_sharded(accelerator) -> bool:
    from ..training.checkpoint import shards_parameters  # the training package is not needed otherwise

    return accelerator is not None and accelerator.num_processes > 1 and shards_parameters(accelerator)


def _agree(accelerator, device, has_batch: bool, num_samples: int) -> tuple[bool, int]:
    """Whether any rank still has a batch, and the widest of those batches (in samples): one gather."""
    mine = torch.tensor([[int(has_batch), num_samples]], dtype=torch.long, device=device)
    every = accelerator.gather(mine).reshape(-1, 2)
    return bool(every[:, 0].any()), int(every[:, 1].max())


def _in_lockstep(batches, agree, forward, device):
    """This rank's ``batches``, yielded one per round while any rank has one left; in a round where this
    rank has none, ``forward`` runs on a stand-in (one silent clip as wide as the other ranks' batches) and
    nothing is yielded. ``agree(has_batch, num_samples) -> (any_rank_has_one, widest)`` is the collective."""
    iterator = iter(batches)
    exhausted = False
    while True:
        batch = None if exhausted else next(iterator, None)
        exhausted = batch is None
        any_left, widest = agree(not exhausted, 0 if exhausted else int(batch["waveforms"].shape[-1]))
        if not any_left:
            return
        if not exhausted:
            yield batch
        else:
            forward(torch.zeros(1, widest, device=device), torch.full((1,), widest, device=device))


def _check_columns(logits: torch.Tensor, targets: torch.Tensor) -> None:
    # Scoring (B, C) logits against targets of another width would give a number, and a wrong one.
    if logits.shape[-1] != targets.shape[-1]:
        raise ValueError(
            f"the model outputs {logits.shape[-1]} classes but the evaluation targets have "
            f"{targets.shape[-1]}: the evaluation split was read with another label vocabulary than the "
            "model's (load every split with the train split's label_names)"
        )


def evaluate_classifier(
    model, batches, feature_extractor, accelerator=None, prefix: str = "eval_"
) -> dict[str, float]:
    """mAP (multi-label), or accuracy, macro-F1 and per-class recall (single-label) over every process's
    share, gathered. A single-label evaluation warns, naming them, of classes it never predicted.

    Each process evaluates its own shard; the arrays are gathered as objects because shards differ in
    length at the tail, which tensor gathering would pad or drop. A model whose parameters are sharded
    (FSDP) runs in lockstep on every rank, see :func:`collect_predictions`.
    """
    device = accelerator.device if accelerator is not None else None
    logits, targets = collect_predictions(model, batches, feature_extractor, device, accelerator)
    if accelerator is not None and accelerator.num_processes > 1:
        parts = gather_object([(logits, targets)])
        logits = np.concatenate([p[0] for p in parts])
        targets = np.concatenate([p[1] for p in parts])
    if len(logits) == 0:
        raise ValueError("the evaluation stream produced no clips")
    if getattr(model.config, "problem_type", None) == "single_label_classification":
        return _single_label_results(model, logits, targets, accelerator, prefix)
    scores: TaggingScores = mean_average_precision(logits, targets)
    return scores.as_dict(prefix)


def _single_label_results(model, logits, targets, accelerator, prefix: str) -> dict:
    scores = classification_scores(logits, targets.argmax(axis=1))
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(c, c)) for c in range(logits.shape[1])]
    results = scores.as_dict(prefix, names)
    missed = results[f"{prefix}never_predicted"]
    if missed and (accelerator is None or accelerator.is_main_process):
        logger.warning(
            "%s: the model never predicted %d of the classes that have clips: %s",
            prefix.rstrip("_") or "evaluation",
            len(missed),
            ", ".join(missed),
        )
    return results
