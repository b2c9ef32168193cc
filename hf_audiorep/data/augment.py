"""Batch augmentations applied on the accelerator inside the training step.

They act on whole batches so that no per-clip Python loop runs on the hot path, and draw from
torch's global RNG so that accelerate's checkpoints (which save RNG states) make them resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF


@dataclass(frozen=True)
class MixupOutput:
    waveforms: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    lam: torch.Tensor  # (B,) weight of the original clip; 1 where a clip was left unmixed


def mixup(
    waveforms: torch.Tensor,
    lengths: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 10.0,
    prob: float = 0.5,
) -> MixupOutput:
    """Waveform mixup with a partner drawn by rolling the batch, as AudioMAE mixes waveforms.

    Each clip is mixed with probability ``prob`` using lam ~ Beta(alpha, alpha); labels are mixed with
    the same weights (soft multi-hot targets for BCE). Mixing waveforms rather than log-mels keeps the
    mixture physically meaningful: the log of a sum is not the sum of logs.
    """
    if waveforms.ndim != 2 or labels.ndim != 2 or len(waveforms) != len(labels):
        raise ValueError(
            f"mixup expects waveforms (B, S) and labels (B, C), got {tuple(waveforms.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mixup prob must be in [0, 1], got {prob}")
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be positive, got {alpha}")
    batch = len(waveforms)
    if batch < 2 or prob == 0.0:
        lam = torch.ones(batch, device=waveforms.device)
        return MixupOutput(waveforms, lengths, labels, lam)
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    lam = beta.sample((batch,)).to(waveforms.device)
    applied = torch.rand(batch, device=waveforms.device) < prob
    lam = torch.where(applied, lam, torch.ones_like(lam))
    partner = torch.roll(torch.arange(batch, device=waveforms.device), shifts=1)
    w = lam.to(waveforms.dtype)[:, None]
    mixed = w * waveforms + (1 - w) * waveforms[partner]
    mixed_labels = lam[:, None] * labels + (1 - lam[:, None]) * labels[partner]
    mixed_lengths = torch.where(applied, torch.maximum(lengths, lengths[partner]), lengths)
    return MixupOutput(mixed, mixed_lengths, mixed_labels, lam)


def time_roll(
    waveforms: torch.Tensor, lengths: torch.Tensor | None = None, max_shift: int | None = None
) -> torch.Tensor:
    """Rotates each clip in time by its own random shift, wrapping within its real samples.

    ``max_shift=None`` draws the shift uniformly over the whole clip (AudioMAE's ``roll_mag_aug``);
    an integer draws it uniformly from ``[-max_shift, max_shift]`` samples (CP-JKU's DCASE
    ``RollDataset``; DCASE default 4000 samples, 0.125 s at 32 kHz). With ``lengths`` (B,) the rotation
    wraps within each clip's first ``lengths`` samples, so zero padding stays at the end; without, within
    the whole row. Events move to new onsets while the clip keeps its labels.
    """
    if waveforms.ndim != 2 or (lengths is not None and lengths.shape != (len(waveforms),)):
        shape = None if lengths is None else tuple(lengths.shape)
        raise ValueError(
            f"time_roll expects waveforms (B, S) and lengths (B,), got {tuple(waveforms.shape)} and {shape}"
        )
    if max_shift is not None and max_shift < 0:
        raise ValueError(f"max_shift must be >= 0 or None, got {max_shift}")
    batch, samples = waveforms.shape
    device = waveforms.device
    if lengths is None:
        lengths = torch.full((batch,), samples, device=device)
    lengths = lengths.to(device).clamp(min=1, max=samples)
    if max_shift is None:
        shifts = (torch.rand(batch, device=device) * lengths).long()
    else:
        shifts = torch.randint(-max_shift, max_shift + 1, (batch,), device=device)
    positions = torch.arange(samples, device=device).unsqueeze(0)
    # Output sample t (< length) reads input sample (t - shift) mod length; padding reads itself.
    source = torch.where(
        positions < lengths[:, None], (positions - shifts[:, None]) % lengths[:, None], positions
    )
    return torch.gather(waveforms, 1, source)


def roll_and_gain(waveforms: torch.Tensor, lengths: torch.Tensor, gain_alpha: float = 10.0) -> torch.Tensor:
    """AudioMAE's ``roll_mag_aug``: :func:`time_roll` each clip by a random shift anywhere in it and
    scale it by ``Beta(gain_alpha, gain_alpha) + 0.5`` (a gain in [0.5, 1.5] around 1)."""
    if waveforms.ndim != 2 or lengths.shape != (len(waveforms),):
        raise ValueError(
            f"roll_and_gain expects waveforms (B, S) and lengths (B,), got {tuple(waveforms.shape)} and "
            f"{tuple(lengths.shape)}"
        )
    if gain_alpha <= 0:
        raise ValueError(f"gain_alpha must be positive, got {gain_alpha}")
    rolled = time_roll(waveforms, lengths)
    beta = torch.distributions.Beta(torch.tensor(float(gain_alpha)), torch.tensor(float(gain_alpha)))
    gain = (beta.sample((len(waveforms),)) + 0.5).to(device=waveforms.device, dtype=waveforms.dtype)
    return rolled * gain[:, None]


def device_impulse_response(
    waveforms: torch.Tensor,
    irs: torch.Tensor | np.ndarray,
    p: float = 0.6,
    eligible: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Device impulse-response (DIR) augmentation: each clip is, with probability ``p`` (DCASE default
    0.6), convolved with one of ``irs`` (N, K) drawn uniformly and cut to its length, as if recorded
    by another microphone (CP-JKU's ``DIRAugmentDataset``).

    ``eligible`` (B,) bool limits it to some clips: CP-JKU convolve only the reference device's (A)
    clips, the others being real device recordings already. With ``lengths`` (B,), samples past a clip's
    length stay zero instead of receiving the response's tail. For the embedded scene corpus, take
    ``irs`` from :func:`hf_audiorep.data.embedded.devices.device_impulse_responses`, which holds no
    device of the corpus (so the augmentation does not leak the unseen test devices into training).
    """
    irs = torch.as_tensor(irs)  # the bank may come straight from numpy
    if waveforms.ndim != 2 or irs.ndim != 2 or not len(irs):
        raise ValueError(
            f"device_impulse_response expects waveforms (B, S) and irs (N, K) with N >= 1, got "
            f"{tuple(waveforms.shape)} and {tuple(irs.shape)}"
        )
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"device_impulse_response p must be in [0, 1], got {p}")
    batch, samples = waveforms.shape
    if eligible is not None and eligible.shape != (batch,):
        raise ValueError(f"eligible must be a (B,) bool tensor, got shape {tuple(eligible.shape)}")
    if p == 0.0:
        return waveforms
    device = waveforms.device
    applied = torch.rand(batch, device=device) < p
    if eligible is not None:
        applied &= eligible.to(device=device, dtype=torch.bool)
    # fftconvolve in at least single precision (half-precision FFTs are limited to powers of two).
    dtype = torch.promote_types(waveforms.dtype, torch.float32)
    chosen = irs.to(device=device, dtype=dtype)[torch.randint(len(irs), (batch,), device=device)]
    # Convolve every clip (no data-dependent indexing that would sync with the host) and keep the chosen.
    convolved = AF.fftconvolve(waveforms.to(dtype), chosen)[:, :samples]
    if lengths is not None:
        inside = torch.arange(samples, device=device)[None, :] < lengths.to(device)[:, None]
        convolved = convolved * inside
    return torch.where(applied[:, None], convolved.to(waveforms.dtype), waveforms)


