"""recipes/probe.py on the embedded corpus: its files, the shared cache, the budget, --help and the card."""

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock, patch

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from family_utils import tiny_config
from PIL import Image
from probing_utils import save_tiny_ast
from recipe_utils import as_argv, load_recipe

from hf_audiorep.evaluation.linear_probe import C_GRID
from hf_audiorep.evaluation.probing import (
    FeatureCache,
    LayerFeatureEncoder,
    evaluate_probe,
    load_probe_head,
    position_means,
    position_share,
)
from hf_audiorep.registry import architecture_for

TINY = {
    "max_length": 208,
    "clip_seconds": 2.0,
    "num_train_clips": 48,
    "num_eval_clips": 16,
    "num_test_clips": 48,
    "num_decode_threads": 2,
    "prototypes_per_class": 3,
    "probe_batch_size": 16,
    "cpu": "true",
}


def tiny_probe_args(**overrides) -> list[str]:
    options = {**TINY, **overrides}
    return as_argv(options)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("probe")


@pytest.fixture(scope="module")
def cgp_run(recipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    out = root / "cgp"
    results = recipe.main(tiny_probe_args(epochs=3, cache_dir=root / "cache", output_dir=out))
    return SimpleNamespace(out=out, cache=root / "cache", results=results, root=root)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_cgp_run_writes_metrics_cache_size_times_and_layer_weights(cgp_run):
    results = _json(cgp_run.out / "eval_results.json")
    assert results == json.loads(json.dumps(cgp_run.results))
    assert 0.0 < results["test_mAP"] <= 1.0 and results["test_num_clips"] == 48
    assert results["probe"] == "cgp" and results["metric_name"] == "CGP-probe mAP"
    assert results["protocol"].startswith("convex gated probing (CGP")
    assert (
        "hidden states [0, 1, 2, 3, 4]" in results["protocol"]
        and "3 epochs on 48 train clips" in results["protocol"]
    )
    assert results["encoder"] == "random:audiomae-tiny" and results["dataset"] == "embedded"
    on_disk = sum(p.stat().st_size for p in cgp_run.cache.rglob("*") if p.is_file())
    assert results["cache_bytes"] == on_disk
    assert results["encoder_seconds"] > 0 and results["probe_train_seconds"] > 0
    assert results["encoder_clips_per_second"] == pytest.approx(96 / results["encoder_seconds"])
    assert len(results["train_loss"]) == 3 and results["probe_steps"] == 3 * 3

    head, config = load_probe_head(cgp_run.out)
    weights = _json(cgp_run.out / "layer_weights.json")
    assert weights["layers"] == ["embeddings", "layer 1", "layer 2", "layer 3", "layer 4"]
    np.testing.assert_allclose(weights["weights"], head.layer_weights().detach().numpy(), rtol=1e-6)
    assert min(weights["weights"]) >= 0 and sum(weights["weights"]) == pytest.approx(1.0)
    with Image.open(cgp_run.out / "layer_weights.png") as image:
        assert image.format == "PNG"
    # The reported metric is the saved head's on the cached test split.
    again = evaluate_probe(head, FeatureCache(cgp_run.cache / "test"))
    assert again["test_mAP"] == pytest.approx(results["test_mAP"], abs=1e-9)
    assert config["id2label"][0] == "Bell" and len(config["id2label"]) == head.num_labels
    # By default tokens are centred only when their positions' means hold most of their variance.
    share = position_share(FeatureCache(cgp_run.cache / "train"))
    assert results["center_positions"] == "auto" and results["position_share"] == pytest.approx(share)
    assert results["centred"] is (share > 0.5) is config["center_positions"]
    assert ("centred on the train split's mean token" in results["protocol"]) is results["centred"]


@pytest.mark.parametrize("centre", ["true", "false"])
def test_center_positions_true_centres_on_the_train_means_and_false_never(recipe, cgp_run, centre):
    out = cgp_run.root / f"centre-{centre}"
    results = recipe.main(
        tiny_probe_args(epochs=3, center_positions=centre, cache_dir=cgp_run.cache, output_dir=out)
    )
    head, config = load_probe_head(out)
    assert results["centred"] is config["center_positions"] is (centre == "true")
    assert results["position_share"] is None  # measured only to decide "auto"
    assert ("tokens centred on the train split's mean token at each position" in results["protocol"]) is (
        centre == "true"
    )
    if centre == "true":
        torch.testing.assert_close(head.position_means, position_means(FeatureCache(cgp_run.cache / "train")))
    else:
        assert head.position_means is None


@pytest.mark.parametrize("standardize", ["true", "false"])
def test_standardize_reaches_the_linear_head_its_results_and_its_protocol(recipe, cgp_run, standardize):
    out = cgp_run.root / f"linear-standardize-{standardize}"
    results = recipe.main(
        tiny_probe_args(
            probe="linear", standardize=standardize, epochs=2, cache_dir=cgp_run.cache, output_dir=out
        )
    )
    head, config = load_probe_head(out)
    assert results["standardized"] is config["options"]["standardize"] is (standardize == "true")
    assert (head.standardizer is not None) is (standardize == "true")
    assert ("standardised (BatchNorm without affine)" in results["protocol"]) is (standardize == "true")
    assert cgp_run.results["standardized"] is None  # CGP's prototypes never standardise


def test_the_linear_probe_is_fitted_to_its_optimum_by_default_and_adamw_on_request(recipe, cgp_run):
    runs = {}
    for name, extra in {
        "auto": {},
        "lbfgs-strong": {"optimizer": "lbfgs", "lbfgs_C": 0.01},
        "lbfgs-weak": {"optimizer": "lbfgs", "lbfgs_C": 100},
        "adamw": {"optimizer": "adamw", "epochs": 2},
    }.items():
        out = cgp_run.root / f"linear-{name}"
        arguments = tiny_probe_args(probe="linear", cache_dir=cgp_run.cache, output_dir=out, **extra)
        results = recipe.main(arguments)
        runs[name] = (results, load_probe_head(out)[0])
    auto, _ = runs["auto"]
    assert auto["optimizer"] == "lbfgs" and auto["probe_steps"] == 0 and len(auto["train_loss"]) == 1
    # C unset: chosen on the train clips by cross-validation, every C of the grid scored
    assert [float(c) for c in auto["lbfgs_C_cv_mAP"]] == list(C_GRID)
    scores = {float(c): v for c, v in auto["lbfgs_C_cv_mAP"].items()}
    assert auto["lbfgs_C"] == max(scores, key=lambda c: (scores[c], -c))
    fitted = (
        f"head fitted to its optimum (L-BFGS logistic regression, C={auto['lbfgs_C']:g} chosen by 3-fold "
        "cross-validation on the train clips) on 48 train clips"
    )
    assert fitted in auto["protocol"]
    assert "epochs" not in auto["protocol"]
    strong, _ = runs["lbfgs-strong"]
    assert "C=0.01) on 48" in strong["protocol"]
    assert strong["lbfgs_C"] == 0.01 and strong["lbfgs_C_cv_mAP"] is None
    # a stronger penalty gives smaller weights: the option reaches the fit
    assert runs["lbfgs-strong"][1].classifier.weight.norm() < runs["lbfgs-weak"][1].classifier.weight.norm()
    adamw, _ = runs["adamw"]
    assert adamw["optimizer"] == "adamw" and len(adamw["train_loss"]) == 2 and adamw["lbfgs_C"] is None
    assert adamw["protocol"].endswith("head trained 2 epochs on 48 train clips")
    assert cgp_run.results["optimizer"] == "adamw"  # auto: AdamW for every head but the linear one


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"probe": "cgp", "optimizer": "lbfgs"}, "--optimizer lbfgs fits the linear probe only.*--probe cgp"),
        ({"probe": "attentive", "optimizer": "lbfgs"}, "--optimizer lbfgs fits the linear probe only"),
        ({"probe": "linear", "lbfgs_C": 0}, "--lbfgs_C must be positive, got 0"),
        ({"probe": "linear", "lbfgs_C": -1}, "--lbfgs_C must be positive, got -1"),
    ],
)
def test_bad_optimizer_options_are_refused_before_encoding(recipe, tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        recipe.main(tiny_probe_args(output_dir=tmp_path / "out", **options))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_other_probes_reuse_the_cache_and_are_deterministic(recipe, cgp_run, monkeypatch):
    from hf_audiorep.evaluation.probing import LayerFeatureEncoder

    encoded = []
    original = LayerFeatureEncoder.layer_features
    monkeypatch.setattr(
        LayerFeatureEncoder, "layer_features", lambda self, *a: encoded.append(1) or original(self, *a)
    )
    runs = {}
    for name, probe in (("ws", "weighted_sum"), ("linear", "linear"), ("linear-again", "linear")):
        out = cgp_run.root / name
        recipe.main(tiny_probe_args(probe=probe, epochs=2, cache_dir=cgp_run.cache, output_dir=out))
        runs[name] = _json(out / "eval_results.json")
    assert len(encoded) == 3, "the clips were encoded again"  # each run's one feature_shape probe only
    first = _json(cgp_run.out / "eval_results.json")
    assert runs["ws"]["encoder_seconds"] == first["encoder_seconds"]  # the cache's own build time
    assert runs["ws"]["protocol"].startswith("SUPERB weighted-sum probe")
    weights = _json(cgp_run.root / "ws" / "layer_weights.json")["weights"]
    assert len(weights) == 5 and sum(weights) == pytest.approx(1.0)
    assert not (cgp_run.root / "linear" / "layer_weights.json").exists()
    assert runs["linear"]["test_mAP"] == runs["linear-again"]["test_mAP"]
    assert runs["linear"]["train_loss"] == runs["linear-again"]["train_loss"]


@pytest.mark.slow
def test_per_class_gates_write_a_heat_map(recipe, cgp_run):
    out = cgp_run.root / "per-class"
    recipe.main(
        tiny_probe_args(gate_granularity="layer_class", epochs=1, cache_dir=cgp_run.cache, output_dir=out)
    )
    weights = _json(out / "layer_weights.json")
    assert weights["granularity"] == "layer_class" and len(weights["weights"]) == 36
    assert all(sum(column) == pytest.approx(1.0) for column in weights["weights"].values())
    with Image.open(out / "layer_weights.png") as image:
        assert image.height > 36 * 10  # a row per class


def test_a_cache_over_budget_is_refused_before_encoding(recipe, tmp_path):
    # A user's sizing, not a fault: one error line (the CacheBudgetError's message), no traceback.
    with pytest.raises(SystemExit, match=r"error: .*--cache_budget_gb 0\.001.*--token_pooling \d+ fits"):
        recipe.main(tiny_probe_args(cache_budget_gb=0.001, output_dir=tmp_path / "out"))
    assert not (tmp_path / "out" / "feature_cache").exists()


def test_every_option_has_help(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    classes = (
        recipe.EncoderArguments,
        recipe.CacheArguments,
        recipe.ProbeHeadArguments,
        recipe.DataArguments,
        recipe.RunArguments,
    )
    for cls in classes:
        for field in dataclasses.fields(cls):
            option = f"--{field.name}"
            assert option in text, option
            # The option's line: its metavar or choices, its help, then argparse's "(default: ...)".
            after = text.split(f"{option} ", 1)[1].split("(default:", 1)[0]
            words = [
                w
                for w in after.split()
                if not (w.startswith("{") or w.strip("[]").replace("_", "").isupper())
            ]
            assert len(words) >= 3, f"{option} has no help text: {after!r}"


def test_the_negative_standardize_option_says_what_it_turns_off(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    own = text.split("--no_standardize, --no-standardize ", 1)[1].split(" --optimizer", 1)[0]
    positive = text.split("--standardize [STANDARDIZE] ", 1)[1].split(" --no_standardize", 1)[0]
    assert own == "turn --standardize off (the same as --standardize false)"
    assert own not in positive and "(default:" not in own


def _save_tiny_cp_mobile(directory: Path) -> Path:
    """A tiny CP-Mobile encoder (the library's CNN) saved with its front end: its hidden states are (batch,
    channels, freq, time) maps whose channels and resolution differ from stage to stage."""
    config = tiny_config("cp_mobile")
    architecture = architecture_for(config.model_type)
    torch.manual_seed(0)
    architecture.base_model(config).save_pretrained(directory)
    architecture.feature_extractor(num_mel_bins=config.num_mel_bins).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("probe", ["linear", "cgp"])
def test_a_cnn_encoder_is_probed_on_its_last_stage_by_default(recipe, tmp_path, probe):
    model_dir = _save_tiny_cp_mobile(tmp_path / "cp_mobile")
    encoder = LayerFeatureEncoder.from_pretrained(model_dir)
    last_stage = _shape_of_last(encoder, seconds=1.0)
    options = dict(model_name_or_path=model_dir, probe=probe, epochs=2, output_dir=tmp_path / probe)
    options.update(clip_seconds=1.0, num_train_clips=16, num_test_clips=16, lbfgs_C=1.0)
    if probe == "cgp":
        del options["lbfgs_C"]
    results = recipe.main(tiny_probe_args(**options))
    assert results["layers"] == [encoder.num_hidden_states - 1]  # the tiny CNN's last stage is one block
    assert 0.0 < results["test_mAP"] <= 1.0 and results["test_num_clips"] == 16
    cache = FeatureCache(tmp_path / probe / "feature_cache" / "train")
    assert (cache.num_layers, cache.num_tokens, cache.hidden_size) == last_stage


def _shape_of_last(encoder: LayerFeatureEncoder, seconds: float) -> tuple[int, int, int]:
    """``(layers, tokens, dim)`` of the last hidden state alone: one layer of freq x time tokens of its
    channels."""
    rate = encoder.sampling_rate
    return encoder.select([-1]).feature_shape(round(seconds * rate), rate)


@pytest.mark.slow
def test_push_to_hub_publishes_the_encoder_with_the_probe_metric_and_protocol(recipe, cgp_run):
    out = cgp_run.root / "pushed"
    argv = tiny_probe_args(epochs=1, cache_dir=cgp_run.cache, output_dir=out)
    argv += ["--push_to_hub", "true", "--hub_model_id", "someone/probed", "--hub_token", "hf_fake"]
    sent = {}

    def fake_upload(**kwargs):
        folder = Path(kwargs["folder_path"])
        sent.update(files={p.name for p in folder.iterdir()}, readme=(folder / "README.md").read_text())

    api = MagicMock()
    api.create_repo.return_value = SimpleNamespace(repo_id="someone/probed")
    api.upload_folder.side_effect = fake_upload
    with pytest.MonkeyPatch.context() as mp, patch("hf_audiorep.hub.HfApi", return_value=api):
        mp.setattr(sys, "argv", ["recipes/probe.py", *argv])
        results = recipe.main(argv)
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= sent["files"]
    assert "probe_head.safetensors" not in sent["files"] and "feature_cache" not in sent["files"]
    readme = sent["readme"]
    assert f"{results['test_mAP']:.4f} on the `test` split of `embedded`" in readme
    assert f"Protocol: {results['protocol']}." in readme and "convex gated probing" in readme
    front = yaml.safe_load(readme.split("---\n")[1])
    (metric,) = front["model-index"][0]["results"][0]["metrics"]
    assert metric["value"] == pytest.approx(results["test_mAP"])
    assert metric["name"] == "CGP-probe mAP"  # not presented as a fine-tuned mAP
    assert "CGP-probe mAP " in readme
    assert "hf_fake" not in readme


@pytest.mark.slow
def test_a_transformers_encoder_directory_is_probed(recipe, tmp_path):
    model_dir = save_tiny_ast(tmp_path / "ast")
    out = tmp_path / "out"
    results = recipe.main(tiny_probe_args(model_name_or_path=model_dir, epochs=2, output_dir=out))
    assert results["encoder"] == str(model_dir) and results["layers"] == [0, 1, 2]
    assert FeatureCache(out / "feature_cache" / "train").num_tokens == 66  # CLS + distillation + 8 x 8
    assert len(_json(out / "layer_weights.json")["weights"]) == 3
    with pytest.raises(ValueError, match="publishes encoders of this library only"):
        recipe.main(
            tiny_probe_args(model_name_or_path=model_dir, output_dir=tmp_path / "push")
            + ["--push_to_hub", "true", "--hub_model_id", "someone/ast"]
        )


def test_a_two_class_folder_gets_a_working_linear_probe(recipe, tmp_path, caplog):
    """A binary single-label dataset, as a user's folder: scikit-learn fits two classes as one binary model,
    and the probe head once gave both classes its one row of weights, so every clip tied."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 8)):
        (tmp_path / "data" / split).mkdir(parents=True)
        rows = ["file_name,label"]
        for k in range(count):
            label, freq = ("low", 330.0) if k % 2 else ("high", 1760.0)
            t = np.arange(16000) / 16000
            clip = rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 6.3))
            sf.write(
                tmp_path / "data" / split / f"{k}.wav", (clip + 0.01 * rng.standard_normal(16000)), 16000
            )
            rows.append(f"{k}.wav,{label}")
        (tmp_path / "data" / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    options = {"dataset": tmp_path / "data", "max_length": 96, "clip_seconds": 1.0, "num_decode_threads": 1}
    options.update(problem_type="single_label_classification", probe="linear", lbfgs_C=1.0, cpu="true")
    with caplog.at_level("INFO", logger="probe"):
        results = recipe.main(as_argv({**options, "output_dir": out}))
    assert results["test_num_clips"] == 8 and results["optimizer"] == "lbfgs"
    assert "linear: test mAP 1.0000, accuracy 1.0000 on 8 clips" in caplog.text
    assert results["test_accuracy"] == 1.0
    head, _ = load_probe_head(out)
    assert not torch.allclose(head.classifier.weight[0], head.classifier.weight[1])


def test_single_label_probing_of_clips_with_several_labels_is_refused_before_encoding(recipe, tmp_path):
    # The embedded corpus is multi-label: a softmax head on its multi-hot targets would report an accuracy
    # that means nothing.
    arguments = tiny_probe_args(problem_type="single_label_classification", output_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"single_label_classification takes one per clip: keep the default"):
        recipe.main(arguments)
    assert not (tmp_path / "out" / "feature_cache").exists()
