"""A BAT tagger saved to disk is served like any registered family: the Space, ``hf-audiorep tag``, the
audio-classification pipeline, and ``trust_remote_code=True`` without the library (the registry and the Hub
bundle do it; nothing here is BAT-specific but the model)."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from remote_code_utils import run_without_library
from tagger_utils import MAX_LENGTH, write_clip
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification, pipeline

import hf_audiorep
from hf_audiorep import cli
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.embedded import EMBEDDED_ONTOLOGY
from hf_audiorep.hub import prepare_repo
from hf_audiorep.inference import tag_waveform
from hf_audiorep.modeling import AudioFbankFeatureExtractor, BATForAudioClassification
from hf_audiorep.pipelines import AudioTaggingPipeline

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before the Space imports gradio

SPACE = Path(__file__).resolve().parents[3] / "spaces" / "audio-tagger"


@pytest.fixture(scope="module")
def bat_tagger(tmp_path_factory) -> Path:
    """A random-weight tagger over the embedded ontology: bat-small narrowed to 2 gated blocks."""
    names = EMBEDDED_ONTOLOGY.names
    config = hf_audiorep.config_from_preset(
        "bat-small",
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        average_top_k_layers=2,
        max_length=MAX_LENGTH,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        problem_type="multi_label_classification",
    )
    directory = tmp_path_factory.mktemp("bat") / "tagger"
    torch.manual_seed(0)
    AutoModelForAudioClassification.from_config(config).save_pretrained(directory)
    AudioFbankFeatureExtractor(target_length=MAX_LENGTH).save_pretrained(directory)
    return directory


def _reference(model_dir: Path, waveform: np.ndarray):
    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    assert isinstance(model, BATForAudioClassification)
    return tag_waveform(model, AutoFeatureExtractor.from_pretrained(model_dir), waveform, 16000)


def test_the_space_tags_with_a_bat_tagger(bat_tagger, tmp_path):
    spec = importlib.util.spec_from_file_location("audio_tagger_app_bat", SPACE / "app.py")
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(app)
    settings = app.TaggerSettings(
        model_ids=(str(bat_tagger),), max_seconds=5.0, max_megabytes=1.0, precision="fp32"
    )
    clip = write_clip(tmp_path / "clip.wav", 3.5, seed=2)
    labels, figure, message = app.predict(str(clip), None, 3, settings=settings)
    expected = dict(_reference(bat_tagger, decode_audio(str(clip), 16000)).top(3))
    assert list(labels) == list(expected)
    assert list(labels.values()) == pytest.approx(list(expected.values()), abs=1e-6)
    assert figure is not None and "Tagged 3.5 s" in message


def test_the_cli_and_the_pipeline_tag_with_a_bat_tagger(bat_tagger, tmp_path, capsys):
    clip = write_clip(tmp_path / "long.flac", 5.0, seed=3)
    expected = _reference(bat_tagger, decode_audio(str(clip), 16000))
    assert len(expected.window_starts) > 1  # longer than the model's window: scored in sliding windows

    args = ["tag", str(clip), "--model", str(bat_tagger), "--top_k", "4", "--json", "--precision", "fp32"]
    assert cli.main(args) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["label"], pytest.approx(r["score"], abs=1e-6)) for r in record["labels"]] == expected.top(4)

    tagger = pipeline("audio-classification", model=str(bat_tagger))
    assert isinstance(tagger, AudioTaggingPipeline)
    out = tagger(str(clip), top_k=4)
    assert [(r["label"], pytest.approx(r["score"], abs=1e-6)) for r in out] == expected.top(4)


_NO_LIBRARY_SCRIPT = """
    import numpy as np, torch

    from transformers import AutoModelForAudioClassification, AutoFeatureExtractor

    repo, wave_file, logits_file = sys.argv[2:5]
    model = AutoModelForAudioClassification.from_pretrained(repo, trust_remote_code=True).eval()
    fe = AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)
    assert "hf_audiorep" not in sys.modules and type(model).__name__ == "BATForAudioClassification"
    with torch.no_grad():
        logits = model(**fe(np.load(wave_file), sampling_rate=16000, return_tensors="pt")).logits
    np.save(logits_file, logits.numpy())
"""


def test_a_bat_tagger_on_the_hub_loads_without_the_library(bat_tagger, tmp_path):
    repo = prepare_repo(bat_tagger, tmp_path / "repo", repo_id="someone/bat-tagger")
    shipped = {p.name for p in repo.iterdir()}
    assert {"modeling_bat.py", "_bootstrap.py", "_bootstrap_config.py", "_layers.py"} <= shipped
    wave = np.random.default_rng(4).normal(scale=0.1, size=16000).astype(np.float32)
    np.save(tmp_path / "wave.npy", wave)
    proc = run_without_library(_NO_LIBRARY_SCRIPT, str(repo), "wave.npy", "logits.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    model = AutoModelForAudioClassification.from_pretrained(bat_tagger).eval()
    fe = AutoFeatureExtractor.from_pretrained(bat_tagger)
    with torch.no_grad():
        expected = model(**fe(wave, sampling_rate=16000, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-5, rtol=0)
