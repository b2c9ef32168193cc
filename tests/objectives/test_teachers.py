"""The frozen Representation Regularization teacher (CLAP, this library's models, any AutoModel), its
on-device CLAP front-end, and precomputed embedding columns served by AudioStream.

Every model is tiny and randomly initialised, saved to tmp_path and loaded back with from_pretrained,
so the Hub is never touched."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from clap_utils import PROJECTION_DIM, TINY_HTSAT, TINY_ROBERTA, clap_extractor
from datasets import Audio, ClassLabel, Dataset, Features, List, Value
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    ASTModel,
    AutoModel,
    ClapAudioModelWithProjection,
    ClapConfig,
    ClapModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

from hf_audiorep import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
    AudioMAEModel,
)
from hf_audiorep.data import AudioStream
from hf_audiorep.objectives import FrozenTeacher, clap_input_features, precompute_teacher_embeddings

SR = 16000


def _save_tiny_ast(directory, model_class, **config_overrides) -> None:
    """A random-weight 16-wide AST (encoder or classifier) with its 16-bin feature extractor."""
    config = ASTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_mel_bins=16,
        max_length=100,
        patch_size=16,
        frequency_stride=10,
        time_stride=10,
        **config_overrides,
    )
    model_class(config).save_pretrained(directory)
    ASTFeatureExtractor(num_mel_bins=16, max_length=100).save_pretrained(directory)


def _tone(seconds: float, freq: float, sr: int = SR) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return 0.4 * torch.sin(2 * torch.pi * freq * t)


def _two_clips(sr: int = SR) -> tuple[torch.Tensor, torch.Tensor]:
    """A (2, sr) batch: a full-second tone and a 0.6 s noise burst zero-padded to a second."""
    noise = 0.1 * torch.randn(int(0.6 * sr), generator=torch.Generator().manual_seed(0))
    batch = torch.zeros(2, sr)
    batch[0] = _tone(1.0, 440.0, sr)
    batch[1, : len(noise)] = noise
    return batch, torch.tensor([sr, len(noise)])


def _assert_good_embeddings(teacher: FrozenTeacher, dim: int) -> torch.Tensor:
    waveforms, lengths = _two_clips()
    first = teacher.embed(waveforms, lengths, SR)
    assert first.shape == (2, dim) and first.dtype == torch.float32
    assert torch.isfinite(first).all()
    torch.testing.assert_close(teacher.embed(waveforms, lengths, SR), first, rtol=0, atol=0)
    assert (first[0] - first[1]).abs().max() > 1e-4  # different clips, different embeddings
    return first


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = ClapConfig(text_config=TINY_ROBERTA, audio_config=TINY_HTSAT, projection_dim=PROJECTION_DIM)
    path = tmp_path_factory.mktemp("clap")
    ClapModel(config).save_pretrained(path)
    clap_extractor().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def audiomae_dir(tmp_path_factory):
    """A saved classification checkpoint: the teacher must load its base encoder."""
    torch.manual_seed(0)
    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=128, num_labels=5)
    path = tmp_path_factory.mktemp("audiomae")
    AudioMAEForAudioClassification(config).save_pretrained(path)
    AudioFbankFeatureExtractor(target_length=128).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def audiomae_teacher(audiomae_dir):
    return FrozenTeacher.from_pretrained(audiomae_dir)


# ------------------------------------------------------------------------------------------- CLAP


@pytest.mark.parametrize("truncation", ["rand_trunc", "fusion"])
@pytest.mark.parametrize("padding", ["repeatpad", "repeat", "pad"])
def test_clap_features_match_the_feature_extractor(truncation, padding):
    extractor = clap_extractor(truncation=truncation, padding=padding)
    rng = np.random.default_rng(0)
    clips = [
        (0.1 * rng.standard_normal(48000)).astype(np.float32),  # exactly max_length_s
        _tone(20000 / 48000, 440.0, 48000).numpy(),
        (0.1 * rng.standard_normal(7001)).astype(np.float32),
    ]
    expected = extractor(clips, sampling_rate=48000, return_tensors="pt")["input_features"]
    batch = torch.zeros(3, 48000)
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = torch.from_numpy(clip)
    features, is_longer = clap_input_features(extractor, batch, torch.tensor([len(c) for c in clips]))
    assert features.shape == expected.shape == (3, 4 if truncation == "fusion" else 1, 101, 16)
    torch.testing.assert_close(features, expected.float(), rtol=0, atol=1e-4)  # dB
    assert is_longer.shape == (3, 1) and not is_longer.any()  # deterministic, unlike the extractor


def test_clap_teacher_from_pretrained(clap_dir):
    teacher = FrozenTeacher.from_pretrained(clap_dir)
    assert teacher.kind == "clap" and teacher.sampling_rate == 48000
    assert teacher.embedding_dim == PROJECTION_DIM
    embeddings = _assert_good_embeddings(teacher, PROJECTION_DIM)
    # get_audio_features' output is the L2-normalised projection
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))

    # The same clip at 48 kHz needs no resampling and gives (nearly) the same target.
    waveforms, lengths = _two_clips(48000)
    at_48k = teacher.embed(waveforms, lengths, 48000)
    assert torch.nn.functional.cosine_similarity(at_48k, embeddings).min() > 0.99

    # The audio tower alone (with projection) gives the same targets.
    audio_only = ClapAudioModelWithProjection.from_pretrained(clap_dir)
    tower = FrozenTeacher(audio_only, clap_extractor(), "clap")
    torch.testing.assert_close(tower.embed(*_two_clips(), SR), embeddings, rtol=1e-4, atol=1e-5)


def test_clap_teacher_matches_the_host_feature_extractor(clap_dir):
    """The on-device front-end feeds the model what ClapFeatureExtractor would."""
    teacher = FrozenTeacher.from_pretrained(clap_dir)
    waveforms, lengths = _two_clips(48000)
    clips = [w[:n].numpy() for w, n in zip(waveforms, lengths.tolist(), strict=True)]
    inputs = teacher.feature_extractor(clips, sampling_rate=48000, return_tensors="pt")
    with torch.no_grad():
        expected = teacher.model.get_audio_features(**inputs).pooler_output
    torch.testing.assert_close(teacher.embed(waveforms, lengths, 48000), expected, rtol=1e-4, atol=1e-5)


def test_teacher_is_frozen_and_gradients_never_reach_it(clap_dir):
    teacher = FrozenTeacher.from_pretrained(clap_dir)
    assert not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    teacher.model.train()  # even if someone flips it, embed runs the teacher in eval mode
    waveforms, lengths = _two_clips()
    waveforms.requires_grad_(True)  # a student-side tensor that requires grad
    targets = teacher.embed(waveforms, lengths, SR)
    assert not targets.requires_grad and not teacher.model.training

    student = torch.nn.Linear(SR, PROJECTION_DIM)
    loss = (student(waveforms) - targets).square().sum()
    loss.backward()
    assert student.weight.grad is not None
    assert all(p.grad is None for p in teacher.model.parameters())
    assert not isinstance(teacher, torch.nn.Module)  # cannot be registered inside the student


# -------------------------------------------------------------------------------- hf_audiorep kind


def test_hf_audiorep_teacher_from_a_classification_checkpoint(audiomae_teacher):
    teacher = audiomae_teacher
    assert teacher.kind == "hf_audiorep" and type(teacher.model).__name__ == "AudioMAEModel"
    assert teacher.sampling_rate == SR and teacher.embedding_dim == 192
    _assert_good_embeddings(teacher, 192)


def test_zero_padding_does_not_change_an_embedding(audiomae_teacher):
    clip = _tone(0.7, 300.0) + 0.05 * torch.randn(int(0.7 * SR), generator=torch.Generator().manual_seed(1))
    alone = audiomae_teacher.embed(clip[None], torch.tensor([len(clip)]), SR)
    padded = torch.zeros(2, SR)
    padded[0, : len(clip)] = clip
    padded[1] = _tone(1.0, 900.0)  # a longer neighbour sets the batch width
    in_batch = audiomae_teacher.embed(padded, torch.tensor([len(clip), SR]), SR)
    torch.testing.assert_close(in_batch[0], alone[0], rtol=1e-4, atol=1e-5)
    # and the padding really is excluded: counting it as audio changes the embedding
    unmasked = audiomae_teacher.embed(padded, torch.tensor([SR, SR]), SR)
    assert (unmasked[0] - alone[0]).abs().max() > 1e-3


def test_resampling_to_the_teacher_rate(audiomae_teacher):
    """A 32 kHz batch is resampled on the device; the embedding matches the 16 kHz one."""
    waveforms, lengths = _two_clips()
    reference = audiomae_teacher.embed(waveforms, lengths, SR)
    import torchaudio

    upsampled = torchaudio.functional.resample(waveforms, SR, 2 * SR)
    resampled = audiomae_teacher.embed(upsampled, lengths * 2, 2 * SR)
    assert torch.nn.functional.cosine_similarity(resampled, reference).min() > 0.999


# ------------------------------------------------------------------------------------------- logits


def test_a_classifier_teacher_gives_logits(audiomae_dir, audiomae_teacher):
    """A library classifier as a teacher: (B, num_labels) logits (distillation targets), the classifier's own
    in eval mode; its embeddings are those of the bare encoder loaded from the same checkpoint."""
    teacher = audiomae_teacher
    assert teacher.num_labels == 5 and type(teacher.classifier).__name__ == "AudioMAEForAudioClassification"
    waveforms, lengths = _two_clips()
    logits = teacher.logits(waveforms, lengths, SR)
    assert logits.shape == (2, 5) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    torch.testing.assert_close(teacher.logits(waveforms, lengths, SR), logits, rtol=0, atol=0)
    input_values, attention_mask = teacher.feature_extractor.batch_features(waveforms, lengths)
    with torch.no_grad():
        expected = teacher.classifier(input_values=input_values, attention_mask=attention_mask).logits
    torch.testing.assert_close(logits, expected)
    assert all(not p.requires_grad for p in teacher.classifier.parameters())

    encoder = FrozenTeacher(AutoModel.from_pretrained(audiomae_dir), teacher.feature_extractor, "hf_audiorep")
    torch.testing.assert_close(
        encoder.embed(waveforms, lengths, SR), teacher.embed(waveforms, lengths, SR), rtol=0, atol=0
    )

    # A model instance (not a checkpoint) with a head works the same way.
    torch.manual_seed(0)
    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=128, num_labels=3)
    direct = FrozenTeacher(AudioMAEForAudioClassification(config), teacher.feature_extractor, "hf_audiorep")
    assert direct.logits(waveforms, lengths, SR).shape == (2, 3)


def test_an_auto_classifier_teacher_gives_logits(tmp_path):
    torch.manual_seed(0)
    _save_tiny_ast(tmp_path, ASTForAudioClassification, num_labels=7)
    teacher = FrozenTeacher.from_pretrained(tmp_path)
    assert teacher.kind == "auto" and teacher.num_labels == 7 and teacher.embedding_dim == 16
    waveforms, lengths = _two_clips()
    assert teacher.logits(waveforms, lengths, SR).shape == (2, 7)
    _assert_good_embeddings(teacher, 16)


def test_an_encoder_only_teacher_refuses_logits(clap_dir, audiomae_teacher):
    waveforms, lengths = _two_clips()
    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=128)
    encoder = FrozenTeacher(AudioMAEModel(config), audiomae_teacher.feature_extractor, "hf_audiorep")
    assert encoder.classifier is None and encoder.num_labels is None
    with pytest.raises(TypeError, match="no classification head"):
        encoder.logits(waveforms, lengths, SR)
    with pytest.raises(TypeError, match="no classification head"):  # CLAP serves embeddings only
        FrozenTeacher.from_pretrained(clap_dir).logits(waveforms, lengths, SR)


# ------------------------------------------------------------------------------------- auto kind


def test_auto_teacher_with_pooler_output(tmp_path):
    torch.manual_seed(0)
    _save_tiny_ast(tmp_path, ASTModel)
    teacher = FrozenTeacher.from_pretrained(tmp_path)
    assert teacher.kind == "auto" and teacher.embedding_dim == 16
    _assert_good_embeddings(teacher, 16)


def test_auto_teacher_mean_pools_real_frames(tmp_path):
    """Wav2Vec2Model has no pooler: the embedding is the mean of its real (unpadded) frames."""
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8, 8),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    teacher = FrozenTeacher.from_pretrained(tmp_path)
    assert teacher.kind == "auto" and teacher.embedding_dim == 16
    waveforms, lengths = _two_clips()
    embeddings = _assert_good_embeddings(teacher, 16)
    alone = teacher.embed(waveforms[1:, : lengths[1]], lengths[1:], SR)
    torch.testing.assert_close(embeddings[1], alone[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ errors


def test_errors_name_the_problem(tmp_path, clap_dir, audiomae_teacher):
    with pytest.raises(ValueError, match="no/such/model"):
        FrozenTeacher.from_pretrained(tmp_path / "no" / "such" / "model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        FrozenTeacher.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="kind must be one of"):
        FrozenTeacher(torch.nn.Linear(2, 2), clap_extractor(), "clip")
    with pytest.raises(TypeError, match="ClapModel"):
        FrozenTeacher(torch.nn.Linear(2, 2), clap_extractor(), "clap")
    with pytest.raises(TypeError, match="audiorep"):
        FrozenTeacher(ClapModel.from_pretrained(clap_dir), clap_extractor(), "hf_audiorep")

    class NoOutput(torch.nn.Module):
        main_input_name = "input_values"

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_values, attention_mask=None):
            return {"logits": input_values.sum(-1)}

    with pytest.raises(TypeError, match="pooler_output"):
        FrozenTeacher(NoOutput(), Wav2Vec2FeatureExtractor(), "auto")

    waveforms, lengths = _two_clips()
    with pytest.raises(ValueError, match="lengths must lie"):
        audiomae_teacher.embed(waveforms, torch.tensor([0, 5]), SR)
    with pytest.raises(ValueError, match="lengths must hold"):
        audiomae_teacher.embed(waveforms, torch.tensor([1.0, 2.0]), SR)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        audiomae_teacher.embed(waveforms[0], lengths[:1], SR)
    with pytest.raises(ValueError, match="sample_rate"):
        audiomae_teacher.embed(waveforms, lengths, 0)


# ------------------------------------------------------------------------------- precomputed column


def _flac(wave: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, SR, format="FLAC")
    return buffer.getvalue()


def _audio_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    clips = [(0.2 * rng.standard_normal(int(SR * s))).astype(np.float32) for s in (0.5, 0.3, 0.8, 0.4, 0.6)]
    features = Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=["a", "b"]))})
    audio = [{"bytes": _flac(c), "path": None} for c in clips]
    audio[3] = {"bytes": b"not audio at all" * 8, "path": None}
    return Dataset.from_dict({"audio": audio, "labels": [[i % 2] for i in range(5)]}, features=features)


def test_precompute_embeddings_then_stream_them(audiomae_teacher):
    dataset = _audio_dataset()
    with_column = precompute_teacher_embeddings(dataset, audiomae_teacher, batch_size=2)
    assert with_column.features["rr_embedding"] == List(Value("float32"), length=192)
    assert with_column.features["audio"] == dataset.features["audio"]  # left as it was
    table = np.asarray(with_column["rr_embedding"], dtype=np.float32)
    assert table.shape == (5, 192)
    assert np.isnan(table[3]).all() and np.isfinite(np.delete(table, 3, axis=0)).all()  # the corrupt clip

    # Row 2, embedded alone, is what the column holds for it (batching and padding do not leak).
    from hf_audiorep.data.decode import decode_audio

    wave = torch.from_numpy(decode_audio(dataset.cast_column("audio", Audio(decode=False))[2]["audio"], SR))
    alone = audiomae_teacher.embed(wave[None], torch.tensor([len(wave)]), SR)
    np.testing.assert_allclose(table[2], alone[0].numpy(), rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="already has a column"):
        precompute_teacher_embeddings(with_column, audiomae_teacher)

    stream = AudioStream(
        with_column,
        batch_size=2,
        sample_rate=SR,
        clip_seconds=1.0,
        train=False,
        extra_columns=("rr_embedding",),
    )
    batches = list(stream)
    embeddings = torch.cat([b["rr_embedding"] for b in batches])
    assert all(b["rr_embedding"].dtype == torch.float32 for b in batches)
    torch.testing.assert_close(embeddings, torch.from_numpy(np.delete(table, 3, axis=0)))
    assert stream.stats["skipped"] == 1  # the NaN row (its audio is corrupt too)
