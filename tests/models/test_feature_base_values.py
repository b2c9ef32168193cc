"""The shared half of the front ends (hf_audiorep/modeling/feature_extraction_base.py) against computations
written out here: each clip mirrored at its own ends against numpy's ``pad`` ("reflect" and "symmetric"),
integer PCM scaled by hand, and the cropping, padding and masks of a batch by counting. The input types
and error messages are test_fbank.py's; this file checks the values.

The concrete front end is a tiny log-mel (8 kHz, a 64-point FFT): every value takes milliseconds."""

import logging
import math
import re

import numpy as np
import pytest
import torch

from hf_audiorep.modeling.feature_extraction_base import (
    BaseAudioFeatureExtractor,
    integer_to_unit_scale,
    reflect_pad,
)
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


@pytest.mark.parametrize("include_edge, mode", [(False, "reflect"), (True, "symmetric")])
def test_reflect_pad_of_clips_shorter_than_the_padding(include_edge, mode):
    # A one-sample clip with a one-sample tail is still mirrored (no edge to skip); clips shorter than half
    # the padding read arbitrary samples past one reflection but the shape holds and nothing raises.
    waveforms = torch.tensor([[1.0, 2.0, 3.0], [7.0, 0.0, 0.0]])
    out = reflect_pad(waveforms, torch.tensor([3, 1]), 0, 4, 1, include_edge)
    np.testing.assert_array_equal(out[1, :2].numpy(), np.pad([7.0], (0, 1), mode=mode))
    np.testing.assert_array_equal(out[0].numpy(), np.pad([1.0, 2.0, 3.0], (0, 1), mode=mode))
    wide = reflect_pad(waveforms[:1], None, 2, 12, 0, include_edge)
    assert wide.shape == (1, 12)
    np.testing.assert_array_equal(wide[0, :7].numpy(), np.pad([1.0, 2.0, 3.0], 2, mode=mode)[:7])
    assert set(wide[0].tolist()) <= {1.0, 2.0, 3.0}


def test_reflect_pad_takes_lengths_of_any_integer_dtype():
    samples = np.arange(1.0, 301.0, dtype=np.float32)
    waveforms = torch.from_numpy(np.stack([samples, np.r_[samples[:100], np.zeros(200, np.float32)]]))
    expected = [np.pad(samples, (4, 4), mode="reflect"), np.pad(samples[:100], (4, 4), mode="reflect")]
    for lengths in (torch.tensor([255, 100], dtype=torch.uint8), torch.tensor([300, 100], dtype=torch.int16)):
        out = reflect_pad(waveforms, lengths, 4, 308, 4, include_edge=False)
        np.testing.assert_array_equal(out[1, :108].numpy(), expected[1])
        if lengths[0] == 300:
            np.testing.assert_array_equal(out[0].numpy(), expected[0])


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


# ------------------------------------------------------------------------------------------------------------
# Input handling: datasets records and their rates, lists, 2-D batches
# ------------------------------------------------------------------------------------------------------------


class _Logged:
    """Collects what the concrete extractor's module logger emits (propagation off, as transformers sets)."""

    def __init__(self, fe):
        self.records = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger = logging.getLogger(type(fe).__module__)

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


class _Decoder:
    """Duck-types datasets >= 4's torchcodec decoder: answers ["array"] and ["sampling_rate"]; no Mapping."""

    def __init__(self, samples, rate):
        self._fields = {"array": samples, "sampling_rate": rate}

    def __getitem__(self, key):
        return self._fields[key]

    def get_all_samples(self):
        raise AssertionError("the extractor reads the fields, not the decoder")


def _message(text: str) -> str:
    return "^" + re.escape(text) + "$"


