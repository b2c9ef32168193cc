"""AudioMAE's pre-training step and reconstruction evaluation (hf_audiorep/objectives/masked_autoencoder.py),
value by value: the loss the step returns and the mean `evaluate_reconstruction` reports are recomputed by
hand (the masks drawn from the same random stream, the targets cut from the spectrogram, normalised per
patch, the squared error averaged over the masked, non-padding patches only), and the step's and the
evaluation's plumbing (mask ratio, generator seeding per rank, clip weighting, the cross-process sum, the
training mode, the argument checks) is checked with recording fakes."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_audiorep.modeling import AudioMAEConfig, AudioMAEForPreTraining
from hf_audiorep.objectives import MaskedAutoencoderStep, evaluate_reconstruction

P, BINS, FRAMES = 16, 32, 48  # a 3 x 2 grid of 16 x 16 patches
GRID_T, GRID_F = FRAMES // P, BINS // P
NUM_PATCHES = GRID_T * GRID_F
TINY = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_length=FRAMES,
    num_mel_bins=BINS,
    decoder_hidden_size=16,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
)


def tiny_model(**overrides) -> AudioMAEForPreTraining:
    torch.manual_seed(0)
    return AudioMAEForPreTraining(AudioMAEConfig(**{**TINY, **overrides})).eval()


class FrameExtractor:
    """A stand-in front end: each run of ``BINS`` samples is one frame; a clip of ``length`` samples has
    ``length // BINS`` real frames (attention mask 1), the rest is padding. Records what it was given."""

    def __init__(self):
        self.calls = []

    def batch_features(self, waveforms, lengths):
        self.calls.append((waveforms, lengths, torch.is_autocast_enabled("cpu")))
        features = waveforms.reshape(waveforms.shape[0], -1, BINS)
        frames = torch.arange(features.shape[1], device=waveforms.device)
        return features, (frames[None] < (lengths[:, None] // BINS)).long()


def waveform_batch(batch=3, real_frames=(FRAMES, 20, 35), seed=0):
    generator = torch.Generator().manual_seed(seed)
    waveforms = torch.randn(batch, FRAMES * BINS, generator=generator)
    lengths = torch.tensor([real_frames[i % len(real_frames)] * BINS for i in range(batch)])
    return {"waveforms": waveforms, "lengths": lengths, "labels": torch.ones(batch, 5)}


def hand_loss(features, frame_mask, noise, ratio, prediction, norm_pix):
    """MAE's loss written out: per clip the ``max(1, int(N * (1 - ratio)))`` lowest-noise patches are
    visible, the others are targets; a target is the patch's 256 pixels (time-major), standardised with
    its own mean and unbiased variance when ``norm_pix``; the per-patch mean squared error is averaged over
    the masked patches that hold at least one real frame."""
    keep = max(1, int(NUM_PATCHES * (1 - ratio)))
    total, count = 0.0, 0
    for b in range(features.shape[0]):
        visible = set(noise[b].argsort()[:keep].tolist())
        for t in range(GRID_T):
            if not frame_mask[b, t * P : (t + 1) * P].any():
                continue  # a patch of padding only
            for f in range(GRID_F):
                index = t * GRID_F + f
                if index in visible:
                    continue
                target = features[b, t * P : (t + 1) * P, f * P : (f + 1) * P].reshape(-1).double()
                if norm_pix:
                    target = (target - target.mean()) / (target.var(unbiased=True) + 1e-6).sqrt()
                total += (prediction[b, index].double() - target).pow(2).mean().item()
                count += 1
    assert count > 0
    return total / count


# ---- the training step -------------------------------------------------------------------------


@pytest.mark.parametrize(("mask_ratio", "norm_pix"), [(0.5, True), (None, False), (0.3, True)])
def test_step_loss_is_mse_over_masked_real_patches_with_the_global_rng(mask_ratio, norm_pix):
    model = tiny_model(norm_pix_loss=norm_pix, mask_ratio=0.8)
    batch = waveform_batch()
    step = MaskedAutoencoderStep(FrameExtractor(), mask_ratio=mask_ratio)
    torch.manual_seed(7)
    with torch.no_grad():
        loss, logs = step(model, batch)
    assert logs == {}
    # The same global draw, by hand: uniform noise (batch, patches), lowest noise visible.
    torch.manual_seed(7)
    noise = torch.rand(3, NUM_PATCHES)
    features, frame_mask = FrameExtractor().batch_features(batch["waveforms"], batch["lengths"])
    assert frame_mask[1].sum() == 20 and not frame_mask[1, 32:].any()  # clip 1: its last patch row is padding
    ratio = 0.8 if mask_ratio is None else mask_ratio
    with torch.no_grad():
        prediction = model(features, attention_mask=frame_mask, noise=noise, mask_ratio=ratio).logits
    expected = hand_loss(features, frame_mask, noise, ratio, prediction, norm_pix)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The check can tell the ratio and the padding apart.
    other = 0.5 if ratio != 0.5 else 0.8
    with torch.no_grad():
        prediction = model(features, attention_mask=frame_mask, noise=noise, mask_ratio=other).logits
    assert abs(loss.item() - hand_loss(features, frame_mask, noise, other, prediction, norm_pix)) > 1e-3
    with torch.no_grad():
        unpadded = model(features, noise=noise, mask_ratio=ratio).loss
    assert abs(loss.item() - unpadded.item()) > 1e-3


class RecordingModel(nn.Module):
    """Records every call; its loss is the mean input (or what ``output`` returns)."""

    def __init__(self, output=None, fail_on_call=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls = []
        self.output = output
        self.fail_on_call = fail_on_call

    def forward(self, input_values, attention_mask=None, mask_ratio=None, generator=None):
        self.calls.append(
            {
                "input_values": input_values,
                "attention_mask": attention_mask,
                "mask_ratio": mask_ratio,
                "generator": generator,
                "training": self.training,
                "grad": torch.is_grad_enabled(),
            }
        )
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("boom")
        if self.output is not None:
            return self.output(input_values)
        return SimpleNamespace(loss=input_values.mean() + self.weight.sum())


def test_step_passes_features_mask_and_ratio_and_returns_the_models_loss():
    batch = waveform_batch(batch=2)
    extractor = FrameExtractor()
    for ratio in (None, 0.0, 0.3, 0.999):
        model = RecordingModel()
        loss, logs = MaskedAutoencoderStep(extractor, mask_ratio=ratio)(model, batch)
        (call,) = model.calls
        assert call["mask_ratio"] == ratio and (ratio is None) == (call["mask_ratio"] is None)
        features, frame_mask = FrameExtractor().batch_features(batch["waveforms"], batch["lengths"])
        assert torch.equal(call["input_values"], features) and torch.equal(call["attention_mask"], frame_mask)
        assert loss is not None and torch.equal(loss, features.mean()) and loss.requires_grad and logs == {}
    # The front end got the batch's waveforms (cast to float32) and lengths, outside autocast.
    half = {**batch, "waveforms": batch["waveforms"].half()}
    MaskedAutoencoderStep(extractor)(RecordingModel(), half)
    waveforms, lengths, autocast = extractor.calls[-1]
    assert waveforms.dtype == torch.float32 and torch.equal(lengths, batch["lengths"]) and not autocast


def test_step_checks_its_arguments_and_the_models_output():
    extractor = FrameExtractor()
    for ratio in (0.0, 0.5, 0.999, None):
        assert MaskedAutoencoderStep(extractor, mask_ratio=ratio).mask_ratio == ratio
    assert MaskedAutoencoderStep(extractor).mask_ratio is None
    assert MaskedAutoencoderStep(extractor).feature_extractor is extractor
    for ratio in (1.0, -0.01, 1.5):
        with pytest.raises(ValueError, match=rf"^mask_ratio must be in \[0, 1\), got {ratio}$"):
            MaskedAutoencoderStep(extractor, mask_ratio=ratio)
    with pytest.raises(TypeError, match="^feature_extractor must have batch_features.*got object$"):
        MaskedAutoencoderStep(object())
    batch = waveform_batch(batch=2)
    for output in (SimpleNamespace(loss=None), SimpleNamespace(logits=torch.zeros(1))):
        model = RecordingModel(output=lambda _, out=output: out)
        with pytest.raises(TypeError, match="^RecordingModel returned no loss: .*needs an XForPreTraining"):
            MaskedAutoencoderStep(extractor)(model, batch)


# ---- evaluation ------------------------------------------------------------------------------


def hand_evaluation(model, batches, seed):
    """The clip-weighted mean loss, the masks drawn in turn from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    total, clips = 0.0, 0
    for batch in batches:
        features, frame_mask = FrameExtractor().batch_features(batch["waveforms"], batch["lengths"])
        noise = torch.rand(features.shape[0], NUM_PATCHES, generator=generator)
        with torch.no_grad():
            prediction = model(features, attention_mask=frame_mask, noise=noise).logits
        loss = hand_loss(features, frame_mask, noise, model.config.mask_ratio, prediction, True)
        total, clips = total + loss * features.shape[0], clips + features.shape[0]
    return total / clips


def test_evaluation_is_the_clip_weighted_loss_with_masks_from_the_seeded_generator():
    model = tiny_model(mask_ratio=0.5).train()
    batches = [waveform_batch(batch=1, seed=1), waveform_batch(batch=3, seed=2)]
    metrics = evaluate_reconstruction(model, batches, FrameExtractor())
    assert set(metrics) == {"eval_reconstruction_loss", "eval_num_clips"}
    assert metrics["eval_num_clips"] == 4 and type(metrics["eval_num_clips"]) is int
    assert metrics["eval_reconstruction_loss"] == pytest.approx(hand_evaluation(model, batches, 0), rel=1e-5)
    assert model.training, "evaluation restores training mode"
    seeded = evaluate_reconstruction(model, batches, FrameExtractor(), prefix="val_", seed=3)
    assert set(seeded) == {"val_reconstruction_loss", "val_num_clips"}
    assert seeded["val_reconstruction_loss"] == pytest.approx(hand_evaluation(model, batches, 3), rel=1e-5)
    assert abs(seeded["val_reconstruction_loss"] - metrics["eval_reconstruction_loss"]) > 1e-4
    # A non-tensor entry of the batch is dropped, not moved.
    with_ids = [{**batch, "ids": ["a"] * len(batch["lengths"])} for batch in batches]
    assert evaluate_reconstruction(model, with_ids, FrameExtractor()) == metrics


class FakeAccelerator:
    """Process ``process_index`` of ``num_processes``; the other processes contributed ``others``
    (sum of loss * clips, clips) to the sum-reduction."""

    def __init__(self, process_index, num_processes, others=(0.0, 0)):
        self.device = torch.device("cpu")
        self.process_index = process_index
        self.num_processes = num_processes
        self.others = others
        self.reduced = []

    def reduce(self, tensor, reduction):
        if self.num_processes == 1:
            raise AssertionError("a single process has nothing to reduce")
        assert reduction == "sum" and tensor.dtype == torch.float64
        self.reduced.append(tensor.clone())
        return tensor + torch.tensor(self.others, dtype=torch.float64)


def test_evaluation_seeds_each_rank_and_sums_across_processes():
    model = tiny_model(mask_ratio=0.5)
    batches = [waveform_batch(batch=2, seed=4)]
    mine = hand_evaluation(model, batches, 5 + 2)  # seed + rank
    accelerator = FakeAccelerator(process_index=2, num_processes=4, others=(6.0 * 3.0, 3))
    metrics = evaluate_reconstruction(model, batches, FrameExtractor(), accelerator=accelerator, seed=5)
    assert len(accelerator.reduced) == 1 and accelerator.reduced[0][1] == 2
    assert metrics["eval_num_clips"] == 5
    assert metrics["eval_reconstruction_loss"] == pytest.approx((2 * mine + 18.0) / 5, rel=1e-5)
    # One process: no reduction, the rank-0 seed.
    single = FakeAccelerator(process_index=0, num_processes=1)
    metrics = evaluate_reconstruction(model, batches, FrameExtractor(), accelerator=single, seed=5)
    assert metrics["eval_reconstruction_loss"] == pytest.approx(hand_evaluation(model, batches, 5), rel=1e-5)
    assert metrics["eval_num_clips"] == 2


def test_evaluation_runs_in_eval_mode_without_grad_and_restores_the_mode():
    def constant(value):
        return lambda x: SimpleNamespace(loss=torch.tensor(value, dtype=torch.float32))

    for was_training in (True, False):
        model = RecordingModel().train(was_training)
        batches = [waveform_batch(batch=1, seed=1), waveform_batch(batch=3, seed=2)]
        evaluate_reconstruction(model, batches, FrameExtractor(), seed=9)
        assert [call["training"] for call in model.calls] == [False, False]
        assert not any(call["grad"] for call in model.calls)
        # One generator for the whole pass, seeded once: the second batch continues the first's stream.
        first, second = (call["generator"] for call in model.calls)
        assert first is second and first.initial_seed() == 9
        assert model.training == was_training
        # Restored after an error too.
        failing = RecordingModel(fail_on_call=2).train(was_training)
        with pytest.raises(RuntimeError, match="boom"):
            evaluate_reconstruction(failing, batches, FrameExtractor())
        assert failing.training == was_training
    # Weighted by clips: 1 clip at loss 1 and 3 clips at loss 3 give 2.5 (2.0 unweighted).
    losses = iter([1.0, 3.0])
    model = RecordingModel(output=lambda x: constant(next(losses))(x))
    metrics = evaluate_reconstruction(model, batches, FrameExtractor())
    assert metrics == {"eval_reconstruction_loss": 2.5, "eval_num_clips": 4}
    # Summed in float64: a float32 loss times 3 clips is not exact in float32.
    value = 1.0 + 2.0**-23
    model = RecordingModel(output=constant(value))
    metrics = evaluate_reconstruction(model, [waveform_batch(batch=3)], FrameExtractor())
    assert metrics["eval_reconstruction_loss"] == value
    # A one-clip stream is fine; an empty one is an error.
    metrics = evaluate_reconstruction(
        RecordingModel(output=constant(2.0)), [waveform_batch(1)], FrameExtractor()
    )
    assert metrics == {"eval_reconstruction_loss": 2.0, "eval_num_clips": 1}
    with pytest.raises(ValueError, match="^the evaluation stream produced no clips$"):
        evaluate_reconstruction(RecordingModel(), [], FrameExtractor())
