"""The HEAR embedding API (hf_audiorep.hear): shapes, timestamps, windowing and the scene embedding, each
checked against the encoder called directly on the same audio."""

import numpy as np
import pytest
import torch
from tagger_utils import MAX_LENGTH
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel

import hf_audiorep
from hf_audiorep import hear
from hf_audiorep.modeling import AudioFbankFeatureExtractor

SR = 16000
HOP = 160  # samples per frame at 10 ms
SPAN = (MAX_LENGTH - 1) * HOP + 400  # samples of one window: MAX_LENGTH frames of 25 ms


def _audio(n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    tones = torch.stack([0.3 * torch.sin(2 * torch.pi * (200 + 150 * i) * t) for i in range(n_sounds)])
    return tones + 0.05 * torch.randn(n_sounds, t.numel(), generator=g)


@pytest.fixture(scope="module")
def model(tagger_dir):
    return hear.load_model(str(tagger_dir), device="cpu")


def _direct(tagger_dir, piece: torch.Tensor):
    """Column embeddings and pooler output of one window, by the encoder called directly."""
    encoder = AutoModel.from_pretrained(tagger_dir).eval()
    fe = AutoFeatureExtractor.from_pretrained(tagger_dir)
    inputs = fe(piece.numpy(), sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        out = encoder(**inputs)
    grid_t, grid_f = encoder.grid_shape(MAX_LENGTH)
    columns = out.last_hidden_state[0, 1:].reshape(grid_t, grid_f, -1).mean(1)
    return columns, out.pooler_output[0], int(inputs["attention_mask"].sum())


def test_the_model_has_the_attributes_hear_reads(model, tagger_dir):
    config = AutoModel.from_pretrained(tagger_dir).config
    assert model.sample_rate == SR
    assert model.scene_embedding_size == model.timestamp_embedding_size == config.hidden_size
    assert not model.encoder.training
    assert all(not p.requires_grad for p in model.encoder.parameters())


def test_timestamp_embeddings_cover_the_sound_window_after_window(model, tagger_dir):
    audio = _audio(3, 5.0)  # 498 frames: windows of 208, 208 and 82 frames -> 13 + 13 + 6 columns
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert embeddings.shape == (3, 32, model.timestamp_embedding_size)
    assert embeddings.dtype == timestamps.dtype == torch.float32
    # Column c spans frames 16c .. 16c + 15, each 25 ms long every 10 ms: its centre is 160 c + 87.5 ms.
    expected = 160.0 * np.arange(32) + 87.5
    assert timestamps.shape == (3, 32)
    np.testing.assert_allclose(timestamps.numpy(), np.broadcast_to(expected, (3, 32)), atol=1e-3)
    # The second window starts at frame 208 = sample 208 * 160 of the sound.
    start = MAX_LENGTH * HOP
    columns, _, _ = _direct(tagger_dir, audio[1, start : start + SPAN])
    torch.testing.assert_close(embeddings[1, 13:26], columns, atol=1e-5, rtol=1e-4)
    # The last, partial window keeps only the columns holding real frames.
    start = 2 * MAX_LENGTH * HOP
    columns, _, frames = _direct(tagger_dir, audio[2, start:])
    assert frames == 498 - 2 * MAX_LENGTH
    torch.testing.assert_close(embeddings[2, 26:], columns[:6], atol=1e-5, rtol=1e-4)


def test_the_scene_embedding_is_the_frame_weighted_mean_of_the_windows_pooled_outputs(model, tagger_dir):
    audio = _audio(1, 3.0)  # 298 frames: a full window of 208 and one of 90
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (1, model.scene_embedding_size)
    _, first, n1 = _direct(tagger_dir, audio[0, :SPAN])
    _, second, n2 = _direct(tagger_dir, audio[0, MAX_LENGTH * HOP :])
    assert (n1, n2) == (208, 90)
    torch.testing.assert_close(scene[0], (n1 * first + n2 * second) / (n1 + n2), atol=1e-5, rtol=1e-4)


def test_a_short_sound_gets_the_encoders_own_clip_embedding(model, tagger_dir):
    audio = _audio(2, 1.0)
    _, pooled, _ = _direct(tagger_dir, audio[1])
    torch.testing.assert_close(hear.get_scene_embeddings(audio, model)[1], pooled, atol=1e-5, rtol=1e-4)


def test_embeddings_do_not_depend_on_the_batch(model):
    audio = _audio(5, 2.5, seed=3)
    together, _ = hear.get_timestamp_embeddings(audio, model)
    alone, _ = hear.get_timestamp_embeddings(audio[3:4], model)
    torch.testing.assert_close(together[3], alone[0], atol=1e-5, rtol=1e-4)
    again, _ = hear.get_timestamp_embeddings(audio, model)
    torch.testing.assert_close(together, again, atol=0, rtol=0)


def test_a_cat_encoder_serves_the_api(tmp_path):
    config = hf_audiorep.config_from_preset("cat-small", max_length=160)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path)
    AudioFbankFeatureExtractor(target_length=160).save_pretrained(tmp_path)
    model = hear.load_model(str(tmp_path), device="cpu")
    embeddings, timestamps = hear.get_timestamp_embeddings(_audio(2, 2.0), model)
    # 198 frames: windows of 160 and 38 frames -> 10 + 3 columns
    assert embeddings.shape == (2, 13, config.hidden_size)
    np.testing.assert_allclose(timestamps[0].numpy(), 160.0 * np.arange(13) + 87.5, atol=1e-3)
    assert torch.isfinite(embeddings).all()


@pytest.mark.parametrize(
    ("audio", "error", "message"),
    [
        (np.zeros((1, 16000), dtype=np.float32), TypeError, "torch.Tensor"),
        (torch.zeros(16000), ValueError, "n_sounds, n_samples"),
        (torch.zeros((1, 16000), dtype=torch.int16), TypeError, "floats"),
        (torch.zeros((0, 16000)), ValueError, "no sounds"),
        (torch.zeros((1, 100)), ValueError, "100 samples"),
        (torch.full((1, 16000), float("nan")), ValueError, r"sound 0 contains NaN or infinite samples \(1 "),
        (
            torch.full((2, 16000), 1e20),
            ValueError,
            r"sound 0 has samples of magnitude 1e\+20, far outside .* \(2 ",
        ),
        (
            torch.zeros((3, 16000)).index_fill_(1, torch.tensor([5]), float("inf")),
            ValueError,
            r"sound 0 contains NaN or infinite samples \(3 ",
        ),
        (
            torch.zeros((2, 16000)).index_put_(
                (torch.tensor([1]), torch.tensor([9])), torch.tensor(float("nan"))
            ),
            ValueError,
            r"sound 1 contains NaN",
        ),
    ],
)
def test_bad_audio_gets_an_error_naming_the_problem(model, audio, error, message):
    with pytest.raises(error, match=message):
        hear.get_scene_embeddings(audio, model)


def test_load_model_needs_a_model():
    with pytest.raises(ValueError, match="needs a model"):
        hear.load_model("")


# ---- the encoders without a patch grid: BEATs, the Zipformer, CP-Mobile ----------------------------------

#: preset, overrides that make it tiny, hop (ms) and first timestamp (ms) of its timestamp embeddings
FAMILIES = {
    # 16-frame patch columns at 10 ms: centre of frames 16c .. 16c + 15, 25 ms long.
    "beats": (
        "beats-iter3",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            patch_embedding_dim=32,
        ),
        160.0,
        87.5,
    ),
    # Output step i reads frames 4i .. 4i + 10, centred 5 ms into each (snip_edges=False).
    "zipformer": ("zipformer-small", {}, 40.0, 55.0),
    # Column t is centred on frame 8t; frames are centred on t * 15.625 ms.
    "cp_mobile": ("cp-mobile-6k", {}, 125.0, 0.0),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """``(name, HearModel loaded from disk)`` of a tiny random encoder of the family."""
    from hf_audiorep.registry import architecture_for, config_from_preset, feature_extractor_for

    preset, overrides, _, _ = FAMILIES[request.param]
    config = config_from_preset(preset, **overrides)
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    architecture_for(config.model_type).base_model(config).save_pretrained(directory)
    feature_extractor_for(config).save_pretrained(directory)
    return request.param, hear.load_model(str(directory), device="cpu")


def _sound(model, n_sounds: int, seconds: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * model.sample_rate)) / model.sample_rate
    tones = torch.stack([0.3 * torch.sin(2 * torch.pi * (300 + 200 * i) * t) for i in range(n_sounds)])
    return tones + 0.05 * torch.randn(n_sounds, t.numel(), generator=g)


