"""Simulated recording devices: what a microphone and its signal chain do to a scene.

TAU Urban Acoustic Scenes is recorded in parallel through a reference binaural microphone (device A),
two phones (B, C) and six devices simulated from A (S1-S6); S4-S6 occur only in the evaluation data,
so a system must generalise to devices it never heard. The scene corpus (:mod:`.scene_corpus`) mirrors
that: each clip goes through one of :data:`DEVICES`, and the ``unseen`` ones never occur in training.

A device is deterministic apart from its noise:

- a *frequency response*: a smooth random equaliser curve (values drawn at half-octave knots from the
  device's own seed and joined by a cubic spline in log frequency) times its band limits (a
  second-order high-pass, a fourth-order low-pass), realised as a short minimum-phase FIR filter, the
  *device impulse response*, normalised to unit energy so that it keeps the power of white noise;
- a sensitivity (a gain);
- a *noise floor*: self-noise at a fixed level in dBFS (not relative to the signal, as a real
  preamplifier's), coloured by a spectral slope;
- optionally *compression*: a tanh soft clipper whose knee sits at a multiple of the clip's RMS, the
  automatic gain control and limiter of a phone.

Device impulse-response (DIR) augmentation convolves training clips with the impulse responses of
*other* microphones (CP-JKU use the MicIRP recordings). :func:`device_impulse_responses` gives such
a bank: by default the :data:`AUGMENTATION_DEVICES`, drawn from the same family as the corpus's
devices but none of them, so that the augmentation neither copies a training device nor leaks an
unseen test device into training. It refuses the unseen devices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import scipy.interpolate
import scipy.signal

from .synth import _BAND_EDGE, _highpass, _lowpass, _shaped_noise, _tilt

__all__ = [
    "AUGMENTATION_DEVICES",
    "DEVICES",
    "DEVICE_ROLES",
    "Device",
    "apply_device",
    "device_frequency_response",
    "device_impulse_response",
    "device_impulse_responses",
    "seen_devices",
    "unseen_devices",
]

DEVICE_ROLES = ("seen", "unseen", "augmentation")
"""``seen``: in every split; ``unseen``: only in ``test`` and ``heldout``; ``augmentation``: never
in the corpus, only in the DIR bank."""

# The equaliser's knots: half-octave steps from 62.5 Hz to 16 kHz.
_EQ_KNOTS_HZ = 62.5 * 2.0 ** (np.arange(17) / 2)
# The impulse response's length: 16 ms resolves the equaliser's half-octave detail down to ~100 Hz.
_IR_SECONDS = 0.016


@dataclass(frozen=True)
class Device:
    """A simulated recording device (see the module docstring); ``eq_seed`` fixes its equaliser curve
    (``eq_depth_db``: the curve's standard deviation), ``low_hz`` / ``high_hz`` its band, ``gain_db``
    its sensitivity, ``noise_dbfs`` / ``noise_slope_db_per_octave`` its self-noise, ``compression``
    the soft clipper's knee as a multiple of the clip's RMS (``None``: linear)."""

    name: str
    role: str
    low_hz: float
    high_hz: float
    eq_depth_db: float
    eq_seed: int
    gain_db: float = 0.0
    noise_dbfs: float = -90.0
    noise_slope_db_per_octave: float = 0.0
    compression: float | None = None

    def __post_init__(self):
        if self.role not in DEVICE_ROLES:
            raise ValueError(f"device {self.name!r}: role must be one of {DEVICE_ROLES}, got {self.role!r}")
        if not 0 < self.low_hz < self.high_hz:
            raise ValueError(
                f"device {self.name!r}: need 0 < low_hz < high_hz, got {self.low_hz}, {self.high_hz}"
            )
        # The depth is a standard deviation: a negative one would only fail at the first response, in numpy.
        if not self.eq_depth_db >= 0:
            raise ValueError(f"device {self.name!r}: eq_depth_db must be >= 0, got {self.eq_depth_db}")
        if self.compression is not None and not self.compression > 0:
            raise ValueError(f"device {self.name!r}: compression must be positive, got {self.compression}")

    @property
    def seen(self) -> bool:
        return self.role == "seen"


DEVICES: tuple[Device, ...] = (
    # A: the reference binaural microphone and recorder, nearly flat and quiet.
    Device("A", "seen", 20.0, 15500.0, 0.5, 101, noise_dbfs=-88.0, noise_slope_db_per_octave=-3.0),
    # B, C: phones, band-limited, coloured, noisier, with automatic gain control.
    Device("B", "seen", 150.0, 9000.0, 3.0, 102, -2.0, -66.0, 0.0, compression=2.5),
    Device("C", "seen", 250.0, 7500.0, 4.0, 103, 1.0, -60.0, -1.5, compression=2.0),
    Device("S1", "seen", 100.0, 11000.0, 4.0, 104, 0.0, -72.0, -3.0),
    Device("S2", "seen", 300.0, 6000.0, 3.0, 105, -1.0, -62.0, 0.0, compression=3.0),
    Device("S3", "seen", 80.0, 13000.0, 6.0, 106, 2.0, -76.0, -2.0),
    Device("S4", "unseen", 200.0, 8000.0, 5.0, 107, -3.0, -58.0, 0.0, compression=2.2),
    Device("S5", "unseen", 400.0, 5000.0, 4.0, 108, 1.0, -66.0, -4.0),
    Device("S6", "unseen", 60.0, 10000.0, 7.0, 109, 0.0, -64.0, -1.0, compression=1.8),
)
"""The corpus's devices, after TAU's A, B, C, S1-S6 (S4-S6 unseen in training)."""


def _draw_augmentation_devices(count: int) -> tuple[Device, ...]:
    # A fixed seed of its own: the bank is the same whatever the corpus's seed.
    rng = np.random.default_rng(np.random.SeedSequence(20230601))
    devices = []
    for i in range(count):
        low = float(np.exp(rng.uniform(np.log(40.0), np.log(400.0))))
        high = float(np.exp(rng.uniform(np.log(5000.0), np.log(15500.0))))
        depth = float(rng.uniform(2.0, 7.0))
        devices.append(Device(f"M{i + 1:02d}", "augmentation", low, high, depth, 1000 + i))
    return tuple(devices)


AUGMENTATION_DEVICES: tuple[Device, ...] = _draw_augmentation_devices(12)
"""Microphones that record nothing in the corpus: the default DIR augmentation bank."""


def seen_devices() -> tuple[Device, ...]:
    return tuple(d for d in DEVICES if d.seen)


def unseen_devices() -> tuple[Device, ...]:
    return tuple(d for d in DEVICES if d.role == "unseen")


def _equaliser_db(device: Device, freqs: np.ndarray) -> np.ndarray:
    knots = np.log2(_EQ_KNOTS_HZ)
    values = np.random.default_rng(device.eq_seed).normal(0.0, device.eq_depth_db, knots.size)
    spline = scipy.interpolate.CubicSpline(knots, values, bc_type="natural")
    # Flat beyond the outer knots: a spline's extrapolation runs away.
    return spline(np.clip(np.log2(np.maximum(freqs, 1.0)), knots[0], knots[-1]))


def device_frequency_response(device: Device, freqs: np.ndarray, sample_rate: int) -> np.ndarray:
    """The magnitude response the device's impulse response is designed to (before the unit-energy
    normalisation), at ``freqs`` (Hz). The low-pass never passes ``0.45 * sample_rate``."""
    freqs = np.asarray(freqs, dtype=np.float64)
    high = min(device.high_hz, _BAND_EDGE * sample_rate)
    band = _highpass(freqs, device.low_hz, 2) * _lowpass(freqs, high, 4)
    return band * 10 ** (_equaliser_db(device, freqs) / 20)


@functools.lru_cache(maxsize=64)
def device_impulse_response(device: Device, sample_rate: int) -> np.ndarray:
    """The device's minimum-phase FIR impulse response at ``sample_rate`` (unit energy, read-only)."""
    taps = int(_IR_SECONDS * sample_rate) | 1  # odd: a type-I linear-phase prototype
    grid = np.linspace(0.0, sample_rate / 2, 1025)
    prototype = scipy.signal.firwin2(
        taps, grid, device_frequency_response(device, grid, sample_rate), fs=sample_rate
    )
    # Microphones respond at once and ring after, as a minimum-phase filter does; the linear-phase
    # prototype would delay everything by half its length and ring before the onset.
    ir = scipy.signal.minimum_phase(prototype, method="homomorphic", half=False)
    ir = (ir / np.sqrt(np.sum(ir * ir))).astype(np.float32)
    ir.flags.writeable = False
    return ir


