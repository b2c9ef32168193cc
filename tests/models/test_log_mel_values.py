"""CP-Mobile's STFT log-mel (hf_audiorep/modeling/feature_extraction_log_mel.py) against a computation written
out here in numpy: centred frames reflected at the clip's ends, the Hann window zero-padded to the FFT, the
power spectrum, the HTK and Kaldi mel triangles by hand, the log offset and the normalisation; and the
extractor's geometry (frame counts, the crop point, the shortest clip) by counting.

Tiny settings (8 kHz, a 64-point FFT, 10 mel bins) so that every value is computed in milliseconds."""

import math

import numpy as np
import pytest
import torch

from hf_audiorep.modeling.feature_extraction_log_mel import (
    LogMelFeatureExtractor,
    _log_mel_constants,
    stft_log_mel,
)

SR = 8000
TINY = dict(sample_rate=SR, n_fft=64, win_length=48, hop_length=16, num_mel_bins=10)
# The extractor takes the rate as `sampling_rate`, the function as `sample_rate`.
TINY_FE = {**{k: v for k, v in TINY.items() if k != "sample_rate"}, "sampling_rate": SR}
# CP-JKU DCASE23's variant at the same size: pre-emphasis, symmetric window, Kaldi banks below Nyquist.
DCASE23 = dict(preemphasis=0.97, periodic_window=False, mel_scale="kaldi", f_min=150.0, f_max=3500.0)
ATOL = 2e-4  # float32 STFT and bank against float64 numpy, in log units on energies far above the offset


def hann(n: int, periodic: bool) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / (n if periodic else n - 1))


def mel_banks(n_fft: int, sr: int, n_mels: int, f_min: float, f_max: float, scale: str) -> np.ndarray:
    """(n_fft // 2 + 1, n_mels) triangles: HTK's on the Hz axis between mel-spaced corners, Kaldi's on the
    mel axis (``1127 ln(1 + f / 700)``)."""
    bins = np.arange(n_fft // 2 + 1) * sr / n_fft
    if scale == "htk":
        corners_mel = np.linspace(
            2595 * np.log10(1 + f_min / 700), 2595 * np.log10(1 + f_max / 700), n_mels + 2
        )
        corners, axis = 700 * (10 ** (corners_mel / 2595) - 1), bins
    else:
        corners = np.linspace(1127 * np.log(1 + f_min / 700), 1127 * np.log(1 + f_max / 700), n_mels + 2)
        axis = 1127 * np.log(1 + bins / 700)
    banks = np.zeros((len(bins), n_mels))
    for m in range(n_mels):
        left, centre, right = corners[m : m + 3]
        rising, falling = (axis - left) / (centre - left), (right - axis) / (right - centre)
        banks[:, m] = np.clip(np.minimum(rising, falling), 0, None)
    return banks


def log_mel_by_hand(
    x: np.ndarray,
    sample_rate: int = SR,
    n_fft: int = 64,
    win_length: int = 48,
    hop_length: int = 16,
    num_mel_bins: int = 10,
    f_min: float = 0.0,
    f_max: float | None = None,
    mel_scale: str = "htk",
    periodic_window: bool = True,
    preemphasis: float = 0.0,
    log_offset: float = 1e-5,
) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if preemphasis > 0:
        x = x[1:] - preemphasis * x[:-1]  # drops the first sample
    pad = n_fft // 2
    padded = np.pad(x, pad, mode="reflect")  # [2, 1, 0, 1, 2]: the edge sample is not repeated
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left : left + win_length] = hann(win_length, periodic_window)
    frames = np.stack(
        [padded[t * hop_length : t * hop_length + n_fft] for t in range(1 + len(x) // hop_length)]
    )
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    f_max = sample_rate / 2 if f_max is None else f_max
    banks = mel_banks(n_fft, sample_rate, num_mel_bins, f_min, f_max, mel_scale)
    return np.log(power @ banks + log_offset)


def signal(n: int, seed: int = 0, tone: float = 1000.0) -> np.ndarray:
    """A tone in noise: energy in every mel band, so the log sits far above the offset."""
    t = np.arange(n) / SR
    noise = 0.1 * np.random.default_rng(seed).standard_normal(n)
    return (0.5 * np.sin(2 * np.pi * tone * t) + noise).astype(np.float32)


def features(fe, clips, **kwargs):
    out = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt", **kwargs)
    return out["input_values"], out["attention_mask"]


# ------------------------------------------------------------------------------------------------------------
# stft_log_mel
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        DCASE23,
        # Every setting away from its default, so that an argument dropped or swapped shows.
        dict(f_min=300.0, f_max=3000.0, log_offset=0.5, hop_length=20),
        dict(win_length=64, periodic_window=False, preemphasis=0.5, mel_scale="kaldi"),
    ],
    ids=["dcase24", "dcase23", "offset_and_band", "full_window_kaldi"],
)
def test_stft_log_mel_matches_the_numpy_computation(settings):
    clips = np.stack([signal(403, seed=0), signal(403, seed=1, tone=2500.0)])
    ours = stft_log_mel(torch.from_numpy(clips), **{**TINY, **settings})
    assert ours.dtype == torch.float32
    for row, clip in enumerate(clips):
        expected = log_mel_by_hand(clip, **settings)
        assert ours[row].shape == expected.shape
        np.testing.assert_allclose(ours[row].numpy(), expected, rtol=0, atol=ATOL)


