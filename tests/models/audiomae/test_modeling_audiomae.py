"""AudioMAE: the shared model checks, plus what is specific to it (patch-out, positions, pooling, presets)."""

import math

import pytest
import torch
from model_test_mixin import ModelTesterMixin

from hf_audiorep.modeling._layers import (
    PostLNBlock,
    PreLNBlock,
    drop_path,
    frames_to_patch_mask,
    get_2d_sincos_pos_embed,
    patch_out_mask_2d,
    random_masking,
)
from hf_audiorep.modeling.configuration_audiomae import AUDIOMAE_PRESETS, AudioMAEConfig
from hf_audiorep.modeling.modeling_audiomae import (
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEModel,
)

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_length=64,
    num_mel_bins=32,
    patch_size=16,
    num_labels=5,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=2,
    decoder_num_attention_heads=2,
    mask_ratio=0.5,
)


def tiny_config(**overrides) -> AudioMAEConfig:
    return AudioMAEConfig(**{**TINY, **overrides})


class _AudioMAETester(ModelTesterMixin):
    model_classes = (AudioMAEModel, AudioMAEForAudioClassification, AudioMAEForPreTraining)
    expected_non_persistent_buffers = ("pos_embed",)
    invalid_config_values = [
        ("hidden_size", 30),  # not divisible by 2 heads... and not by 4
        ("num_attention_heads", 3),
        ("num_attention_heads", 0),
        ("num_hidden_layers", -1),
        ("max_length", 60),
        ("num_mel_bins", 40),
        ("patch_size", 0),
        ("mask_t_prob", 1.0),
        ("mask_f_prob", -0.1),
        ("drop_path_rate", 1.5),
        ("hidden_dropout_prob", 1.0),
        ("attention_probs_dropout_prob", -0.5),
        ("classifier_dropout", 2.0),
        ("mlp_ratio", 0.0),
        ("layer_norm_eps", 0.0),
        ("hidden_act", "no-such-activation"),
        ("decoder_hidden_size", 18),  # not divisible by 4
        ("decoder_num_attention_heads", 3),
        ("decoder_num_hidden_layers", 0),
        ("mask_ratio", 1.0),
    ]
    pooling_overrides: dict = {}

    def get_config(self, **overrides):
        return tiny_config(**{**self.pooling_overrides, **overrides})

    def expected_sequence_length(self, config, inputs):
        grid_t = math.ceil(inputs["input_values"].shape[1] / config.patch_size)
        return 1 + grid_t * config.num_mel_bins // config.patch_size

    def get_pretraining_inputs(self, config, inputs):
        # Fixed noise fixes each clip's mask, whatever else is in the batch.
        batch, num_frames = inputs["input_values"].shape[:2]
        num_patches = math.ceil(num_frames / config.patch_size) * config.num_mel_bins // config.patch_size
        noise = torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(1))
        return {**inputs, "noise": noise}

    def expected_pretraining_sequence_length(self, config, inputs):
        num_patches = self.expected_sequence_length(config, inputs) - 1
        return 1 + int(num_patches * (1 - config.mask_ratio))


class TestAudioMAEGlobalPool(_AudioMAETester):
    """AudioMAE's fine-tuning head: mean of the patch tokens, then fc_norm."""


class TestAudioMAECLSPooling(_AudioMAETester):
    pooling_overrides = {"use_cls_pooling": True}


# ---- shared blocks ---------------------------------------------------------------------------


