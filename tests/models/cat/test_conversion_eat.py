"""EAT / CAT checkpoints -> CATModel: the converted model computes what the reference computes.

The state dicts are built here with the reference key names and shapes (fairseq's ``Data2VecMultiModel``
with ``modality_encoders.IMAGE``, CAT's conv stem, and the Hub port's ``model.*`` layout) and random values;
the reference forward is re-derived below with plain functional ops on those names (post-LN ``AltBlock``,
data2vec's context-encoder norm, ConvMAE ``CBlock``s), so a swapped or mis-shaped key shows as a mismatch.
"""

import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hf_audiorep.conversion import (
    convert_cat_state_dict,
    convert_eat_state_dict,
    infer_eat_config,
    load_eat_checkpoint,
)
from hf_audiorep.modeling._layers import get_2d_sincos_pos_embed
from hf_audiorep.modeling.configuration_cat import CATConfig
from hf_audiorep.modeling.modeling_cat import CATModel

IMAGE = "modality_encoders.IMAGE."
HEADS = 2


def _block_shapes(hidden: int, depth: int, mlp: int) -> dict[str, tuple]:
    shapes = {}
    for i in range(depth):
        p = f"blocks.{i}."
        shapes.update(
            {
                p + "attn.qkv.weight": (3 * hidden, hidden),
                p + "attn.qkv.bias": (3 * hidden,),
                p + "attn.proj.weight": (hidden, hidden),
                p + "attn.proj.bias": (hidden,),
                p + "norm1.weight": (hidden,),
                p + "norm1.bias": (hidden,),
                p + "mlp.fc1.weight": (mlp * hidden, hidden),
                p + "mlp.fc1.bias": (mlp * hidden,),
                p + "mlp.fc2.weight": (hidden, mlp * hidden),
                p + "mlp.fc2.bias": (hidden,),
                p + "norm2.weight": (hidden,),
                p + "norm2.bias": (hidden,),
            }
        )
    return shapes


def _stem_shapes(hidden: int, channels=(8, 16), depths=(1, 2), mlp: int = 4) -> dict[str, tuple]:
    c1, c2 = channels
    shapes = {
        "patch_embed.0.proj.weight": (c1, 1, 4, 4),
        "patch_embed.0.proj.bias": (c1,),
        "patch_embed.0.norm.weight": (c1,),
        "patch_embed.0.norm.bias": (c1,),
        "patch_embed.1.proj.weight": (c2, c1, 2, 2),
        "patch_embed.1.proj.bias": (c2,),
        "patch_embed.1.norm.weight": (c2,),
        "patch_embed.1.norm.bias": (c2,),
        "patch_embed.2.proj.weight": (hidden, c2, 2, 2),
        "patch_embed.2.proj.bias": (hidden,),
        "patch_embed.2.norm.weight": (hidden,),
        "patch_embed.2.norm.bias": (hidden,),
        "patch_embed.3.weight": (hidden, hidden),
        "patch_embed.3.bias": (hidden,),
        "stage_output_decode.0.weight": (hidden, c1, 4, 4),
        "stage_output_decode.0.bias": (hidden,),
        "stage_output_decode.1.weight": (hidden, c2, 2, 2),
        "stage_output_decode.1.bias": (hidden,),
    }
    for s, (width, depth) in enumerate(zip(channels, depths, strict=True)):
        for j in range(depth):
            p = f"conv_blocks.{s}.{j}."
            shapes.update(
                {
                    p + "norm1.weight": (width,),
                    p + "norm1.bias": (width,),
                    p + "conv1.weight": (width, width, 1, 1),
                    p + "conv1.bias": (width,),
                    p + "attn.weight": (width, 1, 5, 5),
                    p + "attn.bias": (width,),
                    p + "conv2.weight": (width, width, 1, 1),
                    p + "conv2.bias": (width,),
                    p + "norm2.weight": (width,),
                    p + "norm2.bias": (width,),
                    p + "mlp.fc1.weight": (mlp * width, width, 1, 1),
                    p + "mlp.fc1.bias": (mlp * width,),
                    p + "mlp.fc2.weight": (width, mlp * width, 1, 1),
                    p + "mlp.fc2.bias": (width,),
                }
            )
    return shapes