def test_records_carry_their_rate_so_no_warning_and_the_same_features():
    fe = LogMelFeatureExtractor(**TINY, padding_value=-9.0)
    x, y = clip(200, 1), clip(120, 2)
    fx, fy = alone(x), alone(y)
    with _Logged(fe) as logged:
        one = fe({"array": x, "sampling_rate": SR}, return_tensors="pt")["input_values"]
        both = fe(
            [{"array": x, "sampling_rate": SR}, {"array": y.tolist(), "sampling_rate": SR}],
            return_tensors="pt",
        )
        decoded = fe([_Decoder(x, SR), _Decoder(torch.from_numpy(y), SR)], return_tensors="pt")
        mixed = fe([x, {"array": y, "sampling_rate": SR}], return_tensors="pt")  # one rate is enough
        agreeing = fe({"array": x, "sampling_rate": SR}, sampling_rate=SR, return_tensors="pt")[
            "input_values"
        ]
    assert logged == []
    for got in (one, agreeing):
        torch.testing.assert_close(got[0], fx, rtol=0, atol=1e-5)
    for out in (both, decoded, mixed):
        assert out["attention_mask"].sum(dim=1).tolist() == [len(fx), len(fy)]
        torch.testing.assert_close(out["input_values"][0], fx, rtol=0, atol=1e-5)
        torch.testing.assert_close(out["input_values"][1, : len(fy)], fy, rtol=0, atol=1e-5)
        assert (out["input_values"][1, len(fy) :] == -9.0).all()


def test_audio_without_any_rate_warns_on_every_call():
    fe = LogMelFeatureExtractor(**TINY)
    x = clip(200)
    with _Logged(fe) as logged:
        fe(x)
        fe([x, x])
        fe(np.stack([x, x]))
        fe(x.tolist())
        fe(x, sampling_rate=SR)  # the argument given: no warning
    assert [record.levelno for record in logged] == [logging.WARNING] * 4
    assert logged[0].getMessage() == (
        "It is strongly recommended to pass the `sampling_rate` argument to `LogMelFeatureExtractor()`: this "
        "extractor expects 8000 Hz audio and cannot check that yours is."
    )


def test_a_record_rate_is_checked_against_the_argument_and_the_extractor():
    fe = LogMelFeatureExtractor(**TINY)
    x = clip(200)
    good, bad = {"array": x, "sampling_rate": SR}, {"array": x, "sampling_rate": 16000}
    resample = (
        " but this feature extractor expects 8000 Hz; resample first, e.g. with "
        "torchaudio.functional.resample or datasets' cast_column(..., Audio(sampling_rate=8000))."
    )
    cases = [
        (
            dict(raw_audio=bad, sampling_rate=SR),
            "`sampling_rate`=8000 disagrees with the 16000 Hz recorded in the audio.",
        ),
        (
            dict(raw_audio=[good, bad], sampling_rate=SR),
            "`sampling_rate`=8000 disagrees with the 16000 Hz recorded in clip 1.",
        ),
        (dict(raw_audio=[good, _Decoder(x, 16000)]), "Clip 1 was sampled at 16000 Hz" + resample),
        (dict(raw_audio=bad), "The audio was sampled at 16000 Hz" + resample),
        (dict(raw_audio=good, sampling_rate=16000), "The audio was sampled at 16000 Hz" + resample),
        (dict(raw_audio=x, sampling_rate=22050), "The audio was sampled at 22050 Hz" + resample),
    ]
    for kwargs, text in cases:
        with pytest.raises(ValueError, match=_message(text)):
            fe(**kwargs)


