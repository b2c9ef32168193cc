"""Consistency regularization (CR) across augmented views, supervised and semi-supervised.

AudioMAE-CR (arXiv 2509.10391): each clip is seen as ``k`` views, each with its own SpecAugment,
random erasing and patch-out; the predictions of every pair of views are pulled together with a
bidirectional binary cross-entropy whose target side is stop-gradient. All views go through the
model in one batched forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.augment import random_erasing, spec_augment
from .classification import AugmentationArguments, SupervisedClassificationStep
from .features import waveform_features
from .losses import consistency_loss


@dataclass
class ConsistencyArguments:
    consistency_regularization: bool = False
    """train with consistency regularization across augmented views (AudioMAE-CR)"""
    consistency_weight: float = 2.0
    """lambda, weight of the consistency loss (paper: 2.0 on AS-20K); 0 trains the plain baseline"""
    num_views: int = 6
    """k, augmented views per clip (paper: 6 for small labelled sets, 2 for AS-2M); 1 = no CR"""
    random_erasing_prob: float = 0.25
    """probability of erasing one rectangle per view (0 disables)"""
    unlabeled_ratio: float = 0.0
    """semi-supervised: unlabelled clips per labelled clip in each step (0 = supervised only)"""

    def __post_init__(self):
        if self.consistency_weight < 0:
            raise ValueError(f"consistency_weight must be >= 0, got {self.consistency_weight}")
        if self.num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {self.num_views}")
        if self.consistency_regularization and self.consistency_weight > 0 and self.num_views < 2:
            raise ValueError("consistency_weight > 0 needs num_views >= 2 (a single view has no partner)")
        if not 0.0 <= self.random_erasing_prob <= 1.0:
            raise ValueError(f"random_erasing_prob must be in [0, 1], got {self.random_erasing_prob}")
        if self.unlabeled_ratio < 0:
            raise ValueError(f"unlabeled_ratio must be >= 0, got {self.unlabeled_ratio}")


class ConsistencyClassificationStep(SupervisedClassificationStep):
    """``step_fn`` for CR training: BCE on every labelled view + lambda * CR over all views.

    Mixup is applied once per labelled clip before the views are made, so all views of a clip share
    its mixed labels. Unlabelled clips (``batch["unlabeled_waveforms"]``, semi-supervised) are not
    mixed (they have no labels to mix) and enter only the consistency term.
    """

    def __init__(
        self,
        feature_extractor,
        augmentation: AugmentationArguments,
        consistency: ConsistencyArguments,
        single_label: bool = False,
    ):
        if single_label:
            raise ValueError("consistency regularization is defined here for multi-label tagging (sigmoid)")
        super().__init__(feature_extractor, augmentation, single_label=False)
        self.cr = consistency

    def _views(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) -> (k*B, T, F) with independent SpecAugment and random erasing per view."""
        k = self.cr.num_views
        views = features.repeat(k, 1, 1)
        if self.aug.freq_mask or self.aug.time_mask:
            views = spec_augment(views, self.aug.freq_mask, self.aug.time_mask, mask_value=self.mask_value)
        if self.cr.random_erasing_prob > 0:
            views = random_erasing(views, self.cr.random_erasing_prob, mask_value=self.mask_value)
        return views, mask.repeat(k, 1)

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        if not model.training:
            return super().__call__(model, batch)
        # Mixup and the filterbank run once per clip; only the cheap masking differs per view.
        features, mask, labels = self.features(model, batch, augment_features=False)
        num_labeled = len(features)
        if "unlabeled_waveforms" in batch:
            extra, extra_mask = waveform_features(
                self.feature_extractor, batch["unlabeled_waveforms"], batch["unlabeled_lengths"]
            )
            features, mask = torch.cat([features, extra]), torch.cat([mask, extra_mask])
        views, view_mask = self._views(features, mask)
        logits = model(input_values=views, attention_mask=view_mask).logits  # one batched forward
        logits = logits.float().view(self.cr.num_views, len(features), -1)
        labeled = logits[:, :num_labeled]
        supervised = F.binary_cross_entropy_with_logits(labeled, labels.unsqueeze(0).expand_as(labeled))
        cr = consistency_loss(logits) if self.cr.consistency_weight > 0 else logits.new_zeros(())
        loss = supervised + self.cr.consistency_weight * cr
        return loss, {"loss_supervised": supervised.detach(), "loss_consistency": cr.detach()}