def test_stft_log_mel_frame_count_and_the_unbatched_path():
    x = signal(400)
    out = stft_log_mel(torch.from_numpy(x), **TINY)
    assert out.shape == (1 + 400 // 16, 10)  # one frame centred on every hop-th sample
    torch.testing.assert_close(out, stft_log_mel(torch.from_numpy(x)[None], **TINY)[0], rtol=0, atol=0)
    # Pre-emphasis drops a sample: 399 // 16 = 24, one frame fewer than 400 // 16.
    assert stft_log_mel(torch.from_numpy(x), **TINY, preemphasis=0.97).shape == (1 + 399 // 16, 10)
    # float64 input gives float32 output of the same values.
    torch.testing.assert_close(stft_log_mel(torch.from_numpy(x).double(), **TINY), out, rtol=0, atol=1e-5)


def test_stft_log_mel_digital_silence_is_the_log_of_the_offset():
    out = stft_log_mel(torch.zeros(200), **TINY, log_offset=1e-3)
    torch.testing.assert_close(out, torch.full_like(out, math.log(1e-3)), rtol=0, atol=1e-6)


@pytest.mark.parametrize("preemphasis", [0.0, 0.97])
def test_stft_log_mel_shortest_clip_is_one_more_than_half_the_fft(preemphasis):
    shortest = 64 // 2 + 1 + (preemphasis > 0)  # reflect padding of 32 needs 33 samples after pre-emphasis
    x = torch.from_numpy(signal(shortest))
    assert stft_log_mel(x, **TINY, preemphasis=preemphasis).shape == (
        1 + (shortest - (preemphasis > 0)) // 16,
        10,
    )
    with pytest.raises(ValueError, match=f"has {shortest - 1} samples, too few to reflect-pad 32"):
        stft_log_mel(x[:-1], **TINY, preemphasis=preemphasis)


def test_stft_log_mel_rejects_bad_input():
    with pytest.raises(TypeError, match="floating-point torch.Tensor"):
        stft_log_mel(torch.ones(200, dtype=torch.int16), **TINY)
    with pytest.raises(TypeError, match="floating-point torch.Tensor"):
        stft_log_mel(np.ones(200, np.float32), **TINY)
    with pytest.raises(ValueError, match=r"\(batch, samples\) or \(samples,\), got \(1, 1, 200\)"):
        stft_log_mel(torch.ones(1, 1, 200), **TINY)


# ------------------------------------------------------------------------------------------------------------
# Settings: what is accepted at each edge, what is refused
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        dict(f_min=0.0),
        dict(f_max=4000.0),  # Nyquist itself
        dict(f_min=3999.0, f_max=4000.0),
        dict(preemphasis=1.0),
        dict(preemphasis=0.0),
        dict(win_length=64),  # the window may fill the FFT
        dict(n_fft=2, win_length=2, hop_length=1, num_mel_bins=1),  # the smallest FFT
        dict(log_offset=1e-30),
    ],
)
@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")  # a 1 Hz band, a 2-bin FFT
def test_settings_at_their_edges_are_accepted(settings):
    full = {**TINY, **settings}
    x = torch.from_numpy(signal(400))
    drop = int(full.get("preemphasis", 0.0) > 0)
    assert stft_log_mel(x, **full).shape == (1 + (400 - drop) // full["hop_length"], full["num_mel_bins"])
    fe = LogMelFeatureExtractor(**{**TINY_FE, **settings})
    assert fe(signal(400), sampling_rate=SR, return_tensors="pt")["input_values"].shape[-1] == fe.num_mel_bins


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(sample_rate=0), "`sample_rate` must be a positive integer, got 0"),
        (dict(sample_rate=8000.0), "`sample_rate` must be a positive integer, got 8000.0"),
        (dict(n_fft=True), "`n_fft` must be a positive integer, got True"),
        (dict(win_length=-1), "`win_length` must be a positive integer, got -1"),
        (dict(hop_length=0), "`hop_length` must be a positive integer, got 0"),
        (dict(num_mel_bins=0), "`num_mel_bins` must be a positive integer, got 0"),
        (dict(n_fft=1, win_length=1), r"`win_length` \(1\) must not exceed `n_fft` \(1, at least 2\)"),
        (dict(win_length=65), r"`win_length` \(65\) must not exceed `n_fft` \(64, at least 2\)"),
        (dict(f_min=-1.0), r"`f_min` must be in \[0, 4000.0\) Hz, got -1.0"),
        (dict(f_min=4000.0), r"`f_min` must be in \[0, 4000.0\) Hz, got 4000.0"),
        (dict(f_min=math.nan), r"`f_min` must be in \[0, 4000.0\) Hz, got nan"),
        (dict(f_min=100.0, f_max=100.0), r"`f_max` must be None or in \(f_min=100.0, 4000.0\] Hz, got 100.0"),
        (dict(f_max=4000.5), r"`f_max` must be None or in \(f_min=0.0, 4000.0\] Hz, got 4000.5"),
        (dict(f_max=math.inf), r"`f_max` must be None or in \(f_min=0.0, 4000.0\] Hz, got inf"),
        (dict(mel_scale="slaney"), r"`mel_scale` must be one of \('htk', 'kaldi'\), got 'slaney'"),
        (dict(preemphasis=-0.01), r"`preemphasis` must be in \[0, 1\], got -0.01"),
        (dict(preemphasis=1.01), r"`preemphasis` must be in \[0, 1\], got 1.01"),
        (dict(preemphasis=math.nan), r"`preemphasis` must be in \[0, 1\], got nan"),
        (dict(log_offset=0.0), "`log_offset` must be a positive finite number, got 0.0"),
        (dict(log_offset=math.inf), "`log_offset` must be a positive finite number, got inf"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, match):
    with pytest.raises(ValueError, match=match):
        stft_log_mel(torch.zeros(400), **{**TINY, **settings})
    fe_settings = {("sampling_rate" if k == "sample_rate" else k): v for k, v in {**TINY, **settings}.items()}
    # The extractor checks the same fields (its own base class words the sampling-rate errors).
    with pytest.raises(ValueError):
        LogMelFeatureExtractor(**fe_settings)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(mean=math.nan), "`mean` must be a finite number, got nan"),
        (dict(std=0.0), "`std` must be a positive finite number, got 0.0"),
        (dict(std=math.inf), "`std` must be a positive finite number, got inf"),
        (dict(feature_size=12), r"`feature_size` \(12\) must equal `num_mel_bins` \(10\)"),
    ],
)
def test_bad_extractor_settings_are_refused_by_name(settings, match):
    with pytest.raises(ValueError, match=match):
        LogMelFeatureExtractor(**TINY_FE, **settings)


