"""The awkward-audio corpus (tests/awkward_audio.py) through every entry point a user meets: the decoder and
feature extractor, ``pipeline("audio-classification")``, ``hf-audiorep tag`` and the Space's handler. Each
file is tagged, or refused with a message that names the problem; none raises an unexplained error."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoFeatureExtractor, pipeline

import hf_audiorep  # noqa: F401  (registers the library's pipeline)
from hf_audiorep.data.decode import decode_audio

#: failures whose message comes from a length check rather than the decoder
LENGTH_CASES = {"one_sample.wav", "click_30ms.wav"}


def _cases(awkward_files, tagged: bool):
    return [(n, p, c) for n, (p, c) in awkward_files.items() if (c.expect is None) == tagged]


def test_decoder_and_feature_extractor(awkward_files, tagger_dir):
    fe = AutoFeatureExtractor.from_pretrained(tagger_dir)
    for name, (path, case) in awkward_files.items():
        if case.expect is None or name in LENGTH_CASES:
            wave = decode_audio(str(path), 16000)
            assert wave.ndim == 1 and wave.dtype == np.float32 and np.isfinite(wave).all(), name
            if len(wave) >= 400:  # one 25-ms analysis frame
                features = fe(wave, sampling_rate=16000, return_tensors="pt")["input_values"]
                assert features.shape == (1, fe.target_length, fe.feature_size), name
            else:
                with pytest.raises(ValueError, match="at least 400"):
                    fe(wave, sampling_rate=16000)
            continue
        with pytest.raises((OSError, ValueError)) as info:
            decode_audio(str(path), 16000)
        assert case.expect in str(info.value), (name, str(info.value))


def test_pipeline(awkward_files, tagger_dir):
    tagger = pipeline("audio-classification", model=str(tagger_dir))
    for name, path, _ in _cases(awkward_files, tagged=True):
        out = tagger(str(path), top_k=3)
        assert len(out) == 3 and all(0.0 < row["score"] < 1.0 for row in out), name
    for name, path, case in _cases(awkward_files, tagged=False):
        with pytest.raises((OSError, ValueError)) as info:
            tagger(str(path))
        assert case.expect in str(info.value), (name, str(info.value))


def test_cli_tags_the_good_files_and_names_each_bad_one(awkward_files, tagger_dir):
    paths = [str(path) for path, _ in awkward_files.values()]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "hf_audiorep.cli", "tag", *paths, "--model", str(tagger_dir), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 1, run.stderr  # some files failed, and the exit status says so
    records = {Path(r["file"]).name: r for r in map(json.loads, run.stdout.splitlines())}
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    for name, (path, case) in awkward_files.items():
        # every file got its line, in one run: a result, or an error naming the file and the problem
        if case.expect is None:
            assert records[name]["labels"], name
        else:
            assert name not in records
            line = next((e for e in errors if str(path) in e), None)
            assert line is not None and case.expect in line, (name, line)
    assert "Traceback" not in run.stderr
    bad = sum(case.expect is not None for _, case in awkward_files.values())
    assert len(errors) == bad
    assert f"{bad} of {len(paths)} file(s) could not be tagged" in run.stderr
    silence = records["silence.wav"]["notices"]
    assert any("silent" in notice for notice in silence)


def test_space_handler(awkward_files, tagger_dir):
    from test_space import load_app

    app = load_app()
    settings = app.TaggerSettings(model_ids=(str(tagger_dir),), max_seconds=30.0, max_megabytes=100.0)
    # A Space receives uploads: a missing path or a folder is a server-side problem, said in its own words.
    server_side = dict.fromkeys(("missing.wav", "dangling.wav", "folder.wav"), "could not be found")
    for name, (path, case) in awkward_files.items():
        labels, figure, message = app.predict(str(path), None, 3, settings=settings)
        if case.expect is None:
            assert labels and len(labels) == 3 and figure is not None, (name, message)
        else:
            assert labels is None and "Cannot tag this upload" in message, (name, message)
            assert server_side.get(name, case.expect) in message, (name, message)
            assert str(path.parent) not in message  # server paths are not shown to users
