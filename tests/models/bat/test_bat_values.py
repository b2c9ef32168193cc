"""BAT's model file against computations written out here (hf_audiorep/modeling/modeling_bat.py): the
encoder (patch embedding, sin-cos positions, CLS, pre-LN blocks whose attention output is gated by
``sigmoid(x W_g + b_g)`` before its projection, the final LayerNorm) and the pooling from its hidden
states, each attention gate by hand, and what the classifier and the pre-training student build around it.

Tiny configs with 4 x 4 patches: a 12 x 8 spectrogram is a 3 x 2 grid, so every value takes milliseconds."""

import math

import pytest
import torch
import torch.nn.functional as F
from family_utils import randomised

from hf_audiorep.modeling.configuration_bat import BATConfig
from hf_audiorep.modeling.modeling_bat import BATForAudioClassification, BATForPreTraining, BATModel

P = 4
GRID_T, GRID_F = 3, 2  # not square, so a swapped time / frequency axis shows
HEADS = 2
TINY = dict(
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    patch_size=P,
    max_length=GRID_T * P,
    num_mel_bins=GRID_F * P,
    num_labels=3,
    # Large enough that a LayerNorm built with torch's default eps gives other values.
    layer_norm_eps=0.1,
    average_top_k_layers=2,
    transformer_decoder_dim=8,
    transformer_decoder_layers=1,
    transformer_decoder_heads=2,
)


def tiny_config(**overrides) -> BATConfig:
    return BATConfig(**{**TINY, **overrides})


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + 0.1) * norm.weight + norm.bias


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    return x @ layer.weight.T + layer.bias


def gated_block(x: torch.Tensor, block, gate: str) -> torch.Tensor:
    """``x + proj(gate * softmax(q k^T / sqrt(d)) v)`` on ``LN(x)``, then ``x + fc2(gelu(fc1(LN(x))))``."""
    b, n, d = x.shape
    head_dim = d // HEADS
    h = layer_norm(x, block.norm1)
    q, k, v = linear(h, block.attn.qkv).view(b, n, 3, HEADS, head_dim).unbind(2)  # each (b, n, heads, hd)
    scores = torch.einsum("bnhc,bmhc->bhnm", q, k) / math.sqrt(head_dim)
    heads = torch.einsum("bhnm,bmhc->bnhc", scores.softmax(-1), v)
    if gate == "elementwise":  # one gate per channel
        heads = heads * torch.sigmoid(linear(h, block.attn.gate_proj)).view(b, n, HEADS, head_dim)
    elif gate == "headwise":  # one gate per head and token
        heads = heads * torch.sigmoid(linear(h, block.attn.gate_proj)).view(b, n, HEADS, 1)
    x = x + linear(heads.reshape(b, n, d), block.attn.proj)
    return x + linear(F.gelu(linear(layer_norm(x, block.norm2), block.mlp.fc1)), block.mlp.fc2)


def sincos_positions(d: int) -> torch.Tensor:
    """MAE's 2-D table over the row-major (t, f) grid: the first half of the channels encodes the frequency
    (column) index, the second the time (row) index, each ``[sin, cos]`` of
    ``position / 10000^(i / (d/4))``."""
    quarter = d // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = []
    for t in range(GRID_T):
        for f in range(GRID_F):
            parts = []
            for position in (f, t):
                angles = position * omega
                parts += [torch.sin(angles), torch.cos(angles)]
            rows.append(torch.cat(parts))
    return torch.stack(rows).float()


def encoder_by_hand(model: BATModel, input_values: torch.Tensor, gate: str):
    b = input_values.shape[0]
    image = input_values if input_values.ndim == 4 else input_values.unsqueeze(1)  # (b, channels, T, F)
    blocks = image.reshape(b, -1, GRID_T, P, GRID_F, P)
    weight = model.patch_embed.proj.weight  # (hidden, channels, P, P)
    patches = torch.einsum("bcipjq,ocpq->bijo", blocks, weight).reshape(b, GRID_T * GRID_F, -1)
    patches = patches + model.patch_embed.proj.bias
    table = sincos_positions(model.config.hidden_size)
    hidden = torch.cat([model.cls_token.expand(b, -1, -1), patches + table], dim=1)
    states = [hidden]
    for block in model.blocks:
        hidden = gated_block(hidden, block, gate)
        states.append(hidden)
    return layer_norm(hidden, model.norm), states


