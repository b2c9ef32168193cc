"""CP-Mobile (ContrastASC's student): the shared model checks for a CNN (no attention) in both layouts, plus
what the family adds: the CP-JKU parameter counts and feature-map shapes, padding independence, the two
output-block layouts and their heads, GRN, the cosine classifier, the config's checks and layer ids."""

import math

import numpy as np
import pytest
import torch
from family_utils import TINY as FAMILY_TINY
from model_test_mixin import ModelTesterMixin
from remote_code_utils import run_without_library

from hf_audiorep.hub import prepare_repo
from hf_audiorep.modeling import CosineClassifier, LogMelFeatureExtractor
from hf_audiorep.modeling.configuration_cp_mobile import CP_MOBILE_PRESETS, CPMobileConfig, make_divisible
from hf_audiorep.modeling.modeling_cp_mobile import (
    CPMobileForAudioClassification,
    CPMobileModel,
    CPMobileOutputBlock,
    GlobalResponseNorm,
)
from hf_audiorep.training import build_param_groups

# Stage channels 8, 8, 16, 32; block 0 keeps its shortcut, block 1 pools it (stride 2 on both axes), blocks
# 2 and 3 change width (no shortcut) and stride one axis each.
TINY = dict(FAMILY_TINY["cp_mobile"], num_labels=5)
#: ContrastASC's layout: an embedding from a LayerNorm output block, a cosine head, GRN in the blocks
CONTRASTASC = dict(embedding_size=12, output_norm="layer", classifier="cosine", use_grn=True)


def tiny_config(**overrides) -> CPMobileConfig:
    return CPMobileConfig(**{**TINY, **overrides})


def build(model_class, config, seed=0):
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # Move the norms, their running statistics and GRN's scalars off their initial values, so that a wrong
    # order of operations or a padded column that leaks in shows.
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith(("running_mean", "norm.bias", "gamma", "beta")):
                tensor.normal_(0.0, 0.3, generator=generator)
    return model


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def feature_map_shapes(config, batch: int, frames: int) -> list[tuple[int, int, int, int]]:
    """(batch, channels, mel, time) after the stem and after each block, from the config's arithmetic: every
    3x3 padding-1 layer of stride s maps n positions to ceil(n / s)."""
    channels = config.stage_channels
    freq, time = ceil_div(ceil_div(config.num_mel_bins, 2), 2), ceil_div(ceil_div(frames, 2), 2)
    shapes = [(batch, channels[0], freq, time)]
    stages = [stage for stage, count in enumerate(config.n_blocks) for _ in range(count)]
    for stage, (stride_f, stride_t) in zip(stages, config.strides, strict=True):
        freq, time = ceil_div(freq, stride_f), ceil_div(time, stride_t)
        shapes.append((batch, channels[stage + 1], freq, time))
    return shapes


class TestCPMobileModel(ModelTesterMixin):
    model_classes = (CPMobileModel, CPMobileForAudioClassification)
    has_attentions = False
    invalid_config_values = [
        ("base_channels", 0),
        ("channels_multiplier", -1.0),
        ("expansion_rate", 0),
        ("n_blocks", (2, 0, 1)),
        ("n_blocks", ()),
        ("strides", ((1, 1), (2, 2), (1, 2))),  # 3 strides for 4 blocks
        ("strides", ((1, 1), (0, 2), (1, 2), (2, 1))),
        ("strides", ((1, 1), (2, 2, 1), (1, 2), (2, 1))),
        ("output_norm", "group"),
        ("classifier", "mlp"),
        ("classifier", "cosine"),  # a cosine head needs an embedding_size
        ("embedding_size", 0),
        ("cosine_scale", 0.0),
        ("num_mel_bins", 0),
        ("layer_norm_eps", 0.0),
    ]

    def get_config(self, **overrides):
        return tiny_config(**overrides)

    def expected_sequence_length(self, config, inputs) -> int:
        return feature_map_shapes(config, 1, inputs["input_values"].shape[1])[-1][-1]

    def expected_hidden_state_shapes(self, model_class, config, inputs):
        batch, frames = inputs["input_values"].shape[:2]
        return feature_map_shapes(config, batch, frames)


