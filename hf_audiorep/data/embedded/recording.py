"""How a clip was recorded: the room, the distance to the microphone, the recording chain and the level.

The event ontology names what sounds; these name how it was captured, the attributes that captions
describe and the corpus's attribute columns hold (``room``, ``distance``, ``quality``, ``loudness``).
Each is rendered so that it is audible in the waveform, cheaply (one FFT convolution per clip):

- room: the events are convolved with an exponentially decaying noise impulse response (the classic
  statistical model of late reverberation) whose RT60 sets the room: ``dry`` (< 0.12 s), ``small
  room`` (0.3-0.6 s) or ``large hall`` (1.4-2.4 s);
- distance: a ``far`` source reaches the microphone with a low direct-to-reverberant ratio, its high
  frequencies absorbed by the air, and (in the corpus) at a lower level against the background;
- quality: ``clean``, ``noisy`` (broadband hiss), ``telephone`` (band-limited to 300-3400 Hz) or
  ``clipped`` (hard clipping at 1.3-2.2 times the RMS: an overdriven input);
- loudness: the finished clip's RMS level, ``quiet`` (-42 to -35 dBFS), ``moderate`` (-30 to -25)
  or ``loud`` (-20 to -16), with the peak kept below -0.5 dBFS.

The ``*_params`` functions draw a class's parameters; the render functions take explicit parameters,
so they can be tested (and used) on any signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .synth import _fast_length, _freqs, _lowpass, _samples

__all__ = [
    "LEVELS_DBFS",
    "QUALITIES",
    "ROOMS",
    "DISTANCES",
    "RoomParams",
    "band_limit",
    "degrade",
    "draw_room",
    "hard_clip",
    "add_hiss",
    "place_in_room",
    "room_impulse_response",
    "set_level",
]

ROOMS = {"dry": (0.05, 0.12), "small room": (0.3, 0.6), "large hall": (1.4, 2.4)}
"""RT60 range (s) of each room class."""
DISTANCES = {"near": (2.0, 8.0), "far": (-8.0, -2.0)}
"""Direct-to-reverberant ratio range (dB) of each distance class."""
# A far source loses its highs to the air (and to whatever is in the way): a gentle low-pass.
_AIR_CUTOFF_HZ = (2500.0, 5000.0)
LEVELS_DBFS = {"quiet": (-42.0, -35.0), "moderate": (-30.0, -25.0), "loud": (-20.0, -16.0)}
"""RMS level range (dBFS) of each loudness class."""
PEAK_LIMIT_DBFS = -0.5
QUALITIES = ("clean", "noisy", "telephone", "clipped")
_HISS_SNR_DB = (3.0, 12.0)
_CLIP_CREST = (1.3, 2.2)
TELEPHONE_BAND_HZ = (300.0, 3400.0)
# Width of the raised-cosine transitions at the telephone band's edges.
_TELEPHONE_SKIRT_HZ = (100.0, 400.0)


@dataclass(frozen=True)
class RoomParams:
    """A drawn room and source distance: the reverberation time, the direct-to-reverberant ratio,
    the air-absorption cut-off (``None``: none) and the pre-delay of the first reflections."""

    rt60_s: float
    drr_db: float
    air_cutoff_hz: float | None
    predelay_s: float


def draw_room(room: str, distance: str, rng: np.random.Generator) -> RoomParams:
    rt60 = float(rng.uniform(*ROOMS[room]))
    drr = float(rng.uniform(*DISTANCES[distance]))
    cutoff = float(rng.uniform(*_AIR_CUTOFF_HZ)) if distance == "far" else None
    # Bigger rooms put their first reflections later.
    predelay = float(rng.uniform(0.002, 0.005) + 0.01 * rt60)
    return RoomParams(rt60, drr, cutoff, predelay)


def room_impulse_response(
    rt60_s: float, drr_db: float, sample_rate: int, rng: np.random.Generator, predelay_s: float = 0.005
) -> np.ndarray:
    """A unit-energy impulse response: the direct sound, then Gaussian noise decaying by 60 dB in
    ``rt60_s`` after ``predelay_s``, at ``drr_db`` below it (energy ratio of direct to the rest).

    The tail is cut where it has decayed by 40 dB (two thirds of the RT60): below the direct sound and
    the background by then, and a third less convolution. Unit energy keeps the power of a broadband
    signal, so a source's level against the background is set by its gain, not by the room."""
    start = _samples(predelay_s, sample_rate)
    length = _samples(rt60_s * 40 / 60, sample_rate)
    t = np.arange(length, dtype=np.float32) / np.float32(sample_rate)
    tail = rng.standard_normal(length, dtype=np.float32) * np.exp(np.float32(-6.9078 / rt60_s) * t)
    ramp = min(length, _samples(0.005, sample_rate))  # the reflections build up over a few ms
    tail[:ramp] *= np.linspace(0.0, 1.0, ramp, dtype=np.float32)
    ratio = 10 ** (drr_db / 10)
    ir = np.zeros(start + length, dtype=np.float32)
    ir[0] = np.sqrt(ratio / (1 + ratio))
    ir[start:] = tail * np.float32(np.sqrt(1 / (1 + ratio) / float(np.sum(tail * tail))))
    return ir