@pytest.mark.parametrize("gate", ["elementwise", "headwise", "none"])
def test_encoder_is_patches_positions_cls_gated_pre_ln_blocks_and_a_final_norm(gate):
    model = randomised(BATModel(tiny_config(attention_gate=gate))).eval()
    # The positions are a fixed table, not parameters: put back the one the model computes.
    model.pos_embed.copy_(model.sincos_pos_embed())
    widths = {"elementwise": 8, "headwise": HEADS}
    for block in model.blocks:
        assert block.attn.gate == gate
        assert (
            (block.attn.gate_proj is None)
            if gate == "none"
            else block.attn.gate_proj.out_features == widths[gate]
        )
    assert model.pre_norm is None and model.norm.eps == 0.1
    assert model.get_input_embeddings() is model.patch_embed
    input_values = torch.randn(2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        output = model(input_values, output_hidden_states=True)
        expected, states = encoder_by_hand(model, input_values, gate)
    torch.testing.assert_close(model.pos_embed[0], sincos_positions(8), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-4, atol=1e-4)
    # hidden_states: the embeddings and every block's output, before the final norm.
    assert len(output.hidden_states) == 3
    for got, want in zip(output.hidden_states, states, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # CLS pooling by default; mean pooling averages the normalised patch tokens.
    torch.testing.assert_close(output.pooler_output, expected[:, 0], rtol=1e-4, atol=1e-4)


def test_encoder_takes_the_configured_number_of_input_channels():
    """``num_channels`` reaches the patch embedding: a (B, 2, T, F) input, one set of weights per channel."""
    model = randomised(BATModel(tiny_config(num_channels=2))).eval()
    model.pos_embed.copy_(model.sincos_pos_embed())
    assert model.patch_embed.proj.in_channels == 2
    input_values = torch.randn(2, 2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        output = model(input_values)
        expected, _ = encoder_by_hand(model, input_values, "elementwise")
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-4, atol=1e-4)


def test_patch_embedding_takes_the_input_in_its_weights_dtype():
    """A bfloat16 spectrogram into a float32 encoder is cast up before the patch projection: the values are
    those of the same spectrogram given in float32."""
    model = randomised(BATModel(tiny_config())).eval()
    model.pos_embed.copy_(model.sincos_pos_embed())
    spectrogram = torch.randn(
        2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(4)
    ).bfloat16()
    with torch.no_grad():
        output = model(spectrogram)
        expected, _ = encoder_by_hand(model, spectrogram.float(), "elementwise")
    assert output.last_hidden_state.dtype == torch.float32
    torch.testing.assert_close(output.last_hidden_state, expected, rtol=1e-4, atol=1e-4)


def test_mean_pooling_averages_the_real_patches_of_the_last_hidden_state():
    model = randomised(BATModel(tiny_config(pooling="mean"))).eval()
    input_values = torch.randn(2, GRID_T * P, GRID_F * P, generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones(2, GRID_T * P, dtype=torch.long)
    attention_mask[1, 2 * P :] = 0  # the second clip's last time row of patches is padding
    with torch.no_grad():
        output = model(input_values, attention_mask=attention_mask)
    tokens = output.last_hidden_state[:, 1:]
    torch.testing.assert_close(output.pooler_output[0], tokens[0].mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.pooler_output[1], tokens[1, : 2 * GRID_F].mean(0), rtol=1e-5, atol=1e-5)


def test_encoder_dropout_and_stochastic_depth_follow_the_config():
    config = tiny_config(hidden_dropout_prob=0.25, drop_path_rate=0.3, num_hidden_layers=3)
    model = BATModel(config)
    assert len(model.blocks) == 3 and model.dropout.p == 0.25
    assert [block.drop_path.drop_prob for block in model.blocks] == pytest.approx([0.0, 0.15, 0.3])
    classifier = BATForAudioClassification(config)
    assert [block.drop_path.drop_prob for block in classifier.bat.blocks] == pytest.approx([0.0, 0.15, 0.3])
    assert classifier.classifier.out_features == 3
    # The pre-training student runs without stochastic depth; the config keeps the rate for fine-tuning.
    student = BATForPreTraining(config)
    assert all(block.drop_path.drop_prob == 0.0 for block in student.bat.blocks)
    assert student.config.drop_path_rate == 0.3
