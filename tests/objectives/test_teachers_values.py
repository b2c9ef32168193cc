"""Value tests of the frozen teacher (`hf_audiorep.objectives.teachers`): which output is returned, the
pooling masks, the input checks, the fp32 regions, the kinds' detection, device and dtype moves, and the
contents of precomputed columns.

Most tests run toy teachers whose outputs are written out by hand here: a library-style front end that cuts
a clip into frames of `F` samples, an encoder that is one linear map of a frame, and a host-side extractor
that zero-pads numpy clips. Each expected value is computed from the clip with numpy, never by the teacher.
"""

from __future__ import annotations

import inspect
import io
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
from clap_utils import PROJECTION_DIM, TINY_HTSAT, TINY_ROBERTA, clap_extractor
from datasets import Audio, Dataset, Features, IterableDataset, List, Value, load_from_disk
from test_teachers import _save_tiny_ast as save_tiny_ast
from torch import nn
from transformers import (
    ASTFeatureExtractor,
    ASTModel,
    ClapAudioConfig,
    ClapAudioModelWithProjection,
    ClapConfig,
    ClapModel,
    PretrainedConfig,
)

from hf_audiorep import AudioMAEConfig, AudioMAEForAudioClassification, AudioMAEModel
from hf_audiorep.objectives import teachers
from hf_audiorep.objectives.teachers import FrozenTeacher, clap_input_features, precompute_teacher_embeddings

F = 4  # samples per toy frame
RATE = 8000  # the toy teachers' rate


def _weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


