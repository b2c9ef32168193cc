"""`torch.export` and ONNX of every family (`hf_audiorep.export`): each family's encoder and classifier, on a
tiny random config, export with a symbolic batch and time axis, and the program and the ONNX graph compute
what eager PyTorch computes at batch sizes and lengths other than the example's."""

from __future__ import annotations

import onnx
import pytest
import torch
from family_utils import TINY, random_features, tiny_model

from hf_audiorep.export import (
    ENCODER_OUTPUTS,
    FrameLengths,
    check_onnx_parity,
    check_program_parity,
    export_onnx,
    export_program,
    frame_lengths,
    frame_range,
    onnx_outputs,
    output_names,
    program_outputs,
    save_program,
)
from hf_audiorep.registry import architecture_for

#: exported graph vs eager PyTorch: the same operators, perhaps reordered or fused, so rounding-level only
TOLERANCE = 1e-4

#: the ViTs hold positions for max_length (64) frames, so the example is 64 frames; the others' is 100
EXAMPLE_FRAMES = {"audiomae": 64, "cat": 64, "bat": 64}
#: (batch, frames) pairs unlike the example's (2 clips): a shorter and a longer clip where the model takes
#: one, and for the ViTs two shorter ones, one not a whole number of 16-frame patches
CHECKS = {name: ((1, 57), (3, 40)) for name in EXAMPLE_FRAMES} | {
    name: ((1, 57), (3, 143)) for name in ("beats", "cp_mobile", "zipformer")
}
#: over ~10 s on one free core (the Zipformer's export traces many small modules)
SLOW = {"zipformer"}
FAMILIES = [pytest.param(name, marks=[pytest.mark.slow] if name in SLOW else []) for name in TINY]
#: (family, classifier) pairs of the program test: the slow families' classifier only (it holds the encoder)
PROGRAMS = [
    pytest.param(name, classifier, id=f"{name}-{kind}", marks=[pytest.mark.slow] if name in SLOW else [])
    for name in TINY
    for classifier, kind in ((False, "encoder"), (True, "classifier"))
    if classifier or name not in SLOW
]


def _example(family: str) -> torch.Tensor:
    return random_features(2, EXAMPLE_FRAMES.get(family, 100), seed=0)


@pytest.mark.parametrize(("family", "classifier"), PROGRAMS)
def test_program_matches_eager_at_other_batch_sizes_and_lengths(family, classifier, tmp_path):
    model = tiny_model(family, classifier)
    program = export_program(model, _example(family))
    for seed, (batch, frames) in enumerate(CHECKS[family], start=1):
        features = random_features(batch, frames, seed)
        outputs = program_outputs(program, features)
        assert set(outputs) == ({"logits"} if classifier else set(ENCODER_OUTPUTS))
        assert len(outputs[next(iter(outputs))]) == batch
        assert check_program_parity(model, program, features) < TOLERANCE
    # Saved and loaded back as .pt2, it is the same program.
    loaded = torch.export.load(str(save_program(program, tmp_path / "model.pt2")))
    features = random_features(*CHECKS[family][0], seed=9)
    assert check_program_parity(model, loaded, features) < TOLERANCE
    # The time axis ends where the model's own input check does (CP-Mobile has none).
    assert frame_range(program)[1] == getattr(model.config, "max_length", None)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_graph_matches_eager_at_other_batch_sizes_and_lengths(family, tmp_path):
    # The classifier only: its graph holds the whole encoder (whose own outputs the program test checks),
    # and every ONNX export traces the model again, the slowest step of this file.
    model = tiny_model(family, classifier=True)
    architecture = architecture_for(model.config.model_type)
    # A ViT's extractor pads to target_length: the positions' length here, as in the program's test.
    extractor = architecture.feature_extractor(num_mel_bins=32, target_length=EXAMPLE_FRAMES.get(family))
    path = export_onnx(model, extractor, tmp_path / "model.onnx", dynamic_length=True)
    graph = onnx.load(str(path)).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch", "frames"]
    assert [output.name for output in graph.output] == list(output_names(model))
    for seed, (batch, frames) in enumerate(CHECKS[family], start=1):
        features = random_features(batch, frames, seed)
        assert check_onnx_parity(model, path, features) < TOLERANCE
        assert len(onnx_outputs(path, features)[output_names(model)[0]]) == batch


#: lengths past the shortest run when the time axis has no longest (CP-Mobile)
UNBOUNDED_CHECK = 48


def _rejects(program, frames: int) -> bool:
    try:
        program_outputs(program, random_features(1, frames, seed=frames))
    except AssertionError as error:  # the program's guards: "Guard failed: ..."
        return "Guard failed" in str(error)
    return False


@pytest.mark.parametrize("family", FAMILIES)
def test_frame_lengths_are_the_lengths_the_program_takes(family):
    program = export_program(tiny_model(family, classifier=True), _example(family))
    lengths = frame_lengths(program)
    assert lengths.step == 1  # every family takes every length of its range
    assert frame_range(program) == (lengths.shortest, lengths.longest)
    end = lengths.longest if lengths.longest is not None else lengths.shortest + UNBOUNDED_CHECK
    for frames in range(lengths.shortest, end + 1):
        assert lengths.accepts(frames)
        outputs = program_outputs(program, random_features(1, frames, seed=frames))
        assert outputs["logits"].shape == (1, 3), frames
    # Just below the shortest (a ViT's one-patch clip, a stride leaving one step) and past the longest, the
    # program refuses the clip, as reported.
    for frames in (lengths.shortest - 1, lengths.shortest - 2):
        assert not lengths.accepts(frames) and _rejects(program, frames), frames
    if lengths.longest is not None:
        assert not lengths.accepts(lengths.longest + 1) and _rejects(program, lengths.longest + 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_program_traced_on_one_clip_takes_any_batch_size(family):
    model = tiny_model(family, classifier=True)
    program = export_program(model, _example(family)[:1])
    for seed, batch in enumerate((1, 3), start=1):
        features = random_features(batch, EXAMPLE_FRAMES.get(family, 100), seed)
        assert len(program_outputs(program, features)["logits"]) == batch
        assert check_program_parity(model, program, features) < TOLERANCE


def test_frame_lengths_say_when_only_every_nth_length_is_taken():
    every_fourth = FrameLengths(shortest=32, longest=128, step=4)
    assert [every_fourth.accepts(n) for n in (28, 32, 33, 36, 128, 132)] == [0, 1, 0, 1, 1, 0]
    assert str(every_fourth) == "32 <= frames <= 128, in steps of 4 from 32"
    assert str(FrameLengths(17, None)) == "17 <= frames <= any"


def test_unevenly_spaced_lengths_are_refused_by_name(monkeypatch):
    from hf_audiorep import export

    monkeypatch.setattr(export, "_accepted_frames", lambda program: ([16, 32, 40], 40))
    with pytest.raises(ValueError, match=r"takes clips of \[16, 32, 40\]\.\.\. frames, not evenly spaced"):
        frame_lengths(None)
    assert frame_range(None) == (16, 40)