def _direct_steps(model, piece: torch.Tensor):
    """Time steps and pooler output of one unpadded piece, by the encoder called directly."""
    inputs = model.feature_extractor(piece.numpy(), sampling_rate=model.sample_rate, return_tensors="pt")
    with torch.no_grad():
        out = model.encoder(input_values=inputs["input_values"], attention_mask=inputs["attention_mask"])
    steps, valid = model.family.steps(model.encoder, out, inputs["attention_mask"])
    return steps[0, : int(valid[0])], out.pooler_output[0]


def test_timestamp_embeddings_have_the_families_shape_hop_and_extent(family):
    name, model = family
    _, _, hop, first = FAMILIES[name]
    seconds = 1.55
    embeddings, timestamps = hear.get_timestamp_embeddings(_sound(model, 3, seconds), model)
    assert embeddings.dtype == timestamps.dtype == torch.float32
    assert embeddings.shape[0] == 3 and embeddings.shape[2] == model.timestamp_embedding_size
    assert timestamps.shape == embeddings.shape[:2]
    assert model.timestamp_hop_ms == hop
    expected = first + hop * np.arange(timestamps.shape[1])
    np.testing.assert_allclose(timestamps.numpy(), np.broadcast_to(expected, timestamps.shape), atol=1e-3)
    # The steps cover the sound: none past its end, the last within one step (plus a frame) of it.
    assert timestamps[0, -1] <= 1000 * seconds < timestamps[0, -1] + hop + 25.0
    assert torch.isfinite(embeddings).all()


