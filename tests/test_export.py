"""ONNX export (`hf_audiorep.export`) and ``hf-audiorep export``: the graph computes what PyTorch computes,
for any batch size; the int8 graph holds int8 convolutions and mostly keeps the top class; the CLI writes
the files a runtime needs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import onnx
import pytest
import torch

import hf_audiorep
from hf_audiorep.cli import build_parser, main
from hf_audiorep.export import (
    calibration_features,
    check_onnx_parity,
    check_program_parity,
    export_onnx,
    export_program,
    frame_range,
    onnx_latency,
    onnx_logits,
    program_outputs,
    quantize_int8,
    scene_accuracy,
    top1_agreement,
)
from hf_audiorep.modeling import CPMobileConfig, CPMobileForAudioClassification, LogMelFeatureExtractor

NUM_LABELS = 4
#: float32 graph vs eager PyTorch: the same operators in another order, so rounding-level differences only
FP32_TOLERANCE = 1e-4


def _tiny_cp_mobile(**overrides) -> CPMobileForAudioClassification:
    torch.manual_seed(0)
    config = CPMobileConfig.from_preset("cp-mobile-6k", **{"num_labels": NUM_LABELS, **overrides})
    model = CPMobileForAudioClassification(config).eval()
    # Trained-looking BatchNorm statistics, so that folding them into the convolutions is exercised.
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model


def _tones(feature_extractor, num_clips: int, seed: int = 0) -> torch.Tensor:
    """Features of clips that differ (tones from low to high over noise), so a model's top classes differ."""
    rate = feature_extractor.sampling_rate
    t = np.arange(rate) / rate
    rng = np.random.default_rng(seed)
    frequencies = np.geomspace(60, 0.4 * rate, num_clips) * rng.uniform(0.97, 1.03, num_clips)
    waveforms = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in frequencies])
    waveforms += 0.02 * rng.standard_normal(waveforms.shape)
    return calibration_features(feature_extractor, waveforms.astype(np.float32))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = _tiny_cp_mobile()
    extractor = LogMelFeatureExtractor()
    path = export_onnx(model, extractor, tmp_path_factory.mktemp("cp_mobile") / "model.onnx")
    return model, extractor, path


def test_fp32_graph_matches_torch_for_batches_of_two_and_one(exported):
    model, extractor, path = exported
    features = _tones(extractor, 2)
    assert check_onnx_parity(model, path, features) < FP32_TOLERANCE
    assert check_onnx_parity(model, path, features[:1]) < FP32_TOLERANCE
    assert onnx_logits(path, features).shape == (2, NUM_LABELS)
    batch_axis = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # symbolic, not fixed to the example's 2


def test_export_saves_the_front_end_and_config_beside_the_graph(exported):
    model, extractor, path = exported
    saved = json.loads((path.parent / "preprocessor_config.json").read_text())
    assert saved["feature_extractor_type"] == type(extractor).__name__
    assert saved["num_mel_bins"] == extractor.num_mel_bins
    assert json.loads((path.parent / "config.json").read_text())["model_type"] == model.config.model_type
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["hf_audiorep.clip_seconds"] == "1"


def test_cosine_head_with_layer_norm_exports(tmp_path):
    model = _tiny_cp_mobile(output_norm="layer", embedding_size=16, classifier="cosine")
    extractor = LogMelFeatureExtractor()
    path = export_onnx(model, extractor, tmp_path / "model.onnx")
    # The cosine head scales unit-norm products by cosine_scale: the tolerance scales with it.
    tolerance = FP32_TOLERANCE * model.config.cosine_scale
    assert check_onnx_parity(model, path, _tones(extractor, 2)) < tolerance


