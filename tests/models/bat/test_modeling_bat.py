"""BAT: the shared model checks, the gated attention (off = timm's plain ViT block, on = the G1 formula), the
transformer decoder, the pre-training losses, presets, parameter counts and the Auto classes."""

import math

import pytest
import torch
from model_test_mixin import ModelTesterMixin
from timm.models.vision_transformer import Block as TimmBlock
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForPreTraining,
)

from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.modeling._bootstrap import BootstrapCNNDecoder, BootstrapTransformerDecoder
from hf_audiorep.modeling._layers import Attention, PreLNBlock, get_2d_sincos_pos_embed
from hf_audiorep.modeling.configuration_bat import BAT_PRESETS, BATConfig
from hf_audiorep.modeling.configuration_cat import CATConfig
from hf_audiorep.modeling.modeling_bat import BATForAudioClassification, BATForPreTraining, BATModel
from hf_audiorep.modeling.modeling_cat import compute_block_mask_2d

TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_length=64,
    num_mel_bins=32,
    num_labels=5,
    transformer_decoder_dim=16,
    transformer_decoder_layers=2,
    transformer_decoder_heads=2,
    average_top_k_layers=2,
    clone_batch=1,
    mask_ratio=0.5,
    mask_length=3,
)


def tiny_config(**overrides) -> BATConfig:
    return BATConfig(**{**TINY, **overrides})


