"""The supervised step shared by every classifier of the library: audio in, loss out.

Waveforms arrive on the accelerator; mixup is applied to waveforms, the filterbank runs on the
device, SpecAugment masks the features, and patch-out happens inside the model in training mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import mixup, roll_and_gain, scaled_mask_widths, spec_augment
from .features import waveform_features


@dataclass
class AugmentationArguments:
    mixup_prob: float = 0.5
    """probability that a clip is mixed with another (AudioMAE: 0.5); 0 disables mixup"""
    mixup_alpha: float = 10.0
    """lam ~ Beta(alpha, alpha) (AudioMAE: 10)"""
    freq_mask: int | None = None
    """SpecAugment: maximum width of the frequency mask, in mel bins; default: 48 per 128 bins (AudioMAE
    AS-20K), scaled to the model's bins; 0 disables"""
    time_mask: int | None = None
    """SpecAugment: maximum width of the time mask, in frames; default: 192 per 1024 frames (AudioMAE AS-20K
    on 10-s clips), scaled to the model's input frames, so a short clip is never masked whole; 0 disables"""
    roll_mag_aug: bool = False
    """AudioMAE's roll_mag_aug: rotate each training clip in time and scale it by a gain in [0.5, 1.5]
    (before mixup); also on in EAT/CAT fine-tuning (roll_aug)"""

    def __post_init__(self):
        if not 0.0 <= self.mixup_prob <= 1.0:
            raise ValueError(f"mixup_prob must be in [0, 1], got {self.mixup_prob}")
        if self.mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha must be positive, got {self.mixup_alpha}")
        for name in ("freq_mask", "time_mask"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def for_input(self, num_frames: int, num_mel_bins: int) -> AugmentationArguments:
        """A copy with unset SpecAugment widths scaled to an input of ``num_frames`` x ``num_mel_bins``;
        explicit widths are kept as given."""
        freq, time = scaled_mask_widths(num_frames, num_mel_bins)
        return dataclasses.replace(
            self,
            freq_mask=freq if self.freq_mask is None else self.freq_mask,
            time_mask=time if self.time_mask is None else self.time_mask,
        )


def init_bias_from_prior(model: nn.Module, frequencies, floor: float = 1e-4) -> None:
    """Start a fresh multi-label head at the label prior: its bias becomes each class's log-odds
    ``log(p / (1 - p))`` (p clamped to ``[floor, 1 - floor]``), so the first logits predict the label
    frequencies, as Lin et al. (2017, focal loss) start a detector's classifier.

    Why: with a zero bias the first steps of BCE are spent on the priors, and a from-scratch encoder whose
    clip features share one large common component (a Zipformer's, a ViT's) fits them along that component,
    which leaves the head and the encoder learning the audio very slowly (docs/benchmarks.md, UTS
    diagnosis).

    Args:
        model: a classifier of the library (its ``classifier`` is an ``nn.Linear`` with a bias).
        frequencies: ``(num_labels,)`` fraction of training clips carrying each label
            (``data.label_frequencies``).
        floor: clamp of the frequencies, so a label never seen keeps a finite bias.
    """
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ValueError(
            f"{type(model).__name__} has no linear classifier with a bias (its classifier is "
            f"{type(head).__name__}), so its bias cannot start at the label prior"
        )
    p = torch.as_tensor(np.asarray(frequencies, dtype=np.float64))
    if not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("frequencies must be fractions of clips, in [0, 1]")
    p = p.clamp(floor, 1 - floor)
    if p.shape != head.bias.shape:
        raise ValueError(
            f"frequencies must have one value per label {tuple(head.bias.shape)}, got {tuple(p.shape)}"
        )
    with torch.no_grad():
        head.bias.copy_(torch.log(p / (1 - p)).to(head.bias))


def prior_only_bce(frequencies) -> float:
    """The multi-label BCE (mean over clips and labels) of predicting every label's training frequency for
    every clip: ``mean_c H(p_c)``, the binary entropy of each label's frequency. Where a learner that ignores
    the audio ends (and where a head started by :func:`init_bias_from_prior` begins), so a training loss is
    read against it: a run whose loss stays at this value has learned the label frequencies only."""
    p = np.asarray(frequencies, dtype=np.float64)
    if p.ndim != 1 or p.size == 0 or not bool(((p >= 0) & (p <= 1)).all()):
        raise ValueError("frequencies must be a non-empty 1-D array of fractions of clips, in [0, 1]")
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log1p(-p), 0.0))
    return float(entropy.mean())


