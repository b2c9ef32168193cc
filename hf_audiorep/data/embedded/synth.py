"""Procedural synthesis of sound events and scene backgrounds, in vectorised numpy.

Every sound class of the embedded corpus is a *recipe*: a function that draws its own parameters
(pitch, timbre, envelope, duration, repetition count, modulation rates) from a
``numpy.random.Generator`` and renders a waveform. Two calls never give the same template, so a
model has to learn the class, not memorise a sample.

The recipes are built from a handful of primitives:

- wavetable oscillators (one period of a harmonic spectrum read at a time-varying phase), so that
  a tone with forty harmonics costs two array lookups per sample instead of forty sines;
- noise shaped in the frequency domain (one inverse FFT), for textures and backgrounds;
- a short-time (STFT) filter whose gain may change every hop, for moving formants and gusts;
- envelopes and sparse impulse trains, for everything percussive.

Speech-like and musical recipes also take a *style* (:class:`SpeechStyle`: pitch register,
speaking rate, number of voices; :class:`MusicStyle`: tempo, mode, rhythm), the attributes the
corpus's captions and attribute columns describe; without one they draw a random style.

Only numpy is used; nothing loops over samples in Python (loops over a handful of notes or
strikes are fine).
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "RECIPES",
    "SPEAKING_RATES",
    "STYLED_RECIPES",
    "TEMPI",
    "BackgroundParams",
    "MusicStyle",
    "SpeechStyle",
    "SynthesizedEvent",
    "render_background",
    "synthesize",
]

# Large enough that a nearest-sample lookup is as clean as interpolation (error < -60 dB).
_TABLE_SIZE = 16384
# Partials are kept below this fraction of the sample rate so that no recipe aliases.
_BAND_EDGE = 0.45


@dataclass(frozen=True)
class SynthesizedEvent:
    """One rendered event: a mono float32 waveform peaking at 1, and how many units it holds
    (barks, knocks, notes, ...), which captions use to say "twice" or "three times"."""

    waveform: np.ndarray
    units: int = 1


# --------------------------------------------------------------------------------------------
# primitives
# --------------------------------------------------------------------------------------------


def _samples(seconds: float, sample_rate: int) -> int:
    return max(1, int(round(seconds * sample_rate)))


def _time(n: int, sample_rate: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32) / np.float32(sample_rate)


def _duration(rng: np.random.Generator, low: float, high: float, max_seconds: float) -> float:
    return float(min(rng.uniform(low, high), max_seconds))


def _log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def _nyquist_guard(freq, sample_rate: int):
    return np.minimum(freq, _BAND_EDGE * sample_rate)


def _normalize(x: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return (x / peak).astype(np.float32) if peak > 0 else x.astype(np.float32)


def _phase(frequency_hz, sample_rate: int) -> np.ndarray:
    """Running phase in cycles, wrapped to [0, 1); accumulated in float64 so that long tones keep
    their pitch exactly."""
    phase = np.cumsum(np.asarray(frequency_hz, dtype=np.float64))
    phase *= 1.0 / sample_rate
    phase -= np.floor(phase)
    return phase


def _harmonic_table(amplitudes, rng: np.random.Generator | None = None) -> np.ndarray:
    """One period of a harmonic waveform (amplitude of harmonic k+1 is ``amplitudes[k]``). Random
    partial phases (when ``rng`` is given) avoid the spiky waveform of all-cosine phases."""
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    spectrum = np.zeros(_TABLE_SIZE // 2 + 1, dtype=np.complex128)
    phases = rng.uniform(0, 2 * np.pi, amplitudes.size) if rng is not None else np.zeros(amplitudes.size)
    spectrum[1 : amplitudes.size + 1] = amplitudes * np.exp(1j * phases)
    return (np.fft.irfft(spectrum, _TABLE_SIZE) * (_TABLE_SIZE / 2)).astype(np.float32)


def _read_table(table: np.ndarray, phase: np.ndarray) -> np.ndarray:
    return table[(phase * _TABLE_SIZE).astype(np.int32)]


def _band_limited(amplitudes, f0_max: float, sample_rate: int) -> np.ndarray:
    """Drops the harmonics that would pass the band edge at the highest pitch the tone reaches."""
    amplitudes = np.asarray(amplitudes, dtype=np.float64)
    keep = max(1, int(_BAND_EDGE * sample_rate // max(f0_max, 1.0)))
    return amplitudes[:keep]


def _harmonic_tone(f0, amplitudes, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    f0 = np.asarray(f0, dtype=np.float64)
    table = _harmonic_table(_band_limited(amplitudes, float(f0.max()), sample_rate), rng)
    return _read_table(table, _phase(f0, sample_rate))


def _spectral_tilt(n_harmonics: int, exponent: float) -> np.ndarray:
    return np.arange(1, n_harmonics + 1, dtype=np.float64) ** -exponent


def _decay(n: int, sample_rate: int, tau: float) -> np.ndarray:
    """``exp(-t / tau)`` on the sample grid, as the outer product of a coarse (every 64 samples) and
    a fine (within 64 samples) exponential: exact, and far cheaper than an ``exp`` per sample."""
    block = 64
    rate = 1.0 / (max(tau, 1e-5) * sample_rate)
    coarse = np.exp(-rate * block * np.arange(-(-n // block))).astype(np.float32)
    fine = np.exp(-rate * np.arange(block)).astype(np.float32)
    return (coarse[:, None] * fine[None, :]).reshape(-1)[:n]


def _decaying_partials(freqs, amps, decays_s, n: int, sample_rate: int, rng: np.random.Generator):
    """Sum of exponentially decaying sinusoids (modal synthesis: bells, glass, wood)."""
    omega_t = 2 * np.pi * _time(n, sample_rate)
    out = np.zeros(n, dtype=np.float32)
    for freq, amp, tau in zip(freqs, amps, decays_s, strict=True):
        if freq < _BAND_EDGE * sample_rate:
            phase = np.float32(rng.uniform(0, 2 * np.pi))
            mode = np.sin(np.float32(freq) * omega_t + phase)
            out += np.float32(amp) * mode * _decay(n, sample_rate, float(tau))
    return out


@functools.lru_cache(maxsize=4096)
def _fast_length(n: int) -> int:
    """Smallest 5-smooth length >= n. Event durations are random, and an FFT of a length with a
    large prime factor is an order of magnitude slower than one of a nearby 2^a 3^b 5^c."""
    best = 1 << max(n - 1, 0).bit_length()
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 * (1 << max(0, (-(-n // power35) - 1).bit_length()))
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _random_spectrum(n: int, rng: np.random.Generator) -> np.ndarray:
    # Uniform real/imaginary parts are 4x cheaper to draw than Gaussians, and after the inverse FFT
    # every time sample is a sum over thousands of bins, hence Gaussian anyway.
    # complex64 end to end: numpy's single-precision FFT is about twice as fast.
    values = rng.random(2 * (n // 2 + 1), dtype=np.float32)
    values -= np.float32(0.5)
    return values.view(np.complex64)


@functools.lru_cache(maxsize=64)
def _freqs(n: int, sample_rate: int) -> np.ndarray:
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate).astype(np.float32)
    freqs.flags.writeable = False  # shared between calls
    return freqs


def _lowpass(freqs, cutoff, order: int = 2):
    return 1.0 / np.sqrt(1.0 + (freqs / cutoff) ** (2 * order))


def _highpass(freqs, cutoff, order: int = 2):
    ratio = cutoff / np.maximum(freqs, 1e-3)
    return 1.0 / np.sqrt(1.0 + ratio ** (2 * order))


def _resonance(freqs, centre, bandwidth):
    """Lorentzian peak: a cheap stand-in for a second-order resonator's magnitude response."""
    return 1.0 / (1.0 + ((freqs - centre) / (0.5 * bandwidth)) ** 2)


def _tilt(freqs, slope_db_per_octave: float):
    return (np.maximum(freqs, 20.0) / 1000.0) ** (slope_db_per_octave / 6.0206)


def _shaped_noise(n: int, sample_rate: int, rng: np.random.Generator, gain: Callable) -> np.ndarray:
    """Gaussian-like noise with magnitude response ``gain(freqs)``, unit RMS."""
    size = _fast_length(n)  # stationary noise: render a fast length and crop
    spectrum = _random_spectrum(size, rng) * gain(_freqs(size, sample_rate))
    x = np.fft.irfft(spectrum, size)[:n].astype(np.float32)
    rms = float(np.sqrt(np.mean(x * x))) if n else 0.0
    return x / rms if rms > 0 else x


def _filter(x: np.ndarray, sample_rate: int, gain: Callable) -> np.ndarray:
    """Zero-phase static filter in the frequency domain (zero padding to a fast FFT length also
    keeps most of the circular wrap-around out of the result)."""
    size = _fast_length(x.size)
    spectrum = np.fft.rfft(x, size) * gain(_freqs(size, sample_rate))
    return np.fft.irfft(spectrum, size)[: x.size].astype(np.float32)


def _hop(sample_rate: int) -> int:
    # ~8 ms hops: fast enough for formant transitions, coarse enough to stay cheap.
    return int(2 ** round(np.log2(sample_rate / 125)))


