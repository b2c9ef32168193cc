"""Fixes of the probing recipe and library: a cache that follows the data, stale layer weights, the saved
head's token pooling and centring, and recipes/probe.py's argument errors."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from probing_utils import SAMPLE_RATE, layer_encoder, tone_batches
from recipe_utils import as_argv, load_recipe

from hf_audiorep.evaluation.probing import (
    FeatureCache,
    LinearProbe,
    ProbedEncoder,
    build_probe,
    fit_linear_head,
    load_probe_head,
    save_probe_head,
)

# ------------------------------------------------------------------------------------------ the recipe

TINY_FOLDER = {
    "max_length": 96,
    "clip_seconds": 0.5,
    "num_decode_threads": 1,
    "probe": "linear",
    "lbfgs_C": 1.0,
    "problem_type": "single_label_classification",
    "cpu": "true",
}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("probe")


def _write_folder(root: Path) -> Path:
    """DIR/{train,test}/{tone,noise}/*.wav, three clips per class and split."""
    rng = np.random.default_rng(0)
    t = np.arange(SAMPLE_RATE // 2) / SAMPLE_RATE
    for split in ("train", "test"):
        for label in ("tone", "noise"):
            (root / split / label).mkdir(parents=True)
            for k in range(3):
                clip = (
                    0.3 * np.sin(2 * np.pi * 880 * t)
                    if label == "tone"
                    else 0.3 * rng.standard_normal(len(t))
                )
                sf.write(root / split / label / f"{label}{k}.wav", clip, SAMPLE_RATE)
    return root


def _run(recipe, data: Path, out: Path, caplog, **options) -> FeatureCache:
    caplog.clear()
    recipe.main(as_argv({**TINY_FOLDER, "dataset": data, "output_dir": out, **options}))
    return FeatureCache(out / "feature_cache" / "test")


def _reused_test_cache(caplog) -> bool:
    return any(
        r.getMessage().startswith("reusing the feature cache") and "feature_cache/test " in r.getMessage()
        for r in caplog.records
    )


def test_the_cache_is_rebuilt_when_a_file_moves_to_another_label(recipe, tmp_path, caplog):
    data = _write_folder(tmp_path / "data")
    caplog.set_level("INFO")
    before = _run(recipe, data, tmp_path / "out", caplog).labels.copy()
    _run(recipe, data, tmp_path / "out", caplog)
    assert _reused_test_cache(caplog)  # same data: reused
    shutil.move(data / "test" / "tone" / "tone0.wav", data / "test" / "noise" / "tone0.wav")
    after = _run(recipe, data, tmp_path / "out", caplog).labels
    assert not _reused_test_cache(caplog)
    assert after.sum(axis=0).tolist() != before.sum(axis=0).tolist()  # 4 noise, 2 tone now


def test_the_cache_is_rebuilt_when_a_file_is_replaced_under_its_name(recipe, tmp_path, caplog):
    data = _write_folder(tmp_path / "data")
    caplog.set_level("INFO")
    before = _run(recipe, data, tmp_path / "out", caplog).features.copy()
    path = data / "test" / "tone" / "tone1.wav"
    sf.write(path, np.zeros(SAMPLE_RATE // 4), SAMPLE_RATE)  # other audio, other size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = _run(recipe, data, tmp_path / "out", caplog).features
    assert not _reused_test_cache(caplog)
    assert not np.array_equal(before, after)


def test_a_linear_run_removes_the_layer_weights_of_an_earlier_cgp_run(recipe, tmp_path, caplog):
    data, out = _write_folder(tmp_path / "data"), tmp_path / "out"
    cgp = {"probe": "cgp", "lbfgs_C": None, "epochs": 1, "prototypes_per_class": 1}
    recipe.main(
        as_argv(
            {
                **TINY_FOLDER,
                **{k: v for k, v in cgp.items() if v is not None},
                "dataset": data,
                "output_dir": out,
            }
        )
    )
    assert (out / "layer_weights.json").is_file() and (out / "layer_weights.png").is_file()
    _run(recipe, data, out, caplog)
    assert not (out / "layer_weights.json").exists() and not (out / "layer_weights.png").exists()


def test_the_saved_head_records_token_pooling_and_reloads_with_it(recipe, tmp_path, caplog):
    data, out = _write_folder(tmp_path / "data"), tmp_path / "out"
    _run(recipe, data, out, caplog, token_pooling=2)
    head, config = load_probe_head(out)
    assert config["token_pooling"] == 2
    encoder = layer_encoder("audiomae")  # any encoder: the saved config sets its layers and pooling
    probed = ProbedEncoder.from_saved_head(encoder, out)
    assert probed.encoder.token_pooling == 2 and probed.encoder.requested_layers == config["layers"]


@pytest.mark.parametrize("budget", ["-1", "0"])
def test_a_budget_not_above_zero_is_refused_when_parsed(recipe, tmp_path, capsys, budget):
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--cache_budget_gb", budget, "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert f"--cache_budget_gb must be positive, got {float(budget):g}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_budget_too_small_ends_with_one_error_line(recipe, tmp_path):
    data = _write_folder(tmp_path / "data")
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(
            as_argv({**TINY_FOLDER, "dataset": data, "output_dir": tmp_path / "out", "cache_budget_gb": 1e-9})
        )
    message = str(exit_info.value.code)
    assert ": error: the feature cache would take" in message and "\n" not in message


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"eval_split": "validation"}, "--eval_split is not used"),
        ({"max_duration": 4}, "--max_duration and --bucket_buffer_duration are not used"),
        ({"test_split": "none"}, "cannot be skipped: set --test_split"),
        ({"test_split": ""}, "cannot be skipped: set --test_split"),
    ],
)
def test_options_probe_py_does_not_use_are_refused(recipe, tmp_path, capsys, options, match):
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(as_argv({**options, "output_dir": tmp_path / "out"}))
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_the_help_says_the_test_split_is_required_and_eval_split_unused(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "required: probing cannot skip it" in text
    assert "empty to skip" not in text
    assert "not used by probe.py, which scores on --test_split only" in text


# ------------------------------------------------------------------------------------------- the library


def test_cross_validating_c_on_too_few_clips_says_how_to_skip_it():
    cache = FeatureCache.__new__(FeatureCache)
    cache.features = np.random.default_rng(0).standard_normal((2, 1, 3, 4)).astype(np.float16)
    cache.token_mask = np.ones((2, 3), dtype=bool)
    cache.labels = np.eye(2, dtype=np.float32)
    head = LinearProbe(1, 4, 2)
    with pytest.raises(ValueError, match="set --lbfgs_C to skip the cross-validation"):
        fit_linear_head(head, cache, C=None, multi_label=False)


def test_centring_refuses_features_of_another_token_count():
    head = build_probe("cgp", 2, 8, 3, prototypes_per_class=1)
    head.set_position_means(torch.zeros(2, 33, 8))
    head(torch.randn(1, 2, 33, 8))  # the means' own count
    for tokens in (129, 20):
        with pytest.raises(
            ValueError, match=rf"centres 33 token positions .* {tokens} tokens.*token_pooling"
        ):
            head(torch.randn(1, 2, tokens, 8))


def test_a_centring_probed_encoder_pads_short_batches_as_the_cache_does(tmp_path):
    encoder = layer_encoder("wav2vec2")
    batches = tone_batches(4, batch_size=4, seconds=0.5)
    long_features, _ = encoder.layer_features(batches[0]["waveforms"], batches[0]["lengths"], SAMPLE_RATE)
    head = build_probe("cgp", *long_features.shape[1:2], long_features.shape[3], 4, prototypes_per_class=1)
    head.set_position_means(torch.zeros(long_features.shape[1:]))
    save_probe_head(head, tmp_path, layers=None, token_pooling=1)
    probed = ProbedEncoder.from_saved_head(encoder, tmp_path).eval()
    short = batches[0]["waveforms"][:, : SAMPLE_RATE // 4]
    with torch.no_grad():
        logits = probed(short, torch.full((4,), short.shape[1]), SAMPLE_RATE)
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()
