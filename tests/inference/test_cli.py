"""``hf-audiorep tag`` and ``info`` as a user runs them: long files in bounded memory with a cap, scores as
the model was trained, notices, and an encoder described as one."""

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
from cli_utils import hf_audiorep_cli
from tagger_utils import write_clip
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

import hf_audiorep
from hf_audiorep.cli import main as cli_main
from hf_audiorep.data.audio_file import ArrayReader, AudioFile, iter_windows, read_head, window_count
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.inference import describe_duration, model_window_seconds, tag_file, tag_waveform


def _load(model_dir):
    return AutoModelForAudioClassification.from_pretrained(
        model_dir
    ).eval(), AutoFeatureExtractor.from_pretrained(model_dir)


def test_streamed_windows_equal_the_in_memory_windows(tmp_path):
    clip = write_clip(tmp_path / "c.wav", 7.3)  # 16 kHz: no resampling, so the two must match exactly
    wave = decode_audio(str(clip), 16000)
    with AudioFile(clip) as audio:
        streamed = list(iter_windows(audio, 16000, 2.08, 1.04))
    in_memory = list(iter_windows(ArrayReader(wave, 16000), 16000, 2.08, 1.04))
    assert len(streamed) == len(in_memory) == window_count(len(wave), 33280, 16640)
    for (s1, w1), (s2, w2) in zip(streamed, in_memory, strict=True):
        assert s1 == s2 and np.array_equal(w1, w2)
    assert streamed[-1][0] == pytest.approx(7.3 - 2.08)  # the tail gets a window aligned to the end


def test_tag_file_matches_tag_waveform(tagger_dir, tmp_path):
    model, fe = _load(tagger_dir)
    clip = write_clip(tmp_path / "c.flac", 5.5, sample_rate=16000, seed=4)
    streamed, duration = tag_file(model, fe, clip)
    whole = tag_waveform(model, fe, decode_audio(str(clip), 16000), 16000)
    assert duration == pytest.approx(5.5)
    np.testing.assert_allclose(streamed.window_scores, whole.window_scores, atol=1e-6)
    np.testing.assert_array_equal(streamed.window_starts, whole.window_starts)
    assert streamed.seconds == pytest.approx(5.5)


@pytest.mark.slow
def test_an_hour_long_file_streams_in_bounded_memory(hour_long_flac):
    # numpy allocations are traced: decoding the hour at once would hold 115 MB at 8 kHz and 230 MB at 16 kHz.
    tracemalloc.start()
    try:
        with AudioFile(hour_long_flac) as audio:
            count = sum(1 for _ in iter_windows(audio, 16000, 2.08, 1.04))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == window_count(3600 * 8000, round(2.08 * 8000), round(1.04 * 8000))
    assert peak < 16e6, f"peak {peak / 1e6:.1f} MB"


# Run in a fresh Python: the heap of a test session that has trained models would hide the growth.
_RESIDENT_MEMORY_WHILE_TAGGING = """
import json, os, sys
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification
import hf_audiorep
from hf_audiorep.data.audio_file import AudioFile, iter_windows
from hf_audiorep.inference import model_window_seconds, tag_windows

model_dir, path = sys.argv[1:]
model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
fe = AutoFeatureExtractor.from_pretrained(model_dir)
page = os.sysconf("SC_PAGE_SIZE")
resident = []

class Progress:
    def update(self, n):
        with open("/proc/self/statm") as statm:
            resident.append(int(statm.read().split()[1]) * page)

window = model_window_seconds(fe, model.config)
with AudioFile(path) as audio:
    tag_windows(model, fe, iter_windows(audio, fe.sampling_rate, window, window / 2), progress=Progress())
print(json.dumps(resident))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_resident_memory_stays_flat_over_an_hour_of_windows(tagger_dir, hour_long_flac):
    # Before the heap was trimmed during tagging, glibc kept every freed batch's chunks and resident memory
    # grew by about 0.2 GB over this hour (0.45 GB over two), with the live data flat.
    run = subprocess.run(
        [sys.executable, "-c", _RESIDENT_MEMORY_WHILE_TAGGING, str(tagger_dir), str(hour_long_flac)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=900,
    )
    assert run.returncode == 0, run.stderr
    resident = json.loads(run.stdout)
    assert len(resident) > 400  # one sample per batch of 8 windows
    warm = resident[len(resident) // 10]
    growth = max(resident[len(resident) // 10 :]) - warm
    assert growth < 64e6, f"resident memory grew {growth / 1e6:.0f} MB from {warm / 1e6:.0f} MB"


def test_the_space_reads_only_the_head_of_a_long_upload(hour_long_flac):
    tracemalloc.start()
    try:
        wave, duration = read_head(hour_long_flac, 16000, 5.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert wave.shape == (80000,) and duration == pytest.approx(3600.0)
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"
    np.testing.assert_allclose(
        wave[:-200], decode_audio(str(hour_long_flac), 16000)[: 80000 - 200], atol=1e-5
    )


def _windows_at_8k(model_dir, seconds: float) -> int:
    """Windows of the model's window, half a window apart, over ``seconds`` of the 8-kHz file."""
    window = model_window_seconds(AutoFeatureExtractor.from_pretrained(model_dir))
    return window_count(round(seconds * 8000), round(window * 8000), round(window / 2 * 8000))