def num_patches_of(config, num_frames) -> int:
    return math.ceil(num_frames / config.patch_size) * (config.num_mel_bins // config.patch_size)


def pretraining_batch(config, inputs, seed=1):
    """Fixed masks and teacher (and RR) targets: the pre-training output is then a per-clip function."""
    batch, num_frames = inputs["input_values"].shape[:2]
    generator = torch.Generator().manual_seed(seed)
    mask = compute_block_mask_2d(
        batch * config.clone_batch,
        math.ceil(num_frames / config.patch_size),
        config.num_mel_bins // config.patch_size,
        config.mask_ratio,
        config.mask_length,
        generator=generator,
    )
    targets = torch.randn(batch, num_patches_of(config, num_frames), config.hidden_size, generator=generator)
    extra = {}
    if config.rr_embedding_dim:
        extra["rr_targets"] = torch.randn(batch, config.rr_embedding_dim, generator=generator)
    return {**inputs, "mask": mask, "teacher_targets": targets, **extra}


class _BATTester(ModelTesterMixin):
    model_classes = (BATModel, BATForAudioClassification, BATForPreTraining)
    expected_non_persistent_buffers = ("pos_embed",)
    invalid_config_values = [
        ("attention_gate", "sigmoid"),
        ("decoder_type", "lstm"),
        ("transformer_decoder_positions", "learned"),
        ("transformer_decoder_dim", 30),
        ("transformer_decoder_heads", 3),
        ("transformer_decoder_layers", 0),
        ("hidden_size", 30),
        ("num_attention_heads", 3),
        ("num_hidden_layers", 0),
        ("max_length", 60),
        ("num_mel_bins", 40),
        ("pooling", "max"),
        ("mask_ratio", 1.0),
        ("clone_batch", 0),
        ("average_top_k_layers", 3),
        ("rr_layer", 2),
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


class TestBAT(_BATTester):
    """The element-wise gate, CLS pooling, the transformer decoder."""


class TestBATHeadwiseGateCNNDecoder(_BATTester):
    """The head-wise gate, mean pooling, EAT's CNN decoder and RR from an intermediate block."""

    variant = {
        "attention_gate": "headwise",
        "pooling": "mean",
        "decoder_type": "cnn",
        "decoder_dim": 16,
        "decoder_groups": 4,
        "decoder_layers": 2,
        "rr_embedding_dim": 8,
        "rr_layer": 0,
    }
    # The transformer decoder's heads are not read with the CNN decoder; the CNN's groups are.
    invalid_config_values = [
        *(pair for pair in _BATTester.invalid_config_values if pair[0] != "transformer_decoder_heads"),
        ("decoder_groups", 5),
        ("decoder_kernel_size", 2),
    ]


# ---- gated attention ------------------------------------------------------------------------------


def _block_and_input(gate: str, seed: int = 0):
    config = tiny_config(hidden_size=64, num_attention_heads=4)
    torch.manual_seed(seed)
    block = PreLNBlock(config, gate=gate).eval()
    # Non-default norms and biases, so a swapped or skipped norm would show.
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    hidden_states = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(seed))
    return config, block, hidden_states


def test_gate_off_is_timms_plain_vit_block_with_the_same_weights():
    config, block, hidden_states = _block_and_input("none")
    # Exactly the plain block's parameters: ungated checkpoints (timm, AudioMAE, EAT, CAT) load unchanged.
    timm_block = TimmBlock(64, 4, mlp_ratio=4.0, qkv_bias=True).eval()
    assert set(block.state_dict()) == set(timm_block.state_dict())
    timm_block.load_state_dict(block.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(block(hidden_states), timm_block(hidden_states), rtol=0, atol=1e-5)
    assert block.attn.gate_proj is None


def _gated_attention_reference(attn: Attention, x: torch.Tensor, gate: str) -> torch.Tensor:
    """``proj(softmax(q k^T / sqrt(d)) v * sigmoid(x W_g + b_g))``, written out (G1 of Qiu et al. 2025)."""
    batch, tokens, width = x.shape
    heads, head_dim = attn.num_heads, width // attn.num_heads
    q, k, v = attn.qkv(x).view(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
    output = (weights @ v).transpose(1, 2)  # (batch, tokens, heads, head_dim)
    scores = torch.sigmoid(x @ attn.gate_proj.weight.T + attn.gate_proj.bias)
    if gate == "headwise":
        assert scores.shape == (batch, tokens, heads)
        output = output * scores[..., None]
    else:
        assert scores.shape == (batch, tokens, width)
        output = output * scores.view(batch, tokens, heads, head_dim)
    return attn.proj(output.reshape(batch, tokens, width))


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_gated_attention_multiplies_the_sdpa_output_before_the_projection(gate):
    config, block, hidden_states = _block_and_input(gate)
    normed = block.norm1(hidden_states)
    with torch.no_grad():
        output, _ = block.attn(normed)
        torch.testing.assert_close(
            output, _gated_attention_reference(block.attn, normed, gate), rtol=0, atol=1e-5
        )
        # The block computes the gate from its normalised input, like q, k and v.
        expected = hidden_states + output
        expected = expected + block.mlp(block.norm2(expected))
        torch.testing.assert_close(block(hidden_states), expected, rtol=0, atol=1e-5)
    gate_width = 4 if gate == "headwise" else 64
    assert tuple(block.attn.gate_proj.weight.shape) == (gate_width, 64)


@pytest.mark.parametrize("gate", ["headwise", "elementwise"])
def test_an_open_gate_is_the_plain_block_and_a_closed_one_removes_attention(gate):
    _, plain, hidden_states = _block_and_input("none")
    _, gated, _ = _block_and_input(gate)
    gated.load_state_dict(plain.state_dict(), strict=False)  # everything but the gate
    with torch.no_grad():
        gated.attn.gate_proj.weight.zero_()
        gated.attn.gate_proj.bias.fill_(40.0)  # sigmoid = 1
        torch.testing.assert_close(gated(hidden_states), plain(hidden_states), rtol=0, atol=1e-5)
        gated.attn.gate_proj.bias.fill_(-40.0)  # sigmoid = 0: only the projection's bias is left
        residual = hidden_states + gated.attn.proj.bias
        expected = residual + gated.mlp(gated.norm2(residual))
        torch.testing.assert_close(gated(hidden_states), expected, rtol=0, atol=1e-5)


def test_gate_is_validated():
    with pytest.raises(ValueError, match="gate must be one of"):
        Attention(tiny_config(), gate="sigmoid")


def test_every_encoder_block_is_gated_as_configured_and_the_decoder_is_not():
    model = BATForPreTraining(tiny_config(attention_gate="headwise"))
    assert all(block.attn.gate == "headwise" for block in model.bat.blocks)
    assert all(block.attn.gate == "none" for block in model.decoder.blocks)
    plain = BATModel(tiny_config(attention_gate="none"))
    assert not any("gate_proj" in name for name in plain.state_dict())


# ---- presets and parameter counts --------------------------------------------------------------


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_of_the_presets():
    with torch.device("meta"):
        base = BATModel(BATConfig.from_preset("bat-base"))
        plain = BATModel(BATConfig.from_preset("bat-base", attention_gate="none"))
        headwise = BATModel(BATConfig.from_preset("bat-base", attention_gate="headwise"))
        pretraining = BATForPreTraining(BATConfig.from_preset("bat-base"))
        small = BATForPreTraining(BATConfig.from_preset("bat-small"))
    # A plain ViT-B/16 on a 64 x 8 grid: EAT's 85,254,144 (a final norm where EAT has its pre-block norm).
    assert count(plain) == 85_254_144
    # An element-wise gate is a 768 x 768 Linear per block (the architecture notes' ~7.1 M for 12 blocks).
    assert count(base) == 85_254_144 + 12 * (768 * 768 + 768) == 92_341_248
    assert count(headwise) == 85_254_144 + 12 * (768 * 12 + 12)
    assert count(pretraining.decoder) == 11_238_912 and isinstance(
        pretraining.decoder, BootstrapTransformerDecoder
    )
    assert pretraining.rr_projector is None
    assert count(small.bat) == 1_977_600 and count(small) == 2_097_984
    assert isinstance(small.decoder, BootstrapCNNDecoder)


def test_presets_and_overrides():
    base = BATConfig.from_preset("bat-base")
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads, base.patch_size) == (
        768,
        12,
        12,
        16,
    )
    assert base.grid_size == (64, 8) and base.attention_gate == "elementwise"
    assert base.decoder_type == "transformer"
    decoder = (base.transformer_decoder_layers, base.transformer_decoder_dim, base.transformer_decoder_heads)
    assert decoder == (6, 384, 6)
    small = BATConfig.from_preset("bat-small", num_labels=3)
    # cat-small's choices: no CLS term and mean pooling (the CLS term collapsed small bootstrap encoders).
    assert (small.cls_loss_weight, small.pooling, small.num_labels) == (0.0, "mean", 3)
    assert small.average_top_k_layers == small.num_hidden_layers == 4
    # The small preset pre-trains with cat-small's CNN decoder: the transformer one taught it nothing.
    assert small.decoder_type == "cnn"
    cat_small = CATConfig.from_preset("cat-small")
    for field in (
        "hidden_size",
        "num_attention_heads",
        "clone_batch",
        "ema_decay",
        "decoder_dim",
        "decoder_groups",
    ):
        assert getattr(small, field) == getattr(cat_small, field), field
    assert set(BAT_PRESETS) == {"bat-base", "bat-small"}
    with pytest.raises(ValueError, match="unknown BAT preset"):
        BATConfig.from_preset("bat-huge")


def test_decoder_type_is_configurable_for_cat_too():
    assert CATConfig().decoder_type == "cnn" and BATConfig().decoder_type == "transformer"
    from hf_audiorep.modeling.modeling_cat import CATForPreTraining

    cat_config = CATConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, stem_channels=(8, 16), max_length=64,
        num_mel_bins=32, average_top_k_layers=2, decoder_type="transformer", transformer_decoder_dim=16,
        transformer_decoder_heads=2, transformer_decoder_layers=1,
    )  # fmt: skip
    assert isinstance(CATForPreTraining(cat_config).decoder, BootstrapTransformerDecoder)
    assert isinstance(
        BATForPreTraining(tiny_config(decoder_type="cnn", decoder_groups=4)).decoder, BootstrapCNNDecoder
    )
    # The CNN decoder's groups are only checked when the CNN decoder is built.
    assert tiny_config(decoder_groups=5).decoder_type == "transformer"
    with pytest.raises(ValueError, match="decoder_groups"):
        tiny_config(decoder_type="cnn", decoder_groups=5)


def test_layer_ids_for_layer_decay():
    model = BATForPreTraining(tiny_config())
    ids = model.layer_ids()
    depth = model.config.num_hidden_layers
    assert ids["bat.patch_embed.proj.weight"] == 0 and ids["bat.cls_token"] == 0
    assert ids["bat.blocks.0.attn.gate_proj.weight"] == 1
    assert ids["bat.blocks.1.mlp.fc1.weight"] == 2
    assert ids["bat.norm.weight"] == depth + 1
    # The decoder's own blocks.i are not the encoder's blocks: they sit with the head.
    assert ids["decoder.blocks.0.attn.qkv.weight"] == depth + 1 and ids["decoder.mask_token"] == depth + 1
    assert set(ids.values()) == set(range(model.num_layer_ids))


# ---- the encoder ------------------------------------------------------------------------------


def test_encoder_with_a_mask_sees_only_visible_patches_and_records_ffn_states():
    config = tiny_config()
    model = BATModel(config).eval()
    inputs = torch.randn(2, 64, 32)
    mask = compute_block_mask_2d(2, 4, 2, 0.5, 3, generator=torch.Generator().manual_seed(0))
    changed = inputs.clone().view(2, 4, 16, 2, 16)
    for b, t, f in mask.view(2, 4, 2).nonzero().tolist():
        changed[b, t, :, f, :] = torch.randn(16, 16)
    recorded = []
    model.blocks[1].mlp.register_forward_hook(lambda module, args, output: recorded.append(output))
    with torch.no_grad():
        out = model(inputs, mask=mask, output_ffn_states=True)
        out_changed = model(changed.view_as(inputs), mask=mask).last_hidden_state
    assert out.last_hidden_state.shape == (2, 1 + 4, config.hidden_size)
    torch.testing.assert_close(out_changed, out.last_hidden_state, rtol=0, atol=1e-5)
    # One FFN output per block, the teacher's targets: each block's Mlp output.
    assert len(out.ffn_states) == 2 and out.ffn_states[0].shape == (2, 5, 32)
    torch.testing.assert_close(out.ffn_states[1], recorded[0], rtol=0, atol=0)


def test_encoder_output_is_final_normed_and_pools_as_configured():
    model = BATModel(tiny_config()).eval()
    inputs = torch.randn(2, 64, 32)
    with torch.no_grad():
        out = model(inputs, output_hidden_states=True)
    # hidden_states are the blocks' outputs; last_hidden_state is their final LayerNorm.
    torch.testing.assert_close(out.last_hidden_state, model.norm(out.hidden_states[-1]))
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])
    model.config.pooling = "mean"
    with torch.no_grad():
        torch.testing.assert_close(model(inputs).pooler_output, out.last_hidden_state[:, 1:].mean(1))


