"""Conversion of reference BEATs checkpoints (microsoft/unilm key layout), on state dicts in that layout."""

import json

import pytest
import torch
from safetensors.torch import save_file

from hf_audiorep.conversion.beats import (
    convert_beats_state_dict,
    fold_weight_norm,
    load_beats_checkpoint,
    read_beats_checkpoint,
)
from hf_audiorep.modeling.configuration_beats import BEATsConfig
from hf_audiorep.modeling.modeling_beats import BEATsForAudioClassification, BEATsModel

CFG = {
    "input_patch_size": 16,
    "embed_dim": 8,
    "encoder_layers": 2,
    "encoder_embed_dim": 16,
    "encoder_ffn_embed_dim": 24,
    "encoder_attention_heads": 2,
    "conv_pos": 4,
    "conv_pos_groups": 2,
    "relative_position_embedding": True,
    "num_buckets": 8,
    "max_distance": 16,
    "gru_rel_pos": True,
    "deep_norm": True,
}


class NotAllowed:
    """A class a pickle may name; ``weights_only`` loading refuses to rebuild it."""


def reference_state_dict(
    cfg=CFG, predictor_class: int | None = None, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random tensors with the reference's names and shapes (what ``BEATs(cfg).state_dict()`` holds)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    embed, width, ffn = cfg["embed_dim"], cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"]
    heads, kernel, groups = cfg["encoder_attention_heads"], cfg["conv_pos"], cfg["conv_pos_groups"]
    state = {
        "patch_embedding.weight": rand(embed, 1, 16, 16),
        "layer_norm.weight": rand(embed),
        "layer_norm.bias": rand(embed),
        "post_extract_proj.weight": rand(width, embed),
        "post_extract_proj.bias": rand(width),
        "encoder.pos_conv.0.bias": rand(width),
        "encoder.pos_conv.0.weight_g": rand(1, 1, kernel).abs(),
        "encoder.pos_conv.0.weight_v": rand(width, width // groups, kernel),
        "encoder.layer_norm.weight": rand(width),
        "encoder.layer_norm.bias": rand(width),
    }
    table = rand(cfg["num_buckets"], heads)
    for i in range(cfg["encoder_layers"]):
        layer = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            state[f"{layer}self_attn.{proj}.weight"] = rand(width, width)
            state[f"{layer}self_attn.{proj}.bias"] = rand(width)
        state[f"{layer}self_attn.relative_attention_bias.weight"] = table.clone()
        state[f"{layer}self_attn.grep_linear.weight"] = rand(8, width // heads)
        state[f"{layer}self_attn.grep_linear.bias"] = rand(8)
        state[f"{layer}self_attn.grep_a"] = rand(1, heads, 1, 1)
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            state[f"{layer}{norm}.weight"] = rand(width)
            state[f"{layer}{norm}.bias"] = rand(width)
        state[f"{layer}fc1.weight"], state[f"{layer}fc1.bias"] = rand(ffn, width), rand(ffn)
        state[f"{layer}fc2.weight"], state[f"{layer}fc2.bias"] = rand(width, ffn), rand(width)
    if predictor_class is not None:
        state["predictor.weight"], state["predictor.bias"] = (
            rand(predictor_class, width),
            rand(predictor_class),
        )
    return state


def test_fold_weight_norm_equals_torch_weight_norm():
    conv = torch.nn.Conv1d(16, 16, kernel_size=4, padding=2, groups=2)
    with torch.no_grad():
        conv.weight.normal_()
    normed = torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    with torch.no_grad():
        normed.parametrizations.weight.original0.mul_(1.7)  # g no longer the norm of v
        original0 = normed.parametrizations.weight.original0
        original1 = normed.parametrizations.weight.original1
        torch.testing.assert_close(fold_weight_norm(original0, original1), normed.weight)


def test_encoder_conversion_maps_every_key():
    state = reference_state_dict()
    converted = convert_beats_state_dict(state)
    model = BEATsModel(BEATsConfig.from_reference_cfg(CFG))
    assert set(converted) == set(model.state_dict())
    table = state["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    assert torch.equal(converted["encoder.relative_attention_bias.weight"], table)
    assert torch.equal(
        converted["encoder.blocks.1.self_attn.gru_rel_pos_const"], state["encoder.layers.1.self_attn.grep_a"]
    )
    assert torch.equal(converted["encoder.blocks.0.fc2.weight"], state["encoder.layers.0.fc2.weight"])
    expected_conv = fold_weight_norm(
        state["encoder.pos_conv.0.weight_g"], state["encoder.pos_conv.0.weight_v"]
    )
    assert torch.equal(converted["encoder.pos_conv.conv.weight"], expected_conv)


def test_fine_tuned_checkpoint_gets_its_head():
    cfg = {**CFG, "finetuned_model": True, "predictor_class": 6}
    state = reference_state_dict(cfg, predictor_class=6)
    model = load_beats_checkpoint(cfg, state)
    assert isinstance(model, BEATsForAudioClassification) and not model.training
    assert model.config.num_labels == 6 and model.config.problem_type == "multi_label_classification"
    assert torch.equal(model.classifier.weight, state["predictor.weight"])
    encoder = load_beats_checkpoint(cfg, state, with_head=False)
    assert type(encoder) is BEATsModel
    torch.testing.assert_close(encoder.patch_embedding.weight, state["patch_embedding.weight"])
    with pytest.raises(ValueError, match="no predictor"):
        load_beats_checkpoint(CFG, reference_state_dict(), with_head=True)


def test_other_weight_layouts_of_the_positional_conv():
    state = reference_state_dict()
    expected = convert_beats_state_dict(state)["encoder.pos_conv.conv.weight"]
    g, v = state.pop("encoder.pos_conv.0.weight_g"), state.pop("encoder.pos_conv.0.weight_v")
    parametrized = {
        **state,
        "encoder.pos_conv.0.parametrizations.weight.original0": g,
        "encoder.pos_conv.0.parametrizations.weight.original1": v,
    }
    assert torch.equal(convert_beats_state_dict(parametrized)["encoder.pos_conv.conv.weight"], expected)
    folded = {**state, "encoder.pos_conv.0.weight": expected}
    assert torch.equal(convert_beats_state_dict(folded)["encoder.pos_conv.conv.weight"], expected)
    with pytest.raises(ValueError, match="no positional conv weight"):
        convert_beats_state_dict(state)


def test_unknown_keys_and_unshared_tables_are_rejected():
    state = reference_state_dict()
    with pytest.raises(ValueError, match="quantizer.embed"):
        convert_beats_state_dict({**state, "quantizer.embed": torch.zeros(2)})
    state["encoder.layers.1.self_attn.relative_attention_bias.weight"] += 1.0
    with pytest.raises(ValueError, match="shares one table"):
        convert_beats_state_dict(state)


def test_shapes_that_disagree_with_the_cfg_fail_to_load():
    state = reference_state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_beats_checkpoint({**CFG, "encoder_ffn_embed_dim": 32}, state)


def test_checkpoint_files_load_without_unpickling_code(tmp_path):
    cfg = {**CFG, "finetuned_model": True, "predictor_class": 3}
    state = reference_state_dict(cfg, predictor_class=3)
    expected = load_beats_checkpoint(cfg, state)
    inputs = torch.randn(1, 40, 128)

    pickle_path = tmp_path / "BEATs_tiny.pt"
    torch.save(
        {"cfg": cfg, "model": state, "label_dict": {0: "/m/09x0r", 1: "/m/05zppz", 2: "/m/02zsn"}},
        pickle_path,
    )
    read_cfg, read_state, labels = read_beats_checkpoint(pickle_path)
    assert read_cfg == cfg and read_state.keys() == state.keys()
    assert labels == {0: "/m/09x0r", 1: "/m/05zppz", 2: "/m/02zsn"}
    assert load_beats_checkpoint(pickle_path).config.id2label == labels
    with pytest.raises(ValueError, match="label_dict has 2 labels"):
        load_beats_checkpoint(cfg, state, label_dict={0: "a", 1: "b"})

    directory = tmp_path / "converted"
    directory.mkdir()
    save_file(state, directory / "model.safetensors")
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with torch.no_grad():
        for source in (pickle_path, directory):
            loaded = load_beats_checkpoint(source)
            torch.testing.assert_close(loaded(inputs).logits, expected(inputs).logits, rtol=0, atol=0)

    torch.save({"cfg": cfg, "model": state, "extra": NotAllowed()}, tmp_path / "unsafe.pt")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        read_beats_checkpoint(tmp_path / "unsafe.pt")
    torch.save({"model": state}, tmp_path / "no_cfg.pt")
    with pytest.raises(ValueError, match="not a BEATs checkpoint"):
        read_beats_checkpoint(tmp_path / "no_cfg.pt")
    with pytest.raises(FileNotFoundError):
        read_beats_checkpoint(tmp_path / "missing.pt")
