"""The front-end family beyond the AST fbank: Zipformer's 80-bin fbank and CP-Mobile's 32 kHz log-mel.

Parity with the references (torchaudio's Kaldi fbank, torchaudio's MelSpectrogram, the CP-JKU DCASE23
AugmentMelSTFT recipe rebuilt from torch/torchaudio calls), variable-length batching, and the contract the
family shares (sampling-rate check, input types, save/load, old configs, Hub remote code).
"""

import ast
import contextlib
import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
import torchaudio.compliance.kaldi as ta_kaldi
from transformers import AutoFeatureExtractor

from hf_audiorep.modeling import (
    AudioFbankFeatureExtractor,
    LogMelFeatureExtractor,
    ZipformerFbankFeatureExtractor,
    feature_extraction_base,
    feature_extraction_fbank,
    feature_extraction_log_mel,
    kaldi_fbank,
    stft_log_mel,
)

KALDI_ATOL = 1e-3  # as in test_fbank.py: torchaudio's float32 Kaldi mel bank moves values by ~1e-4
LOG_MEL_ATOL = 1e-4


# ------------------------------------------------------------------------------------------------------------
# Signals at any rate
# ------------------------------------------------------------------------------------------------------------


def _time(seconds: float, sr: int) -> np.ndarray:
    return np.arange(int(round(seconds * sr))) / sr


def vowel_like(seconds: float, sr: int, seed: int = 2) -> np.ndarray:
    """Harmonics of a 120 Hz voice under three formants, with vibrato and breath noise."""
    t = _time(seconds, sr)
    f0 = 120.0 * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = np.zeros_like(t)
    for k in range(1, int(0.45 * sr / 120)):
        fk = 120.0 * k
        gain = sum(
            a / (1 + ((fk - fc) / bw) ** 2)
            for fc, bw, a in ((700, 110, 1), (1220, 120, 0.5), (2600, 160, 0.25))
        )
        x += gain / k * np.sin(k * phase)
    x = x / np.abs(x).max() * 0.6 + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return x.astype(np.float32)


def white_noise(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(len(_time(seconds, sr)))).astype(np.float32)


def near_silence(seconds: float, sr: int) -> np.ndarray:
    return (1e-5 * np.random.default_rng(1).standard_normal(len(_time(seconds, sr)))).astype(np.float32)


def click_train(seconds: float, sr: int) -> np.ndarray:
    x = np.zeros(len(_time(seconds, sr)), np.float32)
    x[:: sr // 13] = 0.8
    return x


def sine_sweep(seconds: float, sr: int) -> np.ndarray:
    t = _time(seconds, sr)
    f0, f1 = 50.0, 0.49 * sr
    rate = np.log(f1 / f0) / seconds
    return (0.5 * np.sin(2 * np.pi * f0 * (np.exp(rate * t) - 1) / rate)).astype(np.float32)


def pure_tone(seconds: float, sr: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * 1234.5 * _time(seconds, sr))).astype(np.float32)


BROADBAND = {"vowel": vowel_like, "noise": white_noise, "near_silence": near_silence, "clicks": click_train}


# ------------------------------------------------------------------------------------------------------------
# Zipformer: 80-bin, raw, variable-length Kaldi fbank at 100 frames/s
# ------------------------------------------------------------------------------------------------------------


def torchaudio_zipformer_fbank(x: np.ndarray) -> torch.Tensor:
    """lhotse's FbankConfig defaults, which icefall/Auden compute, through torchaudio's Kaldi port."""
    return ta_kaldi.fbank(
        torch.from_numpy(x)[None],
        num_mel_bins=80,
        frame_length=25.0,
        frame_shift=10.0,
        window_type="povey",
        snip_edges=False,
        high_freq=-400.0,
        low_freq=20.0,
        dither=0.0,
        preemphasis_coefficient=0.97,
        remove_dc_offset=True,
        htk_compat=True,
        use_energy=False,
        sample_frequency=16000,
    )


@pytest.fixture(scope="module")
def zipformer():
    return ZipformerFbankFeatureExtractor()


