"""STFT log-mel spectrogram in pure torch (CP-Mobile's 32 kHz front end), and the feature extractor on it.

`stft_log_mel` is ``log(mel(|STFT|^2) + log_offset)`` of a batch of clips with centred (reflect-padded)
frames, optionally after a pre-emphasis filter. It covers the two CP-Mobile front ends of the CP-JKU DCASE
systems that ContrastASC's student builds on (shared/reference/architectures.md, sections 1 and 6; the
ContrastASC seed summary gives no front-end numbers, and no ContrastASC code is public):

* ``"dcase2024_baseline"`` (the default; CPJKU/dcase2024_task1_baseline, ``run_training.py``): resample to
  32 kHz, ``torchaudio.transforms.MelSpectrogram(sample_rate=32000, n_fft=4096, win_length=3072,
  hop_length=500, n_mels=256, f_min=0, f_max=None)`` -- so a periodic Hann window, ``center=True`` with
  reflect padding, power 2, HTK mel scale, no filter normalisation, fmax = Nyquist -- then
  ``(x + 1e-5).log()``. Nothing else: a plain log-mel, 65 frames per 1-s clip.
* ``"cpjku_dcase23"`` (fschmid56/cpjku_dcase23, ``models/mel.py`` ``AugmentMelSTFT``, the EfficientAT front
  end, with ``run_training.py``'s arguments): pre-emphasis ``x[n] - 0.97 x[n - 1]`` (which drops one
  sample), the same 4096 / 3072 / 500 STFT but with a *symmetric* Hann window, Kaldi mel banks (triangles on
  the mel axis) from 0 Hz to ``fmax = 16000 - fmax_aug_range // 2 = 15500`` Hz (``fmax_aug_range`` 1000; at
  evaluation time fmax is not jittered), 256 bins, ``log(x + 1e-5)``, then ``(x + 4.5) / 5``. 64 frames per
  1-s clip.

Mel banks come from transformers' ``mel_filter_bank`` (HTK: equal to torchaudio's ``melscale_fbanks``;
Kaldi: equal to ``torchaudio.compliance.kaldi.get_mel_banks``; both computed in float64) and windows from
``torch.hann_window``, which both references call. This module imports only torch, numpy and transformers
so that it can ship unchanged as Hub remote code.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from .feature_extraction_base import (
    BaseAudioFeatureExtractor,
    FrameGeometry,
    float32_region,
    is_finite_number,
    reflect_pad,
)

MEL_SCALES = ("htk", "kaldi")


@dataclass(frozen=True)
class _LogMelSpec(FrameGeometry):
    """Validated STFT and mel settings (the key of the constants cache)."""

    f_min: float
    f_max: float
    mel_scale: str
    periodic_window: bool
    preemphasis: float
    log_offset: float


def _positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def _log_mel_spec(
    sample_rate: int,
    n_fft: int,
    win_length: int,
    hop_length: int,
    num_mel_bins: int,
    f_min: float,
    f_max: float | None,
    mel_scale: str,
    periodic_window: bool,
    preemphasis: float,
    log_offset: float,
) -> _LogMelSpec:
    """Validate the settings (ValueError naming the argument) and resolve ``f_max=None`` to Nyquist."""
    for name, value in (
        ("sample_rate", sample_rate),
        ("n_fft", n_fft),
        ("win_length", win_length),
        ("hop_length", hop_length),
        ("num_mel_bins", num_mel_bins),
    ):
        if not _positive_int(value):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if n_fft < 2 or win_length > n_fft:
        raise ValueError(f"`win_length` ({win_length}) must not exceed `n_fft` ({n_fft}, at least 2).")
    nyquist = sample_rate / 2
    if not is_finite_number(f_min) or not 0.0 <= f_min < nyquist:
        raise ValueError(f"`f_min` must be in [0, {nyquist}) Hz, got {f_min!r}.")
    resolved_max = nyquist if f_max is None else f_max
    if not is_finite_number(resolved_max) or not f_min < resolved_max <= nyquist:
        raise ValueError(f"`f_max` must be None or in (f_min={f_min}, {nyquist}] Hz, got {f_max!r}.")
    if mel_scale not in MEL_SCALES:
        raise ValueError(f"`mel_scale` must be one of {MEL_SCALES}, got {mel_scale!r}.")
    if not is_finite_number(preemphasis) or not 0.0 <= preemphasis <= 1.0:
        raise ValueError(f"`preemphasis` must be in [0, 1], got {preemphasis!r}.")
    if not is_finite_number(log_offset) or log_offset <= 0:
        raise ValueError(f"`log_offset` must be a positive finite number, got {log_offset!r}.")
    return _LogMelSpec(
        sample_rate=int(sample_rate),
        n_fft=int(n_fft),
        win_length=int(win_length),
        hop_length=int(hop_length),
        num_mel_bins=int(num_mel_bins),
        f_min=float(f_min),
        f_max=float(resolved_max),
        mel_scale=str(mel_scale),
        periodic_window=bool(periodic_window),
        preemphasis=float(preemphasis),
        log_offset=float(log_offset),
    )


@functools.lru_cache(maxsize=16)
def _log_mel_constants(spec: _LogMelSpec, device_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(window (win_length,), mel banks (n_fft // 2 + 1, num_mel_bins)), float32 on the device."""
    device = torch.device(device_key)
    banks = mel_filter_bank(
        num_frequency_bins=spec.num_spectrum_bins,
        num_mel_filters=spec.num_mel_bins,
        min_frequency=spec.f_min,
        max_frequency=spec.f_max,
        sampling_rate=spec.sample_rate,
        norm=None,
        # "htk": triangles on the Hz axis between HTK-mel-spaced corners (torchaudio's MelSpectrogram);
        # "kaldi": triangles on the mel axis (Kaldi's get_mel_banks, which AugmentMelSTFT calls).
        mel_scale=spec.mel_scale,
        triangularize_in_mel_space=spec.mel_scale == "kaldi",
    )
    # Plain tensors even under inference_mode (see feature_extraction_fbank._analysis_constants).
    with torch.inference_mode(False), torch.no_grad():
        window = torch.hann_window(
            spec.win_length, periodic=spec.periodic_window, device=device, dtype=torch.float32
        )
        return window, torch.from_numpy(banks).to(device=device, dtype=torch.float32)


