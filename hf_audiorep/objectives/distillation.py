"""Distillation of a large teacher into a small student (ContrastASC, second stage).

``L_S = α · CE + β · KD(T) + γ · CRD``: cross-entropy on the labels, Hinton's knowledge distillation on
the teacher's logits, and Contrastive Representation Distillation (Tian et al., ICLR 2020) between the
student's and the teacher's embeddings. The teacher is never called here: its logits and embeddings are
batch tensors, precomputed into dataset columns, and are detached on the way in.

CRD needs a dataset index per clip (its memory banks have one row per training clip), so it fits
map-style datasets (``AudioStream(..., return_index=True)``). For streamed data, `InBatchCRDLoss` is the
alternative: InfoNCE between the two sides within the batch, optionally with a queue of past teacher
embeddings as extra negatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .contrastive import ProjectionHead

__all__ = [
    "CRDEmbed",
    "CRDLoss",
    "ContrastiveMemory",
    "DistillationLoss",
    "DistillationLossOutput",
    "InBatchCRDLoss",
    "kd_loss",
    "nce_loss",
]


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0 <= value < 1):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² · KL(softmax(t / T) ‖ softmax(s / T))``, averaged over the batch.

    The T² keeps the gradient's scale independent of T (Hinton et al.), so the KD weight need not be
    retuned when T changes.
    """
    _check_positive("temperature", temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits must have the student's shape {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


class CRDEmbed(ProjectionHead):
    """CRD's embedding head ``Linear → LayerNorm → ReLU → Linear → L2-normalise``.

    RepDistiller uses a single Linear; ContrastASC describes "2-layer projections and LayerNorm", which
    this follows (a proposed reading, the exact head is not published).
    """

    def __init__(self, in_dim: int, feat_dim: int = 128, hidden_dim: int | None = None):
        super().__init__(in_dim, feat_dim, hidden_dim, layer_norm=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(x.flatten(1)), dim=-1)


class ContrastiveMemory(nn.Module):
    """CRD's two momentum memory banks, one row per training clip, and the sampling of negatives.

    ``forward(student_embed, teacher_embed, indices)`` returns the log-scores ``log(exp(v · m / τ) / Z)`` of
    each student embedding against the teacher bank and of each teacher embedding against the student
    bank, (B, 1 + K) each, with the positive (the clip's own row) in column 0, then (when training)
    moves the rows at ``indices`` toward the new embeddings. Everything is a buffer, so the banks and
    the Z estimates are saved with the state dict and resume with a checkpoint. The banks are per
    process: under DDP, keep this module out of the wrapper (its buffer broadcast would overwrite every
    rank's rows with rank 0's).
    """

    def __init__(
        self,
        feat_dim: int,
        n_data: int,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        z_momentum: float = 0.99,
    ):
        super().__init__()
        if not isinstance(n_data, int) or n_data < 2:
            raise ValueError(f"n_data must be an int >= 2 (negatives come from other clips), got {n_data!r}")
        if not isinstance(num_negatives, int) or num_negatives < 1:
            raise ValueError(f"num_negatives must be a positive int, got {num_negatives!r}")
        _check_positive("temperature", temperature)
        _check_fraction("momentum", momentum)
        _check_fraction("z_momentum", z_momentum)
        self.n_data, self.num_negatives = n_data, num_negatives
        self.temperature, self.momentum, self.z_momentum = temperature, momentum, z_momentum
        # RepDistiller's uniform init has unit norm only in expectation; normalising puts rows not yet
        # visited on the same sphere as the updated ones.
        bound = 1.0 / math.sqrt(feat_dim / 3)
        for side in ("student", "teacher"):
            bank = torch.empty(n_data, feat_dim).uniform_(-bound, bound)
            self.register_buffer(f"memory_{side}", F.normalize(bank, dim=-1))
            # 0 means "not estimated yet"; Z > 0 once set.
            self.register_buffer(f"z_{side}", torch.zeros(()))

    def sample_negatives(self, indices: torch.Tensor) -> torch.Tensor:
        """K indices per clip, uniform over the *other* clips: never the clip's own row.

        Drawing from n_data - 1 values and shifting those at or above the positive up by one is exactly
        uniform over the others; a drawn positive would be scored as its own negative and push the
        student away from the very teacher embedding it should match.
        """
        draws = torch.randint(
            0, self.n_data - 1, (len(indices), self.num_negatives), device=self.memory_student.device
        )
        return draws + (draws >= indices[:, None]).long()

    def _log_scores(self, anchors: torch.Tensor, bank: torch.Tensor, sample: torch.Tensor, z: torch.Tensor):
        dot = torch.einsum("bkd,bd->bk", bank[sample].detach(), anchors) / self.temperature
        if self.training:
            # Z normalises exp(v·m/τ) into a probability over all n_data clips. RepDistiller fixes it from
            # the first batch, when the embed heads are random; an EMA tracks it as they learn (the fix
            # proposed in HobbitLong/CMC#23).
            batch_z = (torch.logsumexp(dot.detach().flatten(), 0) - math.log(dot.numel())).exp() * self.n_data
            z.copy_(torch.where(z > 0, self.z_momentum * z + (1 - self.z_momentum) * batch_z, batch_z))
        elif z <= 0:
            raise RuntimeError("ContrastiveMemory has no Z estimate yet: run a training batch first")
        return dot - z.log()

    @torch.no_grad()
    def _update(self, bank: torch.Tensor, indices: torch.Tensor, embed: torch.Tensor) -> None:
        rows = bank[indices] * self.momentum + embed.detach().to(bank.dtype) * (1 - self.momentum)
        bank[indices] = F.normalize(rows, dim=-1)

    def forward(
        self,
        student_embed: torch.Tensor,
        teacher_embed: torch.Tensor,
        indices: torch.Tensor,
        negative_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if indices.ndim != 1 or len(indices) != len(student_embed):
            raise ValueError(f"indices must be ({len(student_embed)},), got {tuple(indices.shape)}")
        # checked here because an out-of-range row is a device-side assert on a GPU, hard to trace back
        if indices.min() < 0 or indices.max() >= self.n_data:
            raise ValueError(f"indices must be dataset rows in [0, {self.n_data}), got {indices.tolist()}")
        if negative_indices is None:
            negative_indices = self.sample_negatives(indices)
        sample = torch.cat([indices[:, None], negative_indices], dim=1)
        student_scores = self._log_scores(student_embed, self.memory_teacher, sample, self.z_student)
        teacher_scores = self._log_scores(teacher_embed, self.memory_student, sample, self.z_teacher)
        if self.training:
            self._update(self.memory_student, indices, student_embed)
            self._update(self.memory_teacher, indices, teacher_embed)
        return student_scores, teacher_scores


def nce_loss(log_scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE loss on (B, 1 + K) log-scores, positive first, with uniform noise P_n = 1 / n_data.

    ``-[log(P_pos / (P_pos + K·P_n)) + Σ_neg log(K·P_n / (P_neg + K·P_n))] / B``, written with softplus
    of log-ratios so no probability is formed (RepDistiller adds an epsilon instead).
    """
    log_noise = math.log((log_scores.shape[1] - 1) / n_data)
    positive = F.softplus(log_noise - log_scores[:, 0]).sum()
    negatives = F.softplus(log_scores[:, 1:] - log_noise).sum()
    return (positive + negatives) / len(log_scores)


class CRDLoss(nn.Module):
    """Contrastive Representation Distillation: embed heads, memory banks and the two NCE terms.

    The student-anchored term scores the student's embedding against the teacher bank, the
    teacher-anchored term the teacher's embedding against the student bank; the loss is their sum.
    ``forward(student_features, teacher_features, indices)``; the teacher features are detached (the
    teacher's embed head still learns through the teacher-anchored term).
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        n_data: int,
        feat_dim: int = 128,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        z_momentum: float = 0.99,
    ):
        super().__init__()
        self.embed_student = CRDEmbed(student_dim, feat_dim)
        self.embed_teacher = CRDEmbed(teacher_dim, feat_dim)
        self.memory = ContrastiveMemory(feat_dim, n_data, num_negatives, temperature, momentum, z_momentum)

    def forward(
        self,
        student_features: torch.Tensor,
        teacher_features: torch.Tensor,
        indices: torch.Tensor,
        negative_indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``negative_indices`` (B, K) replaces the uniform draw, e.g. with clips of other classes."""
        student_scores, teacher_scores = self.memory(
            self.embed_student(student_features.float()),
            self.embed_teacher(teacher_features.detach().float()),
            indices,
            negative_indices,
        )
        n_data = self.memory.n_data
        return nce_loss(student_scores, n_data) + nce_loss(teacher_scores, n_data)


class InBatchCRDLoss(nn.Module):
    """Streaming alternative to `CRDLoss`: symmetric InfoNCE between the embedded sides of a batch.

    Clip i's student and teacher embeddings are the positive pair, the other clips' embeddings the
    negatives; no dataset index or per-clip memory is needed. With ``queue_size > 0`` the teacher
    embeddings of past batches (FIFO, as in MoCo) are extra negatives for the student-anchored term:
    a stream's batches are too small to give CRD's thousands of negatives on their own. They were made
    by an older teacher embed head and may repeat a clip from an earlier epoch; both are the usual price
    of a queue.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        feat_dim: int = 128,
        temperature: float = 0.07,
        queue_size: int = 0,
    ):
        super().__init__()
        _check_positive("temperature", temperature)
        if not isinstance(queue_size, int) or queue_size < 0:
            raise ValueError(f"queue_size must be an int >= 0, got {queue_size!r}")
        self.temperature = temperature
        self.embed_student = CRDEmbed(student_dim, feat_dim)
        self.embed_teacher = CRDEmbed(teacher_dim, feat_dim)
        self.register_buffer("queue", torch.zeros(queue_size, feat_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _enqueue(self, teacher_embed: torch.Tensor) -> None:
        size = len(self.queue)
        if size == 0:
            return
        new = teacher_embed.detach()[-size:]
        rows = (self.queue_pointer + torch.arange(len(new), device=new.device)) % size
        self.queue[rows] = new.to(self.queue.dtype)
        self.queue_pointer.copy_((self.queue_pointer + len(new)) % size)
        self.queue_filled.clamp_(max=size - len(new)).add_(len(new))

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        s = self.embed_student(student_features.float())
        t = self.embed_teacher(teacher_features.detach().float())
        targets = torch.arange(len(s), device=s.device)
        candidates = torch.cat([t, self.queue[: int(self.queue_filled)]])
        student_anchored = F.cross_entropy(s @ candidates.T / self.temperature, targets)
        teacher_anchored = F.cross_entropy(t @ s.T / self.temperature, targets)
        if self.training:
            self._enqueue(t)
        return student_anchored + teacher_anchored


@dataclass
class DistillationLossOutput:
    """The weighted total and each unweighted part (a part whose weight is 0 is a zero, not computed)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    crd: torch.Tensor


class DistillationLoss(nn.Module):
    """``ce_weight · CE + kd_weight · KD(T) + crd_weight · CRD`` from batch tensors.

    ``crd`` is a `CRDLoss` (map-style data, needs ``indices``) or an `InBatchCRDLoss` (streams); it holds
    trainable embed heads, so give this module's parameters to the optimizer with the student's.
    The default weights are RepDistiller's recommendation for CRD + KD (``-r 1 -a 1 -b 0.8``) and T its
    default; ContrastASC's own values are not published.
    """

    def __init__(
        self,
        crd: CRDLoss | InBatchCRDLoss | None = None,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        crd_weight: float = 0.8,
        temperature: float = 4.0,
    ):
        super().__init__()
        for name, value in (("ce_weight", ce_weight), ("kd_weight", kd_weight), ("crd_weight", crd_weight)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if ce_weight + kd_weight + crd_weight == 0:
            raise ValueError("ce_weight, kd_weight and crd_weight are all 0: there is nothing to learn from")
        _check_positive("temperature", temperature)
        if crd_weight > 0 and crd is None:
            raise ValueError("crd must be a CRDLoss or InBatchCRDLoss when crd_weight > 0")
        self.crd = crd
        self.ce_weight, self.kd_weight, self.crd_weight = ce_weight, kd_weight, crd_weight
        self.temperature = temperature

    def forward(
        self,
        student_logits: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor | None = None,
        student_features: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> DistillationLossOutput:
        """``labels``: (B,) class ids or (B, C) class probabilities (e.g. mixed labels)."""
        zero = student_logits.new_zeros((), dtype=torch.float32)
        ce = kd = crd = zero
        if self.ce_weight > 0:
            if labels.shape not in (student_logits.shape[:1], student_logits.shape):
                raise ValueError(f"labels must be (B,) or (B, C) like the logits, got {tuple(labels.shape)}")
            ce = F.cross_entropy(student_logits.float(), labels if labels.ndim == 1 else labels.float())
        if self.kd_weight > 0:
            if teacher_logits is None:
                raise ValueError("teacher_logits are required when kd_weight > 0")
            kd = kd_loss(student_logits, teacher_logits, self.temperature)
        if self.crd_weight > 0:
            if student_features is None or teacher_features is None:
                raise ValueError("student_features and teacher_features are required when crd_weight > 0")
            if isinstance(self.crd, CRDLoss):
                if indices is None:
                    raise ValueError("indices (dataset rows) are required by CRDLoss; use InBatchCRDLoss")
                crd = self.crd(student_features, teacher_features, indices)
            else:
                crd = self.crd(student_features, teacher_features)
        total = self.ce_weight * ce + self.kd_weight * kd + self.crd_weight * crd
        return DistillationLossOutput(loss=total, ce=ce, kd=kd, crd=crd)
