"""AudioMAE masked-autoencoder pre-training: the objective, its step, and recipe -> fine-tuning recipe."""

import json
import math
from pathlib import Path

import pytest
import torch
from recipe_utils import load_recipe
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel

from hf_audiorep.modeling import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
    AudioMAEForPreTraining,
    AudioMAEModel,
)
from hf_audiorep.modeling._layers import get_2d_sincos_pos_embed
from hf_audiorep.objectives import MaskedAutoencoderStep, evaluate_reconstruction

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_length=64,
    num_mel_bins=32,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
)


def tiny_model(seed: int = 0, **overrides) -> AudioMAEForPreTraining:
    torch.manual_seed(seed)
    return AudioMAEForPreTraining(AudioMAEConfig(**{**TINY, **overrides})).eval()


def noise_for(batch: int, num_patches: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, num_patches, generator=torch.Generator().manual_seed(seed))


# ---- the objective ---------------------------------------------------------------------------


def test_patchify_orders_patches_row_major_and_inverts():
    model = tiny_model()
    x = torch.randn(2, 64, 32)
    patches = model.patchify(x)
    assert patches.shape == (2, 8, 256)  # 4 x 2 grid of 16 x 16
    # Patch t * grid_f + f holds rows (frames) t*16.. and columns (bins) f*16.., flattened frame-major.
    torch.testing.assert_close(patches[1, 2 * 2 + 1], x[1, 32:48, 16:32].reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(model.unpatchify(patches), x, rtol=0, atol=0)
    # A partial last patch is zero-padded, as the encoder pads it.
    short = model.patchify(x[:, :40])
    assert short.shape == (2, 6, 256)
    assert torch.equal(short[:, -1].reshape(2, 16, 16)[:, 8:], torch.zeros(2, 8, 16))
    torch.testing.assert_close(model.unpatchify(short, num_frames=40), x[:, :40], rtol=0, atol=0)


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_is_mse_on_masked_patches_only(norm_pix_loss):
    model = tiny_model(norm_pix_loss=norm_pix_loss, mask_ratio=0.75)
    x = torch.randn(3, 64, 32)
    with torch.no_grad():
        out = model(x, noise=noise_for(3, 8))
    assert out.logits.shape == (3, 8, 256) and out.mask.dtype == torch.bool
    assert torch.equal(out.mask.sum(dim=1), torch.full((3,), 6))  # int(8 * 0.25) = 2 visible
    target = model.patchify(x)
    if norm_pix_loss:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (out.logits - target).pow(2).mean(-1)
    torch.testing.assert_close(out.loss, per_patch[out.mask].mean())
    assert abs(out.loss - per_patch.mean()) > 1e-4, "visible patches must not count"


def test_masks_follow_the_ratio_the_generator_and_the_noise():
    model = tiny_model()
    x = torch.randn(4, 64, 32)
    with torch.no_grad():
        first = model(x, generator=torch.Generator().manual_seed(3), output_hidden_states=True)
        again = model(x, generator=torch.Generator().manual_seed(3))
        other = model(
            x, mask_ratio=0.25, generator=torch.Generator().manual_seed(4), output_hidden_states=True
        )
    assert torch.equal(first.mask, again.mask) and torch.equal(first.loss, again.loss)
    assert len({tuple(row.tolist()) for row in first.mask}) > 1, "each clip draws its own mask"
    assert first.hidden_states[-1].shape[1] == 1 + int(8 * (1 - 0.8)) and first.mask.sum() == 4 * 7
    assert other.hidden_states[-1].shape[1] == 1 + 6
    # ids_restore sends patch j to slot ids_restore[j] of [visible (1), mask tokens (7)]: masked iff >= 1.
    assert torch.equal(first.mask, first.ids_restore >= 1)
    with pytest.raises(ValueError, match="noise"):
        model(x, noise=torch.rand(4, 5))
    with pytest.raises(ValueError, match="ratio"):
        model(x, mask_ratio=1.0)


def test_padded_clip_matches_the_clip_alone():
    # Raw-pixel loss, so loud padding would dominate the loss if it were counted.
    model = tiny_model(norm_pix_loss=False)
    clip = torch.randn(1, 32, 32)  # a 2 x 2 patch grid
    # The lowest noise (the one visible patch) lies in the real part, so both runs see the same patch.
    noise = torch.cat([0.5 * noise_for(1, 4), 0.5 + 0.5 * noise_for(1, 4, seed=1)], dim=1)
    mask = torch.tensor([[1] * 32 + [0] * 32])
    with torch.no_grad():
        alone = model(clip, noise=noise[:, :4])
        for seed in (0, 1):
            junk = 5 * torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(seed))
            padded = torch.cat([clip, junk], dim=1)
            masked = model(padded, attention_mask=mask, noise=noise)
            torch.testing.assert_close(masked.loss, alone.loss, rtol=0, atol=1e-6)
            torch.testing.assert_close(masked.logits[:, :4], alone.logits, rtol=0, atol=1e-5)
        unmasked = model(padded, noise=noise)
    assert unmasked.loss > 2 * alone.loss, "without attention_mask the padding patches count"


