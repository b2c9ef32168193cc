"""Audio-text contrastive training (UTS's contrastive variant, Auden's CLAP): symmetric InfoNCE over the
embeddings of every process, Auden's embedding regulariser, and the training step.

Across processes the embeddings are all-gathered with their gradients, and each process scores its own
rows against every column (OpenCLIP's ``local_loss`` with ``gather_with_grad``): the negatives are the
global batch while each process computes only its share of the logit matrix. The share is weighted so that
the data-parallel average of the processes' losses (what DDP's gradient averaging optimises) is the loss of
the whole global batch, for any per-process batch sizes (dynamic batches differ from rank to rank).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (registers torch.distributed.nn.functional)
import torch.nn.functional as F

from .classification import AugmentationArguments, SupervisedClassificationStep

__all__ = ["AudioTextContrastiveStep", "embedding_regularizer", "gather_rows", "symmetric_info_nce"]

_REDUCTIONS = ("mean", "sum")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Every process's ``x`` concatenated in rank order, differentiable (the gradient of each process's
    rows flows back to it), and where this process's rows start in it; plus the world size.

    The processes may hold different numbers of rows: the counts are gathered first and every ``x`` is
    zero-padded to the largest, since ``all_gather`` needs equal shapes; the padding is cut out after.
    """
    world = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    widest = max(counts)
    padded = F.pad(x, (0, 0, 0, widest - x.shape[0]))
    # torch.distributed.nn's all_gather has a backward (a reduce-scatter); torch.distributed's has none.
    parts = torch.distributed.nn.functional.all_gather(padded)
    rows = torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)])
    return rows, sum(counts[: dist.get_rank()]), world


