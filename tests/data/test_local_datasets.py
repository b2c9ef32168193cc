"""A user's own audio folder: every readable file, one label vocabulary, splits that may be missing, and a
single-label fine-tuning run on it."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from recipe_utils import as_argv, load_recipe

from hf_audiorep.data.arguments import DataArguments, load_sources
from hf_audiorep.data.decode import AUDIO_EXTENSIONS, decode_audio
from hf_audiorep.data.sources import SplitNotFoundError, load_audio_source

SR = 16000
# Free strings: only MIDs select the AudioSet vocabulary (see test_user_datasets.py).
CLASSES = {"alpha": 330.0, "beta": 660.0, "gamma": 1320.0}


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _metadata_folder(root, splits: dict[str, dict[str, int]]):
    """``root/<split>/`` with ``<label>_<k>.wav`` clips and a metadata.csv naming their labels."""
    for split, counts in splits.items():
        (root / split).mkdir(parents=True)
        rows = ["file_name,label"]
        for label, count in counts.items():
            for k in range(count):
                sf.write(root / split / f"{label}_{k}.wav", _tone(CLASSES[label]), SR)
                rows.append(f"{label}_{k}.wav,{label}")
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_oga_is_a_readable_extension():
    assert {".oga", ".ogg", ".wav", ".flac", ".mp3", ".m4a", ".opus"} <= set(AUDIO_EXTENSIONS)


def test_folder_with_wav_and_oga_files_loads_all_of_them(tmp_path, caplog):
    root = tmp_path / "data"
    for split in ("train", "test"):
        for label in ("alpha", "beta"):
            (root / split / label).mkdir(parents=True)
            sf.write(root / split / label / "a.wav", _tone(CLASSES[label]), SR)
            sf.write(
                root / split / label / "b.oga", _tone(CLASSES[label]), SR, format="OGG", subtype="VORBIS"
            )
    (root / "train" / "notes.txt").write_text("recorded in the garden")
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.sources"):
        source = load_audio_source(str(root), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(source.dataset) == 4 and source.label_names == ("alpha", "beta")
    assert sorted(Path(r["audio"]["path"]).suffix for r in source.dataset) == [".oga", ".oga", ".wav", ".wav"]
    waveform = decode_audio(
        next(r["audio"] for r in source.dataset if r["audio"]["path"].endswith(".oga")), SR
    )
    assert len(waveform) == SR
    assert "skipped 1 file(s) of split 'train' that are not audio (e.g. notes.txt)" in caplog.text
    streamed = load_audio_source(str(root), split="test", streaming=True)
    assert len(list(streamed.dataset)) == 4


def test_every_split_gets_the_train_vocabulary(tmp_path):
    root = _metadata_folder(
        tmp_path / "data",
        {"train": {"alpha": 2, "beta": 2, "gamma": 2}, "test": {"beta": 2, "gamma": 1}},
    )
    sources = load_sources(DataArguments(dataset=str(root)))
    assert sources["train"].label_names == ("alpha", "beta", "gamma")
    assert sources["test"].label_names == sources["train"].label_names
    record = sources["test"].dataset[0]
    # "beta" is class 1 of the train vocabulary, not class 0 of the test split's own labels.
    assert sources["test"].label_to_index(record["label"]) == [1]


def test_a_label_missing_from_train_is_an_error_naming_it(tmp_path):
    root = _metadata_folder(
        tmp_path / "data", {"train": {"alpha": 2, "beta": 2}, "test": {"beta": 1, "gamma": 2}}
    )
    with pytest.raises(
        ValueError, match=r"test split 'test' .* labels that the train split 'train' does not: gamma"
    ):
        load_sources(DataArguments(dataset=str(root)))


def test_missing_validation_split_skips_evaluation_unless_asked_for(tmp_path, caplog):
    root = _metadata_folder(tmp_path / "data", {"train": {"alpha": 1, "beta": 1}, "test": {"alpha": 1}})
    with caplog.at_level(logging.INFO, logger="hf_audiorep.data.arguments"):
        sources = load_sources(DataArguments(dataset=str(root)))
    assert sorted(sources) == ["test", "train"]
    assert "has no 'validation' split: no evaluation during training" in caplog.text
    assert sorted(load_sources(DataArguments(dataset=str(root), eval_split="none"))) == ["test", "train"]
    with pytest.raises(SplitNotFoundError, match=r"no 'validation' split.*--eval_split none skips it"):
        load_sources(DataArguments(dataset=str(root), eval_split="validation"))
    with pytest.raises(SplitNotFoundError, match=r"no 'holdout' split; it has \['test', 'train'\]"):
        load_sources(DataArguments(dataset=str(root), test_split="holdout"))


def test_finetune_single_label_on_a_local_folder(tmp_path, caplog):
    root = _metadata_folder(
        tmp_path / "data",
        {"train": {"alpha": 3, "beta": 3, "gamma": 3}, "test": {"alpha": 2, "beta": 2}},
    )
    out = tmp_path / "run"
    args = {
        "dataset": root,
        "problem_type": "single_label_classification",
        "preset": "audiomae-tiny",
        "max_length": 96,
        "clip_seconds": 1.0,
        "max_steps": 2,
        "per_device_batch_size": 4,
        "warmup_steps": 1,
        "num_decode_threads": 1,
        "cpu": "true",
        "output_dir": out,
    }
    argv = as_argv(args)
    with caplog.at_level(logging.INFO):
        summary = load_recipe("finetune").main(argv)
    results = json.loads((out / "eval_results.json").read_text())
    assert results["test_num_clips"] == 4 and 0.0 <= results["test_macro_f1"] <= 1.0
    # One vocabulary: the test split lacks gamma, and its recall is undefined rather than shifting columns.
    assert set(results["test_per_class_recall"]) == {"alpha", "beta", "gamma"}
    assert results["test_per_class_recall"]["gamma"] is None
    assert results["test_accuracy"] == pytest.approx(
        (2 * results["test_per_class_recall"]["alpha"] + 2 * results["test_per_class_recall"]["beta"]) / 4
    )
    assert "eval_accuracy" not in summary  # no validation/ folder: no evaluation during training
    assert "SpecAugment masks up to 18 of 96 frames and 48 of 128 mel bins" in caplog.text
