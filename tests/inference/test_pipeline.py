"""``pipeline("audio-classification")`` on the library's models: the whole clip is scored (the same windows
as the CLI and the Space), the model's activation is used, decoding errors are the library's; other models
go through transformers' pipeline unchanged."""

import io
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch
from tagger_utils import write_clip
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    AudioClassificationPipeline,
    pipeline,
)

from hf_audiorep.data.decode import CorruptAudioError, decode_audio
from hf_audiorep.inference import tag_waveform
from hf_audiorep.pipelines import AudioTaggingPipeline


def test_a_long_clip_is_scored_whole(tagger_dir, tmp_path):
    clip = write_clip(tmp_path / "long.wav", 7.0, seed=5)
    tagger = pipeline("audio-classification", model=str(tagger_dir))
    assert isinstance(tagger, AudioTaggingPipeline)
    wave = decode_audio(str(clip), 16000)
    expected = tag_waveform(tagger.model, tagger.feature_extractor, wave, 16000)
    assert len(expected.window_starts) > 1
    for inputs in (str(clip), clip.read_bytes(), {"array": wave, "sampling_rate": 16000}, wave):
        out = tagger(inputs, top_k=4)
        assert [(r["label"], pytest.approx(r["score"], abs=1e-6)) for r in out] == expected.top(4)
    # transformers' own pipeline sees the first window only: a different answer for this clip
    first_window = AudioClassificationPipeline(model=tagger.model, feature_extractor=tagger.feature_extractor)
    first = first_window(str(clip), top_k=36, function_to_apply="sigmoid")
    scores = {r["label"]: r["score"] for r in first}
    assert max(abs(scores[label] - score) for label, score in expected.top(36)) > 1e-3


def test_scores_follow_the_model_or_function_to_apply(tagger_dir, single_label_tagger_dir, tmp_path):
    clip = str(write_clip(tmp_path / "c.wav", 5.0, seed=6))
    single = pipeline("audio-classification", model=str(single_label_tagger_dir))(clip, top_k=None)
    assert sum(r["score"] for r in single) == pytest.approx(1.0, abs=1e-5)  # softmax, as trained
    multi = pipeline("audio-classification", model=str(tagger_dir))
    sigmoids = multi(clip, top_k=None)
    assert sum(r["score"] for r in sigmoids) > 5  # 36 independent sigmoids near 0.5
    softmax = multi(clip, top_k=None, function_to_apply="softmax")
    assert sum(r["score"] for r in softmax) == pytest.approx(1.0, abs=1e-5)


def test_decoding_problems_are_the_librarys_errors_and_no_warnings(tagger_dir, tmp_path):
    tagger = pipeline("audio-classification", model=str(tagger_dir))
    buffer = io.BytesIO()
    sf.write(buffer, np.random.default_rng(0).normal(0, 0.1, 48000).astype(np.float32), 16000, format="FLAC")
    truncated = tmp_path / "cut.flac"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(CorruptAudioError, match="truncated or damaged"):
        tagger(str(truncated))
    with pytest.raises(CorruptAudioError, match="truncated or damaged"):
        tagger(truncated.read_bytes())
    with pytest.raises(FileNotFoundError, match="no such file"):
        tagger(str(tmp_path / "missing.wav"))
    clip = write_clip(tmp_path / "ok.wav", 3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "The given NumPy array is not writable"
        tagger(str(clip))
        tagger(np.frombuffer(decode_audio(str(clip), 16000).tobytes(), dtype=np.float32))  # read-only array


def test_other_models_keep_transformers_behaviour(tmp_path):
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_length=100,
        num_mel_bins=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    ASTForAudioClassification(config).save_pretrained(tmp_path / "ast")
    ASTFeatureExtractor(num_mel_bins=16, max_length=100).save_pretrained(tmp_path / "ast")
    ours = pipeline("audio-classification", model=str(tmp_path / "ast"))
    reference = AudioClassificationPipeline(model=ours.model, feature_extractor=ours.feature_extractor)
    wave = np.random.default_rng(1).normal(0, 0.1, 16000).astype(np.float32)
    assert ours(wave) == reference(wave)
    # and its batching: the library's own one-clip-per-step batching is for the library's models only
    waves = [np.random.default_rng(seed).normal(0, 0.1, 16000).astype(np.float32) for seed in range(3)]
    assert ours(waves, batch_size=2) == reference(waves, batch_size=2)