@pytest.fixture(scope="module")
def trained_student():
    """A student that tells tone bands apart (a few steps on tones of four bands), so its top classes
    differ between clips and int8's agreement with it means something."""
    extractor = LogMelFeatureExtractor()
    model = _tiny_cp_mobile()
    features = _tones(extractor, 32)
    labels = torch.arange(32) * NUM_LABELS // 32
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        loss = model(input_values=features, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # The running statistics of 40 steps lag the weights: measure them once on the final weights.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model(input_values=features)
    return model.eval(), extractor, features


@pytest.mark.slow
def test_int8_graph_quantises_every_convolution_and_keeps_the_top_class(trained_student, tmp_path):
    model, extractor, training_clips = trained_student
    path = export_onnx(model, extractor, tmp_path / "model.onnx")
    int8 = quantize_int8(path, tmp_path / "model.int8.onnx", training_clips[::4])
    graph = onnx.load(str(int8)).graph
    int8_weights = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(dequantized.get(n.input[1]) in int8_weights for n in convs)

    # The clips the student learned, where its top class is clear: a tiny, briefly trained student's margins
    # on new clips are as small as int8's rounding error, so agreement there would test the student.
    clips = training_clips
    assert len(set(onnx_logits(path, clips).argmax(-1).tolist())) > 1  # else agreement says nothing
    # Rounding to 8 bits can flip only a clip whose two best classes are about as close as the rounding
    # error; a wrong scale, zero point or channel axis flips most of them.
    assert top1_agreement(model, int8, clips) >= 0.9
    assert math.isfinite(onnx_latency(int8, clips[:1], repeats=2))


def test_quantize_int8_names_bad_calibration_inputs(exported, tmp_path):
    _, _, path = exported
    with pytest.raises(ValueError, match="calibration_inputs"):
        quantize_int8(path, tmp_path / "model.int8.onnx", np.zeros((4, 65), dtype=np.float32))


def test_export_onnx_needs_a_feature_extractor_with_a_model_object(tmp_path):
    with pytest.raises(ValueError, match="feature_extractor"):
        export_onnx(_tiny_cp_mobile(), None, tmp_path / "model.onnx")


@pytest.mark.slow
def test_vit_family_exports_with_fp32_parity(tmp_path):
    from transformers import AutoModelForAudioClassification

    from hf_audiorep.registry import architecture_for

    torch.manual_seed(0)
    config = hf_audiorep.config_from_preset("audiomae-tiny", num_labels=NUM_LABELS)
    model = AutoModelForAudioClassification.from_config(config).eval()
    extractor = architecture_for(config.model_type).feature_extractor(num_mel_bins=config.num_mel_bins)
    path = export_onnx(model, extractor, tmp_path / "model.onnx")
    features = calibration_features(extractor, num_clips=2)
    assert check_onnx_parity(model, path, features) < FP32_TOLERANCE
    assert check_onnx_parity(model, path, features[:1]) < FP32_TOLERANCE


def test_export_onnx_loads_a_saved_model_directory(tmp_path):
    model = _tiny_cp_mobile()
    model.save_pretrained(tmp_path / "model")
    LogMelFeatureExtractor().save_pretrained(tmp_path / "model")
    path = export_onnx(tmp_path / "model", None, tmp_path / "onnx" / "model.onnx")
    assert check_onnx_parity(model, path, _tones(LogMelFeatureExtractor(), 2)) < FP32_TOLERANCE
    assert (tmp_path / "onnx" / "preprocessor_config.json").is_file()


def test_cli_export_writes_the_graphs_and_reports_parity(tmp_path, capsys):
    model = _tiny_cp_mobile(id2label={i: f"scene_{i}" for i in range(NUM_LABELS)})
    model.save_pretrained(tmp_path / "model")
    LogMelFeatureExtractor().save_pretrained(tmp_path / "model")
    out = tmp_path / "onnx"
    argv = ["export", str(tmp_path / "model"), str(out), "--int8", "--calibration-data", "noise"]
    assert main([*argv, "--calibration-clips", "4", "--repeats", "2"]) == 0
    for name in ("model.onnx", "model.int8.onnx", "preprocessor_config.json", "config.json"):
        assert (out / name).is_file(), name
    printed = capsys.readouterr().out
    diff = float(re.search(r"max abs diff of the logits (\S+)", printed).group(1))
    assert diff < FP32_TOLERANCE
    agreement = re.search(r"top-1 agreement (\S+)% on 4 noise clips", printed)
    assert agreement is not None and 0 <= float(agreement.group(1)) <= 100
    assert printed.count("ms per clip") == 2
    assert json.loads((out / "config.json").read_text())["id2label"]["0"] == "scene_0"


def test_cli_export_of_a_missing_model_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["export", str(tmp_path / "no-such-model"), str(tmp_path / "out")])
    message = str(error.value.code)
    assert "no such model directory" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_cli_export_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    printed = capsys.readouterr().out
    options = (
        "--int8",
        "--seconds",
        "--opset",
        "--calibration-clips",
        "--calibration-data",
        "--accuracy-split",
        "--repeats",
        "--format",
        "--dynamic-length",
    )
    for option in options:
        assert option in printed, option
    export = build_parser()._subparsers._group_actions[0].choices["export"]
    assert all(action.help for action in export._actions)


