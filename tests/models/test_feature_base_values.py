"""The shared half of the front ends (hf_audiorep/modeling/feature_extraction_base.py) against computations
written out here: each clip mirrored at its own ends against numpy's ``pad`` ("reflect" and "symmetric"),
integer PCM scaled by hand, and the cropping, padding and masks of a batch by counting. The input types
and error messages are test_fbank.py's; this file checks the values.

The concrete front end is a tiny log-mel (8 kHz, a 64-point FFT): every value takes milliseconds."""

import math

import numpy as np
import pytest
import torch

from hf_audiorep.modeling.feature_extraction_base import integer_to_unit_scale, reflect_pad
from hf_audiorep.modeling.feature_extraction_log_mel import LogMelFeatureExtractor, stft_log_mel

SR = 8000
TINY = dict(sampling_rate=SR, n_fft=64, win_length=48, hop_length=16, num_mel_bins=6)
FRAMES = dict(n_fft=64, win_length=48, hop_length=16, num_mel_bins=6, sample_rate=SR)


def clip(n: int, seed: int = 0) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def alone(x: np.ndarray) -> torch.Tensor:
    """The log-mel of one clip by itself (its frames are what a batch must give it)."""
    return stft_log_mel(torch.from_numpy(x), **FRAMES)


# ------------------------------------------------------------------------------------------------------------
# reflect_pad and integer_to_unit_scale
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_edge, mode", [(False, "reflect"), (True, "symmetric")])
def test_reflect_pad_mirrors_each_clip_at_its_own_ends(include_edge, mode):
    lengths = [11, 7, 4]
    waveforms = torch.zeros(3, 11)
    rows = [np.arange(1.0, n + 1) * (row + 1) for row, n in enumerate(lengths)]
    for row, samples in enumerate(rows):
        waveforms[row, : len(samples)] = torch.from_numpy(samples)
    left, tail = 3, 3
    out = reflect_pad(waveforms, torch.tensor(lengths), left, 11 + left + tail, tail, include_edge)
    assert out.shape == (3, 17)
    for row, samples in enumerate(rows):
        expected = np.pad(samples, (left, tail), mode=mode)  # what a clip alone would give
        np.testing.assert_array_equal(out[row, : len(expected)].numpy(), expected)
    # Without lengths every clip fills the batch: the whole row is mirrored at the batch's edges.
    full = reflect_pad(waveforms, None, left, 17, tail, include_edge)
    np.testing.assert_array_equal(full[0].numpy(), np.pad(rows[0], (3, 3), mode=mode))
    np.testing.assert_array_equal(full[2].numpy(), np.pad(waveforms[2].numpy(), (3, 3), mode=mode))


@pytest.mark.parametrize("include_edge, mode", [(False, "reflect"), (True, "symmetric")])
def test_reflect_pad_with_a_one_sample_tail(include_edge, mode):
    waveforms = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 2.0, 3.0, 0.0, 0.0]])
    out = reflect_pad(waveforms, torch.tensor([5, 3]), 1, 7, 1, include_edge)
    np.testing.assert_array_equal(out[1, :5].numpy(), np.pad([1.0, 2.0, 3.0], 1, mode=mode))
    np.testing.assert_array_equal(out[0].numpy(), np.pad(np.arange(1.0, 6.0), 1, mode=mode))


def test_reflect_pad_without_a_tail_only_mirrors_the_batch_edges():
    waveforms = torch.arange(1.0, 7.0)[None]
    out = reflect_pad(waveforms, torch.tensor([4]), 2, 8, 0, include_edge=False)
    np.testing.assert_array_equal(out[0].numpy(), [3, 2, 1, 2, 3, 4, 5, 6])


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (np.int16, (0.0, 32768.0)),
        (np.int32, (0.0, 2.0**31)),
        (np.int8, (0.0, 128.0)),
        (np.uint8, (128.0, 128.0)),  # 8-bit WAV: centred on its midpoint
        (np.uint16, (32768.0, 32768.0)),
        (np.float32, None),
        (np.float64, None),
        (torch.int16, (0.0, 32768.0)),
        (torch.uint8, (128.0, 128.0)),
        (torch.float16, None),
    ],
)
def test_integer_to_unit_scale(dtype, expected):
    assert integer_to_unit_scale(dtype) == expected


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64, np.complex64, np.bool_, np.dtype("U3")])
def test_integer_to_unit_scale_refuses_what_is_not_real_samples(dtype):
    with pytest.raises(TypeError, match="Audio must be real-valued samples"):
        integer_to_unit_scale(dtype)