def test_cli_caps_a_long_file_and_says_so(tagger_dir, hour_long_flac):
    run = hf_audiorep_cli("tag", hour_long_flac, "--model", tagger_dir, "--max_seconds", 30, "--json")
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["seconds"] == pytest.approx(30.0, abs=0.01)
    assert record["windows"] == _windows_at_8k(tagger_dir, 30)
    assert any("only the first 30 s of 3600.0 s" in n for n in record["notices"])


@pytest.mark.slow
def test_cli_tags_a_whole_hour(tagger_dir, hour_long_flac):
    run = hf_audiorep_cli(
        "tag", hour_long_flac, "--model", tagger_dir, "--top_k", 2, "--precision", "fp32", timeout=900
    )
    assert run.returncode == 0, run.stderr
    assert f"(3600.0 s, {_windows_at_8k(tagger_dir, 3600)} window(s), sigmoid scores, fp32)" in run.stdout


def test_a_clean_run_leaves_stderr_empty(tagger_dir, tmp_path):
    # transformers' "Loading weights" bar once sat on stderr of every run, among the command's own lines.
    clip = write_clip(tmp_path / "c.wav", 3.0)
    run = hf_audiorep_cli("tag", clip, "--model", tagger_dir, "--top_k", 1)
    assert run.returncode == 0 and "c.wav" in run.stdout
    assert run.stderr == ""


def test_standard_input_is_tagged_as_its_file(tagger_dir, tmp_path):
    clip = write_clip(tmp_path / "c.flac", 5.5, seed=3)
    piped = hf_audiorep_cli("tag", "-", clip, "--model", tagger_dir, "--json", stdin=clip)
    assert piped.returncode == 0, piped.stderr
    from_stdin, from_file = (json.loads(line) for line in piped.stdout.splitlines())
    assert from_stdin["file"] == "<stdin>" and from_file["file"] == str(clip)
    assert {k: v for k, v in from_stdin.items() if k != "file"} == {
        k: v for k, v in from_file.items() if k != "file"
    }


def test_standard_input_errors_name_it(tagger_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    run = hf_audiorep_cli("tag", "-", "--model", tagger_dir, stdin=empty)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        "error: <stdin> is empty (0 bytes)",
        "1 of 1 file(s) could not be tagged",
    ]
    text = tmp_path / "notes"
    text.write_text("not audio at all, just text\n" * 20)
    run = hf_audiorep_cli("tag", "-", "--model", tagger_dir, stdin=text)
    assert run.returncode == 1
    assert run.stderr.splitlines()[0] == "error: cannot decode <stdin>: not an audio file (text)"
    run = hf_audiorep_cli("tag", "-", "-", "--model", tagger_dir, stdin=text)
    assert run.returncode == 2 and "standard input (-) can be read once" in run.stderr


def test_standard_input_from_a_terminal_is_refused(tagger_dir, monkeypatch, capsys):
    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    assert cli_main(["tag", "-", "--model", str(tagger_dir)]) == 2
    assert "standard input, which is a terminal here: pipe a file in" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["tag", "caption"])
def test_standard_input_is_checked_before_the_model_loads(command, tmp_path, monkeypatch, capsys):
    # No model at that path: the command line's own mistake is what the user is told first.
    class Terminal:
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdin", Terminal())
    missing = str(tmp_path / "no-model")
    arguments = [command, "-", "--model", missing] if command == "tag" else [command, missing, "-"]
    assert cli_main(arguments) == 2
    assert "which is a terminal here" in capsys.readouterr().err
    assert cli_main([*arguments[:2], "-", *arguments[2:]] if command == "tag" else [*arguments, "-"]) == 2
    assert "can be read once, it was given 2 times" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["tag", "caption"])
def test_max_seconds_shorter_than_any_clip_is_a_usage_error(command, tmp_path, capsys):
    missing = str(tmp_path / "no-model")
    clip = str(write_clip(tmp_path / "c.wav", 2.0))
    arguments = [command, clip, "--model", missing] if command == "tag" else [command, missing, clip]
    assert cli_main([*arguments, "--max_seconds", "0.05"]) == 2
    err = capsys.readouterr().err
    assert "argument --max_seconds: must be at least 0.1 (the shortest clip a model takes), got 0.05" in err


def test_a_model_with_broken_weights_is_an_error_not_nan_scores(tagger_dir, tmp_path):
    model, fe = _load(tagger_dir)
    with torch.no_grad():
        next(p for p in model.parameters() if p.ndim == 2).fill_(float("nan"))
    clip = decode_audio(str(write_clip(tmp_path / "c.wav", 3.0)), 16000)
    with pytest.raises(
        ValueError, match=r"the model's scores are NaN or infinite at 0\.0 s: its weights are broken"
    ):
        tag_waveform(model, fe, clip, 16000)