class TestCPMobileContrastASCLayout(TestCPMobileModel):
    """The same checks with the output block in the encoder, a LayerNorm in it, a cosine head and GRN."""

    invalid_config_values = [
        *(entry for entry in TestCPMobileModel.invalid_config_values if entry != ("classifier", "cosine")),
        ("embedding_size", None),  # the cosine head needs one
    ]

    def get_config(self, **overrides):
        return tiny_config(**{**CONTRASTASC, **overrides})


# ---- sizes: the CP-JKU numbers -----------------------------------------------------------------------

# shared/reference/architectures.md 6(a): an analytic count of the CP-JKU code, 10 classes.
PRESET_PARAMETERS = {
    "cp-mobile-6k": 5_722,
    "cp-mobile-18k": 18_624,
    "cp-mobile-35k": 35_062,
    "cp-mobile-dcase24": 61_148,
    "cp-mobile-77k": 77_302,
    "cp-mobile-dcase23": 126_952,
}


def num_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_dcase24_baseline_has_the_official_61148_parameters():
    # CPJKU/dcase2024_task1_baseline README: "The model has 61,148 parameters".
    model = CPMobileForAudioClassification(CPMobileConfig.from_preset("cp-mobile-dcase24", num_labels=10))
    assert num_parameters(model) == 61_148


def test_every_preset_is_counted_and_its_count_is_the_reference_one():
    assert set(PRESET_PARAMETERS) == set(CP_MOBILE_PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESET_PARAMETERS))
@pytest.mark.parametrize("output_norm", ["batch", "layer"])
def test_preset_parameter_counts(preset, output_norm):
    config = CPMobileConfig.from_preset(preset, num_labels=10, output_norm=output_norm)
    with torch.device("meta"):
        model = CPMobileForAudioClassification(config)
    assert num_parameters(model) == PRESET_PARAMETERS[preset]


def test_grn_adds_two_parameters_per_block_and_the_embedding_layout_its_head():
    config = CPMobileConfig.from_preset("cp-mobile-dcase24", num_labels=10)
    base = num_parameters(CPMobileForAudioClassification(config))
    with_grn = CPMobileForAudioClassification(
        CPMobileConfig.from_preset("cp-mobile-dcase24", num_labels=10, use_grn=True)
    )
    assert num_parameters(with_grn) - base == 2 * config.num_hidden_layers
    # Embedding layout: output block 104 -> 128 (conv, norm), then a head 128 -> 10 (weights; bias if linear).
    reference_output_block = 104 * 10 + 2 * 10
    for classifier, head in (("linear", 128 * 10 + 10), ("cosine", 128 * 10)):
        embedded = CPMobileConfig.from_preset(
            "cp-mobile-dcase24", num_labels=10, embedding_size=128, classifier=classifier
        )
        expected = base - reference_output_block + 104 * 128 + 2 * 128 + head
        assert num_parameters(CPMobileForAudioClassification(embedded)) == expected


def test_dcase24_feature_maps_are_the_readme_table_shapes():
    # CPJKU/dcase2024_task1_baseline README, complexity table: a 1-s clip is [1, 1, 256, 65]; the stages see
    # [32, 64, 17], block 3 halves time to 9, block 4 halves frequency to 32 and widens to 56, block 6 to 104.
    model = CPMobileModel(CPMobileConfig.from_preset("cp-mobile-dcase24")).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 65, 256), output_hidden_states=True)
    shapes = [tuple(h.shape[1:]) for h in outputs.hidden_states]
    assert shapes == [(32, 64, 17)] * 3 + [(32, 64, 9), (56, 32, 9), (56, 32, 9), (104, 32, 9)]
    assert outputs.pooler_output.shape == (1, 104)