@pytest.mark.parametrize(
    "raw_audio, error, text",
    [
        (
            {"path": "a.wav"},
            ValueError,
            "The audio is a mapping without the 'array' and 'sampling_rate' keys of a datasets audio record.",
        ),
        (
            [clip(100), {"array": clip(100)}],
            ValueError,
            "Clip 1 is a mapping without the 'array' and 'sampling_rate' keys of a datasets audio record.",
        ),
        (
            type("NotSubscriptable", (), {"get_all_samples": None})(),
            ValueError,
            "The audio is a mapping without the 'array' and 'sampling_rate' keys of a datasets audio record.",
        ),
        (
            {"array": ["a", "b"], "sampling_rate": SR},
            TypeError,
            "The 'array' of the audio is not a sequence of numbers (could not convert string to float: 'a').",
        ),
        (
            [clip(100), {"array": [[1.0], 2.0], "sampling_rate": SR}],
            TypeError,
            "The 'array' of clip 1 is not",
        ),
        (
            [clip(100), ["a"]],
            TypeError,
            "Clip 1 is not a sequence of numbers (could not convert string to float: 'a').",
        ),
        (
            [clip(100), "a.wav"],
            TypeError,
            "Clip 1 has unsupported type str; expected a numpy array, a torch "
            "tensor, a list of floats or a {'array', 'sampling_rate'} record.",
        ),
        ([clip(100), 0.5], TypeError, "Clip 1 has unsupported type float"),
        (
            3.0,
            TypeError,
            "Unsupported audio input of type float; expected a numpy array, a torch tensor, a list "
            "of floats, a {'array', 'sampling_rate'} record, or a list of those.",
        ),
        ((), ValueError, "Got an empty list: pass at least one clip."),
        (
            np.zeros((2, 2, 100)),
            ValueError,
            "Expected a 1-D clip or a 2-D (batch, samples) batch of mono audio, "
            "got an array of shape (2, 2, 100).",
        ),
        (
            torch.zeros(100, 1, 1),
            ValueError,
            "Expected a 1-D clip or a 2-D (batch, samples) batch of mono audio, got an array of shape "
            "(100, 1, 1).",
        ),
    ],
)
def test_inputs_that_are_not_audio_are_refused_by_name(raw_audio, error, text):
    fe = LogMelFeatureExtractor(**TINY)
    with pytest.raises(error) as err:
        fe(raw_audio, sampling_rate=SR)
    assert str(err.value).startswith(text), str(err.value)


def test_every_form_of_a_clip_and_of_a_batch_gives_each_clip_its_own_frames():
    fe = LogMelFeatureExtractor(**TINY, padding_value=-9.0)
    x, y = clip(200, 1), clip(120, 2)
    fx, fy = alone(x), alone(y)
    for one in (x.tolist(), tuple(x.tolist()), torch.from_numpy(x), x.astype(np.float64)):
        out = fe(one, sampling_rate=SR, return_tensors="pt")
        assert out["input_values"].shape == (1, len(fx), 6) and out["attention_mask"].tolist() == [
            [1] * len(fx)
        ]
        torch.testing.assert_close(out["input_values"][0], fx, rtol=0, atol=1e-5)
    integers = [0, 3, -2, 1] * 20  # Python ints are sample values, not PCM: no scaling
    torch.testing.assert_close(
        fe(integers, sampling_rate=SR, return_tensors="pt")["input_values"][0],
        alone(np.asarray(integers, dtype=np.float32)),
        rtol=0,
        atol=1e-4,
    )
    for batch in ([x.tolist(), y.tolist()], (x, torch.from_numpy(y)), [x, tuple(y.tolist())]):
        out = fe(batch, sampling_rate=SR, return_tensors="pt")
        assert out["attention_mask"].sum(dim=1).tolist() == [len(fx), len(fy)]
        torch.testing.assert_close(out["input_values"][0], fx, rtol=0, atol=1e-5)
        torch.testing.assert_close(out["input_values"][1, : len(fy)], fy, rtol=0, atol=1e-5)
        assert (out["input_values"][1, len(fy) :] == -9.0).all()
    # A 2-D array is a batch of equal-length clips (never channels), cropped like any clip.
    z = clip(200, 3)
    for batch in (np.stack([x, z]), torch.from_numpy(np.stack([x, z]))):
        out = fe(batch, sampling_rate=SR, return_tensors="pt")
        assert out["attention_mask"].tolist() == [[1] * len(fx)] * 2
        torch.testing.assert_close(out["input_values"][1], alone(z), rtol=0, atol=1e-5)
    short = LogMelFeatureExtractor(**TINY, target_length=5)
    out = short(np.stack([x, z]), sampling_rate=SR, return_tensors="pt")
    torch.testing.assert_close(out["input_values"], torch.stack([fx[:5], alone(z)[:5]]), rtol=0, atol=1e-5)


