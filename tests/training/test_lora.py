"""LoRA through peft (hf_audiorep/adapters.py) on every architecture of the registry, default targets.

Each check runs for every entry of ``ARCHITECTURES`` that declares default LoRA targets, on a tiny classifier;
a family without them (CP-Mobile: a CNN with no linear layer in its blocks, of at most 127K parameters) must
refuse LoRA without named targets. The recipe's side (the adapter directory, ``--merge_lora``) is in
tests/recipes/test_finetune_lora.py.
"""

import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModel, AutoModelForAudioClassification

from hf_audiorep.adapters import HEAD_MODULES, apply_lora, default_lora_targets, merged_model
from hf_audiorep.registry import ARCHITECTURES, Architecture
from hf_audiorep.training import build_optimizer, build_param_groups

#: a few thousand parameters whatever the family; the preset keeps its family's own fields
TINY = dict(hidden_size=32, num_attention_heads=2, max_length=64, num_mel_bins=32, num_labels=5)
LORA_PARAM = re.compile(r"\.blocks\.(\d+)\.(.+)\.lora_[AB]\.default\.weight$")


def _smallest_preset(architecture: Architecture) -> str:
    def size(name):
        config = architecture.config_class.from_preset(name)
        return config.hidden_size * config.num_hidden_layers

    return min(architecture.presets, key=size)


def tiny_classifier(architecture: Architecture, auto_class=AutoModelForAudioClassification):
    config = architecture.config_class.from_preset(_smallest_preset(architecture), **TINY)
    torch.manual_seed(0)
    return auto_class.from_config(config)


def batch(config, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, config.max_length, config.num_mel_bins, generator=generator)
    labels = (torch.rand(2, config.num_labels, generator=generator) < 0.5).float()
    return features, labels


WITH_TARGETS = [a for a in ARCHITECTURES if a.lora_target_modules]
WITHOUT_TARGETS = [a for a in ARCHITECTURES if not a.lora_target_modules]


@pytest.fixture(params=WITH_TARGETS, ids=[a.name for a in WITH_TARGETS])
def architecture(request):
    return request.param


@pytest.mark.parametrize("architecture_name", [a.name for a in WITHOUT_TARGETS])
def test_a_family_without_default_targets_needs_them_named(architecture_name):
    architecture = _named(architecture_name)
    config = architecture.config_class.from_preset(next(iter(architecture.presets)), num_labels=3)
    with torch.device("meta"):
        model = AutoModelForAudioClassification.from_config(config)
    with pytest.raises(ValueError, match=f"the {architecture_name} architecture declares no default LoRA"):
        apply_lora(model, lora_r=4)


def test_the_vit_families_declare_targets():
    # The split above must not quietly drop a family that has linear blocks.
    assert {"audiomae", "cat", "bat", "zipformer"} <= {a.name for a in WITH_TARGETS}


def _named(architecture_name: str) -> Architecture:
    found = [a for a in ARCHITECTURES if a.name == architecture_name]
    # A test about a named architecture must fail, not skip, if the registry loses it.
    assert found, f"no {architecture_name} architecture in the registry"
    return found[0]


def test_default_targets_are_the_registry_entry(architecture):
    model = tiny_classifier(architecture)
    assert architecture.lora_target_modules, f"{architecture.name} declares no LoRA targets"
    assert default_lora_targets(model) == architecture.lora_target_modules
    assert default_lora_targets(model.config) == architecture.lora_target_modules
    peft_model = apply_lora(model, lora_r=4)
    assert set(peft_model.peft_config["default"].target_modules) == set(architecture.lora_target_modules)


def test_only_adapters_in_the_blocks_and_the_head_train(architecture):
    peft_model = apply_lora(tiny_classifier(architecture), lora_r=4)
    config = peft_model.config
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    adapted = {(int(m[1]), m[2]) for name in trainable if (m := LORA_PARAM.search(name))}
    # Every default target of every block has its adapters, and nothing else has (CAT's stem included).
    expected = {
        (block, inner)
        for block in range(config.num_hidden_layers)
        for inner in architecture.lora_target_modules
    }
    assert adapted == expected
    heads = {name for name in trainable if ".modules_to_save.default." in name}
    assert heads and all(
        name.split(".modules_to_save")[0].rsplit(".", 1)[-1] in HEAD_MODULES for name in heads
    )
    assert any(".classifier.modules_to_save" in name for name in heads), "the classifier is not trained"
    assert len(trainable) == 2 * len(expected) + len(heads), (
        "a parameter outside the adapters and head trains"
    )
    assert all("lora_" not in name for name in trainable if ".stem." in name)
    trainable_count, total = peft_model.get_nb_trainable_parameters()
    assert 0 < trainable_count < total


def _training_step(peft_model, layer_decay: float = 1.0):
    """One optimizer step of the library's default optimizer on a BCE loss."""
    groups = build_param_groups(peft_model, weight_decay=0.05, layer_decay=layer_decay)
    optimizer = build_optimizer(groups, learning_rate=1e-2, weight_decay=0.05)
    peft_model.train()
    features, labels = batch(peft_model.config)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        peft_model(input_values=features).logits, labels
    )
    loss.backward()
    optimizer.step()
    return optimizer


