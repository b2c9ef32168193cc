"""The Kaldi fbank (hf_audiorep/modeling/feature_extraction_fbank.py) at the settings and edges the
parity tests of test_fbank.py and test_front_ends.py leave out, against torchaudio.compliance.kaldi.fbank
run in float64 (an independent port of Kaldi); and the extractors' geometry (frame times, frame counts,
the crop point), arguments and padding by counting.

Short clips and small banks, so that the file runs in a few seconds."""

import math

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as ta_kaldi

from hf_audiorep.modeling import feature_extraction_fbank as _fbank
from hf_audiorep.modeling.feature_extraction_fbank import (
    LHOTSE_LOG_EPSILON,
    AudioFbankFeatureExtractor,
    ZipformerFbankFeatureExtractor,
    kaldi_fbank,
    num_frames,
)

SR = 16000
ATOL = 1e-3  # as in test_fbank.py: the lowest bins of a frame sit at the float32 noise floor


def signal(n: int, seed: int = 0, sr: int = SR) -> np.ndarray:
    """Two tones in noise: energy in every mel band."""
    t = np.arange(n) / sr
    noise = 0.05 * np.random.default_rng(seed).standard_normal(n)
    return (0.4 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t) + noise).astype(np.float32)


def torchaudio_fbank(x: np.ndarray, **settings) -> torch.Tensor:
    """torchaudio's Kaldi port in float64 (its mel bank is built in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        settings = {
            "htk_compat": True,
            "use_energy": False,
            "dither": 0.0,
            "window_type": "hanning",
            **settings,
        }
        return ta_kaldi.fbank(torch.from_numpy(x).double()[None], **settings).float()
    finally:
        torch.set_default_dtype(previous)


def features(fe, clips):
    out = fe(clips, sampling_rate=fe.sampling_rate, return_tensors="pt")
    return out["input_values"], out["attention_mask"]


# ------------------------------------------------------------------------------------------------------------
# kaldi_fbank at settings the parity tests leave out
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("low_freq", [1500.0, 2500.0])
def test_a_high_low_freq_leaves_the_lowest_projection_blocks_empty(low_freq):
    # On a CPU the mel projection is split into blocks of 32 FFT bins (1 kHz at 16 kHz); below low_freq
    # no filter reaches, so the first one or two blocks are empty and must be skipped, not end the loop.
    x = signal(4000)
    ours = kaldi_fbank(torch.from_numpy(x), num_mel_bins=23, low_freq=low_freq)
    ref = torchaudio_fbank(x, num_mel_bins=23, low_freq=low_freq)
    assert ours.shape == ref.shape == (1 + (4000 - 400) // 160, 23)
    assert (ours - ref).abs().max().item() <= ATOL


# ------------------------------------------------------------------------------------------------------------
# The extractors
# ------------------------------------------------------------------------------------------------------------


def test_frame_times_are_the_window_centres():
    # snip_edges=True: frame i spans [i * 10 ms, i * 10 ms + 25 ms), centred 12.5 ms in.
    np.testing.assert_allclose(
        AudioFbankFeatureExtractor().frame_times(3), [0.0125, 0.0225, 0.0325], rtol=1e-12
    )
    # snip_edges=False: Kaldi shifts frame i back by (25 - 10) / 2 ms, which centres it at i * 10 ms + 5 ms.
    np.testing.assert_allclose(
        ZipformerFbankFeatureExtractor().frame_times(3), [0.005, 0.015, 0.025], rtol=1e-12
    )
    fe = AudioFbankFeatureExtractor(frame_length_ms=20.0, frame_shift_ms=8.0)
    np.testing.assert_allclose(fe.frame_times(2), [0.010, 0.018], rtol=1e-12)


def test_zipformer_defaults_are_lhotse_fbank_config():
    fe = ZipformerFbankFeatureExtractor()
    assert (fe.sampling_rate, fe.num_mel_bins, fe.target_length, fe.do_normalize) == (16000, 80, None, False)
    assert (fe.window_type, fe.high_freq, fe.snip_edges, fe.low_freq) == ("povey", -400.0, False, 20.0)
    assert fe.padding_value == LHOTSE_LOG_EPSILON == math.log(1e-10)
    # Raw log-mel of each clip, padded to the longest with lhotse's log(1e-10), frames (S + 80) // 160.
    short, long = signal(1040), signal(2345, seed=1)  # 1040 + 80 = 7 hops: the last frame reads 200 past
    values, mask = features(fe, [short, long])
    assert values.shape == (2, (2345 + 80) // 160, 80) and mask.sum(dim=1).tolist() == [
        (1040 + 80) // 160,
        15,
    ]
    ref = torchaudio_fbank(short, num_mel_bins=80, window_type="povey", snip_edges=False, high_freq=-400.0)
    assert ref.shape[0] == 7 and (values[0, :7] - ref).abs().max().item() <= ATOL
    torch.testing.assert_close(values[0, 7:], torch.full((8, 80), math.log(1e-10)), rtol=0, atol=0)


def test_zipformer_passes_every_argument_on():
    fe = ZipformerFbankFeatureExtractor(
        sampling_rate=8000,
        num_mel_bins=23,
        target_length=12,
        do_normalize=True,
        mean=-5.0,
        std=2.0,
        std_scale=1.0,
        window_type="hamming",
        padding_value=-7.0,
        high_freq=3000.0,
        snip_edges=True,
    )
    settings = (fe.sampling_rate, fe.num_mel_bins, fe.target_length, fe.do_normalize, fe.window_type)
    assert settings == (8000, 23, 12, True, "hamming")
    assert (fe.padding_value, fe.high_freq, fe.snip_edges) == (-7.0, 3000.0, True)
    x = signal(1000, sr=8000)
    values, mask = features(fe, x)
    frames = 1 + (1000 - 200) // 80  # snip_edges: only whole 25 ms frames of 200 samples, hop 80
    assert values.shape == (1, 12, 23) and mask.sum().item() == frames
    ref = torchaudio_fbank(
        x, sample_frequency=8000, num_mel_bins=23, window_type="hamming", high_freq=3000.0, snip_edges=True
    )
    assert ((values[0, :frames] * 2.0 - 5.0) - ref).abs().max().item() <= 2 * ATOL
    torch.testing.assert_close(values[0, frames:], torch.full((12 - frames, 23), (-7.0 + 5.0) / 2.0))


def test_block_splitting_covers_every_frame(monkeypatch):
    # Several blocks per row (frames > budget) and several rows per block (frames < budget) must each
    # compute every frame once; the output buffer is uninitialised, so a frame left out holds garbage.
    x = torch.from_numpy(np.stack([signal(16000, seed=2), signal(16000, seed=3)]))
    reference = kaldi_fbank(x, num_mel_bins=23)
    for budget in (7, 45, 200):
        monkeypatch.setattr(_fbank, "_CPU_BLOCK_FRAMES", budget)
        kaldi_fbank(-x, num_mel_bins=23)  # other values into the memory the next buffer may reuse
        torch.testing.assert_close(kaldi_fbank(x, num_mel_bins=23), reference, rtol=0, atol=1e-5)


def test_extractor_passes_its_fbank_options_and_generator_on():
    x = signal(4000)
    fe = AudioFbankFeatureExtractor(
        target_length=None, do_normalize=False, remove_dc_offset=False, dither=1e-2
    )
    first = fe(x, sampling_rate=SR, return_tensors="pt", generator=torch.Generator().manual_seed(3))
    again = fe(x, sampling_rate=SR, return_tensors="pt", generator=torch.Generator().manual_seed(3))
    expected = kaldi_fbank(
        torch.from_numpy(x), remove_dc_offset=False, dither=1e-2, generator=torch.Generator().manual_seed(3)
    )
    torch.testing.assert_close(first["input_values"][0], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(again["input_values"], first["input_values"], rtol=0, atol=0)
    no_dc = AudioFbankFeatureExtractor(target_length=None, do_normalize=False, remove_dc_offset=False)
    offset = x + 0.5  # a DC offset only DC removal takes out
    got = features(no_dc, offset)[0][0]
    ref = torchaudio_fbank(offset, num_mel_bins=128, remove_dc_offset=False)
    assert (got - ref).abs().max().item() <= ATOL


def test_other_keyword_arguments_reach_the_transformers_base_class():
    assert AudioFbankFeatureExtractor(padding_side="left").padding_side == "left"


@pytest.mark.parametrize("snip_edges", [True, False])
def test_the_crop_point_is_the_last_sample_the_kept_frames_read(snip_edges):
    fe = AudioFbankFeatureExtractor(target_length=20, snip_edges=snip_edges, do_normalize=False)
    # snip_edges: frame 19 spans samples [19 * 160, 19 * 160 + 400). Without: Kaldi starts frame t at
    # t * 160 + 80 - 200, so frame 19 ends at 19 * 160 + 280.
    assert fe.max_samples == 19 * 160 + (400 if snip_edges else 280)
    x = signal(8000)
    full = kaldi_fbank(torch.from_numpy(x), snip_edges=snip_edges)
    got = features(fe, x)[0][0]
    torch.testing.assert_close(got, full[:20], rtol=0, atol=1e-4)
    # One sample fewer changes the last kept frame (its mean, removed as DC, includes that sample).
    shorter = kaldi_fbank(torch.from_numpy(x[: fe.max_samples - 1]), snip_edges=snip_edges)
    assert shorter.shape[0] < 20 or (shorter[19] - full[19]).abs().max() > 1e-3


def test_frame_counts_at_the_edge_of_one_frame():
    assert [num_frames(n, 400, 160) for n in (0, 100, 399, 400, 559, 560)] == [0, 0, 0, 1, 1, 2]
    assert [num_frames(n, 400, 160, snip_edges=False) for n in (0, 79, 80, 239, 240)] == [0, 0, 1, 1, 2]
    x = signal(400)  # exactly one frame
    ours = kaldi_fbank(torch.from_numpy(x), num_mel_bins=23)
    assert ours.shape == (1, 23)
    assert (ours - torchaudio_fbank(x, num_mel_bins=23)).abs().max().item() <= ATOL


@pytest.mark.parametrize(
    "settings",
    [
        dict(preemphasis=0.0, remove_dc_offset=False),  # the raw frame, windowed
        dict(preemphasis=1.0),  # the edge of the allowed range: a first difference
        dict(preemphasis=1.0, remove_dc_offset=False),
    ],
)
def test_time_domain_options_at_their_edges_match_torchaudio(settings):
    x = signal(3000) + 0.3  # a DC offset, so that DC removal matters
    ours = kaldi_fbank(torch.from_numpy(x), num_mel_bins=23, **settings)
    ta_settings = {("preemphasis_coefficient" if k == "preemphasis" else k): v for k, v in settings.items()}
    ref = torchaudio_fbank(x, num_mel_bins=23, **ta_settings)
    assert (ours - ref).abs().max().item() <= ATOL


def test_dither_adds_scaled_gaussian_noise_to_each_frame():
    # Kaldi dithers every frame on its own: frame t is x[t * hop : t * hop + win] + dither * N(0, 1), the
    # noise drawn for the (batch, frames, win) block at once.
    x = signal(1000)
    frames = 1 + (1000 - 400) // 160
    dither = 0.05
    noise = torch.randn((1, frames, 400), generator=torch.Generator().manual_seed(7))
    ours = kaldi_fbank(
        torch.from_numpy(x), num_mel_bins=23, dither=dither, generator=torch.Generator().manual_seed(7)
    )
    for t in range(frames):
        frame = x[t * 160 : t * 160 + 400] + dither * noise[0, t].numpy()
        ref = torchaudio_fbank(frame.astype(np.float32), num_mel_bins=23)
        assert (ours[t] - ref[0]).abs().max().item() <= ATOL


def test_a_small_fft_with_two_projection_blocks_matches_torchaudio():
    # 4 kHz: a 100-sample window in a 128-point FFT, whose 130 interleaved rows make two projection
    # blocks of 64 on a CPU (the Nyquist rows feed no filter). Two blocks must both be summed.
    x = signal(2000, sr=4000)
    ours = kaldi_fbank(torch.from_numpy(x), sample_rate=4000, num_mel_bins=10)
    assert (
        len(
            _fbank._analysis_constants(
                _fbank._fbank_spec(4000, 10, 25.0, 10.0, "hanning", 0.97, 0.0, 20.0, 0.0), "cpu"
            ).mel_blocks
        )
        == 2
    )
    ref = torchaudio_fbank(x, sample_frequency=4000, num_mel_bins=10)
    assert (ours - ref).abs().max().item() <= ATOL


@pytest.mark.parametrize(
    "settings",
    [
        dict(sample_rate=1.0, frame_length_ms=2000.0, frame_shift_ms=1000.0, low_freq=0.0, num_mel_bins=3),
        dict(num_mel_bins=3),  # Kaldi's minimum
        dict(frame_length_ms=0.125, frame_shift_ms=0.0625, low_freq=0.0),  # a 2-sample window, a 1-sample hop
        dict(frame_length_ms=1.0, frame_shift_ms=1.0),  # 16 and 16 samples
    ],
)
def test_fbank_settings_at_their_edges_are_accepted(settings):
    full = {"sample_rate": 16000.0, **settings}
    spec = _fbank._fbank_spec(
        full["sample_rate"], full.get("num_mel_bins", 23), full.get("frame_length_ms", 25.0),
        full.get("frame_shift_ms", 10.0), "hanning", 0.97, 0.0, full.get("low_freq", 20.0), 0.0,
    )  # fmt: skip
    assert spec.win_length == int(full["sample_rate"] * full.get("frame_length_ms", 25.0) / 1000)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(sample_rate=0.0), "`sample_rate` must be a positive number of Hz, got 0.0"),
        (dict(num_mel_bins=2), "`num_mel_bins` must be an integer >= 3"),
        (dict(num_mel_bins=23.0), "`num_mel_bins` must be an integer >= 3"),
        (dict(num_mel_bins=True), "`num_mel_bins` must be an integer >= 3"),
        (dict(frame_length_ms=0.0), "`frame_length_ms` must be a positive number, got 0.0"),
        (dict(frame_length_ms=-1.0), "`frame_length_ms` must be a positive number, got -1.0"),
        (dict(frame_shift_ms=0.0), "`frame_shift_ms` must be a positive number, got 0.0"),
        (dict(frame_shift_ms=-1.0), "`frame_shift_ms` must be a positive number, got -1.0"),
        (dict(frame_length_ms=0.1), "gives a window of 1 samples at 16000 Hz; at least 2 are needed"),
        (dict(frame_shift_ms=0.05), "gives a hop of 0 samples at 16000 Hz; at least 1 is needed"),
    ],
)
def test_bad_fbank_settings_are_refused_by_name(settings, match):
    with pytest.raises(ValueError, match=match):
        kaldi_fbank(torch.zeros(800), **settings)
