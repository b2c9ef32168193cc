"""Tagging scores against expectations computed here, not by the library: a multi-label model's scores are
``torch.sigmoid`` of its logits in the library, the pipeline, the CLI and the Space alike.

The Space's own tests compare the app with ``hf_audiorep.inference.tag_waveform``; a wrong activation in
that function would be shared by both sides. These tests fix the logits instead: a model whose head ignores
the audio and always says "two tags are present", and the random tiny tagger's logits on a one-window clip.
"""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tagger_utils import save_tiny_tagger, write_clip
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

from hf_audiorep import cli
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.inference import tag_file, tag_waveform

SPACE_APP = Path(__file__).resolve().parents[2] / "spaces" / "audio-tagger" / "app.py"

#: the two tags the fixed-head model always hears, and its logits: +6 for them, -6 for every other tag
PRESENT = (3, 7)
LOGIT = 6.0


@pytest.fixture(scope="module")
def two_tag_model(tmp_path_factory) -> Path:
    """The tiny multi-label tagger with a head that outputs fixed logits whatever the audio: ``+LOGIT`` for
    the two ``PRESENT`` tags, ``-LOGIT`` for the others. Both tags are certain: each scores sigmoid(6) =
    0.9975; a softmax would split one unit of probability between them (0.5 each)."""
    directory = save_tiny_tagger(tmp_path_factory.mktemp("two-tags") / "model")
    model = AutoModelForAudioClassification.from_pretrained(directory)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-LOGIT)
        model.classifier.bias[list(PRESENT)] = LOGIT
    model.save_pretrained(directory)
    return directory


def load_app():
    """spaces/audio-tagger/app.py imported by path (as tests/inference/test_space.py does)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    spec = importlib.util.spec_from_file_location("audio_tagger_app", SPACE_APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _expected_top2(directory: Path) -> dict[str, float]:
    names = AutoModelForAudioClassification.from_pretrained(directory).config.id2label
    score = torch.sigmoid(torch.tensor(LOGIT)).item()  # 0.9975
    return {names[i]: score for i in PRESENT}


def _assert_two_tags(scores: dict[str, float], expected: dict[str, float], where: str) -> None:
    assert set(scores) == set(expected), where
    for label, score in scores.items():
        assert score == pytest.approx(expected[label], abs=1e-5), (
            f"{where}: {label} scored {score}, not sigmoid"
        )


def test_both_present_tags_score_near_one_everywhere(two_tag_model, tmp_path):
    expected = _expected_top2(two_tag_model)
    clip = write_clip(tmp_path / "clip.wav", 3.0, seed=2)  # two windows: max over windows of sigmoids
    model = AutoModelForAudioClassification.from_pretrained(two_tag_model).eval()
    fe = AutoFeatureExtractor.from_pretrained(two_tag_model)

    result = tag_waveform(model, fe, decode_audio(str(clip), 16000), 16000)
    assert len(result.window_starts) > 1
    _assert_two_tags(dict(result.top(2)), expected, "tag_waveform")
    others = result.window_scores.shape[1] - len(PRESENT)
    total = (
        len(PRESENT) * torch.sigmoid(torch.tensor(LOGIT)) + others * torch.sigmoid(torch.tensor(-LOGIT))
    ).item()
    np.testing.assert_allclose(result.window_scores.sum(axis=1), total, rtol=1e-5)
    _assert_two_tags(dict(tag_file(model, fe, clip)[0].top(2)), expected, "tag_file")

    tagger = pipeline("audio-classification", model=str(two_tag_model))
    _assert_two_tags({r["label"]: r["score"] for r in tagger(str(clip), top_k=2)}, expected, "pipeline")

    app = load_app()
    settings = app.TaggerSettings(model_ids=(str(two_tag_model),), max_seconds=10.0, max_megabytes=5.0)
    labels, _, message = app.predict(str(clip), None, 2, settings=settings)
    _assert_two_tags(labels, expected, "Space")
    assert "sigmoid" in message.lower()


def test_cli_scores_both_present_tags_near_one(two_tag_model, tmp_path, capsys):
    expected = _expected_top2(two_tag_model)
    clip = write_clip(tmp_path / "clip.wav", 3.0, seed=3)
    assert cli.main(["tag", str(clip), "--model", str(two_tag_model), "--top_k", "2", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    _assert_two_tags({r["label"]: r["score"] for r in json.loads(line)["labels"]}, expected, "CLI")


def test_one_window_scores_are_the_sigmoid_of_the_models_logits(tagger_dir, tmp_path):
    """The random tiny tagger on a clip shorter than its window: every score is torch.sigmoid of the logit
    the model computes for that clip, in the library and in the Space."""
    clip = write_clip(tmp_path / "short.wav", 1.5, seed=4)
    wave = decode_audio(str(clip), 16000)
    model = AutoModelForAudioClassification.from_pretrained(tagger_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(tagger_dir)
    with torch.no_grad():
        logits = model(**fe(wave, sampling_rate=16000, return_tensors="pt")).logits[0]
    expected = torch.sigmoid(logits).numpy()
    result = tag_waveform(model, fe, wave, 16000)
    assert len(result.window_starts) == 1
    np.testing.assert_allclose(result.clip_scores, expected, atol=1e-6, err_msg="scores are not sigmoids")

    app = load_app()
    settings = app.TaggerSettings(
        model_ids=(str(tagger_dir),), max_seconds=5.0, max_megabytes=1.0, precision="fp32"
    )
    labels, _, _ = app.predict(str(clip), None, 5, settings=settings)
    names = model.config.id2label
    top5 = {names[int(i)]: float(expected[i]) for i in np.argsort(-expected)[:5]}
    assert list(labels) == list(top5)
    assert list(labels.values()) == pytest.approx(list(top5.values()), abs=1e-6)
