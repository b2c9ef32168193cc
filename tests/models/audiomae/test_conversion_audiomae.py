"""timm AudioMAE -> hf_audiorep: the converted model computes what timm computes, from safetensors only.

The reference is timm's own ``VisionTransformer`` built as AudioMAE's port is (``img_size=(1024, 128)``,
``patch_size=16``, ``in_chans=1``, ``global_pool="avg"``, hence ``fc_norm``), with random weights at a
small width; the ViT-B layout is checked on the meta device.
"""

import json

import pytest
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from hf_audiorep.conversion import (
    audiomae_timm,
    convert_timm_audiomae_state_dict,
    infer_timm_audiomae_config,
    load_timm_audiomae,
)
from hf_audiorep.modeling import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
    AudioMAEModel,
)
from hf_audiorep.modeling._layers import get_2d_sincos_pos_embed

ATOL = 1e-5


def timm_audiomae(embed_dim=128, depth=2, num_heads=2, num_classes=7, global_pool="avg", seed=0, **kwargs):
    """timm's AudioMAE layout with random weights (norms and biases too, so a swapped key shows)."""
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=(1024, 128),
        patch_size=16,
        in_chans=1,
        num_classes=num_classes,
        global_pool=global_pool,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        **kwargs,
    )
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
        # AudioMAE's positions are the frozen sin-cos table (register-token layouts are left as they are).
        if model.pos_embed.shape[1] == 1 + 64 * 8:
            model.pos_embed.copy_(get_2d_sincos_pos_embed(embed_dim, 64, 8, cls_token=True)[None])
    return model.eval()


def timm_outputs(model, input_values):
    """Token features, pooled features and logits of timm's forward on (B, T, F) as (B, 1, H=T, W=F)."""
    with torch.no_grad():
        features = model.forward_features(input_values[:, None])
        return features, model.forward_head(features, pre_logits=True), model.forward_head(features)


@pytest.fixture(scope="module")
def spectrograms():
    return torch.randn(2, 1024, 128, generator=torch.Generator().manual_seed(0))


def test_converted_model_matches_timm_features_and_logits(tmp_path, spectrograms):
    reference = timm_audiomae()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    model = load_timm_audiomae(path)
    assert isinstance(model, AudioMAEForAudioClassification) and not model.training
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 2, 2)
    assert (config.max_length, config.num_mel_bins, config.num_labels) == (1024, 128, 7)
    assert not config.use_cls_pooling
    features, pooled, logits = timm_outputs(reference, spectrograms)
    with torch.no_grad():
        encoded = model.audiomae(spectrograms)
        ours = model(spectrograms).logits
    torch.testing.assert_close(encoded.last_hidden_state, features, rtol=0, atol=ATOL)
    torch.testing.assert_close(encoded.pooler_output, pooled, rtol=0, atol=ATOL)
    torch.testing.assert_close(ours, logits, rtol=0, atol=ATOL)
    # The directory form reads model.safetensors inside it.
    encoder = load_timm_audiomae(tmp_path, with_head=False)
    assert type(encoder) is AudioMAEModel
    with torch.no_grad():
        torch.testing.assert_close(encoder(spectrograms).pooler_output, pooled, rtol=0, atol=ATOL)


def test_backbone_without_head_and_cls_pooling_with_a_given_config(spectrograms):
    # The AS-2M backbone port has no head; a token-pooled timm ViT ends with `norm` instead of `fc_norm`.
    backbone = timm_audiomae(num_classes=0)
    model = load_timm_audiomae(backbone.state_dict())
    assert type(model) is AudioMAEModel
    with pytest.raises(ValueError, match="no classification head"):
        load_timm_audiomae(backbone.state_dict(), with_head=True)

    token = timm_audiomae(embed_dim=64, num_heads=2, global_pool="token", seed=1)
    config = AudioMAEConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_labels=7, use_cls_pooling=True
    )
    model = load_timm_audiomae(token.state_dict(), config=config)
    features, pooled, logits = timm_outputs(token, spectrograms)
    with torch.no_grad():
        encoded = model.audiomae(spectrograms).last_hidden_state
        torch.testing.assert_close(encoded, features, rtol=0, atol=ATOL)
        torch.testing.assert_close(model(spectrograms).logits, logits, rtol=0, atol=ATOL)
    # 64 channels with 2 heads is not timm's 64-channel-head convention: inference alone would get it wrong.
    assert infer_timm_audiomae_config(token.state_dict()).num_attention_heads == 1
    assert infer_timm_audiomae_config(token.state_dict(), num_attention_heads=2).num_attention_heads == 2


