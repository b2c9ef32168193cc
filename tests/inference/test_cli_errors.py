"""Common mistakes at the ``hf-audiorep`` command line get one line naming the problem, never a traceback:
exit status 2 for a bad argument (as argparse's own errors), 1 for a model or folder that cannot be used.
Also what ``info`` counts as parameters, and what ``few-shot`` says about a clip it leaves out."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_utils import hf_audiorep_cli
from tagger_utils import write_clip

import hf_audiorep
from hf_audiorep.cli import build_parser, main
from hf_audiorep.modeling import AudioFbankFeatureExtractor

#: CPJKU/dcase2024_task1_baseline README: "The model has 61,148 parameters" (10 classes)
DCASE24_PARAMETERS = 61_148


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``main(argv)`` as the console script runs it: ``(exit status, stdout, stderr)``. A ``SystemExit``
    carrying a message is printed on stderr with status 1, as Python does."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_:
        status = exit_.code
        if isinstance(status, str):
            print(status, file=sys.stderr)
            status = 1
    out = capsys.readouterr()
    return status, out.out, out.err


def assert_one_line(err: str, command: str, *expected: str) -> None:
    """stderr is exactly one line ``hf-audiorep <command>: error: ...`` holding every ``expected`` text
    (argparse prints its usage first; the error is then the last line)."""
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hf-audiorep {command}: error: "), err
    for text in expected:
        assert text in last, err


def _copy_without(source, target, *names):
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*names))
    return target


# ------------------------------------------------------------------------------------------- --device


@pytest.mark.parametrize("command", ["tag", "caption", "few-shot"])
def test_a_device_that_is_not_one_is_an_argument_error(command, tagger_dir, tmp_path, capsys):
    clip = write_clip(tmp_path / "c.wav", 1.0)
    files = {"tag": [clip, "--model", tagger_dir], "caption": [tagger_dir, clip], "few-shot": [tagger_dir]}
    status, out, err = run_cli(capsys, command, *files[command], "--device", "bogus")
    assert status == 2 and out == ""
    assert_one_line(err, command, "argument --device", "bogus")


def test_a_gpu_this_machine_does_not_have_is_an_argument_error(tagger_dir, tmp_path, capsys):
    # cuda:N, N = the GPU count: "cuda:0" on a machine without a GPU, one past the last GPU on one with GPUs.
    clip = write_clip(tmp_path / "c.wav", 1.0)
    missing = f"cuda:{torch.cuda.device_count()}"
    status, out, err = run_cli(capsys, "tag", clip, "--model", tagger_dir, "--device", missing)
    assert status == 2 and out == ""
    assert_one_line(err, "tag", "argument --device", f"{missing} is not available here")


# ------------------------------------------------------------------------------- incomplete model dirs


def test_a_model_saved_without_its_feature_extractor_is_one_line(tagger_dir, tmp_path, capsys):
    # model.save_pretrained alone, the common mistake: no preprocessor_config.json beside the weights.
    model = _copy_without(tagger_dir, tmp_path / "no-fe", "preprocessor_config.json")
    clip = write_clip(tmp_path / "c.wav", 1.0)
    status, out, err = run_cli(capsys, "tag", clip, "--model", model)
    assert status == 1 and out == ""
    assert_one_line(err, "tag", str(model), "preprocessor_config.json", "feature_extractor.save_pretrained")
    status, out, err = run_cli(capsys, "export", model, tmp_path / "onnx", "--calibration-data", "noise")
    assert status == 1 and out == ""
    assert_one_line(err, "export", str(model), "preprocessor_config.json")
    assert not (tmp_path / "onnx").exists()


def test_a_model_without_weights_is_one_line(tagger_dir, tmp_path, capsys):
    model = _copy_without(tagger_dir, tmp_path / "no-weights", "model.safetensors")
    clip = write_clip(tmp_path / "c.wav", 1.0)
    status, out, err = run_cli(capsys, "tag", clip, "--model", model)
    assert status == 1 and out == ""
    assert_one_line(err, "tag", f"cannot load a model from {model}", "model.safetensors")


# ------------------------------------------------------------------------------------------------ info


def test_info_on_what_is_not_a_model_is_one_line(tmp_path, capsys):
    clip = write_clip(tmp_path / "c.wav", 1.0)
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "config.json").write_text("{not json")
    cases = {
        tmp_path / "absent": "no such model directory",
        tmp_path: "has no config.json",  # a folder of audio, or a probe's output folder
        clip: "is a file",
        tmp_path / "bad-json": "not a valid JSON file",
    }
    for model, expected in cases.items():
        status, out, err = run_cli(capsys, "info", model)
        assert status == 1 and out == "", (model, err)
        assert_one_line(err, "info", str(model), expected)


def test_info_counts_parameters_not_buffers(tmp_path, capsys):
    # The weights file also holds the BatchNorm running statistics: 63,877 tensors' elements, not 61,148.
    config = hf_audiorep.config_from_preset("cp-mobile-dcase24", num_labels=10)
    model = hf_audiorep.CPMobileForAudioClassification(config)
    model.save_pretrained(tmp_path / "dcase24")
    status, out, err = run_cli(capsys, "info", tmp_path / "dcase24")
    assert status == 0, err
    assert json.loads(out)["parameters"] == DCASE24_PARAMETERS == sum(p.numel() for p in model.parameters())
    # A sharded checkpoint has no model.safetensors, and is counted the same.
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    status, out, err = run_cli(capsys, "info", tmp_path / "sharded")
    assert status == 0 and json.loads(out)["parameters"] == DCASE24_PARAMETERS, err


def test_info_counts_a_transformer_encoder_as_its_parameters(tmp_path, capsys):
    config = hf_audiorep.config_from_preset("audiomae-tiny", max_length=112)
    encoder = hf_audiorep.AudioMAEModel(config)
    encoder.save_pretrained(tmp_path / "encoder")
    status, out, err = run_cli(capsys, "info", tmp_path / "encoder")
    assert status == 0, err
    assert json.loads(out)["parameters"] == sum(p.numel() for p in encoder.parameters())


def test_info_counts_tied_weights_once(tmp_path, capsys):
    # A captioner whose LM head shares the token embedding: model.parameters() holds that matrix once.
    from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
    from hf_audiorep.modeling import caption_decoder_config
    from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
    from hf_audiorep.modeling.modeling_zipformer_caption import ZipformerForConditionalGeneration

    tokenizer = train_bpe_tokenizer(["a dog barks twice", "rain falls on a roof", "an engine idles"], 300)
    decoder = caption_decoder_config(tokenizer, tie_word_embeddings=True)
    model = ZipformerForConditionalGeneration(
        ZipformerConfig.from_preset("zipformer-small", decoder_config=decoder)
    )
    model.save_pretrained(tmp_path / "captioner")
    status, out, err = run_cli(capsys, "info", tmp_path / "captioner")
    assert status == 0, err
    assert json.loads(out)["parameters"] == sum(p.numel() for p in model.parameters())


def test_info_explains_its_argument():
    info = build_parser()._subparsers._group_actions[0].choices["info"]
    for action in info._actions:
        if action.dest != "help":
            assert action.help, f"{action.dest} has no help"


# ------------------------------------------------------------------------------------------------ push


def test_push_dry_run_of_what_cannot_be_pushed_is_one_line(tagger_dir, tmp_path, capsys):
    clip = write_clip(tmp_path / "c.wav", 1.0)
    cases = [
        ([tmp_path / "absent", "me/test", "--dry_run", tmp_path / "out"], "is not a directory"),
        ([tagger_dir, "me/test", "--dry_run", clip], "is not an empty directory"),
    ]
    for argv, expected in cases:
        status, out, err = run_cli(capsys, "push", *argv)
        assert status == 1 and out == "", err
        assert_one_line(err, "push", expected)
    assert not (tmp_path / "out").exists()


def test_push_refuses_an_invalid_repo_id_up_front(tagger_dir, tmp_path, capsys):
    for repo_id in ("bad repo id!!", "a/b/c"):
        status, out, err = run_cli(capsys, "push", tagger_dir, repo_id, "--dry_run", tmp_path / "out")
        assert status == 2 and out == ""
        assert_one_line(err, "push", "argument repo_id", repo_id)
    assert not (tmp_path / "out").exists()  # nothing was written, least of all a card naming the bad id


# ------------------------------------------------------------------------------------------------- tag


def test_a_hop_longer_than_the_window_is_refused_once_up_front(tagger_dir, tmp_path, capsys):
    clips = [write_clip(tmp_path / f"{i}.wav", 3.0, seed=i) for i in range(2)]
    status, out, err = run_cli(capsys, "tag", *clips, "--model", tagger_dir, "--hop_seconds", 5)
    assert status == 2 and out == ""
    assert_one_line(err, "tag", "argument --hop_seconds", "the model's window", "got 5")
    assert err.count("hop_seconds") == 1  # not once per file


def test_an_encoder_given_to_tag_is_one_line_with_the_command(tmp_path, capsys):
    config = hf_audiorep.config_from_preset("audiomae-tiny", max_length=112)
    hf_audiorep.AudioMAEModel(config).save_pretrained(tmp_path / "encoder")
    status, _, err = run_cli(capsys, "tag", tmp_path / "x.wav", "--model", tmp_path / "encoder")
    assert status == 1
    assert_one_line(err, "tag", "it is an encoder, not a tagger")


def test_json_keeps_unicode_file_names_readable(tagger_dir, tmp_path, capsys):
    clip = write_clip(tmp_path / "ünïcødé 音.wav", 1.0)
    status, out, err = run_cli(capsys, "tag", clip, "--model", tagger_dir, "--json")
    assert status == 0, err
    assert "ünïcødé 音.wav" in out and json.loads(out)["file"] == str(clip)


# -------------------------------------------------------------------------------------------- argparse


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["few-shot", "m", "--n-way", "abc"], "argument --n-way/--n_way: expected an int, got 'abc'"),
        (["few-shot", "m", "--k-shot", "abc"], "argument --k-shot/--k_shot: expected an int, got 'abc'"),
        (["tag", "x.wav", "--model", "m", "--max_seconds", "abc"], "expected a float, got 'abc'"),
    ],
)
def test_argument_errors_read_as_english(argv, expected, capsys):
    status, _, err = run_cli(capsys, *argv)
    assert status == 2 and expected in err, err


# -------------------------------------------------------------------------------------------- few-shot


def test_few_shot_names_the_clip_it_leaves_out(tmp_path, capsys):
    torch.manual_seed(0)
    encoder = tmp_path / "encoder"
    config = hf_audiorep.config_from_preset("audiomae-tiny", max_length=112)
    hf_audiorep.AudioMAEModel(config).save_pretrained(encoder)
    AudioFbankFeatureExtractor(target_length=112).save_pretrained(encoder)
    folder = tmp_path / "clips"
    folder.mkdir()
    rows = ["file_name,label"]
    t = np.arange(16000) / 16000
    for i in range(8):
        sf.write(folder / f"clip{i}.wav", (0.3 * np.sin(2 * np.pi * (300 + 500 * (i % 2)) * t)), 16000)
        rows.append(f"clip{i}.wav,{'ab'[i % 2]}")
    (folder / "broken.wav").write_text("not audio at all")
    rows.append("broken.wav,a")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    argv = ["few-shot", encoder, "--dataset", folder, "--split", "train", "--label-column", "label"]
    argv += ["--n-way", "2", "--k-shot", "1", "--n-query", "1", "--episodes", "2"]
    status, out, err = run_cli(capsys, *argv)
    assert status == 0, err
    assert "8 clips" in out  # the broken one is left out ...
    named = [line for line in err.splitlines() if line.startswith("few-shot: left out")]
    assert len(named) == 1 and "broken.wav" in named[0], err  # ... and named, with why


# ------------------------------------------------------------------------------------ as a user runs it


def test_the_command_prints_one_line_and_no_traceback(tagger_dir, tmp_path):
    """A fresh process, as the console script runs: a bad device and a missing model folder."""
    clip = write_clip(tmp_path / "c.wav", 1.0)
    run = hf_audiorep_cli("tag", clip, "--model", tagger_dir, "--device", "bogus")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("hf-audiorep tag: error: argument --device")
    run = hf_audiorep_cli("info", tmp_path / "absent")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip() == f"hf-audiorep info: error: no such model directory: {tmp_path / 'absent'}"


# ------------------------------------------------------------------------------------------------ export


def test_export_says_a_fixed_window_decides_the_clip_not_seconds(tagger_dir, tmp_path, capsys):
    from transformers import AutoFeatureExtractor

    from hf_audiorep.inference import model_window_seconds

    extractor = AutoFeatureExtractor.from_pretrained(tagger_dir)
    window = model_window_seconds(extractor)
    status, out, err = run_cli(
        capsys, "export", tagger_dir, tmp_path / "onnx", "--seconds", "5", "--calibration-data", "noise"
    )
    assert status == 0, err
    (line,) = [line for line in out.splitlines() if "input_values" in line]
    assert f"per clip of {window:g} s (the model's window" in line and "--seconds not used" in line, line
    assert f"({extractor.target_length}, {extractor.num_mel_bins})" in line


def test_every_long_option_takes_either_spelling():
    # build-tags once refused --num-clips where few-shot took --num-clips and --num_clips alike.
    from hf_audiorep.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            for option in (o for o in action.option_strings if o.startswith("--")):
                word = option[2:]
                other = "--" + (word.replace("_", "-") if "_" in word else word.replace("-", "_"))
                assert other in action.option_strings, f"{name} {option} has no {other}"
    args = build_parser().parse_args(
        ["build-tags", "--output-dir", "out", "--num-clips", "3", "--min-term-df", "2"]
    )
    assert (args.output_dir, args.num_clips, args.min_term_df) == ("out", 3, 2)
