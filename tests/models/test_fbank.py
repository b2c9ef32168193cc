"""Tests for modeling/feature_extraction_fbank.py: Kaldi parity, the extractor's contract, AST parity."""

import ast
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as ta_kaldi
from transformers import ASTFeatureExtractor, AutoConfig, AutoFeatureExtractor, PretrainedConfig

from hf_audiorep.modeling import feature_extraction_fbank as _fbank
from hf_audiorep.modeling.feature_extraction_fbank import AudioFbankFeatureExtractor, kaldi_fbank

SR = 16000
PARITY_ATOL = 1e-3  # log-mel units; the observed gap is ~1e-4, from float32 rounding in torchaudio's mel bank
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974


# ------------------------------------------------------------------------------------------------------------
# Signals
# ------------------------------------------------------------------------------------------------------------


def _time(seconds: float) -> np.ndarray:
    return np.arange(int(round(seconds * SR))) / SR


def sine_sweep(seconds: float) -> np.ndarray:
    t = _time(seconds)
    f0, f1 = 50.0, 7900.0  # exponential chirp across the whole mel range
    rate = np.log(f1 / f0) / max(seconds, 1e-3)
    return (0.5 * np.sin(2 * np.pi * f0 * (np.exp(rate * t) - 1) / rate)).astype(np.float32)


def white_noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(len(_time(seconds)))).astype(np.float32)


def near_silence(seconds: float) -> np.ndarray:
    # Energies at the float32-epsilon floor: exercises the log clamp.
    return (1e-6 * np.random.default_rng(1).standard_normal(len(_time(seconds)))).astype(np.float32)


def click_train(seconds: float) -> np.ndarray:
    x = np.zeros(len(_time(seconds)), np.float32)
    x[::1234] = 0.8
    return x


def vowel_like(seconds: float, seed: int = 2) -> np.ndarray:
    """Glottal-pulse harmonics shaped by three formants, with vibrato and breath noise."""
    t = _time(seconds)
    rng = np.random.default_rng(seed)
    f0 = 120.0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = np.zeros_like(t)
    for k in range(1, 60):
        fk = 120.0 * k
        if fk > 7800:
            break
        gain = sum(
            a / (1 + ((fk - fc) / bw) ** 2)
            for fc, bw, a in ((700, 110, 1.0), (1220, 120, 0.5), (2600, 160, 0.25))
        )
        x += gain / k * np.sin(k * phase)
    x = x / np.abs(x).max() * 0.6 + 0.01 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def wav_roundtrip(x: np.ndarray, path: Path) -> np.ndarray:
    """Write as 16-bit PCM and read back as int16, like a recorded file."""
    sf.write(path, x, SR, subtype="PCM_16")
    data, rate = sf.read(path, dtype="int16")
    assert rate == SR and data.dtype == np.int16
    return data


def torchaudio_fbank(x: np.ndarray | torch.Tensor, window_type: str = "hanning", **kwargs) -> torch.Tensor:
    wave = torch.as_tensor(x, dtype=torch.float32)[None]
    return ta_kaldi.fbank(
        wave,
        htk_compat=True,
        use_energy=False,
        window_type=window_type,
        num_mel_bins=kwargs.pop("num_mel_bins", 128),
        dither=0.0,
        frame_shift=10,
        sample_frequency=SR,
        **kwargs,
    )


SIGNALS = {"sweep": sine_sweep, "noise": white_noise, "near_silence": near_silence, "clicks": click_train}