def test_stage_channels_follow_make_divisible():
    assert [make_divisible(v) for v in (8, 14.4, 25.92, 57.6, 103.68, 4, 3)] == [8, 16, 24, 56, 104, 8, 8]
    assert CPMobileConfig.from_preset("cp-mobile-dcase23").stage_channels == (32, 32, 72, 168)
    assert CPMobileConfig.from_preset("cp-mobile-6k").stage_channels == (8, 8, 16, 24)


# ---- padding ------------------------------------------------------------------------------------------


def padded_batch(config, lengths, seed=0, pad_value=-11.5):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths), config.num_mel_bins, generator=generator)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
        features[i, length:] = pad_value
    return features, mask


@pytest.mark.parametrize(
    "layout", [{}, CONTRASTASC, {"use_grn": True}], ids=["reference", "contrastasc", "grn"]
)
def test_batched_with_padding_equals_each_clip_alone_unpadded(layout):
    config = tiny_config(**layout)
    model = build(CPMobileForAudioClassification, config)
    # Odd lengths and lengths that are not multiples of the total time stride (8) at every layer.
    lengths = [61, 45, 30, 9, 1]
    features, mask = padded_batch(config, lengths)
    with torch.no_grad():
        batched = model(features, mask, output_hidden_states=True)
        encoder = model.cp_mobile(features, mask)
        for i, length in enumerate(lengths):
            alone = model(features[i : i + 1, :length], output_hidden_states=True)
            torch.testing.assert_close(batched.logits[i], alone.logits[0], rtol=0, atol=1e-5)
            for state, single in zip(batched.hidden_states, alone.hidden_states, strict=True):
                valid = single.shape[-1]
                torch.testing.assert_close(state[i, ..., :valid], single[0], rtol=0, atol=1e-5)
                assert not state[i, ..., valid:].any(), "padded columns must be zero"
            assert int(encoder.attention_mask[i].sum()) == alone.hidden_states[-1].shape[-1]
            single_encoder = model.cp_mobile(features[i : i + 1, :length])
            torch.testing.assert_close(
                encoder.pooler_output[i], single_encoder.pooler_output[0], rtol=0, atol=1e-5
            )


def test_padding_content_does_not_matter():
    config = tiny_config(**CONTRASTASC)
    model = build(CPMobileForAudioClassification, config)
    features, mask = padded_batch(config, [40, 23], pad_value=0.0)
    noisy = features.clone()
    noisy[mask == 0] = 1e3
    with torch.no_grad():
        torch.testing.assert_close(model(noisy, mask).logits, model(features, mask).logits, rtol=0, atol=1e-5)


def test_an_all_ones_mask_equals_no_mask_and_no_mask_is_the_plain_network():
    config = tiny_config()
    model = build(CPMobileForAudioClassification, config)
    features = torch.randn(2, 37, config.num_mel_bins)
    with torch.no_grad():
        plain = model(features)
        masked = model(features, torch.ones(2, 37, dtype=torch.long))
        # The reference network by hand: stem, blocks, conv + norm + AdaptiveAvgPool2d(1).
        x = features.unsqueeze(1).transpose(-1, -2)
        x = model.cp_mobile.stem.conv2(model.cp_mobile.stem.conv1(x))
        for block in model.cp_mobile.blocks:
            x, _ = block(x, None)
        head = model.classifier
        by_hand = torch.nn.functional.adaptive_avg_pool2d(head.norm(head.conv(x)), 1).flatten(1)
    torch.testing.assert_close(masked.logits, plain.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain.logits, by_hand, rtol=0, atol=1e-5)


