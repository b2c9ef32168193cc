"""CAT / EAT: the shared model checks, plus the stem's masked convolution, inverse block masking, the teacher
targets, the pre-training losses and the parameter counts of the reference presets."""

import math

import pytest
import torch
from model_test_mixin import ModelTesterMixin
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
)

from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.modeling.configuration_cat import CAT_PRESETS, CATConfig
from hf_audiorep.modeling.modeling_cat import (
    CATForAudioClassification,
    CATForPreTraining,
    CATModel,
    MultiResolutionStem,
    compute_block_mask_2d,
    make_teacher_targets,
)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    stem_channels=(8, 16),
    stem_depths=(1, 1),
    max_length=64,
    num_mel_bins=32,
    num_labels=5,
    decoder_dim=16,
    decoder_groups=4,
    decoder_layers=2,
    average_top_k_layers=2,
    rr_embedding_dim=8,
    clone_batch=1,
    mask_ratio=0.5,
    mask_length=3,
)


def tiny_config(**overrides) -> CATConfig:
    return CATConfig(**{**TINY, **overrides})


def num_patches_of(config, num_frames) -> int:
    return math.ceil(num_frames / config.patch_size) * (config.num_mel_bins // config.patch_size)


def pretraining_batch(config, inputs, seed=1):
    """Fixed masks, teacher targets and RR targets: the pre-training output is then a per-clip function."""
    batch, num_frames = inputs["input_values"].shape[:2]
    grid_t = math.ceil(num_frames / config.patch_size)
    generator = torch.Generator().manual_seed(seed)
    mask = compute_block_mask_2d(
        batch * config.clone_batch,
        grid_t,
        config.num_mel_bins // config.patch_size,
        config.mask_ratio,
        config.mask_length,
        generator=generator,
    )
    targets = torch.randn(batch, num_patches_of(config, num_frames), config.hidden_size, generator=generator)
    rr_targets = torch.randn(batch, config.rr_embedding_dim, generator=generator)
    return {**inputs, "mask": mask, "teacher_targets": targets, "rr_targets": rr_targets}


class _CATTester(ModelTesterMixin):
    model_classes = (CATModel, CATForAudioClassification, CATForPreTraining)
    expected_non_persistent_buffers = ("pos_embed",)
    invalid_config_values = [
        ("hidden_size", 30),
        ("num_attention_heads", 3),
        ("num_hidden_layers", 0),
        ("max_length", 60),
        ("num_mel_bins", 40),
        ("patch_size", 12),  # the stem's strides 4, 2, p/8 need a multiple of 8
        ("stem_channels", (8,)),
        ("stem_depths", (1, -1)),
        ("stem_kernel_size", 4),
        ("pooling", "max"),
        ("finetune_mask_ratio", 1.0),
        ("mask_ratio", -0.1),
        ("mask_length", 0),
        ("clone_batch", 0),
        ("decoder_groups", 5),
        ("decoder_kernel_size", 2),
        ("average_top_k_layers", 3),
        ("rr_embedding_dim", -1),
        ("rr_layer", 2),
        ("rr_loss_type", "kl"),
        ("cls_rr_reduction", "max"),
        ("drop_path_rate", 1.5),
        ("layer_norm_eps", 0.0),
        ("hidden_act", "no-such-activation"),
        ("ema_end_decay", 0.5),
    ]
    variant: dict = {}

    def get_config(self, **overrides):
        return tiny_config(**{**self.variant, **overrides})

    def expected_sequence_length(self, config, inputs):
        return 1 + num_patches_of(config, inputs["input_values"].shape[1])

    def get_pretraining_inputs(self, config, inputs):
        return pretraining_batch(config, inputs)

    def expected_pretraining_sequence_length(self, config, inputs):
        num_patches = num_patches_of(config, inputs["input_values"].shape[1])
        return 1 + max(1, int(num_patches * (1 - config.mask_ratio)))


class TestCAT(_CATTester):
    """The multi-resolution stem, CLS pooling, RR from the final CLS."""


class TestEATMeanPooling(_CATTester):
    """EAT's plain patch embedding, mean pooling, RR from an intermediate block's FFN output."""

    variant = {"use_multi_resolution_stem": False, "pooling": "mean", "rr_layer": 0}


class TestCATTransformerDecoder(_CATTester):
    """The stem with BAT's transformer decoder in place of EAT's CNN (``decoder_type="transformer"``)."""

    variant = {
        "decoder_type": "transformer",
        "transformer_decoder_dim": 16,
        "transformer_decoder_layers": 2,
        "transformer_decoder_heads": 2,
    }
    # The CNN decoder's groups and kernel are not read with the transformer decoder; its heads are.
    invalid_config_values = [
        *(pair for pair in _CATTester.invalid_config_values if not pair[0].startswith("decoder_")),
        ("transformer_decoder_heads", 3),
        ("decoder_type", "lstm"),
    ]


# ---- presets and parameter counts --------------------------------------------------------------


def test_reference_parameter_counts():
    with torch.device("meta"):
        cat = CATModel(CATConfig.from_preset("cat-base"))
        eat = CATModel(CATConfig.from_preset("eat-base"))
        eat_pretraining = CATForPreTraining(CATConfig.from_preset("eat-base"))

    def count(module):
        return sum(p.numel() for p in module.parameters())

    # Architecture notes §2(d): MRB 10,805,888; one ViT-B block 7,087,872. The encoder is MRB + 11 blocks +
    # CLS (768) + pre_norm (1,536) = 88,774,784: the notes' 88.77 M omits data2vec's context-encoder
    # LayerNorm on [CLS, patches], which the reference has (and EAT checkpoints store).
    assert count(cat.stem) == 10_805_888
    assert count(cat.blocks[0]) == 7_087_872
    assert count(cat) == 88_774_784
    assert count(eat) == 85_254_144
    # EAT's README "88M" is the encoder plus its 6-layer CNN decoder.
    assert count(eat_pretraining) == 87_840_000
    assert cat.config.num_hidden_layers == 11 and eat.config.num_hidden_layers == 12


def test_presets_and_overrides():
    small = CATConfig.from_preset("cat-small", num_labels=3)
    assert (small.hidden_size, small.num_hidden_layers, small.num_labels) == (192, 4, 3)
    assert small.average_top_k_layers == small.num_hidden_layers
    assert set(CAT_PRESETS) == {"cat-base", "cat-small", "eat-base"}
    assert CATConfig.from_preset("eat-base").rr_embedding_dim == 0
    with pytest.raises(ValueError, match="unknown CAT preset"):
        CATConfig.from_preset("cat-huge")


def test_layer_ids_for_layer_decay():
    model = CATForPreTraining(tiny_config())
    ids = model.layer_ids()
    depth = model.config.num_hidden_layers
    assert ids["cat.stem.stage_embeds.0.proj.weight"] == 0
    assert ids["cat.cls_token"] == 0 and ids["cat.pre_norm.weight"] == 0
    assert ids["cat.blocks.1.mlp.fc1.weight"] == 2
    assert ids["decoder.proj.weight"] == depth + 1 and ids["rr_projector.weight"] == depth + 1
    assert set(ids.values()) == set(range(model.num_layer_ids))


# ---- the stem ---------------------------------------------------------------------------------------


def test_stem_masked_convolution_does_not_leak_hidden_patches():
    config = tiny_config(stem_depths=(2, 2))
    torch.manual_seed(0)
    stem = MultiResolutionStem(config).eval()
    grid_t, grid_f = 4, 2
    spectrogram = torch.randn(1, grid_t * 16, grid_f * 16)
    visible = torch.tensor([[True, False, False, True, True, True, False, True]])
    changed = spectrogram.clone().view(1, grid_t, 16, grid_f, 16)
    hidden = ~visible.view(1, grid_t, grid_f)
    changed[
        hidden.nonzero(as_tuple=True)[0],
        hidden.nonzero(as_tuple=True)[1],
        :,
        hidden.nonzero(as_tuple=True)[2],
        :,
    ] += 5.0
    changed = changed.view_as(spectrogram)
    with torch.no_grad():
        gated = stem(spectrogram, visible)[0, visible[0]]
        gated_changed = stem(changed, visible)[0, visible[0]]
        open_ = stem(spectrogram)[0, visible[0]]
        open_changed = stem(changed)[0, visible[0]]
    assert gated.shape == (int(visible.sum()), config.hidden_size)
    torch.testing.assert_close(gated_changed, gated, rtol=0, atol=1e-5)
    # Without the gate the 5x5 depthwise convs carry hidden content into visible patches.
    assert (open_changed - open_).abs().max() > 1e-3


def test_stem_runs_in_fp32_under_autocast_and_returns_the_input_dtype():
    stem = MultiResolutionStem(tiny_config()).eval()
    spectrogram = torch.randn(2, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = stem(spectrogram)
    with torch.no_grad():
        reference = stem(spectrogram)
    assert tokens.dtype == torch.float32 and tokens.shape == (2, 4, 32)
    torch.testing.assert_close(tokens, reference)


def test_encoder_with_a_mask_sees_only_visible_patches():
    config = tiny_config()
    model = CATModel(config).eval()
    inputs = torch.randn(2, 64, 32)
    mask = compute_block_mask_2d(2, 4, 2, 0.5, 3, generator=torch.Generator().manual_seed(0))
    changed = inputs.clone().view(2, 4, 16, 2, 16)
    for b, t, f in (mask.view(2, 4, 2)).nonzero().tolist():
        changed[b, t, :, f, :] = torch.randn(16, 16)
    with torch.no_grad():
        out = model(inputs, mask=mask).last_hidden_state
        out_changed = model(changed.view_as(inputs), mask=mask).last_hidden_state
    assert out.shape == (2, 1 + 4, config.hidden_size)
    torch.testing.assert_close(out_changed, out, rtol=0, atol=1e-5)
    with pytest.raises(TypeError, match="bool"):
        model(inputs, mask=mask.long())
    uneven = mask.clone()
    uneven[0] = True
    with pytest.raises(ValueError, match="same number"):
        model(inputs, mask=uneven)
    with pytest.raises(ValueError, match="num_patches"):
        model(inputs, mask=mask[:, :4])


def test_bad_inputs_raise_clear_errors():
    model = CATModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="mel bins"):
        model(torch.randn(1, 32, 31))
    with pytest.raises(ValueError, match="max_length"):
        model(torch.randn(1, 80, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randn(1, 32, 32), attention_mask=torch.ones(1, 31))


# ---- inverse block masking ----------------------------------------------------------------------


def _visible_neighbours(visible: torch.Tensor) -> float:
    """Mean number of visible 4-neighbours of a visible cell, for (B, T, F) bool maps."""
    padded = torch.nn.functional.pad(visible.float(), (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return (neighbours * visible).sum().item() / visible.sum().item()


def test_block_mask_hides_exactly_the_ratio_in_contiguous_blocks():
    batch, grid_t, grid_f = 64, 64, 8
    mask = compute_block_mask_2d(batch, grid_t, grid_f, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (batch, grid_t * grid_f)
    # EAT: 512 patches, int(0.2 * 512) = 102 visible, 410 masked in every row.
    assert torch.equal(mask.sum(dim=1), torch.full((batch,), 410))
    visible = ~mask.view(batch, grid_t, grid_f)
    random = torch.rand(batch, grid_t * grid_f, generator=torch.Generator().manual_seed(1))
    uniform = torch.zeros(batch, grid_t * grid_f, dtype=torch.bool)
    uniform.scatter_(1, random.topk(102, dim=1).indices, True)
    blocky, scattered = _visible_neighbours(visible), _visible_neighbours(uniform.view_as(visible))
    assert blocky > 2.0 * scattered, (blocky, scattered)


def test_block_mask_is_reproducible_with_a_generator_and_validates():
    def draw(seed):
        return compute_block_mask_2d(4, 16, 8, 0.8, 5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))
    # A tiny grid (fewer cells than one block) still gives the exact count.
    assert torch.equal(compute_block_mask_2d(3, 2, 2, 0.5, 5).sum(dim=1), torch.full((3,), 2))
    with pytest.raises(ValueError, match="mask_ratio"):
        compute_block_mask_2d(2, 4, 4, mask_ratio=1.0)
    with pytest.raises(ValueError, match="grid_t"):
        compute_block_mask_2d(2, 0, 4)


# ---- teacher targets -----------------------------------------------------------------------------


def test_teacher_targets_normalise_layers_then_tokens():
    torch.manual_seed(0)
    layers = [torch.randn(2, 1 + 10, 6) * (i + 1) + i for i in range(3)]
    only_instance = make_teacher_targets(layers, top_k=1, instance_norm=True, layer_norm=False)
    assert only_instance.shape == (2, 10, 6) and only_instance.dtype == torch.float32
    # Every channel of every clip: zero mean, unit (biased) variance over the patch tokens, CLS excluded.
    torch.testing.assert_close(only_instance.mean(dim=1), torch.zeros(2, 6), rtol=0, atol=1e-5)
    torch.testing.assert_close(only_instance.var(dim=1, unbiased=False), torch.ones(2, 6), rtol=0, atol=1e-3)
    expected = (layers[-1][:, 1:] - layers[-1][:, 1:].mean(1, keepdim=True)) / layers[-1][:, 1:].std(
        1, unbiased=False, keepdim=True
    )
    torch.testing.assert_close(only_instance, expected, rtol=0, atol=1e-3)
    full = make_teacher_targets(layers, top_k=2)
    averaged = (
        make_teacher_targets(layers[1:2], 1, layer_norm=False)
        + make_teacher_targets(layers[2:], 1, layer_norm=False)
    ) / 2
    torch.testing.assert_close(full, torch.nn.functional.layer_norm(averaged, (6,)))
    torch.testing.assert_close(full.mean(dim=-1), torch.zeros(2, 10), rtol=0, atol=1e-5)
    # Padding left out of the statistics: the real tokens are normalised as if alone.
    patch_mask = torch.ones(2, 10)
    patch_mask[1, 6:] = 0
    padded = make_teacher_targets(layers, 1, layer_norm=False, patch_mask=patch_mask)
    alone = make_teacher_targets([layers[-1][1:2, :7]], 1, layer_norm=False)
    torch.testing.assert_close(padded[1:2, :6], alone, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="top_k"):
        make_teacher_targets(layers, top_k=4)
    with pytest.raises(TypeError, match="sequence"):
        make_teacher_targets(layers[0], top_k=1)


def test_teacher_targets_need_no_gradient():
    model = CATModel(tiny_config()).eval()
    outputs = model(torch.randn(2, 64, 32), output_ffn_states=True)
    assert len(outputs.ffn_states) == 2 and outputs.ffn_states[0].shape == (2, 9, 32)
    targets = make_teacher_targets(outputs.ffn_states, top_k=2)
    assert not targets.requires_grad and targets.grad_fn is None


# ---- pre-training ----------------------------------------------------------------------------------


def _pretraining_setup(**overrides):
    config = tiny_config(clone_batch=3, **overrides)
    torch.manual_seed(0)
    model = CATForPreTraining(config)
    inputs = {"input_values": torch.randn(2, 64, 32, generator=torch.Generator().manual_seed(0))}
    return model, pretraining_batch(config, inputs)


def test_pretraining_losses_follow_the_reference_definitions():
    model, batch = _pretraining_setup()
    model.eval()
    config = model.config
    with torch.no_grad():
        out = model(**batch)
    rows, clones, hidden = 6, 3, config.hidden_size
    assert out.predictions.shape == (rows, 8, hidden) and out.student_cls.shape == (rows, hidden)
    assert torch.equal(out.mask, batch["mask"])
    for part in (out.loss, out.patch_loss, out.cls_loss, out.rr_loss):
        assert part.ndim == 0 and torch.isfinite(part)
    targets = batch["teacher_targets"].repeat_interleave(clones, 0)
    masked = batch["mask"]
    patch = ((out.predictions - targets).pow(2).sum(-1) / math.sqrt(hidden))[masked].mean()
    torch.testing.assert_close(out.patch_loss, patch)
    cls = (out.student_cls - targets.mean(1)).pow(2).sum(-1) / math.sqrt(hidden)
    torch.testing.assert_close(out.cls_loss, cls.sum())
    torch.testing.assert_close(out.loss, out.patch_loss + out.cls_loss + out.rr_loss)

    model.config.cls_rr_reduction = "mean"
    with torch.no_grad():
        mean = model(**batch)
    # "sum" multiplies the per-sample terms by the number of student rows (fairseq's sample-size weighting).
    torch.testing.assert_close(out.cls_loss / mean.cls_loss, torch.tensor(float(rows)))
    torch.testing.assert_close(out.rr_loss / mean.rr_loss, torch.tensor(float(rows)))
    torch.testing.assert_close(mean.patch_loss, out.patch_loss)


@pytest.mark.parametrize("loss_type", ["cosine", "l1"])
def test_rr_loss_types(loss_type):
    model, batch = _pretraining_setup(rr_loss_type=loss_type, cls_rr_reduction="mean")
    model.eval()
    captured = {}
    model.rr_projector.register_forward_hook(lambda m, args, out: captured.update(out=out))
    with torch.no_grad():
        out = model(**batch)
    prediction, target = captured["out"], batch["rr_targets"].repeat_interleave(3, 0)
    if loss_type == "cosine":
        expected = 1 - torch.nn.functional.cosine_similarity(prediction, target, dim=-1)
    else:
        expected = (prediction - target).abs().sum(-1)
    torch.testing.assert_close(out.rr_loss, (expected / math.sqrt(8)).mean())


def test_rr_gradient_reaches_the_projector_and_intermediate_layers():
    model, batch = _pretraining_setup(rr_layer=0, cls_loss_weight=0.0)
    model.train()
    captured = {}
    model.rr_projector.register_forward_hook(lambda m, args, out: captured.update(source=args[0]))
    out = model(**batch)
    out.rr_loss.backward()
    assert model.rr_projector.weight.grad.abs().sum() > 0
    # rr_layer=0 reads block 0's FFN output: block 0 gets an RR gradient, block 1 none.
    assert model.cat.blocks[0].mlp.fc2.weight.grad.abs().sum() > 0
    assert (
        model.cat.blocks[1].mlp.fc2.weight.grad is None
        or model.cat.blocks[1].mlp.fc2.weight.grad.abs().sum() == 0
    )
    assert captured["source"].shape == (6, 32)


def test_pretraining_input_errors():
    model, batch = _pretraining_setup()
    with pytest.raises(ValueError, match="make_teacher_targets"):
        model(batch["input_values"])
    with pytest.raises(ValueError, match="teacher_targets must be"):
        model(batch["input_values"], teacher_targets=batch["teacher_targets"][:, :4])
    with pytest.raises(ValueError, match="rr_targets must be"):
        model(batch["input_values"], teacher_targets=batch["teacher_targets"], rr_targets=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="batch \\* clone_batch"):
        model(batch["input_values"], teacher_targets=batch["teacher_targets"], mask=batch["mask"][:2])
    no_rr = CATForPreTraining(tiny_config(rr_embedding_dim=0))
    assert no_rr.rr_projector is None
    with pytest.raises(ValueError, match="no RR projector"):
        no_rr(batch["input_values"], teacher_targets=batch["teacher_targets"], rr_targets=batch["rr_targets"])
    # Without a mask one is drawn per student row, with the configured ratio.
    out = model(batch["input_values"], teacher_targets=batch["teacher_targets"])
    assert out.mask.shape == (6, 8) and torch.equal(out.mask.sum(1), torch.full((6,), 4))
    assert out.rr_loss is None


def test_tiny_pretraining_run_lowers_every_loss_part():
    model, batch = _pretraining_setup()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append([out.patch_loss.item(), out.cls_loss.item(), out.rr_loss.item()])
    first, last = history[0], history[-1]
    for name, start, end in zip(("patch", "cls", "rr"), first, last, strict=True):
        assert end < 0.7 * start, (name, start, end)


# ---- classification and the library's plumbing ------------------------------------------------------


def test_finetune_patch_out_only_in_training():
    config = tiny_config(finetune_mask_ratio=0.5)
    model = CATForAudioClassification(config)
    inputs = torch.randn(2, 64, 32)
    model.train()
    assert model(inputs, output_hidden_states=True).hidden_states[-1].shape == (2, 1 + 4, 32)
    model.eval()
    assert model(inputs, output_hidden_states=True).hidden_states[-1].shape == (2, 1 + 8, 32)


def test_auto_classes_and_feature_extractor_after_import(tmp_path):
    import hf_audiorep

    assert hf_audiorep.config_from_preset("cat-small").model_type == "audiorep-cat"
    config = tiny_config()
    CATForPreTraining(config).save_pretrained(tmp_path)
    AudioFbankFeatureExtractor(num_mel_bins=32, target_length=64).save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is CATModel
    assert type(AutoModelForAudioClassification.from_pretrained(tmp_path)) is CATForAudioClassification
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is CATForPreTraining
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(extractor, AudioFbankFeatureExtractor) and extractor.target_length == 64


def test_classifier_trains_with_the_supervised_step():
    from hf_audiorep.objectives import AugmentationArguments, SupervisedClassificationStep

    torch.manual_seed(0)
    model = CATForAudioClassification(tiny_config()).train()
    step = SupervisedClassificationStep(
        AudioFbankFeatureExtractor(num_mel_bins=32, target_length=64),
        AugmentationArguments(mixup_prob=0.0, freq_mask=8, time_mask=16),
    )
    g = torch.Generator().manual_seed(0)
    batch = {
        "waveforms": torch.randn(2, 10240, generator=g) * 0.1,
        "lengths": torch.tensor([10240, 6000]),
        "labels": (torch.rand(2, 5, generator=g) < 0.5).float(),
    }
    loss, _ = step(model, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    assert model.cat.stem.stage_embeds[0].proj.weight.grad.abs().sum() > 0