def test_bad_inputs_raise_clear_errors():
    model = BATModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="mel bins"):
        model(torch.randn(1, 32, 31))
    with pytest.raises(ValueError, match="max_length"):
        model(torch.randn(1, 80, 32))
    with pytest.raises(TypeError, match="bool"):
        model(torch.randn(1, 32, 32), mask=torch.zeros(1, 4, dtype=torch.long))


# ---- the transformer decoder -----------------------------------------------------------------------


def _decoder_setup(rows=3, seed=0):
    config = tiny_config()
    torch.manual_seed(seed)
    # Taken from a model, whose config carries the attention backend (a bare config's is unset).
    decoder = BATForPreTraining(config).decoder.eval()
    assert isinstance(decoder, BootstrapTransformerDecoder)
    with torch.no_grad():
        for parameter in decoder.parameters():
            parameter.normal_(std=0.3)
    grid_t, grid_f = 4, 2
    mask = compute_block_mask_2d(rows, grid_t, grid_f, 0.5, 3, generator=torch.Generator().manual_seed(seed))
    encoded = torch.randn(rows, 1 + int((~mask[0]).sum()), config.hidden_size)
    return config, decoder, encoded, mask, grid_t


def test_transformer_decoder_places_tokens_and_mask_tokens_at_their_patches():
    config, decoder, encoded, mask, grid_t = _decoder_setup()
    rows, num_patches = mask.shape
    with torch.no_grad():
        predictions = decoder(encoded, mask, grid_t)
        # Written out: embed, put each visible token at its patch (ascending), the mask token elsewhere,
        # the CLS first; positions; blocks; norm; back to the encoder width; patches only.
        embedded = decoder.embed(encoded)
        sequence = decoder.mask_token.expand(rows, 1 + num_patches, -1).clone()
        sequence[:, 0] = embedded[:, 0]
        for row in range(rows):
            sequence[row, 1 + (~mask[row]).nonzero()[:, 0]] = embedded[row, 1:]
        positions = get_2d_sincos_pos_embed(16, grid_t, 2, cls_token=True)
        hidden = sequence + positions
        for block in decoder.blocks:
            hidden = block(hidden)
        expected = decoder.proj(decoder.norm(hidden))[:, 1:]
    assert predictions.shape == (rows, num_patches, config.hidden_size)
    torch.testing.assert_close(predictions, expected, rtol=0, atol=1e-5)


