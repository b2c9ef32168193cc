"""Simulated recording devices checked by value: the DIR bank's draws and their ranges, the equaliser's
statistics and ends, the band's known gains, a device's impulse, gain and compression, and the checks
on a device's fields (hf_audiorep/data/embedded/devices.py)."""

import dataclasses
import warnings

import numpy as np
import pytest

from hf_audiorep.data.embedded.devices import (
    AUGMENTATION_DEVICES,
    DEVICES,
    Device,
    _draw_augmentation_devices,
    _equaliser_db,
    apply_device,
    device_frequency_response,
    device_impulse_response,
)

SR = 32000
KNOTS_HZ = 62.5 * 2.0 ** (np.arange(17) / 2)  # the documented half-octave knots, 62.5 Hz to 16 kHz


def _device(**fields) -> Device:
    """A test device: flat (no equaliser), silent (no self-noise), linear, 100 Hz to 4 kHz."""
    base = Device("T", "seen", 100.0, 4000.0, 0.0, 7, noise_dbfs=-np.inf)
    return dataclasses.replace(base, **fields)


def _log_position(values, low, high) -> np.ndarray:
    """Where ``values`` lie between ``low`` and ``high`` on a log axis: 0 at ``low``, 1 at ``high``."""
    return np.log(np.asarray(values) / low) / np.log(high / low)


# --- the DIR bank ---------------------------------------------------------------------------------------


def test_augmentation_bank_is_fixed_and_a_longer_draw_only_extends_it():
    # The bank has a seed of its own: every call (and every corpus seed) gives the same devices, and
    # asking for more devices appends to the bank instead of redrawing it.
    assert _draw_augmentation_devices(12) == AUGMENTATION_DEVICES
    assert _draw_augmentation_devices(20)[:12] == AUGMENTATION_DEVICES
    assert [d.name for d in AUGMENTATION_DEVICES] == [f"M{i:02d}" for i in range(1, 13)]
    assert [d.eq_seed for d in AUGMENTATION_DEVICES] == list(range(1000, 1012))
    # Pinned: a changed bank changes what every DIR-augmented run hears, so it must be a deliberate change.
    first, last = AUGMENTATION_DEVICES[0], AUGMENTATION_DEVICES[-1]
    assert (first.low_hz, first.high_hz, first.eq_depth_db) == pytest.approx(
        (258.61766723912, 13248.25696699348, 2.486692269340487), rel=1e-9
    )
    assert (last.low_hz, last.high_hz, last.eq_depth_db) == pytest.approx(
        (353.4333487079629, 5035.702006026253, 2.003919163245118), rel=1e-9
    )
    # What the bank leaves at its defaults: quiet, linear, unit sensitivity.
    assert {(d.role, d.gain_db, d.noise_dbfs, d.compression) for d in AUGMENTATION_DEVICES} == {
        ("augmentation", 0.0, -90.0, None)
    }


def test_augmentation_devices_spread_over_their_documented_ranges():
    many = _draw_augmentation_devices(2000)
    low = np.array([d.low_hz for d in many])
    high = np.array([d.high_hz for d in many])
    depth = np.array([d.eq_depth_db for d in many])
    # Band edges log-uniform in [40, 400] Hz and [5, 15.5] kHz, equaliser depth uniform in [2, 7] dB.
    for name, position in (
        ("low_hz", _log_position(low, 40.0, 400.0)),
        ("high_hz", _log_position(high, 5000.0, 15500.0)),
        ("eq_depth_db", (depth - 2.0) / 5.0),
    ):
        assert position.min() >= 0.0 and position.max() <= 1.0, f"{name} leaves its range"
        # 2000 draws reach within half a percent of both ends ...
        assert position.min() < 0.005 and position.max() > 0.995, f"{name} does not reach its ends"
        # ... and fill the range evenly (log-uniform edges: uniform on the log axis; a draw uniform in Hz
        # would put the median of low_hz at 0.74 of the log range).
        assert np.median(position) == pytest.approx(0.5, abs=0.05), name
        assert np.histogram(position, bins=4, range=(0, 1))[0].min() > 400, name
    # Every device its own equaliser, none shared with the corpus's devices.
    seeds = [d.eq_seed for d in many]
    assert len(set(seeds)) == len(seeds)
    assert not set(seeds) & {d.eq_seed for d in DEVICES}


# --- the equaliser --------------------------------------------------------------------------------------


def test_equaliser_knots_have_zero_mean_and_the_depth_as_standard_deviation():
    devices = [_device(eq_depth_db=3.0, eq_seed=seed) for seed in range(400)]
    values = np.stack([_equaliser_db(device, KNOTS_HZ) for device in devices])
    # 6800 draws: the mean's standard error is 0.04 dB, the standard deviation's under 1%.
    assert np.mean(values) == pytest.approx(0.0, abs=0.15)
    assert np.std(values) == pytest.approx(3.0, rel=0.03)
    # The seed fixes the curve; another seed gives another curve.
    device = _device(eq_depth_db=3.0, eq_seed=11)
    np.testing.assert_array_equal(_equaliser_db(device, KNOTS_HZ), _equaliser_db(device, KNOTS_HZ))
    assert not np.allclose(_equaliser_db(device, KNOTS_HZ), _equaliser_db(_device(eq_depth_db=3.0), KNOTS_HZ))


