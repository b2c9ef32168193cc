"""``hf-audiorep few-shot`` as a user runs it: a saved encoder on the embedded corpus's held-out classes or on
a saved scene dataset, a JSON file and a readable table, one-line errors for a bad label column or input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, List, Value

import hf_audiorep
from hf_audiorep.cli import build_parser, main
from hf_audiorep.data.embedded import load_embedded_corpus, load_embedded_scenes
from hf_audiorep.evaluation import few_shot_encoder
from hf_audiorep.modeling import AudioFbankFeatureExtractor

# The embedded corpus's default heldout split has 240 clips of 10 s; these tests take fewer.
HELDOUT = ["--num-clips", "24"]
EPISODES = ["--n-way", "3", "--k-shot", "2", "--n-query", "2", "--episodes", "10"]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A random-weight tiny AudioMAE encoder (no classification head) with its feature extractor."""
    path = tmp_path_factory.mktemp("encoder") / "audiomae-tiny"
    torch.manual_seed(0)
    config = hf_audiorep.AudioMAEConfig.from_preset("audiomae-tiny", max_length=112)
    hf_audiorep.AudioMAEModel(config).save_pretrained(path)
    AudioFbankFeatureExtractor(target_length=112).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory):
    """A saved DatasetDict like a scene corpus: a ``heldout`` split with a ``scene`` ClassLabel column (and a
    ``labels`` column whose last clip has two labels)."""
    rng = np.random.default_rng(0)
    scenes = ["beach", "metro", "office", "park"]
    rows = {"clip_id": [], "audio": [], "scene": [], "labels": [], "tags": []}
    for index in range(16):
        scene = index % 4
        tone = np.sin(2 * np.pi * 200 * (scene + 1) * np.arange(8000) / 16000)
        rows["clip_id"].append(f"clip-{index}")
        rows["audio"].append({"array": (0.3 * tone + 0.01 * rng.normal(size=8000)), "sampling_rate": 16000})
        rows["scene"].append(scene)
        rows["labels"].append([scene, (scene + 1) % 4] if index == 15 else [scene])
        rows["tags"].append(f"{scenes[scene]};{scenes[(scene + 1) % 4]}" if index == 15 else scenes[scene])
    features = Features(
        {
            "clip_id": Value("string"),
            "audio": Audio(sampling_rate=16000),
            "scene": ClassLabel(names=scenes),
            "labels": List(ClassLabel(names=scenes)),
            "tags": Value("string"),  # a metadata.csv's column: "a;b" is two labels, as in the recipes
        }
    )
    path = tmp_path_factory.mktemp("scenes") / "scene-corpus"
    DatasetDict({"heldout": Dataset.from_dict(rows, features=features)}).save_to_disk(str(path))
    return path


def test_few_shot_writes_json_and_prints_a_table(encoder_dir, tmp_path, capsys):
    output = tmp_path / "results" / "few_shot.json"
    assert (
        main(["few-shot", str(encoder_dir), *HELDOUT, *EPISODES, "--seed", "3", "--output", str(output)]) == 0
    )
    printed = capsys.readouterr().out
    record = json.loads(output.read_text())
    assert record["model"] == str(encoder_dir) and record["split"] == "heldout"
    assert record["label_column"] == "labels" and record["n_way"] == 3 and record["k_shot"] == 2
    assert record["n_query"] == 2 and record["num_episodes"] == 10 and record["seed"] == 3
    assert record["num_clips"] == 24 and len(record["classes"]) == 6  # the corpus's six held-out classes
    for method in ("prototype", "logistic"):
        score = record["scores"][method]
        assert len(score["episode_accuracies"]) == 10
        assert score["accuracy"] == pytest.approx(np.mean(score["episode_accuracies"]))
        row = next(line for line in printed.splitlines() if line.startswith(method))
        assert f"{score['accuracy']:.3f}" in row and f"±{score['ci95']:.3f}" in row
    assert "3-way 2-shot" in printed and "95% CI" in printed and f"results: {output}" in printed

    # the command scores what the Python API scores, on the same clips and episodes
    heldout = load_embedded_corpus(num_train=0, num_validation=0, num_test=0, num_heldout=24)["heldout"]
    model = hf_audiorep.AudioMAEModel.from_pretrained(encoder_dir)
    api = few_shot_encoder(
        model,
        AudioFbankFeatureExtractor.from_pretrained(encoder_dir),
        heldout,
        label_column="labels",
        n_way=3,
        k_shot=2,
        n_query=2,
        num_episodes=10,
        seed=3,
    )
    for method in ("prototype", "logistic"):
        assert record["scores"][method]["episode_accuracies"] == pytest.approx(
            api.scores[method].episode_accuracies
        )


