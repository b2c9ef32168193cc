"""Values of the configs' checks, relations and derived geometry, each against a value worked out by hand.

`test_config_checks.py` checks that every entry point raises a named error; this file pins, for each config,
the boundary of every field check and relation (``>`` against ``>=``, ``%`` against ``//``), the exact
message of each error, which error class a wrong value raises, the presets with overrides, and the derived
geometry the models are built from (patch grids, stem strides, stage channels, frame rates, width
shorthands). It is the test selection of the configs' mutation targets (scripts/mutation/targets.toml), so
it stays fast: configs only, no model is built.
"""

import logging

import pytest
from huggingface_hub.dataclasses import validated_field
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError
from transformers.configuration_utils import PreTrainedConfig

from hf_audiorep.modeling._config_checks import (
    ConfigFieldError,
    ConfigFieldTypeError,
    ConfigRelationError,
    activation,
    at_least,
    divisible_by,
    each,
    length,
    non_negative,
    odd,
    positive,
    rate,
    strict_config,
    unit_interval,
)
from hf_audiorep.modeling.configuration_audiomae import AudioMAEConfig
from hf_audiorep.modeling.configuration_bat import BATConfig
from hf_audiorep.modeling.configuration_beats import BEATsConfig
from hf_audiorep.modeling.configuration_cat import CATConfig
from hf_audiorep.modeling.configuration_cp_mobile import CPMobileConfig, make_divisible
from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig, _each_positive


