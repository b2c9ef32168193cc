"""recipes/pretrain_bat.py: a few-step run on the embedded corpus, its options reaching the config, --help."""

import json

import pytest
import torch
from recipe_utils import load_recipe, recipe_args
from safetensors.torch import load_file
from transformers import AutoModel

from hf_audiorep.modeling import BATConfig, BATForPreTraining, BATModel


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("pretrain_bat")


@pytest.fixture(scope="module")
def pretrained(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("bat") / "run"
    summary = recipe.main(recipe_args(out, max_steps=4, eval_steps=2, checkpointing_steps=2))
    return out, summary


def test_recipe_pretrains_probes_and_saves_a_bat_encoder(pretrained):
    out, summary = pretrained
    assert summary["global_step"] == 4 and summary["train_loss"] > 0
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 < results["probe_mAP"] <= 1.0
    assert [row["step"] for row in results["eval_history"]] == [0, 2, 4]
    config = json.loads((out / "config.json").read_text())
    small = BATConfig.from_preset("bat-small")
    assert config["model_type"] == "audiorep-bat" and config["max_length"] == 208
    # bat-small as defined: the gated encoder, the CNN decoder, no CLS term, no RR projector.
    assert config["attention_gate"] == "elementwise" and config["decoder_type"] == "cnn"
    assert config["hidden_size"] == small.hidden_size and config["cls_loss_weight"] == 0.0
    assert config["rr_embedding_dim"] == 0
    saved = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("bat.blocks.0.attn.gate_proj.") for k in saved)
    assert "decoder.layers.0.conv.weight" in saved
    assert not any(k.startswith("rr_projector.") for k in saved)
    encoder = AutoModel.from_pretrained(out)
    assert isinstance(encoder, BATModel)
    pretraining = BATForPreTraining.from_pretrained(out)
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, pretraining.bat.state_dict()[name]), name
    # The EMA teacher (the encoder only) is checkpointed with the run.
    teacher = load_file(str(out / "checkpoints" / "step_4" / "extra_ema_teacher.safetensors"))
    assert any(k.startswith("module.blocks.0.attn.gate_proj.") for k in teacher)
    assert not any("decoder" in k for k in teacher)


def test_recipe_options_reach_the_config_and_other_presets_are_refused(recipe, tmp_path):
    out = tmp_path / "plain"
    summary = recipe.main(
        recipe_args(
            out,
            max_steps=1,
            eval_steps=0,
            checkpointing_steps=0,
            probe_dataset="",
            attention_gate="none",
            decoder_type="transformer",
            transformer_decoder_positions="conv",
            clone_batch=3,
        )
    )
    assert summary["global_step"] == 1
    config = json.loads((out / "config.json").read_text())
    expected = ("none", "transformer", "conv", 3)
    fields = ("attention_gate", "decoder_type", "transformer_decoder_positions", "clone_batch")
    assert tuple(config[field] for field in fields) == expected
    saved = load_file(str(out / "model.safetensors"))
    assert not any("gate_proj" in k for k in saved)
    assert "decoder.mask_token" in saved and saved["decoder.embed.weight"].shape == (96, 192)
    assert saved["decoder.pos_conv.weight"].shape == (96, 1, 3, 3)
    with pytest.raises(ValueError, match="not a BAT preset"):
        recipe.main(recipe_args(tmp_path / "bad", preset="cat-small", max_steps=1))


def test_continuing_a_checkpoint_with_another_architecture_is_refused_by_name(recipe, pretrained, tmp_path):
    # The fixture's run has the preset's CNN decoder and element-wise gates: another decoder stopped inside
    # transformers (size mismatch), other gates started at random without a word.
    out, _ = pretrained
    short = {"max_steps": 1, "eval_steps": 0, "checkpointing_steps": 0, "probe_dataset": ""}
    for option, value in (("decoder_type", "transformer"), ("attention_gate", "headwise")):
        arguments = recipe_args(tmp_path / option, model_name_or_path=str(out), **{option: value}, **short)
        refused = rf"cannot continue with --{option} {value} \(the checkpoint's: "
        with pytest.raises(ValueError, match=refused):
            recipe.main(arguments)
    # a setting that leaves the weights as they are is taken
    summary = recipe.main(recipe_args(tmp_path / "ok", model_name_or_path=str(out), mask_ratio=0.5, **short))
    assert summary["global_step"] == 1
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["mask_ratio"] == 0.5


@pytest.mark.parametrize(
    ("option", "value", "choices"),
    [
        ("--decoder_type", "lstm", "'cnn', 'transformer'"),
        ("--transformer_decoder_positions", "learned", "'sincos', 'conv'"),
        ("--attention_gate", "sigmoid", "'none', 'headwise', 'elementwise'"),
        ("--rr_loss_type", "kl", "'mse', 'cosine', 'l1'"),
        ("--cls_rr_reduction", "max", "'sum', 'mean'"),
    ],
)
def test_a_value_outside_an_options_choices_is_a_usage_error(recipe, capsys, option, value, choices):
    """argparse refuses it before any data or model is built, naming the choices (not a config traceback)."""
    with pytest.raises(SystemExit) as stop:
        recipe.main([option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in err and choices in err


def test_every_option_has_help(recipe, capsys):
    with pytest.raises(SystemExit):
        recipe.main(["--help"])
    text = capsys.readouterr().out
    blocks = text.split("\n  --")[1:]
    assert len(blocks) > 40

    def is_syntax(word):  # option names, metavars (PRESET, [CPU]) and separators: not help text
        word = word.strip(",[]")
        return not word or word.startswith("-") or word.replace("_", "").isupper()

    undocumented = [b.split()[0] for b in blocks if all(is_syntax(w) for w in ("--" + b).split())]
    assert not undocumented, undocumented
    words = " ".join(text.split())  # argparse wraps the help lines
    assert "--attention_gate" in words and "bat-small or bat-base" in words
    assert "--decoder_type" in words and "transformer (BAT's default)" in words


@pytest.mark.slow
def test_the_small_preset_learns_instead_of_collapsing(recipe, tmp_path):
    """bat-small's defaults (cat-small's choices: no CLS term, mean pooling, a fast teacher, the CNN decoder)
    must leave the encoder better than its initialisation after a short run, as cat-small's do
    (test_pretrain_cat.py). With the transformer decoder it did not (see BAT_PRESETS)."""
    out = tmp_path / "run"
    options = {
        "output_dir": str(out),
        "clip_seconds": "2.0",
        "num_train_clips": "800",
        "num_eval_clips": "8",
        "num_test_clips": "400",
        "probe_train_clips": "400",
        "max_steps": "80",
        "eval_steps": "0",
        "checkpointing_steps": "0",
        "num_decode_threads": "2",
        "cpu": "true",
        "disable_progress_bar": "true",
    }
    recipe.main([part for key, value in options.items() for part in (f"--{key}", value)])
    results = json.loads((out / "eval_results.json").read_text())
    initial, final = results["probe_mAP_initialization"], results["probe_mAP"]
    assert final > initial + 0.03, f"probe mAP {final:.4f} after 80 steps vs {initial:.4f} at initialisation"
