"""Kaldi-compatible log-mel filterbank in pure torch, and the feature extractor built on it.

`kaldi_fbank` reproduces Kaldi's ``compute-fbank-feats`` (the front end of AST, EAT, CAT, AudioMAE, BAT and
BEATs) for a whole batch of clips at once, on whatever device the waveforms live on. The formulas (frame
geometry with ``snip_edges``, per-frame DC removal, pre-emphasis with a replicated first sample, the
hanning/povey/hamming/blackman windows, zero-padding to a power-of-two FFT, the mel scale
``1127 ln(1 + f / 700)`` with triangular filters spaced evenly on the mel axis, and the log floor at the
float32 machine epsilon) are those of Kaldi (Apache-2.0, ``src/feat/feature-fbank.cc`` and
``mel-computations.cc``) as ported to torch by ``torchaudio.compliance.kaldi`` (BSD-2-Clause); this is an
independent, batched re-implementation that is checked against torchaudio in ``tests/test_fbank.py``.

`AudioFbankFeatureExtractor` wraps it as a transformers ``SequenceFeatureExtractor`` whose output equals
transformers' ``ASTFeatureExtractor`` (so AST-style checkpoints keep their input statistics), adds an
attention mask, and has a ``batch_features`` entry point for computing features on the accelerator inside a
training step.

This module imports only torch, numpy and transformers so that it can ship unchanged as Hub remote code.
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

logger = logging.get_logger(__name__)

WINDOW_TYPES = ("hanning", "povey", "hamming", "rectangular", "blackman")

# Kaldi floors mel energies at std::numeric_limits<float>::epsilon() before the log.
_LOG_FLOOR = torch.finfo(torch.float32).eps
# Kaldi's generalised Blackman window coefficient (its default; not exposed because no checkpoint changes it).
_BLACKMAN_COEFF = 0.42

# Frames per block. On a CPU the whole pipeline is memory bound, so blocks are kept small enough for their
# ~2 MB working set to stay in cache; on accelerators one large block amortises kernel launches.
_CPU_BLOCK_FRAMES = 1024
_ACCELERATOR_BLOCK_FRAMES = 1 << 16
# Rows of the (interleaved real/imag) power spectrum per mel-projection block on a CPU. Each triangular filter
# spans few FFT bins, so multiplying by the dense (257, 128) bank wastes ~90 % of the FLOPs; splitting it into
# row blocks and keeping only the filters each block touches makes the projection ~2x faster on a CPU.
_CPU_MEL_BLOCK_ROWS = 64


# ----------------------------------------------------------------------------------------------------
# Settings and cached analysis constants
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FbankSpec:
    """Validated, hashable fbank settings plus the derived frame geometry (the key of the constants cache)."""

    sample_rate: float
    num_mel_bins: int
    window_type: str
    low_freq: float
    high_freq: float
    win_length: int
    hop_length: int
    n_fft: int

    @property
    def num_spectrum_bins(self) -> int:
        return self.n_fft // 2 + 1


def _finite_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _fbank_spec(
    sample_rate: float,
    num_mel_bins: int,
    frame_length_ms: float,
    frame_shift_ms: float,
    window_type: str,
    preemphasis: float,
    dither: float,
    low_freq: float,
    high_freq: float,
) -> _FbankSpec:
    """Validate the settings (ValueError naming the argument) and derive the frame geometry Kaldi uses."""
    if not _finite_number(sample_rate) or sample_rate <= 0:
        raise ValueError(f"`sample_rate` must be a positive number of Hz, got {sample_rate!r}.")
    if not isinstance(num_mel_bins, numbers.Integral) or isinstance(num_mel_bins, bool) or num_mel_bins < 3:
        raise ValueError(f"`num_mel_bins` must be an integer >= 3 (Kaldi's minimum), got {num_mel_bins!r}.")
    if window_type not in WINDOW_TYPES:
        raise ValueError(f"`window_type` must be one of {WINDOW_TYPES}, got {window_type!r}.")
    if not _finite_number(frame_length_ms) or frame_length_ms <= 0:
        raise ValueError(f"`frame_length_ms` must be a positive number, got {frame_length_ms!r}.")
    if not _finite_number(frame_shift_ms) or frame_shift_ms <= 0:
        raise ValueError(f"`frame_shift_ms` must be a positive number, got {frame_shift_ms!r}.")
    if not _finite_number(preemphasis) or not 0.0 <= preemphasis <= 1.0:
        raise ValueError(f"`preemphasis` must be in [0, 1], got {preemphasis!r}.")
    if not _finite_number(dither) or dither < 0:
        raise ValueError(f"`dither` must be a non-negative number, got {dither!r}.")
    # Same expression and truncation as Kaldi's FrameExtractionOptions, so frame counts agree to the sample.
    win_length = int(sample_rate * frame_length_ms * 0.001)
    hop_length = int(sample_rate * frame_shift_ms * 0.001)
    if win_length < 2:
        raise ValueError(
            f"`frame_length_ms`={frame_length_ms} gives a window of {win_length} samples at "
            f"{sample_rate} Hz; at least 2 are needed."
        )
    if hop_length < 1:
        raise ValueError(
            f"`frame_shift_ms`={frame_shift_ms} gives a hop of {hop_length} samples at {sample_rate} Hz; "
            "at least 1 is needed."
        )
    nyquist = 0.5 * sample_rate
    if not _finite_number(low_freq) or not 0.0 <= low_freq < nyquist:
        raise ValueError(
            f"`low_freq` must be in [0, {nyquist}) Hz (the Nyquist frequency), got {low_freq!r}."
        )
    if not _finite_number(high_freq):
        raise ValueError(f"`high_freq` must be a number, got {high_freq!r}.")
    # Kaldi convention: a non-positive high_freq is an offset from the Nyquist frequency.
    resolved_high = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if not low_freq < resolved_high <= nyquist:
        raise ValueError(
            f"`high_freq`={high_freq} resolves to {resolved_high} Hz, which must lie in "
            f"(low_freq={low_freq}, {nyquist}] Hz."
        )
    n_fft = 1 << (win_length - 1).bit_length()  # Kaldi's round_to_power_of_two
    return _FbankSpec(
        sample_rate=float(sample_rate),
        num_mel_bins=int(num_mel_bins),
        window_type=window_type,
        low_freq=float(low_freq),
        high_freq=float(resolved_high),
        win_length=win_length,
        hop_length=hop_length,
        n_fft=n_fft,
    )


def _kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * torch.log1p(freq / 700.0)
    return 1127.0 * math.log1p(freq / 700.0)


def _kaldi_mel_banks(spec: _FbankSpec) -> torch.Tensor:
    """Kaldi's triangular mel filters as a ``(num_mel_bins, n_fft // 2 + 1)`` float64 CPU tensor.

    The filters are evenly spaced on the mel axis between ``low_freq`` and ``high_freq`` (hence the
    ``num_mel_bins + 1`` divisions: the outer filters need a half-width on each side) and are evaluated at the
    mel value of each FFT bin. Kaldi leaves the Nyquist bin out of every filter, so its column is zero.
    """
    mel_low, mel_high = _kaldi_mel(spec.low_freq), _kaldi_mel(spec.high_freq)
    mel_step = (mel_high - mel_low) / (spec.num_mel_bins + 1)
    index = torch.arange(spec.num_mel_bins, dtype=torch.float64).unsqueeze(1)
    left = mel_low + index * mel_step
    center = left + mel_step
    right = left + 2.0 * mel_step
    bin_hz = spec.sample_rate / spec.n_fft * torch.arange(spec.n_fft // 2, dtype=torch.float64)
    bin_mel = _kaldi_mel(bin_hz).unsqueeze(0)
    rising = (bin_mel - left) / (center - left)
    falling = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def _analysis_window(spec: _FbankSpec, device: torch.device) -> torch.Tensor:
    # Built directly in float32 with the same torch calls as torchaudio: the lowest bins of a frame are
    # ill-conditioned (energies ~1e-8 of the frame's), so even 1-ulp window differences show up in the log.
    n, kwargs = spec.win_length, {"device": device, "dtype": torch.float32}
    if spec.window_type == "hanning":
        return torch.hann_window(n, periodic=False, **kwargs)
    if spec.window_type == "povey":  # Kaldi's default: a hann window raised to 0.85, zero at both ends
        return torch.hann_window(n, periodic=False, **kwargs).pow(0.85)
    if spec.window_type == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46, **kwargs)
    if spec.window_type == "rectangular":
        return torch.ones(n, **kwargs)
    phase = torch.arange(n, **kwargs) * (2 * math.pi / (n - 1))
    return _BLACKMAN_COEFF - 0.5 * torch.cos(phase) + (0.5 - _BLACKMAN_COEFF) * torch.cos(2 * phase)


@dataclass(frozen=True)
class _MelBlock:
    """Mel projection block: spectrum rows [row_start, row_stop) feed filters [mel_start, mel_stop)."""

    row_start: int
    row_stop: int
    mel_start: int
    mel_stop: int
    weight: torch.Tensor  # (row_stop - row_start, mel_stop - mel_start) float32


@dataclass(frozen=True)
class _AnalysisConstants:
    window: torch.Tensor  # (win_length,) float32
    mel_blocks: tuple[_MelBlock, ...]


def _mel_projection_blocks(spec: _FbankSpec, device: torch.device) -> tuple[_MelBlock, ...]:
    # The power spectrum is consumed as interleaved (real^2, imag^2) pairs, which saves a pass over memory to
    # add them: each bank row is therefore duplicated. Rows that feed no filter (DC, Nyquist) are skipped.
    banks = _kaldi_mel_banks(spec).T.repeat_interleave(2, dim=0)  # (2 * num_spectrum_bins, num_mel_bins)
    rows_per_block = _CPU_MEL_BLOCK_ROWS if device.type == "cpu" else banks.shape[0]
    blocks = []
    for row_start in range(0, banks.shape[0], rows_per_block):
        part = banks[row_start : row_start + rows_per_block]
        used_rows = part.ne(0).any(dim=1).nonzero().flatten()
        used_mels = part.ne(0).any(dim=0).nonzero().flatten()
        if used_rows.numel() == 0:
            continue
        row_lo, row_hi = row_start + int(used_rows[0]), row_start + int(used_rows[-1]) + 1
        mel_lo, mel_hi = int(used_mels[0]), int(used_mels[-1]) + 1
        weight = banks[row_lo:row_hi, mel_lo:mel_hi].to(device=device, dtype=torch.float32).contiguous()
        blocks.append(_MelBlock(row_lo, row_hi, mel_lo, mel_hi, weight))
    return tuple(blocks)


@functools.lru_cache(maxsize=32)
def _analysis_constants(spec: _FbankSpec, device_key: str) -> _AnalysisConstants:
    device = torch.device(device_key)
    # Constants created under inference_mode would be "inference tensors", which later code running outside
    # it may reject (e.g. when saving them for backward), so build plain tensors whatever the caller's mode.
    with torch.inference_mode(False), torch.no_grad():
        return _AnalysisConstants(_analysis_window(spec, device), _mel_projection_blocks(spec, device))


def num_frames(num_samples: int, win_length: int, hop_length: int) -> int:
    """Frames Kaldi produces with ``snip_edges=True``: only frames that fit entirely inside the clip."""
    return 0 if num_samples < win_length else 1 + (num_samples - win_length) // hop_length


# ----------------------------------------------------------------------------------------------------
# The batched fbank
# ----------------------------------------------------------------------------------------------------


def _fp32_region(device: torch.device):
    # Under autocast the projection matmul would run in half precision; log-mels of quiet frames need float32.
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _blocks(batch: int, frames: int, budget: int) -> Iterator[tuple[int, int, int, int]]:
    """Split (batch, frames) into blocks of about `budget` frames: whole rows, or frame ranges of one row.

    Either shape keeps the matching slice of the (B, T, F) output viewable as a 2-D (frames, F) matrix.
    """
    if frames <= budget:
        rows = max(1, budget // frames)
        for row in range(0, batch, rows):
            yield row, min(batch, row + rows), 0, frames
    else:
        for row in range(batch):
            for start in range(0, frames, budget):
                yield row, row + 1, start, min(frames, start + budget)


def _fbank_block(
    samples: torch.Tensor,
    out: torch.Tensor,
    spec: _FbankSpec,
    constants: _AnalysisConstants,
    preemphasis: float,
    remove_dc_offset: bool,
    dither: float,
    generator: torch.Generator | None,
) -> None:
    """Log-mel of every frame of ``samples`` (b, s) written into ``out`` (b * frames, num_mel_bins).

    The time-domain steps keep torchaudio's order and rounding (DC removal, then ``x - a * x_prev`` with two
    roundings): low-energy bins sit at the float32 noise floor of the frame, and a fused multiply-add there
    moves their log value by ~1e-3.
    """
    frames = samples.unfold(-1, spec.win_length, spec.hop_length)  # (b, t, win) view, no copy
    if dither > 0.0:  # Kaldi dithers each frame independently, before DC removal
        noise = torch.randn(frames.shape, generator=generator, device=frames.device, dtype=frames.dtype)
        frames = frames + dither * noise
    padded = frames.new_empty(frames.shape[:-1] + (spec.n_fft,))
    padded[..., spec.win_length :].zero_()
    body = padded[..., : spec.win_length]
    if preemphasis == 0.0:
        if remove_dc_offset:
            torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=body)
        else:
            body.copy_(frames)
    else:
        centered = frames - frames.mean(dim=-1, keepdim=True) if remove_dc_offset else frames
        # x[j] - a * x[j - 1], with x[-1] := x[0] (Kaldi replicates the first sample of each frame).
        torch.mul(centered[..., :-1], preemphasis, out=body[..., 1:])
        torch.sub(centered[..., 1:], body[..., 1:], out=body[..., 1:])
        torch.sub(centered[..., 0], centered[..., 0] * preemphasis, out=body[..., 0])
    body.mul_(constants.window)

    spectrum = torch.fft.rfft(padded)  # (b, t, n_fft // 2 + 1) complex
    power = torch.view_as_real(spectrum).flatten(-2).flatten(0, -2)  # (b * t, 2 * bins): re, im interleaved
    power.square_()
    if len(constants.mel_blocks) == 1:
        block = constants.mel_blocks[0]
        torch.mm(power[:, block.row_start : block.row_stop], block.weight, out=out)
    else:
        out.zero_()
        for block in constants.mel_blocks:
            out[:, block.mel_start : block.mel_stop].addmm_(
                power[:, block.row_start : block.row_stop], block.weight
            )
    out.clamp_(min=_LOG_FLOOR).log_()


def kaldi_fbank(
    waveforms: torch.Tensor,
    sample_rate: float = 16000,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    window_type: str = "hanning",
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    dither: float = 0.0,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank of a batch of clips.

    Equal, clip by clip, to ``torchaudio.compliance.kaldi.fbank(wave[None], htk_compat=True, use_energy=False,
    snip_edges=True, ...)`` with the same settings, but computed for the whole batch at once on the
    waveforms' device, in float32 whatever the input dtype or autocast state. Frames are those that fit
    entirely inside the clip (``snip_edges``): ``1 + (S - win) // hop`` of them. The time-domain steps and
    the FFT reproduce torchaudio's arithmetic; the mel bank is computed in float64, which moves a few
    log-mel values by ~1e-4 relative to torchaudio's float32 bank.

    Args:
        waveforms: ``(B, S)`` or ``(S,)`` floating-point tensor, in whatever scale the model expects (Kaldi
            and BEATs use int16 units, AST-style models use [-1, 1]).
        sample_rate: sampling rate of ``waveforms`` in Hz.
        num_mel_bins: number of triangular mel filters.
        frame_length_ms, frame_shift_ms: analysis window and hop (25 / 10 ms -> 400 / 160 samples at 16 kHz).
        window_type: ``"hanning"`` (AST/EAT), ``"povey"`` (Kaldi's and BEATs' default), ``"hamming"``,
            ``"rectangular"`` or ``"blackman"``.
        preemphasis: pre-emphasis coefficient (0 disables it).
        remove_dc_offset: subtract each frame's mean before pre-emphasis.
        dither: standard deviation of Gaussian noise added to each frame (0 disables it).
        low_freq, high_freq: mel filterbank edges in Hz; a non-positive ``high_freq`` is an offset from
            the Nyquist frequency.
        generator: random generator for ``dither``, on the waveforms' device (reproducible dithering).

    Returns:
        ``(B, num_frames, num_mel_bins)`` float32 log-mel energies (``(num_frames, num_mel_bins)`` for 1-D
        input). Not differentiable: features are an input transform, and the in-place buffer writes that make
        it fast cannot be traced by autograd.
    """
    spec = _fbank_spec(
        sample_rate,
        num_mel_bins,
        frame_length_ms,
        frame_shift_ms,
        window_type,
        preemphasis,
        dither,
        low_freq,
        high_freq,
    )
    if not isinstance(waveforms, torch.Tensor):
        raise TypeError(f"`waveforms` must be a torch.Tensor, got {type(waveforms).__name__}.")
    if not waveforms.is_floating_point():
        raise TypeError(
            f"`waveforms` must be a floating-point tensor, got {waveforms.dtype}; convert it first "
            "(for int16 PCM, `waveforms.float() / 32768` gives the [-1, 1] scale)."
        )
    if waveforms.ndim not in (1, 2):
        raise ValueError(
            f"`waveforms` must be (batch, samples) or (samples,), got shape {tuple(waveforms.shape)}; "
            "downmix multi-channel audio to mono first."
        )
    if waveforms.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "kaldi_fbank is not differentiable (it writes into preallocated buffers); pass "
            "`waveforms.detach()` or call it under torch.no_grad()."
        )
    unbatched = waveforms.ndim == 1
    x = waveforms.unsqueeze(0) if unbatched else waveforms
    batch, length = x.shape
    if length < spec.win_length:
        raise ValueError(
            f"`waveforms` has {length} samples but one {frame_length_ms} ms frame at {sample_rate} Hz needs "
            f"{spec.win_length}."
        )
    total_frames = num_frames(length, spec.win_length, spec.hop_length)
    device = x.device
    constants = _analysis_constants(spec, str(device))
    out = torch.empty(batch, total_frames, spec.num_mel_bins, device=device, dtype=torch.float32)
    budget = _CPU_BLOCK_FRAMES if device.type == "cpu" else _ACCELERATOR_BLOCK_FRAMES
    with torch.no_grad(), _fp32_region(device):
        x = x.to(torch.float32)
        for row_start, row_stop, frame_start, frame_stop in _blocks(batch, total_frames, budget):
            first = frame_start * spec.hop_length
            last = (frame_stop - 1) * spec.hop_length + spec.win_length
            _fbank_block(
                x[row_start:row_stop, first:last],
                out[row_start:row_stop, frame_start:frame_stop].view(-1, spec.num_mel_bins),
                spec,
                constants,
                float(preemphasis),
                bool(remove_dc_offset),
                float(dither),
                generator,
            )
    return out[0] if unbatched else out