def _raises(check, value, message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        check(value)
    assert str(excinfo.value) == message


def _field_error(make, field: str, message: str) -> ConfigFieldError:
    """``make()`` fails the check of ``field`` with ``message`` (a ValueError, not a TypeError)."""
    with pytest.raises(ConfigFieldError) as excinfo:
        make()
    assert not isinstance(excinfo.value, TypeError)
    assert str(excinfo.value) == f"Validation error for field '{field}':\n    ValueError: {message}"
    assert str(excinfo.value.__cause__) == message
    return excinfo.value


def _relation_error(make, validator: str, message: str) -> None:
    """``make()`` breaks the relation that ``validator`` checks, with ``message``."""
    with pytest.raises(ConfigRelationError) as excinfo:
        make()
    assert isinstance(excinfo.value, ValueError)
    # What the user reads: the validator, the cause's class and its message.
    assert (
        str(excinfo.value)
        == f"Class validation error for validator '{validator}':\n    ValueError: {message}"
    )
    assert str(excinfo.value.__cause__) == message


# ---- _config_checks: the check factories and strict_config ---------------------------------------------


def test_each_check_accepts_its_boundary_and_says_what_it_requires():
    at_least(2)(2)
    at_least(2)(2.5)
    _raises(at_least(2), 1, "must be >= 2, got 1")
    at_least(-1)(-1)
    _raises(at_least(-1), -2, "must be >= -1, got -2")
    divisible_by(3)(6)
    divisible_by(3)(0)
    _raises(divisible_by(3), 7, "must be divisible by 3, got 7")
    _raises(divisible_by(4), 6, "must be divisible by 4, got 6")
    length(2)((1, 2))
    length(2)([3, 4])
    _raises(length(2), (1,), "must be of length 2, got (1,)")
    _raises(length(2), (1, 2, 3), "must be of length 2, got (1, 2, 3)")
    each(positive)((1, 2))
    each(positive)(())
    _raises(each(positive), (1, 0), "must be positive in every entry, got (1, 0)")
    _raises(each(positive), (0, 1), "must be positive in every entry, got (0, 1)")
    each(at_least(3))([3, 4])
    _raises(each(at_least(3)), [3, 2], "must be >= 3 in every entry, got [3, 2]")
    # The shared instances.
    positive(1e-9)
    _raises(positive, 0, "must be positive, got 0")
    non_negative(0)
    _raises(non_negative, -0.5, "must be >= 0, got -0.5")
    rate(0)
    rate(0.999)
    _raises(rate, 1, "must be in [0, 1), got 1")
    _raises(rate, -0.1, "must be in [0, 1), got -0.1")
    unit_interval(1)
    _raises(unit_interval, 1.5, "must be in [0, 1], got 1.5")
    odd(3)
    _raises(odd, 4, "must be odd, got 4")
    activation("gelu")
    _raises(activation, "nope", "must be an activation of transformers' ACT2FN, got 'nope'")


def _toy_config():
    """A strict config made at test time, so that strict_config itself runs inside the test."""

    @strict_config
    class ToyConfig(PreTrainedConfig):
        model_type = "toy-config-values"
        width: int = validated_field([positive, divisible_by(2)], default=4)
        heads: int = validated_field(positive, default=2)

        def validate_heads(self) -> None:
            if self.width % self.heads:
                raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")

    return ToyConfig


def test_strict_config_raises_its_own_errors_naming_the_field_or_validator():
    toy = _toy_config()
    config = toy(width=6, heads=3)
    assert (config.width, config.heads) == (6, 3)
    assert config.validate() is None

    error = _field_error(lambda: toy(width=0), "width", "must be positive, got 0")
    assert isinstance(error, StrictDataclassFieldValidationError) and isinstance(error, ValueError)
    _field_error(lambda: toy(width=3), "width", "must be divisible by 2, got 3")

    with pytest.raises(ConfigFieldTypeError) as excinfo:
        toy(heads=2.0)
    assert isinstance(excinfo.value, TypeError) and isinstance(excinfo.value, ConfigFieldError)
    assert "field 'heads'" in str(excinfo.value)
    assert isinstance(excinfo.value.__cause__, TypeError)

    # An assignment is checked, and a refused one leaves the field as it was.
    with pytest.raises(ConfigFieldError, match="field 'heads'"):
        config.heads = -1
    assert config.heads == 3
    config.heads = 4  # valid alone, breaks the relation: found by validate()
    _relation_error(config.validate, "validate_heads", "width (6) must be divisible by heads (4)")
    _relation_error(
        lambda: toy(width=4, heads=3), "validate_heads", "width (4) must be divisible by heads (3)"
    )

    # A TypeError inside a validator is a relation error too.
    broken = toy()
    object.__setattr__(broken, "width", "4")
    with pytest.raises(ConfigRelationError, match="validate_heads") as excinfo:
        broken.validate()
    assert isinstance(excinfo.value, StrictDataclassClassValidationError)
    assert isinstance(excinfo.value.__cause__, TypeError)
    assert "validate_heads':\n    TypeError: " in str(excinfo.value)


def test_a_strict_config_can_be_made_strict_again_in_a_subclass():
    toy = _toy_config()

    @strict_config
    class DeeperConfig(toy):
        depth: int = validated_field(positive, default=1)

    assert DeeperConfig(depth=3).depth == 3
    _field_error(lambda: DeeperConfig(depth=0), "depth", "must be positive, got 0")
    _field_error(lambda: DeeperConfig(width=-2), "width", "must be positive, got -2")
    _relation_error(
        lambda: DeeperConfig(heads=3), "validate_heads", "width (4) must be divisible by heads (3)"
    )


# ---- _bootstrap_config (CAT and BAT) ------------------------------------------------------------------


def test_bootstrap_relations_accept_their_boundaries():
    # cat-small: 4 layers of width 192 with 3 heads, decoder 192 wide in 8 groups, EMA 0.99 -> 0.999.
    config = CATConfig.from_preset("cat-small", average_top_k_layers=4, rr_layer=3, ema_end_decay=0.99)
    assert (config.average_top_k_layers, config.rr_layer, config.ema_end_decay) == (4, 3, 0.99)
    CATConfig.from_preset("cat-small", rr_layer=-1, decoder_groups=4, decoder_dim=200)
    # The CNN decoder's groups are not read by the transformer decoder, and the other way round.
    config = CATConfig.from_preset("cat-small", decoder_type="transformer", decoder_groups=5)
    assert config.decoder_groups == 5
    assert CATConfig.from_preset("cat-small", transformer_decoder_heads=5).transformer_decoder_heads == 5
    assert CATConfig.from_preset("cat-small", decoder_type="transformer", transformer_decoder_heads=8)


@pytest.mark.parametrize(
    ("overrides", "validator", "message"),
    [
        (
            {"num_attention_heads": 5},
            "validate_geometry",
            "CATConfig.hidden_size (192) must be divisible by num_attention_heads (5)",
        ),
        (
            {"num_mel_bins": 120},
            "validate_geometry",
            "CATConfig.num_mel_bins (120) must be a multiple of patch_size (16)",
        ),
        (
            {"max_length": 1000},
            "validate_geometry",
            "CATConfig.max_length (1000) must be a multiple of patch_size (16)",
        ),
        (
            {"decoder_groups": 5},
            "validate_pretraining",
            "CATConfig.decoder_groups (5) must divide hidden_size (192)",
        ),
        (
            {"decoder_dim": 196},
            "validate_pretraining",
            "CATConfig.decoder_groups (8) must divide decoder_dim (196)",
        ),
        (
            {"decoder_type": "transformer", "transformer_decoder_heads": 5},
            "validate_pretraining",
            "CATConfig.transformer_decoder_dim (384) must be divisible by transformer_decoder_heads (5)",
        ),
        (
            {"average_top_k_layers": 5},
            "validate_pretraining",
            "CATConfig.average_top_k_layers (5) must be <= num_hidden_layers (4)",
        ),
        (
            {"rr_layer": 4},
            "validate_pretraining",
            "CATConfig.rr_layer (4) must be -1 (final CLS) or a block index below num_hidden_layers (4)",
        ),
        (
            {"ema_end_decay": 0.98},
            "validate_pretraining",
            "CATConfig.ema_end_decay (0.98) must be >= ema_decay (0.99)",
        ),
    ],
)
def test_each_bootstrap_relation_names_its_fields(overrides, validator, message):
    _relation_error(lambda: CATConfig.from_preset("cat-small", **overrides), validator, message)


def test_bootstrap_messages_name_the_family_class():
    _relation_error(
        lambda: BATConfig.from_preset("bat-small", max_length=1000),
        "validate_geometry",
        "BATConfig.max_length (1000) must be a multiple of patch_size (16)",
    )
    _relation_error(
        lambda: BATConfig.from_preset("bat-small", ema_decay=0.9995),
        "validate_pretraining",
        "BATConfig.ema_end_decay (0.999) must be >= ema_decay (0.9995)",
    )


def test_bootstrap_presets_take_overrides_and_unknown_names_list_the_known():
    config = CATConfig.from_preset("cat-small", hidden_size=384, num_attention_heads=6)
    # The overrides win over the preset's 192 / 3; the preset's other fields stay.
    assert (config.hidden_size, config.num_attention_heads) == (384, 6)
    assert (config.num_hidden_layers, config.clone_batch, config.stem_channels) == (4, 2, (32, 64))
    assert BATConfig.from_preset("bat-small", transformer_decoder_heads=6).transformer_decoder_heads == 6
    with pytest.raises(ValueError) as excinfo:
        CATConfig.from_preset("cat-huge")
    assert not isinstance(excinfo.value, ConfigRelationError)
    assert (
        str(excinfo.value)
        == "unknown CAT preset 'cat-huge'; available: ['cat-base', 'cat-small', 'eat-base']"
    )
    with pytest.raises(ValueError) as excinfo:
        BATConfig.from_preset("cat-small")
    assert str(excinfo.value) == "unknown BAT preset 'cat-small'; available: ['bat-base', 'bat-small']"


def test_bootstrap_grid_size_is_time_then_frequency_patches():
    assert CATConfig.from_preset("cat-small").grid_size == (64, 8)
    assert all(type(n) is int for n in CATConfig.from_preset("cat-small").grid_size)
    assert CATConfig.from_preset("cat-small", max_length=512, num_mel_bins=64).grid_size == (32, 4)
    assert CATConfig.from_preset("cat-small", patch_size=32, max_length=512, num_mel_bins=64).grid_size == (
        16,
        2,
    )
    assert BATConfig.from_preset("bat-small", max_length=160, num_mel_bins=48).grid_size == (10, 3)


# ---- CAT ----------------------------------------------------------------------------------------------


def test_cat_stem_needs_a_patch_size_that_is_a_multiple_of_8():
    geometry = {"patch_size": 12, "num_mel_bins": 120, "max_length": 1020}
    _relation_error(
        lambda: CATConfig.from_preset("cat-small", **geometry),
        "validate_geometry",
        "CATConfig.patch_size (12) must be a multiple of 8 with the multi-resolution stem "
        "(strides 4, 2, p/8)",
    )
    plain = CATConfig.from_preset("cat-small", use_multi_resolution_stem=False, **geometry)
    assert plain.grid_size == (85, 10)
    # With the stem on, the shared grid checks still run.
    _relation_error(
        lambda: CATConfig.from_preset("cat-small", patch_size=24, max_length=1000, num_mel_bins=120),
        "validate_geometry",
        "CATConfig.max_length (1000) must be a multiple of patch_size (24)",
    )


def test_cat_stem_strides_make_up_the_patch_size():
    assert CATConfig.from_preset("cat-small").stem_strides == (4, 2, 2)
    assert all(type(n) is int for n in CATConfig.from_preset("cat-small").stem_strides)
    config = CATConfig.from_preset("cat-small", patch_size=24, max_length=1008, num_mel_bins=120)
    assert config.stem_strides == (4, 2, 3)
    assert CATConfig.from_preset("cat-small", patch_size=8, max_length=64, num_mel_bins=32).stem_strides == (
        4,
        2,
        1,
    )


def test_cat_stem_lists_become_tuples_and_are_checked():
    config = CATConfig.from_preset("cat-small", stem_channels=[16, 24], stem_depths=[0, 3])
    assert config.stem_channels == (16, 24) and config.stem_depths == (0, 3)
    assert type(config.stem_channels) is tuple and type(config.stem_depths) is tuple
    _field_error(
        lambda: CATConfig.from_preset("cat-small", stem_channels=[16, 0]),
        "stem_channels",
        "must be positive in every entry, got [16, 0]",
    )
    _field_error(
        lambda: CATConfig.from_preset("cat-small", stem_kernel_size=4),
        "stem_kernel_size",
        "must be odd, got 4",
    )


# ---- AudioMAE -----------------------------------------------------------------------------------------


def test_audiomae_relations_and_their_messages():
    AudioMAEConfig.from_preset("audiomae-tiny", decoder_num_attention_heads=8, patch_size=32)
    _relation_error(
        lambda: AudioMAEConfig.from_preset("audiomae-tiny", num_attention_heads=5),
        "validate_heads",
        "AudioMAEConfig.hidden_size (192) must be divisible by num_attention_heads (5)",
    )
    _relation_error(
        lambda: AudioMAEConfig.from_preset("audiomae-tiny", decoder_num_attention_heads=3),
        "validate_heads",
        "AudioMAEConfig.decoder_hidden_size (128) must be divisible by decoder_num_attention_heads (3)",
    )
    _relation_error(
        lambda: AudioMAEConfig.from_preset("audiomae-tiny", num_mel_bins=120),
        "validate_patch_grid",
        "AudioMAEConfig.num_mel_bins (120) must be a multiple of patch_size (16)",
    )
    _relation_error(
        lambda: AudioMAEConfig.from_preset("audiomae-tiny", max_length=1000),
        "validate_patch_grid",
        "AudioMAEConfig.max_length (1000) must be a multiple of patch_size (16)",
    )


def test_audiomae_grid_presets_and_overrides():
    assert AudioMAEConfig().grid_size == (64, 8)
    assert all(type(n) is int for n in AudioMAEConfig().grid_size)
    assert AudioMAEConfig.from_preset("audiomae-tiny", max_length=512, num_mel_bins=64).grid_size == (32, 4)
    assert AudioMAEConfig(patch_size=32, max_length=320, num_mel_bins=64).grid_size == (10, 2)
    config = AudioMAEConfig.from_preset("audiomae-tiny", decoder_hidden_size=256)
    assert (config.decoder_hidden_size, config.hidden_size, config.decoder_num_attention_heads) == (
        256,
        192,
        4,
    )
    with pytest.raises(ValueError) as excinfo:
        AudioMAEConfig.from_preset("audiomae-large")
    assert str(excinfo.value) == (
        "unknown AudioMAE preset 'audiomae-large'; available: ['audiomae-base', 'audiomae-tiny']"
    )


# ---- BEATs --------------------------------------------------------------------------------------------


def test_beats_relations_accept_their_boundaries():
    # beats-tiny: width 64, 4 heads, 4 conv groups, 32 buckets (32 // 4 = 8 exact), patch 16.
    BEATsConfig.from_preset("beats-tiny", max_length=16, max_distance=9)
    BEATsConfig.from_preset("beats-tiny", layer_norm_first=True, deep_norm=False)
    BEATsConfig.from_preset("beats-tiny", gru_rel_pos=False, relative_position_embedding=False)
    BEATsConfig.from_preset("beats-tiny", gru_rel_pos=False)
    BEATsConfig.from_preset("beats-tiny", num_buckets=34, max_distance=9)


@pytest.mark.parametrize(
    ("overrides", "validator", "message"),
    [
        (
            {"num_attention_heads": 3},
            "validate_heads",
            "BEATsConfig.hidden_size (64) must be divisible by num_attention_heads (3)",
        ),
        (
            {"max_length": 15},
            "validate_max_length",
            "BEATsConfig.max_length (15) must hold at least one patch (patch_size=16)",
        ),
        (
            {"num_conv_pos_embedding_groups": 3},
            "validate_conv_pos_groups",
            "BEATsConfig.hidden_size (64) must be divisible by num_conv_pos_embedding_groups (3)",
        ),
        (
            {"layer_norm_first": True},
            "validate_normalisation",
            "BEATsConfig.deep_norm scales post-LN residuals; it cannot be set with layer_norm_first",
        ),
        (
            {"relative_position_embedding": False},
            "validate_relative_positions",
            "BEATsConfig.gru_rel_pos gates the relative position bias; it needs relative_position_embedding",
        ),
        (
            {"num_buckets": 34, "max_distance": 8},
            "validate_relative_positions",
            "BEATsConfig.max_distance (8) must exceed the exact-bucket range num_buckets // 4 (8)",
        ),
        (
            {"num_buckets": 33},
            "validate_relative_positions",
            "BEATsConfig.num_buckets (33) must be even (half per direction)",
        ),
        (
            {"max_distance": 8},
            "validate_relative_positions",
            "BEATsConfig.max_distance (8) must exceed the exact-bucket range num_buckets // 4 (8)",
        ),
    ],
)
def test_each_beats_relation_names_its_fields(overrides, validator, message):
    _relation_error(lambda: BEATsConfig.from_preset("beats-tiny", **overrides), validator, message)


def test_beats_presets_take_overrides_and_unknown_names_list_the_known():
    config = BEATsConfig.from_preset("beats-tiny", max_distance=64, num_hidden_layers=3)
    assert (config.max_distance, config.num_hidden_layers, config.hidden_size) == (64, 3, 64)
    with pytest.raises(ValueError) as excinfo:
        BEATsConfig.from_preset("beats-huge")
    assert str(excinfo.value) == "unknown BEATs preset 'beats-huge'; available: ['beats-iter3', 'beats-tiny']"


TINY_REFERENCE_CFG = {
    "input_patch_size": 16,
    "embed_dim": 32,
    "conv_bias": True,
    "encoder_layers": 3,
    "encoder_embed_dim": 64,
    "encoder_ffn_embed_dim": 96,
    "encoder_attention_heads": 2,
    "layer_norm_first": False,
    "deep_norm": True,
    "dropout": 0.2,
    "attention_dropout": 0.3,
    "activation_dropout": 0.05,
    "encoder_layerdrop": 0.1,
    "dropout_input": 0.15,
    "conv_pos": 8,
    "conv_pos_groups": 4,
    "relative_position_embedding": True,
    "num_buckets": 16,
    "max_distance": 40,
    "gru_rel_pos": True,
    "predictor_dropout": 0.25,
}


def test_beats_reference_cfg_maps_every_key_to_its_field():
    config = BEATsConfig.from_reference_cfg(TINY_REFERENCE_CFG)
    expected = {
        "patch_size": 16,
        "patch_embedding_dim": 32,
        "conv_bias": True,
        "num_hidden_layers": 3,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_attention_heads": 2,
        "layer_norm_first": False,
        "deep_norm": True,
        "hidden_dropout_prob": 0.2,
        "attention_probs_dropout_prob": 0.3,
        "activation_dropout": 0.05,
        "layerdrop": 0.1,
        "input_dropout": 0.15,
        "num_conv_pos_embeddings": 8,
        "num_conv_pos_embedding_groups": 4,
        "relative_position_embedding": True,
        "num_buckets": 16,
        "max_distance": 40,
        "gru_rel_pos": True,
        "classifier_dropout": 0.25,
        # Not in the cfg: the defaults.
        "hidden_act": "gelu",
        "num_mel_bins": 128,
        "max_length": 3000,
        "num_labels": 2,
        "problem_type": None,
    }
    assert {name: getattr(config, name) for name in expected} == expected
    # An empty cfg is the reference defaults, which are BEATsConfig's.
    assert BEATsConfig.from_reference_cfg({}).to_dict() == BEATsConfig().to_dict()


def test_beats_reference_cfg_activation_head_and_overrides():
    assert BEATsConfig.from_reference_cfg({"activation_fn": "gelu_accurate"}).hidden_act == "gelu_new"
    assert BEATsConfig.from_reference_cfg({"activation_fn": "relu"}).hidden_act == "relu"
    with pytest.raises(ValueError) as excinfo:
        BEATsConfig.from_reference_cfg({"activation_fn": "glu"})
    assert str(excinfo.value) == (
        "cfg['activation_fn'] = 'glu' is not supported; "
        "supported: ['gelu', 'gelu_accurate', 'gelu_fast', 'linear', 'relu', 'tanh']"
    )
    with pytest.raises(TypeError) as excinfo:
        BEATsConfig.from_reference_cfg([("encoder_layers", 3)])
    assert str(excinfo.value) == "cfg must be the checkpoint's cfg dict, got list"

    tagger = BEATsConfig.from_reference_cfg({"finetuned_model": True, "predictor_class": 50})
    assert (tagger.num_labels, tagger.problem_type) == (50, "multi_label_classification")
    assert BEATsConfig.from_reference_cfg({"finetuned_model": True}).num_labels == 527
    plain = BEATsConfig.from_reference_cfg({"finetuned_model": False, "predictor_class": 50})
    assert (plain.num_labels, plain.problem_type) == (2, None)
    # Keyword arguments override the cfg and the fine-tuned head.
    config = BEATsConfig.from_reference_cfg(
        {**TINY_REFERENCE_CFG, "finetuned_model": True, "predictor_class": 50},
        num_hidden_layers=1,
        num_labels=7,
    )
    assert (config.num_hidden_layers, config.num_labels, config.hidden_size) == (1, 7, 64)


def test_beats_reference_cfg_logs_only_the_keys_it_drops(caplog):
    special = {"activation_fn": "gelu", "finetuned_model": False, "predictor_class": 3}
    with caplog.at_level(logging.INFO, logger="hf_audiorep.modeling.configuration_beats"):
        BEATsConfig.from_reference_cfg(
            {**TINY_REFERENCE_CFG, **special, "layer_wise_gradient_decay_ratio": 1.0}
        )
        BEATsConfig.from_reference_cfg({})  # no ratio: nothing to say either
    assert caplog.records == []
    with caplog.at_level(logging.INFO, logger="hf_audiorep.modeling.configuration_beats"):
        BEATsConfig.from_reference_cfg({"label_smoothing": 0.1, "layer_wise_gradient_decay_ratio": 0.6})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "BEATs cfg key 'label_smoothing' is not used by BEATsConfig; ignored"),
        (
            logging.INFO,
            "BEATs cfg layer_wise_gradient_decay_ratio=0.6 is a training setting and is not carried over; "
            "use layer-wise learning-rate decay instead",
        ),
    ]


