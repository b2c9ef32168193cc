"""The configs are strict dataclasses: every invalid value raises a ValueError that names the field and the
value, from every way a config is made (keywords, a preset, a config.json, a from_pretrained override)."""

import json

import pytest
from huggingface_hub.errors import (
    StrictDataclassClassValidationError,
    StrictDataclassError,
    StrictDataclassFieldValidationError,
)
from transformers import AutoConfig

import hf_audiorep
from hf_audiorep.modeling.configuration_audiomae import AudioMAEConfig
from hf_audiorep.modeling.configuration_cat import CATConfig
from hf_audiorep.registry import PRESETS, config_from_preset

# A field's own range or type, and relations between fields (decoder_groups must divide hidden_size, 192).
BAD_VALUES = [
    ("cat-small", "hidden_size", 0),
    ("cat-small", "stem_channels", [32]),
    ("cat-small", "stem_depths", [2, -1]),
    ("cat-small", "pooling", "max"),
    ("cat-small", "hidden_act", "no-such-activation"),
    ("cat-small", "decoder_groups", 5),
    ("cat-small", "average_top_k_layers", 5),
    ("cat-small", "ema_end_decay", 0.5),
    ("eat-base", "rr_layer", 12),
    ("audiomae-tiny", "mask_t_prob", 1.0),
    ("audiomae-tiny", "use_cls_pooling", "yes"),
    ("audiomae-tiny", "num_attention_heads", 5),
    ("audiomae-tiny", "max_length", 1000),
]


def _names(message: str, field: str, value) -> bool:
    return field in message and str(value).strip("[]") in message


@pytest.mark.parametrize(("preset", "field", "value"), BAD_VALUES)
def test_a_bad_value_names_the_field_from_every_entry_point(preset, field, value, tmp_path):
    config_class = PRESETS[preset]
    with pytest.raises(ValueError) as excinfo:
        config_from_preset(preset, **{field: value})
    assert isinstance(excinfo.value, StrictDataclassError)
    assert _names(str(excinfo.value), field, value), str(excinfo.value)

    good, bad = tmp_path / "good", tmp_path / "bad"
    config_from_preset(preset).save_pretrained(good)
    saved = json.loads((good / "config.json").read_text())
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({**saved, field: value}))
    for load in (AutoConfig.from_pretrained, config_class.from_pretrained):
        with pytest.raises(ValueError) as excinfo:
            load(bad)
        assert _names(str(excinfo.value), field, value), str(excinfo.value)

    # transformers sets an override after __init__: checked alone at once, against the others when saved.
    with pytest.raises(ValueError, match=field):
        config_class.from_pretrained(good, **{field: value}).save_pretrained(tmp_path / "again")


def test_error_types():
    with pytest.raises(hf_audiorep.ConfigFieldTypeError, match="hidden_size") as excinfo:
        CATConfig(hidden_size=32.0)
    assert isinstance(excinfo.value, ValueError)
    assert isinstance(excinfo.value, hf_audiorep.ConfigFieldError)
    assert isinstance(excinfo.value, StrictDataclassFieldValidationError)
    for bad_type in ({"qkv_bias": 1}, {"num_hidden_layers": True}, {"stem_channels": (8, 16, 32)}):
        with pytest.raises(TypeError, match=next(iter(bad_type))):
            CATConfig(**bad_type)
    # A value of the right type out of its range is a ValueError only.
    with pytest.raises(ValueError, match="classifier_init_std") as excinfo:
        AudioMAEConfig(classifier_init_std=-1.0)
    assert not isinstance(excinfo.value, TypeError)
    with pytest.raises(hf_audiorep.ConfigRelationError, match="num_attention_heads") as excinfo:
        AudioMAEConfig(num_attention_heads=5)
    assert isinstance(excinfo.value, StrictDataclassClassValidationError)


def test_assignment_is_checked_and_validate_checks_relations():
    config = CATConfig.from_preset("cat-small")
    with pytest.raises(ValueError, match="mask_ratio"):
        config.mask_ratio = 1.0
    config.num_attention_heads = 5  # valid alone
    with pytest.raises(ValueError, match="num_attention_heads"):
        config.validate()


def test_numbers_lists_and_round_trip(tmp_path):
    # An int is a valid float (as transformers' dropouts are `float | int`); JSON's lists become tuples.
    config = CATConfig.from_preset("cat-small", drop_path_rate=0, mlp_ratio=4, stem_depths=[1, 2])
    assert config.stem_depths == (1, 2) and config.stem_channels == (32, 64)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["stem_depths"] == [1, 2]
    loaded = CATConfig.from_pretrained(tmp_path)
    assert loaded.stem_depths == (1, 2)
    assert {k: v for k, v in loaded.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"
    }
    # Classification keywords of PreTrainedConfig pass through the strict __init__.
    labelled = CATConfig.from_preset("eat-base", num_labels=2, problem_type="single_label_classification")
    assert labelled.id2label == {0: "LABEL_0", 1: "LABEL_1"}