class ToyFrontEnd:
    """A library-style front end: frames of F samples, masked to the whole frames each clip fills."""

    def __init__(self, sampling_rate=RATE):
        self.sampling_rate = sampling_rate
        self.calls = []

    def batch_features(self, waveforms, lengths):
        self.calls.append(
            {
                "autocast": torch.is_autocast_enabled("cpu"),
                "waveforms": waveforms.clone(),
                "lengths": lengths.clone(),
            }
        )
        batch, width = waveforms.shape
        frames = waveforms[:, : width // F * F].reshape(batch, -1, F)
        mask = (torch.arange(frames.shape[1])[None] < (lengths // F)[:, None]).long()
        return frames, mask


class ToyEncoder(nn.Module):
    """One linear map per frame; pooler_output is the mean over the masked frames."""

    main_input_name = "input_values"

    def __init__(self, width=3, model_type="audiorep-toy", seed=0):
        super().__init__()
        self.config = SimpleNamespace(model_type=model_type, hidden_size=width)
        self.proj = nn.Linear(F, width)
        with torch.no_grad():
            self.proj.weight.copy_(_weights(width, F, seed))
            self.proj.bias.copy_(_weights(1, width, seed + 1)[0])
        self.seen = []

    def forward(self, input_values, attention_mask=None):
        self.seen.append(
            {"dtype": input_values.dtype, "training": self.training, "grad": torch.is_grad_enabled()}
        )
        hidden = self.proj(input_values)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return SimpleNamespace(last_hidden_state=hidden, pooler_output=pooled)


class ToyForAudioClassification(nn.Module):
    """A toy encoder and a linear head; not in transformers' mapping, so found by its class name."""

    main_input_name = "input_values"

    def __init__(self, num_labels=2, seed=0, logits_ndim=2):
        super().__init__()
        self.encoder = ToyEncoder(seed=seed)
        self.head = nn.Linear(3, num_labels)
        with torch.no_grad():
            self.head.weight.copy_(_weights(num_labels, 3, seed + 2))
            self.head.bias.copy_(_weights(1, num_labels, seed + 3)[0])
        self.config = SimpleNamespace(model_type="audiorep-toy", hidden_size=3, num_labels=num_labels)
        self.logits_ndim = logits_ndim
        self.seen = []

    @property
    def base_model(self):
        return self.encoder

    def forward(self, input_values, attention_mask=None):
        self.seen.append({"training": self.training, "grad": torch.is_grad_enabled()})
        logits = self.head(self.encoder(input_values, attention_mask).pooler_output)
        if self.logits_ndim == 3:
            logits = logits[:, None]
        return SimpleNamespace(logits=logits if self.logits_ndim else None)


def _toy_teacher(seed=0, classifier=False, rate=RATE) -> FrozenTeacher:
    model = ToyForAudioClassification(seed=seed) if classifier else ToyEncoder(seed=seed)
    return FrozenTeacher(model, ToyFrontEnd(rate), "hf_audiorep")


def _expected_embedding(clip: np.ndarray, encoder: ToyEncoder) -> np.ndarray:
    """The toy encoder's output written out: the mean of W x + b over the clip's whole frames."""
    weight = encoder.proj.weight.detach().double().numpy()
    bias = encoder.proj.bias.detach().double().numpy()
    frames = np.asarray(clip, dtype=np.float64)[: len(clip) // F * F].reshape(-1, F)
    return (frames @ weight.T + bias).mean(axis=0)


def _expected_logits(clip: np.ndarray, model: ToyForAudioClassification) -> np.ndarray:
    weight = model.head.weight.detach().double().numpy()
    bias = model.head.bias.detach().double().numpy()
    return _expected_embedding(clip, model.encoder) @ weight.T + bias


def _padded(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = torch.zeros(len(clips), max(len(c) for c in clips))
    for row, clip in enumerate(clips):
        batch[row, : len(clip)] = torch.as_tensor(clip)
    return batch, torch.tensor([len(c) for c in clips])


def _clips(*lengths: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


# ------------------------------------------------------------------------- which output is returned


def test_embed_is_the_masked_mean_of_each_clips_own_frames():
    teacher = _toy_teacher()
    clips = _clips(24, 10, 17)
    waveforms, lengths = _padded(clips)
    got = teacher.embed(waveforms, lengths, RATE)
    assert got.shape == (3, 3) and got.dtype == torch.float32
    expected = np.stack([_expected_embedding(c, teacher.model) for c in clips])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    # __call__ is embed
    torch.testing.assert_close(teacher(waveforms, lengths, RATE), got, rtol=0, atol=0)
    # the front end got the padded batch and the real lengths as int64
    call = teacher.feature_extractor.calls[-1]
    assert call["lengths"].tolist() == [24, 10, 17] and call["lengths"].dtype == torch.int64
    torch.testing.assert_close(call["waveforms"], waveforms, rtol=0, atol=0)


def test_logits_come_from_the_whole_classifier_and_embed_from_its_encoder():
    teacher = _toy_teacher(classifier=True)
    assert teacher.model is teacher.classifier.encoder and teacher.num_labels == 2
    assert teacher.embedding_dim == 3
    clips = _clips(20, 12)
    waveforms, lengths = _padded(clips)
    logits = teacher.logits(waveforms, lengths, RATE)
    assert logits.shape == (2, 2) and logits.dtype == torch.float32
    expected = np.stack([_expected_logits(c, teacher.classifier) for c in clips])
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-6)
    embeddings = teacher.embed(waveforms, lengths, RATE)
    expected = np.stack([_expected_embedding(c, teacher.model) for c in clips])
    np.testing.assert_allclose(embeddings.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_both_outputs_run_in_eval_mode_without_gradients_and_return_float32():
    teacher = _toy_teacher(classifier=True)
    assert not teacher.classifier.training and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.classifier.parameters())
    teacher.classifier.train()  # a teacher flipped to train mode is put back in eval mode
    waveforms, lengths = _padded(_clips(16, 8))
    assert torch.is_grad_enabled()
    teacher.logits(waveforms, lengths, RATE)
    assert teacher.classifier.seen[-1] == {"training": False, "grad": False}
    teacher.classifier.train()
    teacher.embed(waveforms, lengths, RATE)
    assert teacher.model.seen[-1] == {"dtype": torch.float32, "training": False, "grad": False}

    # A float64 teacher is fed float64 frames and still returns float32 outputs.
    double = _toy_teacher(classifier=True)
    double.to(torch.float64)
    assert double.dtype == torch.float64
    assert double.embed(waveforms, lengths, RATE).dtype == torch.float32
    assert double.model.seen[-1]["dtype"] == torch.float64
    assert double.logits(waveforms, lengths, RATE).dtype == torch.float32


def test_logits_must_be_a_batch_by_labels_tensor():
    waveforms, lengths = _padded(_clips(16, 8))
    for ndim, got in ((3, r"\(2, 1, 2\)"), (0, "NoneType")):
        model = ToyForAudioClassification(logits_ndim=ndim)
        teacher = FrozenTeacher(model, ToyFrontEnd(), "hf_audiorep")
        with pytest.raises(TypeError, match=f"ToyForAudioClassification returned no .*got {got}"):
            teacher.logits(waveforms, lengths, RATE)


# ------------------------------------------------------------------------------ inputs and rates


def test_resampling_feeds_the_teacher_its_rate_and_ceiled_lengths():
    """12 kHz clips for an 8 kHz teacher: the front end sees torchaudio's resampling, in float32 even
    under bf16 autocast, and lengths ceil(n * 8000 / 12000)."""
    teacher = _toy_teacher()
    waveforms, _ = _padded(_clips(36))
    waveforms = waveforms.expand(4, -1).to(torch.float64).contiguous()
    lengths = torch.tensor([36, 4, 3, 1], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        teacher.embed(waveforms, lengths, 12000)
    call = teacher.feature_extractor.calls[-1]
    assert call["lengths"].tolist() == [24, 3, 2, 1] and call["lengths"].dtype == torch.int64
    assert not call["autocast"]  # the front end runs outside autocast
    expected = torchaudio.functional.resample(waveforms.float(), 12000, RATE)
    assert call["waveforms"].dtype == torch.float32 and call["waveforms"].shape == (4, 24)
    torch.testing.assert_close(call["waveforms"], expected, rtol=0, atol=0)


def test_a_batch_at_the_teachers_rate_is_passed_as_it_is():
    teacher = _toy_teacher()
    waveforms, lengths = _padded(_clips(13, 9))
    teacher.embed(waveforms.double(), lengths, np.int64(RATE))
    call = teacher.feature_extractor.calls[-1]
    assert call["waveforms"].dtype == torch.float32
    torch.testing.assert_close(call["waveforms"], waveforms, rtol=0, atol=0)
    assert call["lengths"].tolist() == [13, 9]


def test_batch_checks():
    teacher = _toy_teacher()
    waveforms, lengths = _padded(_clips(16, 8))
    teacher.embed(waveforms, [16, 1], RATE)  # a list of ints is accepted, 1 and the width are in range
    assert teacher.feature_extractor.calls[-1]["lengths"].tolist() == [16, 1]
    with pytest.raises(TypeError, match="^waveforms must be a torch.Tensor, got ndarray$"):
        teacher.embed(waveforms.numpy(), lengths, RATE)
    with pytest.raises(ValueError, match=r"^waveforms must be a \(batch, samples\) float tensor"):
        teacher.embed(waveforms[None], lengths, RATE)
    with pytest.raises(ValueError, match=r"of dtype torch.int16"):
        teacher.embed(waveforms.to(torch.int16), lengths, RATE)
    for bad in (torch.tensor([True, True]), torch.tensor([16, 8, 8]), torch.tensor([16.0, 8.0])):
        with pytest.raises(
            ValueError, match=r"^lengths must hold one integer sample count per clip, shape \(2,\)"
        ):
            teacher.embed(waveforms, bad, RATE)
    with pytest.raises(ValueError, match=r"^lengths must lie in \[1, 16\] .*got values in \[0, 16\]$"):
        teacher.embed(waveforms, torch.tensor([16, 0]), RATE)
    with pytest.raises(ValueError, match=r"got values in \[8, 17\]$"):
        teacher.embed(waveforms, torch.tensor([17, 8]), RATE)
    for rate in (0, -8000, True, 8000.0, "8000"):
        with pytest.raises(ValueError, match="^sample_rate must be a positive integer"):
            teacher.embed(waveforms, lengths, rate)
    with pytest.raises(ValueError, match="^sample_rate must be a positive integer"):
        _toy_teacher(classifier=True).logits(waveforms, lengths, 0)


# ------------------------------------------------------------------------------- the auto kind


class HostExtractor:
    """A transformers-style extractor of numpy clips that zero-pads to the longest and masks the padding."""

    def __init__(self, frame_mask=False):
        self.sampling_rate = RATE
        self.frame_mask = frame_mask
        self.calls = []

    def __call__(
        self, raw, sampling_rate=None, padding=False, return_attention_mask=None, return_tensors=None
    ):
        self.calls.append(
            {
                "lengths": [len(r) for r in raw],
                "types": {type(r) for r in raw},
                "kwargs": {
                    "sampling_rate": sampling_rate,
                    "padding": padding,
                    "return_attention_mask": return_attention_mask,
                    "return_tensors": return_tensors,
                },
            }
        )
        longest = max(len(r) for r in raw)
        values = np.zeros((len(raw), longest), dtype=np.float32)
        mask = np.zeros((len(raw), longest), dtype=np.int64)
        for row, clip in enumerate(raw):
            values[row, : len(clip)] = clip
            mask[row, : len(clip)] = 1
        if self.frame_mask:  # a mask at the model's frame rate (whole frames only)
            mask = mask[:, F - 1 :: F]
        return {
            "input_values": torch.from_numpy(values),
            "attention_mask": torch.from_numpy(mask),
            "note": ["not a tensor"] * len(raw),
            "unused": torch.zeros(len(raw)),
        }


class FixedLengthExtractor(HostExtractor):
    """Pads to its own length (AST-like): no padding argument to set, no attention mask to ask for."""

    def __call__(self, raw, sampling_rate=None, padding="max_length", return_tensors=None):
        return super().__call__(
            raw, sampling_rate=sampling_rate, padding=padding, return_tensors=return_tensors
        )


class BareFrameModel(nn.Module):
    """An AutoModel without a pooler: frames of F samples through a linear map (last_hidden_state only),
    and without a main_input_name."""

    def __init__(self, width=5):
        super().__init__()
        self.config = SimpleNamespace(model_type="toy-frames")
        self.proj = nn.Linear(F, width)
        with torch.no_grad():
            self.proj.weight.copy_(_weights(width, F, 7))
            self.proj.bias.copy_(_weights(1, width, 8)[0])
        self.kwargs = []

    def forward(self, input_values, attention_mask=None, note=None):
        self.kwargs.append({"input_values": input_values, "attention_mask": attention_mask, "note": note})
        batch, width = input_values.shape
        frames = input_values[:, : width // F * F].reshape(batch, -1, F)
        return SimpleNamespace(last_hidden_state=self.proj(frames))


class FrameModel(BareFrameModel):
    main_input_name = "input_values"


def test_auto_teacher_cuts_clips_pads_on_the_host_and_pools_real_frames():
    """Clips of 16 and 6 samples: the extractor pads to 16 (4 frames) and the 6-sample clip covers
    ceil(6 * 4 / 16) = 2 output frames (uniform stride), which are averaged; its other 2 are not."""
    model = FrameModel()
    extractor = HostExtractor()
    teacher = FrozenTeacher(model, extractor, "auto")
    assert teacher.classifier is None and teacher.num_labels is None
    # the width comes from one probe: a 1 s clip at the teacher's rate
    assert teacher.embedding_dim == 5 and extractor.calls[0]["lengths"] == [RATE]
    clips = _clips(16, 6)
    waveforms, lengths = _padded(clips)
    waveforms = torch.cat([waveforms, torch.ones(2, 4)], dim=1)  # batch padding the clips never see
    got = teacher.embed(waveforms, lengths, RATE)
    call = extractor.calls[-1]
    assert call["lengths"] == [16, 6] and call["types"] == {np.ndarray}
    assert call["kwargs"] == {
        "sampling_rate": RATE,
        "padding": True,
        "return_attention_mask": True,
        "return_tensors": "pt",
    }
    # the tensors forward accepts, not the list it also accepts
    assert model.kwargs[-1]["note"] is None and model.kwargs[-1]["attention_mask"] is not None
    weight, bias = model.proj.weight.detach().double().numpy(), model.proj.bias.detach().double().numpy()
    frames = [
        np.asarray(clips[0], np.float64).reshape(4, F),
        np.pad(clips[1], (0, 2)).astype(np.float64).reshape(2, F),
    ]
    expected = np.stack([(f @ weight.T + bias).mean(0) for f in frames])
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_auto_teacher_uses_a_frame_rate_mask_as_it_is_and_casts_only_the_main_input():
    model = FrameModel().double()
    extractor = HostExtractor(frame_mask=True)
    teacher = FrozenTeacher(model, extractor, "auto")
    clips = _clips(16, 9)
    got = teacher.embed(*_padded(clips), RATE)
    inputs = model.kwargs[-1]
    assert inputs["input_values"].dtype == torch.float64  # the main input follows the weights
    assert inputs["attention_mask"].dtype == torch.int64  # the mask does not
    weight, bias = model.proj.weight.detach().numpy(), model.proj.bias.detach().numpy()
    # 9 samples fill 2 whole frames of 4
    frames = [
        np.asarray(clips[0], np.float64).reshape(4, F),
        np.asarray(clips[1][:8], np.float64).reshape(2, F),
    ]
    expected = np.stack([(f @ weight.T + bias).mean(0) for f in frames])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-6)


def test_auto_teacher_of_a_module_without_a_main_input_name():
    model = BareFrameModel()
    teacher = FrozenTeacher(model, HostExtractor(), "auto")
    clips = _clips(8, 4)
    got = teacher.embed(*_padded(clips), RATE)
    weight, bias = model.proj.weight.detach().double().numpy(), model.proj.bias.detach().double().numpy()
    frames = [np.asarray(c, np.float64).reshape(-1, F) for c in clips]
    expected = np.stack([(f @ weight.T + bias).mean(0) for f in frames])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_auto_extractor_keyword_arguments():
    fixed = FixedLengthExtractor()
    FrozenTeacher(FrameModel(), fixed, "auto")
    # its own padding default is kept, and return_attention_mask is not passed to a call without it
    assert fixed.calls[-1]["kwargs"] == {
        "sampling_rate": RATE,
        "padding": "max_length",
        "return_attention_mask": None,
        "return_tensors": "pt",
    }


def test_auto_teacher_refuses_an_extractor_whose_outputs_the_model_does_not_take():
    class Other(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(1))

        def forward(self, input_features):
            raise AssertionError("never called")

    with pytest.raises(
        TypeError,
        match=r"^HostExtractor returned \['attention_mask', 'input_values', 'note', 'unused'\], "
        r"none of which Other.forward accepts$",
    ):
        FrozenTeacher(Other(), HostExtractor(), "auto")


# ------------------------------------------------------------------------------ pooling and masks


def test_pooled_prefers_a_two_dimensional_pooler_output():
    pooled = torch.randn(2, 3)
    hidden = torch.randn(2, 4, 3)
    assert (
        teachers._pooled(SimpleNamespace(pooler_output=pooled, last_hidden_state=hidden), None, None)
        is pooled
    )
    # a (batch, time, dim) "pooler_output" is not a pooled output: the mean of last_hidden_state is used
    got = teachers._pooled(SimpleNamespace(pooler_output=hidden, last_hidden_state=hidden), None, None)
    np.testing.assert_allclose(got.numpy(), hidden.numpy().mean(axis=1), rtol=1e-6)


def test_pooled_masked_mean_counts_only_real_frames():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]])
    got = teachers._pooled(SimpleNamespace(last_hidden_state=hidden), mask, None)
    h = hidden.numpy()
    expected = np.stack([h[0, :2].mean(0), h[1, 3]])  # one real frame: that frame, not half of it
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)
    # a clip without a real frame gets zeros rather than NaN
    empty = teachers._pooled(SimpleNamespace(last_hidden_state=hidden), torch.zeros(2, 4), None)
    assert torch.equal(empty, torch.zeros(2, 3))


def test_pooled_refuses_outputs_without_either():
    class Odd(nn.Module):
        pass

    for outputs in (SimpleNamespace(), SimpleNamespace(last_hidden_state=torch.zeros(2, 3))):
        with pytest.raises(TypeError, match="^Odd returned SimpleNamespace with neither a"):
            teachers._pooled(outputs, None, Odd())


def test_frame_mask_at_another_rate():
    # 10 input steps, 4 output frames: real = ceil(n * 4 / 10) frames
    mask = torch.tensor([[1] * 10, [1] * 3 + [0] * 7, [1] + [0] * 9, [1] * 5 + [0] * 5])
    got = teachers._frame_mask(mask, 4, nn.Linear(1, 1))
    assert got.dtype == torch.bool
    assert got.tolist() == [
        [True, True, True, True],  # 4
        [True, True, False, False],  # ceil(1.2) = 2
        [True, False, False, False],  # ceil(0.4) = 1
        [True, True, False, False],  # 2 exactly
    ]
    same = teachers._frame_mask(torch.tensor([[1, 0, 1, 0]]), 4, None)
    assert same.dtype == torch.bool and same.tolist() == [[True, False, True, False]]


def test_frame_mask_asks_a_model_that_knows_its_conv_arithmetic():
    class Knows:
        calls = []

        def _get_feature_vector_attention_mask(self, frames, attention_mask):
            self.calls.append((frames, attention_mask.tolist()))
            return torch.tensor([[1, 0, 0]])

    model = Knows()
    got = teachers._frame_mask(torch.tensor([[1, 1, 0, 0, 0]]), 3, model)
    assert model.calls == [(3, [[1, 1, 0, 0, 0]])]
    assert got.dtype == torch.bool and got.tolist() == [[True, False, False]]


# ----------------------------------------------------------------------------- kinds and heads


def test_model_type_and_head_detection():
    assert teachers._model_type(nn.Linear(1, 1)) == ""
    assert teachers._model_type(SimpleNamespace(config=SimpleNamespace(model_type=None))) == ""
    assert teachers._model_type(ToyEncoder()) == "audiorep-toy"

    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=64, num_labels=2)
    assert teachers._has_classification_head(AudioMAEForAudioClassification(config))
    assert not teachers._has_classification_head(AudioMAEModel(config))  # in the mapping, not the head
    assert not teachers._has_classification_head(nn.Linear(1, 1))  # no config
    assert teachers._has_classification_head(ToyForAudioClassification())  # remote code: by its name

    class RemoteForSequenceClassification(ToyForAudioClassification):
        pass

    assert teachers._has_classification_head(RemoteForSequenceClassification())
    assert not teachers._has_classification_head(ToyEncoder())


def test_checkpoint_head_detection():
    heads = ["AudioMAEForAudioClassification"]
    assert teachers._checkpoint_has_head(AudioMAEConfig(architectures=heads))
    assert not teachers._checkpoint_has_head(AudioMAEConfig(architectures=["AudioMAEModel"]))
    assert not teachers._checkpoint_has_head(AudioMAEConfig())  # no architectures
    assert not teachers._checkpoint_has_head(SimpleNamespace())
    # a class the mapping does not know: a head only with remote code for AutoModelForAudioClassification
    remote = ["RemoteForSequenceClassification"]
    assert not teachers._checkpoint_has_head(PretrainedConfig(architectures=remote))
    assert not teachers._checkpoint_has_head(
        PretrainedConfig(architectures=remote, auto_map={"AutoModel": "m.Remote"})
    )
    assert teachers._checkpoint_has_head(
        PretrainedConfig(architectures=remote, auto_map={"AutoModelForAudioClassification": "m.Remote"})
    )


def test_constructor_checks():
    encoder = ToyEncoder()
    with pytest.raises(ValueError, match=r"^kind must be one of \('clap', 'hf_audiorep', 'auto'\), got 'x'$"):
        FrozenTeacher(encoder, ToyFrontEnd(), "x")
    with pytest.raises(TypeError, match="^model must be a torch.nn.Module, got ToyFrontEnd$"):
        FrozenTeacher(ToyFrontEnd(), ToyFrontEnd(), "hf_audiorep")
    with pytest.raises(TypeError, match="^a feature_extractor is required"):
        FrozenTeacher(encoder, None, "hf_audiorep")
    for rate in (0, -1, 8000.0, None, "8000"):
        with pytest.raises(TypeError, match=r"^ToyFrontEnd has no usable sampling_rate"):
            FrozenTeacher(encoder, ToyFrontEnd(rate), "hf_audiorep")
    teacher = FrozenTeacher(encoder, ToyFrontEnd(np.int64(RATE)), "hf_audiorep")
    assert teacher.sampling_rate == RATE and type(teacher.sampling_rate) is int
    assert FrozenTeacher(encoder, ToyFrontEnd(1), "hf_audiorep").sampling_rate == 1
    with pytest.raises(TypeError, match=r"needs a model of this library .*ToyEncoder with model_type 'toy'$"):
        FrozenTeacher(ToyEncoder(model_type="toy"), ToyFrontEnd(), "hf_audiorep")
    with pytest.raises(TypeError, match=r"needs a feature extractor with batch_features.*got HostExtractor$"):
        FrozenTeacher(encoder, HostExtractor(), "hf_audiorep")
    with pytest.raises(TypeError, match=r"^kind='clap' needs a ClapModel or .*got ToyEncoder$"):
        FrozenTeacher(encoder, clap_extractor(), "clap")
    tower = ClapAudioModelWithProjection(ClapAudioConfig(**TINY_HTSAT, projection_dim=PROJECTION_DIM))
    with pytest.raises(TypeError, match=r"^kind='clap' needs a ClapFeatureExtractor, got ToyFrontEnd$"):
        FrozenTeacher(tower, ToyFrontEnd(48000), "clap")


def test_the_teacher_is_frozen_and_reports_itself():
    teacher = _toy_teacher()
    assert teacher.kind == "hf_audiorep" and teacher.embedding_dim == 3 and teacher.sampling_rate == RATE
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.model.parameters())
    assert repr(teacher) == (
        "FrozenTeacher(kind='hf_audiorep', model='ToyEncoder', embedding_dim=3, num_labels=None, "
        "sampling_rate=8000)"
    )
    named = _toy_teacher(classifier=True)
    named.model.config._name_or_path = "org/toy"
    assert repr(named) == (
        "FrozenTeacher(kind='hf_audiorep', model='org/toy', embedding_dim=3, num_labels=2, "
        "sampling_rate=8000)"
    )