def _time_varying_filter(x: np.ndarray, sample_rate: int, gain: Callable) -> np.ndarray:
    """Short-time filter: ``gain(frame_times (F, 1), freqs (B,)) -> (F, B)`` magnitude per hop.

    Frames of ``2 * hop`` samples with a square-root periodic Hann window for analysis and
    synthesis overlap-add to unity at 50 % overlap, so a constant gain returns the input.
    """
    hop = _hop(sample_rate)
    n = x.size
    n_blocks = -(-n // hop) + 2
    padded = np.zeros(n_blocks * hop, dtype=np.float32)
    padded[hop : hop + n] = x
    blocks = padded.reshape(n_blocks, hop)
    window = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2 * hop) / (2 * hop))).astype(np.float32)
    frames = np.concatenate([blocks[:-1], blocks[1:]], axis=1) * window
    frame_times = ((np.arange(n_blocks - 1) * hop) / sample_rate).astype(np.float32)[:, None]
    spectrum = np.fft.rfft(frames, axis=1) * gain(frame_times, _freqs(2 * hop, sample_rate))
    out_frames = (np.fft.irfft(spectrum, 2 * hop, axis=1) * window).astype(np.float32)
    out = np.zeros_like(blocks)
    out[:-1] += out_frames[:, :hop]
    out[1:] += out_frames[:, hop:]
    return out.reshape(-1)[hop : hop + n]


def _frame_curve(curve: np.ndarray, frame_times: np.ndarray, sample_rate: int) -> np.ndarray:
    """Samples a per-sample control curve at STFT frame times, as a (F, 1) column."""
    index = np.clip((frame_times[:, 0] * sample_rate).astype(np.int64), 0, curve.size - 1)
    return curve[index][:, None]


def _adsr(n: int, sample_rate: int, attack: float, decay: float, sustain: float, release: float):
    """Piecewise-linear attack-decay-sustain-release envelope, squeezed to fit short events."""
    duration = n / sample_rate
    attack = min(attack, 0.4 * duration)
    release = min(release, 0.5 * duration)
    decay = min(decay, max(duration - attack - release, 0.0))
    points = [0.0, attack, attack + decay, max(duration - release, attack + decay), duration]
    return np.interp(_time(n, sample_rate), points, [0.0, 1.0, sustain, sustain, 0.0]).astype(np.float32)


def _exp_decay(n: int, sample_rate: int, tau: float, attack: float = 0.002) -> np.ndarray:
    t = _time(n, sample_rate)
    return np.minimum(t / max(attack, 1e-4), 1.0) * _decay(n, sample_rate, tau)


