"""Hub publishing, offline: the upload folder, its remote code without hf_audiorep, and the mocked push."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest.mock import patch

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from recipe_utils import load_recipe, tiny_finetune_args
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

import hf_audiorep
from hf_audiorep import cli
from hf_audiorep.hub import prepare_repo, push_model, remote_code_files

ROOT = Path(__file__).resolve().parents[1]
MODELING = ROOT / "hf_audiorep" / "modeling"
TINY = tiny_finetune_args(max_steps=2, eval_steps=100, checkpointing_steps=100, logging_steps=1)
EXPECTED_FILES = {
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "configuration_audiomae.py",
    "modeling_audiomae.py",
    "_layers.py",
    "_fbank.py",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("hubrun") / "model"
    load_recipe("finetune").main(TINY + ["--output_dir", str(out)])
    return out


@pytest.fixture(scope="module")
def repo(trained, tmp_path_factory):
    return prepare_repo(
        trained,
        tmp_path_factory.mktemp("hubrepo") / "repo",
        repo_id="someone/audiomae-tiny-test",
        base_model="someone/audiomae-tiny-pretrained",
        training_command="accelerate launch recipes/finetune.py --preset audiomae-tiny",
    )


def _front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_prepare_repo_files_auto_map_and_card(trained, repo):
    assert {p.name for p in repo.iterdir()} == EXPECTED_FILES
    config = json.loads((repo / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_audiomae.AudioMAEConfig",
        "AutoModel": "modeling_audiomae.AudioMAEModel",
        "AutoModelForAudioClassification": "modeling_audiomae.AudioMAEForAudioClassification",
        "AutoModelForPreTraining": "modeling_audiomae.AudioMAEForPreTraining",
    }
    # Everything else is the saved config unchanged.
    original = json.loads((trained / "config.json").read_text())
    assert {k: v for k, v in config.items() if k != "auto_map"} == original
    pre = json.loads((repo / "preprocessor_config.json").read_text())
    assert pre["auto_map"] == {"AutoFeatureExtractor": "_fbank.AudioFbankFeatureExtractor"}
    assert (repo / "model.safetensors").read_bytes() == (trained / "model.safetensors").read_bytes()

    evaluation = json.loads((trained / "eval_results.json").read_text())
    meta = _front_matter(repo / "README.md")
    assert meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "audio-classification"
    assert meta["tags"] == ["hf_audiorep", "audio", "audiorep-audiomae"]
    assert meta["license"] == "apache-2.0" and meta["base_model"] == "someone/audiomae-tiny-pretrained"
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "audio-classification"
    assert result["dataset"]["type"] == evaluation["dataset"]
    assert result["dataset"]["split"] == evaluation["split"]
    (metric,) = result["metrics"]
    assert metric["type"] == "mAP" and metric["value"] == pytest.approx(evaluation["test_mAP"])
    body = (repo / "README.md").read_text().split("---\n", 2)[2]
    assert f"{evaluation['test_num_clips']} evaluation clips" in body
    assert "accelerate launch recipes/finetune.py --preset audiomae-tiny" in body
    assert "trust_remote_code=True" in body and 'function_to_apply="sigmoid"' in body


def test_remote_code_closure_is_parsed_from_imports(tmp_path):
    from hf_audiorep import AudioMAEConfig, AudioMAEModel

    assert [p.name for p in remote_code_files(AudioMAEConfig)] == ["configuration_audiomae.py"]
    names = {p.name for p in remote_code_files(AudioMAEModel)}
    assert names == {"modeling_audiomae.py", "_layers.py", "configuration_audiomae.py"}


def test_encoder_only_checkpoint_gets_feature_extraction_tag(trained, tmp_path):
    model = AutoModelForAudioClassification.from_pretrained(trained)
    encoder_dir = tmp_path / "encoder"
    getattr(model, model.base_model_prefix).save_pretrained(encoder_dir)
    AutoFeatureExtractor.from_pretrained(trained).save_pretrained(encoder_dir)
    config = json.loads((encoder_dir / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config.pop(key, None)
    (encoder_dir / "config.json").write_text(json.dumps(config))
    out = prepare_repo(encoder_dir, tmp_path / "repo", repo_id="someone/encoder")
    meta = _front_matter(out / "README.md")
    assert meta["pipeline_tag"] == "feature-extraction" and "model-index" not in meta
    assert 'pipeline("audio-classification"' not in (out / "README.md").read_text()


_NO_LIBRARY_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys
    import numpy as np, torch

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_audiorep" or name.startswith("hf_audiorep."):
                raise ImportError(f"hf_audiorep is hidden in this process: {name}")
            return None

    root = sys.argv[1]
    sys.meta_path.insert(0, _Blocker())
    sys.path[:] = [p for p in sys.path if p not in ("", ".", root) and "editable" not in p]
    try:
        import hf_audiorep  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_audiorep is still importable")

    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

    repo, wave_file, logits_file = sys.argv[2:5]
    config = AutoConfig.from_pretrained(repo, trust_remote_code=True)
    assert type(config).__module__.startswith("transformers_modules"), type(config).__module__
    AutoModel.from_pretrained(repo, trust_remote_code=True)
    model = AutoModelForAudioClassification.from_pretrained(repo, trust_remote_code=True).eval()
    fe = AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)
    assert "hf_audiorep" not in sys.modules
    inputs = fe(np.load(wave_file), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    np.save(logits_file, logits.numpy())
    print("logits", tuple(logits.shape))
    """
)