# ---- CP-Mobile ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "divisor", "expected"),
    [
        (32, 8, 32),
        (3, 8, 8),  # never below the divisor
        (1, 4, 4),
        (12, 8, 16),  # half-way rounds up
        (44, 8, 48),
        (57.6, 8, 56),
        (103.68, 8, 104),
        (11.9, 8, 16),  # 8 would be more than 10 % below 11.9
        (19.9, 8, 24),  # likewise 16 below 19.9
        (9, 4, 12),  # 8 is 11 % below 9
        (10, 9, 9),  # exactly 10 % below: kept
        (10, 4, 12),
    ],
)
def test_make_divisible_rounds_to_the_nearest_multiple_at_most_10_percent_down(value, divisor, expected):
    assert make_divisible(value, divisor) == expected


def test_make_divisible_defaults_to_multiples_of_8():
    assert make_divisible(44) == 48
    assert make_divisible(19.9) == 24
    assert make_divisible(4) == 8


def test_cp_mobile_field_checks_and_their_messages():
    _field_error(lambda: CPMobileConfig(n_blocks=()), "n_blocks", "must have at least one entry, got none")
    one_stage = CPMobileConfig(n_blocks=(6,))
    assert one_stage.n_blocks == (6,) and one_stage.stage_channels == (32, 32)
    _field_error(
        lambda: CPMobileConfig(n_blocks=(3, 0, 3)),
        "n_blocks",
        "must be positive in every entry, got (3, 0, 3)",
    )
    _field_error(
        lambda: CPMobileConfig(embedding_size=0), "embedding_size", "must be positive or None, got 0"
    )
    _field_error(
        lambda: CPMobileConfig(embedding_size=-3), "embedding_size", "must be positive or None, got -3"
    )
    assert CPMobileConfig(embedding_size=1).embedding_size == 1
    assert CPMobileConfig(embedding_size=None).embedding_size is None


