"""recipes/finetune.py with --lora_r: the adapter directory peft loads, --merge_lora's plain model, and the
options' errors. The base is the tiny tagger of conftest.py (the corpus's labels, so its head fits)."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from peft import PeftModel
from recipe_utils import load_recipe, tiny_finetune_args
from safetensors import safe_open
from transformers import AutoConfig, AutoFeatureExtractor, AutoModelForAudioClassification

import hf_audiorep

TINY = tiny_finetune_args(max_steps=3, eval_steps=3, disable_progress_bar="true")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _run(recipe, argv):
    """Run the recipe; returns the TrainLoop it built (``loop.model`` is the model at the end of training)
    and the log messages of the run."""
    loops, records = [], _Records()

    class RecordingLoop(recipe.TrainLoop):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            loops.append(self)

    logger = logging.getLogger("finetune")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(
        logging.INFO
    )  # under pytest the recipe's basicConfig is a no-op: the root stays at WARNING
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(recipe, "TrainLoop", RecordingLoop)
            recipe.main(argv)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    (loop,) = loops
    return loop, records.messages


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("finetune")


@pytest.fixture(scope="module")
def runs(recipe, tmp_path_factory, tagger_dir):
    """A LoRA run whose output directory held a full model before (it must replace it), then a --merge_lora
    run whose directory held that adapter (it must replace that)."""
    root = tmp_path_factory.mktemp("lora")
    adapter_out, merged_out = root / "adapter", root / "merged"
    shutil.copytree(tagger_dir, adapter_out)
    lora = ["--model_name_or_path", str(tagger_dir), "--lora_r", "4", "--lora_alpha", "8"]
    adapter_loop, adapter_log = _run(recipe, TINY + lora + ["--output_dir", str(adapter_out)])
    shutil.copytree(adapter_out, merged_out)
    merged_loop, _ = _run(recipe, TINY + lora + ["--merge_lora", "--output_dir", str(merged_out)])
    return {
        "adapter": (adapter_out, adapter_loop, adapter_log),
        "merged": (merged_out, merged_loop),
    }


def _inputs(out):
    fe = AutoFeatureExtractor.from_pretrained(out)
    rng = np.random.default_rng(0)
    clips = [rng.normal(scale=0.1, size=32000).astype(np.float32), rng.normal(size=20000).astype(np.float32)]
    return fe(clips, sampling_rate=16000, return_tensors="pt")


def _logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


def test_lora_run_writes_an_adapter_that_peft_loads_with_the_trained_logits(runs, tagger_dir):
    out, loop, _ = runs["adapter"]
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "preprocessor_config.json"} <= names
    assert {"eval_results.json", "train_results.json"} <= names
    # the full model that was in the directory is gone: transformers would read config.json + adapter as
    # a model with an embedded adapter and look for its weights here
    assert not names & {"config.json", "model.safetensors"}
    assert not [n for n in names if n.startswith(".tmp-")]
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(tagger_dir)
    assert adapter_config["r"] == 4 and adapter_config["lora_alpha"] == 8
    assert set(adapter_config["modules_to_save"]) == {"classifier", "fc_norm"}
    with safe_open(out / "adapter_model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert any("lora_A" in k for k in keys) and any("classifier" in k for k in keys)
    assert all("lora_" in k or "classifier" in k or "fc_norm" in k for k in keys), "base weights were saved"
    assert 0.0 < json.loads((out / "eval_results.json").read_text())["test_mAP"] <= 1.0

    base = AutoModelForAudioClassification.from_pretrained(tagger_dir)
    inputs = _inputs(out)
    untrained = _logits(base, inputs)
    loaded = PeftModel.from_pretrained(base, out)
    expected = _logits(loop.model, inputs)
    torch.testing.assert_close(_logits(loaded, inputs), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(untrained, expected, atol=1e-4), "training left the model as it was"


def test_lora_run_logs_its_parameter_counts_once(runs):
    _, loop, log = runs["adapter"]
    counts = [m for m in log if "parameters trainable" in m]
    trainable, total = loop.model.get_nb_trainable_parameters()
    assert len(counts) == 1 and f"{trainable} of {total} parameters trainable" in counts[0]
    assert isinstance(loop.model, PeftModel)


def test_merge_lora_writes_a_plain_model_with_the_trained_logits(runs):
    out, loop = runs["merged"]
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "eval_results.json"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}, "the earlier adapter is left"
    model = AutoModelForAudioClassification.from_pretrained(out)
    assert isinstance(model, hf_audiorep.AudioMAEForAudioClassification)
    assert not [k for k in model.state_dict() if "lora_" in k or "modules_to_save" in k]
    inputs = _inputs(out)
    torch.testing.assert_close(_logits(model, inputs), _logits(loop.model, inputs), atol=1e-5, rtol=0)


def test_a_base_with_other_labels_gets_a_warning_on_how_to_load_the_adapter(recipe, tagger_dir, caplog):
    base = AutoConfig.from_pretrained(tagger_dir)
    config = AutoConfig.from_pretrained(tagger_dir, id2label={**base.id2label, 0: "something else"})
    args = recipe.ModelArguments(model_name_or_path=str(tagger_dir))
    with caplog.at_level(logging.WARNING, logger="finetune"):
        recipe._warn_if_base_labels_differ(base, args)
        assert not caplog.records, "the base's own labels need no warning"
        recipe._warn_if_base_labels_differ(config, args)
    (record,) = caplog.records
    assert "id2label" in record.getMessage() and "--merge_lora" in record.getMessage()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (["--lora_r", "-1"], "--lora_r must be >= 0"),
        (["--merge_lora"], "--merge_lora"),
        (["--lora_target_modules", "attn.qkv"], "--lora_target_modules"),
        (["--lora_r", "4"], "--model_name_or_path"),
        (
            ["--lora_r", "4", "--model_name_or_path", "BASE", "--push_to_hub", "--hub_model_id", "a/b"],
            "merge_lora",
        ),
        (["--lora_r", "4", "--model_name_or_path", "BASE", "--lora_alpha", "0"], "lora_alpha"),
        (["--lora_r", "4", "--model_name_or_path", "BASE", "--lora_dropout", "1"], "lora_dropout"),
        (
            ["--lora_r", "4", "--model_name_or_path", "BASE", "--lora_target_modules", "attn.qkv,q_proj"],
            r"lora_target_modules: 'q_proj' matches no linear layer .*attn\.qkv",
        ),
    ],
)
def test_bad_lora_options_name_the_option(recipe, options, match, tagger_dir, tmp_path):
    argv = TINY + [str(tagger_dir) if o == "BASE" else o for o in options] + ["--output_dir", str(tmp_path)]
    with pytest.raises(ValueError, match=match):
        recipe.main(argv)
    assert not (tmp_path / "adapter_config.json").exists()