def freq_mixstyle(
    features: torch.Tensor, p: float = 0.4, alpha: float = 0.3, eps: float = 1e-6
) -> torch.Tensor:
    """Frequency-wise MixStyle on (B, T, F) log-mel features (CP-JKU's DCASE 2022-23 recipe; DCASE
    defaults ``p`` 0.4, ``alpha`` 0.3).

    Each clip is normalised over time per frequency bin, then given a mix of its own and another clip's
    per-bin mean and standard deviation (weight ``Beta(alpha, alpha)`` per clip, partner a random
    permutation of the batch). The per-bin statistics carry the recording device's frequency response,
    so mixing them simulates unseen devices while keeping the scene's time structure. As in the
    reference, the whole batch is mixed with probability ``p`` (one draw per batch), and the statistics
    are detached from the graph.
    """
    if features.ndim != 3:
        raise ValueError(f"freq_mixstyle expects (B, T, F) features, got shape {tuple(features.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"freq_mixstyle p must be in [0, 1], got {p}")
    if alpha <= 0:
        raise ValueError(f"freq_mixstyle alpha must be positive, got {alpha}")
    # The coin is drawn on the host: a comparison on an accelerator would sync anyway.
    if p == 0.0 or torch.rand(()).item() >= p:
        return features
    batch = len(features)
    mean = features.mean(dim=1, keepdim=True).detach()
    std = (features.var(dim=1, keepdim=True) + eps).sqrt().detach()
    normed = (features - mean) / std
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    lam = beta.sample((batch, 1, 1)).to(device=features.device, dtype=features.dtype)
    partner = torch.randperm(batch, device=features.device)
    mixed_mean = lam * mean + (1 - lam) * mean[partner]
    mixed_std = lam * std + (1 - lam) * std[partner]
    return normed * mixed_std + mixed_mean


# AudioMAE's AS-20K SpecAugment widths and the input they were chosen for (10.24-s clips, 128 mel bins).
AUDIOMAE_FREQ_MASK, AUDIOMAE_TIME_MASK = 48, 192
AUDIOMAE_NUM_MEL_BINS, AUDIOMAE_NUM_FRAMES = 128, 1024


def scaled_mask_widths(num_frames: int, num_mel_bins: int) -> tuple[int, int]:
    """``(freq_mask, time_mask)``: AudioMAE's widths scaled to an input of ``num_frames`` x ``num_mel_bins``.

    The widths are fractions of the input in AudioMAE (192 of 1024 frames), so a shorter clip needs a
    narrower mask: 192 frames would hide all of a 2-s clip.
    """
    if num_frames <= 0 or num_mel_bins <= 0:
        raise ValueError(f"num_frames and num_mel_bins must be positive, got {num_frames} and {num_mel_bins}")
    freq = max(1, round(AUDIOMAE_FREQ_MASK * num_mel_bins / AUDIOMAE_NUM_MEL_BINS))
    time = max(1, round(AUDIOMAE_TIME_MASK * num_frames / AUDIOMAE_NUM_FRAMES))
    return freq, time


def spec_augment(
    features: torch.Tensor,
    freq_mask_param: int = 48,
    time_mask_param: int = 192,
    num_freq_masks: int = 1,
    num_time_masks: int = 1,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """SpecAugment on (B, T, F) features, independent masks per clip (torchaudio's iid masking).

    ``mask_value`` is the value a masked cell takes. AudioMAE masks before normalisation, so a masked
    cell ends at ``(0 - mean) / (2 * std)`` after it; pass that value to keep parity with its recipes.
    """
    if features.ndim != 3:
        raise ValueError(f"spec_augment expects (B, T, F) features, got shape {tuple(features.shape)}")
    # torchaudio masks along (..., freq, time): view (B, T, F) as (B, 1, F, T) without copying.
    spec = features.transpose(1, 2).unsqueeze(1)
    for _ in range(num_freq_masks if freq_mask_param > 0 else 0):
        spec = AF.mask_along_axis_iid(spec, min(freq_mask_param, spec.shape[2]), mask_value, axis=2)
    for _ in range(num_time_masks if time_mask_param > 0 else 0):
        spec = AF.mask_along_axis_iid(spec, min(time_mask_param, spec.shape[3]), mask_value, axis=3)
    return spec.squeeze(1).transpose(1, 2)


def frequency_mask(features: torch.Tensor, max_width: int = 48, mask_value: float = 0.0) -> torch.Tensor:
    """Frequency masking only (the CP-JKU DCASE recipe: up to 48 of 256 mel bins, no time masking):
    :func:`spec_augment` with one frequency mask of width uniform in ``[0, max_width)`` per clip."""
    return spec_augment(features, max_width, 0, num_freq_masks=1, num_time_masks=0, mask_value=mask_value)


def random_erasing(
    features: torch.Tensor,
    prob: float = 0.25,
    area: tuple[float, float] = (0.02, 1 / 3),
    log_aspect: tuple[float, float] = (-1.2040, 1.2040),
    mask_value: float = 0.0,
) -> torch.Tensor:
    """Random erasing of one rectangle per clip on (B, T, F) features, each clip independently.

    The rectangle's area is a uniform fraction of the spectrogram and its aspect ratio log-uniform
    (log(0.3)..log(3.3), torchvision's defaults). Written batched so that the k views of a
    consistency-regularised step are erased independently without a Python loop per view.
    """
    if features.ndim != 3:
        raise ValueError(f"random_erasing expects (B, T, F) features, got shape {tuple(features.shape)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"random erasing prob must be in [0, 1], got {prob}")
    batch, frames, bins = features.shape
    device = features.device
    target = torch.empty(batch, device=device).uniform_(*area) * frames * bins
    aspect = torch.exp(torch.empty(batch, device=device).uniform_(*log_aspect))
    height = torch.sqrt(target * aspect).round().clamp(1, frames)  # along time
    width = torch.sqrt(target / aspect).round().clamp(1, bins)  # along frequency
    top = (torch.rand(batch, device=device) * (frames - height + 1)).floor()
    left = (torch.rand(batch, device=device) * (bins - width + 1)).floor()
    t = torch.arange(frames, device=device)[None, :, None]
    f = torch.arange(bins, device=device)[None, None, :]
    inside = (
        (t >= top[:, None, None])
        & (t < (top + height)[:, None, None])
        & (f >= left[:, None, None])
        & (f < (left + width)[:, None, None])
    )
    applied = (torch.rand(batch, device=device) < prob)[:, None, None]
    return torch.where(inside & applied, torch.as_tensor(mask_value, dtype=features.dtype), features)