# ----------------------------------------------------------------------------------------------------
# The feature extractor
# ----------------------------------------------------------------------------------------------------


def _integer_to_unit_scale(dtype: np.dtype | torch.dtype) -> tuple[float, float] | None:
    """(offset, scale) mapping integer PCM to [-1, 1), or None for floating-point dtypes.

    Signed integers are divided by 2 ** (bits - 1) (32768 for int16), the convention of soundfile,
    torchaudio and librosa, so that a file read as int16 and as float gives the same features. Unsigned
    integers (8-bit WAV) are centred on their midpoint first.
    """
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return None
        if dtype.is_complex or dtype == torch.bool:
            raise TypeError(f"Audio must be real-valued samples, got a tensor of dtype {dtype}.")
        info = torch.iinfo(dtype)
    else:
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            return None
        if dtype.kind not in "iu":
            raise TypeError(f"Audio must be real-valued samples, got an array of dtype {dtype}.")
        info = np.iinfo(dtype)
    half_range = (int(info.max) - int(info.min) + 1) // 2
    return float(int(info.min) + half_range), float(half_range)


def _clip_description(index: int | None) -> str:
    return "the audio" if index is None else f"clip {index}"


class AudioFbankFeatureExtractor(SequenceFeatureExtractor):
    r"""Kaldi log-mel filterbank features for AST-style audio models (AST, EAT, CAT, AudioMAE, BAT, BEATs).

    Computes :func:`kaldi_fbank` on the batch, crops or pads it to ``target_length`` frames, and normalises it
    as ``(x - mean) / (std_scale * std)``. Padding follows transformers' ``ASTFeatureExtractor`` exactly: the
    *raw* log-mel is padded with ``padding_value`` (0.0) and then normalised together with the real frames, so
    padded frames hold ``(padding_value - mean) / (std_scale * std)`` (0.467 with the AudioSet statistics) and
    checkpoints trained on AST features see the inputs they were trained on. The attention mask (1 on real
    frames) is what tells the model which frames are padding.

    Args:
        sampling_rate: rate (Hz) the audio must already be at; nothing is resampled here.
        num_mel_bins: mel filters, also the ``feature_size``.
        target_length: frames per clip after cropping or padding (1024 = 10.24 s at a 10 ms hop);
            ``None`` pads to the longest clip of the batch instead.
        mean, std, std_scale: normalisation statistics (AudioSet's by default, the AST convention
            ``std_scale=2``).
        do_normalize: whether to normalise at all.
        window_type: ``"hanning"`` (AST/EAT/CAT), ``"povey"`` (BEATs, Kaldi), ``"hamming"``, ``"rectangular"``
            or ``"blackman"``.
        waveform_scale: factor applied to the [-1, 1] waveform before the fbank (``2**15`` for BEATs,
            which was trained on int16-scaled input).
        padding_value: raw log-mel value of padded frames, before normalisation (AST uses 0.0).
        return_attention_mask: whether ``__call__`` returns the frame mask by default.
        frame_length_ms, frame_shift_ms, preemphasis, remove_dc_offset, low_freq, high_freq, dither:
            Kaldi fbank options, see :func:`kaldi_fbank`.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        target_length: int | None = 1024,
        mean: float = -4.2677393,
        std: float = 4.5689974,
        std_scale: float = 2.0,
        do_normalize: bool = True,
        window_type: str = "hanning",
        waveform_scale: float = 1.0,
        padding_value: float = 0.0,
        return_attention_mask: bool = True,
        frame_length_ms: float = 25.0,
        frame_shift_ms: float = 10.0,
        preemphasis: float = 0.97,
        remove_dc_offset: bool = True,
        low_freq: float = 20.0,
        high_freq: float = 0.0,
        dither: float = 0.0,
        **kwargs,
    ):
        # `feature_size` comes back from preprocessor_config.json; it is derived, so only check it agrees.
        feature_size = kwargs.pop("feature_size", num_mel_bins)
        if (
            isinstance(sampling_rate, bool)
            or not isinstance(sampling_rate, numbers.Integral)
            or sampling_rate <= 0
        ):
            raise ValueError(
                f"`sampling_rate` must be a positive integer number of Hz, got {sampling_rate!r}."
            )
        if target_length is not None and (
            isinstance(target_length, bool)
            or not isinstance(target_length, numbers.Integral)
            or target_length <= 0
        ):
            raise ValueError(f"`target_length` must be a positive integer or None, got {target_length!r}.")
        if not _finite_number(mean):
            raise ValueError(f"`mean` must be a finite number, got {mean!r}.")
        for name, value in (("std", std), ("std_scale", std_scale), ("waveform_scale", waveform_scale)):
            if not _finite_number(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
        if not _finite_number(padding_value):
            raise ValueError(f"`padding_value` must be a finite number, got {padding_value!r}.")
        # Validates every fbank field, raising a ValueError that names it.
        _fbank_spec(
            sampling_rate,
            num_mel_bins,
            frame_length_ms,
            frame_shift_ms,
            window_type,
            preemphasis,
            dither,
            low_freq,
            high_freq,
        )
        if feature_size != num_mel_bins:
            raise ValueError(f"`feature_size` ({feature_size}) must equal `num_mel_bins` ({num_mel_bins}).")
        super().__init__(
            feature_size=int(num_mel_bins),
            sampling_rate=int(sampling_rate),
            padding_value=float(padding_value),
            return_attention_mask=bool(return_attention_mask),
            **kwargs,
        )
        # Plain Python scalars only, so that to_dict() is JSON-serialisable whatever was passed in.
        self.num_mel_bins = int(num_mel_bins)
        self.target_length = None if target_length is None else int(target_length)
        self.mean = float(mean)
        self.std = float(std)
        self.std_scale = float(std_scale)
        self.do_normalize = bool(do_normalize)
        self.window_type = str(window_type)
        self.waveform_scale = float(waveform_scale)
        self.frame_length_ms = float(frame_length_ms)
        self.frame_shift_ms = float(frame_shift_ms)
        self.preemphasis = float(preemphasis)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.low_freq = float(low_freq)
        self.high_freq = float(high_freq)
        self.dither = float(dither)

    @property
    def _spec(self) -> _FbankSpec:
        # Derived on demand rather than stored, so it can never disagree with fields edited after __init__.
        return _fbank_spec(
            self.sampling_rate,
            self.num_mel_bins,
            self.frame_length_ms,
            self.frame_shift_ms,
            self.window_type,
            self.preemphasis,
            self.dither,
            self.low_freq,
            self.high_freq,
        )

    # -- geometry ----------------------------------------------------------------------------------------

    @property
    def win_length(self) -> int:
        """Samples per analysis frame (400 at 16 kHz, 25 ms)."""
        return self._spec.win_length

    @property
    def hop_length(self) -> int:
        """Samples between frame starts (160 at 16 kHz, 10 ms)."""
        return self._spec.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Frames the fbank yields for a clip of ``num_samples`` samples, before cropping or padding."""
        return num_frames(num_samples, self.win_length, self.hop_length)

    @property
    def max_samples(self) -> int | None:
        """Samples that make exactly ``target_length`` frames; anything beyond is cropped before the fbank."""
        if self.target_length is None:
            return None
        return (self.target_length - 1) * self.hop_length + self.win_length

    # -- the in-step path --------------------------------------------------------------------------------

    def batch_features(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of a padded waveform batch, computed where the batch lives (the training-step path).

        Args:
            waveforms: ``(B, S)`` tensor at ``sampling_rate``; floating point in [-1, 1] (integer PCM is
                scaled like in ``__call__``).
            lengths: real samples per clip, ``(B,)``; samples beyond a clip's length are padding and yield no
                frames. ``None`` means every clip fills all ``S`` samples. Checked against ``S`` when given on
                the host; on an accelerator they are only clamped, to avoid a device sync.
            generator: random generator for ``dither`` (ignored when ``dither`` is 0).

        Returns:
            ``input_values`` ``(B, T, num_mel_bins)`` float32 and ``attention_mask`` ``(B, T)`` int64 on the
            waveforms' device, with ``T = target_length`` (or the frames of ``S`` samples if it is ``None``).
            A clip shorter than one frame gets an all-zero mask rather than an error, so one bad record cannot
            stop a training run.
        """
        if not isinstance(waveforms, torch.Tensor):
            raise TypeError(f"`waveforms` must be a torch.Tensor, got {type(waveforms).__name__}.")
        if waveforms.ndim != 2:
            raise ValueError(
                f"`waveforms` must be a (batch, samples) tensor, got shape {tuple(waveforms.shape)}; use "
                "`__call__` for single clips and downmix multi-channel audio to mono first."
            )
        batch, length = waveforms.shape
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
                raise ValueError(
                    f"`lengths` must hold one integer sample count per clip, shape ({batch},), got "
                    f"{tuple(lengths.shape)} of dtype {lengths.dtype}."
                )
            if lengths.device.type == "cpu" and bool(((lengths < 0) | (lengths > length)).any()):
                raise ValueError(
                    f"`lengths` must lie in [0, {length}] (the padded batch width), got {lengths.tolist()}."
                )
            lengths = lengths.to(device=waveforms.device, dtype=torch.int64).clamp(0, length)
        with torch.no_grad():
            return self._features(self._to_unit_float(waveforms), lengths, generator)

    def _to_unit_float(self, waveforms: torch.Tensor) -> torch.Tensor:
        integer_scale = _integer_to_unit_scale(waveforms.dtype)
        waveforms = waveforms.to(torch.float32)
        if integer_scale is not None:
            offset, scale = integer_scale
            waveforms = (waveforms - offset) / scale
        return waveforms * self.waveform_scale if self.waveform_scale != 1.0 else waveforms

    def _features(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fbank -> pad/crop -> mask -> normalise a (B, S) float32 batch; ``lengths`` (B,) int64 or None."""
        batch, length = waveforms.shape
        device = waveforms.device
        if self.max_samples is not None and length > self.max_samples:
            # Frames past target_length would be thrown away: do not compute them (360,000 for 1 hour).
            waveforms = waveforms[:, : self.max_samples]
            length = self.max_samples
        computed = self.num_frames(length)
        out_frames = self.target_length if self.target_length is not None else computed
        # Everything below works in place on the fbank's output: on a CPU each fresh (B, T, F) tensor costs
        # page faults and a memory pass, about a quarter of the extractor's time when profiled.
        if computed == 0:
            features = torch.full(
                (batch, out_frames, self.num_mel_bins), self.padding_value, device=device, dtype=torch.float32
            )
        else:
            features = kaldi_fbank(
                waveforms,
                sample_rate=self.sampling_rate,
                num_mel_bins=self.num_mel_bins,
                frame_length_ms=self.frame_length_ms,
                frame_shift_ms=self.frame_shift_ms,
                window_type=self.window_type,
                preemphasis=self.preemphasis,
                remove_dc_offset=self.remove_dc_offset,
                dither=self.dither,
                low_freq=self.low_freq,
                high_freq=self.high_freq,
                generator=generator,
            )
            if computed < out_frames:
                padded = features.new_empty(batch, out_frames, self.num_mel_bins)
                padded[:, :computed] = features
                padded[:, computed:] = self.padding_value
                features = padded
        frame_index = torch.arange(out_frames, device=device)
        if lengths is None:
            attention_mask = (frame_index < computed).expand(batch, out_frames)
        else:
            real_frames = torch.where(
                lengths >= self.win_length, (lengths - self.win_length) // self.hop_length + 1, 0
            )
            attention_mask = frame_index.unsqueeze(0) < real_frames.unsqueeze(1)
            # Frames that overlap a clip's zero-padded tail are not that clip's audio: treat them as padding.
            features.masked_fill_(~attention_mask.unsqueeze(-1), self.padding_value)
        if self.do_normalize:
            features.sub_(self.mean).div_(self.std_scale * self.std)
        return features, attention_mask.to(torch.int64)

    # -- the user-facing path ----------------------------------------------------------------------------

    def __call__(
        self,
        raw_audio: Any,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        device: str | torch.device | None = None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Featurise one clip or a batch of mono clips.

        Args:
            raw_audio: a clip -- 1-D numpy array, 1-D torch tensor, list of floats, or a ``datasets`` audio
                record ``{"array": ..., "sampling_rate": ...}`` -- or a batch: a list of clips (any lengths),
                or a 2-D ``(batch, samples)`` numpy array / tensor. A 2-D array is always a batch, never
                channels.
                Integer PCM is scaled to [-1, 1) by ``2 ** (bits - 1)`` (int16 / 32768).
            sampling_rate: rate of ``raw_audio``; must equal ``self.sampling_rate`` (nothing is resampled).
            return_tensors: ``"pt"`` (torch, on ``device``), ``"np"``, or ``None`` (a list of numpy arrays per
                clip, like transformers' extractors).
            device: where to compute (default: the input tensor's device, else CPU).
            return_attention_mask: overrides ``self.return_attention_mask``.
            generator: (keyword) random generator for ``dither``.

        Returns:
            ``BatchFeature`` with ``input_values`` ``(B, target_length, num_mel_bins)`` and, unless disabled,
            ``attention_mask`` ``(B, target_length)`` int64 (1 on real frames).
        """
        generator = kwargs.pop("generator", None)
        if kwargs:
            logger.warning_once(
                f"{type(self).__name__}.__call__ ignores the arguments {sorted(kwargs)} (padding and "
                "cropping are set by `target_length`)."
            )
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
        if sampling_rate is not None:
            self._check_rate(sampling_rate, None)
        clips, has_rate = self._split_clips(raw_audio, sampling_rate)
        if sampling_rate is None and not has_rate:  # warned on every call, like transformers' extractors
            logger.warning(
                "It is strongly recommended to pass the `sampling_rate` argument to "
                f"`{type(self).__name__}()`: this extractor expects {self.sampling_rate} Hz audio and "
                "cannot check that yours is."
            )
        if device is None:  # compute where the input already is
            tensors = [clips] if not isinstance(clips, list) else clips
            first = next((clip for clip in tensors if isinstance(clip, torch.Tensor)), None)
            device = first.device if first is not None else torch.device("cpu")
        waveforms, lengths = self._collate(clips, torch.device(device))
        with torch.no_grad():
            input_values, attention_mask = self._features(waveforms, lengths, generator)

        if return_attention_mask is None:
            return_attention_mask = self.return_attention_mask
        data = {"input_values": input_values}
        if return_attention_mask:
            data["attention_mask"] = attention_mask
        if return_tensors == "pt":
            return BatchFeature(data)
        data = {key: value.cpu().numpy() for key, value in data.items()}
        if return_tensors is None:
            data = {key: list(value) for key, value in data.items()}
        return BatchFeature(data)

    def _check_rate(self, rate: Any, index: int | None) -> None:
        if rate != self.sampling_rate:
            raise ValueError(
                f"{_clip_description(index).capitalize()} was sampled at {rate} Hz but this feature "
                f"extractor expects {self.sampling_rate} Hz; resample first, e.g. with "
                "torchaudio.functional.resample or "
                f"datasets' cast_column(..., Audio(sampling_rate={self.sampling_rate}))."
            )

    def _split_clips(
        self, raw_audio: Any, sampling_rate: int | None
    ) -> tuple[list | np.ndarray | torch.Tensor, bool]:
        """The input as a list of clips or a 2-D batch (not yet validated), and whether it carried rates."""
        if isinstance(raw_audio, (np.ndarray, torch.Tensor)):
            if raw_audio.ndim == 1:
                return [raw_audio], False
            if raw_audio.ndim == 2:
                return raw_audio, False
            raise ValueError(
                f"Expected a 1-D clip or a 2-D (batch, samples) batch of mono audio, got an array of shape "
                f"{tuple(raw_audio.shape)}."
            )
        if self._is_record(raw_audio):
            return [self._record_samples(raw_audio, sampling_rate, None)], True
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("Got an empty list: pass at least one clip.")
            if all(isinstance(x, numbers.Real) for x in raw_audio):  # one clip as a list of samples
                return [np.asarray(raw_audio, dtype=np.float32)], False
            clips, has_rate = [], False
            for index, item in enumerate(raw_audio):
                if self._is_record(item):
                    clips.append(self._record_samples(item, sampling_rate, index))
                    has_rate = True
                elif isinstance(item, (np.ndarray, torch.Tensor)):
                    clips.append(item)
                elif isinstance(item, (list, tuple)):
                    try:
                        clips.append(np.asarray(item, dtype=np.float32))
                    except (TypeError, ValueError) as err:
                        raise TypeError(f"Clip {index} is not a sequence of numbers ({err}).") from None
                else:
                    raise TypeError(
                        f"Clip {index} has unsupported type {type(item).__name__}; expected a numpy "
                        "array, a torch tensor, a list of floats or a {'array', 'sampling_rate'} record."
                    )
            return clips, has_rate
        raise TypeError(
            f"Unsupported audio input of type {type(raw_audio).__name__}; expected a numpy array, a "
            "torch tensor, a list of floats, a {'array', 'sampling_rate'} record, or a list of those."
        )

    @staticmethod
    def _is_record(item: Any) -> bool:
        # datasets >= 4 decodes Audio columns to a torchcodec decoder that answers ["array"] and
        # ["sampling_rate"] like the older dict records; duck-typed so torchcodec need not be imported.
        return isinstance(item, Mapping) or hasattr(item, "get_all_samples")

    def _record_samples(self, record: Any, sampling_rate: int | None, index: int | None) -> Any:
        try:
            samples, rate = record["array"], record["sampling_rate"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{_clip_description(index).capitalize()} is a mapping without the 'array' and "
                "'sampling_rate' keys of a datasets audio record."
            ) from None
        if sampling_rate is not None and rate != sampling_rate:
            raise ValueError(
                f"`sampling_rate`={sampling_rate} disagrees with the {rate} Hz recorded in "
                f"{_clip_description(index)}."
            )
        self._check_rate(rate, index)
        if not isinstance(samples, (np.ndarray, torch.Tensor)):
            try:
                samples = np.asarray(samples, dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"The 'array' of {_clip_description(index)} is not a sequence of numbers ({err})."
                ) from None
        return samples

    def _collate(
        self, clips: list | np.ndarray | torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the clips, crop them to what target_length needs, and pad them into one (B, S) batch.

        ``clips`` is a list of 1-D clips or a 2-D (batch, samples) array; the latter stays a zero-copy view
        on CPU, so a batch costs no more than the samples that are kept.
        """
        keep = self.max_samples
        if not isinstance(clips, list):  # a 2-D (batch, samples) array or tensor
            batch, length = clips.shape
            self._check_length(length, "the audio" if batch == 1 else "every clip", hint=batch > length)
            waveforms = self._as_unit_float_tensor(clips[:, :keep], "the audio", device)
            lengths = torch.full((batch,), waveforms.shape[1], device=device, dtype=torch.int64)
        else:
            prepared = []
            for index, clip in enumerate(clips):
                where = _clip_description(index if len(clips) > 1 else None)
                if clip.ndim == 2:
                    raise ValueError(
                        f"{where.capitalize()} is 2-D {tuple(clip.shape)}: multi-channel audio is ambiguous "
                        "here. Downmix to mono first, e.g. `x.mean(axis=0)` for (channels, samples) or "
                        "`x.mean(axis=1)` for (samples, channels) as soundfile returns it."
                    )
                if clip.ndim != 1:
                    raise ValueError(
                        f"{where.capitalize()} must be a 1-D array of samples, got shape {tuple(clip.shape)}."
                    )
                self._check_length(clip.shape[0], where)
                # Crop before any copy or conversion: a 1-hour clip costs only the samples that are kept.
                prepared.append(self._as_unit_float_tensor(clip[:keep], where, device))
            sizes = [clip.shape[0] for clip in prepared]
            if len(set(sizes)) == 1:
                waveforms = torch.stack(prepared)
            else:
                waveforms = torch.zeros(len(prepared), max(sizes), device=device, dtype=torch.float32)
                for row, clip in enumerate(prepared):
                    waveforms[row, : clip.shape[0]] = clip
            lengths = torch.tensor(sizes, device=device, dtype=torch.int64)
        self._check_finite(waveforms, several=waveforms.shape[0] > 1)
        return waveforms, lengths

    def _check_length(self, num_samples: int, where: str, hint: bool = False) -> None:
        if num_samples >= self.win_length:
            return
        message = (
            f"{where.capitalize()} has {num_samples} samples but at least {self.win_length} (one "
            f"{self.frame_length_ms:g} ms frame at {self.sampling_rate} Hz) are needed."
        )
        if hint:
            message += (
                " A 2-D input is read as (batch, samples); if yours is (samples, channels) audio, downmix it "
                "to mono first."
            )
        raise ValueError(message)

    def _as_unit_float_tensor(
        self, clip: np.ndarray | torch.Tensor, where: str, device: torch.device
    ) -> torch.Tensor:
        if isinstance(clip, np.ndarray):
            if clip.dtype.kind not in "fiu":
                raise TypeError(
                    f"{where.capitalize()} must hold real-valued samples, got dtype {clip.dtype}."
                )
            if not clip.dtype.isnative or any(stride < 0 for stride in clip.strides):
                clip = np.ascontiguousarray(clip, dtype=clip.dtype.newbyteorder("="))
            elif not clip.flags.writeable:
                # Read-only arrays (np.frombuffer, memory maps, ffmpeg pipes) would make torch warn on every
                # call; one copy of one clip is cheaper than the noise.
                clip = clip.copy()
            clip = torch.from_numpy(clip)  # a view, strides and all: no copy on CPU
        return self._to_unit_float(clip.to(device))

    @staticmethod
    def _check_finite(waveforms: torch.Tensor, several: bool) -> None:
        # One reduction over the batch instead of an isfinite pass per clip; NaN and inf both survive a sum.
        # A sum can also overflow on huge finite samples, so flagged rows are confirmed exactly.
        for row in torch.nonzero(~torch.isfinite(waveforms.sum(dim=1))).flatten().tolist():
            if not bool(torch.isfinite(waveforms[row]).all()):
                where = _clip_description(row if several else None)
                raise ValueError(f"{where.capitalize()} contains NaN or infinite samples.")