def device_impulse_responses(
    sample_rate: int, devices: tuple[Device, ...] = AUGMENTATION_DEVICES
) -> np.ndarray:
    """``(len(devices), taps)`` float32 bank of impulse responses for DIR augmentation
    (:func:`hf_audiorep.data.augment.device_impulse_response`), by default :data:`AUGMENTATION_DEVICES`.

    Unseen devices are refused: convolving training clips with them would put the test-only devices
    into training. Seen devices are allowed (they are in training already), but then the augmentation
    adds no new device.
    """
    if not devices:
        raise ValueError("devices must name at least one device")
    unseen = [d.name for d in devices if d.role == "unseen"]
    if unseen:
        raise ValueError(f"devices: {unseen} are unseen in training; their responses must not augment it")
    return np.stack([device_impulse_response(d, int(sample_rate)) for d in devices])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def apply_device(
    waveform: np.ndarray, sample_rate: int, device: Device, rng: np.random.Generator
) -> np.ndarray:
    """``waveform`` as ``device`` records it: filtered by its impulse response, scaled by its
    sensitivity, with its self-noise added and through its compression. Same length, float32."""
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"waveform must be 1-D, got shape {x.shape}")
    ir = device_impulse_response(device, int(sample_rate))
    y = scipy.signal.oaconvolve(x, ir)[: x.size].astype(np.float32)
    y *= np.float32(10 ** (device.gain_db / 20))
    slope = device.noise_slope_db_per_octave
    noise = _shaped_noise(x.size, sample_rate, rng, lambda f: _tilt(f, slope))
    y += noise * np.float32(10 ** (device.noise_dbfs / 20))
    if device.compression is not None:
        knee = np.float32(device.compression * _rms(y))
        if knee > 0:
            y = knee * np.tanh(y / knee)
    return y.astype(np.float32)