def test_transformer_decoder_keeps_padding_out_of_its_attention():
    _, decoder, _, _, grid_t = _decoder_setup()
    # Patches 0..7 on a 4 x 2 grid; 1, 2, 4, 6 visible; the last time step (patches 6, 7) is padding.
    mask = torch.tensor([[True, False, False, True, False, True, False, True]])
    patch_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])
    encoded = torch.randn(1, 1 + 4, 32, generator=torch.Generator().manual_seed(1))
    changed = encoded.clone()
    changed[0, 1 + 3] += 5.0  # the visible token of padding patch 6
    with torch.no_grad():
        kept_out = decoder(encoded, mask, grid_t, patch_mask)[:, :6]
        kept_out_changed = decoder(changed, mask, grid_t, patch_mask)[:, :6]
        attended = decoder(encoded, mask, grid_t)[:, :6]
        attended_changed = decoder(changed, mask, grid_t)[:, :6]
    torch.testing.assert_close(kept_out_changed, kept_out, rtol=0, atol=1e-5)
    assert (attended_changed - attended).abs().max() > 1e-3


def test_transformer_decoder_prediction_of_a_hidden_patch_depends_on_the_visible_tokens():
    _, decoder, encoded, mask, grid_t = _decoder_setup(rows=1)
    changed = encoded.clone()
    changed[0, 1] += 1.0  # the first visible token
    with torch.no_grad():
        before, after = decoder(encoded, mask, grid_t), decoder(changed, mask, grid_t)
    hidden = mask[0]
    assert (after[0, hidden] - before[0, hidden]).abs().min() > 0