def test_a_training_step_moves_the_adapters_and_head_and_nothing_else(architecture):
    peft_model = apply_lora(tiny_classifier(architecture), lora_r=4)
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    optimizer = _training_step(peft_model, layer_decay=0.75)

    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    head = [
        name for name, _ in peft_model.named_parameters() if name.endswith(".modules_to_save.default.weight")
    ]
    assert any(".classifier." in name for name in head), "the classifier is not trained"
    for name, param in peft_model.named_parameters():
        assert (id(param) in in_optimizer) == param.requires_grad, (
            f"{name}: optimizer and requires_grad differ"
        )
        moved = not torch.equal(param.detach(), before[name])
        if not param.requires_grad:
            assert not moved, f"frozen base weight {name} changed"
        elif name in head or ".lora_B." in name:
            assert moved, f"{name} did not train"


def test_layer_decay_reads_the_wrapped_models_layer_ids(architecture):
    """The groups of a peft model carry the layer ids the model gives its own parameter names: adapters of
    block i get i + 1, the head the top id, and a parameter below the blocks unfrozen by hand 0."""
    model = tiny_classifier(architecture)
    peft_model = apply_lora(model, lora_r=4)
    below_blocks = [
        (name, p) for name, p in model.named_parameters() if model.get_layer_id(name) == 0 and p.ndim > 1
    ]
    below_blocks[0][1].requires_grad_(True)
    own_names = {id(p): name for name, p in model.named_parameters()}
    groups = build_param_groups(peft_model, weight_decay=0.05, layer_decay=0.5)
    top = model.config.num_hidden_layers + 1
    seen = 0
    for group in groups:
        for param in group["params"]:
            name = own_names[id(param)]
            assert group["layer_id"] == model.get_layer_id(name), name
            if ".lora_" in name:
                assert group["layer_id"] == int(LORA_PARAM.search("." + name)[1]) + 1
            elif ".modules_to_save." in name:
                assert group["layer_id"] == top
            seen += 1
    assert seen == sum(p.requires_grad for p in peft_model.parameters())
    assert any(g["layer_id"] == 0 for g in groups), "the unfrozen embedding lost its layer id 0"


def test_merged_copy_is_a_plain_model_with_the_same_logits(architecture, tmp_path):
    peft_model = apply_lora(tiny_classifier(architecture), lora_r=4, lora_alpha=8, lora_dropout=0.1)
    _training_step(peft_model)  # lora_B starts at 0: merged and unmerged would agree trivially
    peft_model.eval()
    features, _ = batch(peft_model.config, seed=1)
    with torch.no_grad():
        expected = peft_model(input_values=features).logits
        merged = merged_model(peft_model).eval()
        assert type(merged) is architecture.heads[AutoModelForAudioClassification]
        assert not [name for name in merged.state_dict() if "lora_" in name or "modules_to_save" in name]
        torch.testing.assert_close(merged(input_values=features).logits, expected, atol=1e-5, rtol=0)
        # the trained model is untouched: still adapters, still the same logits
        assert isinstance(peft_model, PeftModel) and any(
            "lora_" in n for n, _ in peft_model.named_parameters()
        )
        torch.testing.assert_close(peft_model(input_values=features).logits, expected, atol=0, rtol=0)
        merged.save_pretrained(tmp_path)
        reloaded = AutoModelForAudioClassification.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(reloaded(input_values=features).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"lora_r": 0}, "lora_r"),
        ({"lora_r": -2}, "lora_r"),
        ({"lora_r": 2.5}, "lora_r"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_alpha": -1.0}, "lora_alpha"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"lora_target_modules": []}, "lora_target_modules"),
        ({"lora_target_modules": ["q_proj"]}, r"lora_target_modules: 'q_proj' .* attn\.proj, attn\.qkv"),
        ({"lora_target_modules": ["attn.qkv", "fc3"]}, "lora_target_modules: 'fc3'"),
    ],
)
def test_bad_values_name_the_argument(options, match):
    model = tiny_classifier(_named("audiomae"))
    with pytest.raises(ValueError, match=match):
        apply_lora(model, **{"lora_r": 4, **options})
    with pytest.raises(TypeError, match="lora_target_modules"):
        apply_lora(model, lora_r=4, lora_target_modules="attn.qkv")


def test_the_cat_stem_cannot_be_targeted():
    """CAT's conv stem has layers named like a block's (``mlp.fc1``) and its own (``dwconv``): only the
    blocks' linear layers are adapted, and a name found only in the stem is refused."""
    model = tiny_classifier(_named("cat"))
    assert any(".stem." in name and name.endswith("mlp.fc1") for name, _ in model.named_modules())
    with pytest.raises(ValueError, match="'dwconv' matches no linear layer in the blocks"):
        apply_lora(model, lora_r=4, lora_target_modules=["dwconv"])
    peft_model = apply_lora(model, lora_r=4, lora_target_modules=["mlp.fc1"])
    adapted = [name for name, p in peft_model.named_parameters() if "lora_A" in name]
    assert adapted and all(".blocks." in name for name in adapted)


def test_an_encoder_without_a_head_is_refused(architecture):
    with pytest.raises(ValueError, match="model: .* has no classifier"):
        apply_lora(tiny_classifier(architecture, AutoModel), lora_r=4)


def test_a_registry_entry_cannot_give_its_targets_as_one_string():
    entry = ARCHITECTURES[0]
    with pytest.raises(TypeError, match="lora_target_modules"):
        Architecture(
            name="broken",
            config_class=entry.config_class,
            base_model=entry.base_model,
            heads=dict(entry.heads),
            feature_extractor=entry.feature_extractor,
            presets={},
            lora_target_modules="attn.qkv",
        )
