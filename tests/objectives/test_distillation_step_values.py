"""Values of the student's step: the documented defaults and bounds of its arguments, the settings that
reach the loss, each augmentation called with its own setting (in training only, in order), and the loss
and its logs against CE and KD written out by hand."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
import torch.nn.functional as F
from test_distillation_step import NUM_LABELS, TEACHER_DIM, _model  # the one tiny student

import hf_audiorep.objectives.distillation_step as module
from hf_audiorep.modeling import LogMelFeatureExtractor
from hf_audiorep.objectives import (
    DistillationArguments,
    DistillationStep,
    SceneAugmentationArguments,
    build_distillation_loss,
)

OFF = {"roll_samples": 0, "dir_prob": 0.0, "mixstyle_prob": 0.0, "freq_mask": 0}


def _batch(seed: int = 0, lengths=(16000, 16000, 16000, 16000)) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    waveforms = torch.randn(4, 16000, generator=g) * 0.1
    waveforms[torch.arange(16000)[None, :] >= lengths[:, None]] = 0.0  # zero padding past each clip
    return {
        "waveforms": waveforms,
        "lengths": lengths,
        "labels": F.one_hot(torch.tensor([0, 1, 2, 1]), NUM_LABELS).float(),
        "teacher_logits": torch.randn(4, NUM_LABELS, generator=g) * 2,
        "teacher_embedding": torch.randn(4, TEACHER_DIM, generator=g),
        "indices": torch.tensor([0, 3, 5, 9]),
        "device": torch.tensor([0, 1, 2, 0]),
    }


def _extractor():
    return LogMelFeatureExtractor(sampling_rate=16000)


def _spy(monkeypatch, calls: list, *names: str) -> None:
    """Wraps the module's augmentation functions: each call is recorded (its bound arguments, with
    defaults, and its result) and passed through to the real function."""
    for name in names:
        original = getattr(module, name)
        signature = inspect.signature(original)

        def wrapper(*args, _name=name, _original=original, _signature=signature, **kwargs):
            bound = _signature.bind(*args, **kwargs)
            bound.apply_defaults()
            result = _original(*args, **kwargs)
            calls.append((_name, dict(bound.arguments), result))
            return result

        monkeypatch.setattr(module, name, wrapper)


def _catch_features(monkeypatch) -> list:
    """The features the student receives, one entry per step."""
    seen, original = [], module.logits_and_embedding

    def catch(classifier, features, mask):
        seen.append(features)
        return original(classifier, features, mask)

    monkeypatch.setattr(module, "logits_and_embedding", catch)
    return seen


AUGMENTATIONS = ("time_roll", "device_impulse_response", "freq_mixstyle", "frequency_mask")


def test_scene_augmentation_defaults_are_the_dcase_recipe():
    defaults = {f.name: f.default for f in dataclasses.fields(SceneAugmentationArguments)}
    assert defaults == {
        "roll_samples": 4000,
        "dir_prob": 0.6,
        "dir_devices": "A",
        "mixstyle_prob": 0.4,
        "mixstyle_alpha": 0.3,
        "freq_mask": 48,
    }


def test_scene_augmentation_bounds():
    # the edges are allowed: 0 turns a setting off, probabilities 0 and 1 are fine
    SceneAugmentationArguments(roll_samples=0, freq_mask=0, dir_prob=0.0, mixstyle_prob=0.0)
    SceneAugmentationArguments(dir_prob=1.0, mixstyle_prob=1.0, mixstyle_alpha=1e-3)
    for name in ("roll_samples", "freq_mask"):
        with pytest.raises(ValueError, match=f"{name} must be >= 0, got -1"):
            SceneAugmentationArguments(**{name: -1})
    for name in ("dir_prob", "mixstyle_prob"):
        for bad in (-0.1, 1.1):
            with pytest.raises(ValueError, match=rf"{name} must be in \[0, 1\], got {bad}"):
                SceneAugmentationArguments(**{name: bad})
    for bad in (0.0, -0.3):
        with pytest.raises(ValueError, match=f"mixstyle_alpha must be > 0, got {bad}"):
            SceneAugmentationArguments(mixstyle_alpha=bad)


def test_distillation_arguments_defaults_and_bounds():
    defaults = {f.name: f.default for f in dataclasses.fields(DistillationArguments)}
    assert defaults == {
        "ce_weight": 1.0,
        "kd_weight": 1.0,
        "crd_weight": 0.8,
        "temperature": 4.0,
        "crd": "memory",
        "crd_feat_dim": 128,
        "crd_negatives": 4096,
        "crd_temperature": 0.07,
    }
    DistillationArguments(crd="in_batch", crd_feat_dim=1, crd_negatives=1)  # the smallest allowed
    for name in ("crd_feat_dim", "crd_negatives"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1, got 0"):
            DistillationArguments(**{name: 0})
    with pytest.raises(ValueError, match=r"crd must be one of \('memory', 'in_batch'\), got 'bank'"):
        DistillationArguments(crd="bank")
    assert DistillationArguments(crd_weight=0.5).uses_teacher_embeddings
    assert DistillationArguments(crd_weight=1.0).uses_teacher_embeddings
    assert not DistillationArguments(crd_weight=0.0).uses_teacher_embeddings


def test_build_distillation_loss_passes_every_setting():
    args = DistillationArguments(
        ce_weight=0.3,
        kd_weight=0.7,
        crd_weight=0.5,
        temperature=2.5,
        crd_feat_dim=6,
        crd_negatives=5,
        crd_temperature=0.2,
    )
    loss = build_distillation_loss(args, 7, 9, 11)
    assert (loss.ce_weight, loss.kd_weight, loss.crd_weight, loss.temperature) == (0.3, 0.7, 0.5, 2.5)
    memory = loss.crd.memory
    assert (memory.n_data, memory.num_negatives, memory.temperature) == (11, 5, 0.2)
    assert memory.momentum == 0.5  # CRDLoss's own default, not one of the arguments
    assert loss.crd.embed_student(torch.randn(3, 7)).shape == (3, 6)
    assert loss.crd.embed_teacher(torch.randn(3, 9)).shape == (3, 6)
    assert tuple(memory.memory_student.shape) == (11, 6)

    streamed = build_distillation_loss(dataclasses.replace(args, crd="in_batch"), 7, 9, None)
    assert type(streamed.crd).__name__ == "InBatchCRDLoss"
    assert streamed.crd.temperature == 0.2
    assert streamed.crd.embed_student(torch.randn(3, 7)).shape == (3, 6)
    assert streamed.crd.embed_teacher(torch.randn(3, 9)).shape == (3, 6)


def test_build_distillation_loss_without_crd_needs_no_clip_count():
    loss = build_distillation_loss(DistillationArguments(crd_weight=0.0), 7, 9, None)
    assert loss.crd is None and loss.crd_weight == 0.0
    message = "^crd 'memory' needs the number of training clips; use crd 'in_batch' on streams$"
    with pytest.raises(ValueError, match=message):
        build_distillation_loss(DistillationArguments(crd_weight=0.8), 7, 9, 0)


def test_the_wrapper_runs_the_student():
    model = _model(DistillationArguments(crd_negatives=4)).eval()
    features = torch.randn(2, 33, 256)
    with torch.no_grad():
        expected = model.student(input_values=features).logits
        torch.testing.assert_close(model(input_values=features).logits, expected)
        torch.testing.assert_close(model(features).logits, expected)


def test_loss_and_logs_are_ce_and_kd_written_out():
    args = DistillationArguments(ce_weight=0.5, kd_weight=2.0, crd_weight=0.0, temperature=2.0)
    model = _model(args).eval()
    batch = _batch(lengths=(16000, 12000, 16000, 8000))  # padded clips: the lengths and the mask matter
    loss, logs = DistillationStep(_extractor())(model, batch)
    with torch.no_grad():
        features, mask = _extractor().batch_features(batch["waveforms"], batch["lengths"])
        logits = model.student(input_values=features, attention_mask=mask).logits
    log_p = logits.log_softmax(-1)
    ce = -(batch["labels"] * log_p).sum(-1).mean()
    p_t = (batch["teacher_logits"] / 2).softmax(-1)
    kd = (p_t * (p_t.log() - (logits / 2).log_softmax(-1))).sum(-1).mean() * 4
    torch.testing.assert_close(logs["ce"], ce, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logs["kd"], kd, rtol=1e-4, atol=1e-6)
    assert float(logs["crd"]) == 0.0
    torch.testing.assert_close(loss, 0.5 * ce + 2.0 * kd, rtol=1e-4, atol=1e-6)
    assert loss.requires_grad
    assert not any(value.requires_grad for value in logs.values())  # logs are detached


def test_crd_log_is_the_in_batch_infonce():
    args = DistillationArguments(ce_weight=0.0, kd_weight=0.0, crd_weight=1.5, crd="in_batch")
    model = _model(args).eval()
    batch = _batch()
    loss, logs = DistillationStep(_extractor())(model, batch)
    with torch.no_grad():
        features, mask = _extractor().batch_features(batch["waveforms"], batch["lengths"])
        pooled = model.student.cp_mobile(input_values=features, attention_mask=mask).pooler_output
        s = model.distillation.crd.embed_student(pooled)
        t = model.distillation.crd.embed_teacher(batch["teacher_embedding"])
    scores = s @ t.T / 0.07
    targets = torch.arange(4)
    expected = F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets)
    torch.testing.assert_close(logs["crd"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, 1.5 * expected, rtol=1e-4, atol=1e-5)


def test_each_augmentation_gets_its_own_setting_in_order(monkeypatch):
    calls = []
    _spy(monkeypatch, calls, *AUGMENTATIONS)
    aug = SceneAugmentationArguments(
        roll_samples=123, dir_prob=0.7, mixstyle_prob=0.9, mixstyle_alpha=0.25, freq_mask=5
    )
    irs = torch.zeros(2, 16)
    irs[:, 3] = 1.0
    step = DistillationStep(_extractor(), aug, irs, dir_device_ids=[2, 1])
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).train()
    batch = _batch(lengths=(16000, 12000, 16000, 8000))
    step(model, batch)
    assert [name for name, _, _ in calls] == list(AUGMENTATIONS)
    (_, roll, rolled), (_, dir_, convolved), (_, mix, mixed), (_, fmask, _) = calls
    assert roll["waveforms"] is batch["waveforms"]
    assert roll["lengths"] is batch["lengths"] and roll["max_shift"] == 123
    assert dir_["waveforms"] is rolled  # DIR convolves the rolled clips
    assert torch.equal(dir_["irs"], irs) and dir_["p"] == 0.7
    assert dir_["lengths"] is batch["lengths"]
    assert dir_["eligible"].tolist() == [False, True, True, False]  # devices [0, 1, 2, 0] in {1, 2}
    assert (mix["p"], mix["alpha"]) == (0.9, 0.25)
    assert fmask["features"] is mixed and fmask["max_width"] == 5
    # the features are those of the augmented waveforms
    features, _ = _extractor().batch_features(convolved, batch["lengths"])
    torch.testing.assert_close(mix["features"], features)


def test_no_augmentation_in_eval_mode(monkeypatch):
    calls = []
    _spy(monkeypatch, calls, *AUGMENTATIONS)
    aug = SceneAugmentationArguments(roll_samples=10, dir_prob=1.0, mixstyle_prob=1.0, freq_mask=5)
    step = DistillationStep(_extractor(), aug, torch.ones(1, 4), dir_device_ids=[0])
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).eval()
    batch = _batch()
    del batch["device"]  # not needed in eval mode either
    step(model, batch)
    assert calls == []


def test_default_step_augments_nothing_even_in_training(monkeypatch):
    calls = []
    _spy(monkeypatch, calls, *AUGMENTATIONS)
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).train()
    batch = _batch()
    # a bank of responses alone turns nothing on: the default arguments have every augmentation off
    step = DistillationStep(_extractor(), impulse_responses=torch.ones(1, 4))
    assert dataclasses.asdict(step.aug) == {**dataclasses.asdict(SceneAugmentationArguments()), **OFF}
    loss = step(model, batch)[0]
    assert calls == []
    with torch.no_grad():
        features, mask = _extractor().batch_features(batch["waveforms"], batch["lengths"])
        logits = model.student(input_values=features, attention_mask=mask).logits
    # (CP-Mobile's batch norm uses the batch statistics in training: same batch, same logits)
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["labels"]), rtol=1e-4, atol=1e-6)


def test_impulse_responses_need_a_bank_and_a_probability(monkeypatch):
    calls = []
    _spy(monkeypatch, calls, "device_impulse_response")
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).train()
    batch = _batch()
    # a probability without a bank: nothing to convolve with, no error
    DistillationStep(_extractor(), SceneAugmentationArguments(**{**OFF, "dir_prob": 1.0}))(model, batch)
    # a bank with probability 0: off
    DistillationStep(_extractor(), SceneAugmentationArguments(**OFF), torch.ones(1, 4))(model, batch)
    assert calls == []
    # without device ids every clip is eligible, and no device column is needed
    del batch["device"]
    DistillationStep(_extractor(), SceneAugmentationArguments(**{**OFF, "dir_prob": 0.5}), torch.ones(1, 4))(
        model, batch
    )
    assert len(calls) == 1 and calls[0][1]["eligible"] is None and calls[0][1]["p"] == 0.5


def test_time_roll_rotates_each_clip_within_its_length_by_at_most_the_setting(monkeypatch):
    seen = []
    original = module.waveform_features
    monkeypatch.setattr(module, "waveform_features", lambda fe, w, n: (seen.append(w), original(fe, w, n))[1])
    step = DistillationStep(_extractor(), SceneAugmentationArguments(**{**OFF, "roll_samples": 40}))
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).train()
    batch = _batch(lengths=(16000, 12000, 16000, 8000))
    torch.manual_seed(3)
    step(model, batch)
    delivered, shifts = seen[0], []
    for i, length in enumerate(batch["lengths"].tolist()):
        clip = batch["waveforms"][i, :length]
        matches = [s for s in range(-40, 41) if torch.equal(delivered[i, :length], torch.roll(clip, s))]
        assert len(matches) == 1, f"clip {i} is not a rotation by at most 40 samples"
        shifts.append(matches[0])
        assert torch.all(delivered[i, length:] == 0)  # padding stays at the end
    assert any(s != 0 for s in shifts)


def test_frequency_mask_zeroes_one_band_narrower_than_the_setting(monkeypatch):
    seen = _catch_features(monkeypatch)
    step = DistillationStep(_extractor(), SceneAugmentationArguments(**{**OFF, "freq_mask": 6}))
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).train()
    batch = _batch()
    plain, _ = _extractor().batch_features(batch["waveforms"], batch["lengths"])
    widths = []
    for seed in range(6):
        seen.clear()
        torch.manual_seed(seed)
        step(model, batch)
        masked = seen[0]
        for i in range(4):
            changed = (masked[i] != plain[i]).any(0).nonzero().flatten().tolist()
            if changed:
                assert changed == list(range(changed[0], changed[-1] + 1))  # one contiguous band
                assert torch.all(masked[i][:, changed] == 0.0)  # set to 0, on every frame
            others = [b for b in range(plain.shape[-1]) if b not in changed]
            torch.testing.assert_close(masked[i][:, others], plain[i][:, others])
            widths.append(len(changed))
    assert max(widths) < 6 and max(widths) > 0


def test_mixstyle_mixes_the_per_bin_statistics(monkeypatch):
    seen = _catch_features(monkeypatch)
    step = DistillationStep(_extractor(), SceneAugmentationArguments(**{**OFF, "mixstyle_prob": 1.0}))
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).train()
    batch = _batch()
    plain, _ = _extractor().batch_features(batch["waveforms"], batch["lengths"])
    torch.manual_seed(0)
    step(model, batch)
    mixed = seen[0]
    assert not torch.allclose(mixed, plain)
    # each clip's time structure is kept: per bin, the mixed features are an affine map of the plain ones
    centred = plain - plain.mean(1, keepdim=True)
    centred_mixed = mixed - mixed.mean(1, keepdim=True)
    scale = centred_mixed.std(1, keepdim=True) / centred.std(1, keepdim=True)
    torch.testing.assert_close(centred_mixed, centred * scale, rtol=1e-3, atol=1e-3)
