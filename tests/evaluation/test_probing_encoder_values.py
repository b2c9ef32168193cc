"""Value tests of `hf_audiorep/evaluation/probing/encoder.py`: `group_tokens` against a loop written out in
numpy, and `LayerFeatureEncoder` around two hand-made encoders whose hidden states and token counts are known
exactly: a spectrogram "ViT" of this library's kind (leading CLS-like tokens before a patch grid, a frame mask
from its feature extractor) and a waveform encoder of transformers' kind (a stride-4 "convolution", a sample
mask from its extractor). Which hidden states come back in which order, the token masks, the pooling, the
refusals and the argument checks are compared with values written by hand. Each test runs in milliseconds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hf_audiorep.evaluation.probing import LayerFeatureEncoder, group_tokens
from hf_audiorep.modeling._layers import SpectrogramModelMixin
from hf_audiorep.objectives import teachers

SR = 16000


# --- group_tokens -----------------------------------------------------------------------------------------


def _group_by_hand(features: np.ndarray, mask: np.ndarray, group: int):
    batch, layers, tokens, dim = features.shape
    groups = -(-tokens // group)
    out = np.zeros((batch, layers, groups, dim))
    out_mask = np.zeros((batch, groups), dtype=bool)
    for b in range(batch):
        for j in range(groups):
            members = [t for t in range(j * group, min((j + 1) * group, tokens)) if mask[b, t]]
            out_mask[b, j] = bool(members)
            for layer in range(layers):
                if members:
                    out[b, layer, j] = features[b, layer, members].mean(axis=0)
    return out, out_mask


MASKS = [
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 0, 0, 0],  # a group with one real token, then an all-padding one (for group 2 and 3)
    [1, 0, 0, 0, 0, 0, 0],
    [0, 1, 1, 0, 1, 0, 1],  # holes, as no encoder gives them: the mean is still over real tokens only
]


@pytest.mark.parametrize("group", [2, 3, 4, 7, 9])
def test_group_tokens_averages_the_real_tokens_of_each_group(group):
    features = torch.randn(4, 3, 7, 5, generator=torch.Generator().manual_seed(group))
    mask = torch.tensor(MASKS, dtype=torch.bool)
    pooled, pooled_mask = group_tokens(features, mask, group)
    expected, expected_mask = _group_by_hand(features.numpy().astype(np.float64), np.array(MASKS), group)
    assert pooled.shape == expected.shape and pooled.dtype == torch.float32
    np.testing.assert_allclose(pooled.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert pooled_mask.dtype == torch.bool
    np.testing.assert_array_equal(pooled_mask.numpy(), expected_mask)


def test_group_tokens_of_a_group_with_one_real_token_keeps_it_and_by_hand():
    features = torch.tensor([[[[1.0], [3.0], [5.0], [7.0], [9.0]]]])  # (1, 1, 5, 1)
    mask = torch.tensor([[True, True, True, False, False]])
    pooled, pooled_mask = group_tokens(features, mask, 2)
    assert pooled[0, 0, :, 0].tolist() == [2.0, 5.0, 0.0]  # (1 + 3) / 2, 5 alone, nothing real
    assert pooled_mask.tolist() == [[True, True, False]]


def test_group_tokens_keeps_a_float64_batch_in_float64_and_group_one_changes_nothing():
    features = torch.arange(12, dtype=torch.float64).view(1, 2, 3, 2)
    mask = torch.tensor([[True, True, False]])
    pooled, pooled_mask = group_tokens(features, mask, 2)
    assert pooled.dtype == torch.float64
    # layer 0 tokens (0,1) (2,3) (4,5): group 0 = mean of the first two, group 1 = the padded one alone: 0
    assert pooled[0, 0].tolist() == [[1.0, 2.0], [0.0, 0.0]]
    assert pooled[0, 1].tolist() == [[7.0, 8.0], [0.0, 0.0]]
    assert pooled_mask.tolist() == [[True, False]]
    same, same_mask = group_tokens(features, mask, 1)
    assert same is features and same_mask is mask


# --- two hand-made encoders -------------------------------------------------------------------------------


def _hidden(batch: int, tokens: int, index: int, dim: int = 2) -> torch.Tensor:
    """Hidden state ``index``: token t of clip b is [100 * index + t, 1000 * b] (and more columns of 0)."""
    h = torch.zeros(batch, tokens, dim, dtype=torch.float64)
    h[:, :, 0] = 100 * index + torch.arange(tokens, dtype=torch.float64)
    h[:, :, 1] = 1000 * torch.arange(batch, dtype=torch.float64)[:, None]
    return h


class SpectrogramExtractor:
    """Frames of 10 samples, 4 "mel bins" each (the frame's first 4 samples); a frame is real when it starts
    inside the clip. ``with_mask=False``: a fixed-length front end that gives no mask."""

    sampling_rate = SR

    def __init__(self, with_mask: bool = True):
        self.with_mask = with_mask

    def batch_features(self, waveforms, lengths):
        batch, samples = waveforms.shape
        frames = samples // 10
        values = waveforms[:, : frames * 10].reshape(batch, frames, 10)[..., :4]
        mask = (torch.arange(frames)[None, :] * 10 < lengths[:, None]).long()
        return values, mask if self.with_mask else None


class SpectrogramEncoder(SpectrogramModelMixin, torch.nn.Module):
    """A library-style ViT over 2 x 2 patches of 4 bins (a grid of frames/2 x 2): ``leading`` tokens before
    the patches, ``num_layers`` blocks (``num_layers + 1`` hidden states); ``tokens`` overrides the count
    (an encoder that merges patches); ``widths`` gives each hidden state another width."""

    def __init__(self, leading=1, num_layers=3, tokens=None, widths=None, rank=3):
        super().__init__()
        self.config = SimpleNamespace(
            model_type="audiorep-fake", num_mel_bins=4, patch_size=2, hidden_size=2, num_channels=1
        )
        self.leading, self.num_layers, self.tokens, self.widths, self.rank = (
            leading,
            num_layers,
            tokens,
            widths,
            rank,
        )
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, input_values, attention_mask=None, output_hidden_states=False):
        self.calls.append(
            {"training": self.training, "grad": torch.is_grad_enabled(), "hidden": output_hidden_states}
        )
        batch, frames, _ = input_values.shape
        grid_t, grid_f = self.grid_shape(frames)
        tokens = self.tokens if self.tokens is not None else self.leading + grid_t * grid_f
        widths = self.widths or [2] * (self.num_layers + 1)
        hidden = tuple(_hidden(batch, tokens, i, widths[i]) for i in range(self.num_layers + 1))
        for _ in range(self.rank - 3):  # a state of another rank: singleton axes after the batch
            hidden = tuple(h[:, None] for h in hidden)
        return SimpleNamespace(hidden_states=hidden, last_hidden_state=hidden[-1])


def spectrogram_encoder(layers=None, token_pooling=1, with_mask=True, **model_kwargs):
    return LayerFeatureEncoder(
        SpectrogramEncoder(**model_kwargs),
        SpectrogramExtractor(with_mask),
        "hf_audiorep",
        layers,
        token_pooling,
    )


class WaveExtractor:
    """transformers-style: numpy clips in, zero-padded ``input_values`` and a sample mask out."""

    sampling_rate = SR

    def __call__(
        self, clips, sampling_rate=None, return_tensors=None, padding=False, return_attention_mask=False
    ):
        width = max(len(c) for c in clips)
        values = torch.zeros(len(clips), width)
        mask = torch.zeros(len(clips), width, dtype=torch.long)
        for i, clip in enumerate(clips):
            values[i, : len(clip)] = torch.from_numpy(clip)
            mask[i, : len(clip)] = 1
        return (
            {"input_values": values, "attention_mask": mask}
            if return_attention_mask
            else {"input_values": values}
        )


class WaveEncoder(torch.nn.Module):
    """Token t of a clip is its samples 4t..4t+3; hidden state i: its first two samples x (i + 1) + i."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_values, attention_mask=None, output_hidden_states=False):
        batch, samples = input_values.shape
        x = input_values[:, : samples // 4 * 4].reshape(batch, samples // 4, 4)[..., :2].double()
        hidden = tuple(x * (i + 1) + i for i in range(4))
        return SimpleNamespace(hidden_states=hidden, last_hidden_state=hidden[-1])

    def _get_feature_vector_attention_mask(self, frames, attention_mask):
        return attention_mask[:, ::4][:, :frames]


# --- the spectrogram encoder: layers, masks, pooling --------------------------------------------------------

# 80 samples: 8 frames, a 4 x 2 grid of patches; clip 1 has 25 real samples: frames 0-2, patch columns 0-1.
WAVES = torch.linspace(-1.0, 1.0, 160).view(2, 80)
LENGTHS = torch.tensor([80, 25])
MASK_WITH_CLS = [[True] * 9, [True, True, True, True, True, False, False, False, False]]


def test_every_hidden_state_in_order_with_the_cls_token_always_real():
    encoder = spectrogram_encoder()
    features, mask = encoder.layer_features(WAVES, LENGTHS, SR)
    assert features.shape == (2, 4, 9, 2) and features.dtype == torch.float32
    for index in range(4):
        assert features[0, index, :, 0].tolist() == [100.0 * index + t for t in range(9)]
        assert features[1, index, :, 1].tolist() == [1000.0] * 9
    assert mask.dtype == torch.bool and mask.tolist() == MASK_WITH_CLS
    assert encoder.num_hidden_states == 4
    assert encoder.layer_indices == [0, 1, 2, 3]
    assert encoder.layer_names == ["embeddings", "layer 1", "layer 2", "layer 3"]


def test_the_encoder_runs_in_eval_mode_without_gradients_and_asks_for_hidden_states():
    encoder = spectrogram_encoder()
    encoder.model.train()
    encoder.layer_features(WAVES, LENGTHS, SR)
    assert encoder.model.calls[-1] == {"training": False, "grad": False, "hidden": True}


def test_layers_pick_hidden_states_in_the_order_given_negative_from_the_end():
    encoder = spectrogram_encoder(layers=[-1, 1, 0, -4])
    features, _ = encoder.layer_features(WAVES, LENGTHS, SR)
    assert features[0, :, 0, 0].tolist() == [300.0, 100.0, 0.0, 0.0]
    assert encoder.layer_indices == [3, 1, 0, 0]
    assert encoder.layer_names == ["layer 3", "layer 1", "embeddings", "embeddings"]
    assert encoder.feature_shape(80, SR) == (4, 9, 2)


@pytest.mark.parametrize("bad", [4, -5, 10])
def test_layers_past_either_end_are_refused_with_the_count(bad):
    encoder = spectrogram_encoder(layers=[1, bad])
    with pytest.raises(
        ValueError, match=rf"^layers \[{bad}\] are out of range: SpectrogramEncoder returns 4 "
    ):
        encoder.layer_features(WAVES, LENGTHS, SR)


def test_patch_mask_without_leading_tokens_and_with_two():
    _, mask = spectrogram_encoder(leading=0).layer_features(WAVES, LENGTHS, SR)
    assert mask.tolist() == [[True] * 8, [True, True, True, True, False, False, False, False]]
    _, mask = spectrogram_encoder(leading=2).layer_features(WAVES, LENGTHS, SR)
    assert mask.tolist() == [[True] * 10, [True, True, True, True, True, True, False, False, False, False]]


def test_fewer_tokens_than_patches_or_no_frame_mask_count_every_token():
    _, mask = spectrogram_encoder(tokens=5).layer_features(WAVES, LENGTHS, SR)
    assert mask.dtype == torch.bool and mask.tolist() == [[True] * 5, [True] * 5]
    _, mask = spectrogram_encoder(with_mask=False).layer_features(WAVES, LENGTHS, SR)
    assert mask.dtype == torch.bool and mask.tolist() == [[True] * 9, [True] * 9]


def test_token_pooling_groups_the_tokens_and_their_mask():
    encoder = spectrogram_encoder(layers=[2], token_pooling=4)
    features, mask = encoder.layer_features(WAVES, LENGTHS, SR)
    # 9 tokens, groups 0-3, 4-7, 8; clip 1's real tokens 0-4: groups (0-3), (4), none
    assert features.shape == (2, 1, 3, 2)
    assert features[0, 0, :, 0].tolist() == [201.5, 205.5, 208.0]
    assert features[1, 0, :, 0].tolist() == [201.5, 204.0, 0.0]
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    assert encoder.feature_shape(80, SR) == (1, 3, 2)


def test_hidden_states_of_another_width_or_rank_are_refused():
    encoder = spectrogram_encoder(widths=[2, 2, 3, 2])
    with pytest.raises(
        ValueError,
        match=r"^the probed hidden states of SpectrogramEncoder differ in shape, so they cannot be stacked "
        r"\(hidden states \[0, 1, 3\]: width 2 over 9 tokens; hidden states \[2\]: width 3 over 9 tokens\); "
        r"probe layers of one shape, e.g. the last one alone \(layers=\[-1\], --layers -1 in recipes/probe",
    ):
        encoder.layer_features(WAVES, LENGTHS, SR)
    features, _ = spectrogram_encoder(layers=[0, 1, 3], widths=[2, 2, 3, 2]).layer_features(
        WAVES, LENGTHS, SR
    )
    assert features.shape == (2, 3, 9, 2), "the odd one is not probed"
    with pytest.raises(
        ValueError,
        match=r"^hidden state 0 of SpectrogramEncoder has shape \(2, 1, 1, 9, 2\): probing reads \(batch, "
        r"tokens, dim\) or a CNN's \(batch, channels, freq, time\) map$",
    ):
        spectrogram_encoder(rank=5).layer_features(WAVES, LENGTHS, SR)


@pytest.mark.parametrize("hidden_states", [None, (), []])
def test_an_encoder_without_hidden_states_is_refused(hidden_states):
    encoder = spectrogram_encoder()
    encoder.model.forward = lambda **kwargs: SimpleNamespace(hidden_states=hidden_states)
    with pytest.raises(
        TypeError,
        match=r"^SpectrogramEncoder returned no hidden_states with output_hidden_states=True; "
        r"probing needs an encoder that returns them$",
    ):
        encoder.layer_features(WAVES, LENGTHS, SR)


def test_the_layers_are_unknown_before_the_first_forward():
    encoder = spectrogram_encoder()
    assert encoder.num_hidden_states is None
    with pytest.raises(RuntimeError, match="has not run yet"):
        encoder.layer_indices  # noqa: B018


# --- the waveform encoder: features and the mask of its convolutional arithmetic ---------------------------


def test_waveform_encoder_features_are_the_hidden_states_of_the_real_samples():
    waves = torch.arange(1.0, 33.0).view(2, 16)
    lengths = torch.tensor([16, 6])
    encoder = LayerFeatureEncoder(WaveEncoder(), WaveExtractor(), "auto", layers=[3, 0])
    features, mask = encoder.layer_features(waves, lengths, SR)
    # clip 1 is cut to its 6 samples (17..22) and zero-padded by the extractor:
    # tokens [17,18] [21,22] [0,0] [0,0]
    assert features.dtype == torch.float32 and features.shape == (2, 2, 4, 2)
    assert features[1, 1].tolist() == [[17.0, 18.0], [21.0, 22.0], [0.0, 0.0], [0.0, 0.0]]
    assert features[1, 0].tolist() == [[71.0, 75.0], [87.0, 91.0], [3.0, 3.0], [3.0, 3.0]]
    assert features[0, 0].tolist() == [[7.0, 11.0], [23.0, 27.0], [39.0, 43.0], [55.0, 59.0]]
    # token t is real when its first sample (4t) is: clip 1's tokens 0 and 1
    assert mask.dtype == torch.bool and mask.tolist() == [[True] * 4, [True, True, False, False]]
    pooled, pooled_mask = encoder.select([3], token_pooling=2).layer_features(waves, lengths, SR)
    assert pooled[1, 0].tolist() == [[79.0, 83.0], [0.0, 0.0]] and pooled_mask.tolist() == [
        [True, True],
        [True, False],
    ]


# --- a CNN's feature maps ----------------------------------------------------------------------------------


class MapEncoder(torch.nn.Module):
    """A CNN of CP-Mobile's kind on `SpectrogramExtractor`'s frames: hidden state i is a ``(batch, channels,
    freq, time)`` map, ``states[i] = (channels, freq, time stride)``, whose value at ``(c, f, t)`` is
    ``1000 c + 100 i + 10 t + f``. ``output_mask`` (a ``(batch, steps)`` list) is returned as the model's own
    ``attention_mask``, as CP-Mobile returns its last map's."""

    def __init__(self, states, output_mask=None):
        super().__init__()
        self.states, self.output_mask = states, output_mask
        self.config = SimpleNamespace(
            model_type="audiorep-fake-cnn", num_mel_bins=4, num_channels=1, hidden_size=states[-1][0]
        )
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_values, attention_mask=None, output_hidden_states=False):
        batch, frames, _ = input_values.shape
        hidden = []
        for index, (channels, freq, stride) in enumerate(self.states):
            c, f, t = torch.meshgrid(
                torch.arange(channels), torch.arange(freq), torch.arange(frames // stride), indexing="ij"
            )
            hidden.append((1000 * c + 100 * index + 10 * t + f).double().expand(batch, -1, -1, -1))
        mask = None if self.output_mask is None else torch.tensor(self.output_mask)
        return SimpleNamespace(hidden_states=tuple(hidden), last_hidden_state=hidden[-1], attention_mask=mask)


def map_encoder(states, layers=None, token_pooling=1, output_mask=None):
    return LayerFeatureEncoder(
        MapEncoder(states, output_mask), SpectrogramExtractor(), "hf_audiorep", layers, token_pooling
    )


#: a stem and two stages: states 0-1 are 2 channels over 2 x 8 positions, states 2-3 4 over 2 x 4
STAGES = [(2, 2, 1), (2, 2, 1), (4, 2, 2), (4, 2, 2)]


def test_a_cnn_map_is_probed_as_time_major_tokens_of_its_channels():
    # 8 frames, a stride of 2: 4 time steps x 2 frequencies = 8 tokens of 3 channels.
    encoder = map_encoder([(3, 2, 2)])
    features, mask = encoder.layer_features(WAVES, LENGTHS, SR)
    assert features.shape == (2, 1, 8, 3) and features.dtype == torch.float32
    for token in range(8):
        time, freq = divmod(token, 2)  # every frequency of a time step, then the next step's
        assert features[1, 0, token].tolist() == [1000.0 * c + 10 * time + freq for c in range(3)]
    # Clip 1's frames 0-2 are real; at the map's half rate, ceil(3 / 2) = 2 steps: tokens 0-3.
    assert mask.dtype == torch.bool and mask.tolist() == [[True] * 8, [True] * 4 + [False] * 4]
    assert encoder.feature_shape(80, SR) == (1, 8, 3)
    # token_pooling = freq averages one time step.
    pooled, pooled_mask = encoder.select(None, token_pooling=2).layer_features(WAVES, LENGTHS, SR)
    assert pooled[0, 0, :, 0].tolist() == [0.5, 10.5, 20.5, 30.5]
    assert pooled_mask.tolist() == [[True] * 4, [True, True, False, False]]


def test_a_cnn_maps_mask_is_the_models_own_where_it_has_one_at_that_resolution():
    own = [[1, 1, 1, 1], [1, 0, 0, 0]]
    _, mask = map_encoder([(3, 2, 2)], output_mask=own).layer_features(WAVES, LENGTHS, SR)
    assert mask.tolist() == [[True] * 8, [True, True] + [False] * 6]
    # At another resolution (the stride-1 map has 8 steps) it is not this map's: the frame mask is.
    _, mask = map_encoder([(3, 2, 1)], output_mask=own).layer_features(WAVES, LENGTHS, SR)
    assert mask.tolist() == [[True] * 16, [True] * 6 + [False] * 10]


def test_cnn_stages_of_other_widths_are_refused_naming_each_and_what_to_probe():
    with pytest.raises(ValueError) as error:
        map_encoder(STAGES).layer_features(WAVES, LENGTHS, SR)
    message = str(error.value)
    assert "hidden states [0, 1]: width 2 over 2 x 8 (freq x time) positions" in message
    assert "hidden states [2, 3]: width 4 over 2 x 4 (freq x time) positions" in message
    assert "layers=[-1], --layers -1 in recipes/probe.py" in message
    assert "choose layers of one width" not in message
    features, _ = map_encoder(STAGES, layers=[2, 3]).layer_features(WAVES, LENGTHS, SR)
    assert features.shape == (2, 2, 8, 4)


def test_default_layers_are_all_of_one_shape_else_the_last_stage():
    encoder = map_encoder(STAGES, layers=[0])
    assert encoder.default_layers(80, SR) == [2, 3]
    assert encoder.requested_layers == [0], "the choice is the caller's to make"
    assert map_encoder([(2, 2, 1), (4, 2, 2), (4, 2, 1)]).default_layers(80, SR) == [2]
    assert map_encoder([(2, 2, 1)] * 3).default_layers(80, SR) is None
    assert spectrogram_encoder().default_layers(80, SR) is None
    assert spectrogram_encoder(widths=[2, 3, 2, 2]).default_layers(80, SR) == [2, 3]


# --- arguments ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", [0, -2, True, False, 2.0, "2", None])
def test_token_pooling_must_be_a_positive_integer(pooling):
    with pytest.raises(ValueError, match=rf"^token_pooling must be a positive integer, got {pooling!r}$"):
        spectrogram_encoder(token_pooling=pooling)


def test_select_keeps_integer_layers_and_pooling_and_returns_the_encoder():
    encoder = spectrogram_encoder()
    assert encoder.requested_layers is None and encoder.token_pooling == 1
    assert encoder.select(np.array([2, -1]), 3) is encoder
    assert encoder.requested_layers == [2, -1] and all(type(i) is int for i in encoder.requested_layers)
    assert encoder.token_pooling == 3
    assert encoder.select((1,)).requested_layers == [1] and encoder.token_pooling == 1
    assert encoder.select().requested_layers is None
    with pytest.raises(
        ValueError, match=r"^layers must name at least one hidden state \(or be None for all of them\)$"
    ):
        encoder.select([])


def test_clap_models_are_refused():
    with pytest.raises(TypeError, match="^CLAP models are not probed layer by layer"):
        LayerFeatureEncoder(WaveEncoder(), WaveExtractor(), "clap")


def test_from_pretrained_passes_the_rest_on_and_applies_layers_and_pooling(monkeypatch):
    seen = {}

    def fake_from_pretrained(cls, name_or_path, device=None, torch_dtype=None, **kwargs):
        seen.update(cls=cls, name=name_or_path, device=device, dtype=torch_dtype, kwargs=kwargs)
        return cls(SpectrogramEncoder(), SpectrogramExtractor(), "hf_audiorep")

    monkeypatch.setattr(teachers.FrozenTeacher, "from_pretrained", classmethod(fake_from_pretrained))
    encoder = LayerFeatureEncoder.from_pretrained(
        "some/model", device="cpu", torch_dtype=torch.float16, layers=[2, -1], token_pooling=4, revision="v1"
    )
    assert seen == {
        "cls": LayerFeatureEncoder,
        "name": "some/model",
        "device": "cpu",
        "dtype": torch.float16,
        "kwargs": {"revision": "v1"},
    }
    assert encoder.requested_layers == [2, -1] and encoder.token_pooling == 4
    plain = LayerFeatureEncoder.from_pretrained("some/model")
    assert plain.requested_layers is None and plain.token_pooling == 1
    assert seen["kwargs"] == {} and seen["device"] is None and seen["dtype"] is None
