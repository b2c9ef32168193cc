"""The Zipformer model file (hf_audiorep/modeling/modeling_zipformer.py) against computations written out
here: what surrounds each stack (the downsampling in, the repeat and bypass out), the layers each stack gets,
the training-time feature masks, the output downsampling and its mask, the MTC head with and without the batch
norm over valid frames, and what the constructors read from the config.

The tiny config of family_utils (TINY["zipformer"]): every value takes milliseconds."""

import pytest
import torch
from family_utils import TINY

from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer import (
    ZipformerForAudioClassification,
    ZipformerModel,
    ZipformerStack,
    _normalise_valid_frames,
    add_mtc_head,
    mtc_logits,
)


def config_of(**overrides) -> ZipformerConfig:
    # Stacks of 1, 2 and 1 layers: a stack's slice of the blocks must start and end in the right place.
    return ZipformerConfig(
        **{**TINY["zipformer"], "num_encoder_layers": (1, 2, 1), "num_labels": 3, **overrides}
    )


def downsample_by_hand(x: torch.Tensor, lengths: list[int], bias: torch.Tensor) -> torch.Tensor:
    """Groups of ``len(bias)`` frames averaged with softmax(bias), each clip padded with its last frame."""
    factor = len(bias)
    weights = bias.softmax(0)
    batch, num_frames, channels = x.shape
    out_frames = -(-num_frames // factor)
    out = torch.zeros(batch, out_frames, channels, dtype=x.dtype)
    for b in range(batch):
        last = max(lengths[b], 1) - 1
        for g in range(out_frames):
            for k in range(factor):
                out[b, g] += weights[k] * x[b, min(g * factor + k, last)]
    return out


# ---- what surrounds a stack ---------------------------------------------------------------------------


def test_a_stack_at_50_frames_per_second_has_no_downsampling_and_passes_its_input_through():
    stack = ZipformerStack(config_of(), 0)
    assert stack.downsample is None and stack.upsample is None and stack.out_combiner is None
    x, lengths = torch.randn(2, 7, 16), torch.tensor([7, 4])
    entered, entered_lengths = stack.enter(x, lengths)
    assert entered is x and entered_lengths is lengths
    assert stack.leave(x, torch.ones(2, 7, 16)).eq(1).all()


@pytest.mark.parametrize("index", [1, 2])
def test_a_downsampled_stack_enters_at_its_own_rate_and_leaves_through_repeat_and_bypass(index):
    config = config_of()
    stack = ZipformerStack(config, index)
    factor, dim = config.downsampling_factor[index], config.encoder_dim[index]
    assert stack.downsample.downsample == stack.upsample.upsample == factor
    assert stack.out_combiner.bypass_scale.shape == (dim,)
    generator = torch.Generator().manual_seed(index)
    with torch.no_grad():
        stack.downsample.bias.copy_(torch.randn(factor, generator=generator))
        stack.out_combiner.bypass_scale.copy_(torch.rand(dim, generator=generator) + 0.2)
    lengths = [11, 6, 1]
    x = torch.randn(3, 11, dim, generator=generator)
    entered, entered_lengths = stack.enter(x, torch.tensor(lengths))
    torch.testing.assert_close(entered, downsample_by_hand(x, lengths, stack.downsample.bias.detach()))
    # A partial last group still makes a frame.
    assert entered_lengths.tolist() == [-(-n // factor) for n in lengths]

    inner = torch.randn(3, entered.shape[1], dim, generator=generator)
    left = stack.leave(x, inner)
    scale = stack.out_combiner.bypass_scale.detach()
    for t in range(x.shape[1]):
        # frame t of the stack's input reads the stack's frame t // factor
        expected = x[:, t] + (inner[:, t // factor] - x[:, t]) * scale
        torch.testing.assert_close(left[:, t], expected)


# ---- the encoder's parts ------------------------------------------------------------------------------


def test_each_stack_gets_its_own_slice_of_the_blocks_at_its_width():
    config = config_of()
    model = ZipformerModel(config)
    assert [len(model.stack_blocks(s)) for s in range(3)] == [1, 2, 1]
    assert model.stack_blocks(0)[0] is model.blocks[0]
    assert [b for b in model.stack_blocks(1)] == [model.blocks[1], model.blocks[2]]
    assert model.stack_blocks(2)[0] is model.blocks[3]
    widths = [block.feed_forward2.in_proj.in_features for block in model.blocks]
    assert widths == [16, 24, 24, 20]


def test_constructors_read_the_dropouts_and_the_output_factor_from_the_config():
    config = config_of(
        hidden_dropout_prob=0.3,
        position_dropout_prob=0.2,
        output_downsampling_factor=3,
        classifier_dropout=0.4,
    )
    model = ZipformerForAudioClassification(config)
    encoder = model.zipformer
    assert model.num_labels == 3
    assert encoder.embed.dropout.p == 0.3 and encoder.position_dropout.p == 0.2
    assert {block.feed_forward1.dropout.p for block in encoder.blocks} == {0.3}
    assert encoder.downsample_output.downsample == 3 and encoder.downsample_output.bias.shape == (3,)
    assert encoder.embed.out.out_features == 16 and encoder.embed.conv1.out_channels == 4
    assert model.dropout.p == 0.4
    assert model.classifier.in_features == 24 and model.classifier.out_features == 3


def test_output_is_the_widest_channels_downsampled_and_masked():
    config = config_of()
    model = ZipformerModel(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.downsample_output.bias.copy_(torch.randn(2, generator=generator))
    outputs = [torch.randn(2, 9, width, generator=generator) for width in (16, 24, 20)]
    lengths = [9, 4]
    mask = torch.tensor([[1] * 5, [1, 1, 0, 0, 0]]).bool()
    hidden = model._output(outputs, torch.tensor(lengths), mask)
    # channels 0..19 from the last stack, 20..23 from stack 1 (the most recent one that has them)
    full = torch.cat([outputs[2], outputs[1][..., 20:]], dim=-1)
    expected = downsample_by_hand(full, lengths, model.downsample_output.bias.detach()) * mask[..., None]
    torch.testing.assert_close(hidden, expected)
    assert hidden[1, 2:].abs().sum() == 0 and hidden[1, :2].abs().sum(-1).min() > 0


# ---- feature masks ------------------------------------------------------------------------------------


def test_feature_masks_zero_the_upper_channels_per_clip_as_icefall_does():
    config = config_of(feature_mask_prob=0.5)
    model = ZipformerModel(config).train()
    batch = 64
    torch.manual_seed(3)
    masks = model.feature_masks(batch, "cpu", torch.float64)
    torch.manual_seed(3)
    keep1 = torch.rand(batch, 1) > 0.5
    keep2 = keep1 & (torch.rand(batch, 1) > 0.5)
    assert 0 < keep2.sum() < keep1.sum() < batch  # all three cases occur
    for mask, dim, unmasked in zip(masks, config.encoder_dim, config.encoder_unmasked_dim, strict=True):
        assert mask.shape == (batch, 1, dim) and mask.dtype == torch.float64
        middle = unmasked + (dim - unmasked) // 2
        expected = torch.ones(batch, dim, dtype=torch.float64)
        expected[:, unmasked:middle] = keep1.double()
        expected[:, middle:] = keep2.double()
        assert torch.equal(mask[:, 0], expected)


def test_feature_masks_are_none_in_evaluation_and_at_probability_zero():
    model = ZipformerModel(config_of(feature_mask_prob=0.5)).eval()
    assert model.feature_masks(4, "cpu", torch.float32) == [None, None, None]
    model = ZipformerModel(config_of(feature_mask_prob=0.0)).train()
    assert model.feature_masks(4, "cpu", torch.float32) == [None, None, None]


# ---- the MTC head ------------------------------------------------------------------------------------


def head_of(config) -> torch.nn.Module:
    head = torch.nn.Module()
    add_mtc_head(head, config)
    torch.manual_seed(1)
    with torch.no_grad():
        head.classifier.weight.normal_()
        head.classifier.bias.normal_()
    return head


def test_mtc_head_is_built_from_the_config():
    head = head_of(config_of(classifier_dropout=0.25))
    assert head.dropout.p == 0.25 and head.classifier_norm is None
    norm = head_of(config_of(classifier_norm="batch", num_labels=1)).classifier_norm
    assert isinstance(norm, torch.nn.BatchNorm1d) and norm.num_features == 24 and not norm.affine
    # No labels: the "logits" are the pooled frames, and no norm stands in front of them.
    encoder_only = torch.nn.Module()
    add_mtc_head(encoder_only, config_of(classifier_norm="batch", num_labels=0))
    assert encoder_only.classifier_norm is None and isinstance(encoder_only.classifier, torch.nn.Identity)


def test_mtc_logits_average_the_frame_logits_over_valid_frames_or_all_frames():
    head = head_of(config_of()).eval()
    frames = torch.randn(2, 5, 24)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    frame_logits = frames @ head.classifier.weight.T + head.classifier.bias
    expected = torch.stack([frame_logits[0].mean(0), frame_logits[1, :2].mean(0)])
    torch.testing.assert_close(mtc_logits(head, frames, mask), expected)
    torch.testing.assert_close(mtc_logits(head, frames, None), frame_logits.mean(1))


def standardised(frames: torch.Tensor, eps: float) -> torch.Tensor:
    return (frames - frames.mean(0)) / torch.sqrt(frames.var(0, unbiased=False) + eps)


def test_batch_norm_of_the_head_uses_only_valid_frames_and_zeros_the_padding():
    norm = torch.nn.BatchNorm1d(6, affine=False).train()
    frames = torch.randn(2, 5, 6) * 3 + 1
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    out = _normalise_valid_frames(norm, frames, mask)
    valid = mask.bool()
    torch.testing.assert_close(out[valid], standardised(frames[valid], norm.eps))
    assert out[~valid].abs().sum() == 0
    # Without a mask every frame is valid.
    out = _normalise_valid_frames(norm, frames, None)
    torch.testing.assert_close(out, standardised(frames.flatten(0, 1), norm.eps).view_as(frames))


def test_mtc_logits_read_the_normalised_frames_when_the_head_has_a_norm():
    head = head_of(config_of(classifier_norm="batch")).train()
    head.dropout.p = 0.0
    frames = torch.randn(2, 5, 24) * 2 - 1
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    valid = mask.bool()
    normalised = torch.zeros_like(frames)
    normalised[valid] = standardised(frames[valid], head.classifier_norm.eps)
    frame_logits = normalised @ head.classifier.weight.T + head.classifier.bias
    expected = torch.stack([frame_logits[0].mean(0), frame_logits[1, :3].mean(0)])
    torch.testing.assert_close(mtc_logits(head, frames, mask), expected)


def test_feature_masks_are_drawn_on_the_device_asked_for():
    # On the meta device a draw or a mask made on the CPU either fails to combine or comes back on the CPU.
    masks = ZipformerModel(config_of(feature_mask_prob=0.5)).train().feature_masks(3, "meta", torch.float32)
    assert [mask.device.type for mask in masks] == ["meta"] * 3


# ---- what mutmut does not reach: the forward pass and the initialisation (both decorated) --------------


def test_nine_frames_are_the_shortest_input_and_give_one_frame():
    model = ZipformerModel(config_of()).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 9, 32))
    # (9 - 7) // 2 = 1 frame at 50 frames/s, one frame at 25
    assert outputs.last_hidden_state.shape == (1, 1, 24) and outputs.output_lengths.tolist() == [1]
    with pytest.raises(ValueError, match="at least 9"):
        model(torch.randn(1, 8, 32))


def test_positions_go_through_their_dropout_once_per_stack():
    model = ZipformerModel(config_of()).eval()
    seen = []
    model.position_dropout.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model(torch.randn(1, 127, 32))  # 60 frames at 50 frames/s: 60, 30 and 15 in the stacks
    assert seen == [(2 * n - 1, 8) for n in (60, 30, 15)]


def test_feature_masks_apply_before_and_after_every_layer_of_their_stack():
    config = config_of()
    model = ZipformerModel(config).eval()
    # Every clip loses the channels above encoder_unmasked_dim in every stack.
    masks = []
    for dim, unmasked in zip(config.encoder_dim, config.encoder_unmasked_dim, strict=True):
        mask = torch.ones(1, 1, dim)
        mask[..., unmasked:] = 0
        masks.append(mask)
    model.feature_masks = lambda batch, device, dtype: masks
    layer_inputs = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0]))
    with torch.no_grad():
        outputs = model(torch.randn(1, 127, 32), output_hidden_states=True)
    # blocks 0 | 1 2 | 3: block 2's input is block 1's output, masked after the layer
    for x, unmasked in zip(layer_inputs, (8, 16, 16, 16), strict=True):
        assert x[..., unmasked:].abs().sum() == 0 and x[..., :unmasked].abs().sum() > 0
    # Stack 0 runs at 50 frames/s with no bypass: its output is its last layer's, masked.
    assert outputs.hidden_states[1][..., 8:16].abs().sum() == 0


def test_weights_start_as_icefall_initialises_them():
    torch.manual_seed(0)
    model = ZipformerModel(config_of())
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            scale = getattr(module, "initial_scale", 1.0)
            bound = scale / module.weight[0].numel() ** 0.5
            assert module.weight.abs().max() <= bound, name
            if module.weight.numel() >= 16:  # a uniform draw of 16 or more reaches past half its range
                assert module.weight.abs().max() >= bound / 2, name
            if module.bias is not None:
                # icefall's ScaledLinear: biases U(+-0.1 s); a plain layer keeps PyTorch's U(+-1/sqrt(fan_in))
                bias_bound = 0.1 * scale if scale != 1.0 else bound
                assert module.bias.abs().max() <= bias_bound, name
                if module.bias.numel() >= 16:
                    assert module.bias.abs().max() >= bias_bound / 4, name
    for name, param in model.named_parameters():
        if name.endswith("bypass_scale"):
            assert param.eq(0.5).all(), name
        elif name.endswith("log_scale"):
            assert param.item() == 1.0, name
        elif name.endswith("downsample.bias"):
            assert param.eq(0).all(), name
        elif name.endswith("norm.bias"):
            assert 0 < param.abs().max() < 1e-3, name