@pytest.mark.parametrize(
    "bad_pair",
    [(1,), (1, 1, 1), (0, 1), (1, -1), (True, 1), (1, 2.0), "ab", 2, None],
    ids=["one", "three", "zero", "negative", "bool", "float", "str", "int", "none"],
)
def test_cp_mobile_strides_are_one_pair_of_positive_ints_per_block(bad_pair):
    # A list (config.json's form) reaches the check; a tuple is first checked by its annotation.
    strides = [[1, 1]] * 5 + [bad_pair]
    _field_error(
        lambda: CPMobileConfig(strides=strides),
        "strides",
        f"must be one (frequency, time) pair of positive ints per block, got {strides!r}",
    )


def test_cp_mobile_lists_become_tuples_and_relations_are_named():
    config = CPMobileConfig(n_blocks=[2, 1], strides=[[1, 1], [2, 1], [1, 3]])
    assert config.n_blocks == (2, 1) and config.strides == ((1, 1), (2, 1), (1, 3))
    assert type(config.n_blocks) is tuple and all(type(pair) is tuple for pair in config.strides)
    _relation_error(
        lambda: CPMobileConfig(strides=((1, 1),) * 5),
        "validate_strides",
        "CPMobileConfig.strides has 5 entries but n_blocks (3, 2, 1) makes 6 blocks: give one (frequency, "
        "time) stride per block",
    )
    _relation_error(
        lambda: CPMobileConfig(n_blocks=(2, 2), strides=((1, 1),) * 5),
        "validate_strides",
        "CPMobileConfig.strides has 5 entries but n_blocks (2, 2) makes 4 blocks: give one (frequency, "
        "time) stride per block",
    )
    assert CPMobileConfig(n_blocks=(2, 2), strides=((1, 1),) * 4).num_hidden_layers == 4
    _relation_error(
        lambda: CPMobileConfig(classifier="cosine"),
        "validate_head",
        "CPMobileConfig.classifier='cosine' needs an embedding_size: in the reference layout "
        "(embedding_size=None) the output block's convolution is the classifier",
    )
    assert CPMobileConfig(classifier="cosine", embedding_size=128).classifier == "cosine"