def test_remote_code_loads_without_the_library(trained, repo, tmp_path):
    wave = np.random.default_rng(3).normal(scale=0.1, size=16000).astype(np.float32)
    np.save(tmp_path / "wave.npy", wave)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_LIBRARY_SCRIPT, str(ROOT), str(repo), "wave.npy", "logits.npy"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    model = AutoModelForAudioClassification.from_pretrained(trained).eval()
    assert isinstance(model, hf_audiorep.AudioMAEForAudioClassification)
    fe = AutoFeatureExtractor.from_pretrained(trained)
    with torch.no_grad():
        expected = model(**fe(wave, sampling_rate=16000, return_tensors="pt")).logits.numpy()
    assert f"logits {tuple(expected.shape)}" in proc.stdout
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-5, rtol=0)


def test_push_model_uploads_the_prepared_folder(trained):
    seen = {}

    def fake_upload(*args, **kwargs):
        folder = Path(kwargs["folder_path"])
        seen["files"] = {p.name for p in folder.iterdir()}
        seen["config"] = json.loads((folder / "config.json").read_text())
        seen["kwargs"] = kwargs
        return "commit-info"

    with (
        patch.object(HfApi, "create_repo") as create_repo,
        patch.object(HfApi, "upload_folder", side_effect=fake_upload) as upload_folder,
    ):
        result = push_model(trained, "someone/pushed", private=True, commit_message="first")
    assert result == "commit-info"
    create_repo.assert_called_once_with("someone/pushed", exist_ok=True, private=True)
    upload_folder.assert_called_once()
    assert seen["kwargs"]["repo_id"] == "someone/pushed" and seen["kwargs"]["commit_message"] == "first"
    assert seen["files"] == EXPECTED_FILES
    assert "AutoModelForAudioClassification" in seen["config"]["auto_map"]
    # The temporary upload folder is cleaned up afterwards.
    assert not Path(seen["kwargs"]["folder_path"]).exists()


def test_cli_push_dry_run(trained, tmp_path, capsys):
    out = tmp_path / "dry"
    assert cli.main(["push", str(trained), "someone/dry", "--dry_run", str(out)]) == 0
    printed = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert printed == EXPECTED_FILES == {p.name for p in out.iterdir()}


def test_refuses_pickled_weights_and_bad_dirs(trained, tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((trained / "config.json").read_text())
    (legacy / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    with pytest.raises(ValueError, match=r"model\.safetensors.*pytorch_model\.bin"):
        prepare_repo(legacy, tmp_path / "out", repo_id="someone/legacy")
    with (
        patch.object(HfApi, "create_repo") as create_repo,
        patch.object(HfApi, "upload_folder") as upload_folder,
        pytest.raises(ValueError, match="model.safetensors"),
    ):
        push_model(legacy, "someone/legacy")
    create_repo.assert_not_called()
    upload_folder.assert_not_called()
    with pytest.raises(ValueError, match="not a directory"):
        prepare_repo(tmp_path / "missing", repo_id="someone/x")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "stale.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty directory"):
        prepare_repo(trained, busy, repo_id="someone/x")
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    (unknown / "model.safetensors").write_bytes(b"")
    (unknown / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ValueError, match="not-a-model"):
        prepare_repo(unknown, tmp_path / "o2", repo_id="someone/x")