def symmetric_info_nce(
    audio_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor | float,
    *,
    gather: bool = True,
    reduction: str = "mean",
) -> torch.Tensor:
    """``(CE(audio -> text) + CE(text -> audio)) / 2`` with logits ``logit_scale * audio @ text.T``, row ``i``
    of each modality a positive pair (CLIP; Auden's CLAP with ``reduction="sum"``).

    Args:
        audio_embeds, text_embeds: ``(batch, dim)`` paired embeddings (unit-norm for cosine logits: they are
            used as given).
        logit_scale: ``1 / temperature``, a float or a (learned) scalar tensor.
        gather: with ``torch.distributed`` initialised over more than one process, the negatives are the
            embeddings of every process (see the module docstring); otherwise this process's batch alone.
        reduction: ``"mean"`` over the global batch's pairs, or ``"sum"`` over them (Auden, whose ScaledAdam
            learning rates are tuned for it; Auden adds the two directions where this halves their sum).

    Returns:
        A scalar. Distributed, it is this process's weighted share: the mean of the processes' values is the
        loss of the global batch, and so is the gradient DDP averages from them.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if audio_embeds.ndim != 2 or audio_embeds.shape != text_embeds.shape:
        raise ValueError(
            "audio_embeds and text_embeds must be paired (batch, dim) tensors of one shape, got "
            f"{tuple(audio_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    audio, text = audio_embeds.float(), text_embeds.float()
    local = audio.shape[0]
    if gather and _distributed():
        all_audio, offset, world = gather_rows(audio)
        all_text, _, _ = gather_rows(text)
    else:
        all_audio, all_text, offset, world = audio, text, 0, 1
    total = all_audio.shape[0]
    if total == 0:
        raise ValueError("symmetric_info_nce got no pairs on any process")
    targets = torch.arange(offset, offset + local, device=audio.device)
    # This process's rows of both logit matrices; the columns are the global batch.
    a2t = F.cross_entropy(logit_scale * audio @ all_text.T, targets, reduction="sum")
    t2a = F.cross_entropy(logit_scale * text @ all_audio.T, targets, reduction="sum")
    share = (a2t + t2a) / 2
    # x world: DDP averages the processes' gradients, so each share is scaled to undo that average.
    return share * world / total if reduction == "mean" else share * world


def embedding_regularizer(embeds: torch.Tensor) -> torch.Tensor:
    """Auden's ``embed_reg``: ``mean(|e|) / sqrt(sum(e ** 2))`` of each row, averaged over the rows.

    Over a row's unit-norm budget it is largest when the mass is spread evenly over the dimensions and
    smallest when a few dimensions carry it: adding it to the loss favours sparse embeddings. Auden computes
    it once over the whole gathered ``(batch, dim)`` matrix, which for unit-norm rows is this value divided
    by ``sqrt(batch)``; per row, its weight does not change with the batch size.
    """
    if embeds.ndim != 2:
        raise ValueError(f"embeds must be (batch, dim), got {tuple(embeds.shape)}")
    embeds = embeds.float()
    per_row = embeds.abs().mean(dim=-1) / embeds.pow(2).sum(dim=-1).sqrt().clamp(min=1e-12)
    return per_row.mean()


class AudioTextContrastiveStep:
    """``step_fn(model, batch) -> (loss, logs)`` for `ZipformerForAudioTextContrastive`.

    The batch holds ``waveforms``, ``lengths`` and ``batch[text_column]``, one string per clip. Features come
    from `SupervisedClassificationStep.features` (fbank, mask, SpecAugment); the texts are tokenized here.
    Loss: `symmetric_info_nce` (gathered over processes) + ``embed_reg_weight`` x `embedding_regularizer` of
    the audio and of the text embeddings. Logs: ``info_nce``, ``temperature`` and the in-batch
    ``a2t_accuracy`` (how often a clip's own text scores highest among this process's texts).

    Args:
        feature_extractor: the model's (``batch_features``).
        augmentation: SpecAugment and roll settings; mixup must be off (``mixup_prob=0``): a mixed clip has
            no single text to pair with.
        tokenizer: the text tower's (BERT-like: [CLS] first).
        max_text_length: texts are truncated to this many tokens (Auden's CLAP: 30).
        reduction: of the InfoNCE, ``"mean"`` (AdamW) or ``"sum"`` (Auden).
    """

    def __init__(
        self,
        feature_extractor,
        augmentation: AugmentationArguments,
        tokenizer,
        *,
        text_column: str = "text",
        embed_reg_weight: float = 0.0,
        max_text_length: int = 30,
        reduction: str = "mean",
        gather: bool = True,
    ):
        if augmentation.mixup_prob > 0:
            raise ValueError(
                f"audio-text contrastive training cannot use mixup (mixup_prob={augmentation.mixup_prob}): "
                "a mixed clip has no single text to pair with; set mixup_prob=0"
            )
        if embed_reg_weight < 0:
            raise ValueError(f"embed_reg_weight must be >= 0, got {embed_reg_weight}")
        if max_text_length < 2:
            raise ValueError(f"max_text_length must leave room for [CLS] and a token, got {max_text_length}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        # Composed rather than inherited: its loss and labels are a classifier's.
        self.audio = SupervisedClassificationStep(feature_extractor, augmentation)
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.embed_reg_weight = embed_reg_weight
        self.max_text_length = max_text_length
        self.reduction = reduction
        self.gather = gather

    def tokenize(self, texts, device) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"batch[{self.text_column!r}] must be a list of strings, one per clip")
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        return {
            "input_ids": encoded["input_ids"].to(device),
            "attention_mask": encoded["attention_mask"].to(device),
        }

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.text_column not in batch:
            raise KeyError(
                f"the batch has no {self.text_column!r} column (it has {sorted(batch)}); pass the caption "
                "column as text_column and in the stream's extra_columns"
            )
        texts = batch[self.text_column]
        if len(texts) != len(batch["lengths"]):
            raise ValueError(f"{len(texts)} texts for {len(batch['lengths'])} clips: one text per clip")
        # No labels: mixup is off, so the features step never reads them.
        features, mask, _ = self.audio.features(model, {**batch, "labels": None})
        tokens = self.tokenize(texts, features.device)
        out = model(
            input_values=features,
            attention_mask=mask,
            input_ids=tokens["input_ids"],
            text_attention_mask=tokens["attention_mask"],
        )
        audio, text = out.audio_embeds, out.text_embeds
        info_nce = symmetric_info_nce(
            audio, text, out.logit_scale, gather=self.gather, reduction=self.reduction
        )
        loss = info_nce
        logs = {"info_nce": info_nce.detach(), "temperature": (1.0 / out.logit_scale).detach()}
        if self.embed_reg_weight > 0:
            reg = embedding_regularizer(audio) + embedding_regularizer(text)
            loss = loss + self.embed_reg_weight * reg
            logs["embed_reg"] = reg.detach()
        with torch.no_grad():
            scores = audio.float() @ text.float().T
            logs["a2t_accuracy"] = (
                (scores.argmax(dim=1) == torch.arange(len(scores), device=scores.device)).float().mean()
            )
        return loss, logs