def test_full_size_audiomae_layout_on_the_meta_device():
    with torch.device("meta"):
        reference = VisionTransformer(
            img_size=(1024, 128),
            patch_size=16,
            in_chans=1,
            num_classes=527,
            global_pool="avg",
            weight_init="skip",
        )
    config, converted = convert_timm_audiomae_state_dict(reference.state_dict())
    base = AudioMAEConfig.from_preset("audiomae-base", num_labels=527)
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "mlp_ratio",
        "patch_size",
        "max_length",
        "num_mel_bins",
        "use_cls_pooling",
        "num_labels",
    ):
        assert getattr(config, field) == getattr(base, field), field
    assert config.problem_type == "multi_label_classification" and config.id2label[0] == "Speech"
    with torch.device("meta"):
        ours = AudioMAEForAudioClassification(config)
    expected = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    assert {name: tuple(t.shape) for name, t in converted.items()} == expected
    assert sum(t.numel() for t in converted.values()) == 85_659_407  # AudioMAE's fine-tuning log


def test_trained_positions_are_warned_about_and_dropped():
    reference = timm_audiomae()
    state_dict = reference.state_dict()
    state_dict["pos_embed"] = state_dict["pos_embed"] + 0.01
    with pytest.warns(UserWarning, match="pos_embed differs"):
        _, converted = convert_timm_audiomae_state_dict(state_dict)
    assert not any("pos_embed" in key for key in converted)


def test_raw_mae_encoder_norm_becomes_fc_norm():
    # AudioMAE's pre-training checkpoint: encoder with a final `norm`, plus the MAE decoder.
    encoder = timm_audiomae(num_classes=0, global_pool="token")
    state_dict = {f"module.{k}": v for k, v in encoder.state_dict().items()}  # saved from DDP
    state_dict["module.mask_token"] = torch.zeros(1, 1, 16)
    state_dict["module.decoder_embed.weight"] = torch.zeros(16, 128)
    config, converted = convert_timm_audiomae_state_dict(state_dict)
    assert not config.use_cls_pooling and not any("decoder" in k or "mask_token" in k for k in converted)
    assert torch.equal(converted["audiomae.fc_norm.weight"], state_dict["module.norm.weight"])


def test_pickled_checkpoints_are_refused(tmp_path, monkeypatch):
    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for name in ("pytorch_model.bin", "checkpoint.pth"):
        path = tmp_path / name
        path.write_bytes(b"not read")
        with pytest.raises(ValueError, match="safetensors"):
            load_timm_audiomae(path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_timm_audiomae(tmp_path)
    with pytest.raises(TypeError, match="safetensors"):
        load_timm_audiomae(42)


def test_unsupported_layouts_and_mismatched_configs_raise():
    with pytest.raises(ValueError, match="reg_token"):
        convert_timm_audiomae_state_dict(timm_audiomae(reg_tokens=1).state_dict())
    with pytest.raises(ValueError, match="ls1.gamma"):
        convert_timm_audiomae_state_dict(timm_audiomae(init_values=1e-5).state_dict())
    state_dict = timm_audiomae().state_dict()
    with pytest.raises(ValueError, match="num_hidden_layers"):
        convert_timm_audiomae_state_dict(
            state_dict,
            AudioMAEConfig(hidden_size=128, num_hidden_layers=3, num_attention_heads=2, num_labels=7),
        )
    with pytest.raises(ValueError, match="use_cls_pooling"):
        convert_timm_audiomae_state_dict(
            state_dict,
            AudioMAEConfig(
                hidden_size=128,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_labels=7,
                use_cls_pooling=True,
            ),
        )
    with pytest.raises(ValueError, match="patch_embed"):
        convert_timm_audiomae_state_dict({"cls_token": torch.zeros(1, 1, 8)})


def test_command_line_writes_a_loadable_model_directory(tmp_path, spectrograms):
    reference = timm_audiomae()
    path = tmp_path / "timm.safetensors"
    save_file(reference.state_dict(), str(path))
    out = tmp_path / "converted"
    audiomae_timm.main([str(path), str(out)])
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "audiorep-audiomae"
    feature_extractor = AudioFbankFeatureExtractor.from_pretrained(out)
    assert feature_extractor.target_length == 1024 and feature_extractor.mean == pytest.approx(-4.2677393)
    model = AudioMAEForAudioClassification.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(spectrograms).logits, timm_outputs(reference, spectrograms)[2], rtol=0, atol=ATOL
        )
    audiomae_timm.main([str(path), str(tmp_path / "encoder"), "--no-head"])
    assert type(AudioMAEModel.from_pretrained(tmp_path / "encoder")) is AudioMAEModel