def test_equaliser_is_flat_beyond_its_outer_knots_and_natural_at_them():
    h = 1e-3  # octaves, for the second difference
    for seed in range(5):
        device = _device(eq_depth_db=6.0, eq_seed=seed)
        below = _equaliser_db(device, np.array([0.0, 1.0, 20.0, 40.0, 62.5]))
        above = _equaliser_db(device, np.array([16000.0, 18000.0, 24000.0, 96000.0]))
        assert np.ptp(below) < 1e-9 and np.ptp(above) < 1e-9, "the spline's extrapolation leaks out"
        # Inside the outer half-octaves the curve still moves: the flat part starts at the outer knots.
        first = _equaliser_db(device, np.geomspace(KNOTS_HZ[0], KNOTS_HZ[1], 9))
        last = _equaliser_db(device, np.geomspace(KNOTS_HZ[-2], KNOTS_HZ[-1], 9))
        assert np.ptp(first) > 0.05 and np.ptp(last) > 0.05
        # A natural spline ends without curvature (a not-a-knot one, at this depth, curves there by tens
        # to hundreds of dB/octave^2), so the curve runs into its flat extension without a bend.
        for end, step in ((KNOTS_HZ[0], h), (KNOTS_HZ[-1], -h)):
            v = _equaliser_db(device, end * 2.0 ** (step * np.arange(3)))
            curvature = (v[0] - 2 * v[1] + v[2]) / h**2
            assert abs(curvature) < 5.0, f"seed {seed}: curvature {curvature:.1f} dB/octave^2 at {end} Hz"


# --- the frequency response -----------------------------------------------------------------------------


def test_flat_device_response_is_its_band_with_known_gains():
    device = _device()  # 100 Hz to 4 kHz, second-order high-pass, fourth-order low-pass, flat equaliser
    freqs = np.array([25.0, 50.0, 100.0, 632.5, 4000.0, 8000.0, 16000.0])
    expected = np.array(
        [
            1 / np.sqrt(1 + 4.0**4),  # two octaves below the high-pass corner: about -24 dB
            1 / np.sqrt(1 + 2.0**4),  # one octave below: about -12 dB
            1 / np.sqrt(2),  # the corner: -3 dB
            1.0,  # mid-band
            1 / np.sqrt(2),  # the low-pass corner: -3 dB
            1 / np.sqrt(1 + 2.0**8),  # one octave above: about -24 dB
            1 / np.sqrt(1 + 4.0**8),  # two octaves above: about -48 dB
        ]
    )
    response = device_frequency_response(device, freqs, SR)
    assert response.dtype == np.float64
    np.testing.assert_allclose(response, expected, rtol=1e-3)
    # At 0 Hz the high-pass blocks everything, without a division by zero.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert device_frequency_response(device, [0.0], SR)[0] < 1e-8
    # The low-pass never passes 0.45 * sample_rate: a 15.5 kHz device at 16 kHz is cut at 7.2 kHz.
    wide = _device(high_hz=15500.0)
    assert device_frequency_response(wide, [7200.0], 16000)[0] == pytest.approx(1 / np.sqrt(2), rel=1e-3)
    assert device_frequency_response(wide, [7200.0], SR)[0] == pytest.approx(1.0, abs=2e-3)


def test_response_in_db_is_the_band_plus_the_equaliser():
    freqs = np.concatenate([KNOTS_HZ, [30.0, 300.0, 3000.0, 12000.0]])
    for device in (DEVICES[2], AUGMENTATION_DEVICES[4], _device(eq_depth_db=5.0, eq_seed=3)):
        flat = dataclasses.replace(device, eq_depth_db=0.0)
        gain_db = 20 * np.log10(device_frequency_response(device, freqs, SR))
        band_db = 20 * np.log10(device_frequency_response(flat, freqs, SR))
        np.testing.assert_allclose(gain_db - band_db, _equaliser_db(device, freqs), atol=1e-9)
        # And it is no small correction: somewhere it moves the response by half the depth or more.
        assert np.max(np.abs(gain_db - band_db)) > 0.5 * device.eq_depth_db


# --- apply_device ---------------------------------------------------------------------------------------