def test_collate_crops_to_the_samples_target_length_needs_and_zero_pads_the_rest():
    fe = LogMelFeatureExtractor(**TINY, target_length=5)  # 4 hops + half an FFT: 96 samples
    assert fe.max_samples == 4 * 16 + 32
    x, y = clip(200, 1), clip(50, 2)
    for batch in ([x, y], [torch.from_numpy(x), y.tolist()]):
        if isinstance(batch[1], list):
            batch = [batch[0], np.asarray(batch[1], dtype=np.float32)]
        waveforms, lengths = fe._collate(batch, torch.device("cpu"))
        assert waveforms.dtype == torch.float32 and lengths.dtype == torch.int64
        assert lengths.tolist() == [96, 50] and waveforms.shape == (2, 96)
        np.testing.assert_array_equal(waveforms[0].numpy(), x[:96])
        np.testing.assert_array_equal(waveforms[1].numpy(), np.r_[y, np.zeros(46, np.float32)])
    waveforms, lengths = fe._collate(np.stack([x, x]), torch.device("cpu"))
    assert waveforms.shape == (2, 96) and lengths.tolist() == [96, 96] and lengths.dtype == torch.int64
    np.testing.assert_array_equal(waveforms[1].numpy(), x[:96])
    waveforms, lengths = LogMelFeatureExtractor(**TINY)._collate([y, y[:40]], torch.device("cpu"))
    assert waveforms.shape == (2, 50) and lengths.tolist() == [50, 40]


_TOO_SHORT = (
    "(a frame centred on the first sample mirrors 32 samples of the clip, half the 64-point FFT) are needed."
)
_MONO_HINT = (
    " A 2-D input is read as (batch, samples); if yours is (samples, channels) audio, downmix it to mono "
    "first."
)
_DOWNMIX = (
    ": multi-channel audio is ambiguous here. Downmix to mono first, e.g. `x.mean(axis=0)` for (channels, "
    "samples) or `x.mean(axis=1)` for (samples, channels) as soundfile returns it."
)


@pytest.mark.parametrize(
    "raw_audio, text",
    [
        (np.zeros((1, 10), np.float32), "The audio has 10 samples but at least 33 " + _TOO_SHORT),
        (np.zeros((2, 10), np.float32), "Every clip has 10 samples but at least 33 " + _TOO_SHORT),
        (np.zeros((32, 32), np.float32), "Every clip has 32 samples but at least 33 " + _TOO_SHORT),
        (
            np.zeros((33, 32), np.float32),
            "Every clip has 32 samples but at least 33 " + _TOO_SHORT + _MONO_HINT,
        ),
        ([np.zeros(32, np.float32)], "The audio has 32 samples but at least 33 " + _TOO_SHORT),
        (
            [np.zeros(33, np.float32), np.zeros(32, np.float32)],
            "Clip 1 has 32 samples but at least 33 " + _TOO_SHORT,
        ),
        ([np.zeros((2, 100), np.float32)], "The audio is 2-D (2, 100)" + _DOWNMIX),
        ([clip(100), torch.zeros(100, 2)], "Clip 1 is 2-D (100, 2)" + _DOWNMIX),
        ([clip(100), np.array(0.5, np.float32)], "Clip 1 must be a 1-D array of samples, got shape ()."),
        ([torch.zeros(1, 2, 100)], "The audio must be a 1-D array of samples, got shape (1, 2, 100)."),
        (np.full(100, np.nan, np.float32), "The audio contains NaN or infinite samples."),
        ([np.full(100, np.inf, np.float32)], "The audio contains NaN or infinite samples."),
        (np.stack([clip(100), np.r_[np.zeros(99), -np.inf]]), "Clip 1 contains NaN or infinite samples."),
        ([clip(100), clip(90), np.r_[np.zeros(99), np.nan]], "Clip 2 contains NaN or infinite samples."),
        (np.ones(100, dtype=bool), "The audio must hold real-valued samples, got dtype bool."),
        (np.ones((2, 100), dtype=bool), "The audio must hold real-valued samples, got dtype bool."),
        (
            [clip(100), np.ones(100, np.complex64)],
            "Clip 1 must hold real-valued samples, got dtype complex64.",
        ),
    ],
)
def test_clips_that_cannot_be_featurised_are_refused_by_name(raw_audio, text):
    fe = LogMelFeatureExtractor(**TINY)
    with pytest.raises((ValueError, TypeError)) as err:
        fe(raw_audio, sampling_rate=SR)
    assert str(err.value) == text