def _preemphasised_length(num_samples: int | torch.Tensor, preemphasis: float) -> int | torch.Tensor:
    # AugmentMelSTFT's pre-emphasis is a 2-tap convolution without padding: it drops one sample.
    return num_samples - 1 if preemphasis > 0.0 else num_samples


def _log_mel(
    waveforms: torch.Tensor,
    lengths: torch.Tensor | None,
    spec: _LogMelSpec,
) -> torch.Tensor:
    """``(B, 1 + S' // hop, num_mel_bins)`` log-mel of a (B, S) batch, each clip mirrored at its own end."""
    window, banks = _log_mel_constants(spec, str(waveforms.device))
    with torch.no_grad(), float32_region(waveforms.device):
        x = waveforms.to(torch.float32)
        if spec.preemphasis > 0.0:
            x = x[:, 1:] - spec.preemphasis * x[:, :-1]
            lengths = None if lengths is None else _preemphasised_length(lengths, spec.preemphasis)
        # center=True framing, done by hand so that each clip is reflected at its own end (torch.stft would
        # reflect the whole padded batch at its width): frame t is centred on sample t * hop.
        pad = spec.n_fft // 2
        x = reflect_pad(x, lengths, pad, x.shape[1] + 2 * pad, pad, include_edge=False)
        spectrum = torch.stft(
            x,
            spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            window=window,
            center=False,
            return_complex=True,
        )  # (B, n_fft // 2 + 1, T)
        power = torch.view_as_real(spectrum).square_().sum(-1)
        mel = torch.matmul(power.transpose(1, 2), banks)  # (B, T, num_mel_bins)
        return mel.add_(spec.log_offset).log_()