def _smooth_random(n: int, sample_rate: int, rng: np.random.Generator, rate_hz: float, low=0.0, high=1.0):
    """A random curve that changes about ``rate_hz`` times a second (smoothstep between knots).

    It is computed at a ~500 Hz control rate and held in between: every use (amplitude, pitch,
    filter centre) is far slower than that, and it saves most of the cost on long textures."""
    step = max(1, sample_rate // 500)
    m = -(-n // step)
    knots = rng.uniform(low, high, int(m * step / sample_rate * rate_hz) + 2)
    position = np.arange(m) * (step * rate_hz / sample_rate)
    index = position.astype(np.int64)
    frac = position - index
    frac = frac * frac * (3 - 2 * frac)
    curve = (knots[index] * (1 - frac) + knots[index + 1] * frac).astype(np.float32)
    return np.repeat(curve, step)[:n]


def _glide(n: int, sample_rate: int, times, values) -> np.ndarray:
    """Interpolates a contour through (time, value) breakpoints, e.g. an f0 track."""
    return np.interp(_time(n, sample_rate), times, values).astype(np.float32)


def _overlay(out: np.ndarray, x: np.ndarray, start: int, gain: float = 1.0) -> None:
    end = min(out.size, start + x.size)
    if start < end:
        out[start:end] += gain * x[: end - start]


def _onsets(rng: np.random.Generator, count: int, interval: tuple[float, float], jitter: float = 0.0):
    """Onset times (s) of ``count`` repetitions with a drawn base interval and a little timing jitter."""
    base = rng.uniform(*interval)
    gaps = base * (1 + jitter * rng.uniform(-1, 1, max(count - 1, 0)))
    return np.concatenate([[0.0], np.cumsum(gaps)])


def _fit_units(onsets: np.ndarray, unit_seconds: float, max_seconds: float) -> np.ndarray:
    """Keeps the repetitions that still fit in ``max_seconds`` (at least one)."""
    keep = onsets + unit_seconds <= max_seconds
    keep[0] = True
    return onsets[keep]


def _sparse_impulses(n: int, sample_rate: int, rng: np.random.Generator, rate_hz: float, shape: float):
    """Poisson impulses with Pareto (heavy-tailed) amplitudes: a few loud drops or crackles among
    many faint ones is what makes rain and fire sound like rain and fire."""
    count = rng.poisson(rate_hz * n / sample_rate)
    index = rng.integers(0, n, count)
    amplitude = (rng.pareto(shape, count) + 1.0) * rng.choice([-1.0, 1.0], count)
    return np.bincount(index, weights=amplitude, minlength=n).astype(np.float32)


def _repeat(unit: np.ndarray, onsets_s, n: int, sample_rate: int, rng: np.random.Generator, spread=0.3):
    out = np.zeros(n, dtype=np.float32)
    for onset in onsets_s:
        _overlay(out, unit, int(onset * sample_rate), float(1 + spread * rng.uniform(-1, 1)))
    return out


def _noise_burst(
    n: int, sample_rate: int, rng: np.random.Generator, gain: Callable, tau: float, attack: float = 0.001
) -> np.ndarray:
    return _shaped_noise(n, sample_rate, rng, gain) * _exp_decay(n, sample_rate, tau, attack)


# --------------------------------------------------------------------------------------------
# speech-like source-filter model, shared by voices, laughter and singing
# --------------------------------------------------------------------------------------------


def _read_vowels(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or tuple(rows[0]) != ("vowel", "f1_hz", "f2_hz", "f3_hz"):
        raise ValueError(f"{path.name} must have the columns vowel,f1_hz,f2_hz,f3_hz")
    formants = [[float(r[f"f{k}_hz"]) for k in (1, 2, 3)] for r in rows]
    return tuple(r["vowel"] for r in rows), np.array(formants, dtype=np.float32)


# (F1, F2, F3) of a few vowels for an adult male vocal tract (Peterson & Barney style averages), in
# ``vowels.csv``; other speakers scale them by the inverse of their vocal-tract length. Voices draw
# vowels by row, so the row order is part of the corpus.
_VOWEL_NAMES, _VOWELS = _read_vowels(Path(__file__).with_name("vowels.csv"))


def _vowel_rows(*names: str) -> list[int]:
    return [_VOWEL_NAMES.index(name) for name in names]


# Bandwidths and relative levels of F1-F3, for every vowel.
_FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0], dtype=np.float32)
_FORMANT_LEVELS = np.array([1.0, 0.6, 0.3], dtype=np.float32)


def _formant_filter(source, sample_rate, formant_times, formants, scale, bandwidth_scale=1.0):
    """Filters ``source`` through three resonances whose centres follow ``formants`` (K, 3),
    given at ``formant_times`` (K,) seconds and linearly interpolated in between."""
    formants = np.asarray(formants, dtype=np.float32) * scale
    bandwidths = (_FORMANT_BANDWIDTHS * scale * bandwidth_scale)[None, :, None]
    levels = _FORMANT_LEVELS[None, :, None]

    def gain(frame_times, freqs):
        times = frame_times[:, 0]
        centres = np.stack([np.interp(times, formant_times, formants[:, i]) for i in range(3)], axis=1)
        centres = _nyquist_guard(centres, sample_rate)[:, :, None]  # (F, 3, 1)
        return (levels * _resonance(freqs[None, None, :], centres, bandwidths)).sum(axis=1) + 0.02

    return _time_varying_filter(source, sample_rate, gain)


def _voice(rng, sample_rate, f0, envelope, formant_times, formants, scale, breathiness, bandwidth_scale=1.0):
    """Glottal source (harmonics falling ~12 dB/octave) plus aspiration noise, through formants.
    ``f0=None`` renders a whisper: aspiration only."""
    n = envelope.size
    if f0 is None:
        source = _shaped_noise(n, sample_rate, rng, lambda f: _highpass(f, 300.0)) * 0.3
    else:
        slope = rng.uniform(1.6, 2.2)
        source = _harmonic_tone(f0, _spectral_tilt(80, slope), sample_rate, rng)
        source = source / (np.std(source) + 1e-8)
        if breathiness > 0:
            # Differenced white noise: a cheap +6 dB/octave aspiration spectrum, no FFT needed.
            noise = np.diff(rng.standard_normal(n + 1, dtype=np.float32)) * np.float32(0.7)
            source = source + breathiness * noise
    return _formant_filter(source, sample_rate, formant_times, formants, scale, bandwidth_scale) * envelope


def _syllables(rng, sample_rate, seconds, rate_hz):
    """Syllable nuclei for babble-like speech: onsets, lengths and vowel formant targets."""
    count = max(1, int(round(seconds * rate_hz)))
    lengths = rng.uniform(0.6, 1.0, count) / rate_hz
    onsets = np.concatenate([[0.0], np.cumsum(lengths[:-1] * rng.uniform(1.0, 1.4, count - 1))])
    keep = onsets + lengths <= seconds
    keep[0] = True
    onsets, lengths = onsets[keep], np.minimum(lengths[keep], seconds)
    vowels = _VOWELS[rng.integers(0, len(_VOWELS), onsets.size)]
    return onsets, lengths, vowels


def _syllable_envelope(n, sample_rate, onsets, lengths, rng):
    envelope = np.zeros(n, dtype=np.float32)
    for onset, length in zip(onsets, lengths, strict=True):
        m = _samples(length, sample_rate)
        bump = np.sin(np.pi * np.arange(m) / m) ** rng.uniform(0.5, 1.2)
        _overlay(envelope, bump.astype(np.float32) * rng.uniform(0.5, 1.0), int(onset * sample_rate))
    return envelope


def _consonants(n, sample_rate, onsets, rng, scale):
    """Fricative and plosive noise bursts at some syllable onsets (the 's', 'sh', 't' of speech)."""
    out = np.zeros(n, dtype=np.float32)
    for onset in onsets[rng.random(onsets.size) < 0.45]:
        centre = rng.uniform(2500, 6000) * scale
        m = _samples(rng.uniform(0.02, 0.08), sample_rate)
        burst = _shaped_noise(m, sample_rate, rng, lambda f, c=centre: _resonance(f, c, 0.6 * c))
        burst *= np.hanning(m).astype(np.float32) * rng.uniform(0.1, 0.4)
        _overlay(out, burst, max(0, int(onset * sample_rate) - m // 2))
    return out


@dataclass(frozen=True)
class SpeechStyle:
    """How the speech-like recipes talk, beyond who talks (the class): ``register`` (``"low"``,
    ``"mid"`` or ``"high"``: which part of the speaker's own pitch range, so a high man and a low woman
    may share a pitch), ``rate`` (``"slow"``: ~2-3 syllables/s, or ``"fast"``: ~5-7) and ``voices``
    (1, or 2-3 speakers of the class taking overlapping turns)."""

    register: str = "mid"
    rate: str = "fast"
    voices: int = 1

    def __post_init__(self):
        if self.register not in _REGISTERS or self.rate not in SPEAKING_RATES or self.voices < 1:
            raise ValueError(f"invalid speech style {self}")


# Fraction (low, high) of a speaker's log pitch range each register covers; beyond [0, 1] reaches past
# the class's usual range by 20 % of its width. The gaps between registers keep them apart.
_REGISTERS = {"low": (-0.2, 0.3), "mid": (0.4, 0.6), "high": (0.7, 1.2)}
SPEAKING_RATES = {"slow": (1.8, 3.0), "fast": (5.0, 7.0)}
"""Syllables per second of each speaking rate of :class:`SpeechStyle`."""


def _register_range(f0_range: tuple[float, float], register: str) -> tuple[float, float]:
    low, high = np.log(f0_range)
    a, b = _REGISTERS[register]
    return float(np.exp(low + a * (high - low))), float(np.exp(low + b * (high - low)))


def _utterance(rng, sample_rate, max_seconds, f0_range, scale_range, rate_range, voiced):
    """One speaker's utterance: babble-like syllables through a moving vocal tract."""
    seconds = _duration(rng, 1.0, 4.0, max_seconds)
    n = _samples(seconds, sample_rate)
    scale = rng.uniform(*scale_range)
    onsets, lengths, vowels = _syllables(rng, sample_rate, seconds, rng.uniform(*rate_range))
    centres = onsets + lengths / 2
    envelope = _syllable_envelope(n, sample_rate, onsets, lengths, rng)
    f0 = None
    if voiced:
        base = _log_uniform(rng, *f0_range)
        # Declination (pitch drifts down over an utterance) plus a random accent per syllable.
        accents = 2 ** (rng.normal(0, 2.0, centres.size) / 12)
        contour = _glide(n, sample_rate, centres, accents) * np.linspace(1.0, rng.uniform(0.8, 0.95), n)
        f0 = base * contour
    out = _voice(
        rng,
        sample_rate,
        f0,
        envelope,
        centres,
        vowels,
        scale,
        rng.uniform(0.02, 0.15),
        1.0 if voiced else 1.8,
    )
    out = out / (np.max(np.abs(out)) + 1e-8) + _consonants(n, sample_rate, onsets, rng, scale)
    return out, onsets.size


def _speech(rng, sample_rate, max_seconds, f0_range, scale_range, rate_range, voiced=True, style=None):
    """Speech of a class (its pitch, vocal-tract scale and rate ranges), as ``style`` says when given."""
    if style is None:
        out, units = _utterance(rng, sample_rate, max_seconds, f0_range, scale_range, rate_range, voiced)
        return SynthesizedEvent(_normalize(out), units)
    f0_range, rate_range = _register_range(f0_range, style.register), SPEAKING_RATES[style.rate]
    parts, onset, units = [], 0.0, 0
    for _ in range(style.voices):  # a conversation: each speaker starts before the previous one ends
        if onset >= max_seconds - 0.3 and parts:
            break
        seconds = max_seconds - onset
        out, count = _utterance(rng, sample_rate, seconds, f0_range, scale_range, rate_range, voiced)
        parts.append((int(onset * sample_rate), out * np.float32(rng.uniform(0.7, 1.0))))
        onset += out.size / sample_rate * rng.uniform(0.4, 0.9)
        units += count
    mixed = np.zeros(max(start + part.size for start, part in parts), dtype=np.float32)
    for start, part in parts:
        _overlay(mixed, part, start)
    return SynthesizedEvent(_normalize(mixed), units)


# --------------------------------------------------------------------------------------------
# tonal / musical
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MusicStyle:
    """How the musical recipes play, beyond which instrument (the class): ``bpm`` (beats per
    minute; every note starts on an eighth-note grid), ``mode`` (``"major"`` or ``"minor"``: the scale
    the melody walks and the triads the chords stack) and ``rhythm`` (``"steady"``: a note on every
    beat, the bar's first accented; ``"syncopated"``: tresillo-like patterns that start notes, and
    put the accents, off the beat)."""

    bpm: float = 100.0
    mode: str = "major"
    rhythm: str = "steady"

    def __post_init__(self):
        if not 30 <= self.bpm <= 300 or self.mode not in _MODES or self.rhythm not in _RHYTHMS:
            raise ValueError(f"invalid music style {self}")


TEMPI = {"slow": (60.0, 80.0), "medium": (95.0, 120.0), "fast": (140.0, 180.0)}
"""Beats per minute of each tempo class (gaps between them, so a class is unambiguous)."""

# Semitones of the seven scale degrees (natural minor: its 3rd, 6th and 7th are a semitone lower).
_MODES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Inter-onset intervals in eighth notes, one 4/4 bar each: steady quarter notes, or syncopations
# (3+3+2 tresillo and its relatives) whose onsets and accents fall between the beats.
_RHYTHMS = {
    "steady": ((2, 2, 2, 2),),
    "syncopated": ((3, 3, 2), (1, 2, 2, 2, 1), (3, 2, 3), (2, 1, 2, 1, 2)),
}
# Chord progressions as scale degrees (0 = I), one chord a bar: I-IV-V-I, I-vi-IV-V, I-V-vi-IV.
_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 4, 5, 3))


def _random_music_style(rng: np.random.Generator) -> MusicStyle:
    return MusicStyle(
        float(_log_uniform(rng, 60.0, 180.0)),
        ("major", "minor")[int(rng.integers(2))],
        ("steady", "syncopated")[int(rng.integers(2))],
    )


@dataclass(frozen=True)
class _Score:
    """Notes of a passage: onset and inter-onset interval (s), accent gain, scale ``degrees``
    (0 = tonic, 7 = its octave), their pitch in ``semitones`` above the tonic, and the bar of each."""

    onsets: np.ndarray
    lengths: np.ndarray
    accents: np.ndarray
    degrees: np.ndarray
    semitones: np.ndarray
    bars: np.ndarray
    scale: tuple[int, ...]


def _degree_semitones(degrees, scale) -> np.ndarray:
    degrees = np.asarray(degrees)
    return 12 * (degrees // 7) + np.asarray(scale)[degrees % 7]


def _score(rng, style: MusicStyle, seconds: float, max_seconds: float) -> _Score:
    """A melody of about ``seconds`` on the style's grid: a random walk over the scale that leans
    on the tonic triad (where major and minor differ, at the third) and comes home at the end."""
    eighth = 30.0 / style.bpm
    span = max(4, int(min(seconds, max_seconds) / eighth))  # eighths; at least two beats
    patterns = _RHYTHMS[style.rhythm]
    iois: list[int] = []
    while sum(iois) < span:
        iois.extend(patterns[int(rng.integers(len(patterns)))])
    positions = np.concatenate([[0], np.cumsum(iois)[:-1]])
    keep = (positions < span) & (positions * eighth + 0.1 <= max_seconds)
    keep[:2] = positions[:2] * eighth < max_seconds  # two notes whenever they fit
    positions, iois = positions[keep], np.asarray(iois)[keep]
    on_beat = positions % 2 == 0
    if style.rhythm == "steady":
        accents = np.where(positions % 8 == 0, 1.0, 0.75)
    else:
        accents = np.where(on_beat & (positions % 8 != 0), 0.6, 1.0)
    degree, degrees = 0, []
    for _ in positions:
        degrees.append(degree)
        if rng.random() < 0.4:  # leap to a chord tone of the tonic triad
            degree = 7 * (degree // 7) + int(rng.choice([0, 2, 4]))
        else:
            degree += int(rng.choice([-2, -1, 1, 2]))
        degree = int(np.clip(degree, -3, 9))
    if len(degrees) > 2:
        degrees[-1] = 0 if degrees[-2] < 4 else 7
    scale = _MODES[style.mode]
    return _Score(
        positions * eighth,
        iois * eighth,
        accents.astype(np.float32),
        np.asarray(degrees),
        _degree_semitones(degrees, scale),
        positions // 8,
        scale,
    )


def _music_style(rng, style):
    return _random_music_style(rng) if style is None else style


def bell(rng, sample_rate, max_seconds, style=None):
    """A bell or chime struck on the notes of a tune (a carillon, station chimes)."""
    score = _score(rng, _music_style(rng, style), rng.uniform(1.5, 5.0), max_seconds)
    f0 = _log_uniform(rng, 300, 1000)
    ratios = np.array([0.5, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.2]) * rng.uniform(0.98, 1.02, 8)
    amps = rng.uniform(0.2, 1.0, 8) / ratios**0.5
    tau = rng.uniform(0.4, 1.5)
    decays = tau / ratios ** rng.uniform(0.5, 1.0)
    unit_seconds = min(3 * tau, 2.5, max_seconds)
    n_unit = _samples(unit_seconds, sample_rate)
    ramp = _samples(0.004, sample_rate)
    units = {}
    for semitone in np.unique(score.semitones):  # one rendering per pitch, reused by every strike
        unit = _decaying_partials(f0 * 2 ** (semitone / 12) * ratios, amps, decays, n_unit, sample_rate, rng)
        unit[:ramp] *= np.linspace(0, 1, ramp, dtype=np.float32)
        units[int(semitone)] = unit
    n = _samples(min(score.onsets[-1] + unit_seconds, max_seconds), sample_rate)
    out = np.zeros(n, dtype=np.float32)
    for onset, semitone, accent in zip(score.onsets, score.semitones, score.accents, strict=True):
        _overlay(out, units[int(semitone)], int(onset * sample_rate), float(accent))
    return SynthesizedEvent(_normalize(out), score.onsets.size)


def flute(rng, sample_rate, max_seconds, style=None):
    score = _score(rng, _music_style(rng, style), rng.uniform(1.5, 5.0), max_seconds)
    base = _log_uniform(rng, 350, 900)
    ends = score.onsets + score.lengths
    seconds = min(ends[-1], max_seconds)
    n = _samples(seconds, sample_rate)
    pitches = base * 2 ** (score.semitones / 12)
    # Step-like melody with ~20 ms portamento between notes.
    knots_t = np.stack([score.onsets + 0.02, ends], axis=1).reshape(-1)
    f0 = _glide(n, sample_rate, knots_t, np.repeat(pitches, 2))
    t = _time(n, sample_rate)
    f0 = f0 * (1 + rng.uniform(0.003, 0.01) * np.sin(2 * np.pi * rng.uniform(4.5, 6.0) * t))
    harmonics = np.concatenate([[1.0], rng.uniform([0.1, 0.05, 0.0, 0.0], [0.5, 0.3, 0.15, 0.08])])
    tone = _harmonic_tone(f0, harmonics, sample_rate, rng)
    breath = _shaped_noise(n, sample_rate, rng, lambda f: _resonance(f, 2 * base, 1.5 * base))
    envelope = np.zeros(n, dtype=np.float32)
    legato = rng.uniform(0.7, 0.95)
    for start, length, accent in zip(score.onsets, score.lengths, score.accents, strict=True):
        m = _samples(length * legato, sample_rate)
        note = _adsr(m, sample_rate, rng.uniform(0.02, 0.06), 0.05, 0.85, 0.04)
        _overlay(envelope, note, int(start * sample_rate), float(accent))
    out = (tone + rng.uniform(0.05, 0.2) * breath) * envelope
    return SynthesizedEvent(_normalize(out), score.onsets.size)


def plucked_string(rng, sample_rate, max_seconds, style=None):
    score = _score(rng, _music_style(rng, style), rng.uniform(1.5, 5.0), max_seconds)
    root = _log_uniform(rng, 110, 440)
    tau = rng.uniform(0.4, 1.5)
    seconds = min(score.onsets[-1] + 2 * tau, max_seconds)
    n = _samples(seconds, sample_rate)
    out = np.zeros(n, dtype=np.float32)
    # A string plucked at a fraction p of its length lacks the harmonics with nodes there.
    k = np.arange(1, 41)
    pluck = rng.uniform(0.08, 0.3)
    bright = np.abs(np.sin(np.pi * k * pluck)) / k ** rng.uniform(0.8, 1.3)
    dark = bright / k**1.5
    for onset, semitone, accent in zip(score.onsets, score.semitones, score.accents, strict=True):
        f0 = root * 2 ** (semitone / 12)
        start = int(onset * sample_rate)
        m = min(n - start, _samples(4 * tau, sample_rate))  # -35 dB by then
        if m <= 0:
            continue
        phase = _phase(np.full(m, f0), sample_rate)
        hi = _read_table(_harmonic_table(_band_limited(bright, f0, sample_rate), rng), phase)
        lo = _read_table(_harmonic_table(_band_limited(dark, f0, sample_rate), rng), phase)
        # The upper harmonics die first: cross-fade from the bright to the dark spectrum.
        fade = _exp_decay(m, sample_rate, tau * rng.uniform(0.1, 0.25), 1e-4)
        note = (hi * fade + lo * (1 - fade) * 3) * _exp_decay(m, sample_rate, tau, 0.001)
        _overlay(out, note, start, float(accent * rng.uniform(0.8, 1.0)))
    return SynthesizedEvent(_normalize(out), score.onsets.size)


def chord(rng, sample_rate, max_seconds, style=None):
    """Chords struck on the rhythm's onsets, one triad of the mode's progression per bar."""
    score = _score(rng, _music_style(rng, style), rng.uniform(2.0, 6.0), max_seconds)
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    seventh = rng.random() < 0.3  # some players add the seventh
    seconds = min(score.onsets[-1] + score.lengths[-1], max_seconds)
    n = _samples(seconds, sample_rate)
    harmonics = _spectral_tilt(12, rng.uniform(1.0, 2.0)) * rng.uniform(0.5, 1.0, 12)
    table = _harmonic_table(harmonics, rng)
    root = _log_uniform(rng, 130, 330)
    out = np.zeros(n, dtype=np.float32)
    attack, sustain = rng.uniform(0.01, 0.08), rng.uniform(0.5, 0.9)
    notes = zip(score.onsets, score.lengths, score.accents, score.bars, strict=True)
    for onset, length, accent, bar in notes:
        start = int(onset * sample_rate)
        m = min(_samples(length, sample_rate), n - start)
        if m <= 0:
            continue
        degree = progression[int(bar) % len(progression)]
        stack = (0, 2, 4, 6) if seventh else (0, 2, 4)
        voices = np.zeros(m, dtype=np.float32)
        for semitone in _degree_semitones([degree + s for s in stack], score.scale):
            f0 = root * 2 ** ((semitone + rng.normal(0, 0.05)) / 12)
            if f0 * 3 < _BAND_EDGE * sample_rate:
                voices += _read_table(table, np.mod(rng.random() + _phase(np.full(m, f0), sample_rate), 1.0))
        envelope = _adsr(m, sample_rate, attack, 0.1, sustain, min(0.1, 0.3 * length))
        _overlay(out, voices * envelope, start, float(accent))
    return SynthesizedEvent(_normalize(out), score.onsets.size)


def whistle(rng, sample_rate, max_seconds):
    seconds = _duration(rng, 0.4, 2.5, max_seconds)
    n = _samples(seconds, sample_rate)
    base = _log_uniform(rng, 900, 2800)
    semitones = _smooth_random(n, sample_rate, rng, rng.uniform(2, 6), -5, 5)
    f0 = _nyquist_guard(base * 2 ** (semitones / 12), sample_rate / 1.1)
    tone = _harmonic_tone(f0, [1.0, rng.uniform(0, 0.08), rng.uniform(0, 0.03)], sample_rate, rng)
    segments = int(rng.integers(1, 4))
    cuts = np.sort(rng.uniform(0, seconds, 2 * (segments - 1)))
    envelope = _adsr(n, sample_rate, 0.03, 0.05, 0.9, 0.08)
    t = _time(n, sample_rate)
    for a, b in cuts.reshape(-1, 2):  # short breaths between whistled phrases, with 15 ms fades
        gap = min(b - a, 0.12)
        envelope *= 1 - 0.95 * np.interp(t, [a - 0.015, a, a + gap, a + gap + 0.015], [0, 1, 1, 0])
    breath = _shaped_noise(n, sample_rate, rng, lambda f: _resonance(f, base, 0.5 * base))
    out = (tone + rng.uniform(0.02, 0.08) * breath) * envelope
    return SynthesizedEvent(_normalize(out), segments)


def mallet(rng, sample_rate, max_seconds, style=None):
    score = _score(rng, _music_style(rng, style), rng.uniform(1.5, 5.0), max_seconds)
    root = _log_uniform(rng, 180, 600)
    tau = rng.uniform(0.15, 0.6)
    seconds = min(score.onsets[-1] + 3 * tau, max_seconds)
    n = _samples(seconds, sample_rate)
    out = np.zeros(n, dtype=np.float32)
    # A tuned bar's overtones sit near 4x and 10x the fundamental (marimba tuning).
    ratios = np.array([1.0, rng.uniform(3.9, 4.0), rng.uniform(9.2, 10.0)])
    amps = np.array([1.0, rng.uniform(0.1, 0.5), rng.uniform(0.02, 0.15)])
    for onset, semitone, accent in zip(score.onsets, score.semitones, score.accents, strict=True):
        f0 = root * 2 ** (semitone / 12)
        m = min(_samples(3 * tau, sample_rate), n - int(onset * sample_rate))
        if m > 0:
            note = _decaying_partials(f0 * ratios, amps, [tau, tau / 3, tau / 6], m, sample_rate, rng)
            _overlay(out, note, int(onset * sample_rate), float(accent * rng.uniform(0.8, 1.0)))
    return SynthesizedEvent(_normalize(out), score.onsets.size)


# --------------------------------------------------------------------------------------------
# noise textures
# --------------------------------------------------------------------------------------------


def _texture_envelope(n, sample_rate, rng):
    return _adsr(n, sample_rate, rng.uniform(0.1, 0.8), 0.0, 1.0, rng.uniform(0.1, 0.8))


def rain(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 6.0, max_seconds), sample_rate)
    low, slope = rng.uniform(400, 1500), rng.uniform(-2, 1)
    hiss = _shaped_noise(n, sample_rate, rng, lambda f: _tilt(f, slope) * _highpass(f, low))
    centre = rng.uniform(1500, 5000)
    drops = _sparse_impulses(n, sample_rate, rng, rng.uniform(150, 1500), 2.0)
    drops = _filter(drops, sample_rate, lambda f: _resonance(f, centre, 1.5 * centre) * _highpass(f, 500))
    drops /= np.std(drops) + 1e-8
    out = (hiss * rng.uniform(0.3, 1.0) + drops) * _smooth_random(n, sample_rate, rng, 0.5, 0.7, 1.0)
    return SynthesizedEvent(_normalize(out * _texture_envelope(n, sample_rate, rng)))


def wind(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 6.0, max_seconds), sample_rate)
    gust = _smooth_random(n, sample_rate, rng, rng.uniform(0.3, 1.2), 0.15, 1.0)
    centre0, q, swing = rng.uniform(250, 900), rng.uniform(0.7, 2.0), rng.uniform(0.5, 1.5)
    howl = rng.random() < 0.3

    def gain(frame_times, freqs):
        g = _frame_curve(gust, frame_times, sample_rate)
        centre = centre0 * 2 ** (swing * g)
        shape = _resonance(freqs, centre, centre / q)
        if howl:  # a narrow whistling resonance when wind passes an edge
            shape = shape + 2 * _resonance(freqs, 1.5 * centre, centre / 15)
        return shape * g**1.5

    noise = _shaped_noise(n, sample_rate, rng, lambda f: _lowpass(f, 3000.0))
    return SynthesizedEvent(_normalize(_time_varying_filter(noise, sample_rate, gain)))


def stream(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 6.0, max_seconds), sample_rate)
    n_peaks = int(rng.integers(2, 5))
    # Bubbles: resonances hopping between random pitches every few milliseconds.
    tracks = [_smooth_random(n, sample_rate, rng, rng.uniform(15, 40), 200, 1800) for _ in range(n_peaks)]
    tracks = np.stack(tracks, axis=1)
    base = rng.uniform(0.05, 0.25)

    def gain(frame_times, freqs):
        index = np.clip((frame_times[:, 0] * sample_rate).astype(np.int64), 0, n - 1)
        centres = tracks[index][:, :, None]
        return _resonance(freqs[None, None, :], centres, 0.15 * centres).sum(axis=1) + base

    noise = _shaped_noise(n, sample_rate, rng, lambda f: _highpass(f, 150.0) * _lowpass(f, 4000.0))
    out = _time_varying_filter(noise, sample_rate, gain)
    out *= _smooth_random(n, sample_rate, rng, rng.uniform(10, 30), 0.4, 1.0)
    return SynthesizedEvent(_normalize(out * _texture_envelope(n, sample_rate, rng)))