@pytest.mark.parametrize(
    "loud",
    [
        np.full(100, 3e38, np.float32),  # a row's sum overflows to inf; every sample is finite
        np.full(100, 1e20, np.float32),  # finite, but the power spectrum overflows float32: NaN scores
        np.full(100, 1e300, np.float64),  # finite in the user's array, inf once cast to float32
    ],
)
def test_huge_finite_samples_are_refused_by_their_magnitude_not_as_infinite(loud):
    fe = LogMelFeatureExtractor(**TINY)
    with pytest.raises(ValueError) as err:
        fe([clip(100), loud], sampling_rate=SR, return_tensors="pt")
    assert str(err.value) == (
        f"Clip 1 has samples of magnitude {loud[0]:.3g}, far outside audio's range (+-1 for float audio, "
        "+-2**31 for integer PCM): it is damaged or not audio."
    )
    # The loudest real audio passes: integer PCM written as floats, without rescaling.
    assert fe(np.full(100, 2.0**31, np.float32), sampling_rate=SR)["input_values"] is not None


def test_the_features_of_the_loudest_accepted_samples_are_finite():
    fe = LogMelFeatureExtractor(**TINY)
    rng = np.random.default_rng(0)
    from hf_audiorep.modeling.feature_extraction_base import MAX_SAMPLE_MAGNITUDE

    loud = (rng.choice([-1.0, 1.0], 400) * MAX_SAMPLE_MAGNITUDE).astype(np.float32)
    assert np.isfinite(fe(loud, sampling_rate=SR, return_tensors="np")["input_values"]).all()
    _, mask = fe.batch_features(torch.from_numpy(np.stack([loud, loud])))
    assert mask.all()


def test_return_tensors_picks_torch_numpy_or_a_list_per_clip():
    fe = LogMelFeatureExtractor(**TINY)
    x, y = clip(200, 1), clip(120, 2)
    expected = [alone(x).numpy(), alone(y).numpy()]
    frames = [len(e) for e in expected]
    pt = fe([x, y], sampling_rate=SR, return_tensors="pt")
    assert isinstance(pt["input_values"], torch.Tensor) and pt["attention_mask"].dtype == torch.int64
    np_out = fe([x, y], sampling_rate=SR, return_tensors="np")
    assert isinstance(np_out["input_values"], np.ndarray) and np_out["input_values"].shape == (
        2,
        frames[0],
        6,
    )
    assert np_out["input_values"].dtype == np.float32 and np_out["attention_mask"].dtype == np.int64
    listed = fe([x, y], sampling_rate=SR)
    assert isinstance(listed["input_values"], list) and len(listed["input_values"]) == 2
    assert isinstance(listed["attention_mask"], list) and len(listed["attention_mask"]) == 2
    for row in range(2):
        for out in (np_out, listed):
            assert isinstance(out["input_values"][row], np.ndarray)
            np.testing.assert_allclose(
                out["input_values"][row][: frames[row]], expected[row], rtol=0, atol=1e-5
            )
            assert out["attention_mask"][row].tolist() == [1] * frames[row] + [0] * (frames[0] - frames[row])
    no_mask = fe([x, y], sampling_rate=SR, return_attention_mask=False)
    assert list(no_mask.keys()) == ["input_values"] and isinstance(no_mask["input_values"], list)