def reference_state_dict(
    hidden=32, depth=2, stem=False, layout="fairseq", max_patches_t=4, meta=False, extras=True, seed=0
):
    """A checkpoint in the reference layout. ``extras`` adds what a pre-training checkpoint also holds."""
    encoder = {
        "extra_tokens": (1, 1, hidden),
        "context_encoder.norm.weight": (hidden,),
        "context_encoder.norm.bias": (hidden,),
    }
    if stem:
        encoder.update(_stem_shapes(hidden))
    else:
        encoder.update(
            {"local_encoder.proj.weight": (hidden, 1, 16, 16), "local_encoder.proj.bias": (hidden,)}
        )
    blocks = _block_shapes(hidden, depth, 4)
    generator = torch.Generator().manual_seed(seed)

    def tensor(shape):
        if meta:
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=generator) * (0.5 if len(shape) == 1 else 0.1)

    positions = get_2d_sincos_pos_embed(hidden, max_patches_t, 8)[None]
    if meta:
        positions = positions.to("meta")
    if layout == "fairseq":
        state = {IMAGE + k: tensor(s) for k, s in encoder.items()}
        state.update({k: tensor(s) for k, s in blocks.items()})
        state[IMAGE + "fixed_positional_encoder.positions"] = positions
        if extras:
            state[IMAGE + "decoder.blocks.0.0.weight"] = tensor((hidden, hidden // 4, 3, 3))
            state[IMAGE + "decoder.proj.weight"] = tensor((hidden, hidden))
            state["clap_proj.weight"] = tensor((512, hidden))
    else:  # the Hub port: EATModel.model = EAT(config)
        renamed = {
            "context_encoder.norm.weight": "pre_norm.weight",
            "context_encoder.norm.bias": "pre_norm.bias",
        }
        state = {"model." + renamed.get(k, k): tensor(s) for k, s in encoder.items()}
        state.update({"model." + k: tensor(s) for k, s in blocks.items()})
        state["model.fixed_positional_encoder.positions"] = positions
    return state


# ---- the reference computation, from the reference names ---------------------------------------


def _ln_channels(x, sd, prefix, eps=1e-5):
    return F.layer_norm(
        x.permute(0, 2, 3, 1), x.shape[1:2], sd[prefix + ".weight"], sd[prefix + ".bias"], eps
    ).permute(0, 3, 1, 2)


def _conv(x, sd, prefix, stride=1, padding=0, groups=1):
    return F.conv2d(
        x, sd[prefix + ".weight"], sd[prefix + ".bias"], stride=stride, padding=padding, groups=groups
    )


def reference_stem(spectrogram, sd):
    x = spectrogram[:, None]
    sides = 0
    for stage, stride in ((0, 4), (1, 2)):
        x = _ln_channels(
            _conv(x, sd, f"{IMAGE}patch_embed.{stage}.proj", stride), sd, f"{IMAGE}patch_embed.{stage}.norm"
        )
        j = 0
        while f"{IMAGE}conv_blocks.{stage}.{j}.conv1.weight" in sd:
            p = f"{IMAGE}conv_blocks.{stage}.{j}."
            h = _conv(_ln_channels(x, sd, p + "norm1"), sd, p + "conv1")
            h = _conv(h, sd, p + "attn", padding=2, groups=x.shape[1])
            x = x + _conv(h, sd, p + "conv2")
            h = _conv(F.gelu(_conv(_ln_channels(x, sd, p + "norm2"), sd, p + "mlp.fc1")), sd, p + "mlp.fc2")
            x = x + h
            j += 1
        side_kernel = 4 if stage == 0 else 2
        sides = sides + _conv(x, sd, f"{IMAGE}stage_output_decode.{stage}", side_kernel).flatten(2).transpose(
            1, 2
        )
    x = _ln_channels(_conv(x, sd, f"{IMAGE}patch_embed.2.proj", 2), sd, f"{IMAGE}patch_embed.2.norm")
    x = F.linear(
        x.flatten(2).transpose(1, 2), sd[f"{IMAGE}patch_embed.3.weight"], sd[f"{IMAGE}patch_embed.3.bias"]
    )
    return x + sides


def reference_encoder(spectrogram, sd, depth, stem=False):
    """data2vec 2.0 / EAT ``extract_features`` (no mask): patches + positions, CLS, context norm, blocks."""
    if stem:
        x = reference_stem(spectrogram, sd)
    else:
        x = _conv(spectrogram[:, None], sd, f"{IMAGE}local_encoder.proj", 16).flatten(2).transpose(1, 2)
    batch, n, hidden = x.shape
    x = x + sd[f"{IMAGE}fixed_positional_encoder.positions"][:, :n]
    x = torch.cat([sd[f"{IMAGE}extra_tokens"].expand(batch, -1, -1), x], dim=1)
    x = F.layer_norm(
        x, (hidden,), sd[f"{IMAGE}context_encoder.norm.weight"], sd[f"{IMAGE}context_encoder.norm.bias"], 1e-6
    )
    head_dim = hidden // HEADS
    for i in range(depth):
        p = f"blocks.{i}."
        qkv = F.linear(x, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(batch, n + 1, 3, HEADS, head_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * head_dim**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        a = F.linear(
            (attn @ v).transpose(1, 2).reshape(batch, n + 1, hidden),
            sd[p + "attn.proj.weight"],
            sd[p + "attn.proj.bias"],
        )
        x = F.layer_norm(x + a, (hidden,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        t = F.linear(
            F.gelu(F.linear(x, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
            sd[p + "mlp.fc2.weight"],
            sd[p + "mlp.fc2.bias"],
        )
        x = F.layer_norm(x + t, (hidden,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
    return x


# ---- tests -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", [False, True], ids=["eat", "cat"])
def test_converted_model_matches_the_reference_forward(tmp_path, stem, caplog):
    state = reference_state_dict(stem=stem)
    path = tmp_path / "model.safetensors"
    save_file(state, str(path))
    config = infer_eat_config(state, num_attention_heads=HEADS)
    assert config.use_multi_resolution_stem is stem
    assert (config.hidden_size, config.num_hidden_layers, config.max_length) == (32, 2, 64)
    if stem:
        assert config.stem_channels == (8, 16) and config.stem_depths == (1, 2)
    with caplog.at_level(logging.INFO, logger="hf_audiorep.conversion.eat"):
        model = load_eat_checkpoint(path, config=config)
    assert "clap_proj.weight" in caplog.text and "decoder.proj.weight" in caplog.text
    assert isinstance(model, CATModel) and not model.training
    spectrogram = torch.randn(2, 64, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(spectrogram)
    expected = reference_encoder(spectrogram, state, depth=2, stem=stem)
    torch.testing.assert_close(ours.last_hidden_state, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.pooler_output, expected[:, 0], rtol=0, atol=1e-5)


def test_hub_layout_converts_to_the_same_weights():
    fairseq = reference_state_dict(extras=False)
    hub = reference_state_dict(layout="hub", extras=False)
    converted_fairseq, converted_hub = convert_eat_state_dict(fairseq), convert_eat_state_dict(hub)
    assert converted_fairseq.keys() == converted_hub.keys()
    for key, value in converted_fairseq.items():
        torch.testing.assert_close(converted_hub[key], value, rtol=0, atol=0, msg=key)
    # A fine-tuned fairseq model nests the encoder under "model." beside its fc_norm / head.
    finetuned = {"model." + k: v for k, v in fairseq.items()}
    finetuned.update({"fc_norm.weight": torch.ones(32), "head.weight": torch.zeros(527, 32)})
    assert convert_eat_state_dict(finetuned).keys() == converted_fairseq.keys()


@pytest.mark.parametrize("preset", ["eat-base", "cat-base"])
def test_reference_layout_of_the_base_models_is_complete(preset):
    config = CATConfig.from_preset(preset)
    stem = config.use_multi_resolution_stem
    state = reference_state_dict(
        hidden=768, depth=config.num_hidden_layers, stem=stem, meta=True, max_patches_t=64
    )
    if stem:  # the reference stem's real widths and depths
        state = {
            k: v
            for k, v in state.items()
            if "patch_embed" not in k and "conv_blocks" not in k and "stage_output_decode" not in k
        }
        state.update(
            {
                IMAGE + k: torch.empty(s, device="meta")
                for k, s in _stem_shapes(768, channels=(256, 384), depths=(2, 2)).items()
            }
        )
    converted = convert_cat_state_dict(state)
    with torch.device("meta"):
        model = CATModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    inferred = infer_eat_config(state)
    assert (inferred.num_attention_heads, inferred.max_length) == (12, 1024)
    assert inferred.stem_channels == config.stem_channels and inferred.stem_depths == config.stem_depths


def test_unknown_keys_and_bad_inputs_are_rejected(tmp_path):
    state = reference_state_dict(extras=False)
    with pytest.raises(ValueError, match="no place for.*register_tokens"):
        convert_eat_state_dict({**state, "register_tokens": torch.zeros(1, 4, 32)})
    with pytest.raises(ValueError, match="not an EAT/CAT state dict"):
        convert_eat_state_dict({k: v for k, v in state.items() if not k.startswith("blocks.")})
    with pytest.raises(TypeError, match="mapping"):
        convert_eat_state_dict([("a", torch.zeros(1))])
    with pytest.raises(ValueError, match="does not fit the config"):
        load_eat_checkpoint(
            state,
            config=CATConfig.from_preset(
                "eat-base",
                hidden_size=64,
                num_attention_heads=2,
                num_hidden_layers=2,
                average_top_k_layers=2,
                max_length=64,
            ),
        )
    with pytest.raises(ValueError, match="pickled"):
        load_eat_checkpoint(tmp_path / "checkpoint_last.pt")
    moved = dict(state)
    moved[IMAGE + "fixed_positional_encoder.positions"] = (
        moved[IMAGE + "fixed_positional_encoder.positions"] + 1
    )
    with pytest.warns(UserWarning, match="sin-cos"):
        convert_eat_state_dict(moved)