# ---- pre-training --------------------------------------------------------------------------------


def _pretraining_setup(**overrides):
    config = tiny_config(clone_batch=3, **overrides)
    torch.manual_seed(0)
    model = BATForPreTraining(config)
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
    assert torch.equal(out.mask, batch["mask"]) and out.rr_loss is None
    targets = batch["teacher_targets"].repeat_interleave(clones, 0)
    patch = ((out.predictions - targets).pow(2).sum(-1) / math.sqrt(hidden))[batch["mask"]].mean()
    torch.testing.assert_close(out.patch_loss, patch)
    cls = (out.student_cls - targets.mean(1)).pow(2).sum(-1) / math.sqrt(hidden)
    torch.testing.assert_close(out.cls_loss, cls.sum())
    torch.testing.assert_close(out.loss, out.patch_loss + out.cls_loss)


def test_patch_loss_reads_only_the_hidden_real_patches():
    model, batch = _pretraining_setup()
    model.train()
    attention_mask = torch.ones(2, 64, dtype=torch.long)
    attention_mask[1, 40:] = 0  # clip 1's last time step of patches (frames 48..63) is padding
    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["predictions"] = output

    model.decoder.register_forward_hook(keep)
    out = model(**batch, attention_mask=attention_mask)
    out.patch_loss.backward()
    gradient = captured["predictions"].grad.abs().sum(-1)  # (rows, patches)
    padding = torch.zeros(6, 8, dtype=torch.bool)
    padding[3:, 6:] = True
    counted = batch["mask"] & ~padding
    assert bool((gradient[counted] > 0).all())
    assert bool((gradient[~counted] == 0).all())