def test_blocks_follow_their_normalisation_order():
    config = tiny_config(drop_path_rate=0.0)
    torch.manual_seed(0)
    x = torch.randn(2, 7, config.hidden_size)
    pre, post = PreLNBlock(config).eval(), PostLNBlock(config).eval()
    with torch.no_grad():
        h = x + pre.attn(pre.norm1(x))[0]
        torch.testing.assert_close(pre(x), h + pre.mlp(pre.norm2(h)))
        h = post.norm1(x + post.attn(x)[0])
        out = post(x)
        torch.testing.assert_close(out, post.norm2(h + post.mlp(h)))
    # Post-LN output is normalised per token (LayerNorm at init: unit scale, zero shift).
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 7), rtol=0, atol=1e-5)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    ones = torch.ones(4000, 3, 2)
    dropped = drop_path(ones, 0.25, training=True)
    per_sample = dropped[:, 0, 0]
    assert torch.equal(per_sample.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert torch.equal(dropped, per_sample[:, None, None].expand_as(ones))
    assert abs(dropped.mean().item() - 1.0) < 0.05
    assert drop_path(ones, 0.25, training=False) is ones


# ---- positions -------------------------------------------------------------------------------


def test_sincos_pos_embed_follows_mae_formula():
    dim, grid_h, grid_w = 16, 3, 5
    embedding = get_2d_sincos_pos_embed(dim, grid_h, grid_w, cls_token=True)
    assert embedding.shape == (1 + grid_h * grid_w, dim) and embedding.dtype == torch.float32
    assert torch.equal(embedding[0], torch.zeros(dim))
    quarter = dim // 4
    for h in range(grid_h):
        for w in range(grid_w):
            row = embedding[1 + h * grid_w + w]
            for k in range(quarter):
                omega = 1.0 / 10000 ** (k / quarter)
                # MAE order: the column (width) index fills the first half, the row index the second.
                expected = [
                    math.sin(w * omega),
                    math.cos(w * omega),
                    math.sin(h * omega),
                    math.cos(h * omega),
                ]
                got = [row[k], row[quarter + k], row[2 * quarter + k], row[3 * quarter + k]]
                assert [float(g) for g in got] == pytest.approx(expected, abs=1e-6)


def test_sincos_prefix_is_the_embedding_of_a_shorter_grid():
    long = get_2d_sincos_pos_embed(32, 64, 8)
    short = get_2d_sincos_pos_embed(32, 13, 8)
    assert torch.equal(long[: 13 * 8], short)
    with pytest.raises(ValueError, match="divisible by 4"):
        get_2d_sincos_pos_embed(30, 2, 2)


def test_model_positions_are_the_fixed_sincos_grid():
    config = tiny_config()
    model = AudioMAEModel(config)
    expected = get_2d_sincos_pos_embed(config.hidden_size, *config.grid_size, cls_token=True)
    assert torch.equal(model.pos_embed[0], expected)
    assert "pos_embed" not in model.state_dict() and not model.pos_embed.requires_grad


# ---- masks -----------------------------------------------------------------------------------


def test_patch_out_mask_2d_drops_whole_columns_and_rows():
    batch, grid_t, grid_f = 4, 10, 5
    generator = torch.Generator().manual_seed(0)
    ids_keep, mask = patch_out_mask_2d(batch, grid_t, grid_f, 0.2, 0.4, generator=generator)
    keep_t, keep_f = 8, 3  # int(10 * 0.8), int(5 * 0.6)
    assert ids_keep.shape == (batch, keep_t * keep_f) and ids_keep.dtype == torch.long
    assert mask.shape == (batch, grid_t * grid_f) and mask.dtype == torch.bool
    assert torch.equal((~mask).sum(dim=1), torch.full((batch,), keep_t * keep_f))
    for b in range(batch):
        kept = ids_keep[b].tolist()
        assert kept == sorted(kept) and not mask[b, ids_keep[b]].any()
        times, freqs = {i // grid_f for i in kept}, {i % grid_f for i in kept}
        assert len(times) == keep_t and len(freqs) == keep_f
        assert set(kept) == {t * grid_f + f for t in times for f in freqs}
    assert len({tuple(row.tolist()) for row in ids_keep}) > 1, "clips must get independent masks"
    again, _ = patch_out_mask_2d(batch, grid_t, grid_f, 0.2, 0.4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, ids_keep)


def test_patch_out_mask_2d_edge_cases():
    ids_keep, mask = patch_out_mask_2d(2, 4, 2, 0.0, 0.0)
    assert torch.equal(ids_keep, torch.arange(8).expand(2, 8)) and not mask.any()
    ids_keep, _ = patch_out_mask_2d(2, 1, 2, 0.9, 0.0)  # never drops every column
    assert ids_keep.shape == (2, 2)
    with pytest.raises(ValueError, match="mask_t_prob"):
        patch_out_mask_2d(2, 4, 2, 1.0, 0.0)


def test_random_masking_keep_mask_and_restore_agree():
    batch, num_patches = 3, 20
    ids_keep, mask, ids_restore = random_masking(batch, num_patches, 0.75, torch.Generator().manual_seed(1))
    assert ids_keep.shape == (batch, 5) and torch.equal(mask.sum(dim=1), torch.full((batch,), 15))
    values = torch.arange(num_patches).float().expand(batch, -1) + 1
    visible = torch.gather(values, 1, ids_keep)
    placeholders = torch.full((batch, num_patches - 5), -1.0)
    restored = torch.gather(torch.cat([visible, placeholders], dim=1), 1, ids_restore)
    assert torch.equal(restored, torch.where(mask, -1.0, values))
    with pytest.raises(ValueError, match="ratio"):
        random_masking(2, 4, 1.0)


def test_frames_to_patch_mask_keeps_partially_real_patches():
    attention_mask = torch.zeros(2, 40, dtype=torch.long)
    attention_mask[0, :] = 1
    attention_mask[1, :17] = 1  # frame 16 is the only real frame of the second column
    patch_mask = frames_to_patch_mask(attention_mask, patch_size=16, grid_f=2)
    assert patch_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]


# ---- the model -------------------------------------------------------------------------------


def test_patch_out_only_in_training():
    config = tiny_config(mask_t_prob=0.25, mask_f_prob=0.5)  # grid 4 x 2 -> keeps 3 x 1
    model = AudioMAEForAudioClassification(config)
    input_values = torch.randn(2, 64, config.num_mel_bins)
    model.train()
    assert model(input_values, output_hidden_states=True).hidden_states[-1].shape[1] == 1 + 3
    ids_keep = torch.tensor([[0, 5], [1, 2]])
    assert model(input_values, ids_keep=ids_keep, output_hidden_states=True).hidden_states[-1].shape[1] == 3
    model.eval()
    assert model(input_values, output_hidden_states=True).hidden_states[-1].shape[1] == 1 + 8


@pytest.mark.parametrize("use_cls_pooling", [False, True])
def test_padding_with_attention_mask_does_not_change_the_output(use_cls_pooling):
    config = tiny_config(use_cls_pooling=use_cls_pooling)
    torch.manual_seed(0)
    model = AudioMAEForAudioClassification(config).eval()
    clip = torch.randn(1, 32, config.num_mel_bins)
    padded = torch.cat([clip, 5 * torch.randn(1, 32, config.num_mel_bins)], dim=1)
    attention_mask = torch.cat([torch.ones(1, 32), torch.zeros(1, 32)], dim=1).long()
    with torch.no_grad():
        alone = model.audiomae(clip).pooler_output
        masked = model.audiomae(padded, attention_mask=attention_mask).pooler_output
        unmasked = model.audiomae(padded).pooler_output
        torch.testing.assert_close(masked, alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            model(padded, attention_mask=attention_mask).logits, model(clip).logits, rtol=0, atol=1e-5
        )
    assert (unmasked - alone).abs().max() > 1e-3, "without the mask the padding must change the output"


def test_bad_inputs_raise_clear_errors():
    config = tiny_config()
    model = AudioMAEModel(config).eval()
    with pytest.raises(ValueError, match="num_mel_bins"):
        model(torch.randn(1, 64, 40))
    with pytest.raises(ValueError, match="max_length"):
        model(torch.randn(1, 80, config.num_mel_bins))
    with pytest.raises(ValueError, match="input_values"):
        model(torch.randn(64, config.num_mel_bins))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randn(2, 64, config.num_mel_bins), attention_mask=torch.ones(2, 60))
    with pytest.raises(TypeError, match="input_values"):
        model([[0.0] * config.num_mel_bins])