def test_a_silent_linear_device_records_an_impulse_as_its_impulse_response_times_its_sensitivity():
    n = 2000
    impulse = np.zeros(n, dtype=np.float32)
    impulse[0] = 1.0
    for gain_db in (0.0, 6.0, -9.0):
        device = _device(gain_db=gain_db, eq_depth_db=4.0)
        recorded = apply_device(impulse, SR, device, np.random.default_rng(0))
        ir = device_impulse_response(device, SR)
        assert recorded.shape == (n,) and recorded.dtype == np.float32
        # (FFT convolution in float32: errors of 1e-8 against a peak of 0.5)
        np.testing.assert_allclose(recorded[: ir.size], 10 ** (gain_db / 20) * ir, rtol=1e-5, atol=1e-7)
        assert np.max(np.abs(recorded[ir.size :])) < 1e-6
    # The impulse response's length is kept: an impulse near the end is cut, not wrapped to the start.
    late = np.zeros(n, dtype=np.float32)
    late[-3] = 1.0
    recorded = apply_device(late, SR, _device(), np.random.default_rng(0))
    assert np.max(np.abs(recorded[:-3])) < 1e-6
    np.testing.assert_allclose(recorded[-3:], device_impulse_response(_device(), SR)[:3], rtol=1e-5)


def test_sensitivity_scales_a_sine_by_its_gain_in_db():
    t = np.arange(SR // 4) / SR
    sine = (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    reference = apply_device(sine, SR, _device(), np.random.default_rng(0))
    for gain_db in (6.0, -12.0):
        louder = apply_device(sine, SR, _device(gain_db=gain_db), np.random.default_rng(0))
        np.testing.assert_allclose(louder, reference * np.float32(10 ** (gain_db / 20)), rtol=1e-5, atol=1e-9)


def test_the_recording_depends_only_on_the_float32_samples():
    x = np.random.default_rng(4).standard_normal(5000) * 0.1
    for device in (DEVICES[0], DEVICES[2]):
        as_float64 = apply_device(x, SR, device, np.random.default_rng(9))
        as_float32 = apply_device(x.astype(np.float32), SR, device, np.random.default_rng(9))
        assert as_float64.dtype == np.float32
        np.testing.assert_array_equal(as_float64, as_float32)


def test_compression_knee_is_a_multiple_of_the_clips_rms():
    t = np.arange(SR // 4) / SR
    sine = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    linear = apply_device(sine, SR, _device(), np.random.default_rng(0))
    rms = np.sqrt(np.mean(linear.astype(np.float64) ** 2))
    for compression in (0.5, 2.0):
        squashed = apply_device(sine, SR, _device(compression=compression), np.random.default_rng(0))
        knee = compression * rms
        np.testing.assert_allclose(squashed, knee * np.tanh(linear / knee), rtol=1e-4, atol=1e-7)
        assert np.max(np.abs(squashed)) < knee


def test_silence_and_empty_clips_pass_a_compressing_device_cleanly():
    phone = _device(compression=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 knee, no mean of an empty clip
        silent = apply_device(np.zeros(800, dtype=np.float32), SR, phone, np.random.default_rng(0))
        empty = apply_device(np.zeros(0, dtype=np.float32), SR, DEVICES[2], np.random.default_rng(0))
    np.testing.assert_array_equal(silent, np.zeros(800, dtype=np.float32))
    assert empty.shape == (0,) and empty.dtype == np.float32


def test_self_noise_is_added_to_the_recording_whatever_the_signal():
    # The noise depends on the generator only: the recording of a clip is the noiseless recording
    # plus the recording of silence.
    x = (0.05 * np.random.default_rng(1).standard_normal(4000)).astype(np.float32)
    device = dataclasses.replace(DEVICES[3], compression=None)
    noisy = apply_device(x, SR, device, np.random.default_rng(2))
    clean = apply_device(x, SR, dataclasses.replace(device, noise_dbfs=-np.inf), np.random.default_rng(2))
    noise = apply_device(np.zeros_like(x), SR, device, np.random.default_rng(2))
    np.testing.assert_allclose(noisy, clean + noise, atol=1e-7)


# --- a device's fields ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"low_hz": 0.0}, r"device 'A': need 0 < low_hz < high_hz, got 0.0, 15500.0"),
        ({"low_hz": -20.0}, r"need 0 < low_hz < high_hz, got -20.0"),
        ({"low_hz": 15500.0}, r"need 0 < low_hz < high_hz, got 15500.0, 15500.0"),
        ({"high_hz": 10.0}, r"need 0 < low_hz < high_hz, got 20.0, 10.0"),
        ({"compression": -1.0}, r"device 'A': compression must be positive, got -1.0"),
        ({"role": "unheard"}, r"device 'A': role must be one of .*'augmentation'.*got 'unheard'"),
    ],
)
def test_each_bad_field_is_named(fields, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(DEVICES[0], **fields)


def test_fields_at_the_edge_of_their_ranges_are_accepted():
    # A high-pass below 1 Hz (a measurement microphone) and a knee below the clip's RMS (a hard
    # limiter) are devices too; the checks ask only for a positive corner and knee.
    assert dataclasses.replace(DEVICES[0], low_hz=0.5).low_hz == 0.5
    assert dataclasses.replace(DEVICES[0], compression=0.5).compression == 0.5
    assert dataclasses.replace(DEVICES[0], low_hz=15499.0).low_hz == 15499.0


def test_a_negative_equaliser_depth_is_named():
    with pytest.raises(ValueError, match=r"device 'A': eq_depth_db must be >= 0, got -1.0"):
        dataclasses.replace(DEVICES[0], eq_depth_db=-1.0)