def test_attention_mask_must_be_a_prefix_and_inputs_fit_the_config():
    config = tiny_config()
    model = build(CPMobileModel, config)
    features = torch.randn(2, 20, config.num_mel_bins)
    holey = torch.ones(2, 20, dtype=torch.long)
    holey[0, 5] = 0
    with pytest.raises(ValueError, match="prefix"):
        model(features, holey)
    with pytest.raises(ValueError, match="num_mel_bins"):
        model(torch.randn(2, 20, config.num_mel_bins + 1))
    with pytest.raises(ValueError, match="attention_mask"):
        model(features, torch.ones(2, 19, dtype=torch.long))


def test_multi_channel_input():
    config = tiny_config(num_channels=2)
    model = build(CPMobileModel, config)
    features = torch.randn(3, 2, 25, config.num_mel_bins)
    with torch.no_grad():
        assert model(features).pooler_output.shape == (3, config.hidden_size)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(3, 25, config.num_mel_bins))


def test_from_the_log_mel_front_end_clips_of_any_length():
    # The registry's front end at its defaults (32 kHz, 256 bins): a 1-s clip is 65 frames.
    extractor = LogMelFeatureExtractor()
    config = CPMobileConfig.from_preset("cp-mobile-6k", num_labels=3)
    model = build(CPMobileForAudioClassification, config)
    generator = torch.Generator().manual_seed(0)
    clips = [0.1 * torch.randn(32000, generator=generator), 0.1 * torch.randn(20000, generator=generator)]
    batch = extractor(clips, sampling_rate=32000, return_tensors="pt")
    assert batch["input_values"].shape == (2, 65, 256)
    with torch.no_grad():
        batched = model(**batch).logits
        for i, clip in enumerate(clips):
            alone = model(**extractor(clip, sampling_rate=32000, return_tensors="pt")).logits
            torch.testing.assert_close(batched[i : i + 1], alone, rtol=0, atol=1e-5)


# ---- the two layouts and their heads -------------------------------------------------------------------


def test_reference_layout_the_output_block_is_the_classifier():
    config = tiny_config()
    model = build(CPMobileForAudioClassification, config)
    assert model.cp_mobile.output_block is None and isinstance(model.classifier, CPMobileOutputBlock)
    features, mask = padded_batch(config, [30, 17])
    with torch.no_grad():
        outputs = model(features, mask)
        encoder = model.cp_mobile(features, mask)
    # The clip embedding is the mean of the last map over frequency and the clip's own columns.
    last, columns = encoder.last_hidden_state, encoder.attention_mask
    for i in range(2):
        valid = int(columns[i].sum())
        expected = last[i, :, :, :valid].mean(dim=(1, 2))
        torch.testing.assert_close(encoder.pooler_output[i], expected, rtol=0, atol=1e-6)
        logits = model.classifier.norm(model.classifier.conv(last[i : i + 1, :, :, :valid])).mean(dim=(2, 3))
        torch.testing.assert_close(outputs.logits[i : i + 1], logits, rtol=0, atol=1e-5)
    assert encoder.pooler_output.shape == (2, config.stage_channels[-1]) == (2, config.hidden_size)


def test_contrastasc_layout_embeds_then_classifies_by_scaled_cosine():
    config = tiny_config(**CONTRASTASC, cosine_scale=30.0)
    model = build(CPMobileForAudioClassification, config)
    assert isinstance(model.cp_mobile.output_block, CPMobileOutputBlock)
    assert isinstance(model.classifier, CosineClassifier) and model.classifier.scale == 30.0
    features, mask = padded_batch(config, [30, 17])
    with torch.no_grad():
        logits = model(features, mask).logits
        embedding = model.cp_mobile(features, mask).pooler_output
    assert embedding.shape == (2, config.embedding_size) and config.hidden_size == config.embedding_size
    weight = model.classifier.weight
    cosines = torch.nn.functional.cosine_similarity(embedding[:, None, :], weight[None, :, :], dim=-1)
    torch.testing.assert_close(logits, 30.0 * cosines, rtol=0, atol=1e-5)
    assert logits.abs().max() <= 30.0 + 1e-5