def crackling_fire(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 6.0, max_seconds), sample_rate)
    roar_cut = rng.uniform(300, 900)
    roar = _shaped_noise(n, sample_rate, rng, lambda f: _lowpass(f, roar_cut) * _highpass(f, 40.0))
    roar *= _smooth_random(n, sample_rate, rng, rng.uniform(1, 4), 0.4, 1.0)
    crack_cut = rng.uniform(1000, 2500)
    crackles = _sparse_impulses(n, sample_rate, rng, rng.uniform(5, 40), 1.3)
    crackles = _filter(crackles, sample_rate, lambda f: _highpass(f, crack_cut, 1))
    crackles /= np.max(np.abs(crackles)) + 1e-8
    out = crackles + rng.uniform(0.02, 0.1) * roar
    return SynthesizedEvent(_normalize(out * _texture_envelope(n, sample_rate, rng)))


def ocean_waves(rng, sample_rate, max_seconds):
    seconds = _duration(rng, 3.0, 7.0, max_seconds)
    n = _samples(seconds, sample_rate)
    # One or two breakers: a slow swell up to the crash, then a long wash-out.
    crashes = np.sort(rng.uniform(0.15, 0.6, int(rng.integers(1, 3)))) * seconds
    t = _time(n, sample_rate)
    swell = np.zeros(n, dtype=np.float32)
    for crash in crashes:
        rise, fall = rng.uniform(0.8, 2.0), rng.uniform(1.0, 3.0)
        shape = np.where(t < crash, np.exp(-(((t - crash) / rise) ** 2)), np.exp(-(t - crash) / fall))
        swell = np.maximum(swell, shape.astype(np.float32))
    swell = 0.1 + 0.9 * swell
    cut_lo, cut_hi = rng.uniform(300, 600), rng.uniform(2500, 5000)

    def gain(frame_times, freqs):
        s = _frame_curve(swell, frame_times, sample_rate)
        return _lowpass(freqs, cut_lo + (cut_hi - cut_lo) * s**2, 1) * s

    noise = _shaped_noise(n, sample_rate, rng, lambda f: _highpass(f, 60.0))
    return SynthesizedEvent(_normalize(_time_varying_filter(noise, sample_rate, gain)), crashes.size)