@pytest.mark.parametrize("option", ["--seconds=0", "--opset=-1", "--calibration-clips=0"])
def test_cli_export_refuses_non_positive_options(option, tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["export", str(tmp_path), str(tmp_path / "out"), option])
    assert error.value.code == 2  # argparse's usage error, before any model is loaded


def test_cli_export_pt2_writes_a_program_that_matches_torch(tmp_path, capsys):
    model = _tiny_cp_mobile(id2label={i: f"scene_{i}" for i in range(NUM_LABELS)})
    model.save_pretrained(tmp_path / "model")
    LogMelFeatureExtractor().save_pretrained(tmp_path / "model")
    out = tmp_path / "pt2"
    argv = ["export", str(tmp_path / "model"), str(out), "--format", "pt2", "--dynamic-length"]
    assert main([*argv, "--calibration-data", "noise", "--calibration-clips", "2"]) == 0
    for name in ("model.pt2", "preprocessor_config.json", "config.json"):
        assert (out / name).is_file(), name
    assert not (out / "model.onnx").exists()
    printed = capsys.readouterr().out
    diff = float(re.search(r"pt2 vs torch: max abs diff of the logits (\S+)", printed).group(1))
    assert diff < FP32_TOLERANCE
    # CP-Mobile has no longest clip; the shortest is set by its stem's strides.
    shortest = int(re.search(r"with (\d+) <= frames <= any per clip", printed).group(1))
    # The saved program takes clips of other lengths and batch sizes than the CLI's 1-s example, the
    # shortest printed one included.
    program = torch.export.load(str(out / "model.pt2"))
    features = _tones(LogMelFeatureExtractor(), 3)
    assert 1 < shortest < features.shape[1]
    for clips in (torch.cat([features, features.flip(1)], dim=1), features[:1, :shortest]):
        assert check_program_parity(model, program, clips) < FP32_TOLERANCE


def test_cli_export_refuses_int8_of_a_program(tmp_path):
    with pytest.raises(SystemExit) as error:
        main(["export", str(tmp_path), str(tmp_path / "out"), "--format", "pt2", "--int8"])
    assert "--int8" in str(error.value.code)
    assert not (tmp_path / "out").exists()


def test_onnx_graph_with_a_dynamic_length_takes_longer_clips(tmp_path):
    model = _tiny_cp_mobile()
    extractor = LogMelFeatureExtractor()
    path = export_onnx(model, extractor, tmp_path / "model.onnx", dynamic_length=True)
    features = _tones(extractor, 2)
    longer = torch.cat([features, features.flip(1)], dim=1)  # two seconds, the example's is one
    assert check_onnx_parity(model, path, longer) < FP32_TOLERANCE
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert metadata["hf_audiorep.frames"] == f"{frame_range(export_program(model, features))[0]}-"
    # Without it the time axis is the example's, as before.
    fixed = onnx.load(str(export_onnx(model, extractor, tmp_path / "fixed" / "model.onnx"))).graph.input[0]
    assert fixed.type.tensor_type.shape.dim[1].dim_value == features.shape[1]


def test_program_with_a_fixed_length_refuses_another(tmp_path):
    model = _tiny_cp_mobile()
    features = _tones(LogMelFeatureExtractor(), 2)
    program = export_program(model, features, dynamic_length=False)
    assert frame_range(program) == (features.shape[1], features.shape[1])
    assert check_program_parity(model, program, features[:1]) < FP32_TOLERANCE
    with pytest.raises(Exception, match="input_values"):  # torch's guard names the input and its size
        program_outputs(program, features[:, :-3])


def test_parity_is_infinite_when_a_shape_differs():
    from hf_audiorep.export import _largest_difference

    expected = {"logits": np.zeros((2, 3), dtype=np.float32)}
    assert _largest_difference(expected, {"logits": np.zeros((1, 3), dtype=np.float32)}) == math.inf
    assert _largest_difference(expected, {"logits": np.full((2, 3), -0.25, dtype=np.float32)}) == 0.25