def test_contrastasc_layout_linear_head_and_layer_norm():
    config = tiny_config(embedding_size=6, output_norm="layer")
    model = build(CPMobileForAudioClassification, config)
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.in_features == 6
    norm = model.cp_mobile.output_block.norm
    assert isinstance(norm, torch.nn.LayerNorm) and norm.normalized_shape == (6,)
    features = torch.randn(2, 21, config.num_mel_bins)
    with torch.no_grad():
        embedding = model.cp_mobile(features).pooler_output
        torch.testing.assert_close(model(features).logits, model.classifier(embedding), rtol=0, atol=1e-6)
        # The LayerNorm normalises each time-frequency position over the embedding channels.
        block = model.cp_mobile.output_block
        conv = block.conv(model.cp_mobile(features).last_hidden_state)
        by_position = torch.nn.functional.layer_norm(
            conv.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, config.layer_norm_eps
        )
        torch.testing.assert_close(embedding, by_position.mean(dim=(1, 2)), rtol=0, atol=1e-5)


def test_no_labels_gives_the_clip_embedding_as_logits():
    for layout in ({}, {"embedding_size": 6}):
        config = tiny_config(num_labels=0, **layout)
        model = build(CPMobileForAudioClassification, config)
        features = torch.randn(2, 21, config.num_mel_bins)
        with torch.no_grad():
            embedding = model.cp_mobile(features).pooler_output
            torch.testing.assert_close(model(features).logits, embedding)


def test_single_label_loss_is_cross_entropy_and_training_lowers_it():
    config = tiny_config(**CONTRASTASC, problem_type="single_label_classification")
    model = build(CPMobileForAudioClassification, config).train()
    features, mask = padded_batch(config, [40, 33, 25, 40])
    labels = torch.tensor([0, 1, 2, 3])
    outputs = model(features, mask, labels=labels)
    torch.testing.assert_close(outputs.loss, torch.nn.functional.cross_entropy(outputs.logits, labels))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model(features, mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# ---- GRN and the cosine classifier ------------------------------------------------------------------------


def test_global_response_norm_formula_and_identity_at_init():
    grn = GlobalResponseNorm()
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(grn(x), x)  # gamma = beta = 0
    with torch.no_grad():
        grn.gamma.fill_(0.7)
        grn.beta.fill_(-0.2)
    norms = x.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()  # (2, 3, 1, 1), one per channel
    relative = norms / (norms.mean(dim=1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grn(x), 0.7 * x * relative - 0.2 + x)


def test_cosine_classifier_is_scaled_cosine_and_ignores_the_embedding_norm():
    head = CosineClassifier(4, 3, scale=56)
    h = torch.randn(5, 4)
    logits = head(h)
    expected = (
        56 * torch.nn.functional.normalize(h, dim=-1) @ torch.nn.functional.normalize(head.weight, dim=-1).T
    )
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(head(7.5 * h), logits)
    assert logits.abs().max() <= 56 + 1e-4
    logits.sum().backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    assert [name for name, _ in head.named_parameters()] == ["weight"]  # no bias


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"in_features": 0, "num_labels": 3, "scale": 1.0}, "in_features"),
        ({"in_features": 4, "num_labels": 2.0, "scale": 1.0}, "num_labels"),
        ({"in_features": 4, "num_labels": 3, "scale": 0.0}, "scale"),
        ({"in_features": 4, "num_labels": 3, "scale": math.inf}, "scale"),
    ],
)
def test_cosine_classifier_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CosineClassifier(**kwargs)


# ---- config and layer ids -----------------------------------------------------------------------------


