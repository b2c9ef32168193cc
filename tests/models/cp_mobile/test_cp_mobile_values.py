"""CP-Mobile's computation against an independent one written here from the CP-JKU description (section 6(a)
of the architecture notes): the stem, the inverted bottleneck blocks with their shortcuts and GRN, the output
block with either norm, the pooling over a clip's own columns and the three heads, by hand with
``torch.nn.functional`` on a tiny config whose every parameter and running statistic is random."""

import pytest
import torch
import torch.nn.functional as F
from family_utils import TINY as FAMILY_TINY

from hf_audiorep.modeling.configuration_cp_mobile import CPMobileConfig
from hf_audiorep.modeling.modeling_cp_mobile import (
    CPMobileForAudioClassification,
    CPMobileModel,
    CPMobileOutputBlock,
    GlobalResponseNorm,
)

# Stage channels 8, 8, 16, 32. Each block: (input channels, output channels, (frequency, time) stride, the
# expansion make_divisible(input * 2)). Block 0 keeps its shortcut as is, block 1 pools it (stride 2 on
# both axes), blocks 2 and 3 widen (no shortcut) and stride one axis each, time first, so that a swapped
# axis shows.
# layer_norm_eps far from LayerNorm's default, so that an eps not passed on shows.
TINY = dict(FAMILY_TINY["cp_mobile"], num_labels=5, layer_norm_eps=0.1)
BLOCKS = [(8, 8, (1, 1), 16), (8, 8, (2, 2), 16), (8, 16, (1, 2), 16), (16, 32, (2, 1), 32)]
STEM = [(1, 2), (2, 8)]  # a quarter of the base channels, then all of them
BATCH_NORM_EPS = 1e-5  # torch's BatchNorm2d default, which the CP-JKU code keeps
GRN_EPS = 1e-6

LAYOUTS = {
    "reference": {},
    "reference-grn": {"use_grn": True},
    "reference-layernorm": {"output_norm": "layer"},
    "contrastasc": {"embedding_size": 12, "output_norm": "layer", "classifier": "cosine", "use_grn": True},
    "embedding-batchnorm-linear": {"embedding_size": 6, "output_norm": "batch", "classifier": "linear"},
}