def test_encoder_checkpoint_loads_into_the_classifier_and_automodel(tmp_path):
    model = tiny_model(drop_path_rate=0.1)
    # Pre-training runs without stochastic depth; the config keeps the fine-tuning rate.
    assert all(block.drop_path.drop_prob == 0.0 for block in model.audiomae.blocks)
    assert model.config.drop_path_rate == 0.1
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("decoder.") for k in saved) and not any("pos_embed" in k for k in saved)

    # AudioMAE's fine-tuning recipe: a near-zero new head on the pre-trained encoder.
    classifier = AudioMAEForAudioClassification.from_pretrained(
        tmp_path, num_labels=3, classifier_init_std=2e-5
    )
    encoder_state = model.audiomae.state_dict()
    for name, tensor in classifier.audiomae.state_dict().items():
        torch.testing.assert_close(tensor, encoder_state[name], rtol=0, atol=0, msg=name)
    assert classifier.classifier.weight.shape == (3, 32) and classifier.classifier.weight.abs().max() < 1e-3
    assert classifier.audiomae.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)
    # By default a new head gets timm's std 0.02: the near-zero head stalls training from scratch.
    default_head = AudioMAEForAudioClassification.from_pretrained(tmp_path, num_labels=3).classifier.weight
    assert 0.005 < default_head.std() < 0.05

    AutoConfig.register("audiorep-audiomae", AudioMAEConfig, exist_ok=True)
    AutoModel.register(AudioMAEConfig, AudioMAEModel, exist_ok=True)
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is AudioMAEModel
    torch.testing.assert_close(encoder.patch_embed.proj.weight, model.audiomae.patch_embed.proj.weight)


def test_decoder_positions_attention_backend_and_layer_ids():
    model = tiny_model()
    expected = get_2d_sincos_pos_embed(16, 4, 2, cls_token=True)
    assert torch.equal(model.decoder.pos_embed[0], expected)
    model.set_attn_implementation("eager")
    assert all(block.attn.config._attn_implementation == "eager" for block in model.decoder.blocks)
    ids = model.layer_ids()
    assert ids["decoder.blocks.0.attn.qkv.weight"] == 3 and ids["audiomae.blocks.0.attn.qkv.weight"] == 1


def test_base_decoder_has_mae_dec512d8b_size():
    config = AudioMAEConfig.from_preset("audiomae-base")
    with torch.device("meta"):
        model = AudioMAEForPreTraining(config)
    width, hidden, pixels = 512, 768, 16 * 16
    block = 12 * width**2 + 13 * width  # qkv + proj + fc1 + fc2 weights and biases, two LayerNorms
    expected = (hidden + 1) * width + width + 8 * block + 2 * width + (width + 1) * pixels
    assert sum(p.numel() for p in model.decoder.parameters()) == expected


# ---- the training step -----------------------------------------------------------------------


