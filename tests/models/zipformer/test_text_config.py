"""ZipformerConfig's text sub-configs (UTS part 2): the caption decoder and the contrastive text encoder are
optional `BartConfig` / `BertConfig` sub-configs that survive save/load, and their fields are checked."""

import json

import pytest
from transformers import BartConfig, BertConfig

from hf_audiorep.modeling.configuration_zipformer import (
    DECODER_PRESETS,
    TEXT_ENCODER_PRESETS,
    ZipformerConfig,
)


def test_an_encoder_config_has_no_text_parts_and_saves_them_as_null(tmp_path):
    config = ZipformerConfig.from_preset("zipformer-small")
    assert config.decoder_config is None and config.text_config is None and not config.tagging_head
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["decoder_config"] is None and saved["text_config"] is None
    reloaded = ZipformerConfig.from_pretrained(tmp_path)
    assert reloaded.decoder_config is None and reloaded.text_config is None


def test_decoder_and_text_configs_are_built_from_dicts_and_round_trip(tmp_path):
    config = ZipformerConfig.from_preset(
        "zipformer-small",
        decoder_config={**DECODER_PRESETS["small"], "vocab_size": 300},
        text_config={**TEXT_ENCODER_PRESETS["small"], "vocab_size": 200},
        tagging_head=True,
        projection_dim=32,
        contrastive_temperature=0.05,
        learn_temperature=True,
    )
    assert isinstance(config.decoder_config, BartConfig) and isinstance(config.text_config, BertConfig)
    assert (config.decoder_config.d_model, config.decoder_config.vocab_size) == (128, 300)
    assert (config.text_config.hidden_size, config.text_config.vocab_size) == (128, 200)
    config.save_pretrained(tmp_path)
    reloaded = ZipformerConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded.decoder_config, BartConfig) and isinstance(reloaded.text_config, BertConfig)
    assert reloaded.decoder_config.to_dict() == config.decoder_config.to_dict()
    assert reloaded.text_config.to_dict() == config.text_config.to_dict()
    assert (reloaded.tagging_head, reloaded.projection_dim, reloaded.learn_temperature) == (True, 32, True)
    assert reloaded.contrastive_temperature == pytest.approx(0.05)


def test_the_bart_base_preset_is_bart_base_decoder_geometry():
    bart_base = BartConfig(**DECODER_PRESETS["bart-base"])
    assert (bart_base.d_model, bart_base.decoder_layers, bart_base.decoder_attention_heads) == (768, 6, 12)
    assert (bart_base.decoder_ffn_dim, bart_base.max_position_embeddings) == (3072, 1024)
    assert BertConfig(**TEXT_ENCODER_PRESETS["bert-base"]).hidden_size == 768


@pytest.mark.parametrize(
    ("field", "value"),
    [("projection_dim", 0), ("contrastive_temperature", 0.0), ("contrastive_temperature", -1)],
)
def test_invalid_contrastive_fields_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        ZipformerConfig.from_preset("zipformer-small", **{field: value})
