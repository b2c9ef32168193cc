"""Supervised contrastive learning with mixed labels (ContrastASC, teacher fine-tuning stage).

The teacher is fine-tuned with ``CE(cosine-head logits, y_mix) + λ · mixup_supcon_loss(...)`` on a projection
of its pooled embedding. Mixup leaves no hard classes to define positives with, so each pair is weighted by
how much label mass the two mixed clips share, as in SupCon-ST (Xu et al., "Contrastive Open Set
Recognition"); with one-hot labels this is SupCon (Khosla et al.) with one view per clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .classification import SupervisedClassificationStep
from .features import logits_and_embedding

__all__ = [
    "ClassifierWithProjection",
    "ContrastiveArguments",
    "ProjectionHead",
    "SupConClassificationStep",
    "mixup_supcon_loss",
]


class ProjectionHead(nn.Module):
    """Two-layer MLP ``Linear → [LayerNorm] → ReLU → Linear`` mapping an embedding to the contrastive space.

    The output is not normalised: the losses normalise it, so the head also serves an unnormalised use.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, layer_norm: bool = False):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        hidden_dim = hidden_dim or in_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim) if layer_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.norm(self.fc1(x))))


def mixup_supcon_loss(
    embeddings: torch.Tensor, soft_labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """Mixup-aware supervised contrastive loss.

    With ``z_i = normalize(embeddings_i)`` and pair weights ``w_ij = y_i · y_j`` (j ≠ i)::

        L = -1/N Σ_i Σ_{j≠i} [w_ij / Σ_{k≠i} w_ik] · log softmax_{k≠i}(z_i · z_k / τ)_j

    where N counts the anchors that share label mass with at least one other clip; the others are
    dropped (they have nothing to be pulled toward). When every anchor is dropped the loss is a zero
    that is still connected to ``embeddings``, so ``backward()`` works on any batch.

    Args:
        embeddings: (B, D) projections (normalised here).
        soft_labels: (B, C) mixed label vectors (non-negative), or (B,) integer class ids.
        temperature: τ > 0.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be (batch, dim), got {tuple(embeddings.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if soft_labels.ndim == 1 and not soft_labels.is_floating_point():
        soft_labels = F.one_hot(soft_labels, int(soft_labels.max()) + 1)
    if soft_labels.ndim != 2 or soft_labels.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"soft_labels must be (batch, classes) with batch {embeddings.shape[0]}, "
            f"got {tuple(soft_labels.shape)}"
        )
    if (soft_labels < 0).any():
        raise ValueError("soft_labels must be non-negative (mixed label vectors)")

    y = soft_labels.to(torch.float32)
    not_self = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
    weights = (y @ y.T) * not_self
    keep = weights.sum(1) > 0
    if not keep.any():
        return embeddings.sum() * 0.0

    z = F.normalize(embeddings.float(), dim=-1)
    logits = (z[keep] @ z.T / temperature).masked_fill(~not_self[keep], float("-inf"))
    # the self-similarity (always the largest) is excluded from the denominator; its -inf log-prob is
    # zeroed before weighting so that 0 · (-inf) never makes a NaN
    log_prob = logits.log_softmax(dim=-1).masked_fill(~not_self[keep], 0.0)
    pair_weights = weights[keep] / weights[keep].sum(1, keepdim=True)
    return -(pair_weights * log_prob).sum(1).mean()


@dataclass
class ContrastiveArguments:
    """ContrastASC's teacher fine-tuning: ``CE + supcon_weight * mixup_supcon_loss`` on a projection of the
    encoder's clip embedding (the projection is training-only; the saved model is the classifier)."""

    supcon_weight: float = 0.0
    """weight of the mixup-aware supervised contrastive loss (ContrastASC: 0.25); 0 turns it off"""
    supcon_temperature: float = 0.1
    """temperature of the contrastive loss"""
    projection_dim: int = 128
    """width of the contrastive projection (a 2-layer MLP on the clip embedding)"""

    def __post_init__(self):
        if not self.supcon_weight >= 0:
            raise ValueError(f"supcon_weight must be >= 0, got {self.supcon_weight}")
        if not self.supcon_temperature > 0:
            raise ValueError(f"supcon_temperature must be > 0, got {self.supcon_temperature}")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")


class ClassifierWithProjection(nn.Module):
    """What a contrastive fine-tuning run trains: the classifier and the projection head, in one module so
    that one optimizer and one checkpoint cover both. Only ``model`` is published (``export_fn``)."""

    def __init__(self, model: nn.Module, projection: nn.Module):
        super().__init__()
        self.model = model
        self.projection = projection

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


class SupConClassificationStep(SupervisedClassificationStep):
    """The supervised step plus ``weight * mixup_supcon_loss(projection(embedding), mixed labels)`` on a
    `ClassifierWithProjection`; the labels after mixup give the pair weights."""

    def __init__(
        self, feature_extractor, augmentation, weight: float, temperature: float, single_label=False
    ):
        super().__init__(feature_extractor, augmentation, single_label=single_label)
        self.weight, self.temperature = weight, temperature

    def __call__(
        self, model: ClassifierWithProjection, batch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features, mask, labels = self.features(model, batch)
        logits, embedding = logits_and_embedding(model.model, features, mask)
        ce = self.loss(logits, labels)
        supcon = mixup_supcon_loss(model.projection(embedding), labels, self.temperature)
        return ce + self.weight * supcon, {"ce": ce.detach(), "supcon": supcon.detach()}
