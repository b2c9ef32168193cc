"""``hf-audiorep caption`` as a user runs it: a saved captioner's captions of audio files, printed per file or
as JSON, AR or parallel; a bad file reported while the others are captioned; a tagger refused in one line."""

import json

import numpy as np
import pytest
import torch
from cli_utils import hf_audiorep_cli
from tagger_utils import write_clip
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

import hf_audiorep  # noqa: F401  (registers the Auto classes)
from hf_audiorep.cli import _read_for_caption, build_parser, main
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor, caption_decoder_config
from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer_caption import ZipformerForConditionalGeneration
from hf_audiorep.modeling.processing_zipformer import ZipformerProcessor

CAPTIONS = [
    "a dog barks twice in a quiet yard",
    "rain falls steadily on a metal roof",
    "an engine idles and then revs up",
]
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory):
    """A random-weight zipformer-small captioner saved with its processor. The LM head is untied: a tied
    random decoder only repeats its input token (empty captions)."""
    tokenizer = train_bpe_tokenizer(CAPTIONS, 300)
    decoder = caption_decoder_config(tokenizer, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = ZipformerForConditionalGeneration(
        ZipformerConfig.from_preset("zipformer-small", decoder_config=decoder)
    )
    directory = tmp_path_factory.mktemp("captioner")
    model.save_pretrained(directory)
    ZipformerProcessor(ZipformerFbankFeatureExtractor(), tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three clips of different lengths, rates and channels."""
    root = tmp_path_factory.mktemp("clips")
    return [
        write_clip(root / "a.wav", 1.5, seed=1),
        write_clip(root / "b.flac", 2.5, sample_rate=44100, channels=2, seed=2),
        write_clip(root / "c.wav", 1.0, sample_rate=22050, seed=3),
    ]


def expected_captions(model_dir, paths, batch_size, parallel=False, seconds=None):
    """The captions ``generate`` / ``parallel_generate`` give the files, batched as the command does."""
    model = AutoModelForSpeechSeq2Seq.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    captions = []
    for start in range(0, len(paths), batch_size):
        waves = [decode_audio(str(p), 16000) for p in paths[start : start + batch_size]]
        if seconds is not None:
            waves = [w[: round(seconds * 16000)] for w in waves]
        inputs = processor(audio=waves, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            if parallel:
                ids = model.parallel_generate(
                    inputs["input_values"], inputs["attention_mask"], MAX_NEW_TOKENS
                )
            else:
                ids = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
        captions += [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    return captions


def test_captions_are_printed_one_per_file(captioner_dir, files):
    result = hf_audiorep_cli(
        "caption", captioner_dir, *files, "--max_new_tokens", MAX_NEW_TOKENS, "--batch_size", 2
    )
    assert result.returncode == 0, result.stderr
    captions = expected_captions(captioner_dir, files, batch_size=2)
    assert any(captions)
    assert result.stdout == "".join(
        f"{path}: {caption}\n" for path, caption in zip(files, captions, strict=True)
    )


def test_json_records_with_parallel_decoding_and_a_cap(captioner_dir, files):
    result = hf_audiorep_cli(
        "caption",
        captioner_dir,
        *files,
        "--parallel",
        "--json",
        "--max_new_tokens",
        MAX_NEW_TOKENS,
        "--max_seconds",
        2.0,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.strip().split("\n")]
    assert [r["file"] for r in records] == [str(f) for f in files]
    expected = expected_captions(captioner_dir, files, batch_size=8, parallel=True, seconds=2.0)
    assert [r["caption"] for r in records] == expected
    assert [r["seconds"] for r in records] == pytest.approx([1.5, 2.5, 1.0], abs=1e-3)
    # Only the 2.5-s file is longer than the cap.
    assert [r["notices"] for r in records] == [
        [],
        ["only the first 2 s of 2.5 s were captioned (--max_seconds)"],
        [],
    ]


def test_max_seconds_reads_only_the_head(files):
    # The random captioner barely listens, so its captions cannot tell a head from a file: what is read can.
    head, duration = _read_for_caption(files[1], 16000, 0.5)
    np.testing.assert_allclose(head, decode_audio(str(files[1]), 16000)[:8000], atol=1e-6)
    assert duration == pytest.approx(2.5)
    whole, duration = _read_for_caption(files[1], 16000, None)
    assert len(whole) == 40000 and duration == pytest.approx(2.5)


def test_a_bad_file_is_reported_and_the_others_captioned(captioner_dir, files, tmp_path):
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio at all, just text\n" * 20)
    short = write_clip(tmp_path / "blip.wav", 0.05)
    missing = tmp_path / "missing.wav"
    args = [files[0], notes, missing, files[2], short]
    result = hf_audiorep_cli(
        "caption", captioner_dir, *args, "--max_new_tokens", MAX_NEW_TOKENS, "--batch_size", 2
    )
    assert result.returncode == 1
    # stderr holds the command's own lines only (transformers' weight-loading bar once sat among them).
    lines = result.stderr.strip().split("\n")
    errors = lines[:-1]
    assert len(errors) == 3 and all(line.startswith("error: ") for line in errors)
    assert lines[-1] == "3 of 5 file(s) could not be captioned"
    for bad, line in zip([notes, missing, short], errors, strict=True):
        assert str(bad) in line
    assert "too short to caption" in errors[2]
    # The good files, batched with the bad ones, keep the captions they get alone.
    captions = [expected_captions(captioner_dir, [f], batch_size=1)[0] for f in (files[0], files[2])]
    assert result.stdout == f"{files[0]}: {captions[0]}\n{files[2]}: {captions[1]}\n"


def test_standard_input_is_captioned_as_its_file(captioner_dir, files):
    result = hf_audiorep_cli(
        "caption", captioner_dir, "-", "--max_new_tokens", MAX_NEW_TOKENS, "--json", stdin=files[1]
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["file"] == "<stdin>" and record["seconds"] == pytest.approx(2.5, abs=1e-3)
    assert record["caption"] == expected_captions(captioner_dir, [files[1]], batch_size=1)[0]


def test_a_silent_file_is_captioned_with_a_notice(captioner_dir, files, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "offset.wav", np.full(24000, 0.3, np.float32), 16000, subtype="FLOAT")  # DC alone
    result = hf_audiorep_cli(
        "caption",
        captioner_dir,
        tmp_path / "offset.wav",
        files[0],
        "--max_new_tokens",
        MAX_NEW_TOKENS,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    notices = [json.loads(line)["notices"] for line in result.stdout.splitlines()]
    assert notices == [["the clip is silent (peak -inf dBFS): the caption describes silence"], []]


def test_a_tagger_is_refused_in_one_line(tagger_dir, files):
    result = hf_audiorep_cli("caption", tagger_dir, files[0])
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1 and "no caption decoder" in lines[0] and str(tagger_dir) in lines[0]


def test_every_option_is_explained(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["caption", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--parallel", "--max_new_tokens", "--batch_size", "--max_seconds", "--device", "--json"):
        assert option in text
    assert "exit status is 1" in text
    caption = build_parser()._subparsers._group_actions[0].choices["caption"]
    for action in caption._actions:
        if action.dest != "help":
            assert action.help, f"{action.dest} has no help"


def test_a_model_that_cannot_be_loaded_is_one_line(files, tmp_path):
    (tmp_path / "empty").mkdir()
    for model, expected in [("absent", "no such model directory"), ("empty", "cannot load a model from")]:
        with pytest.raises(SystemExit, match=expected) as exit_:
            main(["caption", str(tmp_path / model), str(files[0])])
        assert "\n" not in str(exit_.value.code)


def test_parallel_needs_a_parallel_decoder(captioner_dir, files, monkeypatch):
    # A captioner without PAR decoding (any other audio-to-text model) is refused before any file is read.
    monkeypatch.delattr(ZipformerForConditionalGeneration, "parallel_generate")
    with pytest.raises(SystemExit, match=r"has no parallel \(PAR\) decoder; drop --parallel"):
        main(["caption", str(captioner_dir), str(files[0]), "--parallel"])


def test_a_file_longer_than_the_encoder_takes_is_captioned_from_its_start(
    captioner_dir, tmp_path, monkeypatch
):
    # The encoder takes config.max_length frames (30 s): a longer file is read and captioned up to there,
    # with a notice, instead of failing the batch (or decoding an hour of audio).
    import hf_audiorep.cli as cli

    long_file = write_clip(tmp_path / "long.wav", 31.0, seed=4)
    read = []
    original = cli._read_for_caption

    def recording(path, sampling_rate, max_seconds):
        read.append(max_seconds)
        return original(path, sampling_rate, max_seconds)

    monkeypatch.setattr(cli, "_read_for_caption", recording)
    lines = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert (
        cli.main(
            ["caption", str(captioner_dir), str(long_file), "--json", "--max_new_tokens", str(MAX_NEW_TOKENS)]
        )
        == 0
    )
    assert read == [30.0]
    record = json.loads(next(line for line in lines if line.startswith("{")))
    assert record["notices"] == ["only the first 30 s of 31.0 s were captioned (the encoder's limit)"]
    assert record["caption"] == expected_captions(captioner_dir, [long_file], 1, seconds=30.0)[0]
