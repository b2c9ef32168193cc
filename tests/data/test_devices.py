"""Simulated recording devices: their table, responses, noise, compression and the DIR bank."""

import dataclasses
import itertools

import numpy as np
import pytest

from hf_audiorep.data.embedded.devices import (
    AUGMENTATION_DEVICES,
    DEVICES,
    Device,
    apply_device,
    device_frequency_response,
    device_impulse_response,
    device_impulse_responses,
    seen_devices,
    unseen_devices,
)

SR = 32000
# Octave bands from 125 Hz to 16 kHz.
EDGES = 125.0 * 2.0 ** np.arange(8)


def _band_profile_db(y: np.ndarray) -> np.ndarray:
    """Energy per octave band relative to the total, in dB."""
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(y.size, 1 / SR)
    bands = np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in itertools.pairwise(EDGES)])
    return 10 * np.log10(bands / bands.sum())


def test_device_table_follows_tau():
    assert [d.name for d in DEVICES] == ["A", "B", "C", "S1", "S2", "S3", "S4", "S5", "S6"]
    assert [d.name for d in unseen_devices()] == ["S4", "S5", "S6"]
    assert {d.name for d in seen_devices()} | {d.name for d in unseen_devices()} == {d.name for d in DEVICES}
    assert len(AUGMENTATION_DEVICES) >= 8
    assert all(d.role == "augmentation" for d in AUGMENTATION_DEVICES)
    assert not {d.name for d in AUGMENTATION_DEVICES} & {d.name for d in DEVICES}


def test_each_device_colours_white_noise_measurably_differently():
    white = np.random.default_rng(0).standard_normal(4 * SR).astype(np.float32) * 0.05
    profiles = {
        d.name: _band_profile_db(apply_device(white, SR, d, np.random.default_rng(1)))
        for d in DEVICES + AUGMENTATION_DEVICES
    }
    for (a, pa), (b, pb) in itertools.combinations(profiles.items(), 2):
        assert np.max(np.abs(pa - pb)) > 1.5, f"devices {a} and {b} sound alike"
    # The reference device is nearly flat in its band; the phones are not.
    reference = profiles["A"] - _band_profile_db(white)
    assert np.ptp(reference[:-1]) < 1.5
    assert np.ptp(profiles["C"] - _band_profile_db(white)) > 6


def test_impulse_response_realises_the_designed_response_at_unit_energy():
    for device in (DEVICES[1], DEVICES[7], AUGMENTATION_DEVICES[0]):
        ir = device_impulse_response(device, SR)
        assert ir.dtype == np.float32 and ir.ndim == 1 and not ir.flags.writeable
        assert np.sum(ir.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)
        assert int(np.argmax(np.abs(ir))) < 8  # minimum phase: the energy comes first
        n = 8192
        freqs = np.fft.rfftfreq(n, 1 / SR)
        band = (freqs > 2 * device.low_hz) & (freqs < 0.5 * device.high_hz)
        measured = 20 * np.log10(np.abs(np.fft.rfft(ir, n))[band])
        designed = 20 * np.log10(device_frequency_response(device, freqs[band], SR))
        offset = np.median(measured - designed)  # the unit-energy normalisation
        assert np.max(np.abs(measured - designed - offset)) < 1.5
    assert device_impulse_response(DEVICES[2], 16000).size < device_impulse_response(DEVICES[2], SR).size


def test_noise_floor_and_compression():
    silence = np.zeros(SR, dtype=np.float32)
    for device in DEVICES:
        noise = apply_device(
            silence, SR, dataclasses.replace(device, compression=None), np.random.default_rng(0)
        )
        level = 20 * np.log10(np.sqrt(np.mean(noise.astype(np.float64) ** 2)))
        assert level == pytest.approx(device.noise_dbfs, abs=0.5)
    # Spiky input: the compressing phone flattens the peaks and leaves the quiet samples alone.
    rng = np.random.default_rng(2)
    x = rng.standard_normal(SR).astype(np.float32) * 0.01
    x[rng.integers(0, SR, 20)] = 0.5
    phone = DEVICES[2]
    assert phone.compression is not None
    squashed = apply_device(x, SR, phone, np.random.default_rng(3))
    linear = apply_device(x, SR, dataclasses.replace(phone, compression=None), np.random.default_rng(3))
    assert np.max(np.abs(squashed)) < 0.5 * np.max(np.abs(linear))
    quiet = np.abs(linear) < 0.2 * np.max(np.abs(squashed))
    np.testing.assert_allclose(squashed[quiet], linear[quiet], rtol=0.02, atol=1e-6)


def test_apply_device_is_deterministic_and_keeps_the_length():
    x = np.random.default_rng(0).standard_normal(12345).astype(np.float32) * 0.1
    first = apply_device(x, SR, DEVICES[4], np.random.default_rng(5))
    assert first.shape == x.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, apply_device(x, SR, DEVICES[4], np.random.default_rng(5)))
    assert not np.array_equal(first, apply_device(x, SR, DEVICES[4], np.random.default_rng(6)))
    with pytest.raises(ValueError, match="1-D"):
        apply_device(x.reshape(3, -1), SR, DEVICES[0], np.random.default_rng(0))


def test_dir_bank_holds_no_corpus_device_and_refuses_unseen_devices():
    bank = device_impulse_responses(SR)
    assert bank.shape[0] == len(AUGMENTATION_DEVICES) and bank.dtype == np.float32
    for device in DEVICES:
        ir = device_impulse_response(device, SR)
        assert not any(np.allclose(row, ir, atol=1e-3) for row in bank)
    assert device_impulse_responses(SR, seen_devices()).shape[0] == len(seen_devices())
    with pytest.raises(ValueError, match="S4"):
        device_impulse_responses(SR, DEVICES)
    with pytest.raises(ValueError, match="at least one"):
        device_impulse_responses(SR, ())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"role": "test"}, "role"),
        ({"low_hz": 20000.0}, "low_hz < high_hz"),
        ({"compression": 0.0}, "compression"),
    ],
)
def test_device_rejects_bad_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Device(**{**dataclasses.asdict(DEVICES[0]), **kwargs})
