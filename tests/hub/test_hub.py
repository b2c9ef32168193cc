"""Hub publishing, offline: the upload folder, its remote code without hf_audiorep, and the mocked push."""

import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock, patch

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import HfApi
from recipe_utils import load_recipe, tiny_finetune_args
from remote_code_utils import run_without_library
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

import hf_audiorep
from hf_audiorep import cli
from hf_audiorep.hub import prepare_repo, push_model, push_run, remote_code_files
from hf_audiorep.training import TrainingArguments
from hf_audiorep.training.loop import launch_command

ROOT = Path(__file__).resolve().parents[2]
MODELING = ROOT / "hf_audiorep" / "modeling"
TINY = tiny_finetune_args(max_steps=2, eval_steps=100, checkpointing_steps=100, logging_steps=1)
EXPECTED_FILES = {
    "model.safetensors",
    "config.json",
    "preprocessor_config.json",
    "README.md",
    "configuration_audiomae.py",
    "_config_checks.py",
    "modeling_audiomae.py",
    "_layers.py",
    "_heads.py",
    "feature_extraction_fbank.py",
    "feature_extraction_base.py",
}


PUSH_ARGS = ["--push_to_hub", "true", "--hub_model_id", "someone/tiny-pushed", "--hub_token", "hf_fake"]


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory):
    """One tiny fine-tuning run, launched as `accelerate launch recipes/finetune.py ... --push_to_hub` would
    be (sys.argv and accelerate's environment), with the Hub client mocked: what would be uploaded is kept."""
    out = tmp_path_factory.mktemp("hubrun") / "model"
    argv = TINY + ["--output_dir", str(out)] + PUSH_ARGS
    sent = {}

    def fake_upload(**kwargs):
        folder = Path(kwargs["folder_path"])
        sent.update(
            files={p.name for p in folder.iterdir()},
            readme=(folder / "README.md").read_text(),
            config=json.loads((folder / "config.json").read_text()),
            kwargs=kwargs,
        )
        return "commit-info"

    api = MagicMock()
    api.create_repo.return_value = SimpleNamespace(repo_id="someone/tiny-pushed")
    api.upload_folder.side_effect = fake_upload
    with pytest.MonkeyPatch.context() as mp, patch("hf_audiorep.hub.HfApi", return_value=api) as api_cls:
        mp.setattr(sys, "argv", ["recipes/finetune.py", *argv])
        mp.setenv("ACCELERATE_MIXED_PRECISION", "no")  # what `accelerate launch` leaves in the environment
        load_recipe("finetune").main(argv)
    return SimpleNamespace(out=out, argv=argv, sent=sent, api_cls=api_cls, api=api)


@pytest.fixture(scope="module")
def trained(pushed_run):
    return pushed_run.out


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
    return _front_matter_text(readme.read_text())


def _front_matter_text(text: str) -> dict:
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
    assert pre["auto_map"] == {"AutoFeatureExtractor": "feature_extraction_fbank.AudioFbankFeatureExtractor"}
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

    config_files = [p.name for p in remote_code_files(AudioMAEConfig)]
    assert config_files == ["configuration_audiomae.py", "_config_checks.py"]
    names = {p.name for p in remote_code_files(AudioMAEModel)}
    assert names == {
        "modeling_audiomae.py",
        "_layers.py",
        "_heads.py",
        "configuration_audiomae.py",
        "_config_checks.py",
    }


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


def test_card_carries_the_architecture_implementation_notes(repo, tmp_path):
    from hf_audiorep.modeling import AudioFbankFeatureExtractor, BATConfig, BATModel
    from hf_audiorep.registry import ARCHITECTURES

    bat_dir = tmp_path / "bat"
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_length=64, num_mel_bins=32)
    tiny.update(average_top_k_layers=2)
    config = BATConfig(**tiny, transformer_decoder_dim=16, transformer_decoder_heads=2)
    BATModel(config).save_pretrained(bat_dir)
    AudioFbankFeatureExtractor(num_mel_bins=32, target_length=64).save_pretrained(bat_dir)
    text = (prepare_repo(bat_dir, tmp_path / "repo", repo_id="someone/bat") / "README.md").read_text()
    notes = next(a for a in ARCHITECTURES if a.name == "bat").card_notes
    assert "## Implementation notes" in text and notes in text and "were not checked" in notes
    # One text for every BAT: it must not state a gate that a checkpoint's config may contradict.
    assert "`attention_gate` in config.json" in notes and "element-wise sigmoid" not in notes
    # AudioMAE has no notes: no empty section.
    assert "Implementation notes" not in (repo / "README.md").read_text()