def applause(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 6.0, max_seconds), sample_rate)
    centre = rng.uniform(800, 2500)
    claps = _sparse_impulses(n, sample_rate, rng, rng.uniform(15, 60), 4.0)
    kernel = _noise_burst(_samples(0.03, sample_rate), sample_rate, rng, lambda f: np.ones_like(f), 0.006)
    # Each impulse becomes a short noise burst: convolution with the burst, done in the same FFT
    # as the band-pass (circular wrap-around of a 30 ms tail is inaudible in a texture).
    size = _fast_length(n)
    band = _resonance(_freqs(size, sample_rate), centre, 1.5 * centre)
    spectrum = np.fft.rfft(claps, size) * np.fft.rfft(kernel, size) * band
    claps = np.fft.irfft(spectrum, size)[:n].astype(np.float32)
    swell = _adsr(n, sample_rate, rng.uniform(0.2, 1.0), 0.0, 1.0, rng.uniform(0.5, 1.5))
    return SynthesizedEvent(_normalize(claps * swell))


# --------------------------------------------------------------------------------------------
# impulsive
# --------------------------------------------------------------------------------------------


def knock(rng, sample_rate, max_seconds):
    count = int(rng.integers(2, 6))
    onsets = _fit_units(_onsets(rng, count, (0.1, 0.3), 0.2), 0.1, max_seconds)
    f1 = rng.uniform(120, 400)
    tau = rng.uniform(0.01, 0.04)
    m = _samples(min(8 * tau, max_seconds), sample_rate)
    unit = _decaying_partials(
        f1 * np.array([1.0, rng.uniform(1.8, 2.6), rng.uniform(3.5, 5.0)]),
        [1.0, rng.uniform(0.3, 0.8), rng.uniform(0.1, 0.4)],
        [tau, tau / 2, tau / 3],
        m,
        sample_rate,
        rng,
    )
    unit += rng.uniform(0.2, 0.6) * _noise_burst(m, sample_rate, rng, lambda f: _highpass(f, 2000.0), 0.002)
    n = _samples(min(onsets[-1] + m / sample_rate, max_seconds), sample_rate)
    return SynthesizedEvent(_normalize(_repeat(unit, onsets, n, sample_rate, rng)), onsets.size)


def hand_clap(rng, sample_rate, max_seconds):
    count = int(rng.integers(1, 11))
    onsets = _fit_units(_onsets(rng, count, (0.25, 0.6), 0.08), 0.05, max_seconds)
    m = _samples(min(0.12, max_seconds), sample_rate)
    n = _samples(min(onsets[-1] + 0.12, max_seconds), sample_rate)
    out = np.zeros(n, dtype=np.float32)
    centre, q = rng.uniform(900, 2500), rng.uniform(1.0, 3.0)
    for onset in onsets:  # every clap is a fresh noise burst: no two are identical
        c = centre * rng.uniform(0.9, 1.1)
        tau = rng.uniform(0.005, 0.02)
        burst = _noise_burst(m, sample_rate, rng, lambda f, c=c: _resonance(f, c, c / q), tau)
        _overlay(out, burst, int(onset * sample_rate), float(rng.uniform(0.7, 1.0)))
    return SynthesizedEvent(_normalize(out), onsets.size)


def footsteps(rng, sample_rate, max_seconds):
    count = int(rng.integers(3, 13))
    rate = rng.uniform(1.4, 2.4)
    onsets = _fit_units(_onsets(rng, count, (0.9 / rate, 1.1 / rate), 0.1), 0.1, max_seconds)
    m = _samples(min(0.15, max_seconds), sample_rate)
    n = _samples(min(onsets[-1] + 0.15, max_seconds), sample_rate)
    thump_cut, scuff_level = rng.uniform(150, 600), rng.uniform(0.1, 0.6)
    out = np.zeros(n, dtype=np.float32)
    for onset in onsets:
        heel_tau, toe_tau = rng.uniform(0.015, 0.04), rng.uniform(0.02, 0.05)
        heel = _noise_burst(m, sample_rate, rng, lambda f: _lowpass(f, thump_cut, 3), heel_tau)
        toe = _noise_burst(m, sample_rate, rng, lambda f: _resonance(f, 2500.0, 3000.0), toe_tau)
        step = heel + scuff_level * np.roll(toe, _samples(rng.uniform(0.02, 0.05), sample_rate))
        _overlay(out, step, int(onset * sample_rate), float(rng.uniform(0.6, 1.0)))
    return SynthesizedEvent(_normalize(out), onsets.size)