def test_cp_mobile_derived_sizes():
    # 32 -> 32, 32 * 1.8 = 57.6 -> 56, 32 * 1.8**2 = 103.68 -> 104.
    config = CPMobileConfig()
    assert config.stage_channels == (32, 32, 56, 104)
    assert all(type(n) is int for n in config.stage_channels)
    assert (config.hidden_size, config.num_hidden_layers) == (104, 6)
    # 8 -> 8, 14.4 -> 16, 25.92 -> 24.
    small = CPMobileConfig.from_preset("cp-mobile-6k")
    assert small.stage_channels == (8, 8, 16, 24)
    # base 20 rounds to 24; 24 * 2 = 48, 24 * 4 = 96.
    wide = CPMobileConfig(base_channels=20, channels_multiplier=2, n_blocks=(1, 1, 1), strides=((1, 1),) * 3)
    assert wide.stage_channels == (24, 24, 48, 96)
    assert (wide.hidden_size, wide.num_hidden_layers) == (96, 3)
    embedded = CPMobileConfig(embedding_size=128)
    assert embedded.hidden_size == 128 and embedded.stage_channels == (32, 32, 56, 104)


def test_cp_mobile_presets_take_overrides_and_unknown_names_list_the_known():
    config = CPMobileConfig.from_preset("cp-mobile-dcase23", expansion_rate=2.5)
    assert (config.expansion_rate, config.channels_multiplier, config.use_grn) == (2.5, 2.3, True)
    assert config.strides == ((1, 1), (2, 2), (1, 1), (2, 1), (1, 1), (1, 1))
    assert CPMobileConfig.from_preset("cp-mobile-18k", base_channels=40).base_channels == 40
    with pytest.raises(ValueError) as excinfo:
        CPMobileConfig.from_preset("cp-mobile-1m")
    assert str(excinfo.value) == (
        "unknown CP-Mobile preset 'cp-mobile-1m'; available: ['cp-mobile-18k', 'cp-mobile-35k', "
        "'cp-mobile-6k', 'cp-mobile-77k', 'cp-mobile-dcase23', 'cp-mobile-dcase24']"
    )