def test_unknown_arguments_are_named_in_one_warning_and_the_generator_is_taken():
    fe = LogMelFeatureExtractor(**TINY)
    x = clip(200)
    with _Logged(fe) as logged:
        fe(x, sampling_rate=SR, generator=torch.Generator().manual_seed(0))
    assert logged == []
    with _Logged(fe) as logged:
        out = fe(x, sampling_rate=SR, return_tensors="pt", truncation_fb=True, padding_fb="longest")
    assert [record.getMessage() for record in logged] == [
        "LogMelFeatureExtractor.__call__ ignores the arguments ['padding_fb', 'truncation_fb'] (padding and "
        "cropping are set by `target_length`)."
    ]
    torch.testing.assert_close(out["input_values"][0], alone(x), rtol=0, atol=1e-5)


def test_waveform_scale_multiplies_the_unit_waveform_on_both_paths():
    x = clip(200)
    half = LogMelFeatureExtractor(**TINY, waveform_scale=0.5)
    expected = alone(0.5 * x)
    torch.testing.assert_close(
        half(x, sampling_rate=SR, return_tensors="pt")["input_values"][0], expected, rtol=0, atol=1e-5
    )
    pcm = (x * 32768).astype(np.int16)
    got, _ = half.batch_features(torch.from_numpy(np.stack([pcm, pcm])))
    torch.testing.assert_close(got[0], alone(0.5 * pcm.astype(np.float32) / 32768), rtol=0, atol=1e-4)


def test_in_step_inputs_are_refused_by_name():
    fe = LogMelFeatureExtractor(**TINY)
    waveforms = torch.from_numpy(np.stack([clip(200, 1), clip(200, 2)]))
    cases = [
        (
            (waveforms[0], None),
            "`waveforms` must be a (batch, samples) tensor, got shape (200,); use `__call__` for single "
            "clips and downmix multi-channel audio to mono first.",
        ),
        (
            (waveforms, torch.tensor([200, 120], dtype=torch.complex64)),
            "`lengths` must hold one integer sample count per clip, shape (2,), got (2,) of dtype "
            "torch.complex64.",
        ),
        (
            (waveforms, [200]),
            "`lengths` must hold one integer sample count per clip, shape (2,), got (1,) of dtype "
            "torch.int64.",
        ),
        ((waveforms, [201, 0]), "`lengths` must lie in [0, 200] (the padded batch width), got [201, 0]."),
        ((waveforms, [0, -5]), "`lengths` must lie in [0, 200] (the padded batch width), got [0, -5]."),
    ]
    for (batch, lengths), text in cases:
        with pytest.raises(ValueError, match=_message(text)):
            fe.batch_features(batch, lengths)
    # Lengths of any integer dtype, as a list or a tensor, mask each clip's own frames.
    for lengths in ([200, 33], torch.tensor([200, 33], dtype=torch.int16), np.array([200, 33], np.uint8)):
        values, mask = fe.batch_features(waveforms, lengths)
        assert mask.dtype == torch.int64 and mask.sum(dim=1).tolist() == [13, 3]
        torch.testing.assert_close(values[1, :3], alone(waveforms[1, :33].numpy()), rtol=0, atol=1e-5)