def test_integer_pcm_reaches_the_front_end_in_unit_scale():
    fe = LogMelFeatureExtractor(**TINY)
    pcm = (clip(300) * 20000).astype(np.int16)
    expected = alone(pcm.astype(np.float32) / 32768)
    for batch in (pcm, torch.from_numpy(pcm), (pcm.astype(np.int32) + 32768).astype(np.uint16)):
        got = fe(batch, sampling_rate=SR, return_tensors="pt")["input_values"][0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    waveforms = torch.from_numpy(np.stack([pcm, pcm]))
    got, _ = fe.batch_features(waveforms)
    torch.testing.assert_close(got[1], expected, rtol=0, atol=1e-4)


def test_byte_swapped_and_reversed_arrays_give_the_same_features():
    fe = LogMelFeatureExtractor(**TINY)
    x = clip(300)
    expected = fe(x, sampling_rate=SR, return_tensors="pt")["input_values"]
    swapped = x.astype(x.dtype.newbyteorder(">"))
    reversed_view = x[::-1].copy()[::-1]  # negative strides
    for other in (swapped, reversed_view):
        got = fe(other, sampling_rate=SR, return_tensors="pt")["input_values"]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------------------
# Cropping, padding and masks
# ------------------------------------------------------------------------------------------------------------


def test_a_ragged_batch_gives_each_clip_its_own_frames_and_pads_the_rest():
    fe = LogMelFeatureExtractor(**TINY, padding_value=-9.0)
    clips = [clip(100, 1), clip(260, 2), clip(40, 3)]
    out = fe(clips, sampling_rate=SR, return_tensors="pt")
    values, mask = out["input_values"], out["attention_mask"]
    frames = [1 + n // 16 for n in (100, 260, 40)]
    assert values.shape == (3, max(frames), 6) and mask.sum(dim=1).tolist() == frames
    for row, x in enumerate(clips):
        torch.testing.assert_close(values[row, : frames[row]], alone(x), rtol=0, atol=1e-5)
        assert (values[row, frames[row] :] == -9.0).all() and not mask[row, frames[row] :].any()


def test_target_length_pads_short_batches_and_crops_long_ones():
    x = clip(400)
    full = alone(x)  # 26 frames
    longer = LogMelFeatureExtractor(**TINY, target_length=30, padding_value=-9.0)
    values, mask = (
        longer(x, sampling_rate=SR, return_tensors="pt")[k] for k in ("input_values", "attention_mask")
    )
    assert values.shape == (1, 30, 6) and mask[0].tolist() == [1] * 26 + [0] * 4
    torch.testing.assert_close(values[0, :26], full, rtol=0, atol=1e-5)
    assert (values[0, 26:] == -9.0).all()
    # Without lengths nothing is masked: the padded frames get their value where the batch is padded.
    values, mask = longer.batch_features(torch.from_numpy(x)[None])
    assert mask[0].tolist() == [1] * 26 + [0] * 4 and (values[0, 26:] == -9.0).all()
    shorter = LogMelFeatureExtractor(**TINY, target_length=10)
    values, mask = (
        shorter(x, sampling_rate=SR, return_tensors="pt")[k] for k in ("input_values", "attention_mask")
    )
    assert values.shape == (1, 10, 6) and mask.all()
    torch.testing.assert_close(values[0], full[:10], rtol=0, atol=1e-5)
    # The in-step path crops the batch the same way, lengths past the crop point included.
    waveforms = torch.from_numpy(np.stack([x, x]))
    got, got_mask = shorter.batch_features(waveforms, torch.tensor([400, 100]))
    assert got_mask.sum(dim=1).tolist() == [10, 1 + 100 // 16]
    torch.testing.assert_close(got[0], full[:10], rtol=0, atol=1e-5)


def test_in_step_batch_narrower_than_one_frame_is_all_padding():
    fe = LogMelFeatureExtractor(**TINY, target_length=4, do_normalize=True, mean=1.0, std=2.0)
    values, mask = fe.batch_features(torch.zeros(2, fe.min_samples - 1))
    assert values.shape == (2, 4, 6) and mask.dtype == torch.int64 and not mask.any()
    torch.testing.assert_close(values, torch.full((2, 4, 6), (math.log(1e-5) - 1.0) / 2.0))
    # One sample more and it has its frame.
    _, mask = fe.batch_features(torch.zeros(2, fe.min_samples))
    assert mask.tolist() == [[1, 1, 1, 0]] * 2  # 1 + 33 // 16 frames
    # Without a target length such a batch has no frames at all.
    values, mask = LogMelFeatureExtractor(**TINY).batch_features(torch.zeros(2, 10))
    assert values.shape == (2, 0, 6) and mask.shape == (2, 0)


def test_in_step_lengths_at_their_edges():
    fe = LogMelFeatureExtractor(**TINY)
    waveforms = torch.from_numpy(np.stack([clip(200, 1), clip(200, 2)]))
    _, mask = fe.batch_features(waveforms, [0, 200])  # 0 and the full width are both valid lengths
    assert mask.sum(dim=1).tolist() == [0, 1 + 200 // 16]
    _, mask = fe.batch_features(waveforms, np.array([200, 120], dtype=np.int32))
    assert mask.sum(dim=1).tolist() == [1 + 200 // 16, 1 + 120 // 16]
    with pytest.raises(ValueError, match=r"`lengths` must lie in \[0, 200\] .* got \[-1, 200\]"):
        fe.batch_features(waveforms, [-1, 200])
    with pytest.raises(
        ValueError, match=r"one integer sample count per clip, shape \(2,\), got \(2,\) of dtype"
    ):
        fe.batch_features(waveforms, torch.tensor([200.0, 120.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\), got \(2, 1\)"):
        fe.batch_features(waveforms, torch.tensor([[200], [120]]))
    with pytest.raises(TypeError, match="`waveforms` must be a torch.Tensor, got ndarray"):
        fe.batch_features(waveforms.numpy())


# ------------------------------------------------------------------------------------------------------------
# The call's options and the settings' edges
# ------------------------------------------------------------------------------------------------------------


def test_return_attention_mask_follows_the_setting_unless_overridden():
    x = clip(200)
    off = LogMelFeatureExtractor(**TINY, return_attention_mask=False)
    assert "attention_mask" not in off(x, sampling_rate=SR, return_tensors="pt")
    assert "attention_mask" in off(x, sampling_rate=SR, return_tensors="pt", return_attention_mask=True)
    on = LogMelFeatureExtractor(**TINY)
    assert "attention_mask" in on(x, sampling_rate=SR, return_tensors="pt")
    assert "attention_mask" not in on(x, sampling_rate=SR, return_tensors="pt", return_attention_mask=False)
    with pytest.raises(ValueError, match=r"`return_tensors` must be 'pt', 'np' or None, got 'tf'"):
        on(x, sampling_rate=SR, return_tensors="tf")


def test_spectrogram_is_the_raw_whole_clip():
    fe = LogMelFeatureExtractor(**TINY, target_length=3, do_normalize=True, mean=5.0, std=7.0)
    x = clip(300)
    torch.testing.assert_close(fe.spectrogram(x), alone(x), rtol=0, atol=1e-5)  # not cropped, not normalised
    with pytest.raises(ValueError, match=r"expected a mono 1-D waveform, got shape \(2, 300\)"):
        fe.spectrogram(np.stack([x, x]))
    with pytest.raises(ValueError, match="has 10 samples but at least 33"):
        fe.spectrogram(x[:10])


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(sampling_rate=True), "`sampling_rate` must be a positive integer number of Hz, got True"),
        (dict(sampling_rate=0), "`sampling_rate` must be a positive integer number of Hz, got 0"),
        (dict(sampling_rate=8000.0), "`sampling_rate` must be a positive integer number of Hz, got 8000.0"),
        (dict(target_length=0), "`target_length` must be a positive integer or None, got 0"),
        (dict(target_length=True), "`target_length` must be a positive integer or None, got True"),
        (dict(target_length=4.0), "`target_length` must be a positive integer or None, got 4.0"),
        (dict(waveform_scale=0.0), "`waveform_scale` must be a positive finite number, got 0.0"),
        (dict(waveform_scale=math.inf), "`waveform_scale` must be a positive finite number, got inf"),
        (dict(padding_value=math.nan), "`padding_value` must be a finite number, got nan"),
    ],
)
def test_bad_base_settings_are_refused_by_name(settings, match):
    with pytest.raises(ValueError, match=match):
        LogMelFeatureExtractor(**{**TINY, **settings})


def test_base_settings_at_their_edges_are_kept_as_plain_python_values():
    fe = LogMelFeatureExtractor(**{**TINY, "sampling_rate": np.int64(SR)}, target_length=np.int32(1))
    assert type(fe.sampling_rate) is int and type(fe.target_length) is int and fe.target_length == 1
    fe = LogMelFeatureExtractor(**TINY, waveform_scale=np.float32(0.5), padding_value=-1)
    assert type(fe.waveform_scale) is float and type(fe.padding_value) is float and fe.padding_value == -1.0
    assert fe.return_attention_mask is True and fe.feature_size == 6