# ------------------------------------------------------------------------------------------------------------
# kaldi_fbank: parity with torchaudio.compliance.kaldi
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.03, 1.0, 3.7, 10.0])
@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_kaldi_fbank_matches_torchaudio(name, seconds):
    x = SIGNALS[name](seconds)
    ours = kaldi_fbank(torch.from_numpy(x))
    ref = torchaudio_fbank(x)
    assert ours.shape == ref.shape == (1 + (len(x) - 400) // 160, 128)
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize("seconds", [0.03, 1.0, 3.7, 10.0])
def test_kaldi_fbank_matches_torchaudio_on_a_wav_file(tmp_path, seconds):
    pcm = wav_roundtrip(vowel_like(seconds), tmp_path / "vowel.wav")
    x = torch.from_numpy(pcm.astype(np.float32) / 32768)
    assert (kaldi_fbank(x) - torchaudio_fbank(x)).abs().max().item() <= PARITY_ATOL


@pytest.mark.parametrize("window_type", ["povey", "hamming", "rectangular", "blackman"])
def test_other_windows_match_torchaudio(window_type):
    x = vowel_like(1.0) + white_noise(1.0) * 0.1
    ours = kaldi_fbank(torch.from_numpy(x), window_type=window_type)
    assert (ours - torchaudio_fbank(x, window_type=window_type)).abs().max().item() <= PARITY_ATOL


def test_non_default_settings_match_torchaudio():
    # Zipformer-like (80 bins, high_freq offset), no pre-emphasis, no DC removal, 8 kHz.
    x = torch.from_numpy(vowel_like(1.0))
    ours = kaldi_fbank(x, num_mel_bins=80, high_freq=-400.0, low_freq=40.0, preemphasis=0.0)
    ref = torchaudio_fbank(x, num_mel_bins=80, high_freq=-400.0, low_freq=40.0, preemphasis_coefficient=0.0)
    assert (ours - ref).abs().max().item() <= PARITY_ATOL
    ours = kaldi_fbank(x, remove_dc_offset=False, frame_length_ms=32.0, window_type="povey")
    ref = torchaudio_fbank(x, window_type="povey", remove_dc_offset=False, frame_length=32.0)
    assert (ours - ref).abs().max().item() <= PARITY_ATOL
    x8k = torch.from_numpy(vowel_like(1.0)[::2].copy())
    ref = ta_kaldi.fbank(
        x8k[None], htk_compat=True, window_type="hanning", num_mel_bins=64, sample_frequency=8000
    )
    assert (kaldi_fbank(x8k, sample_rate=8000, num_mel_bins=64) - ref).abs().max().item() <= PARITY_ATOL


def test_batched_equals_per_clip():
    clips = [sine_sweep(2.0), white_noise(2.0), click_train(2.0), vowel_like(2.0)]
    batch = kaldi_fbank(torch.from_numpy(np.stack(clips)))
    assert batch.shape == (4, 198, 128)
    for row, clip in enumerate(clips):
        torch.testing.assert_close(batch[row], kaldi_fbank(torch.from_numpy(clip)), rtol=0, atol=1e-5)


def test_block_splitting_and_dense_projection_do_not_change_results(monkeypatch):
    x = torch.from_numpy(np.stack([vowel_like(1.0), white_noise(1.0)]))
    reference = kaldi_fbank(x)
    # Frame ranges of a single row (T > budget) and several rows per block (T < budget).
    for budget in (40, 250):
        monkeypatch.setattr(_fbank, "_CPU_BLOCK_FRAMES", budget)
        torch.testing.assert_close(kaldi_fbank(x), reference, rtol=0, atol=1e-5)
    # The accelerator layout: one dense mel matrix instead of row blocks.
    monkeypatch.setattr(_fbank, "_CPU_MEL_BLOCK_ROWS", 10_000)
    _fbank._analysis_constants.cache_clear()
    try:
        torch.testing.assert_close(kaldi_fbank(x), reference, rtol=0, atol=1e-4)
    finally:
        _fbank._analysis_constants.cache_clear()


def test_constants_are_cached_per_device_and_settings():
    _fbank._analysis_constants.cache_clear()
    x = torch.from_numpy(white_noise(0.1))
    kaldi_fbank(x)
    kaldi_fbank(x)
    kaldi_fbank(x, window_type="povey")
    info = _fbank._analysis_constants.cache_info()
    assert (info.hits, info.misses) == (1, 2)


def test_float32_under_autocast_and_for_other_dtypes():
    x = torch.from_numpy(vowel_like(0.5))
    reference = kaldi_fbank(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = kaldi_fbank(x)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=0, atol=1e-6)
    assert kaldi_fbank(x.double()).dtype == torch.float32
    torch.testing.assert_close(kaldi_fbank(x.double()), reference, rtol=0, atol=PARITY_ATOL)
    with torch.inference_mode():  # constants built here must stay usable outside inference mode
        _fbank._analysis_constants.cache_clear()
        kaldi_fbank(x)
    torch.testing.assert_close(kaldi_fbank(x), reference, rtol=0, atol=0)


def test_dither_is_reproducible_with_a_generator():
    x = torch.from_numpy(near_silence(0.5))
    first = kaldi_fbank(x, dither=1e-3, generator=torch.Generator().manual_seed(0))
    second = kaldi_fbank(x, dither=1e-3, generator=torch.Generator().manual_seed(0))
    other = kaldi_fbank(x, dither=1e-3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.equal(first, other)
    assert first.mean() > kaldi_fbank(x).mean() + 1.0  # dither noise dominates near-silent input


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: kaldi_fbank(torch.zeros(399)), ValueError, "399 samples.*needs 400"),
        (lambda: kaldi_fbank(torch.zeros(2, 2, 800)), ValueError, "batch, samples"),
        (lambda: kaldi_fbank(torch.zeros(800, dtype=torch.int16)), TypeError, "floating-point"),
        (lambda: kaldi_fbank(np.zeros(800, np.float32)), TypeError, "torch.Tensor"),
        (lambda: kaldi_fbank(torch.zeros(800), window_type="hann"), ValueError, "window_type"),
        (lambda: kaldi_fbank(torch.zeros(800), num_mel_bins=2), ValueError, "num_mel_bins"),
        (lambda: kaldi_fbank(torch.zeros(800), high_freq=9000.0), ValueError, "high_freq"),
        (lambda: kaldi_fbank(torch.zeros(800), sample_rate=0), ValueError, "sample_rate"),
        (lambda: kaldi_fbank(torch.zeros(800), dither=-1.0), ValueError, "dither"),
        (lambda: kaldi_fbank(torch.zeros(800, requires_grad=True)), ValueError, "not differentiable"),
    ],
)
def test_kaldi_fbank_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------------------------------------------
# AudioFbankFeatureExtractor
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor():
    return AudioFbankFeatureExtractor()