def test_scene_accuracy_counts_only_the_scenes_the_model_knows(trained_student, tmp_path):
    model, extractor, features = trained_student
    model.config.id2label = {i: f"band_{i}" for i in range(NUM_LABELS)}
    truth = (torch.arange(32) * NUM_LABELS // 32).tolist()
    truth[3::7] = [(label + 1) % NUM_LABELS for label in truth[3::7]]  # some clips the student gets wrong
    scenes = [f"band_{label}" for label in truth]
    scenes[::5] = ["elsewhere"] * len(scenes[::5])  # a scene outside the model's labels: left out
    kept = [row for row, scene in enumerate(scenes) if scene != "elsewhere"]
    with torch.no_grad():
        predicted = model(input_values=features).logits.argmax(-1)
    expected = sum(int(predicted[row]) == truth[row] for row in kept) / len(kept)
    path = export_onnx(model, extractor, tmp_path / "model.onnx")
    accuracy = scene_accuracy(model, features, scenes, {"fp32": path})
    assert accuracy["clips"] == len(kept) and accuracy["left_out"] == 32 - len(kept)
    assert accuracy["torch"] == pytest.approx(expected) and accuracy["fp32"] == pytest.approx(expected)
    assert 0.5 < expected < 1  # right on most clips, wrong on the relabelled ones
    # Every clip wrongly labelled by one band: the accuracy is that of the shifted labels, not the same.
    shifted = [f"band_{(label + 1) % NUM_LABELS}" for label in truth]
    assert scene_accuracy(model, features, shifted)["torch"] < expected


def test_scene_accuracy_names_clips_without_a_known_scene_and_miscounted_scenes(trained_student):
    model, _, features = trained_student
    with pytest.raises(ValueError, match="none of the 32 clips has a scene among the model's labels"):
        scene_accuracy(model, features, ["nowhere"] * 32)
    with pytest.raises(ValueError, match="32 clips but 31 scenes"):
        scene_accuracy(model, features, ["band_0"] * 31)


def test_cli_export_prints_the_accuracy_of_every_graph_on_a_corpus_split(tmp_path, capsys, monkeypatch):
    from hf_audiorep.data import embedded

    small = embedded.load_embedded_scenes(
        num_train=11, num_validation=11, num_test=22, num_heldout=0, cache_dir=tmp_path / "scenes"
    )
    monkeypatch.setattr(embedded, "load_embedded_scenes", lambda: small)
    test = small["test"]
    names = test.features["scene"].names[:6]  # the model knows six of the eleven closed-set scenes
    model = _tiny_cp_mobile(num_labels=len(names), id2label=dict(enumerate(names)))
    model.save_pretrained(tmp_path / "model")
    extractor = LogMelFeatureExtractor()
    extractor.save_pretrained(tmp_path / "model")
    argv = ["export", str(tmp_path / "model"), str(tmp_path / "onnx"), "--int8", "--calibration-clips", "4"]
    assert main([*argv, "--repeats", "1", "--accuracy-split", "test"]) == 0
    printed = capsys.readouterr().out
    line = re.search(
        r"test split \((\d+) clips; (\d+) of .*: torch (\S+)%, fp32 (\S+)%, int8 (\S+)%", printed
    )
    assert line is not None, printed
    scenes = [test.features["scene"].int2str(s) for s in test["scene"]]
    kept = [row for row, scene in enumerate(scenes) if scene in names]
    assert (int(line.group(1)), int(line.group(2))) == (len(kept), len(test) - len(kept))
    waveforms = [test[row]["audio"]["array"] for row in kept]
    features = extractor(waveforms, sampling_rate=extractor.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**features).logits.argmax(-1).tolist()
    right = sum(names[p] == scenes[row] for p, row in zip(predicted, kept, strict=True))
    assert float(line.group(3)) == pytest.approx(100 * right / len(kept), abs=0.051)
    assert float(line.group(4)) == pytest.approx(float(line.group(3)), abs=0.051)
    assert 0 <= float(line.group(5)) <= 100


def test_cli_export_accuracy_needs_a_classifier_of_the_corpus_scenes(tmp_path, monkeypatch):
    from hf_audiorep.data import embedded

    small = embedded.load_embedded_scenes(
        num_train=11, num_validation=11, num_test=11, num_heldout=0, cache_dir=tmp_path / "scenes"
    )
    monkeypatch.setattr(embedded, "load_embedded_scenes", lambda: small)
    _tiny_cp_mobile(id2label={i: f"tag_{i}" for i in range(NUM_LABELS)}).save_pretrained(tmp_path / "model")
    LogMelFeatureExtractor().save_pretrained(tmp_path / "model")
    argv = ["export", str(tmp_path / "model"), str(tmp_path / "onnx"), "--calibration-clips", "4"]
    with pytest.raises(SystemExit) as error:
        main([*argv, "--repeats", "1", "--accuracy-split", "test"])
    message = str(error.value.code)
    assert "--accuracy-split" in message and "none of the 11 clips" in message and "\n" not in message