def test_step_turns_waveforms_into_a_differentiable_loss():
    model = AudioMAEForPreTraining(AudioMAEConfig(**{**TINY, "num_mel_bins": 128, "max_length": 112})).train()
    feature_extractor = AudioFbankFeatureExtractor(target_length=112)
    batch = {
        "waveforms": 0.1 * torch.randn(2, 16000),
        "lengths": torch.tensor([16000, 8000]),
        "labels": torch.zeros(2, 5),
    }
    loss, logs = MaskedAutoencoderStep(feature_extractor)(model, batch)
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss) and logs == {}
    loss.backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter takes part (DDP)"
    metrics = evaluate_reconstruction(model, [batch, batch], feature_extractor, seed=1)
    assert metrics["eval_num_clips"] == 4 and metrics == evaluate_reconstruction(
        model, [batch, batch], feature_extractor, seed=1
    )
    assert model.training, "evaluation restores training mode"
    with pytest.raises(ValueError, match="mask_ratio"):
        MaskedAutoencoderStep(feature_extractor, mask_ratio=1.5)
    with pytest.raises(TypeError, match="batch_features"):
        MaskedAutoencoderStep(object())


# ---- recipes: pre-train, then fine-tune from the result -------------------------------------

RECIPE_TINY = [
    "--preset",
    "audiomae-tiny",
    "--max_length",
    "208",
    "--clip_seconds",
    "2.0",
    "--num_train_clips",
    "48",
    "--num_eval_clips",
    "16",
    "--num_test_clips",
    "48",
    "--per_device_batch_size",
    "8",
    "--warmup_steps",
    "1",
    "--logging_steps",
    "1",
    "--num_decode_threads",
    "2",
    "--cpu",
    "true",
]


def test_pretrain_recipe_output_fine_tunes_with_the_finetune_recipe(tmp_path):
    pretrained = tmp_path / "pretrained"
    summary = load_recipe("pretrain_audiomae").main(
        RECIPE_TINY
        + [
            "--output_dir",
            str(pretrained),
            "--max_steps",
            "3",
            "--eval_steps",
            "3",
            "--checkpointing_steps",
            "0",
            "--probe_train_clips",
            "32",
        ]
    )
    assert summary["global_step"] == 3 and math.isfinite(summary["eval_reconstruction_loss"])
    assert summary["eval_num_clips"] == 16
    # The frozen encoder is linear-probed at the eval: fitted on 32 train clips, scored on the test split.
    results = json.loads((pretrained / "eval_results.json").read_text())
    assert 0.0 < results["probe_mAP"] <= 1.0 and results["probe_mAP"] == summary["probe_mAP"]
    assert results["split"] == "test" and "32 train clips, frozen encoder" in results["protocol"]
    assert results["eval_history"][-1]["probe_mAP"] == results["probe_mAP"]
    config = json.loads((pretrained / "config.json").read_text())
    assert config["architectures"] == ["AudioMAEForPreTraining"] and config["max_length"] == 208
    assert (pretrained / "preprocessor_config.json").is_file()
    model = AudioMAEForPreTraining.from_pretrained(pretrained)

    finetuned = tmp_path / "finetuned"
    summary = load_recipe("finetune").main(
        RECIPE_TINY
        + [
            "--model_name_or_path",
            str(pretrained),
            "--output_dir",
            str(finetuned),
            "--max_steps",
            "2",
            "--eval_steps",
            "0",
            "--checkpointing_steps",
            "0",
            "--test_split",
            "",
            "--eval_split",
            "",
        ]
    )
    assert summary["global_step"] == 2
    classifier = AudioMAEForAudioClassification.from_pretrained(finetuned)
    assert classifier.config.num_labels > 2 and classifier.config.problem_type == "multi_label_classification"
    # Fine-tuning started from the pre-trained encoder: 2 small steps move it only a little.
    start = model.audiomae.blocks[0].attn.qkv.weight
    after = classifier.audiomae.blocks[0].attn.qkv.weight
    fresh = AudioMAEForAudioClassification(classifier.config).audiomae.blocks[0].attn.qkv.weight
    assert (after - start).abs().max() < 0.1 * (fresh - start).abs().max()