def test_in_step_lengths_past_the_crop_point_are_cropped_with_the_batch():
    fe = LogMelFeatureExtractor(**TINY, target_length=20, padding_value=-9.0)  # crop point 336
    x = clip(400, 1)
    waveforms = torch.from_numpy(np.stack([x, x]))
    for lengths in (np.array([200, 33], np.int32), torch.tensor([340, 33], dtype=torch.int16), [400, 33]):
        values, mask = fe.batch_features(waveforms, lengths)
        first = min(1 + int(lengths[0]) // 16, 20)
        assert mask.dtype == torch.int64 and mask.sum(dim=1).tolist() == [first, 3]
        torch.testing.assert_close(values[0, :first], alone(x[: int(lengths[0])])[:first], rtol=0, atol=1e-5)
        assert (values[1, 3:] == -9.0).all()


class _RecordingLogMel(LogMelFeatureExtractor):
    """The tiny log-mel, remembering what the base passed to the spectrogram."""

    def _spectrogram(self, waveforms, lengths, generator):
        self.seen = (waveforms.clone(), None if lengths is None else lengths.clone(), generator)
        return super()._spectrogram(waveforms, lengths, generator)


def test_the_generator_and_the_lengths_reach_the_spectrogram():
    fe = _RecordingLogMel(**TINY)
    generator = torch.Generator().manual_seed(0)
    x, y = clip(200, 1), clip(120, 2)
    fe([x, y], sampling_rate=SR, generator=generator)
    waveforms, lengths, got = fe.seen
    assert got is generator and lengths.tolist() == [200, 120] and lengths.dtype == torch.int64
    np.testing.assert_array_equal(waveforms[1].numpy(), np.r_[y, np.zeros(80, np.float32)])
    fe.batch_features(torch.from_numpy(np.stack([x, x])), generator=generator)
    assert fe.seen[2] is generator and fe.seen[1] is None
    fe.batch_features(torch.from_numpy(np.stack([x, x])), [200, 150], generator=generator)
    assert fe.seen[2] is generator and fe.seen[1].tolist() == [200, 150]
    fe(x, sampling_rate=SR)
    assert fe.seen[2] is None


def test_integer_lists_are_sample_values_in_every_container():
    fe = LogMelFeatureExtractor(**TINY, padding_value=-9.0)
    ints = [0, 3, -2, 1] * 20  # Python ints: float sample values, never PCM to rescale
    expected = alone(np.asarray(ints, dtype=np.float32))
    for raw_audio in (
        {"array": ints, "sampling_rate": SR},
        [ints, ints],
        [{"array": ints, "sampling_rate": SR}],
    ):
        got = fe(raw_audio, sampling_rate=SR, return_tensors="pt")["input_values"]
        for row in got:
            torch.testing.assert_close(row, expected, rtol=0, atol=1e-4)


def test_spectrogram_refuses_what_is_not_one_usable_clip_by_name():
    fe = LogMelFeatureExtractor(**TINY)
    cases = [
        (np.ones(100, dtype=bool), TypeError, "The clip must hold real-valued samples, got dtype bool."),
        (
            clip(10),
            ValueError,
            "The clip has 10 samples but at least 33 (a frame centred on the first sample mirrors 32 samples "
            "of the clip, half the 64-point FFT) are needed.",
        ),
    ]
    for waveform, error, text in cases:
        with pytest.raises(error, match=_message(text)):
            fe.spectrogram(waveform)
    pcm = (clip(300) * 32768).astype(np.int16)
    torch.testing.assert_close(
        fe.spectrogram(torch.from_numpy(pcm)), alone(pcm / np.float32(32768)), rtol=0, atol=1e-4
    )


def test_features_stay_float32_under_an_enclosing_autocast():
    fe = LogMelFeatureExtractor(**TINY)
    x = clip(300)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a bfloat16 mel projection would be off by ~1e-2
        got = fe(x, sampling_rate=SR, return_tensors="pt")["input_values"][0]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, alone(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "dtype, text",
    [
        (torch.bool, "Audio must be real-valued samples, got a tensor of dtype torch.bool."),
        (torch.complex64, "Audio must be real-valued samples, got a tensor of dtype torch.complex64."),
        (np.bool_, "Audio must be real-valued samples, got an array of dtype bool."),
    ],
)
def test_integer_to_unit_scale_names_the_dtype_it_refuses(dtype, text):
    with pytest.raises(TypeError, match=_message(text)):
        integer_to_unit_scale(dtype)


@pytest.mark.parametrize(
    "settings, text",
    [
        (dict(padding_value=True), "`padding_value` must be a finite number, got True."),
        (dict(padding_value="0"), "`padding_value` must be a finite number, got '0'."),
        (dict(padding_value=-math.inf), "`padding_value` must be a finite number, got -inf."),
        (dict(waveform_scale=True), "`waveform_scale` must be a positive finite number, got True."),
        (dict(waveform_scale=-1.0), "`waveform_scale` must be a positive finite number, got -1.0."),
        (dict(sampling_rate=-8000), "`sampling_rate` must be a positive integer number of Hz, got -8000."),
        (dict(target_length=-3), "`target_length` must be a positive integer or None, got -3."),
    ],
)
def test_more_bad_base_settings_are_refused_with_the_whole_message(settings, text):
    with pytest.raises(ValueError, match=_message(text)):
        LogMelFeatureExtractor(**{**TINY, **settings})


class _Bare(BaseAudioFeatureExtractor):
    """The base with only its own settings: what a new front end inherits."""


def test_a_new_front_end_inherits_the_documented_defaults_and_passes_extra_settings_on():
    fe = _Bare(
        feature_size=np.int64(2), sampling_rate=1, target_length=None, padding_value=0, custom_setting=3
    )
    assert fe.sampling_rate == 1  # the lowest positive rate is accepted
    assert type(fe.feature_size) is int and fe.feature_size == 2
    assert fe.return_attention_mask is True and fe.waveform_scale == 1.0 and fe.target_length is None
    assert fe.custom_setting == 3 and fe.to_dict()["custom_setting"] == 3
    assert fe.max_samples is None
    with pytest.raises(NotImplementedError):
        fe.min_samples  # noqa: B018


def test_the_padded_batch_is_float32_whatever_the_default_dtype():
    fe = _RecordingLogMel(**TINY)
    x, y = clip(200, 1), clip(120, 2)
    expected = alone(y)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = fe([x, y], sampling_rate=SR, return_tensors="pt")
    finally:
        torch.set_default_dtype(previous)
    assert fe.seen[0].dtype == torch.float32 and out["input_values"].dtype == torch.float32
    torch.testing.assert_close(out["input_values"][1, : len(expected)], expected, rtol=0, atol=1e-5)


def test_in_step_batches_are_cropped_before_the_spectrogram():
    fe = _RecordingLogMel(**TINY, target_length=5)  # crop point 96 samples
    waveforms = torch.from_numpy(np.stack([clip(400, 1), clip(400, 2)]))
    values, mask = fe.batch_features(waveforms, [400, 50])
    assert fe.seen[0].shape == (2, 96) and fe.seen[1].tolist() == [96, 50]
    np.testing.assert_array_equal(fe.seen[0].numpy(), waveforms[:, :96].numpy())
    assert mask.tolist() == [[1] * 5, [1, 1, 1, 1, 0]]  # 1 + 50 // 16 frames
    torch.testing.assert_close(values[0], alone(waveforms[0].numpy())[:5], rtol=0, atol=1e-5)
    fe.batch_features(waveforms)
    assert fe.seen[0].shape == (2, 96) and fe.seen[1] is None


def test_narrow_integer_lengths_are_checked_against_a_wider_batch_without_wrapping():
    # The batch width 40000 does not fit int16 (it wraps to -25536) and 300 does not fit uint8: the range
    # check must compare in int64, or valid lengths are refused.
    fe = LogMelFeatureExtractor(**TINY)
    waveforms = torch.zeros(2, 40000)
    lengths = torch.tensor([20000, 30000], dtype=torch.int16)
    _, mask = fe.batch_features(waveforms, lengths)
    assert mask.sum(dim=1).tolist() == [1 + 20000 // 16, 1 + 30000 // 16]
    _, mask = fe.batch_features(torch.zeros(2, 300), torch.tensor([255, 100], dtype=torch.uint8))
    assert mask.sum(dim=1).tolist() == [1 + 255 // 16, 1 + 100 // 16]
    with pytest.raises(ValueError, match=re.escape("got [30001, 0]")):
        fe.batch_features(torch.zeros(2, 30000), torch.tensor([30001, 0], dtype=torch.int16))