def glass_clink(rng, sample_rate, max_seconds):
    count = int(rng.integers(1, 4))
    onsets = _fit_units(_onsets(rng, count, (0.15, 0.5), 0.3), 0.05, max_seconds)
    f1 = rng.uniform(1800, 4000)
    ratios = np.array([1.0, rng.uniform(1.4, 1.7), rng.uniform(2.2, 2.9), rng.uniform(3.1, 3.9)])
    tau = rng.uniform(0.1, 0.5)
    m = _samples(min(3 * tau, max_seconds), sample_rate)
    unit = _decaying_partials(f1 * ratios, rng.uniform(0.3, 1.0, 4), tau / ratios, m, sample_rate, rng)
    unit += 0.3 * _noise_burst(m, sample_rate, rng, lambda f: _highpass(f, 4000.0), 0.001)
    n = _samples(min(onsets[-1] + 3 * tau, max_seconds), sample_rate)
    return SynthesizedEvent(_normalize(_repeat(unit, onsets, n, sample_rate, rng)), onsets.size)


def door_slam(rng, sample_rate, max_seconds):
    seconds = min(rng.uniform(0.4, 0.9), max_seconds)
    n = _samples(seconds, sample_rate)
    thump_cut = rng.uniform(200, 600)
    thump = _noise_burst(n, sample_rate, rng, lambda f: _lowpass(f, thump_cut, 2), rng.uniform(0.03, 0.08))
    boom_f, boom_tau = rng.uniform(50, 140), rng.uniform(0.08, 0.3)
    boom = _decaying_partials(
        [boom_f, 2.3 * boom_f], [1.0, 0.3], [boom_tau, boom_tau / 2], n, sample_rate, rng
    )
    tail = _noise_burst(n, sample_rate, rng, lambda f: _lowpass(f, 2000.0), rng.uniform(0.1, 0.3), 0.01)
    out = thump + rng.uniform(0.5, 1.5) * boom + rng.uniform(0.05, 0.2) * tail
    m = _samples(0.03, sample_rate)
    rattle = _noise_burst(m, sample_rate, rng, lambda f: _highpass(f, 1500.0), 0.005)
    for delay in rng.uniform(0.03, 0.12, int(rng.integers(0, 3))):
        _overlay(out, rattle, int(delay * sample_rate), float(rng.uniform(0.1, 0.4)))
    return SynthesizedEvent(_normalize(out))


def keyboard_typing(rng, sample_rate, max_seconds):
    seconds = _duration(rng, 1.5, 5.0, max_seconds)
    n = _samples(seconds, sample_rate)
    rate = rng.uniform(4, 10)
    count = max(1, rng.poisson(rate * seconds))
    onsets = np.sort(rng.uniform(0, max(seconds - 0.1, 0.0), count))
    m = _samples(min(0.03, seconds), sample_rate)
    centre = rng.uniform(1500, 5000)
    out = np.zeros(n, dtype=np.float32)
    for onset in onsets:  # press and release clicks, a key-dependent pitch each
        c = centre * rng.uniform(0.7, 1.3)
        tau = rng.uniform(0.003, 0.008)
        click = _noise_burst(m, sample_rate, rng, lambda f, c=c: _resonance(f, c, c), tau)
        _overlay(out, click, int(onset * sample_rate))
        _overlay(out, 0.5 * click, int((onset + rng.uniform(0.04, 0.1)) * sample_rate))
    return SynthesizedEvent(_normalize(out), int(count))


# --------------------------------------------------------------------------------------------
# speech-like
# --------------------------------------------------------------------------------------------


def male_speech(rng, sample_rate, max_seconds, style=None):
    return _speech(rng, sample_rate, max_seconds, (85, 150), (0.95, 1.05), (3.0, 5.5), style=style)


def female_speech(rng, sample_rate, max_seconds, style=None):
    return _speech(rng, sample_rate, max_seconds, (165, 255), (1.12, 1.22), (3.0, 5.5), style=style)


def child_speech(rng, sample_rate, max_seconds, style=None):
    return _speech(rng, sample_rate, max_seconds, (250, 400), (1.3, 1.45), (3.5, 6.5), style=style)


def whisper(rng, sample_rate, max_seconds, style=None):
    # Unvoiced: a style's register has nothing to act on; its rate and voices do.
    return _speech(rng, sample_rate, max_seconds, (100, 200), (0.95, 1.3), (3.0, 5.5), False, style)


def laughter(rng, sample_rate, max_seconds):
    count = int(rng.integers(3, 11))
    rate = rng.uniform(4, 6)
    onsets = _fit_units(np.arange(count) / rate, 0.6 / rate, max_seconds)
    seconds = min(onsets[-1] + 0.7 / rate + 0.05, max_seconds)
    n = _samples(seconds, sample_rate)
    lengths = np.full(onsets.size, 0.6 / rate)
    envelope = _syllable_envelope(n, sample_rate, onsets, lengths, rng)
    envelope *= np.linspace(1.0, rng.uniform(0.3, 0.8), n, dtype=np.float32)  # laughs run out of breath
    f0 = _log_uniform(rng, 200, 450) * np.linspace(1.0, rng.uniform(0.7, 0.95), n)
    vowel = _VOWELS[rng.choice(_vowel_rows("a", "e", "ae"))][None, :]
    scale = rng.uniform(1.0, 1.4)
    out = _voice(rng, sample_rate, f0, envelope, [0.0], vowel, scale, rng.uniform(0.3, 0.6))
    return SynthesizedEvent(_normalize(out), onsets.size)


def singing(rng, sample_rate, max_seconds):
    notes = int(rng.integers(2, 6))
    lengths = rng.uniform(0.3, 1.0, notes)
    times = np.concatenate([[0.0], np.cumsum(lengths)])
    seconds = min(times[-1], max_seconds)
    n = _samples(seconds, sample_rate)
    female = rng.random() < 0.5
    base = _log_uniform(rng, *((200, 400) if female else (100, 200)))
    pitches = base * 2 ** (rng.choice([0, 2, 4, 5, 7, 9, 12], notes) / 12)
    knots_t = np.stack([times[:-1] + 0.04, times[1:]], axis=1).reshape(-1)
    t = _time(n, sample_rate)
    vibrato = 1 + rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * rng.uniform(5.0, 6.5) * t)
    f0 = _glide(n, sample_rate, knots_t, np.repeat(pitches, 2)) * vibrato
    centres = times[:-1] + lengths / 2
    vowels = _VOWELS[rng.integers(0, len(_VOWELS), notes)]
    envelope = _adsr(n, sample_rate, 0.08, 0.1, 0.9, 0.15)
    scale = rng.uniform(1.12, 1.22) if female else rng.uniform(0.95, 1.05)
    out = _voice(rng, sample_rate, f0, envelope, centres, vowels, scale, rng.uniform(0.01, 0.05))
    return SynthesizedEvent(_normalize(out), int(np.sum(times[:-1] < seconds)))


# --------------------------------------------------------------------------------------------
# animal-like
# --------------------------------------------------------------------------------------------


def bird_chirp(rng, sample_rate, max_seconds):
    count = int(rng.integers(2, 11))
    onsets = _fit_units(_onsets(rng, count, (0.08, 0.3), 0.3), 0.03, max_seconds)
    # A song reuses one to three syllable types, as real birds do.
    types = [
        (
            rng.uniform(2000, 6500),
            rng.uniform(-1.2, 1.2),
            rng.uniform(0.03, 0.15),
            rng.uniform(0, 0.3),
            rng.uniform(20, 60),
        )
        for _ in range(int(rng.integers(1, 4)))
    ]
    seconds = min(onsets[-1] + 0.16, max_seconds)
    n = _samples(seconds, sample_rate)
    f0 = np.full(n, 1000.0, dtype=np.float32)
    envelope = np.zeros(n, dtype=np.float32)
    for onset in onsets:
        start_f, octaves, length, trill, trill_rate = types[int(rng.integers(len(types)))]
        start = int(onset * sample_rate)
        m = min(_samples(length, sample_rate), n - start)
        if m <= 0:
            continue
        t = _time(m, sample_rate)
        sweep = start_f * 2 ** (octaves * t / length) * (1 + trill * np.sin(2 * np.pi * trill_rate * t))
        f0[start : start + m] = sweep
        envelope[start : start + m] = np.sin(np.pi * np.arange(m) / m) ** 2
    f0 = _nyquist_guard(f0, sample_rate / 1.1)
    out = _harmonic_tone(f0, [1.0, rng.uniform(0, 0.2)], sample_rate, rng) * envelope
    return SynthesizedEvent(_normalize(out), onsets.size)