def test_the_step_count_is_the_encoders_own_on_the_whole_sound(family):
    _, model = family
    audio = _sound(model, 1, 2.3)
    embeddings, _ = hear.get_timestamp_embeddings(audio, model)
    steps, _ = _direct_steps(model, audio[0])
    torch.testing.assert_close(embeddings[0], steps.float(), atol=1e-5, rtol=1e-4)


def _receptive_field_centres(model, columns: list[int], num_frames: int = 128) -> list[float]:
    """Input frame at the centre of each step's receptive field through the layers that move time, measured
    by perturbing one input frame at a time (the blocks that attend over all steps are left out)."""
    encoder, config = model.encoder, model.encoder.config
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, num_frames, config.num_mel_bins, generator=g)
    batch = base.repeat(num_frames + 1, 1, 1)
    batch[torch.arange(1, num_frames + 1), torch.arange(num_frames)] += 3.0  # row k + 1: frame k perturbed
    with torch.no_grad():
        if config.model_type == "audiorep-beats":
            steps = encoder.patch_embedding(batch.unsqueeze(1)).mean(-1).transpose(1, 2)
        elif config.model_type == "audiorep-zipformer":
            lengths = torch.full((len(batch),), num_frames)
            hidden, lengths = encoder.embed(batch, lengths)
            steps = encoder.downsample_output(hidden, lengths)
        else:
            steps = encoder(batch).last_hidden_state.mean(2).transpose(1, 2)
    # Any change counts: the far edges of a field move a step by little, frames outside move it not at all.
    changed = (steps[1:] != steps[:1]).any(-1)  # (frame perturbed, step)
    centres = []
    for column in columns:
        frames = torch.nonzero(changed[:, column]).flatten()
        centres.append((frames.min().item() + frames.max().item()) / 2.0)
    return centres


def test_a_timestamp_is_the_centre_of_the_frames_its_step_reads(family):
    # The receptive field in input frames of a step away from the edges, measured by perturbing frames,
    # must be centred on the frame whose time the timestamp is (far enough from the start that the field is
    # not cut by it: CP-Mobile's reaches 35 frames to either side).
    _, model = family
    columns = [5, 6]
    measured = _receptive_field_centres(model, columns)
    fe, geometry = model.feature_extractor, model.geometry
    assert measured == [geometry.stride * c + geometry.centre for c in columns]
    _, timestamps = hear.get_timestamp_embeddings(_sound(model, 1, 1.5), model)
    shift = (fe.frame_times(2)[1] - fe.frame_times(2)[0]) * 1000
    for column, frame in zip(columns, measured, strict=True):
        assert timestamps[0, column].item() == pytest.approx(fe.frame_times(1)[0] * 1000 + frame * shift)


