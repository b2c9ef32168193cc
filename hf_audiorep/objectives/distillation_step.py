"""The student's step of ContrastASC's second stage: scene augmentations, the student's forward, and
``DistillationLoss`` against the teacher's precomputed columns.

The teacher is never called here. Its logits and clip embeddings are dataset columns
(``objectives.teachers.precompute_teacher_embeddings(..., logits_column=...)``) that the stream serves per
batch (``extra_columns``), with each clip's dataset index (``return_index``) for CRD's memory banks. So a
step costs the student's forward and backward only, and teacher and student can run at different rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.augment import device_impulse_response, freq_mixstyle, frequency_mask, time_roll
from .distillation import CRDLoss, DistillationLoss, InBatchCRDLoss
from .features import logits_and_embedding, waveform_features

__all__ = [
    "DEVICE_COLUMN",
    "TEACHER_EMBEDDING_COLUMN",
    "TEACHER_LOGITS_COLUMN",
    "DistillationArguments",
    "DistillationStep",
    "StudentWithDistillation",
    "SceneAugmentationArguments",
    "build_distillation_loss",
]

TEACHER_EMBEDDING_COLUMN = "teacher_embedding"
TEACHER_LOGITS_COLUMN = "teacher_logits"
DEVICE_COLUMN = "device"
CRD_VARIANTS = ("memory", "in_batch")


@dataclass
class SceneAugmentationArguments:
    """The DCASE scene augmentations of CP-JKU's recipes (shared/reference/architectures.md section 6c)."""

    roll_samples: int = 4000
    """time roll: each clip rotated by up to this many samples either way (DCASE: 4000 at 32 kHz); 0 off"""
    dir_prob: float = 0.6
    """device impulse responses: probability that a clip is convolved with a response of the augmentation
    microphones (which record nothing in the corpus); 0 off"""
    dir_devices: str = "A"
    """device impulse responses: the recording devices (comma-separated names of the dataset's `device`
    column) whose clips may be convolved; CP-JKU's recipe: the reference device A only, the others being
    recordings by other microphones already; '' = every clip"""
    mixstyle_prob: float = 0.4
    """Freq-MixStyle: probability that a batch's per-bin statistics are mixed; 0 off"""
    mixstyle_alpha: float = 0.3
    """Freq-MixStyle: mixing weight ~ Beta(alpha, alpha)"""
    freq_mask: int = 48
    """frequency masking: widest band masked, in mel bins (DCASE: 48 of 256); 0 off"""

    def __post_init__(self):
        for name in ("roll_samples", "freq_mask"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dir_prob", "mixstyle_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.mixstyle_alpha <= 0:
            raise ValueError(f"mixstyle_alpha must be > 0, got {self.mixstyle_alpha}")


@dataclass
class DistillationArguments:
    """``ce_weight * CE + kd_weight * KD(T) + crd_weight * CRD``. The defaults are RepDistiller's for CRD +
    KD; ContrastASC's weights are not published."""

    ce_weight: float = 1.0
    """weight of the cross-entropy on the labels"""
    kd_weight: float = 1.0
    """weight of knowledge distillation on the teacher's logits; 0 turns it off"""
    crd_weight: float = 0.8
    """weight of contrastive representation distillation on the teacher's embeddings; 0 turns it off"""
    temperature: float = 4.0
    """KD temperature T (RepDistiller 4; CP-JKU's DCASE23 recipe 2)"""
    crd: str = "memory"
    """memory: CRD's momentum memory banks, one row per training clip (map-style data); in_batch: InfoNCE
    between the two sides within the batch (streamed data)"""
    crd_feat_dim: int = 128
    """dimension of CRD's embedding space"""
    crd_negatives: int = 4096
    """negatives per clip drawn from the memory banks (RepDistiller: 16384 of CIFAR's 50,000 images)"""
    crd_temperature: float = 0.07
    """temperature of CRD's scores"""

    def __post_init__(self):
        if self.crd not in CRD_VARIANTS:
            raise ValueError(f"crd must be one of {CRD_VARIANTS}, got {self.crd!r}")
        for name in ("crd_feat_dim", "crd_negatives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def uses_teacher_embeddings(self) -> bool:
        return self.crd_weight > 0


def build_distillation_loss(
    args: DistillationArguments, student_dim: int, teacher_dim: int, num_train_clips: int | None
) -> DistillationLoss:
    """The loss of ``args``, with CRD's heads from the student's and the teacher's embedding widths; the
    memory variant needs the number of training clips (its banks have one row each)."""
    crd = None
    if args.crd_weight > 0:
        if args.crd == "memory":
            if not num_train_clips:
                raise ValueError(
                    "crd 'memory' needs the number of training clips; use crd 'in_batch' on streams"
                )
            crd = CRDLoss(
                student_dim,
                teacher_dim,
                num_train_clips,
                feat_dim=args.crd_feat_dim,
                num_negatives=args.crd_negatives,
                temperature=args.crd_temperature,
            )
        else:
            crd = InBatchCRDLoss(
                student_dim, teacher_dim, feat_dim=args.crd_feat_dim, temperature=args.crd_temperature
            )
    return DistillationLoss(
        crd,
        ce_weight=args.ce_weight,
        kd_weight=args.kd_weight,
        crd_weight=args.crd_weight,
        temperature=args.temperature,
    )


class StudentWithDistillation(nn.Module):
    """The module a distillation run trains: the student and the loss's trainable parts (CRD's embedding
    heads, its memory banks as buffers), so that one optimizer, one checkpoint and exact resume cover both.
    Only ``student`` is published (``TrainLoop.export_fn = lambda m: m.student``)."""

    def __init__(self, student: nn.Module, distillation: DistillationLoss):
        super().__init__()
        self.student = student
        self.distillation = distillation

    def forward(self, *args, **kwargs):
        return self.student(*args, **kwargs)


class DistillationStep:
    """``step_fn(model, batch) -> (loss, logs)`` of a `StudentWithDistillation`.

    The batch holds ``waveforms``, ``lengths``, one-hot ``labels`` and, as the loss needs them,
    ``teacher_logits``, ``teacher_embedding`` and ``indices``. The student's clip embedding (for CRD) is
    its base model's ``pooler_output``, caught on its way into the head, so the student runs once.

    Args:
        feature_extractor: the student's front end (``batch_features`` on the accelerator).
        augmentation: the scene augmentations, applied in training mode only (default: none).
        impulse_responses: ``(N, K)`` bank for the device impulse-response augmentation (at the student's
            rate); None turns it off.
        dir_device_ids: the batch's device ids (its ``device`` column) whose clips the impulse responses may
            convolve; None: every clip.
    """

    def __init__(
        self,
        feature_extractor,
        augmentation: SceneAugmentationArguments | None = None,
        impulse_responses: np.ndarray | torch.Tensor | None = None,
        dir_device_ids: Sequence[int] | None = None,
    ):
        self.feature_extractor = feature_extractor
        self.aug = augmentation or SceneAugmentationArguments(
            roll_samples=0, dir_prob=0.0, mixstyle_prob=0.0, freq_mask=0
        )
        self.impulse_responses = None if impulse_responses is None else torch.as_tensor(impulse_responses)
        self.dir_device_ids = None if dir_device_ids is None else torch.as_tensor(list(dir_device_ids))

    def _augment_waveforms(self, waveforms: torch.Tensor, lengths: torch.Tensor, devices) -> torch.Tensor:
        if self.aug.roll_samples:
            waveforms = time_roll(waveforms, lengths, self.aug.roll_samples)
        if self.aug.dir_prob > 0 and self.impulse_responses is not None:
            eligible = None
            if self.dir_device_ids is not None:
                if devices is None:
                    raise ValueError(f"dir_device_ids needs the batch's {DEVICE_COLUMN!r} column")
                eligible = torch.isin(devices, self.dir_device_ids.to(devices.device))
            waveforms = device_impulse_response(
                waveforms, self.impulse_responses, self.aug.dir_prob, eligible=eligible, lengths=lengths
            )
        return waveforms

    def _augment_features(self, features: torch.Tensor) -> torch.Tensor:
        if self.aug.mixstyle_prob > 0:
            features = freq_mixstyle(features, self.aug.mixstyle_prob, self.aug.mixstyle_alpha)
        if self.aug.freq_mask:
            features = frequency_mask(features, self.aug.freq_mask)
        return features

    def __call__(self, model: StudentWithDistillation, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        student = model.student
        waveforms, lengths = batch["waveforms"], batch["lengths"]
        if model.training:
            waveforms = self._augment_waveforms(waveforms, lengths, batch.get(DEVICE_COLUMN))
        features, mask = waveform_features(self.feature_extractor, waveforms, lengths)
        if model.training:
            features = self._augment_features(features)
        logits, pooled = logits_and_embedding(student, features, mask)
        out = model.distillation(
            student_logits=logits,
            labels=batch["labels"],
            teacher_logits=batch.get(TEACHER_LOGITS_COLUMN),
            student_features=pooled,
            teacher_features=batch.get(TEACHER_EMBEDDING_COLUMN),
            indices=batch.get("indices"),
        )
        return out.loss, {"ce": out.ce.detach(), "kd": out.kd.detach(), "crd": out.crd.detach()}