def dog_bark(rng, sample_rate, max_seconds):
    count = int(rng.integers(1, 5))
    onsets = _fit_units(_onsets(rng, count, (0.25, 0.6), 0.2), 0.1, max_seconds)
    peak = _log_uniform(rng, 250, 800)
    f1, f2, harsh = rng.uniform(500, 900), rng.uniform(1200, 2000), rng.uniform(0.2, 0.6)
    n = _samples(min(onsets[-1] + 0.3, max_seconds), sample_rate)
    out = np.zeros(n, dtype=np.float32)
    for onset in onsets:
        length = rng.uniform(0.08, 0.25)
        m = _samples(min(length, max_seconds), sample_rate)
        # The pitch jumps up at the onset and falls through the bark.
        f0 = _glide(m, sample_rate, [0, 0.2 * length, length], [0.7 * peak, peak, 0.6 * peak])
        voiced = _harmonic_tone(f0, _spectral_tilt(60, 1.0), sample_rate, rng)
        voiced /= np.std(voiced) + 1e-8
        noise = _shaped_noise(m, sample_rate, rng, lambda f: _highpass(f, 500.0))
        bark = (voiced + harsh * noise) * _exp_decay(m, sample_rate, 0.4 * length, 0.006)
        _overlay(out, bark, int(onset * sample_rate))
    out = _filter(out, sample_rate, lambda f: _resonance(f, f1, 400) + 0.7 * _resonance(f, f2, 600) + 0.05)
    return SynthesizedEvent(_normalize(out), onsets.size)


def cat_meow(rng, sample_rate, max_seconds):
    count = int(rng.integers(1, 3))
    lengths = rng.uniform(0.4, 1.2, count)
    onsets = np.concatenate([[0.0], np.cumsum(lengths[:-1] + rng.uniform(0.2, 0.6, count - 1))])
    onsets = _fit_units(onsets, 0.2, max_seconds)
    n = _samples(min(onsets[-1] + lengths[onsets.size - 1], max_seconds), sample_rate)
    out = np.zeros(n, dtype=np.float32)
    scale = rng.uniform(1.3, 1.7)
    for onset, length in zip(onsets, lengths, strict=False):
        m = min(_samples(length, sample_rate), n - int(onset * sample_rate))
        if m <= 0:
            continue
        start = rng.uniform(450, 700)
        f0 = _glide(
            m,
            sample_rate,
            [0, 0.35 * length, length],
            [start, start * rng.uniform(1.2, 1.6), start * rng.uniform(0.7, 0.9)],
        )
        env = _adsr(m, sample_rate, 0.05, 0.1, 0.8, 0.2)
        # "mi-a-ow": the mouth opens then rounds, so the formants glide i -> a -> u.
        formants = _VOWELS[_vowel_rows("i", "a", "u")]
        voice = _voice(rng, sample_rate, f0, env, [0, 0.4 * length, length], formants, scale, 0.1)
        _overlay(out, voice / (np.max(np.abs(voice)) + 1e-8), int(onset * sample_rate))
    return SynthesizedEvent(_normalize(out), onsets.size)


def frog_croak(rng, sample_rate, max_seconds):
    count = int(rng.integers(2, 9))
    onsets = _fit_units(_onsets(rng, count, (0.3, 0.9), 0.2), 0.1, max_seconds)
    length = rng.uniform(0.1, 0.4)
    m = _samples(min(length, max_seconds), sample_rate)
    f0, pulse_rate, sharpness = _log_uniform(rng, 150, 500), rng.uniform(15, 60), rng.uniform(2, 6)
    t = _time(m, sample_rate)
    pulses = np.abs(np.sin(np.pi * pulse_rate * t)) ** sharpness  # the croak is a train of clicks
    unit = _harmonic_tone(np.full(m, f0), _spectral_tilt(40, 1.0), sample_rate, rng)
    unit *= pulses * _adsr(m, sample_rate, 0.01, 0.02, 0.8, 0.03)
    resonance = rng.uniform(400, 1500)
    unit = _filter(unit, sample_rate, lambda f: _resonance(f, resonance, resonance) + 0.1)
    n = _samples(min(onsets[-1] + length, max_seconds), sample_rate)
    return SynthesizedEvent(_normalize(_repeat(unit, onsets, n, sample_rate, rng, 0.2)), onsets.size)


def insect_buzz(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 1.5, 5.0, max_seconds), sample_rate)
    flight = _smooth_random(n, sample_rate, rng, rng.uniform(0.3, 1.5), 0.1, 1.0)
    # Wing-beat pitch wanders, and rises a little as the insect comes close (a cheap Doppler).
    drift = _smooth_random(n, sample_rate, rng, rng.uniform(0.5, 3.0), -0.05, 0.05)
    f0 = _log_uniform(rng, 150, 650) * (1 + drift + 0.03 * flight)
    out = _harmonic_tone(f0, _spectral_tilt(60, rng.uniform(0.7, 1.2)), sample_rate, rng) * flight
    return SynthesizedEvent(_normalize(out * _texture_envelope(n, sample_rate, rng)))


def owl_hoot(rng, sample_rate, max_seconds):
    count = int(rng.integers(2, 6))
    onsets = _fit_units(_onsets(rng, count, (0.3, 1.0), 0.4), 0.2, max_seconds)
    length = rng.uniform(0.2, 0.8)
    f0 = _log_uniform(rng, 280, 550)
    n = _samples(min(onsets[-1] + length, max_seconds), sample_rate)
    out = np.zeros(n, dtype=np.float32)
    for onset in onsets:
        m = min(_samples(length * rng.uniform(0.8, 1.2), sample_rate), n - int(onset * sample_rate))
        if m <= 0:
            continue
        pitch = _glide(m, sample_rate, [0, m / sample_rate], [f0, f0 * rng.uniform(0.85, 0.97)])
        tone = _harmonic_tone(pitch, [1.0, rng.uniform(0.05, 0.2), rng.uniform(0, 0.05)], sample_rate, rng)
        envelope = _adsr(m, sample_rate, rng.uniform(0.05, 0.1), 0.05, 0.8, 0.1)
        _overlay(out, tone * envelope, int(onset * sample_rate))
    return SynthesizedEvent(_normalize(out), onsets.size)


# --------------------------------------------------------------------------------------------
# mechanical
# --------------------------------------------------------------------------------------------


def engine(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 6.0, max_seconds), sample_rate)
    rpm = _smooth_random(n, sample_rate, rng, rng.uniform(0.2, 1.0), 0.85, 1.15)
    firing = _log_uniform(rng, 25, 90) * rpm
    k = 40
    harmonics = _spectral_tilt(k, rng.uniform(0.6, 1.2)) * rng.uniform(0.3, 1.0, k)
    tone = _harmonic_tone(firing, harmonics, sample_rate, rng)
    tone *= 1 + rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * _phase(firing / 2, sample_rate))
    cut = rng.uniform(300, 1000)
    exhaust = _shaped_noise(n, sample_rate, rng, lambda f: _lowpass(f, cut, 2))
    out = tone / (np.std(tone) + 1e-8) + rng.uniform(0.1, 0.5) * exhaust
    muffle = rng.uniform(800, 3000)
    out = _filter(out, sample_rate, lambda f: _lowpass(f, muffle, 2))
    return SynthesizedEvent(_normalize(out * _texture_envelope(n, sample_rate, rng)))


def power_drill(rng, sample_rate, max_seconds):
    bursts = int(rng.integers(1, 4))
    lengths = rng.uniform(0.6, 2.5, bursts)
    onsets = np.concatenate([[0.0], np.cumsum(lengths[:-1] + rng.uniform(0.2, 0.8, bursts - 1))])
    onsets = _fit_units(onsets, 0.3, max_seconds)
    n = _samples(min(onsets[-1] + lengths[onsets.size - 1], max_seconds), sample_rate)
    top, gear = _log_uniform(rng, 120, 350), rng.uniform(5, 12)
    speed = np.full(n, 0.05, dtype=np.float32)
    envelope = np.zeros(n, dtype=np.float32)
    spin_up = rng.uniform(0.1, 0.3)
    for onset, length in zip(onsets, lengths, strict=False):
        start = int(onset * sample_rate)
        m = min(_samples(length, sample_rate), n - start)
        if m <= 0:
            continue
        t = _time(m, sample_rate)
        ramp = (1 - _decay(m, sample_rate, spin_up)) * np.minimum(1.0, (m / sample_rate - t) / 0.1)
        speed[start : start + m] = np.maximum(0.05, ramp)
        envelope[start : start + m] = np.clip(ramp, 0, 1)
    f0 = top * speed
    motor = _harmonic_tone(f0, _spectral_tilt(40, 0.8), sample_rate, rng)
    whine = _harmonic_tone(_nyquist_guard(f0 * gear, sample_rate / 1.1), [1.0], sample_rate, rng)
    grind_centre = rng.uniform(2000, 5000)
    grind = _shaped_noise(n, sample_rate, rng, lambda f: _resonance(f, grind_centre, grind_centre))
    out = motor / (np.std(motor) + 1e-8) + rng.uniform(0.3, 1.0) * whine + rng.uniform(0.1, 0.5) * grind
    return SynthesizedEvent(_normalize(out * envelope), onsets.size)


def siren(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 6.0, max_seconds), sample_rate)
    low = rng.uniform(500, 800)
    high = low * rng.uniform(1.6, 2.2)
    t = _time(n, sample_rate)
    kind = int(rng.integers(3))
    if kind == 0:  # wail: slow sweep
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(0.15, 0.5) * t)
    elif kind == 1:  # yelp: fast sweep
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(2.5, 6.0) * t)
    else:  # hi-lo: two alternating tones
        sweep = (np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * t) > 0).astype(np.float32)
    f0 = low + (high - low) * sweep
    odd = np.zeros(15)
    odd[::2] = _spectral_tilt(15, rng.uniform(0.8, 2.0))[::2]  # square- to triangle-like
    out = _harmonic_tone(f0, odd, sample_rate, rng)
    return SynthesizedEvent(_normalize(out * _adsr(n, sample_rate, 0.1, 0.0, 1.0, 0.3)))


