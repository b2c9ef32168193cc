"""BEATs' front end (hf_audiorep/modeling/feature_extraction_beats.py) against torchaudio's Kaldi fbank with
the normalisation written out here: its defaults (16 kHz, 128 bins, povey window, waveform in int16 units,
BEATs' statistics ``(x - 15.41663) / (2 * 6.55582)``, any length, padding with the log-mel of silence), and
every field still overridable. test_modeling_beats.py compares against the reference's preprocess; this file
pins each setting on its own, so a wrong one is named."""

import json
import math

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as ta_kaldi

from hf_audiorep.modeling.feature_extraction_beats import (
    BEATS_FBANK_MEAN,
    BEATS_FBANK_STD,
    BEATsFeatureExtractor,
)

# The reference's preprocess defaults (microsoft/unilm beats/BEATs.py), written out.
MEAN, STD = 15.41663, 6.55582
LOG_EPS = -23 * math.log(2)  # Kaldi's floor, ln(float32 eps = 2**-23): the log-mel of an all-zero frame


def clip(samples: int, seed: int = 0) -> np.ndarray:
    return (0.2 * np.random.default_rng(seed).standard_normal(samples)).astype(np.float32)


def kaldi(x: np.ndarray, scale: float = 2.0**15, **settings) -> torch.Tensor:
    """torchaudio's fbank of one clip: the reference's defaults unless ``settings`` says otherwise."""
    options = dict(num_mel_bins=128, sample_frequency=16000, window_type="povey", dither=0.0)
    options.update(settings)
    return ta_kaldi.fbank(torch.from_numpy(x).unsqueeze(0).double() * scale, **options).float()


def test_module_statistics_are_the_references():
    assert (BEATS_FBANK_MEAN, BEATS_FBANK_STD) == (MEAN, STD)


def test_defaults_are_beats_settings():
    extractor = BEATsFeatureExtractor()
    settings = extractor.to_dict()
    expected = {
        "sampling_rate": 16000,
        "num_mel_bins": 128,
        "feature_size": 128,
        "target_length": None,
        "mean": MEAN,
        "std": STD,
        "std_scale": 2.0,
        "do_normalize": True,
        "window_type": "povey",
        "waveform_scale": 32768.0,
        "frame_length_ms": 25.0,
        "frame_shift_ms": 10.0,
        "preemphasis": 0.97,
        "low_freq": 20.0,
        "high_freq": 0.0,
        "dither": 0.0,
        "snip_edges": True,
        "return_attention_mask": True,
    }
    assert {key: settings[key] for key in expected} == expected
    assert settings["padding_value"] == pytest.approx(LOG_EPS, abs=1e-9)


def test_one_clip_equals_normalised_torchaudio_fbank():
    x = clip(6400, seed=3)
    features = BEATsFeatureExtractor()(x, sampling_rate=16000, return_tensors="pt")
    expected = (kaldi(x) - MEAN) / (2 * STD)
    assert features["input_values"].shape == (1, 1 + (6400 - 400) // 160, 128)
    torch.testing.assert_close(features["input_values"][0], expected, rtol=0, atol=1e-4)
    assert features["attention_mask"].tolist() == [[1] * expected.shape[0]]


def test_without_normalisation_the_features_are_torchaudios_log_mel():
    x = clip(4000, seed=4)
    raw = BEATsFeatureExtractor(do_normalize=False)(x, sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(raw["input_values"][0], kaldi(x), rtol=0, atol=2e-4)


def test_batch_pads_with_the_normalised_log_mel_of_silence():
    long, short = clip(8000, seed=5), clip(3200, seed=6)
    batch = BEATsFeatureExtractor()([long, short], sampling_rate=16000, return_tensors="pt")
    frames_long, frames_short = 1 + (8000 - 400) // 160, 1 + (3200 - 400) // 160
    assert batch["input_values"].shape == (2, frames_long, 128)
    assert batch["attention_mask"].sum(-1).tolist() == [frames_long, frames_short]
    torch.testing.assert_close(
        batch["input_values"][1, :frames_short], (kaldi(short) - MEAN) / (2 * STD), rtol=0, atol=1e-4
    )
    silence = (LOG_EPS - MEAN) / (2 * STD)
    torch.testing.assert_close(
        batch["input_values"][1, frames_short:],
        torch.full((frames_long - frames_short, 128), silence),
        rtol=0,
        atol=1e-5,
    )


def test_every_setting_can_be_overridden():
    settings = dict(
        sampling_rate=8000,
        num_mel_bins=40,
        target_length=30,
        mean=1.5,
        std=3.0,
        window_type="hanning",
        waveform_scale=1.0,
        padding_value=-2.0,
    )
    extractor = BEATsFeatureExtractor(**settings, std_scale=1.0, frame_shift_ms=20.0)
    assert {key: getattr(extractor, key) for key in settings} == settings
    assert (extractor.std_scale, extractor.frame_shift_ms) == (1.0, 20.0)
    x = clip(4000, seed=7)  # 1 + (4000 - 200) // 160 = 24 frames, padded to 30
    out = extractor(x, sampling_rate=8000, return_tensors="pt")
    fbank = kaldi(x, scale=1.0, num_mel_bins=40, sample_frequency=8000, window_type="hanning", frame_shift=20)
    assert fbank.shape == (24, 40) and out["input_values"].shape == (1, 30, 40)
    torch.testing.assert_close(out["input_values"][0, :24], (fbank - 1.5) / 3.0, rtol=0, atol=1e-4)
    torch.testing.assert_close(
        out["input_values"][0, 24:], torch.full((6, 40), (-2.0 - 1.5) / 3.0), rtol=0, atol=1e-6
    )
    assert out["attention_mask"].tolist() == [[1] * 24 + [0] * 6]
    with pytest.raises(ValueError, match="expects 8000 Hz"):
        extractor(x, sampling_rate=16000)


def test_saved_settings_load_back_and_overrides_survive(tmp_path):
    BEATsFeatureExtractor(mean=2.0, std=5.0, num_mel_bins=64, do_normalize=False).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    keys = ("mean", "std", "num_mel_bins", "do_normalize")
    assert [saved[key] for key in keys] == [2.0, 5.0, 64, False]
    assert saved["window_type"] == "povey" and saved["waveform_scale"] == 32768.0
    loaded = BEATsFeatureExtractor.from_pretrained(tmp_path)
    assert (loaded.mean, loaded.std, loaded.num_mel_bins, loaded.do_normalize) == (2.0, 5.0, 64, False)
    assert math.isclose(loaded.padding_value, LOG_EPS, abs_tol=1e-9) and loaded.target_length is None