# ---- Zipformer ----------------------------------------------------------------------------------------

PER_STACK = (
    "num_encoder_layers",
    "downsampling_factor",
    "encoder_dim",
    "feedforward_dim",
    "num_heads",
    "encoder_unmasked_dim",
    "cnn_module_kernel",
    "query_head_dim",
    "value_head_dim",
    "pos_head_dim",
)


def test_zipformer_scalars_broadcast_to_every_stack():
    config = ZipformerConfig.from_preset("zipformer-small")
    assert (config.query_head_dim, config.value_head_dim, config.pos_head_dim) == (
        (16,) * 4,
        (8,) * 4,
        (4,) * 4,
    )
    # Every per-stack field a scalar: one stack.
    single = ZipformerConfig(
        **{**dict.fromkeys(PER_STACK, 2), "cnn_module_kernel": 3}, subsampling_channels=[4, 8, 16]
    )
    assert {f: getattr(single, f) for f in PER_STACK} == {
        **dict.fromkeys(PER_STACK, (2,)),
        "cnn_module_kernel": (3,),
    }
    assert single.subsampling_channels == (4, 8, 16) and type(single.subsampling_channels) is tuple
    assert (single.num_stacks, single.hidden_size, single.num_attention_heads) == (1, 2, 2)
    lists = ZipformerConfig.from_preset("zipformer-small", num_heads=[2, 4, 4, 2])
    assert lists.num_heads == (2, 4, 4, 2) and type(lists.num_heads) is tuple