def _convolve(x: np.ndarray, h: np.ndarray, gain=None, sample_rate: int = 16000) -> np.ndarray:
    """Linear convolution of ``x`` and ``h`` (the first ``x.size + h.size - 1`` samples), with an
    optional zero-phase magnitude response ``gain(freqs)`` applied on the way.

    A response much shorter than the signal (a dry or small room) is applied by overlap-add over
    blocks of about four times its length, in one batched FFT: a fraction of the cost of one FFT
    over the whole clip, which a hall's long response gets."""
    full = x.size + h.size - 1
    single = _fast_length(full)
    block = _fast_length(4 * h.size)
    if block >= single // 2:
        spectrum = np.fft.rfft(x, single) * np.fft.rfft(h, single)
        if gain is not None:
            spectrum *= gain(_freqs(single, sample_rate))
        return np.fft.irfft(spectrum, single)[:full].astype(np.float32)
    hop = block - h.size + 1  # >= the tail each block leaves to the next: only neighbours overlap
    count = -(-x.size // hop)
    blocks = np.zeros((count, block), dtype=np.float32)
    blocks[:, :hop] = np.pad(x, (0, count * hop - x.size)).reshape(count, hop)
    response = np.fft.rfft(h, block)
    if gain is not None:
        response = response * gain(_freqs(block, sample_rate))
    y = np.fft.irfft(np.fft.rfft(blocks, axis=1) * response, block, axis=1).astype(np.float32)
    out = np.zeros(count * hop + block - hop, dtype=np.float32)
    body = out[: count * hop].reshape(count, hop)
    body += y[:, :hop]
    tails = y[:, hop:]
    body[1:, : tails.shape[1]] += tails[:-1]
    out[count * hop :] += tails[-1]
    return out[:full]


def place_in_room(
    x: np.ndarray, params: RoomParams, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """``x`` as heard at the microphone: convolved with the room's response (and low-passed by the
    air for a far source), cropped to ``x``'s length (the tail past it is cut off)."""
    ir = room_impulse_response(params.rt60_s, params.drr_db, sample_rate, rng, params.predelay_s)
    out = np.zeros_like(x, dtype=np.float32)
    active = np.flatnonzero(x)
    if not active.size:
        return out
    # Only the span where something sounds (events rarely fill a clip): less to convolve.
    first, last = int(active[0]), int(active[-1]) + 1
    stop = min(x.size, last + ir.size - 1)
    cutoff = params.air_cutoff_hz
    gain = None if cutoff is None else (lambda f: _lowpass(f, cutoff, 1))
    out[first:stop] = _convolve(x[first:last], ir, gain, sample_rate)[: stop - first]
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def add_hiss(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Adds white noise ``snr_db`` below ``x``'s RMS: the hiss of a cheap or over-amplified chain."""
    # Uniform white noise (unit variance): as white as Gaussian to the ear, and cheaper to draw.
    noise = rng.random(x.size, dtype=np.float32) - np.float32(0.5)
    return (x + noise * np.float32(np.sqrt(12) * _rms(x) * 10 ** (-snr_db / 20))).astype(np.float32)


def band_limit(
    x: np.ndarray,
    sample_rate: int,
    low_hz: float = TELEPHONE_BAND_HZ[0],
    high_hz: float = TELEPHONE_BAND_HZ[1],
) -> np.ndarray:
    """Zero-phase band-pass to ``[low_hz, high_hz]`` with raised-cosine skirts, silent below
    ``low_hz - 100`` Hz and above ``high_hz + 400`` Hz: a telephone line."""
    size = _fast_length(x.size)
    freqs = _freqs(size, sample_rate)
    below, above = _TELEPHONE_SKIRT_HZ
    rise = np.clip((freqs - (low_hz - below)) / below, 0.0, 1.0)
    fall = np.clip((high_hz + above - freqs) / above, 0.0, 1.0)
    gain = np.sin(0.5 * np.pi * rise) ** 2 * np.sin(0.5 * np.pi * fall) ** 2
    return np.fft.irfft(np.fft.rfft(x, size) * gain, size)[: x.size].astype(np.float32)


def hard_clip(x: np.ndarray, crest: float) -> np.ndarray:
    """Clips ``x`` at ``crest`` times its RMS: flat-topped waveforms, the harmonics of distortion."""
    limit = np.float32(crest * _rms(x))
    return np.clip(x, -limit, limit) if limit > 0 else x


def degrade(x: np.ndarray, quality: str, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """``x`` through a recording chain of the given quality class (:data:`QUALITIES`)."""
    if quality == "clean":
        return x
    if quality == "noisy":
        return add_hiss(x, float(rng.uniform(*_HISS_SNR_DB)), rng)
    if quality == "telephone":
        return band_limit(x, sample_rate)
    if quality == "clipped":
        return hard_clip(x, float(rng.uniform(*_CLIP_CREST)))
    raise ValueError(f"unknown recording quality {quality!r}; known: {QUALITIES}")


def set_level(x: np.ndarray, rms_dbfs: float, peak_dbfs: float = PEAK_LIMIT_DBFS) -> np.ndarray:
    """Scales ``x`` to an RMS of ``rms_dbfs``, or less where its peak would pass ``peak_dbfs``."""
    rms, peak = _rms(x), float(np.max(np.abs(x))) if x.size else 0.0
    if rms == 0:
        return x
    gain = min(10 ** (rms_dbfs / 20) / rms, 10 ** (peak_dbfs / 20) / peak)
    return (x * np.float32(gain)).astype(np.float32)