def stft_log_mel(
    waveforms: torch.Tensor,
    sample_rate: int = 32000,
    n_fft: int = 4096,
    win_length: int = 3072,
    hop_length: int = 500,
    num_mel_bins: int = 256,
    f_min: float = 0.0,
    f_max: float | None = None,
    mel_scale: str = "htk",
    periodic_window: bool = True,
    preemphasis: float = 0.0,
    log_offset: float = 1e-5,
) -> torch.Tensor:
    """Log-mel spectrogram ``log(mel(|STFT|^2) + log_offset)`` of a batch of clips.

    With the defaults, equal clip by clip (to ~1e-5) to ``torchaudio.transforms.MelSpectrogram(sample_rate,
    n_fft, win_length, hop_length, f_min, f_max, n_mels=num_mel_bins)`` followed by ``(x + 1e-5).log()``:
    frames are centred on every ``hop_length``-th sample (``1 + S // hop_length`` of them) with the clip
    reflected at its ends, windowed by a Hann window zero-padded to ``n_fft``. See the module docstring for
    the CP-JKU variant (pre-emphasis, symmetric window, Kaldi mel banks).

    Args:
        waveforms: ``(B, S)`` or ``(S,)`` floating-point tensor in [-1, 1]; ``S - (preemphasis > 0)`` must
            exceed ``n_fft // 2`` (reflect padding).
        sample_rate, n_fft, win_length, hop_length: STFT geometry (96 ms / 15.6 ms at 32 kHz by default).
        num_mel_bins, f_min, f_max: mel filters between ``f_min`` and ``f_max`` Hz (``None``: Nyquist).
        mel_scale: ``"htk"`` (torchaudio's MelSpectrogram) or ``"kaldi"`` (Kaldi's banks).
        periodic_window: periodic Hann (``torch.hann_window``'s default) or symmetric.
        preemphasis: coefficient ``a`` of ``x[n] - a x[n - 1]`` (0 disables it; it drops the first sample).
        log_offset: added before the log.

    Returns:
        ``(B, frames, num_mel_bins)`` float32 (``(frames, num_mel_bins)`` for 1-D input).
    """
    spec = _log_mel_spec(
        sample_rate, n_fft, win_length, hop_length, num_mel_bins, f_min, f_max, mel_scale, periodic_window,
        preemphasis, log_offset,
    )  # fmt: skip
    if not isinstance(waveforms, torch.Tensor) or not waveforms.is_floating_point():
        raise TypeError("`waveforms` must be a floating-point torch.Tensor.")
    if waveforms.ndim not in (1, 2):
        raise ValueError(f"`waveforms` must be (batch, samples) or (samples,), got {tuple(waveforms.shape)}.")
    unbatched = waveforms.ndim == 1
    x = waveforms.unsqueeze(0) if unbatched else waveforms
    if _preemphasised_length(x.shape[1], preemphasis) <= n_fft // 2:
        raise ValueError(f"`waveforms` has {x.shape[1]} samples, too few to reflect-pad {n_fft // 2}.")
    out = _log_mel(x, None, spec)
    return out[0] if unbatched else out