_NO_LIBRARY_SCRIPT = """
    import numpy as np, torch

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


def test_remote_code_loads_without_the_library(trained, repo, tmp_path):
    wave = np.random.default_rng(3).normal(scale=0.1, size=16000).astype(np.float32)
    np.save(tmp_path / "wave.npy", wave)
    proc = run_without_library(_NO_LIBRARY_SCRIPT, str(repo), "wave.npy", "logits.npy", cwd=tmp_path)
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
    *files, last = capsys.readouterr().out.splitlines()
    assert {line.split()[0] for line in files} == EXPECTED_FILES == {p.name for p in out.iterdir()}
    # A dry run must not leave the user wondering whether anything was published.
    assert last == f"dry run: nothing was uploaded; the folder that would be uploaded is {out}"


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


# ----------------------------------------------------------------------------- recipes' --push_to_hub


def test_recipe_push_to_hub_uploads_card_with_command_and_map(pushed_run):
    run = pushed_run
    run.api_cls.assert_called_once_with(token="hf_fake")
    run.api.create_repo.assert_called_once_with("someone/tiny-pushed", exist_ok=True, private=False)
    run.api.upload_folder.assert_called_once()
    assert run.sent["kwargs"]["repo_id"] == "someone/tiny-pushed"
    assert run.sent["files"] == EXPECTED_FILES
    assert "AutoModelForAudioClassification" in run.sent["config"]["auto_map"]

    # The run recorded how it was launched, with the token masked ...
    results = json.loads((run.out / "train_results.json").read_text())
    masked = [("<redacted>" if a == "hf_fake" else a) for a in run.argv]
    expected = "accelerate launch recipes/finetune.py " + shlex.join(masked)
    assert results["training_command"] == expected and results["recipe"] == "finetune"
    # ... and the card published it, with the test mAP the recipe wrote after training.
    readme = run.sent["readme"]
    assert expected in readme and "`finetune` recipe" in readme
    assert "hf_fake" not in readme and "hf_fake" not in json.dumps(results)
    evaluation = json.loads((run.out / "eval_results.json").read_text())
    (metric,) = _front_matter_text(readme)["model-index"][0]["results"][0]["metrics"]
    assert metric["type"] == "mAP" and metric["value"] == pytest.approx(evaluation["test_mAP"])
    assert f"mAP {evaluation['test_mAP']:.4f}" in readme
    assert 'pipeline("audio-classification", model="someone/tiny-pushed"' in readme


def test_recorded_command_is_used_unless_the_publisher_gives_one(trained, tmp_path):
    recorded = json.loads((trained / "train_results.json").read_text())["training_command"]
    card = (prepare_repo(trained, tmp_path / "a", repo_id="someone/a") / "README.md").read_text()
    assert recorded in card
    card = (
        prepare_repo(trained, tmp_path / "b", repo_id="someone/b", training_command="python my_script.py")
        / "README.md"
    ).read_text()
    assert "python my_script.py" in card and recorded not in card


def test_push_model_resolves_a_bare_repo_name_to_the_token_namespace(trained):
    api = MagicMock()
    api.create_repo.return_value = SimpleNamespace(repo_id="alice/bare-name")
    seen = {}

    def fake_upload(**kwargs):
        seen.update(kwargs, readme=(Path(kwargs["folder_path"]) / "README.md").read_text())

    api.upload_folder.side_effect = fake_upload
    with patch("hf_audiorep.hub.HfApi", return_value=api):
        push_model(trained, "bare-name")
    api.create_repo.assert_called_once_with("bare-name", exist_ok=True, private=False)
    assert seen["repo_id"] == "alice/bare-name"
    assert 'from_pretrained("alice/bare-name"' in seen["readme"]


def test_push_run_does_nothing_without_push_to_hub(trained):
    with patch("hf_audiorep.hub.HfApi") as api_cls:
        assert push_run(TrainingArguments(output_dir=str(trained))) is None
    api_cls.assert_not_called()


def test_hub_arguments_derive_validate_and_mask(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "audiomae-run"), push_to_hub=True, hub_token="hf_x")
    assert args.hub_model_id == "audiomae-run"  # transformers' Trainer convention: the folder's name
    assert args.to_dict()["hub_token"] == args.to_sanitized_dict()["hub_token"] == "<HUB_TOKEN>"
    assert args.hub_token == "hf_x"  # the real value is still there for the push
    assert TrainingArguments(output_dir=str(tmp_path / "x")).hub_model_id is None
    with pytest.raises(ValueError, match=r"hub_model_id 'my run'.*derived from output_dir"):
        TrainingArguments(output_dir=str(tmp_path / "my run"), push_to_hub=True)
    with pytest.raises(ValueError, match=r"hub_model_id 'a/b/c' is not a valid"):
        TrainingArguments(output_dir=str(tmp_path / "x"), hub_model_id="a/b/c")


def test_launch_command_names_the_launcher_and_masks_secrets():
    argv = ["recipes/finetune.py", "--hub_token", "hf_1", "--note", "two words", "--api_key=k"]
    assert launch_command(argv, {}) == (
        "python recipes/finetune.py --hub_token '<redacted>' --note 'two words' '--api_key=<redacted>'"
    )
    env = {"ACCELERATE_MIXED_PRECISION": "bf16", "WORLD_SIZE": "8"}
    assert launch_command(["recipes/finetune.py", "--x", "1"], env) == (
        "accelerate launch --num_processes 8 --mixed_precision bf16 recipes/finetune.py --x 1"
    )
    assert launch_command(["recipes/finetune.py"], {"ACCELERATE_USE_CPU": "True"}) == (
        "accelerate launch recipes/finetune.py"
    )
    assert launch_command(["/venv/bin/hf-audiorep", "tag", "a.wav"], {}) == "/venv/bin/hf-audiorep tag a.wav"