def test_zipformer_per_stack_field_checks():
    message = "must be a positive int or positive ints, one per stack, got {!r}"
    for bad in (0, -1, (4, 0, 4, 4), [4, -4, 4, 4]):
        _field_error(
            lambda bad=bad: ZipformerConfig.from_preset("zipformer-small", num_heads=bad),
            "num_heads",
            message.format(bad),
        )
    # Bools and floats are refused by the annotation first; the check refuses them too.
    for bad in (True, (4, 4.0, 4, 4), [4, False, 4, 4]):
        _raises(_each_positive, bad, message.format(bad))
    _each_positive(3)
    _each_positive([1, 2])
    _field_error(lambda: ZipformerConfig(hidden_size=0), "hidden_size", "must be positive, got 0")
    _field_error(
        lambda: ZipformerConfig(num_attention_heads=-2), "num_attention_heads", "must be positive, got -2"
    )
    _field_error(lambda: ZipformerConfig(num_mel_bins=6), "num_mel_bins", "must be >= 7, got 6")
    assert ZipformerConfig(num_mel_bins=7, max_length=9).max_length == 9
    _field_error(lambda: ZipformerConfig(max_length=8), "max_length", "must be >= 9, got 8")


def test_zipformer_width_shorthand_scales_every_stack():
    # zipformer-small: encoder_dim (64, 96, 128, 96), widest 128.
    double = ZipformerConfig.from_preset("zipformer-small", hidden_size=256)
    assert double.encoder_dim == (128, 192, 256, 192)
    assert double.feedforward_dim == (384, 576, 768, 576)
    assert double.encoder_unmasked_dim == (128, 128, 192, 128)
    assert double.hidden_size == 256
    # Factor 70 / 128: 35, 52.5 -> 52, 70; 105, 157.5 -> 158, 210 (round half to even).
    odd_width = ZipformerConfig.from_preset("zipformer-small", hidden_size=70)
    assert odd_width.encoder_dim == (35, 52, 70, 52)
    assert odd_width.feedforward_dim == (105, 158, 210, 158)
    assert odd_width.encoder_unmasked_dim == (35, 35, 52, 35)
    # Never below one channel: 64 / 128 = 0.5 rounds to 0, kept at 1.
    one = ZipformerConfig.from_preset("zipformer-small", hidden_size=1)
    assert one.encoder_dim == one.encoder_unmasked_dim == (1, 1, 1, 1)
    assert one.feedforward_dim == (2, 2, 3, 2)  # 1.5 -> 2, 2.25 -> 2, 3
    # The unscaled unmasked width is clipped to the scaled encoder width.
    stacks = {**dict.fromkeys(PER_STACK, 1), "encoder_dim": (4, 8), "encoder_unmasked_dim": (6, 8)}
    clipped = ZipformerConfig(**stacks, hidden_size=16)
    assert clipped.encoder_dim == (8, 16) and clipped.encoder_unmasked_dim == (8, 16)
    # Given equal to the widest stack: nothing changes.
    same = ZipformerConfig.from_preset("zipformer-small", hidden_size=128)
    assert same.encoder_dim == (64, 96, 128, 96) and same.feedforward_dim == (192, 288, 384, 288)