class LogMelFeatureExtractor(BaseAudioFeatureExtractor):
    r"""STFT log-mel features at 32 kHz for CP-Mobile (the ContrastASC student), in the front-end family.

    Computes :func:`stft_log_mel` on the batch and, if ``do_normalize``, ``(x - mean) / std``. Variable length
    by default (``target_length=None`` pads a batch to its longest clip; CP-Mobile pools globally);
    ``attention_mask`` marks each clip's frames, and padded frames hold ``padding_value`` (default
    ``log(log_offset)``, the log-mel of digital silence, i.e. what a zero-padded waveform would give) before
    normalisation. Input handling is the family's, see :class:`BaseAudioFeatureExtractor`.

    The defaults are the DCASE 2024 baseline's plain log-mel; ``LogMelFeatureExtractor.from_preset(
    "cpjku_dcase23")`` gives the DCASE 2023 / EfficientAT one (see the module docstring for both sources).

    Args:
        sampling_rate: rate (Hz) the audio must already be at (CP-JKU resamples 44.1 kHz TAU audio to 32 kHz).
        num_mel_bins: mel filters, also the ``feature_size``.
        n_fft, win_length, hop_length, f_min, f_max, mel_scale, periodic_window, preemphasis, log_offset:
            see :func:`stft_log_mel`.
        do_normalize, mean, std: optional ``(x - mean) / std`` after the log (CP-JKU DCASE23: -4.5, 5).
        target_length: frames per clip after cropping or padding, or ``None``.
        padding_value: raw log-mel of padded frames (``None``: ``log(log_offset)``).
        return_attention_mask, waveform_scale: as in :class:`BaseAudioFeatureExtractor`.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "dcase2024_baseline": {},
        "cpjku_dcase23": {
            "preemphasis": 0.97,
            "periodic_window": False,
            "mel_scale": "kaldi",
            "f_max": 15500.0,
            "do_normalize": True,
            "mean": -4.5,
            "std": 5.0,
        },
    }

    def __init__(
        self,
        sampling_rate: int = 32000,
        num_mel_bins: int = 256,
        n_fft: int = 4096,
        win_length: int = 3072,
        hop_length: int = 500,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: str = "htk",
        periodic_window: bool = True,
        preemphasis: float = 0.0,
        log_offset: float = 1e-5,
        do_normalize: bool = False,
        mean: float = 0.0,
        std: float = 1.0,
        target_length: int | None = None,
        padding_value: float | None = None,
        return_attention_mask: bool = True,
        waveform_scale: float = 1.0,
        **kwargs,
    ):
        feature_size = kwargs.pop("feature_size", num_mel_bins)
        super().__init__(
            feature_size=num_mel_bins,
            sampling_rate=sampling_rate,
            target_length=target_length,
            padding_value=0.0 if padding_value is None else padding_value,  # None: set below, from the spec
            return_attention_mask=return_attention_mask,
            waveform_scale=waveform_scale,
            **kwargs,
        )
        spec = _log_mel_spec(
            sampling_rate, n_fft, win_length, hop_length, num_mel_bins, f_min, f_max, mel_scale,
            periodic_window, preemphasis, log_offset,
        )  # fmt: skip
        if padding_value is None:
            self.padding_value = math.log(spec.log_offset)
        if not is_finite_number(mean):
            raise ValueError(f"`mean` must be a finite number, got {mean!r}.")
        if not is_finite_number(std) or std <= 0:
            raise ValueError(f"`std` must be a positive finite number, got {std!r}.")
        if feature_size != num_mel_bins:
            raise ValueError(f"`feature_size` ({feature_size}) must equal `num_mel_bins` ({num_mel_bins}).")
        self.feature_size = self.num_mel_bins = spec.num_mel_bins
        self.n_fft = spec.n_fft
        self.win_length = spec.win_length
        self.hop_length = spec.hop_length
        self.f_min = spec.f_min
        self.f_max = None if f_max is None else float(f_max)  # None stays None: it follows sampling_rate
        self.mel_scale = spec.mel_scale
        self.periodic_window = spec.periodic_window
        self.preemphasis = spec.preemphasis
        self.log_offset = spec.log_offset
        self.do_normalize = bool(do_normalize)
        self.mean = float(mean)
        self.std = float(std)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LogMelFeatureExtractor:
        """The extractor of a named reference front end (see ``PRESETS``), with any field overridden."""
        if name not in cls.PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(cls.PRESETS)}.")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def _spec(self) -> _LogMelSpec:
        return _log_mel_spec(
            self.sampling_rate,
            self.n_fft,
            self.win_length,
            self.hop_length,
            self.num_mel_bins,
            self.f_min,
            self.f_max,
            self.mel_scale,
            self.periodic_window,
            self.preemphasis,
            self.log_offset,
        )

    # -- geometry ----------------------------------------------------------------------------------------

    def frame_times(self, num_frames: int) -> np.ndarray:
        return np.arange(num_frames) * (self.hop_length / self.sampling_rate)  # centred frames

    @property
    def min_samples(self) -> int:
        # Centred frames reflect n_fft // 2 samples at each end, which needs one more than that.
        return self.n_fft // 2 + 1 + (1 if self.preemphasis > 0.0 else 0)

    def _min_samples_reason(self) -> str:
        return (
            f"a frame centred on the first sample mirrors {self.n_fft // 2} samples of the clip, "
            f"half the {self.n_fft}-point FFT"
        )

    def num_frames(self, num_samples: int) -> int:
        """Frames for a clip of ``num_samples`` samples: one per hop, centred on it."""
        return 1 + _preemphasised_length(num_samples, self.preemphasis) // self.hop_length

    def _frames_of(self, lengths: torch.Tensor) -> torch.Tensor:
        frames = 1 + _preemphasised_length(lengths, self.preemphasis) // self.hop_length
        return torch.where(lengths >= self.min_samples, frames, 0)

    def _samples_for_frames(self, frames: int) -> int:
        # Up to the last sample the last kept frame's FFT span reaches, so no kept frame sees the reflection.
        return (frames - 1) * self.hop_length + self.n_fft // 2 + (1 if self.preemphasis > 0.0 else 0)

    # -- the spectrogram ---------------------------------------------------------------------------------

    def _spectrogram(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        return _log_mel(waveforms, lengths, self._spec)

    def _normalize_(self, features: torch.Tensor) -> None:
        if self.do_normalize:
            features.sub_(self.mean).div_(self.std)