def test_parameter_names_are_timm_names_under_the_prefix():
    model = AudioMAEForAudioClassification(tiny_config(num_hidden_layers=1))
    timm_names = {
        name.replace("audiomae.", "", 1).replace("classifier.", "head.") for name in model.state_dict()
    }
    block = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"}
    expected = {
        "cls_token",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "fc_norm.weight",
        "fc_norm.bias",
        "head.weight",
        "head.bias",
    }
    expected |= {f"blocks.0.{part}.{kind}" for part in block for kind in ("weight", "bias")}
    assert timm_names == expected
    cls_model = AudioMAEModel(tiny_config(use_cls_pooling=True))
    assert "norm.weight" in cls_model.state_dict() and "fc_norm.weight" not in cls_model.state_dict()


def test_layer_ids_for_layer_wise_lr_decay():
    config = tiny_config(num_hidden_layers=3)
    model = AudioMAEForAudioClassification(config)
    ids = model.layer_ids()
    assert ids["audiomae.cls_token"] == 0 and ids["audiomae.patch_embed.proj.weight"] == 0
    assert ids["audiomae.blocks.0.attn.qkv.weight"] == 1 and ids["audiomae.blocks.2.mlp.fc2.bias"] == 3
    assert ids["audiomae.fc_norm.weight"] == 4 and ids["classifier.weight"] == 4
    assert model.audiomae.get_layer_id("blocks.1.norm1.weight") == 2 and model.num_layer_ids == 5
    assert set(ids) == {name for name, _ in model.named_parameters()}


