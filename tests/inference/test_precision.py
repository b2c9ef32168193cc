"""The number format of inference (`hf_audiorep.precision`): "auto" is bf16 on an AMX CPU and fp32 elsewhere,
bf16 really runs the matrix products in bfloat16 for every family and stays close to float32, and the CLI
and the Space default to "auto", say what they used and take fp32 for float32 scores."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from family_utils import TINY, random_features, tiny_model
from tagger_utils import save_tiny_tagger, write_clip
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from hf_audiorep import cli
from hf_audiorep import precision as precision_module
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.inference import tag_waveform
from hf_audiorep.modeling import AudioMAEConfig, ZipformerConfig
from hf_audiorep.precision import PRECISIONS, amx_available, for_inference, pays_in_bf16, resolve_precision
from hf_audiorep.registry import ARCHITECTURES

SPACE = Path(__file__).resolve().parents[2] / "spaces" / "audio-tagger"
#: bf16 against fp32 on the random tiny models: bfloat16 keeps 8 significant bits, so a few thousandths
#: of the logits' scale; a model left in float32 differs by 0, one not run at all by far more
BF16_TOLERANCE = dict(rtol=2e-2, atol=2e-2)


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory):
    return save_tiny_tagger(tmp_path_factory.mktemp("precision") / "tiny-tagger")


def _amx(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(precision_module, "amx_available", lambda: present)


# ------------------------------------------------------------------------------------------ resolution


VIT = AudioMAEConfig.model_type


def test_auto_is_bf16_on_an_amx_cpu_for_the_families_where_it_pays(monkeypatch):
    _amx(monkeypatch, True)
    assert resolve_precision("auto", "cpu", VIT) == "bf16"
    assert resolve_precision("auto", torch.device("cpu"), VIT) == "bf16"
    assert resolve_precision("auto", "cuda", VIT) == "fp32"  # not measured on GPUs: float32 there
    # The Zipformer gains nothing from bf16 (docs/benchmarks.md); another library's model was never measured.
    assert resolve_precision("auto", "cpu", ZipformerConfig.model_type) == "fp32"
    assert resolve_precision("auto", "cpu", "wav2vec2") == "fp32"
    assert resolve_precision("auto", "cpu") == "fp32"
    _amx(monkeypatch, False)
    assert resolve_precision("auto", "cpu", VIT) == "fp32"
    for chosen in ("fp32", "bf16"):
        assert resolve_precision(chosen, "cpu", VIT) == chosen
        assert resolve_precision(chosen, "cuda") == chosen
        assert resolve_precision(chosen, "cpu", ZipformerConfig.model_type) == chosen
    assert PRECISIONS == ("auto", "fp32", "bf16")


def test_the_families_that_run_in_bf16_by_default_are_the_measured_ones():
    fast = {a.name for a in ARCHITECTURES if pays_in_bf16(a.model_type)}
    assert fast == {"audiomae", "cat", "bat", "beats"}
    assert not pays_in_bf16(None)


def test_for_inference_reads_the_family_from_the_model(monkeypatch):
    _amx(monkeypatch, True)
    assert for_inference(tiny_model("bat", classifier=True), "auto").inference_precision == "bf16"
    zipformer = tiny_model("zipformer", classifier=True)
    assert for_inference(zipformer, "auto") is zipformer and zipformer.inference_precision == "fp32"


@pytest.mark.parametrize("bad", ["fp16", "BF16", "int8", ""])
def test_an_unknown_precision_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match=r"precision must be one of auto, fp32, bf16; got '.*'"):
        resolve_precision(bad)


def test_the_amx_probe_answers_a_bool_even_when_torch_cannot_tell(monkeypatch):
    assert isinstance(amx_available(), bool)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: 1, raising=False)
    assert amx_available() is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: 0)
    assert amx_available() is False

    def broken():
        raise RuntimeError("cpuinfo failed")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken)
    assert amx_available() is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the private probe
    assert amx_available() is False


# ------------------------------------------------------------------------------------- every family


@pytest.mark.parametrize("family", list(TINY))
def test_bf16_runs_every_family_in_bfloat16_close_to_float32(family):
    model = tiny_model(family, classifier=True)
    features = random_features(2, 64, seed=3)
    with torch.no_grad():
        expected = model(input_values=features).logits

    assert for_inference(model, "fp32") is model and model.inference_precision == "fp32"
    fast = for_inference(model, "bf16")
    assert fast is not model and fast.inference_precision == "bf16" and fast.config is model.config
    dtypes = []
    layers = [
        m for m in model.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d)
    ]
    hooks = [m.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype)) for m in layers]
    with torch.no_grad():
        got = fast(input_values=features).logits
    for hook in hooks:
        hook.remove()
    assert torch.bfloat16 in dtypes  # the products ran in bfloat16 ...
    torch.testing.assert_close(got.float(), expected, **BF16_TOLERANCE)  # ... and stayed near float32
    assert not torch.equal(got.float(), expected)
    # The weights are untouched: the model itself still computes the float32 logits.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(input_values=features).logits, expected)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.ao.quantization: what users still call
@pytest.mark.parametrize("family", list(TINY))
def test_every_family_survives_dynamic_int8_quantisation(family):
    # Not a path of the library (docs/benchmarks.md: it costs far more accuracy than bf16), but one users
    # take, and benchmarks/bench_space.py measures: a model must not read a Linear's weight as a tensor.
    model = tiny_model(family, classifier=True)
    features = random_features(2, 64, seed=4)
    quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        expected, got = model(input_values=features).logits, quantized(input_values=features).logits
    torch.testing.assert_close(got, expected, rtol=0.1, atol=0.05)


def test_for_inference_puts_the_model_in_eval_mode():
    model = tiny_model("audiomae", classifier=True).train()
    fast = for_inference(model, "bf16")
    assert not model.training and not fast.training


# ------------------------------------------------------------------------------------ library result


def test_the_tagging_result_says_what_the_model_ran_in(tagger_dir, tmp_path):
    wave = decode_audio(str(write_clip(tmp_path / "clip.wav", 1.5, seed=1)), 16000)
    model = AutoModelForAudioClassification.from_pretrained(tagger_dir)
    fe = AutoFeatureExtractor.from_pretrained(tagger_dir)
    plain = tag_waveform(model.eval(), fe, wave, 16000)
    assert plain.precision == "fp32" and plain.describe_precision() is None
    fast = tag_waveform(for_inference(model, "bf16"), fe, wave, 16000)
    assert fast.precision == "bf16" and "bfloat16" in fast.describe_precision()
    np.testing.assert_allclose(fast.clip_scores, plain.clip_scores, atol=1e-2)
    assert not np.array_equal(fast.clip_scores, plain.clip_scores)
    # A model cast to bfloat16 by hand is reported as such, not as float32.
    halved = tag_waveform(
        AutoModelForAudioClassification.from_pretrained(tagger_dir).bfloat16().eval(), fe, wave, 16000
    )
    assert halved.precision == "bf16"


# -------------------------------------------------------------------------------------------- the CLI


def _cli_record(capsys, clip, tagger_dir, *extra) -> dict:
    assert cli.main(["tag", str(clip), "--model", str(tagger_dir), "--json", *extra]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    return json.loads(line)


def test_the_cli_defaults_to_auto_and_takes_fp32_for_float32_scores(
    monkeypatch, tagger_dir, tmp_path, capsys
):
    clip = write_clip(tmp_path / "clip.wav", 3.0, seed=2)
    model = AutoModelForAudioClassification.from_pretrained(tagger_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(tagger_dir)
    expected = dict(tag_waveform(model, fe, decode_audio(str(clip), 16000), 16000).top(5))

    exact = _cli_record(capsys, clip, tagger_dir, "--precision", "fp32")
    assert exact["precision"] == "fp32"
    assert {r["label"]: r["score"] for r in exact["labels"]} == pytest.approx(expected, abs=1e-6)

    _amx(monkeypatch, True)
    fast = _cli_record(capsys, clip, tagger_dir)  # the default: auto
    assert fast["precision"] == "bf16"
    scores = {r["label"]: r["score"] for r in fast["labels"]}
    assert scores != pytest.approx(expected, abs=1e-6)
    assert [scores.get(label, -1.0) for label in expected] == pytest.approx(list(expected.values()), abs=1e-2)

    _amx(monkeypatch, False)
    assert _cli_record(capsys, clip, tagger_dir)["precision"] == "fp32"
    assert cli.main(["tag", str(clip), "--model", str(tagger_dir), "--precision", "bf16"]) == 0
    assert "sigmoid scores, bf16)" in capsys.readouterr().out


def test_the_cli_refuses_an_unknown_precision_and_documents_the_option(tagger_dir, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.wav", 1.0)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tag", str(clip), "--model", str(tagger_dir), "--precision", "fp16"])
    assert exit_info.value.code == 2
    assert "--precision: invalid choice: 'fp16'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["tag", "--help"])
    assert "--precision {auto,fp32,bf16}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ the Space


@pytest.fixture()
def app():
    spec = importlib.util.spec_from_file_location("audio_tagger_app_precision", SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_the_space_reads_its_precision_from_the_environment(app):
    assert app.TaggerSettings().precision == "auto"
    assert app.TaggerSettings.from_env({}).precision == "auto"
    assert app.TaggerSettings.from_env({"HF_AUDIOREP_PRECISION": " fp32 "}).precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, got 'fp16'"):
        app.TaggerSettings.from_env({"HF_AUDIOREP_PRECISION": "fp16"})


def test_the_space_tags_in_the_precision_it_is_given(app, monkeypatch, tagger_dir, tmp_path):
    clip = write_clip(tmp_path / "clip.wav", 1.5, seed=3)
    model = AutoModelForAudioClassification.from_pretrained(tagger_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(tagger_dir)
    expected = dict(tag_waveform(model, fe, decode_audio(str(clip), 16000), 16000).top(3))

    def tag(precision):
        settings = app.TaggerSettings(model_ids=(str(tagger_dir),), precision=precision)
        return app.predict(str(clip), None, 3, settings=settings)

    labels, _, message = tag("bf16")
    assert "bfloat16" in message
    assert [labels.get(label, -1.0) for label in expected] == pytest.approx(list(expected.values()), abs=1e-2)
    assert list(labels.values()) != pytest.approx(list(expected.values()), abs=1e-6)
    labels, _, message = tag("fp32")
    assert "bfloat16" not in message
    assert list(labels) == list(expected)
    assert list(labels.values()) == pytest.approx(list(expected.values()), abs=1e-6)
    # "auto" follows the CPU; each (model, precision) is loaded once.
    _amx(monkeypatch, False)
    assert "bfloat16" not in tag("auto")[2]
    assert app.load_model(str(tagger_dir), "bf16")[0] is app.load_model(str(tagger_dir), "bf16")[0]
    assert app.load_model(str(tagger_dir), "bf16")[0].inference_precision == "bf16"


def test_the_space_command_line_takes_a_precision(app, capsys):
    with pytest.raises(SystemExit):
        app.main(["--help"])
    assert "--precision {auto,fp32,bf16}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--precision", "int8"])
    assert exit_info.value.code == 2