def test_padding_content_does_not_reach_the_transformer_decoders_predictions():
    # (EAT's CNN decoder convolves over padding patches like any other, as the reference does.)
    model, batch = _pretraining_setup()
    model.eval()
    attention_mask = torch.ones(2, 64, dtype=torch.long)
    attention_mask[1, 48:] = 0  # clip 1's last time step of patches is padding
    changed = batch["input_values"].clone()
    changed[1, 48:] += 3.0
    with torch.no_grad():
        out = model(**batch, attention_mask=attention_mask)
        out_changed = model(**{**batch, "input_values": changed}, attention_mask=attention_mask)
    # Padding is out of the encoder's and the decoder's attention: no real patch's prediction moves.
    torch.testing.assert_close(out_changed.predictions[:, :6], out.predictions[:, :6], rtol=0, atol=1e-5)
    torch.testing.assert_close(out_changed.patch_loss, out.patch_loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_changed.cls_loss, out.cls_loss, rtol=0, atol=1e-5)


def test_tiny_pretraining_run_lowers_the_loss():
    model, batch = _pretraining_setup()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        torch.manual_seed(0)
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append([out.patch_loss.item(), out.cls_loss.item()])
    for name, start, end in zip(("patch", "cls"), history[0], history[-1], strict=True):
        assert end < 0.7 * start, (name, start, end)


def test_pretraining_requires_teacher_targets_and_draws_masks():
    model, batch = _pretraining_setup()
    with pytest.raises(ValueError, match="EMA copy of model.bat"):
        model(batch["input_values"])
    with pytest.raises(ValueError, match="no RR projector"):
        model(batch["input_values"], teacher_targets=batch["teacher_targets"], rr_targets=torch.zeros(2, 4))
    out = model(batch["input_values"], teacher_targets=batch["teacher_targets"])
    assert out.mask.shape == (6, 8) and torch.equal(out.mask.sum(1), torch.full((6,), 4))


# ---- the library's plumbing ------------------------------------------------------------------------


def test_auto_classes_and_feature_extractor_after_import(tmp_path):
    import hf_audiorep

    assert hf_audiorep.config_from_preset("bat-small").model_type == "audiorep-bat"
    config = tiny_config()
    pretraining = BATForPreTraining(config)
    pretraining.save_pretrained(tmp_path)
    AudioFbankFeatureExtractor(num_mel_bins=32, target_length=64).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert type(AutoConfig.from_pretrained(tmp_path)) is BATConfig
    encoder = AutoModel.from_pretrained(tmp_path)
    assert type(encoder) is BATModel
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(tensor, pretraining.bat.state_dict()[name]), name
    assert type(AutoModelForAudioClassification.from_pretrained(tmp_path)) is BATForAudioClassification
    assert type(AutoModelForPreTraining.from_pretrained(tmp_path)) is BATForPreTraining
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert isinstance(extractor, AudioFbankFeatureExtractor) and extractor.target_length == 64


def test_a_pre_training_checkpoint_loads_as_an_encoder_without_an_unexpected_keys_report(tmp_path, caplog):
    from transformers.utils import logging as hf_logging

    BATForPreTraining(tiny_config()).save_pretrained(tmp_path)
    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            AutoModel.from_pretrained(tmp_path)
            AutoModelForAudioClassification.from_pretrained(tmp_path, num_labels=3)
    finally:
        hf_logging.disable_propagation()
    assert "UNEXPECTED" not in caplog.text, caplog.text
    assert "classifier.weight" in caplog.text


def test_classifier_trains_with_the_supervised_step():
    from hf_audiorep.objectives import AugmentationArguments, SupervisedClassificationStep

    torch.manual_seed(0)
    model = BATForAudioClassification(tiny_config()).train()
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
    assert model.bat.blocks[0].attn.gate_proj.weight.grad.abs().sum() > 0
