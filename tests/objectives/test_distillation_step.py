"""The student's step: the teacher's columns drive KD and CRD, augmentation only in training, the student's
pooled embedding reaches CRD, and the module a run trains carries the loss's trainable parts."""

from __future__ import annotations

import pytest
import torch

from hf_audiorep.modeling import CPMobileConfig, CPMobileForAudioClassification, LogMelFeatureExtractor
from hf_audiorep.objectives import (
    DistillationArguments,
    DistillationStep,
    SceneAugmentationArguments,
    StudentWithDistillation,
    build_distillation_loss,
)
from hf_audiorep.objectives.features import embedding_width

NUM_LABELS, TEACHER_DIM, N_DATA = 4, 12, 16


def _student(**overrides) -> CPMobileForAudioClassification:
    torch.manual_seed(0)
    config = CPMobileConfig.from_preset(
        "cp-mobile-6k", num_labels=NUM_LABELS, problem_type="single_label_classification", **overrides
    )
    return CPMobileForAudioClassification(config)


def _model(args: DistillationArguments, **overrides) -> StudentWithDistillation:
    student = _student(**overrides)
    width = embedding_width(student.config)
    return StudentWithDistillation(student, build_distillation_loss(args, width, TEACHER_DIM, N_DATA))


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.nn.functional.one_hot(torch.arange(4) % NUM_LABELS, NUM_LABELS).float()
    return {
        "waveforms": torch.randn(4, 16000, generator=g) * 0.1,
        "lengths": torch.full((4,), 16000),
        "labels": labels,
        "teacher_logits": torch.randn(4, NUM_LABELS, generator=g),
        "teacher_embedding": torch.randn(4, TEACHER_DIM, generator=g),
        "indices": torch.tensor([0, 3, 5, 9]),
    }


def _step():
    return DistillationStep(LogMelFeatureExtractor(sampling_rate=16000))


def test_kd_reads_the_teacher_logits_column():
    model = _model(DistillationArguments(ce_weight=0.0, kd_weight=1.0, crd_weight=0.0)).eval()
    batch = _batch()
    loss, logs = _step()(model, batch)
    flipped = {**batch, "teacher_logits": -batch["teacher_logits"]}
    other, _ = _step()(model, flipped)
    assert not torch.allclose(loss, other)
    # the step's loss is the KD of the student's logits against the column
    with torch.no_grad():
        features, mask = LogMelFeatureExtractor(sampling_rate=16000).batch_features(batch["waveforms"])
        logits = model.student(input_values=features, attention_mask=mask).logits
    expected = (
        torch.nn.functional.kl_div(
            (logits / 4).log_softmax(-1),
            (batch["teacher_logits"] / 4).log_softmax(-1),
            reduction="batchmean",
            log_target=True,
        )
        * 16
    )
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert float(logs["ce"]) == 0.0 and float(logs["crd"]) == 0.0


def test_crd_sees_the_students_pooled_embedding_and_the_teachers_column():
    model = _model(DistillationArguments(ce_weight=0.0, kd_weight=0.0, crd_weight=1.0, crd_negatives=8))
    model.train()
    seen = {}
    original = model.distillation.crd.forward

    def spy(student_features, teacher_features, indices):
        seen.update(student=student_features, teacher=teacher_features, indices=indices)
        return original(student_features, teacher_features, indices)

    model.distillation.crd.forward = spy
    batch = _batch()
    loss, _ = DistillationStep(LogMelFeatureExtractor(sampling_rate=16000))(model, batch)
    assert seen["student"].shape == (4, model.student.config.hidden_size)
    assert seen["teacher"] is batch["teacher_embedding"]
    assert torch.equal(seen["indices"], batch["indices"])
    loss.backward()
    # the gradient reaches the student's encoder and CRD's heads (both in the module the loop optimises)
    assert model.student.cp_mobile.stem.conv1.conv.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.distillation.parameters())


def test_the_loss_parts_are_in_the_trained_module_and_its_state():
    model = _model(DistillationArguments(crd_negatives=8))
    names = {name for name, _ in model.named_parameters()}
    assert any(name.startswith("distillation.crd.") for name in names)
    buffers = {name for name, _ in model.named_buffers()}
    assert {"distillation.crd.memory.memory_student", "distillation.crd.memory.memory_teacher"} <= buffers
    # only the student is what the run publishes
    assert not any(key.startswith("distillation") for key in model.student.state_dict())


def test_augmentation_runs_in_training_only():
    aug = SceneAugmentationArguments(roll_samples=4000, dir_prob=1.0, mixstyle_prob=1.0, freq_mask=48)
    irs = torch.zeros(2, 64)
    irs[:, 10] = -1.0  # a delayed, inverted copy: any use of it changes the features
    step = DistillationStep(LogMelFeatureExtractor(sampling_rate=16000), aug, irs)
    plain = _step()
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).eval()
    batch = _batch()
    torch.testing.assert_close(step(model, batch)[0], plain(model, batch)[0])
    torch.manual_seed(0)
    model.train()
    augmented = step(model, batch)[0]
    torch.manual_seed(0)
    assert not torch.allclose(augmented, plain(model, batch)[0])


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="crd must be one of"):
        DistillationArguments(crd="bank")
    with pytest.raises(ValueError, match="crd_negatives"):
        DistillationArguments(crd_negatives=0)
    with pytest.raises(ValueError, match="dir_prob"):
        SceneAugmentationArguments(dir_prob=1.5)
    with pytest.raises(ValueError, match="roll_samples"):
        SceneAugmentationArguments(roll_samples=-1)
    with pytest.raises(ValueError, match="number of training clips"):
        build_distillation_loss(DistillationArguments(), 8, 8, None)
    in_batch = build_distillation_loss(DistillationArguments(crd="in_batch"), 8, 8, None)
    assert type(in_batch.crd).__name__ == "InBatchCRDLoss"


def test_device_impulse_responses_reach_only_the_chosen_devices_clips(monkeypatch):
    import hf_audiorep.objectives.distillation_step as module

    aug = SceneAugmentationArguments(roll_samples=0, dir_prob=1.0, mixstyle_prob=0.0, freq_mask=0)
    irs = torch.zeros(1, 32)
    irs[0, 10] = 1.0  # a pure 10-sample delay
    step = DistillationStep(LogMelFeatureExtractor(sampling_rate=16000), aug, irs, dir_device_ids=(0, 2))
    seen = []
    original = module.waveform_features
    monkeypatch.setattr(module, "waveform_features", lambda fe, w, n: (seen.append(w), original(fe, w, n))[1])
    model = _model(DistillationArguments(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)).train()
    batch = {**_batch(), "device": torch.tensor([0, 1, 2, 3])}
    step(model, batch)
    waveforms, delivered = batch["waveforms"], seen[0]
    for i in (0, 2):  # devices 0 and 2: delayed by the response
        torch.testing.assert_close(delivered[i, 10:], waveforms[i, :-10])
        assert delivered[i, :10].abs().max() < 1e-6  # (an FFT convolution: zero up to rounding)
    for i in (1, 3):  # the other devices' clips as recorded
        torch.testing.assert_close(delivered[i], waveforms[i])
    without_devices = {k: v for k, v in batch.items() if k != "device"}
    with pytest.raises(ValueError, match="'device' column"):
        step(model, without_devices)