def init_classifier_from_probe(
    model: nn.Module,
    batches,
    feature_extractor,
    multi_label: bool = True,
    gather=None,
    C: float = 1.0,
    max_iter: int = 1000,
) -> int:
    """LP-FT (Kumar et al., 2022): set the classifier to a logistic-regression probe of the frozen encoder.

    Why: a fresh head's first gradients rewrite the encoder's lower layers before the head is any good
    (the feature distortion LP-FT names; measured for CAT in docs/benchmarks.md), and a head trained by a
    few epochs of SGD stays below the converged probe. Starting from the probe fine-tuning begins where
    probing ends.

    Args:
        model: a classifier of the library whose ``classifier`` is an ``nn.Linear`` on the encoder's
            ``pooler_output`` (for the Zipformer, the per-frame head without ``classifier_norm``: the mean of
            its frame logits is the linear layer on the mean frame, which is the pooled output).
        batches: the train split without augmentation (``AudioStream(train=False)``).
        feature_extractor: the model's (``batch_features``).
        multi_label: one binary probe per class (tagging) or one multinomial probe.
        gather: ``gather(list) -> list`` of every process's items (``accelerate.utils.gather_object``) when
            each process reads its own shard, so every rank fits the same head on every clip.
        C, max_iter: the probe's regularisation and L-BFGS iterations (`linear_probe`).

    Returns:
        The number of clips the probe was fitted on.
    """
    from ..evaluation.linear_probe import extract_embeddings, fit_linear_classifier

    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear) or getattr(model.config, "classifier_norm", "none") != "none":
        raise ValueError(
            "LP-FT needs a linear classifier on the pooled embedding; "
            f"{type(model).__name__}'s classifier is {type(head).__name__}"
            + (" behind classifier_norm" if isinstance(head, nn.Linear) else "")
        )
    X, Y = extract_embeddings(model, batches, feature_extractor)
    if gather is not None:
        parts = gather([(X, Y)])
        X, Y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    weight, bias = fit_linear_classifier(X, Y, multi_label=multi_label, C=C, max_iter=max_iter)
    if weight.shape != tuple(head.weight.shape):
        raise ValueError(
            f"the probe has {weight.shape[0]} classes x {weight.shape[1]} features but the classifier is "
            f"{tuple(head.weight.shape)}: the batches' labels are not the model's"
        )
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        if head.bias is not None:
            head.bias.copy_(torch.from_numpy(bias))
    return len(X)


class SupervisedClassificationStep:
    """``step_fn(model, batch) -> (loss, logs)`` for multi-label tagging or single-label classification."""

    def __init__(self, feature_extractor, augmentation: AugmentationArguments, single_label: bool = False):
        self.feature_extractor = feature_extractor
        # Mask widths follow the model's input: a 192-frame mask would hide all of a 2-s clip.
        frames = getattr(feature_extractor, "target_length", None) or 1024
        self.aug = augmentation.for_input(frames, getattr(feature_extractor, "num_mel_bins", 128))
        self.single_label = single_label
        # Masked cells take the value a zero log-mel has after normalisation, as in AudioMAE, which
        # masks before normalising.
        fe = feature_extractor
        self.mask_value = (0.0 - fe.mean) / (fe.std_scale * fe.std) if fe.do_normalize else 0.0

    def features(self, model, batch, augment_features: bool = True) -> tuple[torch.Tensor, ...]:
        """Mixed-up (training) features, frame mask and labels of a batch; SpecAugment unless disabled."""
        waveforms, lengths, labels = batch["waveforms"], batch["lengths"], batch["labels"]
        if model.training and self.aug.roll_mag_aug:
            waveforms = roll_and_gain(waveforms, lengths)
        if model.training and self.aug.mixup_prob > 0:
            mixed = mixup(waveforms, lengths, labels, alpha=self.aug.mixup_alpha, prob=self.aug.mixup_prob)
            waveforms, lengths, labels = mixed.waveforms, mixed.lengths, mixed.labels
        features, mask = waveform_features(self.feature_extractor, waveforms, lengths)
        if augment_features and model.training and (self.aug.freq_mask or self.aug.time_mask):
            features = spec_augment(
                features, self.aug.freq_mask, self.aug.time_mask, mask_value=self.mask_value
            )
        return features, mask, labels

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.single_label:
            # Soft targets (after mixup) are class probabilities, which cross_entropy accepts directly.
            return F.cross_entropy(logits, labels)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        features, mask, labels = self.features(model, batch)
        logits = model(input_values=features, attention_mask=mask).logits
        return self.loss(logits, labels), {}