def test_few_shot_on_a_saved_scene_dataset(encoder_dir, scene_dir, tmp_path):
    output = tmp_path / "scenes.json"
    argv = ["few-shot", str(encoder_dir), "--dataset", str(scene_dir), "--label_column", "scene"]
    assert main([*argv, "--n_way", "all", "--k_shot", "1", "--n_query", "all", "--episodes", "4",
                 "--methods", "prototype", "--output", str(output)]) == 0  # fmt: skip
    record = json.loads(output.read_text())
    assert record["classes"] == ["beach", "metro", "office", "park"] and record["n_way"] == 4
    assert record["n_query"] is None and list(record["scores"]) == ["prototype"]


def test_the_readme_command_on_the_scene_corpus(encoder_dir, tmp_path):
    # The README's ContrastASC command: the generated scene corpus, its held-out scenes, "scene" by default.
    output = tmp_path / "scenes.json"
    argv = [
        "few-shot",
        str(encoder_dir),
        "--dataset",
        "embedded-scenes",
        "--split",
        "heldout",
        "--n-way",
        "all",
    ]
    assert (
        main([*argv, "--k-shot", "2", "--n-query", "2", "--episodes", "3", *HELDOUT, "--output", str(output)])
        == 0
    )
    record = json.loads(output.read_text())
    heldout = load_embedded_scenes(num_train=0, num_validation=0, num_test=0, num_heldout=24)["heldout"]
    names = heldout.features["scene"].names
    assert record["label_column"] == "scene" and record["num_clips"] == 24
    assert set(record["classes"]) == {names[i] for i in heldout["scene"]} and len(record["classes"]) == 6


def test_a_bad_label_column_is_one_clear_line(encoder_dir, scene_dir):
    cases = {
        "label": r"label_column 'label' is not a column of the dataset; it has \[.*'labels'",
        "labels": r"clip 'clip-15' has 2 labels in 'labels' \(\['park', 'beach'\]\)",
        "tags": r"clip 'clip-15' has 2 labels in 'tags' \(\['park', 'beach'\]\)",
    }
    for column, message in cases.items():
        argv = ["few-shot", str(encoder_dir), "--dataset", str(scene_dir), "--label-column", column]
        with pytest.raises(SystemExit, match=r"^hf-audiorep few-shot: error: " + message):
            main([*argv, "--k-shot", "1", "--n-query", "1"])
    with pytest.raises(SystemExit, match="n_way=5 needs 5 classes with at least 4 clips"):
        main(["few-shot", str(encoder_dir), "--dataset", str(scene_dir), "--label-column", "scene",
              "--k-shot", "2", "--n-query", "2"])  # fmt: skip
    with pytest.raises(SystemExit, match="has the splits train, validation, test, heldout, not 'dev'"):
        main(["few-shot", str(encoder_dir), "--split", "dev"])
    with pytest.raises(SystemExit, match="no such model directory"):
        main(["few-shot", str(scene_dir / "absent"), *HELDOUT])


def test_bad_options_are_refused_up_front(encoder_dir, capsys):
    for option, value in (("--n-way", "1"), ("--k-shot", "0"), ("--episodes", "ten"), ("--seed", "-2")):
        with pytest.raises(SystemExit) as exit_info:
            main(["few-shot", str(encoder_dir), option, value])
        assert exit_info.value.code == 2
        assert f"argument {option}" in capsys.readouterr().err


def test_every_few_shot_option_has_help():
    few_shot = build_parser()._subparsers._group_actions[0].choices["few-shot"]
    for action in few_shot._actions:
        if action.dest != "help":
            assert action.help, f"{action.dest} has no help"


@pytest.mark.slow
def test_the_command_runs_as_users_run_it(encoder_dir, tmp_path):
    output = tmp_path / "r.json"
    run = subprocess.run(
        [sys.executable, "-m", "hf_audiorep.cli", "few-shot", str(encoder_dir), *HELDOUT, *EPISODES,
         "--output", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "prototype" in run.stdout and "logistic" in run.stdout
    assert json.loads(output.read_text())["num_episodes"] == 10