def test_to_moves_the_classifier_with_its_encoder():
    teacher = _toy_teacher(classifier=True)
    assert teacher.to("meta") is teacher
    assert teacher.device.type == "meta" and teacher.classifier.head.weight.device.type == "meta"
    encoder_only = _toy_teacher()
    assert encoder_only.to("meta") is encoder_only and encoder_only.device.type == "meta"


# ------------------------------------------------------------------------------------ CLAP front end


def test_clap_features_crop_long_clips_from_their_start():
    extractor = clap_extractor(padding="repeatpad")
    rng = np.random.default_rng(3)
    long = (0.1 * rng.standard_normal(60000)).astype(np.float32)
    one = np.full(1, 0.25, dtype=np.float32)
    batch = torch.zeros(2, 60000)
    batch[0] = torch.from_numpy(long)
    batch[1, 0] = 0.25
    features, is_longer = clap_input_features(extractor, batch, torch.tensor([60000, 1]))
    expected = extractor([long[:48000], one], sampling_rate=48000, return_tensors="pt")["input_features"]
    torch.testing.assert_close(features, expected.float(), rtol=0, atol=1e-4)
    assert is_longer.dtype == torch.bool and is_longer.tolist() == [[False], [False]]
    # "pad" zero-pads a one-sample clip; the batch's other samples are never read
    padded = clap_extractor(padding="pad")
    batch = torch.full((1, 300), 0.7)
    batch[0, 0] = 0.25
    features, _ = clap_input_features(padded, batch, torch.tensor([1]))
    expected = padded([one], sampling_rate=48000, return_tensors="pt")["input_features"]
    torch.testing.assert_close(features, expected.float(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("tower", [True, False], ids=["audio_tower", "clap_model"])
def test_a_fused_float64_clap_teacher_gets_is_longer_and_features_of_its_dtype(tower):
    """A fused CLAP reads is_longer (it fails without it); float64 weights take float64 features."""
    torch.manual_seed(0)
    audio = {**TINY_HTSAT, "enable_fusion": True}
    if tower:
        model = ClapAudioModelWithProjection(ClapAudioConfig(**audio, projection_dim=PROJECTION_DIM))
    else:
        model = ClapModel(
            ClapConfig(text_config=TINY_ROBERTA, audio_config=audio, projection_dim=PROJECTION_DIM)
        )
    extractor = clap_extractor(truncation="fusion")
    teacher = FrozenTeacher(model.double(), extractor, "clap")
    assert teacher.dtype == torch.float64
    clips = _clips(48000, 30000, seed=2)
    got = teacher.embed(*_padded(clips), 48000)
    assert got.dtype == torch.float32 and got.shape == (2, PROJECTION_DIM)
    features = extractor(clips, sampling_rate=48000, return_tensors="pt")["input_features"].double()
    is_longer = torch.zeros(2, 1, dtype=torch.bool)  # both clips fit max_length_s
    with torch.no_grad():
        if tower:
            embeds = model(input_features=features, is_longer=is_longer).audio_embeds
            expected = embeds / embeds.norm(dim=-1, keepdim=True)
        else:
            expected = model.get_audio_features(input_features=features, is_longer=is_longer).pooler_output
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)


def test_clap_features_refuse_an_unknown_truncation():
    extractor = clap_extractor()
    extractor.truncation = "other"
    with pytest.raises(ValueError, match=r"^unsupported ClapFeatureExtractor truncation 'other'"):
        clap_input_features(extractor, torch.zeros(1, 10), torch.tensor([10]))


# --------------------------------------------------------------------------------- from_pretrained


def _save_tiny_ast(directory, extractor=True) -> None:
    """test_teachers.py's tiny AST encoder (seeded), with or without its feature extractor."""
    torch.manual_seed(0)
    save_tiny_ast(directory, ASTModel)
    if not extractor:
        (directory / "preprocessor_config.json").unlink()


def test_from_pretrained_passes_dtype_device_and_loading_arguments(tmp_path):
    _save_tiny_ast(tmp_path / "sub")
    # kwargs (here subfolder) reach the config, the model and the feature extractor
    teacher = FrozenTeacher.from_pretrained(tmp_path, torch_dtype=torch.float64, subfolder="sub")
    assert teacher.kind == "auto" and isinstance(teacher.model, ASTModel)
    assert teacher.dtype == torch.float64 and teacher.model.dtype == torch.float64
    assert isinstance(teacher.feature_extractor, ASTFeatureExtractor)
    single = FrozenTeacher.from_pretrained(tmp_path / "sub")
    assert single.dtype == torch.float32
    waveforms, lengths = _padded(_clips(16000, 9000))
    got = teacher.embed(waveforms, lengths, 16000)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, single.embed(waveforms, lengths, 16000), rtol=1e-4, atol=1e-5)