def test_stored_fields_and_what_a_saved_config_gives_back():
    fe = LogMelFeatureExtractor(**TINY_FE, feature_size=10, f_min=50, log_offset=1e-3, mean=-2, std=3)
    assert (fe.feature_size, fe.num_mel_bins, fe.n_fft, fe.win_length, fe.hop_length) == (10, 10, 64, 48, 16)
    assert (fe.f_min, fe.f_max, fe.mel_scale, fe.periodic_window, fe.preemphasis) == (
        50.0,
        None,
        "htk",
        True,
        0.0,
    )
    assert (fe.log_offset, fe.do_normalize, fe.mean, fe.std) == (1e-3, False, -2.0, 3.0)
    assert isinstance(fe.f_min, float) and isinstance(fe.mean, float) and isinstance(fe.std, float)
    assert fe.padding_value == pytest.approx(math.log(1e-3))  # the log-mel of digital silence
    assert LogMelFeatureExtractor(**TINY_FE, padding_value=-3.0).padding_value == -3.0
    # f_max None follows the rate: the same extractor at 16 kHz reaches 8 kHz.
    assert fe._spec.f_max == 4000.0
    fe.sampling_rate = 16000
    assert fe._spec.f_max == 8000.0
    assert LogMelFeatureExtractor(**TINY_FE, f_max=3000).f_max == 3000.0
    again = LogMelFeatureExtractor(**fe.to_dict())
    assert again.to_dict() == fe.to_dict()