def test_head_init_follows_classifier_init_std_and_backbone_is_xavier():
    torch.manual_seed(0)
    model = AudioMAEForAudioClassification(AudioMAEConfig.from_preset("audiomae-tiny", num_labels=50))
    assert 0.015 < model.classifier.weight.std() < 0.025
    assert torch.equal(model.classifier.bias, torch.zeros(50))
    # AudioMAE's recipe on a pre-trained encoder (a near-zero head) is one option away.
    near_zero = AudioMAEConfig.from_preset("audiomae-tiny", num_labels=50, classifier_init_std=2e-5)
    assert AudioMAEForAudioClassification(near_zero).classifier.weight.std() < 1e-4
    with pytest.raises(ValueError, match="classifier_init_std"):
        AudioMAEConfig(classifier_init_std=-1.0)
    qkv = model.audiomae.blocks[0].attn.qkv.weight
    bound = math.sqrt(6 / sum(qkv.shape))
    assert qkv.abs().max() <= bound and qkv.abs().max() > 0.9 * bound


# ---- configuration ---------------------------------------------------------------------------


def test_base_preset_has_audiomae_parameter_count():
    config = AudioMAEConfig.from_preset("audiomae-base", num_labels=527)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (768, 12, 12)
    assert config.grid_size == (64, 8)
    with torch.device("meta"):
        model = AudioMAEForAudioClassification(config)
    # AudioMAE's fine-tuning log: "number of params (M): 85.66" = 85,659,407 trainable parameters.
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 85_659_407


def test_presets_and_overrides(tmp_path):
    assert set(AUDIOMAE_PRESETS) >= {"audiomae-base", "audiomae-tiny"}
    tiny = AudioMAEConfig.from_preset("audiomae-tiny", max_length=208, num_labels=3)
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.max_length, tiny.num_labels) == (192, 4, 208, 3)
    with pytest.raises(ValueError, match="audiomae-base"):
        AudioMAEConfig.from_preset("audiomae-huge")
    tiny.save_pretrained(tmp_path)

    def fields(config):
        return {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}

    assert fields(AudioMAEConfig.from_pretrained(tmp_path)) == fields(tiny)


def test_config_rejects_wrong_types():
    with pytest.raises(TypeError, match="hidden_size"):
        tiny_config(hidden_size=32.0)
    with pytest.raises(TypeError, match="use_cls_pooling"):
        tiny_config(use_cls_pooling="yes")
