"""Conversion of icefall's Zipformer audio tagger: numeric parity with icefall on a fixture made by running
icefall's own code (tests/fixtures/zipformer/README.md), and clear errors for state dicts of another
layout."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_audiorep.conversion.icefall_zipformer import (
    config_from_icefall_args,
    convert_icefall_zipformer_state_dict,
    load_icefall_zipformer,
)
from hf_audiorep.modeling.modeling_zipformer import ZipformerForAudioClassification, ZipformerModel

FIXTURES = Path(__file__).parents[2] / "fixtures" / "zipformer"
STATE_DICT = FIXTURES / "icefall_at_state_dict.safetensors"
ARGS = FIXTURES / "icefall_args.json"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIXTURES / "icefall_at_io.safetensors"))


@pytest.fixture(scope="module")
def icefall_state_dict():
    return load_file(str(STATE_DICT))


def icefall_args(**changes):
    return {**json.loads(ARGS.read_text()), **changes}


def padding_mask_of(io):
    features, lengths = io["features"], io["lengths"]
    return (torch.arange(features.shape[1])[None, :] < lengths[:, None]).long()


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_converted_tagger_matches_icefall(io, attn_implementation):
    model = load_icefall_zipformer(STATE_DICT, ARGS)
    assert type(model) is ZipformerForAudioClassification
    model.set_attn_implementation(attn_implementation)
    with torch.no_grad():
        outputs = model(io["features"], padding_mask_of(io), output_hidden_states=True)
        lengths_out = model.zipformer(io["features"], padding_mask_of(io)).output_lengths
    encoder_out = outputs.hidden_states[-1]
    lengths = io["encoder_out_lens"]
    assert lengths_out.tolist() == lengths.tolist()
    # icefall's reference outputs are of each clip run alone (icefall leaks padding into a batched clip's
    # last frames; this port does not), so the padded clip is compared with icefall's unpadded run.
    for i, length in enumerate(lengths.tolist()):
        error = (encoder_out[i, :length] - io["encoder_out"][i, :length]).abs().max().item()
        assert error < TOLERANCE, (i, error)
    assert (outputs.logits - io["logits"]).abs().max().item() < TOLERANCE
    # The longest clip has no padding: icefall's batched run is the same computation.
    long = int(lengths.argmax())
    assert (encoder_out[long] - io["batched_encoder_out"][long]).abs().max() < TOLERANCE


def test_icefall_itself_leaks_padding_into_the_short_clip(io):
    """Why the fixture compares with unpadded runs: documents the reference's own behaviour."""
    short = int(io["encoder_out_lens"].argmin())
    length = int(io["encoder_out_lens"][short])
    leak = (io["batched_encoder_out"][short, :length] - io["encoder_out"][short, :length]).abs().max()
    assert leak > 1e-2


def test_encoder_only_checkpoint_converts_to_the_base_model(io, icefall_state_dict, tmp_path):
    encoder_only = {k: v for k, v in icefall_state_dict.items() if not k.startswith("classifier.")}
    save_file(encoder_only, str(tmp_path / "encoder.safetensors"))
    model = load_icefall_zipformer(tmp_path / "encoder.safetensors", ARGS)
    assert type(model) is ZipformerModel
    with torch.no_grad():
        hidden = model(io["features"], padding_mask_of(io)).last_hidden_state
    length = int(io["encoder_out_lens"][0])
    assert (hidden[0, :length] - io["encoder_out"][0, :length]).abs().max() < TOLERANCE


def test_config_from_icefall_arguments():
    config = config_from_icefall_args(icefall_args())
    assert config.encoder_dim == (32, 48, 40) and config.num_encoder_layers == (1, 2, 1)
    assert config.query_head_dim == (8, 8, 8) and config.subsampling_channels == (4, 8, 16)
    assert config.num_labels == 5 and config.problem_type == "multi_label_classification"
    # icefall's command-line form: comma-separated strings, dashes in the names
    strings = config_from_icefall_args(
        {
            "--encoder-dim": "192,256,384,512,384,256",
            "num-heads": "4,4,4,8,4,4",
            "feedforward-dim": "512,768,1024,1536,1024,768",
            "query-head-dim": "32",
        }
    )
    assert strings.encoder_dim == (192, 256, 384, 512, 384, 256)
    assert strings.feedforward_dim == (512, 768, 1024, 1536, 1024, 768)
    assert strings.query_head_dim == (32,) * 6
    with pytest.raises(ValueError, match="causal"):
        config_from_icefall_args(icefall_args(causal=True))


def test_layer_bypass_scale_is_dropped_and_names_map(icefall_state_dict):
    config = config_from_icefall_args(icefall_args())
    converted = convert_icefall_zipformer_state_dict(icefall_state_dict, config)
    torch.testing.assert_close(
        converted["zipformer.blocks.2.self_attn1.in_proj.weight"],
        icefall_state_dict["encoder.encoders.1.encoder.layers.1.self_attn1.in_proj.weight"],
    )
    torch.testing.assert_close(
        converted["zipformer.embed.conv2.weight"], icefall_state_dict["encoder_embed.conv.4.weight"]
    )
    torch.testing.assert_close(converted["classifier.bias"], icefall_state_dict["classifier.1.bias"])
    dropped = [k for k in icefall_state_dict if re_layer_bypass(k)]
    assert len(dropped) == 4 and len(converted) == len(icefall_state_dict) - 4  # one per layer
    # DDP prefix and {"model": ...} wrapping are accepted
    wrapped = {"model": {f"module.{k}": v for k, v in icefall_state_dict.items()}}
    assert convert_icefall_zipformer_state_dict(wrapped, config).keys() == converted.keys()


def re_layer_bypass(key: str) -> bool:
    return key.endswith(".bypass_scale") and key.split(".")[-2].isdigit()


def test_missing_and_unexpected_keys_are_named(icefall_state_dict):
    config = config_from_icefall_args(icefall_args())
    broken = dict(icefall_state_dict)
    del broken["encoder.encoders.2.downsample.bias"]
    broken["encoder.something_new.weight"] = torch.zeros(1)
    with pytest.raises(KeyError) as excinfo:
        convert_icefall_zipformer_state_dict(broken, config)
    message = str(excinfo.value)
    assert "zipformer.stacks.2.downsample.bias" in message and "encoder.something_new.weight" in message


def test_a_checkpoint_with_more_layers_than_the_config_is_refused(icefall_state_dict):
    config = config_from_icefall_args(icefall_args(num_encoder_layers=(1, 1, 1)))
    with pytest.raises(KeyError, match=r"encoder\.encoders\.1\.encoder\.layers\.1\."):
        convert_icefall_zipformer_state_dict(icefall_state_dict, config)


def test_wrong_shapes_fail_at_load(icefall_state_dict):
    config = config_from_icefall_args(icefall_args(num_heads=(2, 2, 2)))  # the checkpoint: 4 in stack 1
    model = ZipformerForAudioClassification(config)
    with pytest.raises(RuntimeError, match="size mismatch"):
        model.load_state_dict(convert_icefall_zipformer_state_dict(icefall_state_dict, config))