def clock_tick(rng, sample_rate, max_seconds):
    seconds = _duration(rng, 2.0, 7.0, max_seconds)
    rate = rng.choice([1.0, 2.0, 3.0, 4.0])
    grid = np.arange(0.0, max(seconds - 0.05, 1e-3), 1 / rate)
    onsets = np.clip(grid + rng.normal(0, 0.003, grid.size), 0, None)  # a mechanical, near-perfect beat
    n = _samples(seconds, sample_rate)
    m = _samples(min(0.04, seconds), sample_rate)
    f, tau, tock = rng.uniform(1500, 4500), rng.uniform(0.002, 0.008), rng.uniform(0.8, 0.95)
    # "tick-tock": every other beat is a slightly lower click.
    out = np.zeros(n, dtype=np.float32)
    for beats, pitch in ((onsets[::2], f), (onsets[1::2], f * tock)):
        unit = _decaying_partials([pitch, 1.6 * pitch], [1.0, 0.4], [tau, tau / 2], m, sample_rate, rng)
        out += _repeat(unit, beats, n, sample_rate, rng, 0.05)
    return SynthesizedEvent(_normalize(out), onsets.size)


def vacuum_cleaner(rng, sample_rate, max_seconds):
    n = _samples(_duration(rng, 2.0, 7.0, max_seconds), sample_rate)
    slope, low = rng.uniform(-2, 1), rng.uniform(100, 400)
    whistle_f, whistle_q = rng.uniform(1000, 3000), rng.uniform(5, 15)

    def shape(f):
        return _tilt(f, slope) * _highpass(f, low) + 0.5 * _resonance(f, whistle_f, whistle_f / whistle_q)

    air = _shaped_noise(n, sample_rate, rng, shape)
    spin_up = rng.uniform(0.3, 1.0)
    speed = 0.4 + 0.6 * (1 - _decay(n, sample_rate, spin_up))
    motor = _harmonic_tone(_log_uniform(rng, 250, 900) * speed, _spectral_tilt(8, 1.5), sample_rate, rng)
    out = (air + rng.uniform(0.1, 0.5) * motor / (np.std(motor) + 1e-8)) * speed**2
    return SynthesizedEvent(_normalize(out * _adsr(n, sample_rate, 0.05, 0.0, 1.0, 0.3)))


def car_horn(rng, sample_rate, max_seconds):
    count = int(rng.integers(1, 4))
    lengths = rng.uniform(0.2, 1.2, count)
    onsets = np.concatenate([[0.0], np.cumsum(lengths[:-1] + rng.uniform(0.1, 0.4, count - 1))])
    onsets = _fit_units(onsets, 0.15, max_seconds)
    n = _samples(min(onsets[-1] + lengths[onsets.size - 1], max_seconds), sample_rate)
    f1 = rng.uniform(350, 450)
    f2 = f1 * rng.uniform(1.2, 1.3)  # two horns about a major third apart
    harmonics = _spectral_tilt(30, rng.uniform(0.7, 1.1))
    tone = _harmonic_tone(np.full(n, f1), harmonics, sample_rate, rng) + _harmonic_tone(
        np.full(n, f2), harmonics, sample_rate, rng
    )
    envelope = np.zeros(n, dtype=np.float32)
    for onset, length in zip(onsets, lengths, strict=False):
        m = min(_samples(length, sample_rate), n - int(onset * sample_rate))
        if m > 0:
            _overlay(envelope, _adsr(m, sample_rate, 0.01, 0.02, 0.9, 0.03), int(onset * sample_rate))
    horn = rng.uniform(1500, 3000)
    out = _filter(tone * envelope, sample_rate, lambda f: _resonance(f, horn, horn) + 0.3)
    return SynthesizedEvent(_normalize(out), onsets.size)


RECIPES: dict[str, Callable[[np.random.Generator, int, float], SynthesizedEvent]] = {
    fn.__name__: fn
    for fn in (
        bell,
        flute,
        plucked_string,
        chord,
        whistle,
        mallet,
        rain,
        wind,
        stream,
        crackling_fire,
        ocean_waves,
        applause,
        knock,
        hand_clap,
        footsteps,
        glass_clink,
        door_slam,
        keyboard_typing,
        male_speech,
        female_speech,
        child_speech,
        whisper,
        laughter,
        singing,
        bird_chirp,
        dog_bark,
        cat_meow,
        frog_croak,
        insect_buzz,
        owl_hoot,
        engine,
        power_drill,
        siren,
        clock_tick,
        vacuum_cleaner,
        car_horn,
    )
}
"""Recipe name -> ``recipe(rng, sample_rate, max_seconds) -> SynthesizedEvent``."""


STYLED_RECIPES: dict[str, type] = {
    **dict.fromkeys(("male_speech", "female_speech", "child_speech", "whisper"), SpeechStyle),
    **dict.fromkeys(("bell", "flute", "plucked_string", "chord", "mallet"), MusicStyle),
}
"""Recipes that take a ``style``, and its type: how a speech-like source talks or how an instrument
plays (recipes draw a random style of their own without one)."""


def synthesize(
    recipe: str,
    rng: np.random.Generator,
    sample_rate: int = 16000,
    max_seconds: float = 10.0,
    style: SpeechStyle | MusicStyle | None = None,
) -> SynthesizedEvent:
    """Renders one random instance of ``recipe`` no longer than ``max_seconds``, in ``style`` when
    given (a :class:`SpeechStyle` or :class:`MusicStyle`, see :data:`STYLED_RECIPES`)."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown sound recipe {recipe!r}; known recipes: {sorted(RECIPES)}")
    if not isinstance(sample_rate, int | np.integer) or sample_rate < 16000:
        # Several classes (glass, birds, whistles) live between 2 and 7 kHz.
        raise ValueError(f"sample_rate must be an integer >= 16000 Hz, got {sample_rate!r}")
    if not max_seconds > 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds!r}")
    if style is None:
        event = RECIPES[recipe](rng, int(sample_rate), float(max_seconds))
    else:
        if not isinstance(style, STYLED_RECIPES.get(recipe, ())):
            raise ValueError(f"recipe {recipe!r} does not take a {type(style).__name__}")
        event = RECIPES[recipe](rng, int(sample_rate), float(max_seconds), style=style)
    limit = _samples(max_seconds, sample_rate)
    if event.waveform.size > limit:  # rounding in a recipe may overshoot by a sample
        event = SynthesizedEvent(event.waveform[:limit], event.units)
    return event


# --------------------------------------------------------------------------------------------
# scene backgrounds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackgroundParams:
    """Drawn parameters of one scene background (an ambience, not a labelled event).

    ``slope_db_per_octave``: colour of the base noise (0 white, -3 pink, -6 brown);
    ``low_hz``/``high_hz``: its band; ``hum_hz`` > 0 adds a mains/motor hum with
    ``hum_harmonics`` partials at ``hum_level`` (relative amplitude); ``babble_level`` > 0 adds
    speech-shaped noise with a syllabic rhythm (distant crowd); ``swell_rate_hz`` and
    ``swell_depth`` slowly modulate the base noise (traffic passing, surf)."""

    slope_db_per_octave: float
    low_hz: float
    high_hz: float
    hum_hz: float = 0.0
    hum_harmonics: int = 4
    hum_level: float = 0.0
    babble_level: float = 0.0
    swell_rate_hz: float = 0.0
    swell_depth: float = 0.0


def render_background(
    params: BackgroundParams, num_samples: int, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """Renders a background texture of unit RMS."""
    high = min(params.high_hz, _BAND_EDGE * sample_rate)
    out = _shaped_noise(
        num_samples,
        sample_rate,
        rng,
        lambda f: _tilt(f, params.slope_db_per_octave) * _highpass(f, params.low_hz) * _lowpass(f, high, 3),
    )
    if params.swell_depth > 0:
        out *= 1 - params.swell_depth * _smooth_random(num_samples, sample_rate, rng, params.swell_rate_hz)
    if params.babble_level > 0:
        # Long-term speech spectrum: a broad peak near 500 Hz falling ~6 dB/octave above it.
        babble = _shaped_noise(
            num_samples, sample_rate, rng, lambda f: _resonance(f, 500.0, 800.0) + 0.3 * _lowpass(f, 3000.0)
        )
        rhythm = sum(_smooth_random(num_samples, sample_rate, rng, rng.uniform(3, 6)) for _ in range(3))
        out += params.babble_level * babble * rhythm
    if params.hum_level > 0 and params.hum_hz > 0:
        harmonics = rng.uniform(0.2, 1.0, params.hum_harmonics) * _spectral_tilt(params.hum_harmonics, 1.0)
        table = _harmonic_table(_band_limited(harmonics, params.hum_hz, sample_rate), rng)
        # A steady hum is periodic: render one period (the pitch rounded to a whole number of
        # samples per period) and tile it, instead of reading the table for every sample.
        period = max(2, int(round(sample_rate / params.hum_hz)))
        cycle = _read_table(table, np.arange(period) / period)
        offset = int(rng.integers(period))
        out += params.hum_level * np.tile(cycle, num_samples // period + 2)[offset : offset + num_samples]
    rms = float(np.sqrt(np.mean(out * out)))
    return (out / rms).astype(np.float32) if rms > 0 else out.astype(np.float32)