def test_config_round_trips_through_json_and_derives_its_sizes(tmp_path):
    config = CPMobileConfig.from_preset("cp-mobile-dcase23", num_labels=10, embedding_size=64)
    config.save_pretrained(tmp_path)
    loaded = CPMobileConfig.from_pretrained(tmp_path)
    assert loaded.strides == config.strides and isinstance(loaded.strides[0], tuple)
    assert loaded.n_blocks == (3, 2, 1) and loaded.use_grn
    assert loaded.hidden_size == 64 and loaded.num_hidden_layers == 6
    assert CPMobileConfig().hidden_size == 104
    with pytest.raises(ValueError, match="unknown CP-Mobile preset"):
        CPMobileConfig.from_preset("cp-mobile-huge")


def test_layer_ids_for_layer_wise_lr_decay():
    config = tiny_config(embedding_size=6)
    model = CPMobileForAudioClassification(config)
    ids = model.layer_ids()
    top = config.num_hidden_layers + 1
    for name, layer_id in ids.items():
        if ".stem." in name:
            assert layer_id == 0, name
        elif ".blocks." in name:
            assert layer_id == int(name.split(".blocks.")[1].split(".")[0]) + 1, name
        else:
            assert name.startswith(("cp_mobile.output_block.", "classifier.")) and layer_id == top, name
    assert set(ids.values()) == set(range(model.num_layer_ids))
    groups = build_param_groups(model, weight_decay=0.01, layer_decay=0.5)
    scales = {group["layer_id"]: group["lr_scale"] for group in groups}
    assert scales[top] == 1.0 and scales[0] == 0.5**top


# ---- the Hub ----------------------------------------------------------------------------------------------

_REMOTE_SCRIPT = """
    import numpy as np, torch
    from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

    repo, wave_file, logits_file = sys.argv[2:5]
    model = AutoModelForAudioClassification.from_pretrained(repo, trust_remote_code=True).eval()
    encoder = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    fe = AutoFeatureExtractor.from_pretrained(repo, trust_remote_code=True)
    assert "hf_audiorep" not in sys.modules
    inputs = fe(np.load(wave_file), sampling_rate=32000, return_tensors="pt")
    with torch.no_grad():
        np.save(logits_file, model(**inputs).logits.numpy())
        print("embedding", tuple(encoder(**inputs).pooler_output.shape))
"""


@pytest.mark.slow  # a fresh Python imports transformers and compiles the remote code
def test_remote_code_runs_the_contrastasc_layout_without_the_library(tmp_path):
    config = CPMobileConfig.from_preset("cp-mobile-6k", num_labels=4, **CONTRASTASC)
    model = build(CPMobileForAudioClassification, config)
    extractor = LogMelFeatureExtractor()
    model.save_pretrained(tmp_path / "model")
    extractor.save_pretrained(tmp_path / "model")
    repo = prepare_repo(tmp_path / "model", tmp_path / "repo", repo_id="someone/cp-mobile")
    wave = np.random.default_rng(0).normal(scale=0.1, size=24000).astype(np.float32)
    np.save(tmp_path / "wave.npy", wave)
    proc = run_without_library(_REMOTE_SCRIPT, str(repo), "wave.npy", "logits.npy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"embedding (1, {config.embedding_size})" in proc.stdout
    with torch.no_grad():
        expected = model(**extractor(wave, sampling_rate=32000, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, atol=1e-5, rtol=0)


def test_initialisation_is_the_cp_jku_one():
    config = CPMobileConfig.from_preset("cp-mobile-dcase23", num_labels=10, embedding_size=32)
    torch.manual_seed(0)
    model = CPMobileForAudioClassification(config)
    conv = model.cp_mobile.blocks[5].project.conv.weight  # 216 -> 168 channels, 1x1: fan-out 168
    assert abs(conv.std().item() / math.sqrt(2 / 168) - 1) < 0.05
    assert abs(model.classifier.weight.std().item() / 0.01 - 1) < 0.1 and not model.classifier.bias.any()
    grn = model.cp_mobile.blocks[0].grn
    assert not grn.gamma.any() and not grn.beta.any()
    norm = model.cp_mobile.blocks[0].expand.norm
    assert (norm.weight == 1).all() and not norm.bias.any() and (norm.running_var == 1).all()
