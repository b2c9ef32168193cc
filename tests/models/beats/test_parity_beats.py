"""BEATs against the reference implementation (microsoft/unilm beats/), through the fixture in
tests/fixtures/beats: a tiny random fine-tuned model in the reference's key layout (weight-normalised
positional conv, shared relative position table, gate, deep-norm), its inputs and the reference's outputs.
How the fixture was made is in its README."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_audiorep.conversion.beats import load_beats_checkpoint
from hf_audiorep.modeling.feature_extraction_beats import BEATsFeatureExtractor
from hf_audiorep.modeling.modeling_beats import BEATsForAudioClassification, BEATsModel

FIXTURE = Path(__file__).parents[2] / "fixtures" / "beats"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    cfg = json.loads((FIXTURE / "reference_cfg.json").read_text())
    return (
        cfg,
        load_file(FIXTURE / "reference_weights.safetensors"),
        load_file(FIXTURE / "reference_io.safetensors"),
    )


@pytest.fixture(scope="module")
def model(reference):
    cfg, weights, _ = reference
    return load_beats_checkpoint(cfg, weights)


def test_fixture_covers_every_path(reference, model):
    cfg, weights, io = reference
    assert cfg["relative_position_embedding"] and cfg["gru_rel_pos"] and cfg["deep_norm"]
    assert "encoder.pos_conv.0.weight_g" in weights and "predictor.weight" in weights
    assert isinstance(model, BEATsForAudioClassification)
    # The mask pads part of one clip only, and changes that clip's outputs.
    padded = io["patch_padding_mask"].sum(dim=1)
    assert padded[0] == 0 and 0 < padded[1] < io["patch_padding_mask"].shape[1]
    assert not torch.allclose(io["last_hidden_state_masked"][1], io["last_hidden_state"][1])


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "padding-mask"])
def test_matches_the_reference(reference, model, attn_implementation, masked):
    _, _, io = reference
    model.set_attn_implementation(attn_implementation)
    suffix = "_masked" if masked else ""
    attention_mask = (~io["frame_padding_mask"]).long() if masked else None
    with torch.no_grad():
        outputs = model(io["fbank"], attention_mask=attention_mask, output_hidden_states=True)
    # Post-LN: the encoder's output is the last block's.
    torch.testing.assert_close(
        outputs.hidden_states[-1], io["last_hidden_state" + suffix], rtol=0, atol=TOLERANCE
    )
    # The reference returns sigmoid probabilities; ours are the logits, compared both ways.
    probs = io["probs" + suffix]
    torch.testing.assert_close(torch.sigmoid(outputs.logits), probs, rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(outputs.logits, torch.logit(probs.double()).float(), rtol=0, atol=TOLERANCE)


def test_encoder_alone_matches_the_reference(reference):
    cfg, weights, io = reference
    encoder = load_beats_checkpoint(cfg, weights, with_head=False)
    assert type(encoder) is BEATsModel
    with torch.no_grad():
        outputs = encoder(io["fbank"], attention_mask=(~io["frame_padding_mask"]).long())
    torch.testing.assert_close(
        outputs.last_hidden_state, io["last_hidden_state_masked"], rtol=0, atol=TOLERANCE
    )
    # The pooled embedding is the mean over the patches the reference keeps.
    keep = (~io["patch_padding_mask"]).float()
    expected = (io["last_hidden_state_masked"] * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    torch.testing.assert_close(outputs.pooler_output, expected, rtol=0, atol=TOLERANCE)


def test_waveform_to_prediction_matches_the_reference(reference, model):
    """End to end: our front end on the reference's waveforms, then the model."""
    _, _, io = reference
    features = BEATsFeatureExtractor()(io["waveforms"].numpy(), sampling_rate=16000, return_tensors="pt")
    torch.testing.assert_close(features["input_values"], io["fbank"], rtol=0, atol=TOLERANCE)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        logits = model(features["input_values"]).logits
    torch.testing.assert_close(torch.sigmoid(logits), io["probs"], rtol=0, atol=TOLERANCE)
