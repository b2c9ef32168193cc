"""`torch.export` and ONNX of every family (`hf_audiorep.export`): each family's encoder and classifier, on a
tiny random config, export with a symbolic batch and time axis, and the program and the ONNX graph compute
what eager PyTorch computes at batch sizes and lengths other than the example's."""

from __future__ import annotations

import onnx
import pytest
import torch
from transformers import AutoModelForAudioClassification

from hf_audiorep.export import (
    ENCODER_OUTPUTS,
    check_onnx_parity,
    check_program_parity,
    export_onnx,
    export_program,
    frame_range,
    onnx_outputs,
    output_names,
    program_outputs,
    save_program,
)
from hf_audiorep.registry import ARCHITECTURES, architecture_for

#: exported graph vs eager PyTorch: the same operators, perhaps reordered or fused, so rounding-level only
TOLERANCE = 1e-4

#: tiny configs, one per family (about the sizes of the families' model tests)
TINY = {
    "audiomae": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_length=64, num_mel_bins=32
    ),
    "cat": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        stem_channels=(8, 16),
        stem_depths=(1, 1),
        max_length=64,
        num_mel_bins=32,
        average_top_k_layers=2,  # the pre-training target's layers: at most num_hidden_layers
    ),
    "bat": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_length=64,
        num_mel_bins=32,
        average_top_k_layers=2,
    ),
    "beats": dict(
        num_mel_bins=32,
        patch_embedding_dim=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        relative_position_embedding=True,
        gru_rel_pos=True,
        deep_norm=True,
        num_buckets=8,
        max_distance=16,
        max_length=400,
    ),
    "cp_mobile": dict(
        num_mel_bins=32,
        base_channels=8,
        channels_multiplier=2.0,
        expansion_rate=2.0,
        n_blocks=(2, 1, 1),
        strides=((1, 1), (2, 2), (1, 2), (2, 1)),
    ),
    "zipformer": dict(
        num_encoder_layers=(1, 1, 1),
        downsampling_factor=(1, 2, 4),
        encoder_dim=(16, 24, 20),
        feedforward_dim=(32, 48, 40),
        num_heads=(2, 2, 2),
        encoder_unmasked_dim=(8, 16, 16),
        cnn_module_kernel=(5, 3, 3),
        query_head_dim=8,
        value_head_dim=4,
        pos_head_dim=2,
        pos_dim=8,
        subsampling_channels=(4, 8, 8),
        num_mel_bins=32,
        max_length=200,
    ),
}
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
NUM_LABELS = 3


def _model(family: str, classifier: bool):
    config = _config(family)
    architecture = architecture_for(config.model_type)
    model_class = architecture.base_model
    if classifier:
        model_class = architecture.heads[AutoModelForAudioClassification]
    torch.manual_seed(0)
    model = model_class(config).eval()
    # Move every norm off its initial unit scale and zero shift, so that a dropped or misplaced norm shows.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model


def _config(family: str):
    (architecture,) = [a for a in ARCHITECTURES if a.name == family]
    return architecture.config_class(num_labels=NUM_LABELS, **TINY[family])


def _features(batch: int, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 32, generator=generator)


def _example(family: str) -> torch.Tensor:
    return _features(2, EXAMPLE_FRAMES.get(family, 100), seed=0)


@pytest.mark.parametrize(("family", "classifier"), PROGRAMS)
def test_program_matches_eager_at_other_batch_sizes_and_lengths(family, classifier, tmp_path):
    model = _model(family, classifier)
    program = export_program(model, _example(family))
    for seed, (batch, frames) in enumerate(CHECKS[family], start=1):
        features = _features(batch, frames, seed)
        outputs = program_outputs(program, features)
        assert set(outputs) == ({"logits"} if classifier else set(ENCODER_OUTPUTS))
        assert len(outputs[next(iter(outputs))]) == batch
        assert check_program_parity(model, program, features) < TOLERANCE
    # Saved and loaded back as .pt2, it is the same program.
    loaded = torch.export.load(str(save_program(program, tmp_path / "model.pt2")))
    features = _features(*CHECKS[family][0], seed=9)
    assert check_program_parity(model, loaded, features) < TOLERANCE
    # The time axis ends where the model's own input check does (CP-Mobile has none).
    assert frame_range(program)[1] == getattr(model.config, "max_length", None)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_graph_matches_eager_at_other_batch_sizes_and_lengths(family, tmp_path):
    # The classifier only: its graph holds the whole encoder (whose own outputs the program test checks),
    # and every ONNX export traces the model again, the slowest step of this file.
    model = _model(family, classifier=True)
    architecture = architecture_for(model.config.model_type)
    # A ViT's extractor pads to target_length: the positions' length here, as in the program's test.
    extractor = architecture.feature_extractor(num_mel_bins=32, target_length=EXAMPLE_FRAMES.get(family))
    path = export_onnx(model, extractor, tmp_path / "model.onnx", dynamic_length=True)
    graph = onnx.load(str(path)).graph
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch", "frames"]
    assert [output.name for output in graph.output] == list(output_names(model))
    for seed, (batch, frames) in enumerate(CHECKS[family], start=1):
        features = _features(batch, frames, seed)
        assert check_onnx_parity(model, path, features) < TOLERANCE
        assert len(onnx_outputs(path, features)[output_names(model)[0]]) == batch