def test_shapes_padding_cropping_and_mask(extractor):
    short, long = vowel_like(1.0), white_noise(12.0)
    out = extractor([short, long], sampling_rate=SR, return_tensors="pt")
    values, mask = out["input_values"], out["attention_mask"]
    assert values.shape == (2, 1024, 128) and values.dtype == torch.float32
    assert mask.shape == (2, 1024) and mask.dtype == torch.int64
    assert mask.sum(dim=1).tolist() == [98, 1024]
    assert mask[0, :98].all() and not mask[0, 98:].any()
    # AST order: raw log-mel padded with 0, then normalised.
    pad_value = (0.0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    torch.testing.assert_close(values[0, 98:], torch.full((926, 128), pad_value), rtol=0, atol=1e-6)
    # Cropping keeps the first 1024 frames, i.e. the first (1024 - 1) * 160 + 400 samples.
    assert extractor.max_samples == 164_080
    expected = (kaldi_fbank(torch.from_numpy(long[:164_080])) - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    torch.testing.assert_close(values[1], expected, rtol=0, atol=1e-5)


def test_target_length_none_pads_to_the_longest_clip():
    fe = AudioFbankFeatureExtractor(target_length=None)
    out = fe([vowel_like(1.0), vowel_like(3.0)], sampling_rate=SR, return_tensors="np")
    assert out["input_values"].shape == (2, 298, 128)
    assert out["attention_mask"].sum(axis=1).tolist() == [98, 298]


def test_normalisation_constants():
    x = vowel_like(1.0)
    raw = kaldi_fbank(torch.from_numpy(x))
    plain = AudioFbankFeatureExtractor(do_normalize=False, target_length=98)
    torch.testing.assert_close(plain(x, sampling_rate=SR, return_tensors="pt")["input_values"][0], raw)
    custom = AudioFbankFeatureExtractor(mean=-6.6268077, std=5.358466, std_scale=2.0, target_length=98)
    out = custom(x, sampling_rate=SR, return_tensors="pt")["input_values"][0]
    torch.testing.assert_close(out, (raw + 6.6268077) / (2 * 5.358466))


def test_input_types_give_identical_results(extractor):
    clips = [vowel_like(1.0), white_noise(1.0)]
    reference = extractor(clips, sampling_rate=SR, return_tensors="np")["input_values"]
    variants = {
        "list of lists": [c.tolist() for c in clips],
        "list of tensors": [torch.from_numpy(c) for c in clips],
        "tuple of arrays": tuple(clips),
        "2-D array": np.stack(clips),
        "2-D tensor": torch.from_numpy(np.stack(clips)),
        "2-D float64 array": np.stack(clips).astype(np.float64),
        "records": [{"array": c, "sampling_rate": SR} for c in clips],
    }
    for name, batch in variants.items():
        got = extractor(batch, sampling_rate=SR, return_tensors="np")["input_values"]
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-6, err_msg=name)
    single = {
        "1-D array": clips[0],
        "list of floats": clips[0].tolist(),
        "1-D tensor": torch.from_numpy(clips[0]),
        "record": {"array": clips[0], "sampling_rate": SR},
    }
    for name, clip in single.items():
        got = extractor(clip, sampling_rate=SR, return_tensors="np")["input_values"]
        np.testing.assert_allclose(got, reference[:1], rtol=0, atol=1e-6, err_msg=name)


def test_return_types(extractor):
    x = vowel_like(0.5)
    as_list = extractor([x, x], sampling_rate=SR)
    assert isinstance(as_list["input_values"], list) and len(as_list["input_values"]) == 2
    assert isinstance(as_list["input_values"][0], np.ndarray) and as_list["input_values"][0].shape == (
        1024,
        128,
    )
    as_np = extractor(x, sampling_rate=SR, return_tensors="np")
    assert isinstance(as_np["input_values"], np.ndarray) and as_np["attention_mask"].dtype == np.int64
    as_pt = extractor(x, sampling_rate=SR, return_tensors="pt", device="cpu", return_attention_mask=False)
    assert isinstance(as_pt["input_values"], torch.Tensor) and "attention_mask" not in as_pt


def test_integer_pcm_is_scaled_to_unit_range(extractor, tmp_path):
    pcm = wav_roundtrip(vowel_like(1.0), tmp_path / "v.wav")
    as_float, rate = sf.read(tmp_path / "v.wav", dtype="float32")
    from_int16 = extractor(pcm, sampling_rate=SR, return_tensors="np")["input_values"]
    from_float = extractor(as_float, sampling_rate=rate, return_tensors="np")["input_values"]
    np.testing.assert_allclose(from_int16, from_float, rtol=0, atol=1e-6)
    from_int32 = extractor(pcm.astype(np.int32) << 16, sampling_rate=SR, return_tensors="np")["input_values"]
    np.testing.assert_allclose(from_int32, from_float, rtol=0, atol=1e-6)
    from_tensor = extractor(torch.from_numpy(pcm), sampling_rate=SR, return_tensors="np")["input_values"]
    np.testing.assert_allclose(from_tensor, from_float, rtol=0, atol=1e-6)


def test_waveform_scale_multiplies_before_the_fbank():
    x = vowel_like(1.0)
    beats_like = AudioFbankFeatureExtractor(waveform_scale=2.0**15, window_type="povey", do_normalize=False)
    got = beats_like(x, sampling_rate=SR, return_tensors="pt")["input_values"][0, :98]
    expected = kaldi_fbank(torch.from_numpy(x) * 2.0**15, window_type="povey")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_wrong_sampling_rate_is_an_error(extractor):
    x = vowel_like(0.5)
    with pytest.raises(
        ValueError, match=r"sampled at 8000 Hz but this feature extractor expects 16000 Hz"
    ) as err:
        extractor(x, sampling_rate=8000)
    assert "torchaudio.functional.resample" in str(err.value) and "Audio(sampling_rate=16000)" in str(
        err.value
    )
    with pytest.raises(ValueError, match=r"Clip 1 was sampled at 44100 Hz"):
        extractor([{"array": x, "sampling_rate": SR}, {"array": x, "sampling_rate": 44100}])
    with pytest.raises(ValueError, match="disagrees with the 22050 Hz recorded"):
        extractor({"array": x, "sampling_rate": 22050}, sampling_rate=SR)


def test_missing_sampling_rate_only_warns(extractor):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(_fbank.__name__)
    logger.addHandler(handler)
    try:
        out = extractor(vowel_like(0.5), return_tensors="pt")
        extractor({"array": vowel_like(0.5), "sampling_rate": SR})  # a record carries its rate: no warning
    finally:
        logger.removeHandler(handler)
    assert out["input_values"].shape == (1, 1024, 128)
    assert len(records) == 1 and "sampling_rate" in records[0].getMessage()


@pytest.mark.parametrize(
    ("audio", "error", "match"),
    [
        (np.zeros(0, np.float32), ValueError, "0 samples but at least 400"),
        (np.zeros(399, np.float32), ValueError, "399 samples but at least 400"),
        ([np.zeros(1000, np.float32), np.zeros(10, np.float32)], ValueError, "Clip 1 has 10 samples"),
        (np.full(1000, np.nan, np.float32), ValueError, "NaN or infinite"),
        ([np.zeros(1000), np.r_[np.zeros(999), np.inf]], ValueError, "Clip 1 contains NaN or infinite"),
        (np.zeros((2, 2, 1000), np.float32), ValueError, "shape"),
        (torch.zeros(2, 2, 1000), ValueError, "shape"),
        ([np.zeros((2, 16000), np.float32)], ValueError, "Downmix to mono first"),
        (np.zeros((16000, 2), np.float32), ValueError, "downmix it to mono"),
        ([], ValueError, "empty list"),
        ("audio.wav", TypeError, "Unsupported audio input"),
        ([np.zeros(1000, np.complex64)], TypeError, "real-valued"),
        ({"path": "a.wav"}, ValueError, "'array' and 'sampling_rate'"),
    ],
)
def test_bad_input_raises_clear_errors(extractor, audio, error, match):
    with pytest.raises(error, match=match):
        extractor(audio, sampling_rate=SR)


def test_datasets_audio_column_records(extractor, tmp_path):
    """datasets decodes Audio columns to torchcodec decoders that answer ["array"] / ["sampling_rate"]."""
    from datasets import Audio, Dataset

    path = tmp_path / "clip.wav"
    sf.write(path, vowel_like(1.0), SR, subtype="PCM_16")
    ds = Dataset.from_dict({"audio": [str(path)] * 2}).cast_column("audio", Audio(sampling_rate=SR))
    expected = extractor(sf.read(path, dtype="float32")[0], sampling_rate=SR, return_tensors="np")
    one = extractor(ds[0]["audio"], return_tensors="np")  # carries its rate: no sampling_rate needed
    both = extractor(ds[:2]["audio"], return_tensors="np")
    np.testing.assert_allclose(one["input_values"], expected["input_values"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(both["input_values"][1], expected["input_values"][0], rtol=0, atol=1e-6)


def test_one_hour_clip_is_cropped_before_the_fbank(extractor, monkeypatch):
    hour = np.zeros(57_600_000, np.float32)  # pages stay untouched unless something reads the whole clip
    hour[:200_000] = white_noise(12.5)
    seen = []
    spectrogram = type(extractor)._spectrogram

    def spy(self, waveforms, *args):
        seen.append(waveforms.shape[-1])
        return spectrogram(self, waveforms, *args)

    monkeypatch.setattr(type(extractor), "_spectrogram", spy)
    out = extractor(hour, sampling_rate=SR, return_tensors="pt")
    assert out["input_values"].shape == (1, 1024, 128)
    assert out["attention_mask"].all()
    # the filterbank sees only the samples that make the 1,024 kept frames, not the hour
    assert seen == [extractor.max_samples], seen
    np.testing.assert_allclose(
        out["input_values"][0].numpy(),
        extractor(hour[: extractor.max_samples], sampling_rate=SR, return_tensors="np")["input_values"][0],
        rtol=0,
        atol=1e-6,
    )


def test_save_and_load_round_trip(tmp_path):
    fe = AudioFbankFeatureExtractor(
        num_mel_bins=64, target_length=512, mean=np.float32(-6.5), std=5.25, window_type="povey",
        waveform_scale=2.0**15, high_freq=-400.0, return_attention_mask=False,
    )  # fmt: skip
    json.dumps(fe.to_dict())  # numpy scalars must not leak into the config
    fe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == "AudioFbankFeatureExtractor" and saved["feature_size"] == 64
    loaded = AudioFbankFeatureExtractor.from_pretrained(tmp_path)
    assert loaded.to_dict() == fe.to_dict()
    assert pickle.loads(pickle.dumps(fe)).to_dict() == fe.to_dict()  # DataLoader workers, datasets.map
    x = vowel_like(1.0)
    np.testing.assert_array_equal(
        loaded(x, sampling_rate=SR, return_tensors="np")["input_values"],
        fe(x, sampling_rate=SR, return_tensors="np")["input_values"],
    )


class _FbankTestConfig(PretrainedConfig):
    model_type = "audiorep-fbank-test"


def test_auto_feature_extractor_registration(tmp_path):
    AutoConfig.register(_FbankTestConfig.model_type, _FbankTestConfig, exist_ok=True)
    AutoFeatureExtractor.register(_FbankTestConfig, AudioFbankFeatureExtractor, exist_ok=True)
    _FbankTestConfig().save_pretrained(tmp_path)
    AudioFbankFeatureExtractor(target_length=256).save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is AudioFbankFeatureExtractor and loaded.target_length == 256


def test_remote_code_loads_the_self_contained_module(tmp_path, monkeypatch):
    import transformers.dynamic_module_utils as dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(AudioFbankFeatureExtractor, "_auto_class", None)  # restored after the test
    AudioFbankFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    repo = tmp_path / "repo"
    AudioFbankFeatureExtractor(target_length=128).save_pretrained(repo)
    config = json.loads((repo / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {
        "AutoFeatureExtractor": "feature_extraction_fbank.AudioFbankFeatureExtractor"
    }
    assert (repo / "feature_extraction_fbank.py").is_file()
    # What a Hub user without hf_audiorep gets: the class imported from the copied file alone.
    remote_class = dynamic_module_utils.get_class_from_dynamic_module(
        "feature_extraction_fbank.AudioFbankFeatureExtractor", repo
    )
    assert remote_class is not AudioFbankFeatureExtractor
    x = vowel_like(1.0)
    expected = AudioFbankFeatureExtractor(target_length=128)(x, sampling_rate=SR, return_tensors="np")
    for loaded in (
        remote_class.from_pretrained(repo),
        AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True),
    ):
        assert type(loaded).__name__ == "AudioFbankFeatureExtractor" and loaded.target_length == 128
        got = loaded(x, sampling_rate=SR, return_tensors="np")
        np.testing.assert_array_equal(got["input_values"], expected["input_values"])


def test_module_imports_only_torch_numpy_transformers_and_stdlib():
    import sys

    tree = ast.parse(Path(_fbank.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 or node.level == 1, "only single-dot relative imports are allowed"
            if node.level == 0:
                roots.add(node.module.split(".")[0])
    assert roots - sys.stdlib_module_names - {"__future__"} <= {"numpy", "torch", "transformers"}


def test_validation_names_the_field():
    bad = {
        "sampling_rate": 0,
        "num_mel_bins": 0,
        "std": 0.0,
        "std_scale": -1.0,
        "target_length": 0,
        "window_type": "hann",
        "mean": float("nan"),
        "frame_shift_ms": 0.0,
        "preemphasis": 1.5,
        "waveform_scale": 0.0,
    }
    for field, value in bad.items():
        with pytest.raises(ValueError, match=f"`{field}`"):
            AudioFbankFeatureExtractor(**{field: value})
    with pytest.raises(ValueError, match="feature_size"):
        AudioFbankFeatureExtractor(num_mel_bins=64, feature_size=128)


def test_batch_features_equals_per_clip_call(extractor):
    clips = [vowel_like(1.0), white_noise(2.5), click_train(0.3), near_silence(11.0)]
    width = max(len(c) for c in clips)
    waveforms = torch.zeros(len(clips), width)
    for row, clip in enumerate(clips):
        waveforms[row, : len(clip)] = torch.from_numpy(clip)
    lengths = torch.tensor([len(c) for c in clips])
    values, mask = extractor.batch_features(waveforms, lengths)
    assert values.shape == (4, 1024, 128) and mask.dtype == torch.int64
    for row, clip in enumerate(clips):
        single = extractor(clip, sampling_rate=SR, return_tensors="pt")
        torch.testing.assert_close(values[row], single["input_values"][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(mask[row], single["attention_mask"][0], rtol=0, atol=0)
    # Without lengths every sample counts, padding zeros included.
    _, full_mask = extractor.batch_features(waveforms)
    assert full_mask.sum(dim=1).tolist() == [1024] * 4


def test_batch_features_edge_cases(extractor):
    waveforms = torch.from_numpy(np.stack([vowel_like(1.0), vowel_like(1.0)]))
    values, mask = extractor.batch_features(waveforms, [16000, 100])  # a clip shorter than one frame
    assert mask.sum(dim=1).tolist() == [98, 0]
    pad_value = (0.0 - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    torch.testing.assert_close(values[1], torch.full((1024, 128), pad_value), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"lie in \[0, 16000\]"):
        extractor.batch_features(waveforms, [16000, 16001])
    with pytest.raises(ValueError, match="one integer sample count per clip"):
        extractor.batch_features(waveforms, [16000])
    with pytest.raises(ValueError, match="batch, samples"):
        extractor.batch_features(waveforms[0])


def test_matches_transformers_ast_feature_extractor(extractor):
    """Same features as ASTFeatureExtractor (torchaudio backend), padding and normalisation order included."""
    clips = [vowel_like(1.0), white_noise(10.24), sine_sweep(12.0)]  # padded, exact, cropped
    ast_out = ASTFeatureExtractor()(clips, sampling_rate=SR, return_tensors="np")["input_values"]
    ours = extractor(clips, sampling_rate=SR, return_tensors="np")["input_values"]
    assert ours.shape == ast_out.shape == (3, 1024, 128)
    assert np.abs(ours - ast_out).max() <= PARITY_ATOL


def test_read_only_arrays_are_accepted_without_a_warning():
    import warnings

    wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    read_only = np.frombuffer(wave.tobytes(), dtype=np.float32)
    assert not read_only.flags.writeable
    fe = AudioFbankFeatureExtractor(target_length=100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "The given NumPy array is not writable" would raise here
        out = fe(read_only, sampling_rate=16000, return_tensors="pt")["input_values"]
    np.testing.assert_array_equal(out, fe(wave, sampling_rate=16000, return_tensors="pt")["input_values"])
