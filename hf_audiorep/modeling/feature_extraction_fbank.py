"""Kaldi-compatible log-mel filterbank in pure torch, and the feature extractors built on it.

`kaldi_fbank` reproduces Kaldi's ``compute-fbank-feats`` (the front end of AST, EAT, CAT, AudioMAE, BAT, BEATs
and, with 80 bins, of icefall's Zipformer) for a whole batch of clips at once, on whatever device the
waveforms live on. The formulas (frame geometry with or without ``snip_edges``, per-frame DC removal,
pre-emphasis with a replicated first sample, the hanning/povey/hamming/blackman windows, zero-padding to a
power-of-two FFT, the mel scale ``1127 ln(1 + f / 700)`` with triangular filters spaced evenly on the mel
axis, and the log floor at the float32 machine epsilon) are those of Kaldi (Apache-2.0,
``src/feat/feature-fbank.cc`` and ``mel-computations.cc``) as ported to torch by
``torchaudio.compliance.kaldi`` (BSD-2-Clause); this is an independent, batched re-implementation that is
checked against torchaudio in ``tests/test_fbank.py`` and ``tests/test_front_ends.py``.

Two members of the front-end family (``feature_extraction_base.py``) wrap it:

* `AudioFbankFeatureExtractor` -- AST-style input for the ViTs: 128 bins, cropped or padded to
  ``target_length`` frames and normalised; its output equals transformers' ``ASTFeatureExtractor`` (so
  AST-style checkpoints keep their input statistics).
* `ZipformerFbankFeatureExtractor` -- icefall/lhotse-style input for a Zipformer encoder: 80 bins at 100
  frames/s, raw (not normalised), variable length.

This module imports only torch, numpy and transformers so that it can ship unchanged as Hub remote code.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
class _FbankSpec(FrameGeometry):
    """Validated fbank settings plus the derived frame geometry (the key of the constants cache)."""

    window_type: str
    low_freq: float
    high_freq: float


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
    if not is_finite_number(sample_rate) or sample_rate <= 0:
        raise ValueError(f"`sample_rate` must be a positive number of Hz, got {sample_rate!r}.")
    if not isinstance(num_mel_bins, numbers.Integral) or isinstance(num_mel_bins, bool) or num_mel_bins < 3:
        raise ValueError(f"`num_mel_bins` must be an integer >= 3 (Kaldi's minimum), got {num_mel_bins!r}.")
    if window_type not in WINDOW_TYPES:
        raise ValueError(f"`window_type` must be one of {WINDOW_TYPES}, got {window_type!r}.")
    if not is_finite_number(frame_length_ms) or frame_length_ms <= 0:
        raise ValueError(f"`frame_length_ms` must be a positive number, got {frame_length_ms!r}.")
    if not is_finite_number(frame_shift_ms) or frame_shift_ms <= 0:
        raise ValueError(f"`frame_shift_ms` must be a positive number, got {frame_shift_ms!r}.")
    if not is_finite_number(preemphasis) or not 0.0 <= preemphasis <= 1.0:
        raise ValueError(f"`preemphasis` must be in [0, 1], got {preemphasis!r}.")
    if not is_finite_number(dither) or dither < 0:
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
    if not is_finite_number(low_freq) or not 0.0 <= low_freq < nyquist:
        raise ValueError(
            f"`low_freq` must be in [0, {nyquist}) Hz (the Nyquist frequency), got {low_freq!r}."
        )
    if not is_finite_number(high_freq):
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


def _kaldi_mel_banks(spec: _FbankSpec) -> torch.Tensor:
    """Kaldi's triangular mel filters as a ``(num_mel_bins, n_fft // 2 + 1)`` float64 CPU tensor.

    transformers' ``mel_filter_bank`` with ``mel_scale="kaldi"`` and ``triangularize_in_mel_space=True`` is
    Kaldi's bank: filters evenly spaced on the mel axis between ``low_freq`` and ``high_freq`` and evaluated
    at the mel value of each FFT bin (equal to ``torchaudio.compliance.kaldi.get_mel_banks`` in float64 to
    ~1e-13; the Nyquist column, which Kaldi leaves out, is zero in both).
    """
    with warnings.catch_warnings():
        # At 128 bins and a 512-point FFT the lowest Kaldi filter falls between two FFT bins and is empty;
        # transformers warns about that, but it is what Kaldi, torchaudio and the checkpoints have.
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        banks = mel_filter_bank(
            num_frequency_bins=spec.num_spectrum_bins,
            num_mel_filters=spec.num_mel_bins,
            min_frequency=spec.low_freq,
            max_frequency=spec.high_freq,
            sampling_rate=spec.sample_rate,
            norm=None,
            mel_scale="kaldi",
            triangularize_in_mel_space=True,
        )
    return torch.from_numpy(banks.T)


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


def num_frames(num_samples: int, win_length: int, hop_length: int, snip_edges: bool = True) -> int:
    """Frames Kaldi produces for ``num_samples`` samples.

    With ``snip_edges=True`` only frames that fit entirely inside the clip; with ``snip_edges=False`` one
    frame per hop, centred on it (rounded), the clip being mirrored at its ends -- 100 frames per second of
    audio at a 10 ms hop, the geometry lhotse and icefall rely on.
    """
    if snip_edges:
        return 0 if num_samples < win_length else 1 + (num_samples - win_length) // hop_length
    return (num_samples + hop_length // 2) // hop_length


def _edge_padding(win_length: int, hop_length: int) -> int:
    """Samples Kaldi mirrors before a clip with ``snip_edges=False`` (negative: samples it skips)."""
    # Kaldi's FirstSampleOfFrame: frame t starts at t * hop + hop // 2 - win // 2.
    return win_length // 2 - hop_length // 2


def _kaldi_edge_pad(waveforms: torch.Tensor, lengths: torch.Tensor | None, spec: _FbankSpec) -> torch.Tensor:
    """The clips mirrored at their own ends, so that ``snip_edges=True`` framing of the result gives Kaldi's
    ``snip_edges=False`` frames of each clip (symmetric reflection, as torchaudio and lhotse do it)."""
    win, hop = spec.win_length, spec.hop_length
    frames = num_frames(waveforms.shape[1], win, hop, snip_edges=False)
    left = _edge_padding(win, hop)
    # The last frame of a clip of L samples is number (L + hop // 2) // hop - 1, which ends at most
    # win - left + hop // 2 - hop samples past the clip.
    tail = max(0, win - left + hop // 2 - hop)
    return reflect_pad(waveforms, lengths, left, (frames - 1) * hop + win, tail, include_edge=True)


# ----------------------------------------------------------------------------------------------------
# The batched fbank
# ----------------------------------------------------------------------------------------------------


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
    snip_edges: bool = True,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kaldi-compatible log-mel filterbank of a batch of clips.

    Equal, clip by clip, to ``torchaudio.compliance.kaldi.fbank(wave[None], htk_compat=True, use_energy=False,
    ...)`` with the same settings, but computed for the whole batch at once on the waveforms' device, in
    float32 whatever the input dtype or autocast state. With ``snip_edges=True`` (Kaldi's default, AST's) the
    frames are those that fit entirely inside the clip, ``1 + (S - win) // hop`` of them; with ``False``
    (lhotse's and icefall's) there are ``(S + hop // 2) // hop``, the clip being mirrored at both ends. The
    time-domain steps and the FFT reproduce torchaudio's arithmetic; the mel bank is computed in float64,
    which moves a few log-mel values by ~1e-4 relative to torchaudio's float32 bank.

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
        snip_edges: frame geometry, see above. Every clip must hold at least one full frame either way.
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
    device = x.device
    constants = _analysis_constants(spec, str(device))
    budget = _CPU_BLOCK_FRAMES if device.type == "cpu" else _ACCELERATOR_BLOCK_FRAMES
    with torch.no_grad(), float32_region(device):
        x = x.to(torch.float32)
        if not snip_edges:  # the mirrored clip framed with snip_edges=True gives Kaldi's edge frames
            x = _kaldi_edge_pad(x, None, spec)
        total_frames = num_frames(x.shape[1], spec.win_length, spec.hop_length)
        out = torch.empty(batch, total_frames, spec.num_mel_bins, device=device, dtype=torch.float32)
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
# The feature extractors
# ----------------------------------------------------------------------------------------------------


class AudioFbankFeatureExtractor(BaseAudioFeatureExtractor):
    r"""Kaldi log-mel filterbank features for AST-style audio models (AST, EAT, CAT, AudioMAE, BAT, BEATs).

    Computes :func:`kaldi_fbank` on the batch, crops or pads it to ``target_length`` frames, and normalises it
    as ``(x - mean) / (std_scale * std)``. Padding follows transformers' ``ASTFeatureExtractor`` exactly: the
    *raw* log-mel is padded with ``padding_value`` (0.0) and then normalised together with the real frames, so
    padded frames hold ``(padding_value - mean) / (std_scale * std)`` (0.467 with the AudioSet statistics) and
    checkpoints trained on AST features see the inputs they were trained on. The attention mask (1 on real
    frames) is what tells the model which frames are padding. Input handling is the family's, see
    :class:`BaseAudioFeatureExtractor`.

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
        frame_length_ms, frame_shift_ms, preemphasis, remove_dc_offset, low_freq, high_freq, dither,
        snip_edges: Kaldi fbank options, see :func:`kaldi_fbank`. With ``snip_edges=False`` each clip of a
            padded batch is mirrored at its own end, so its frames do not depend on the batch it is in.
    """

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
        snip_edges: bool = True,
        **kwargs,
    ):
        # `feature_size` comes back from preprocessor_config.json; it is derived, so only check it agrees.
        feature_size = kwargs.pop("feature_size", num_mel_bins)
        super().__init__(
            feature_size=num_mel_bins,
            sampling_rate=sampling_rate,
            target_length=target_length,
            padding_value=padding_value,
            return_attention_mask=return_attention_mask,
            waveform_scale=waveform_scale,
            **kwargs,
        )
        if not is_finite_number(mean):
            raise ValueError(f"`mean` must be a finite number, got {mean!r}.")
        for name, value in (("std", std), ("std_scale", std_scale)):
            if not is_finite_number(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
        # Validates every fbank field, raising a ValueError that names it.
        framing = (frame_length_ms, frame_shift_ms, window_type, preemphasis, dither)
        _fbank_spec(sampling_rate, num_mel_bins, *framing, low_freq, high_freq)
        if feature_size != num_mel_bins:
            raise ValueError(f"`feature_size` ({feature_size}) must equal `num_mel_bins` ({num_mel_bins}).")
        # Plain Python scalars only, so that to_dict() is JSON-serialisable whatever was passed in.
        self.feature_size = self.num_mel_bins = int(num_mel_bins)
        self.mean = float(mean)
        self.std = float(std)
        self.std_scale = float(std_scale)
        self.do_normalize = bool(do_normalize)
        self.window_type = str(window_type)
        self.frame_length_ms = float(frame_length_ms)
        self.frame_shift_ms = float(frame_shift_ms)
        self.preemphasis = float(preemphasis)
        self.remove_dc_offset = bool(remove_dc_offset)
        self.low_freq = float(low_freq)
        self.high_freq = float(high_freq)
        self.dither = float(dither)
        self.snip_edges = bool(snip_edges)

    def frame_times(self, num_frames: int) -> np.ndarray:
        shift = self.frame_shift_ms / 1000.0
        # Kaldi: with snip_edges frame i spans [i * shift, i * shift + length); without, it is shifted back
        # by (length - shift) / 2, which puts its centre at i * shift + shift / 2.
        offset = self.frame_length_ms / 2000.0 if self.snip_edges else shift / 2.0
        return np.arange(num_frames) * shift + offset

    @property
    def _fbank_settings(self) -> dict[str, Any]:
        """The fields that are :func:`kaldi_fbank`'s settings, by its argument names (``_fbank_spec``'s)."""
        return {
            "sample_rate": self.sampling_rate,
            "num_mel_bins": self.num_mel_bins,
            "frame_length_ms": self.frame_length_ms,
            "frame_shift_ms": self.frame_shift_ms,
            "window_type": self.window_type,
            "preemphasis": self.preemphasis,
            "dither": self.dither,
            "low_freq": self.low_freq,
            "high_freq": self.high_freq,
        }

    @property
    def _spec(self) -> _FbankSpec:
        # Derived on demand rather than stored, so it can never disagree with fields edited after __init__.
        return _fbank_spec(**self._fbank_settings)

    # -- geometry ----------------------------------------------------------------------------------------

    @property
    def win_length(self) -> int:
        """Samples per analysis frame (400 at 16 kHz, 25 ms)."""
        return self._spec.win_length

    @property
    def hop_length(self) -> int:
        """Samples between frame starts (160 at 16 kHz, 10 ms)."""
        return self._spec.hop_length

    @property
    def min_samples(self) -> int:
        return self.win_length

    def _min_samples_reason(self) -> str:
        return f"one {self.frame_length_ms:g} ms frame at {self.sampling_rate} Hz"

    def num_frames(self, num_samples: int) -> int:
        """Frames the fbank yields for a clip of ``num_samples`` samples, before cropping or padding."""
        return num_frames(num_samples, self.win_length, self.hop_length, self.snip_edges)

    def _frames_of(self, lengths: torch.Tensor) -> torch.Tensor:
        win, hop = self.win_length, self.hop_length
        frames = (lengths - win) // hop + 1 if self.snip_edges else (lengths + hop // 2) // hop
        return torch.where(lengths >= win, frames, 0)

    def _samples_for_frames(self, frames: int) -> int:
        win, hop = self.win_length, self.hop_length
        if self.snip_edges:
            return (frames - 1) * hop + win
        # Up to the end of the last frame kept, so that none of the kept frames reads a mirrored sample;
        # the clip then yields a frame or two more than `frames`, which `_features` drops.
        return (frames - 1) * hop + win - _edge_padding(win, hop)

    # -- the spectrogram ---------------------------------------------------------------------------------

    def _spectrogram(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        if not self.snip_edges:
            # Mirrored here, at each clip's own end, rather than inside kaldi_fbank at the batch's end.
            waveforms = _kaldi_edge_pad(waveforms, lengths, self._spec)
        return kaldi_fbank(
            waveforms, **self._fbank_settings, remove_dc_offset=self.remove_dc_offset, generator=generator
        )

    def _normalize_(self, features: torch.Tensor) -> None:
        if self.do_normalize:
            features.sub_(self.mean).div_(self.std_scale * self.std)


# lhotse's LOG_EPSILON = log(1e-10): the value lhotse's collate_features (and so icefall's and Auden's data
# loaders) gives padded fbank frames. Zipformer masks them, but its Conv2dSubsampling still sees them.
LHOTSE_LOG_EPSILON = math.log(1e-10)


class ZipformerFbankFeatureExtractor(AudioFbankFeatureExtractor):
    r"""80-bin Kaldi fbank at 100 frames/s, raw and variable-length: the input of icefall/Auden Zipformers.

    The defaults are lhotse's ``FbankConfig`` (which icefall's and Auden's recipes compute on the fly, with
    kaldifeat as the alternative): 16 kHz, 25 ms povey window, 10 ms hop, ``snip_edges=False`` (one frame per
    10 ms: ``(S + 80) // 160`` frames), pre-emphasis 0.97, DC removal, no dither, 80 mel bins from 20 Hz to
    Nyquist - 400 Hz, log floor at the float32 epsilon, waveform in [-1, 1] [lhotse
    ``lhotse/features/kaldi/extractors.py``; the Auden settings (dither 0, snip_edges False, high_freq -400)
    per shared/reference/architectures.md section 1]. Equal, clip by clip, to
    ``torchaudio.compliance.kaldi.fbank(num_mel_bins=80, window_type="povey", snip_edges=False,
    high_freq=-400, dither=0)``.

    No normalisation (icefall and Auden feed the raw log-mel to the encoder) and no ``target_length``: a
    batch is padded to its longest clip with ``padding_value`` (lhotse's ``log(1e-10)``), and
    ``attention_mask`` marks each clip's frames (``attention_mask.sum(-1)`` is icefall's ``x_lens``). Every
    field of :class:`AudioFbankFeatureExtractor` can still be overridden.
    """

    def __init__(
        self,
        sampling_rate: int = 16000,
        num_mel_bins: int = 80,
        target_length: int | None = None,
        do_normalize: bool = False,
        window_type: str = "povey",
        padding_value: float = LHOTSE_LOG_EPSILON,
        high_freq: float = -400.0,
        snip_edges: bool = False,
        **kwargs,
    ):
        super().__init__(
            sampling_rate=sampling_rate,
            num_mel_bins=num_mel_bins,
            target_length=target_length,
            do_normalize=do_normalize,
            window_type=window_type,
            padding_value=padding_value,
            high_freq=high_freq,
            snip_edges=snip_edges,
            **kwargs,
        )