def test_a_long_sound_continues_the_timestamps_across_windows(family):
    _, model = family
    windowed = hear.HearModel(model.encoder, model.feature_extractor, window_seconds=1.0)
    audio = _sound(model, 2, 3.3)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, windowed)
    _, whole = hear.get_timestamp_embeddings(audio, model)  # one window
    assert len(hear._step_windows(windowed, audio.shape[1])) == 4
    torch.testing.assert_close(timestamps, whole, atol=0, rtol=0)
    # The second window starts `window_steps` steps in, on the frame grid, and its steps come next.
    n = windowed.window_steps
    start = n * windowed.geometry.stride * hear._hop_samples(model.feature_extractor)
    steps, _ = _direct_steps(model, audio[1, start : start + windowed.window_samples])
    torch.testing.assert_close(embeddings[1, n : 2 * n], steps[:n].float(), atol=1e-5, rtol=1e-4)


def test_step_embeddings_are_deterministic_and_do_not_depend_on_the_batch(family):
    _, model = family
    windowed = hear.HearModel(model.encoder, model.feature_extractor, batch_windows=2, window_seconds=1.0)
    audio = _sound(model, 5, 2.2, seed=3)
    together, times = hear.get_timestamp_embeddings(audio, windowed)
    alone, alone_times = hear.get_timestamp_embeddings(audio[3:4], windowed)
    torch.testing.assert_close(together[3], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(times[3], alone_times[0], atol=0, rtol=0)
    again, _ = hear.get_timestamp_embeddings(audio, windowed)
    torch.testing.assert_close(together, again, atol=0, rtol=0)
    scene = hear.get_scene_embeddings(audio, windowed)
    torch.testing.assert_close(scene, hear.get_scene_embeddings(audio, windowed), atol=0, rtol=0)
    torch.testing.assert_close(
        scene[3], hear.get_scene_embeddings(audio[3:4], windowed)[0], atol=1e-5, rtol=1e-4
    )


def test_the_scene_embedding_of_a_sound_in_one_window_is_the_encoders_own(family):
    _, model = family
    audio = _sound(model, 2, 2.0)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (2, model.scene_embedding_size) and scene.dtype == torch.float32
    _, pooled = _direct_steps(model, audio[1])
    torch.testing.assert_close(scene[1], pooled.float(), atol=1e-5, rtol=1e-4)


def test_a_sound_shorter_than_one_step_is_refused_by_name(family):
    _, model = family
    if model.geometry.span == 1:
        # Every analysis frame makes a step (CP-Mobile's padded convolutions): one frame is enough.
        assert model.min_samples == model.feature_extractor.min_samples
        embeddings, _ = hear.get_timestamp_embeddings(torch.zeros(1, model.min_samples), model)
        assert embeddings.shape[1] == 1
        return
    with pytest.raises(ValueError, match=rf"one time step of the {model.family.name} encoder"):
        hear.get_scene_embeddings(torch.zeros(1, model.min_samples - 1), model)


def test_a_classifier_is_served_by_its_encoder():
    from transformers import AutoModelForAudioClassification

    from hf_audiorep.registry import architecture_for, config_from_preset, feature_extractor_for

    config = config_from_preset("cp-mobile-6k", num_labels=3)
    torch.manual_seed(0)
    classifier = architecture_for(config.model_type).heads[AutoModelForAudioClassification](config)
    model = hear.HearModel(classifier, feature_extractor_for(config))
    assert model.encoder is classifier.base_model
    assert model.scene_embedding_size == config.hidden_size


def test_a_module_that_is_no_encoder_of_the_library_is_refused_by_name():
    from hf_audiorep.registry import config_from_preset, feature_extractor_for

    fe = feature_extractor_for(config_from_preset("zipformer-small"))
    with pytest.raises(
        TypeError, match=r"serves the library's encoders: .* Linear \(model_type None\) is none"
    ):
        hear.HearModel(nn.Linear(4, 4), fe)