def test_from_pretrained_moves_the_model_to_the_device(tmp_path, monkeypatch):
    _save_tiny_ast(tmp_path)
    moved = []
    original = nn.Module.to

    def to(self, *args, **kwargs):
        moved.append((type(self).__name__, args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", to)
    FrozenTeacher.from_pretrained(tmp_path, device="cpu")
    assert ("ASTModel", ("cpu",), {}) in moved
    moved.clear()
    FrozenTeacher.from_pretrained(tmp_path)
    assert not [m for m in moved if m[0] == "ASTModel"]


def test_from_pretrained_loads_a_clap_audio_tower(tmp_path):
    torch.manual_seed(0)
    ClapAudioModelWithProjection(
        ClapAudioConfig(**TINY_HTSAT, projection_dim=PROJECTION_DIM)
    ).save_pretrained(tmp_path)
    clap_extractor().save_pretrained(tmp_path)
    teacher = FrozenTeacher.from_pretrained(tmp_path)
    assert teacher.kind == "clap" and type(teacher.model) is ClapAudioModelWithProjection
    assert teacher.embedding_dim == PROJECTION_DIM and teacher.classifier is None
    # a whole CLAP checkpoint is loaded as ClapModel, with the dtype asked for
    ClapModel(
        ClapConfig(text_config=TINY_ROBERTA, audio_config=TINY_HTSAT, projection_dim=PROJECTION_DIM)
    ).save_pretrained(tmp_path / "full")
    clap_extractor().save_pretrained(tmp_path / "full")
    full = FrozenTeacher.from_pretrained(tmp_path / "full", torch_dtype=torch.float64)
    assert full.kind == "clap" and type(full.model) is ClapModel and full.dtype == torch.float64


def test_from_pretrained_needs_a_feature_extractor(tmp_path):
    _save_tiny_ast(tmp_path, extractor=False)
    with pytest.raises(ValueError, match="has no usable feature extractor"):
        FrozenTeacher.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------- precompute


def _flac(clip: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, clip, RATE, format="FLAC")
    return buffer.getvalue()


CLIP_LENGTHS = (40, 24, None, 64, 36)  # None: a record that does not decode


def _dataset(decode=False) -> tuple[Dataset, list[np.ndarray | None]]:
    clips = _clips(*(n or 8 for n in CLIP_LENGTHS), seed=5)
    audio = [{"bytes": _flac(c), "path": None} for c in clips]
    audio[2] = {"bytes": b"not audio" * 10, "path": None}
    dataset = Dataset.from_dict(
        {"audio": audio, "id": list(range(5))},
        features=Features({"audio": Audio(sampling_rate=RATE, decode=decode), "id": Value("int64")}),
    )
    # what the FLAC holds (16-bit PCM), read independently
    decoded = [
        sf.read(io.BytesIO(a["bytes"]), dtype="float32")[0] if i != 2 else None for i, a in enumerate(audio)
    ]
    return dataset, decoded


def test_precompute_writes_each_clips_embedding_and_logits():
    dataset, decoded = _dataset()
    teacher = _toy_teacher(classifier=True)
    out = precompute_teacher_embeddings(dataset, teacher, column="emb", batch_size=2, logits_column="kd")
    assert out.features["emb"] == List(Value("float32"), length=3)
    assert out.features["kd"] == List(Value("float32"), length=2)
    assert out.features["audio"] == dataset.features["audio"] and out["id"] == list(range(5))
    emb = np.asarray(out["emb"], dtype=np.float64)
    logits = np.asarray(out["kd"], dtype=np.float64)
    assert emb.shape == (5, 3) and logits.shape == (5, 2)
    assert np.isnan(emb[2]).all() and np.isnan(logits[2]).all()
    for row, clip in enumerate(decoded):
        if clip is not None:
            np.testing.assert_allclose(
                emb[row], _expected_embedding(clip, teacher.model), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(
                logits[row], _expected_logits(clip, teacher.classifier), rtol=1e-5, atol=1e-6
            )
    # batches of 2 records: the undecodable one is left out of its batch; embed and logits each see it
    calls = teacher.feature_extractor.calls
    assert [c["lengths"].tolist() for c in calls] == [[40, 24], [40, 24], [64], [64], [36], [36]]
    assert [c["waveforms"].shape[1] for c in calls] == [40, 40, 64, 64, 36, 36]


def test_precompute_decodes_at_the_given_rate_and_the_teacher_resamples():
    dataset, _ = _dataset()
    teacher = _toy_teacher()
    out = precompute_teacher_embeddings(dataset, teacher, sample_rate=4000, batch_size=8)
    assert out.features["rr_embedding"] == List(Value("float32"), length=3)
    # 4 kHz clips of half the samples, brought back to 8 kHz: lengths ceil(n / 2 * 2)
    assert [c["lengths"].tolist() for c in teacher.feature_extractor.calls] == [[40, 24, 64, 36]]
    from hf_audiorep.data.decode import decode_audio

    raw = dataset[0]["audio"]
    at_4k = torch.from_numpy(decode_audio(raw, 4000))
    assert len(at_4k) == 20
    back = torchaudio.functional.resample(at_4k, 4000, RATE).numpy()
    np.testing.assert_allclose(
        out["rr_embedding"][0], _expected_embedding(back[:40], teacher.model), rtol=1e-5, atol=1e-5
    )


def test_precompute_restores_a_decoding_audio_column_and_streams_lazily():
    dataset, decoded = _dataset(decode=True)
    teacher = _toy_teacher()
    out = precompute_teacher_embeddings(dataset, teacher)
    assert out.features["audio"] == Audio(sampling_rate=RATE)  # decoding again
    np.testing.assert_allclose(
        out["rr_embedding"][0], _expected_embedding(decoded[0], teacher.model), rtol=1e-5
    )
    raw, _ = _dataset()
    lazy = precompute_teacher_embeddings(raw.to_iterable_dataset(), _toy_teacher(), batch_size=2)
    assert lazy.features["rr_embedding"] == List(Value("float32"), length=3)
    rows = list(lazy)
    assert [r["id"] for r in rows] == list(range(5))
    np.testing.assert_allclose(
        rows[4]["rr_embedding"], _expected_embedding(decoded[4], teacher.model), rtol=1e-5
    )
    assert np.isnan(rows[2]["rr_embedding"]).all()


def test_precompute_embeds_the_audio_column_it_is_given():
    dataset, decoded = _dataset()
    others = _clips(20, 28, 12, 44, 32, seed=9)
    dataset = dataset.add_column("alt", [{"bytes": _flac(c), "path": None} for c in others])
    dataset = dataset.cast_column("alt", Audio(sampling_rate=RATE, decode=False))
    teacher = _toy_teacher()
    out = precompute_teacher_embeddings(dataset, teacher, audio_column="alt")
    assert [c["lengths"].tolist() for c in teacher.feature_extractor.calls] == [[20, 28, 12, 44, 32]]
    alt = sf.read(io.BytesIO(dataset[1]["alt"]["bytes"]), dtype="float32")[0]
    np.testing.assert_allclose(out["rr_embedding"][1], _expected_embedding(alt, teacher.model), rtol=1e-5)


def test_precompute_maps_a_stream_of_unknown_features():
    dataset, decoded = _dataset()
    records = list(dataset)

    def generate():
        yield from records

    stream = IterableDataset.from_generator(generate)
    assert stream.features is None
    teacher = _toy_teacher()
    rows = list(precompute_teacher_embeddings(stream, teacher, audio_column="audio", batch_size=2))
    assert [r["id"] for r in rows] == list(range(5)) and rows[3]["audio"] == records[3]["audio"]
    np.testing.assert_allclose(
        rows[3]["rr_embedding"], _expected_embedding(decoded[3], teacher.model), rtol=1e-5
    )
    assert np.isnan(rows[2]["rr_embedding"]).all()


def test_precompute_overwrites_only_when_asked():
    dataset, decoded = _dataset()
    teacher = _toy_teacher(classifier=True)
    with_columns = dataset.add_column("rr_embedding", [[0.0, 0.0, 0.0]] * 5).add_column(
        "kd", [[0.0, 0.0]] * 5
    )
    with pytest.raises(ValueError, match=r"^the dataset already has a column 'rr_embedding'; pass overwrite"):
        precompute_teacher_embeddings(with_columns, teacher)
    with pytest.raises(ValueError, match=r"^the dataset already has a column 'kd'; pass overwrite"):
        precompute_teacher_embeddings(dataset.add_column("kd", [[0.0, 0.0]] * 5), teacher, logits_column="kd")
    out = precompute_teacher_embeddings(with_columns, teacher, overwrite=True, logits_column="kd")
    np.testing.assert_allclose(
        out["rr_embedding"][1], _expected_embedding(decoded[1], teacher.model), rtol=1e-5
    )
    np.testing.assert_allclose(out["kd"][1], _expected_logits(decoded[1], teacher.classifier), rtol=1e-5)


def test_precompute_defaults():
    parameters = inspect.signature(precompute_teacher_embeddings).parameters
    defaults = {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}
    assert defaults == {
        "column": "rr_embedding",
        "batch_size": 16,
        "sample_rate": None,
        "audio_column": None,
        "overwrite": False,
        "logits_column": None,
    }


def test_precompute_argument_checks():
    dataset, _ = _dataset()
    teacher = _toy_teacher()
    with pytest.raises(TypeError, match="^dataset must be a datasets.Dataset or IterableDataset, got list$"):
        precompute_teacher_embeddings([], teacher)
    with pytest.raises(TypeError, match="^teacher must be a FrozenTeacher, got ToyEncoder$"):
        precompute_teacher_embeddings(dataset, teacher.model)
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="^batch_size must be a positive integer"):
            precompute_teacher_embeddings(dataset, teacher, batch_size=bad)
    for bad in (0, True, 8000.0):
        with pytest.raises(ValueError, match="^sample_rate must be a positive integer"):
            precompute_teacher_embeddings(dataset, teacher, sample_rate=bad)
    lazy = dataset.to_iterable_dataset()
    for bad in (True, 8000.0):  # refused at the call, not at the first batch of a lazy map
        with pytest.raises(ValueError, match="^sample_rate must be a positive integer"):
            precompute_teacher_embeddings(lazy, teacher, sample_rate=bad)
    precompute_teacher_embeddings(lazy, teacher, sample_rate=1)  # any positive rate; nothing decoded yet
    with pytest.raises(TypeError, match="^logits_column needs a teacher with a classification head"):
        precompute_teacher_embeddings(dataset, teacher, logits_column="kd")
    with pytest.raises(ValueError, match="^column and logits_column must differ, both are 'x'$"):
        precompute_teacher_embeddings(dataset, _toy_teacher(classifier=True), column="x", logits_column="x")
    precompute_teacher_embeddings(dataset, teacher, batch_size=1)  # the smallest batch
    assert len(teacher.feature_extractor.calls) == 4


def test_precompute_of_a_cached_dataset_is_not_reused_for_another_teacher(tmp_path):
    """On a dataset with cache files, map's cache is keyed by the fingerprint: a second teacher of the same
    name but other weights, another column or another rate must not get the first one's column back."""
    dataset, decoded = _dataset()
    dataset.save_to_disk(tmp_path / "data")
    cached = load_from_disk(tmp_path / "data")
    first, second = _toy_teacher(seed=0), _toy_teacher(seed=10)
    a = precompute_teacher_embeddings(cached, first)
    b = precompute_teacher_embeddings(cached, second)
    np.testing.assert_allclose(a["rr_embedding"][0], _expected_embedding(decoded[0], first.model), rtol=1e-5)
    np.testing.assert_allclose(b["rr_embedding"][0], _expected_embedding(decoded[0], second.model), rtol=1e-5)
    assert len(first.feature_extractor.calls) == len(second.feature_extractor.calls) == 1
    assert "other" in precompute_teacher_embeddings(cached, first, column="other").column_names
    assert len(first.feature_extractor.calls) == 2  # computed, not read from the cache
    slow = precompute_teacher_embeddings(cached, first, sample_rate=4000)
    assert len(first.feature_extractor.calls) == 3
    assert slow["rr_embedding"][0] != a["rr_embedding"][0]
    # the head's weights count too: two classifiers that differ only in their head
    heads = _toy_teacher(classifier=True), _toy_teacher(classifier=True)
    with torch.no_grad():
        heads[1].classifier.head.weight.add_(1.0)
    k0 = precompute_teacher_embeddings(cached, heads[0], logits_column="kd")
    k1 = precompute_teacher_embeddings(cached, heads[1], logits_column="kd")
    np.testing.assert_allclose(k1["kd"][0], _expected_logits(decoded[0], heads[1].classifier), rtol=1e-5)
    assert k0["kd"][0] != k1["kd"][0]