def tiny_config(**overrides) -> CPMobileConfig:
    return CPMobileConfig(**{**TINY, **overrides})


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic random: no term hides behind a 1 or a 0 (GRN starts at 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5, generator=generator)
            elif tensor.is_floating_point():
                tensor.copy_(0.5 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


# --- the network by hand ----------------------------------------------------------------------------------


def batch_norm(x, p, prefix):
    """Eval-mode BatchNorm2d written out: the running statistics per channel, then the affine map."""
    shape = (1, -1, 1, 1)
    mean, var = p[prefix + ".running_mean"].view(shape), p[prefix + ".running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + BATCH_NORM_EPS) * p[prefix + ".weight"].view(shape) + p[
        prefix + ".bias"
    ].view(shape)


def channel_layer_norm(x, p, prefix, eps):
    """LayerNorm over the channels at each time-frequency position."""
    mean = x.mean(dim=1, keepdim=True)
    var = x.var(dim=1, unbiased=False, keepdim=True)
    shape = (1, -1, 1, 1)
    return (x - mean) / torch.sqrt(var + eps) * p[prefix + ".weight"].view(shape) + p[prefix + ".bias"].view(
        shape
    )


def conv(x, weight, stride=(1, 1), groups=1):
    # A "same" convolution without bias: padding of half the kernel.
    return F.conv2d(x, weight, None, stride, weight.shape[-1] // 2, 1, groups)


def grn(x, gamma, beta):
    norms = x.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()
    return gamma * x * (norms / (norms.mean(dim=1, keepdim=True) + GRN_EPS)) + beta + x


def encoder_by_hand(p, features, use_grn, prefix="cp_mobile."):
    """Clips of one length, unpadded: the feature maps after the stem and after each block."""
    x = features.unsqueeze(1).transpose(-1, -2)  # (batch, 1, mel, frames), the CP-JKU image
    for i, (c_in, c_out) in enumerate(STEM, start=1):
        name = f"{prefix}stem.conv{i}"
        assert p[name + ".conv.weight"].shape == (c_out, c_in, 3, 3)
        x = torch.relu(batch_norm(conv(x, p[name + ".conv.weight"], stride=(2, 2)), p, name + ".norm"))
    maps = [x]
    for i, (c_in, c_out, stride, expanded) in enumerate(BLOCKS):
        name = f"{prefix}blocks.{i}"
        assert p[name + ".expand.conv.weight"].shape == (expanded, c_in, 1, 1)
        assert p[name + ".depthwise.conv.weight"].shape == (expanded, 1, 3, 3)
        assert p[name + ".project.conv.weight"].shape == (c_out, expanded, 1, 1)
        h = torch.relu(batch_norm(conv(x, p[name + ".expand.conv.weight"]), p, name + ".expand.norm"))
        h = conv(h, p[name + ".depthwise.conv.weight"], stride=stride, groups=expanded)
        h = torch.relu(batch_norm(h, p, name + ".depthwise.norm"))
        h = batch_norm(conv(h, p[name + ".project.conv.weight"]), p, name + ".project.norm")
        if c_in == c_out:  # the residual, through a 3x3 average pooling of the block's stride when strided
            h = h + (x if stride == (1, 1) else F.avg_pool2d(x, 3, stride, padding=1))
        if use_grn:
            h = grn(h, p[name + ".grn.gamma"], p[name + ".grn.beta"])
        x = torch.relu(h)
        maps.append(x)
    return maps


def output_block_by_hand(p, prefix, feature_map, norm, eps):
    """1x1 convolution, the norm, the mean over frequency and time."""
    x = conv(feature_map, p[prefix + ".conv.weight"])
    x = (
        batch_norm(x, p, prefix + ".norm")
        if norm == "batch"
        else channel_layer_norm(x, p, prefix + ".norm", eps)
    )
    return x.mean(dim=(2, 3))


def clip_by_hand(model, features):
    """(feature maps, clip embedding, logits) of one clip, from the parameters alone."""
    config = model.config
    p = dict(model.state_dict())
    maps = encoder_by_hand(p, features, config.use_grn)
    if config.embedding_size is None:
        embedding = maps[-1].mean(dim=(2, 3))
        logits = output_block_by_hand(p, "classifier", maps[-1], config.output_norm, config.layer_norm_eps)
        return maps, embedding, logits
    prefix = "cp_mobile.output_block"
    embedding = output_block_by_hand(p, prefix, maps[-1], config.output_norm, config.layer_norm_eps)
    if config.classifier == "cosine":
        logits = (
            config.cosine_scale
            * F.normalize(embedding, dim=-1)
            @ F.normalize(p["classifier.weight"], dim=-1).T
        )
    else:
        logits = embedding @ p["classifier.weight"].T + p["classifier.bias"]
    return maps, embedding, logits


# --- the whole model ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_model_equals_the_network_by_hand(layout):
    config = tiny_config(**LAYOUTS[layout])
    torch.manual_seed(0)
    model = randomise(CPMobileForAudioClassification(config))
    features = torch.randn(2, 37, config.num_mel_bins, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = model(features, output_hidden_states=True)
        encoder = model.cp_mobile(features)
        maps, embedding, logits = clip_by_hand(model, features)
    assert len(outputs.hidden_states) == len(maps) == 1 + config.num_hidden_layers
    for state, by_hand in zip(outputs.hidden_states, maps, strict=True):
        torch.testing.assert_close(state, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.last_hidden_state, maps[-1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.pooler_output, embedding, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs.logits, logits, rtol=1e-5, atol=1e-5)
    assert encoder.attention_mask.dtype == torch.long and encoder.attention_mask.all()
    assert encoder.attention_mask.shape == (2, maps[-1].shape[-1])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_clip_of_a_padded_batch_equals_the_network_by_hand_on_the_clip_alone(layout):
    config = tiny_config(**LAYOUTS[layout])
    torch.manual_seed(0)
    model = randomise(CPMobileForAudioClassification(config), seed=3)
    # Lengths that leave a remainder at every stride: 4 (stem), then 2 on time in blocks 1 and 2.
    lengths = [45, 30, 13, 5]
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(len(lengths), max(lengths), config.num_mel_bins, generator=generator)
    mask = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for i, length in enumerate(lengths):
        mask[i, :length] = 1
        features[i, length:] = 7.0  # padding a clip alone never sees
    with torch.no_grad():
        outputs = model(features, mask, output_hidden_states=True)
        encoder = model.cp_mobile(features, mask)
        for i, length in enumerate(lengths):
            maps, embedding, logits = clip_by_hand(model, features[i : i + 1, :length])
            for state, by_hand in zip(outputs.hidden_states, maps, strict=True):
                valid = by_hand.shape[-1]
                torch.testing.assert_close(state[i : i + 1, ..., :valid], by_hand, rtol=1e-5, atol=1e-5)
                assert not state[i, ..., valid:].any(), "padded columns must be zero"
            assert encoder.attention_mask[i].tolist() == [1] * maps[-1].shape[-1] + [0] * (
                encoder.attention_mask.shape[1] - maps[-1].shape[-1]
            )
            torch.testing.assert_close(encoder.pooler_output[i : i + 1], embedding, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(outputs.logits[i : i + 1], logits, rtol=1e-5, atol=1e-5)


def test_pooling_divides_by_the_clip_s_own_positions_down_to_a_single_one():
    # 16 mel bins leave one frequency row after the blocks, and a 3-frame clip one time column: the mean of a
    # padded clip's map is then over one position, the map itself.
    config = tiny_config(num_mel_bins=16)
    torch.manual_seed(0)
    model = randomise(CPMobileForAudioClassification(config), seed=4)
    features = torch.randn(2, 30, config.num_mel_bins, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 30, dtype=torch.long)
    mask[1, 3:] = 0
    with torch.no_grad():
        outputs = model(features, mask)
        encoder = model.cp_mobile(features, mask)
        maps, embedding, logits = clip_by_hand(model, features[1:, :3])
    assert maps[-1].shape[-2:] == (1, 1) and encoder.attention_mask[1].tolist() == [1, 0]
    torch.testing.assert_close(encoder.pooler_output[1:], maps[-1].flatten(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encoder.pooler_output[1:], embedding, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs.logits[1:], logits, rtol=1e-5, atol=1e-5)


# --- global response normalisation -----------------------------------------------------------------------


def test_grn_adds_its_epsilon_to_the_mean_norm():
    # A feature map of norms near GRN's epsilon (1e-6), where adding and subtracting it differ by half.
    grn_layer = GlobalResponseNorm()
    with torch.no_grad():
        grn_layer.gamma.fill_(1.0)
        grn_layer.beta.fill_(0.0)
    x = 1e-7 * torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(grn_layer(x), grn(x, 1.0, 0.0), rtol=1e-5, atol=0.0)


# --- what the forward does not show ------------------------------------------------------------------------


def test_the_classifier_keeps_the_config_s_label_count():
    for layout in ({}, LAYOUTS["contrastasc"]):
        model = CPMobileForAudioClassification(tiny_config(**layout))
        assert model.num_labels == 5


def test_bad_output_norms_and_masks_are_refused_with_their_whole_message():
    with pytest.raises(ValueError, match=r"^norm must be 'batch' or 'layer', got 'group'$"):
        CPMobileOutputBlock(8, 4, "group", 1e-5)
    model = CPMobileModel(tiny_config()).eval()
    holey = torch.ones(1, 12, dtype=torch.long)
    holey[0, 3] = 0
    with pytest.raises(
        ValueError, match=r"^attention_mask must be 1 on a prefix of each row \(valid frames first\)$"
    ):
        model(torch.randn(1, 12, 32), holey)