def test_single_label_models_are_scored_with_softmax(single_label_tagger_dir, tagger_dir, tmp_path):
    clip = write_clip(tmp_path / "c.wav", 5.0, seed=1)
    model, fe = _load(single_label_tagger_dir)
    result = tag_waveform(model, fe, decode_audio(str(clip), 16000), 16000)
    assert result.activation == "softmax" and len(result.window_starts) > 1
    np.testing.assert_allclose(result.window_scores.sum(axis=1), 1.0, atol=1e-5)
    assert result.clip_scores.sum() == pytest.approx(1.0, abs=1e-5)  # mean of the windows' distributions
    run = hf_audiorep_cli("tag", clip, "--model", single_label_tagger_dir, "--top_k", 36)
    assert run.returncode == 0 and "softmax scores" in run.stdout
    scores = [float(line.split()[0]) for line in run.stdout.splitlines()[1:] if line.startswith("  ")]
    assert sum(scores) == pytest.approx(1.0, abs=1e-2)
    multi = hf_audiorep_cli("tag", clip, "--model", tagger_dir)
    assert "sigmoid scores" in multi.stdout


def test_cli_notices_silence_and_describes_short_clips(tagger_dir, tmp_path):
    import soundfile as sf

    quiet = np.random.default_rng(0).choice([-1e-5, 1e-5], 32000).astype(np.float32)
    sf.write(tmp_path / "quiet.wav", quiet, 16000, subtype="FLOAT")
    # A constant (DC) offset is no sound, however far from zero it sits: here it carries the same hiss.
    sf.write(tmp_path / "offset.wav", 0.25 + quiet, 16000, subtype="FLOAT")
    sf.write(tmp_path / "tone.wav", 0.25 + 0.01 * np.sin(np.arange(32000) / 5), 16000, subtype="FLOAT")
    run = hf_audiorep_cli("tag", tmp_path / "quiet.wav", "--model", tagger_dir)
    assert run.returncode == 0 and "note: the clip is silent (peak -100 dBFS)" in run.stdout
    files = [tmp_path / f"{name}.wav" for name in ("quiet", "offset", "tone")]
    run = hf_audiorep_cli("tag", *files, "--model", tagger_dir, "--json")
    silence = [[n for n in json.loads(line)["notices"] if "silent" in n] for line in run.stdout.splitlines()]
    assert silence == [["the clip is silent (peak -100 dBFS): the scores are the model's answer to silence "
                        "and mean little"]] * 2 + [[]]  # fmt: skip
    assert describe_duration(1, 16000) == "1 sample (0.06 ms)"
    assert describe_duration(480, 16000) == "30 ms" and describe_duration(52000, 16000) == "3.2 s"
    # never rounded up to a limit the clip falls short of ("lasts 100 ms, too short: at least 0.1 s")
    assert describe_duration(1599, 16000) == "99.9 ms" and describe_duration(1600, 16000) == "100 ms"


def test_info_describes_an_encoder_as_having_no_labels(tmp_path, tagger_dir):
    encoder = tmp_path / "encoder"
    config = hf_audiorep.config_from_preset("audiomae-tiny")
    hf_audiorep.AudioMAEModel(config).save_pretrained(encoder)
    info = json.loads(hf_audiorep_cli("info", encoder).stdout)
    assert info["num_labels"] == 0 and info["problem_type"] is None
    tagger = json.loads(hf_audiorep_cli("info", tagger_dir).stdout)
    assert tagger["num_labels"] == 36 and tagger["problem_type"] == "multi_label_classification"
    refused = hf_audiorep_cli("tag", tmp_path / "x.wav", "--model", encoder)
    assert refused.returncode != 0 and "it is an encoder, not a tagger" in refused.stderr


def test_every_tag_option_has_help():
    from hf_audiorep.cli import build_parser

    tag = build_parser()._subparsers._group_actions[0].choices["tag"]
    for action in tag._actions:
        if action.dest != "help":
            assert action.help, f"--{action.dest} has no help"


def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path):
    clip = write_clip(tmp_path / "c.wav", 1.0)
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "absent"): "no such model directory",
        str(tmp_path / "empty"): "cannot load a model from",
        "some-org/some-tagger": "cannot reach the Hugging Face Hub for model some-org/some-tagger",  # offline
    }
    for model, expected in cases.items():
        run = hf_audiorep_cli("tag", clip, "--model", model)
        assert run.returncode != 0 and expected in run.stderr, run.stderr
        assert "Traceback" not in run.stderr


def test_bad_options_are_refused_once_up_front(tagger_dir, tmp_path):
    clip = write_clip(tmp_path / "c.wav", 1.0)
    for option, value in (("--top_k", "0"), ("--max_seconds", "-3"), ("--hop_seconds", "abc")):
        run = hf_audiorep_cli("tag", clip, "--model", tagger_dir, option, value)
        assert run.returncode == 2 and f"argument {option}" in run.stderr, run.stderr
        assert run.stdout == ""