@pytest.mark.parametrize("seconds", [0.025, 0.5, 1.0, 1.2345])
@pytest.mark.parametrize("name", sorted(BROADBAND) + ["sweep"])
def test_zipformer_matches_torchaudio_kaldi_fbank_frame_for_frame(zipformer, name, seconds):
    x = {**BROADBAND, "sweep": sine_sweep}[name](seconds, 16000)
    ref = torchaudio_zipformer_fbank(x)
    out = zipformer(x, sampling_rate=16000, return_tensors="pt")
    ours, mask = out["input_values"][0], out["attention_mask"][0]
    assert ref.shape == ours.shape == ((len(x) + 80) // 160, 80)  # 100 frames per second, no snipping
    assert mask.all()
    assert (ours - ref).abs().max().item() <= KALDI_ATOL


def test_zipformer_features_are_raw_log_mel(zipformer):
    x = vowel_like(2.0, 16000)
    ours = zipformer(x, sampling_rate=16000, return_tensors="pt")["input_values"][0]
    raw = kaldi_fbank(
        torch.from_numpy(x), num_mel_bins=80, window_type="povey", high_freq=-400.0, snip_edges=False
    )
    torch.testing.assert_close(ours, raw, rtol=0, atol=0)  # no mean/std normalisation at all
    assert not zipformer.do_normalize and zipformer.target_length is None and zipformer.num_mel_bins == 80


def test_zipformer_pads_a_batch_to_its_longest_clip_with_the_right_mask(zipformer):
    short, long = vowel_like(1.0, 16000), white_noise(2.345, 16000)
    out = zipformer([short, long], sampling_rate=16000, return_tensors="pt")
    values, mask = out["input_values"], out["attention_mask"]
    assert values.shape == (2, 235, 80) and mask.shape == (2, 235) and mask.dtype == torch.int64
    assert mask.sum(dim=1).tolist() == [100, 235]  # 37520 samples: (37520 + 80) // 160
    assert mask[0, :100].all() and not mask[0, 100:].any()
    # Each clip's frames are its own: mirrored at its own end, not at the padded batch's.
    for row, clip in enumerate((short, long)):
        n = int(mask[row].sum())
        single = zipformer(clip, sampling_rate=16000, return_tensors="pt")["input_values"][0]
        torch.testing.assert_close(values[row, :n], single, rtol=0, atol=1e-5)
        assert (values[row, :n] - torchaudio_zipformer_fbank(clip)).abs().max().item() <= KALDI_ATOL
    # Padding is lhotse's LOG_EPSILON, what icefall's collate gives padded frames.
    torch.testing.assert_close(values[0, 100:], torch.full((135, 80), math.log(1e-10)), rtol=0, atol=1e-6)


def test_zipformer_batch_features_equals_the_call(zipformer):
    clips = [vowel_like(1.0, 16000), white_noise(0.37, 16000), click_train(1.5, 16000)]
    waveforms = torch.zeros(3, 24000)
    for row, clip in enumerate(clips):
        waveforms[row, : len(clip)] = torch.from_numpy(clip)
    values, mask = zipformer.batch_features(waveforms, [len(c) for c in clips])
    expected = zipformer(clips, sampling_rate=16000, return_tensors="pt")
    assert values.shape == (3, 150, 80)  # the frames of the 24000-sample batch width
    torch.testing.assert_close(values, expected["input_values"], rtol=0, atol=1e-5)
    torch.testing.assert_close(mask, expected["attention_mask"], rtol=0, atol=0)


def test_snip_edges_false_in_kaldi_fbank_and_with_a_target_length():
    clips = np.stack([vowel_like(1.03, 16000), white_noise(1.03, 16000)])
    batch = kaldi_fbank(torch.from_numpy(clips), num_mel_bins=80, window_type="povey", snip_edges=False)
    for row, clip in enumerate(clips):
        ref = ta_kaldi.fbank(torch.from_numpy(clip)[None], num_mel_bins=80, snip_edges=False, htk_compat=True)
        assert batch.shape[1] == ref.shape[0] == 103
        assert (batch[row] - ref).abs().max().item() <= KALDI_ATOL
    # Cropping to a target length must not let the kept frames see the mirrored edge.
    cropped = ZipformerFbankFeatureExtractor(target_length=50)
    full = ZipformerFbankFeatureExtractor()(clips[0], sampling_rate=16000, return_tensors="pt")[
        "input_values"
    ]
    out = cropped(clips[0], sampling_rate=16000, return_tensors="pt")
    assert out["input_values"].shape == (1, 50, 80) and out["attention_mask"].all()
    torch.testing.assert_close(out["input_values"][0], full[0, :50], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# CP-Mobile: 32 kHz log-mel
# ------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def float64_default():
    """torchaudio builds its mel banks in the default dtype: float64 gives the exact triangles."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def torchaudio_dcase24_log_mel(x: np.ndarray, exact_mel_bank: bool = True) -> torch.Tensor:
    """CPJKU/dcase2024_task1_baseline's front end: MelSpectrogram at 32 kHz, then log(x + 1e-5).

    As torchaudio ships it, the mel bank is computed in float32: its filter-edge weights carry relative errors
    up to ~1e-3, which a harmonic at a filter edge turns into a few 1e-4 of log-mel. ``exact_mel_bank`` builds
    the same bank in float64 (then rounds it to float32 once) and leaves the rest of the pipeline -- window,
    padding, STFT, all in float32 -- as torchaudio runs it.
    """
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256, f_min=0.0, f_max=None
    )
    if exact_mel_bank:
        with float64_default():
            bank = torchaudio.functional.melscale_fbanks(2049, 0.0, 16000.0, 256, 32000, None, "htk")
        mel.mel_scale.fb = bank.float()
    return (mel(torch.from_numpy(x)) + 1e-5).log().T


def torchaudio_dcase23_log_mel(x: np.ndarray, exact_mel_bank: bool = True) -> torch.Tensor:
    """fschmid56/cpjku_dcase23's AugmentMelSTFT in eval mode with its run_training.py arguments."""
    wave = torch.from_numpy(x)[None, None]
    wave = torch.nn.functional.conv1d(wave, torch.tensor([[[-0.97, 1.0]]]))[:, 0]  # pre-emphasis
    window = torch.hann_window(3072, periodic=False)
    spec = torch.stft(
        wave, 4096, hop_length=500, win_length=3072, window=window, center=True, return_complex=True
    )
    power = torch.view_as_real(spec).pow(2).sum(-1)
    with float64_default() if exact_mel_bank else contextlib.nullcontext():
        banks, _ = ta_kaldi.get_mel_banks(256, 4096, 32000.0, 0.0, 15500.0, 100.0, -500.0, 1.0)
    banks = torch.nn.functional.pad(banks.float(), (0, 1))
    return (((banks @ power) + 1e-5).log()[0].T + 4.5) / 5.0


@pytest.fixture(scope="module")
def log_mel():
    return LogMelFeatureExtractor()


ALL_SIGNALS = {**BROADBAND, "sweep": sine_sweep, "tone": pure_tone}


@pytest.mark.parametrize("name", sorted(ALL_SIGNALS))
def test_log_mel_matches_torchaudio_mel_spectrogram(log_mel, name):
    x = ALL_SIGNALS[name](1.3, 32000)
    ref = torchaudio_dcase24_log_mel(x)
    ours = log_mel(x, sampling_rate=32000, return_tensors="pt")["input_values"][0]
    assert ours.shape == ref.shape == (1 + len(x) // 500, 256)
    assert (ours - ref).abs().max().item() <= LOG_MEL_ATOL
    # Against torchaudio's float32 bank the gap is that bank's rounding (4.3e-4 on the vowel, 2.2e-4 on the
    # tone; <= 5e-5 on noise-like signals).
    assert (ours - torchaudio_dcase24_log_mel(x, exact_mel_bank=False)).abs().max().item() <= KALDI_ATOL
    torch.testing.assert_close(stft_log_mel(torch.from_numpy(x)), ours, rtol=0, atol=0)


def test_log_mel_geometry_and_mel_bank():
    fe = LogMelFeatureExtractor()
    assert fe.num_frames(32000) == 65  # a 1-s TAU22 clip
    banks = feature_extraction_log_mel._log_mel_constants(fe._spec, "cpu")[1]
    with float64_default():
        reference = torchaudio.functional.melscale_fbanks(2049, 0.0, 16000.0, 256, 32000, None, "htk")
    assert banks.shape == (2049, 256) and (banks - reference).abs().max().item() <= 1e-7


@pytest.mark.parametrize("name", ["clicks", "sweep", "tone", "vowel"])
def test_cpjku_dcase23_preset_matches_augment_mel_stft(name):
    fe = LogMelFeatureExtractor.from_preset("cpjku_dcase23")
    assert (fe.preemphasis, fe.mel_scale, fe.periodic_window, fe.f_max) == (0.97, "kaldi", False, 15500.0)
    x = ALL_SIGNALS[name](1.0, 32000)
    ref = torchaudio_dcase23_log_mel(x)
    ours = fe(x, sampling_rate=32000, return_tensors="pt")["input_values"][0]
    assert ours.shape == ref.shape == (64, 256)  # pre-emphasis drops a sample: 1 + 31999 // 500
    assert (ours - ref).abs().max().item() <= LOG_MEL_ATOL
    assert (ours - torchaudio_dcase23_log_mel(x, exact_mel_bank=False)).abs().max().item() <= KALDI_ATOL


def test_log_mel_variable_length_batch(log_mel):
    short, long = vowel_like(1.0, 32000), white_noise(1.77, 32000)
    out = log_mel([short, long], sampling_rate=32000, return_tensors="pt")
    values, mask = out["input_values"], out["attention_mask"]
    assert values.shape == (2, 114, 256) and mask.sum(dim=1).tolist() == [65, 114]
    for row, clip in enumerate((short, long)):
        n = int(mask[row].sum())
        assert (values[row, :n] - torchaudio_dcase24_log_mel(clip)).abs().max().item() <= LOG_MEL_ATOL
    # Padding is the log-mel of digital silence, and it is normalised with the rest.
    torch.testing.assert_close(values[0, 65:], torch.full((49, 256), math.log(1e-5)), rtol=0, atol=1e-6)
    dcase23 = LogMelFeatureExtractor.from_preset("cpjku_dcase23")
    padded = dcase23([short, long], sampling_rate=32000, return_tensors="pt")["input_values"]
    assert torch.allclose(padded[0, 64:], torch.tensor((math.log(1e-5) + 4.5) / 5))
    # The in-step path agrees with the call.
    waveforms = torch.zeros(2, len(long))
    waveforms[0, : len(short)], waveforms[1] = torch.from_numpy(short), torch.from_numpy(long)
    got, got_mask = log_mel.batch_features(waveforms, [len(short), len(long)])
    torch.testing.assert_close(got, values, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_mask, mask, rtol=0, atol=0)


def test_log_mel_target_length_crops_without_touching_the_kept_frames():
    x = white_noise(3.0, 32000)
    full = LogMelFeatureExtractor()(x, sampling_rate=32000, return_tensors="pt")["input_values"][0]
    for fe in (LogMelFeatureExtractor(target_length=65), LogMelFeatureExtractor(target_length=400)):
        out = fe(x, sampling_rate=32000, return_tensors="pt")
        kept = min(fe.target_length, full.shape[0])
        assert out["input_values"].shape == (1, fe.target_length, 256)
        assert out["attention_mask"].sum().item() == kept
        torch.testing.assert_close(out["input_values"][0, :kept], full[:kept], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# The family contract
# ------------------------------------------------------------------------------------------------------------

FAMILY = {
    "zipformer": (ZipformerFbankFeatureExtractor, 16000),
    "log_mel": (LogMelFeatureExtractor, 32000),
    "log_mel_dcase23": (lambda **kw: LogMelFeatureExtractor.from_preset("cpjku_dcase23", **kw), 32000),
}


@pytest.mark.parametrize("member", sorted(FAMILY))
def test_wrong_sampling_rate_is_a_clear_error(member):
    make, rate = FAMILY[member]
    fe, x = make(), vowel_like(0.5, rate)
    wrong = 44100
    with pytest.raises(
        ValueError, match=f"sampled at {wrong} Hz but this feature extractor expects {rate} Hz"
    ):
        fe(x, sampling_rate=wrong)
    with pytest.raises(ValueError, match="Clip 1 was sampled at 16001 Hz"):
        fe([{"array": x, "sampling_rate": rate}, {"array": x, "sampling_rate": 16001}])


@pytest.mark.parametrize("member", sorted(FAMILY))
def test_numpy_list_and_torch_batches_give_identical_results(member):
    make, rate = FAMILY[member]
    fe = make()
    # Clips on the int16 grid, so that the int16 PCM variant holds exactly the same samples.
    pcm = [np.round(c * 32767).astype(np.int16) for c in (vowel_like(0.6, rate), white_noise(0.6, rate))]
    clips = [c.astype(np.float32) / 32768 for c in pcm]
    reference = fe(clips, sampling_rate=rate, return_tensors="np")
    variants = {
        "list of lists": [c.tolist() for c in clips],
        "list of tensors": [torch.from_numpy(c) for c in clips],
        "2-D array": np.stack(clips),
        "2-D tensor": torch.from_numpy(np.stack(clips)),
        "int16 PCM": pcm,
        "records": [{"array": c, "sampling_rate": rate} for c in clips],
    }
    for name, batch in variants.items():
        got = fe(batch, sampling_rate=rate, return_tensors="np")
        np.testing.assert_allclose(
            got["input_values"], reference["input_values"], rtol=0, atol=1e-6, err_msg=name
        )
        np.testing.assert_array_equal(got["attention_mask"], reference["attention_mask"], err_msg=name)
    as_list = fe(clips[0].tolist(), sampling_rate=rate)  # one clip as a list of floats, list output
    assert isinstance(as_list["input_values"], list) and len(as_list["input_values"]) == 1


@pytest.mark.parametrize("member", sorted(FAMILY))
def test_too_short_clips_are_a_clear_error(member):
    make, rate = FAMILY[member]
    fe = make()
    with pytest.raises(ValueError, match=f"has 10 samples but at least {fe.min_samples}"):
        fe(np.zeros(10, np.float32), sampling_rate=rate)


@pytest.mark.parametrize("member", sorted(FAMILY))
def test_save_and_load_round_trip(member, tmp_path):
    make, rate = FAMILY[member]
    fe = make(target_length=80, return_attention_mask=False)
    json.dumps(fe.to_dict())
    fe.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    cls = type(fe)
    assert saved["feature_extractor_type"] == cls.__name__ and saved["feature_size"] == fe.num_mel_bins
    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is cls and loaded.to_dict() == fe.to_dict()
    assert pickle.loads(pickle.dumps(fe)).to_dict() == fe.to_dict()
    x = vowel_like(1.0, rate)
    got = loaded(x, sampling_rate=rate, return_tensors="np")
    assert "attention_mask" not in got and got["input_values"].shape == (1, 80, fe.num_mel_bins)
    np.testing.assert_array_equal(
        got["input_values"], fe(x, sampling_rate=rate, return_tensors="np")["input_values"]
    )


def test_validation_names_the_field():
    for cls, field, value in [
        (LogMelFeatureExtractor, "n_fft", 0),
        (LogMelFeatureExtractor, "win_length", 8192),
        (LogMelFeatureExtractor, "f_max", 20000.0),
        (LogMelFeatureExtractor, "mel_scale", "slaney"),
        (LogMelFeatureExtractor, "log_offset", 0.0),
        (LogMelFeatureExtractor, "std", 0.0),
        (LogMelFeatureExtractor, "sampling_rate", 0),
        (ZipformerFbankFeatureExtractor, "num_mel_bins", 2),
        (ZipformerFbankFeatureExtractor, "window_type", "hann"),
    ]:
        with pytest.raises(ValueError, match=f"`{field}`"):
            cls(**{field: value})
    with pytest.raises(ValueError, match="Unknown preset"):
        LogMelFeatureExtractor.from_preset("efficientat")


# A preprocessor_config.json written by the extractor before the front-end family (then `_fbank.py`), as the
# Hub push wrote it: no `snip_edges`, and an auto_map naming the old module.
OLD_CONFIG = {
    "auto_map": {"AutoFeatureExtractor": "_fbank.AudioFbankFeatureExtractor"},
    "dither": 0.0,
    "do_normalize": True,
    "feature_extractor_type": "AudioFbankFeatureExtractor",
    "feature_size": 64,
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "high_freq": 0.0,
    "low_freq": 20.0,
    "mean": -4.2677393,
    "num_mel_bins": 64,
    "padding_side": "right",
    "padding_value": 0.0,
    "preemphasis": 0.97,
    "remove_dc_offset": True,
    "return_attention_mask": True,
    "sampling_rate": 16000,
    "std": 4.5689974,
    "std_scale": 2.0,
    "target_length": 512,
    "waveform_scale": 1.0,
    "window_type": "hanning",
}


def test_configs_saved_before_the_rename_still_load(tmp_path):
    import hf_audiorep  # registers the extractor with AutoFeatureExtractor for the architectures

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(OLD_CONFIG))
    hf_audiorep.AudioMAEConfig().save_pretrained(tmp_path)
    expected = AudioFbankFeatureExtractor(num_mel_bins=64, target_length=512)
    x = vowel_like(1.0, 16000)
    for loaded in (
        AudioFbankFeatureExtractor.from_pretrained(tmp_path),
        AutoFeatureExtractor.from_pretrained(tmp_path),  # local class wins over the auto_map
    ):
        assert type(loaded) is AudioFbankFeatureExtractor and loaded.snip_edges is True
        np.testing.assert_array_equal(
            loaded(x, sampling_rate=16000, return_tensors="np")["input_values"],
            expected(x, sampling_rate=16000, return_tensors="np")["input_values"],
        )


@pytest.fixture
def fresh_dynamic_modules(monkeypatch):
    """Hide, then restore, what an earlier in-process remote-code test left behind.

    transformers imports the `transformers_modules` package from the first HF_MODULES_CACHE put on sys.path;
    the copied files' relative imports (`from .feature_extraction_base import ...`) resolve through it, so a
    test with its own cache needs that package fresh, and must leave none of its own behind.
    """

    def loaded() -> dict:
        return {k: v for k, v in sys.modules.items() if k.split(".")[0] == "transformers_modules"}

    monkeypatch.setattr(sys, "path", [p for p in sys.path if not (Path(p) / "transformers_modules").is_dir()])
    saved = loaded()
    for name in saved:
        del sys.modules[name]
    yield
    for name in loaded():
        del sys.modules[name]
    sys.modules.update(saved)


def test_family_modules_ship_as_remote_code(tmp_path, monkeypatch, fresh_dynamic_modules):
    import transformers.dynamic_module_utils as dynamic_module_utils

    roots = set()
    for module in (feature_extraction_base, feature_extraction_fbank, feature_extraction_log_mel):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text())):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level in (0, 1), f"{module.__name__}: only single-dot relative imports ship"
                if node.level == 0:
                    roots.add(node.module.split(".")[0])
    assert roots - sys.stdlib_module_names - {"__future__"} == {"numpy", "torch", "transformers"}

    monkeypatch.setattr(dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(LogMelFeatureExtractor, "_auto_class", None)  # restored after the test
    LogMelFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
    repo = tmp_path / "repo"
    fe = LogMelFeatureExtractor.from_preset("cpjku_dcase23")
    fe.save_pretrained(repo)
    assert (repo / "feature_extraction_log_mel.py").is_file() and (
        repo / "feature_extraction_base.py"
    ).is_file()
    remote = dynamic_module_utils.get_class_from_dynamic_module(
        "feature_extraction_log_mel.LogMelFeatureExtractor", repo
    )
    assert remote is not LogMelFeatureExtractor
    x = vowel_like(1.0, 32000)
    np.testing.assert_array_equal(
        remote.from_pretrained(repo)(x, sampling_rate=32000, return_tensors="np")["input_values"],
        fe(x, sampling_rate=32000, return_tensors="np")["input_values"],
    )


@pytest.mark.parametrize("member", ["ast_fbank", *sorted(FAMILY)])
def test_frame_times_put_each_frame_where_its_window_is_centred(member):
    """A click in silence is loudest in the frame whose window is centred nearest to it (every member's
    window peaks in its middle), so that frame's time must lie within half a hop of the click."""
    make, rate = FAMILY[member] if member in FAMILY else (AudioFbankFeatureExtractor, 16000)
    fe = make()
    hop = fe.frame_times(2)[1] - fe.frame_times(2)[0]
    for k in range(8):
        click = 0.3 + k * hop / 8  # every phase of the click against the frame grid
        x = 1e-4 * np.random.default_rng(k).standard_normal(rate)
        x[int(round(click * rate))] = 0.9
        energy = fe.spectrogram(x.astype(np.float32)).exp().sum(-1)
        loudest = int(energy.argmax())
        times = fe.frame_times(len(energy))
        assert len(times) == len(energy)
        assert abs(times[loudest] - click) <= hop / 2 + 1.5 / rate, (member, k, times[loudest], click)