def test_presets_and_their_overrides():
    fe = LogMelFeatureExtractor.from_preset("cpjku_dcase23")
    assert (fe.preemphasis, fe.periodic_window, fe.mel_scale, fe.f_max) == (0.97, False, "kaldi", 15500.0)
    assert (fe.do_normalize, fe.mean, fe.std, fe.f_min, fe.log_offset) == (True, -4.5, 5.0, 0.0, 1e-5)
    assert (fe.sampling_rate, fe.n_fft, fe.win_length, fe.hop_length, fe.num_mel_bins) == (
        32000,
        4096,
        3072,
        500,
        256,
    )
    assert (
        LogMelFeatureExtractor.from_preset("dcase2024_baseline").to_dict()
        == LogMelFeatureExtractor().to_dict()
    )
    assert LogMelFeatureExtractor.from_preset("cpjku_dcase23", std=2.0).std == 2.0
    with pytest.raises(
        ValueError, match=r"Unknown preset 'x'; choose one of \['cpjku_dcase23', 'dcase2024_baseline'\]"
    ):
        LogMelFeatureExtractor.from_preset("x")


def test_constants_are_float32_plain_tensors_even_under_inference_mode():
    _log_mel_constants.cache_clear()
    fe = LogMelFeatureExtractor(**TINY_FE, periodic_window=False)
    with torch.inference_mode():
        window, banks = _log_mel_constants(fe._spec, "cpu")
    assert not window.is_inference() and not banks.is_inference()
    assert window.dtype == banks.dtype == torch.float32
    np.testing.assert_allclose(window.numpy(), hann(48, periodic=False), rtol=0, atol=1e-6)
    np.testing.assert_allclose(banks.numpy(), mel_banks(64, SR, 10, 0.0, 4000.0, "htk"), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# The extractor: values, normalisation, padding, masks, cropping
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [{}, DCASE23], ids=["dcase24", "dcase23"])
def test_extractor_pads_each_clip_with_silence_and_normalises_everything(variant):
    fe = LogMelFeatureExtractor(**TINY_FE, **variant, do_normalize=True, mean=-3.0, std=2.5)
    short, long = signal(250, seed=3), signal(411, seed=4, tone=700.0)
    values, mask = features(fe, [short, long])
    drop = 1 if variant else 0  # pre-emphasis drops a sample
    frames = [1 + (250 - drop) // 16, 1 + (411 - drop) // 16]
    assert values.shape == (2, frames[1], 10) and values.dtype == torch.float32
    assert mask.dtype == torch.int64 and mask.sum(dim=1).tolist() == frames
    assert mask[0, : frames[0]].all() and not mask[0, frames[0] :].any()
    for row, clip in enumerate((short, long)):
        # Each clip mirrored at its own end, not at the batch's: as if it had been featurised alone.
        expected = (log_mel_by_hand(clip, **variant) + 3.0) / 2.5
        np.testing.assert_allclose(values[row, : frames[row]].numpy(), expected, rtol=0, atol=ATOL)
    padded = (math.log(1e-5) + 3.0) / 2.5
    torch.testing.assert_close(values[0, frames[0] :], torch.full_like(values[0, frames[0] :], padded))
    # The in-step path gives the same batch.
    waveforms = torch.zeros(2, 411)
    waveforms[0, :250], waveforms[1] = torch.from_numpy(short), torch.from_numpy(long)
    got, got_mask = fe.batch_features(waveforms, torch.tensor([250, 411]))
    torch.testing.assert_close(got, values, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_mask, mask, rtol=0, atol=0)


def test_without_do_normalize_the_features_are_the_raw_log_mel():
    x = signal(300)
    raw, _ = features(LogMelFeatureExtractor(**TINY_FE, mean=-3.0, std=2.5), x)
    np.testing.assert_allclose(raw[0].numpy(), log_mel_by_hand(x), rtol=0, atol=ATOL)


@pytest.mark.parametrize("preemphasis", [0.0, 0.97])
def test_shortest_clip_and_frame_counts(preemphasis):
    fe = LogMelFeatureExtractor(**TINY_FE, preemphasis=preemphasis)
    drop = int(preemphasis > 0)
    assert fe.min_samples == 33 + drop
    for n in (33 + drop, 47 + drop, 48 + drop, 400, 401):
        assert fe.num_frames(n) == 1 + (n - drop) // 16
    # The shortest clip gives its frames, one sample fewer is refused by __call__ ...
    values, mask = features(fe, signal(fe.min_samples))
    assert mask.tolist() == [[1] * (1 + (fe.min_samples - drop) // 16)]
    with pytest.raises(ValueError, match=f"has {fe.min_samples - 1} samples but at least {fe.min_samples}"):
        features(fe, signal(fe.min_samples - 1))
    # ... and masked out entirely by the in-step path, clip by clip.
    lengths = torch.tensor([fe.min_samples - 1, fe.min_samples, 200])
    _, mask = fe.batch_features(torch.from_numpy(np.stack([signal(200)] * 3)), lengths)
    assert mask.sum(dim=1).tolist() == [0, 1 + (fe.min_samples - drop) // 16, 1 + (200 - drop) // 16]


def test_frame_times_are_the_frame_centres():
    fe = LogMelFeatureExtractor(**TINY_FE)
    np.testing.assert_allclose(fe.frame_times(4), [0.0, 0.002, 0.004, 0.006])  # hop 16 at 8 kHz: 2 ms


@pytest.mark.parametrize("preemphasis", [0.0, 0.97])
def test_target_length_crops_at_the_last_sample_the_kept_frames_read(preemphasis):
    # A window filling the FFT reads every sample of its span, so the crop point is exact.
    fe = LogMelFeatureExtractor(**{**TINY_FE, "win_length": 64}, preemphasis=preemphasis, target_length=5)
    # Frame 4 is centred on sample 4 * 16 and reads up to sample 64 + 31 (pre-emphasis: one further).
    assert fe.max_samples == 4 * 16 + 32 + int(preemphasis > 0)
    x = signal(600)
    cropped, mask = features(fe, x)
    assert cropped.shape == (1, 5, 10) and mask.tolist() == [[1] * 5]
    full = stft_log_mel(torch.from_numpy(x), **{**TINY, "win_length": 64}, preemphasis=preemphasis)
    torch.testing.assert_close(cropped[0], full[:5], rtol=0, atol=1e-5)
    # One sample fewer and the last frame reads a mirrored sample: the crop point is the fewest samples.
    short = stft_log_mel(
        torch.from_numpy(x[: fe.max_samples - 1]), **{**TINY, "win_length": 64}, preemphasis=preemphasis
    )
    assert (short[4] - full[4]).abs().max() > 1e-3
    # A clip shorter than the target is padded with the log of the offset, and masked.
    padded, mask = features(fe, x[:40])
    assert mask.tolist() == [[1, 1, 1, 0, 0]]  # 1 + 40 // 16 frames (1 + 39 // 16 with pre-emphasis)
    torch.testing.assert_close(padded[0, 3:], torch.full((2, 10), math.log(1e-5)))


def test_defaults_are_the_dcase2024_baselines_plain_log_mel():
    fe = LogMelFeatureExtractor()
    assert (fe.sampling_rate, fe.num_mel_bins, fe.n_fft, fe.win_length, fe.hop_length) == (
        32000,
        256,
        4096,
        3072,
        500,
    )
    assert (fe.f_min, fe.f_max, fe.mel_scale, fe.periodic_window, fe.preemphasis, fe.log_offset) == (
        0.0, None, "htk", True, 0.0, 1e-5
    )  # fmt: skip
    assert (fe.do_normalize, fe.mean, fe.std, fe.target_length, fe.waveform_scale) == (
        False,
        0.0,
        1.0,
        None,
        1.0,
    )
    assert fe.return_attention_mask is True and fe.padding_value == math.log(1e-5)


def test_waveform_scale_multiplies_the_clip_before_the_log_mel():
    x = signal(300)
    scaled, _ = features(LogMelFeatureExtractor(**TINY_FE, waveform_scale=4.0), x)
    np.testing.assert_allclose(scaled[0].numpy(), log_mel_by_hand(4.0 * x), rtol=0, atol=ATOL)


def test_other_keyword_arguments_reach_the_transformers_base_class():
    # A saved preprocessor_config.json carries transformers' own fields; they must come back.
    assert LogMelFeatureExtractor(**TINY_FE, padding_side="left").padding_side == "left"