def test_zipformer_head_shorthand_scales_every_stack():
    # zipformer-m: num_heads (4, 4, 4, 8, 4, 4).
    assert ZipformerConfig().num_attention_heads == 8
    config = ZipformerConfig(num_attention_heads=6)
    assert (config.num_heads, config.num_attention_heads) == ((3, 3, 3, 6, 3, 3), 6)
    assert ZipformerConfig(num_attention_heads=1).num_heads == (1, 1, 1, 1, 1, 1)
    assert ZipformerConfig(num_attention_heads=16).num_heads == (8, 8, 8, 16, 8, 8)
    assert ZipformerConfig(num_attention_heads=8).num_heads == (4, 4, 4, 8, 4, 4)
    # The width shorthand leaves the heads alone, and the other way round.
    widened = ZipformerConfig(hidden_size=1024)
    assert widened.num_heads == (4, 4, 4, 8, 4, 4) and widened.encoder_dim == (384, 512, 768, 1024, 768, 512)
    assert config.encoder_dim == (192, 256, 384, 512, 384, 256)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_encoder_layers": ()}, "ZipformerConfig.num_encoder_layers must have at least one stack"),
        (
            {"encoder_dim": ()},
            "ZipformerConfig.encoder_dim has 0 entries but num_encoder_layers has 4: every per-stack field "
            "needs one entry per stack",
        ),
        (
            {"num_heads": ()},
            "ZipformerConfig.num_heads has 0 entries but num_encoder_layers has 4: every per-stack field "
            "needs one entry per stack",
        ),
        (
            # The width shorthand scales a short field as it is; the relation check then names it.
            {"encoder_unmasked_dim": (64, 64, 96), "hidden_size": 256},
            "ZipformerConfig.encoder_unmasked_dim has 3 entries but num_encoder_layers has 4: every "
            "per-stack field needs one entry per stack",
        ),
        (
            {"num_heads": (4, 4, 4)},
            "ZipformerConfig.num_heads has 3 entries but num_encoder_layers has 4: every per-stack field "
            "needs one entry per stack",
        ),
        (
            {"pos_head_dim": (4, 4)},
            "ZipformerConfig.pos_head_dim has 2 entries but num_encoder_layers has 4: every per-stack field "
            "needs one entry per stack",
        ),
        (
            {"encoder_unmasked_dim": (64, 64, 129, 64)},
            "ZipformerConfig.encoder_unmasked_dim[2] (129) must be <= encoder_dim[2] (128)",
        ),
        (
            {"cnn_module_kernel": (15, 15, 8, 15)},
            "ZipformerConfig.cnn_module_kernel[2] (8) must be odd (symmetric 'same' padding)",
        ),
        (
            {"cnn_module_kernel": (4, 15, 15, 15)},
            "ZipformerConfig.cnn_module_kernel[0] (4) must be odd (symmetric 'same' padding)",
        ),
        ({"pos_dim": 25}, "ZipformerConfig.pos_dim (25) must be even (cos/sin pairs)"),
    ],
)
def test_each_zipformer_stack_relation_names_its_fields(overrides, message):
    _relation_error(
        lambda: ZipformerConfig.from_preset("zipformer-small", **overrides), "validate_stacks", message
    )


def test_zipformer_stack_relations_accept_their_boundaries_and_check_the_shorthands():
    config = ZipformerConfig.from_preset(
        "zipformer-small", encoder_unmasked_dim=(64, 96, 128, 96), cnn_module_kernel=(1, 3, 5, 7), pos_dim=2
    )
    assert config.encoder_unmasked_dim == config.encoder_dim
    config.hidden_size = 100
    _relation_error(
        config.validate,
        "validate_stacks",
        "ZipformerConfig.hidden_size (100) must equal max(encoder_dim) (128)",
    )
    config.hidden_size = 128
    config.num_attention_heads = 2
    _relation_error(
        config.validate,
        "validate_stacks",
        "ZipformerConfig.num_attention_heads (2) must equal max(num_heads) (4)",
    )


def test_zipformer_derived_geometry():
    small = ZipformerConfig.from_preset("zipformer-small")
    assert (small.num_stacks, small.num_hidden_layers) == (4, 4)
    assert small.frame_rates == (50.0, 25.0, 12.5, 25.0)
    assert small.output_frame_rate == 25.0
    medium = ZipformerConfig()
    assert (medium.num_stacks, medium.num_hidden_layers) == (6, 16)
    assert medium.frame_rates == (50.0, 25.0, 12.5, 6.25, 12.5, 25.0)
    assert ZipformerConfig(output_downsampling_factor=4).output_frame_rate == 12.5
    deeper = ZipformerConfig.from_preset("zipformer-small", num_encoder_layers=(2, 3, 1, 5))
    assert (deeper.num_stacks, deeper.num_hidden_layers) == (4, 11)


def test_zipformer_presets_take_overrides_and_unknown_names_list_the_known():
    config = ZipformerConfig.from_preset("zipformer-small", pos_dim=32, classifier_dropout=0.0)
    assert (config.pos_dim, config.classifier_dropout, config.query_head_dim) == (32, 0.0, (16,) * 4)
    with pytest.raises(ValueError) as excinfo:
        ZipformerConfig.from_preset("zipformer-l")
    assert (
        str(excinfo.value)
        == "unknown Zipformer preset 'zipformer-l'; available: ['zipformer-m', 'zipformer-small']"
    )
