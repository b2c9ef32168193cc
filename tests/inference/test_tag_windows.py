"""The tagging window, what one forward pass sees when the CLI, the pipeline and the Space cut a clip: the
samples that fill the model's input exactly, for front ends that crop to ``target_length`` frames and for
the Zipformer's, which crops to nothing and is bounded by ``config.max_length``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from family_utils import NUM_LABELS, TINY, tiny_model
from tagger_utils import save_tiny_tagger
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from hf_audiorep.inference import DEFAULT_WINDOW_SECONDS, model_window_seconds, tag_waveform
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor
from hf_audiorep.registry import ARCHITECTURES

EXTRACTORS = sorted(
    {architecture.feature_extractor for architecture in ARCHITECTURES}, key=lambda c: c.__name__
)


def _real_frames(extractor, samples: int) -> int:
    clip = np.random.default_rng(0).standard_normal(samples).astype(np.float32) * 0.1
    inputs = extractor(clip, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    return int(inputs["attention_mask"].sum())


@pytest.mark.parametrize("extractor_class", EXTRACTORS, ids=lambda c: c.__name__)
def test_a_window_gives_every_frame_of_the_input_and_no_padded_one(extractor_class):
    extractor = extractor_class(num_mel_bins=32, target_length=96)
    samples = round(model_window_seconds(extractor) * extractor.sampling_rate)
    assert _real_frames(extractor, samples) == 96
    if getattr(extractor, "snip_edges", False):  # frames inside the clip only: one sample less loses one
        assert _real_frames(extractor, samples - 1) < 96, "the shortest such window"


def test_a_clip_of_exactly_one_window_is_tagged_in_one_pass(tmp_path):
    directory = save_tiny_tagger(tmp_path / "tagger")
    model = AutoModelForAudioClassification.from_pretrained(directory).eval()
    extractor = AutoFeatureExtractor.from_pretrained(directory)
    window = extractor.max_samples
    clip = np.random.default_rng(1).standard_normal(window + 1).astype(np.float32) * 0.1
    one = tag_waveform(model, extractor, clip[:window], 16000)
    assert len(one.window_starts) == 1
    with torch.no_grad():
        logits = model(**extractor(clip[:window], sampling_rate=16000, return_tensors="pt")).logits[0]
    np.testing.assert_allclose(one.clip_scores, torch.sigmoid(logits).numpy(), atol=1e-6)
    assert len(tag_waveform(model, extractor, clip, 16000).window_starts) == 2


def test_the_zipformer_is_tagged_in_windows_its_max_length_accepts():
    model = tiny_model("zipformer", classifier=True)
    assert model.config.max_length == TINY["zipformer"]["max_length"] == 200
    extractor = ZipformerFbankFeatureExtractor(num_mel_bins=32)
    assert extractor.target_length is None, "a front end that crops nothing"
    seconds = model_window_seconds(extractor, model.config)
    samples = round(seconds * 16000)
    assert extractor.num_frames(samples) == 200 and extractor.num_frames(samples + 1) > 200
    clip = np.random.default_rng(2).standard_normal(3 * 16000).astype(np.float32) * 0.1
    result = tag_waveform(
        model, extractor, clip, 16000
    )  # before: "input_values has 300 frames, more than..."
    assert len(result.window_starts) == 2 and result.clip_scores.shape == (NUM_LABELS,)
    with torch.no_grad():
        first = model(**extractor(clip[:samples], sampling_rate=16000, return_tensors="pt")).logits[0]
    np.testing.assert_allclose(result.window_scores[0], torch.sigmoid(first).numpy(), atol=1e-5)
    # A max_length longer than the default window leaves the default.
    model.config.max_length = 3000
    assert model_window_seconds(extractor, model.config) == DEFAULT_WINDOW_SECONDS
    assert model_window_seconds(extractor) == DEFAULT_WINDOW_SECONDS


def test_the_recipes_pair_a_model_with_the_clip_length_it_was_trained_on():
    """Not the tagging window: the frames of ``--clip_seconds`` turned back into seconds, so a saved 4-s model
    is fine-tuned or probed on the 4-s corpus it was trained on (a window a few samples longer would make the
    corpus anew)."""
    from hf_audiorep.inference import model_clip_seconds
    from hf_audiorep.modeling import AudioFbankFeatureExtractor

    extractor = AudioFbankFeatureExtractor(target_length=400)
    assert model_clip_seconds(extractor) == pytest.approx(4.0)
    assert model_window_seconds(extractor) == pytest.approx((399 * 160 + 400) / 16000)
    assert model_clip_seconds(ZipformerFbankFeatureExtractor(num_mel_bins=32)) is None
