"""The bootstrap pre-training step (objectives/bootstrap.py) against values written out here: the EMA
teacher's decay ramp from the config or the arguments, the teacher targets on padded clips, the RR targets
from a frozen encoder or a column, the step's loss and logs, and the teacher update (architectures.md §2)."""

import pytest
import torch

from hf_audiorep.modeling._bootstrap import make_teacher_targets
from hf_audiorep.modeling.configuration_bat import BATConfig
from hf_audiorep.modeling.modeling_bat import BATForPreTraining, BATModel
from hf_audiorep.objectives.bootstrap import BootstrapPretrainingStep, build_ema_teacher
from hf_audiorep.training.ema import ModelEMA

# A 4 x 2 patch grid (64 frames x 32 mel bins, 16 x 16 patches).
TINY = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_length=64,
    num_mel_bins=32,
    transformer_decoder_dim=8,
    transformer_decoder_layers=1,
    transformer_decoder_heads=2,
    average_top_k_layers=2,
    clone_batch=2,
    mask_ratio=0.5,
    mask_length=2,
    rr_embedding_dim=6,
    ema_decay=0.5,
    ema_end_decay=0.9,
    ema_anneal_end_steps=4,
)


def tiny_model(seed=0, **overrides) -> BATForPreTraining:
    torch.manual_seed(seed)
    return BATForPreTraining(BATConfig(**{**TINY, **overrides})).train()


class FrameFeatures:
    """Passes the batch's 'waveforms' through as spectrograms, with a frame mask from the lengths."""

    sampling_rate = 8000

    def __init__(self):
        self.seen = []

    def batch_features(self, waveforms, lengths):
        self.seen.append(waveforms.dtype)
        frames = torch.arange(waveforms.shape[1])
        return waveforms, (frames[None] < lengths[:, None]).long()


class RecordingRRTeacher:
    """A frozen encoder stand-in: records what it is given and returns a float64 embedding."""

    def __init__(self):
        self.calls = []

    def embed(self, waveforms, lengths, sample_rate):
        self.calls.append((waveforms, lengths, sample_rate, torch.is_autocast_enabled("cpu")))
        return waveforms.flatten(1)[:, :6].double()


def spectrogram_batch(lengths=(64, 32)):
    generator = torch.Generator().manual_seed(1)
    return {
        "waveforms": torch.randn(len(lengths), 64, 32, generator=generator),
        "lengths": torch.tensor(lengths),
        "rr": torch.randn(len(lengths), 6, generator=generator, dtype=torch.float64),
    }


# ---- the EMA teacher ---------------------------------------------------------------------------


def test_ema_teacher_takes_the_config_ramp_and_each_override_alone():
    model = tiny_model()
    teacher = build_ema_teacher(model)
    assert isinstance(teacher.module, BATModel) and not teacher.module.training
    assert (teacher.decay, teacher.end_decay, teacher.ramp_steps) == (0.5, 0.9, 4)
    assert [round(teacher.decay_at(step), 6) for step in (0, 1, 4, 9)] == [0.5, 0.6, 0.9, 0.9]
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in teacher.module.parameters())

    alone = build_ema_teacher(model, decay=0.6)
    assert (alone.decay, alone.end_decay, alone.ramp_steps) == (0.6, 0.9, 4)
    alone = build_ema_teacher(model, end_decay=0.7)
    assert (alone.decay, alone.end_decay, alone.ramp_steps) == (0.5, 0.7, 4)
    alone = build_ema_teacher(model, anneal_end_steps=10)
    assert (alone.decay, alone.end_decay, alone.ramp_steps) == (0.5, 0.9, 10)
    # A constant decay needs no ramp (ModelEMA refuses a ramp of differing decays over 0 steps).
    still = build_ema_teacher(model, decay=0.8, end_decay=0.8)
    assert (still.decay, still.end_decay, still.ramp_steps) == (0.8, 0.8, 0)


def test_update_teacher_moves_the_teacher_toward_the_student_encoder():
    model = tiny_model()
    teacher = build_ema_teacher(model)
    step = BootstrapPretrainingStep(FrameFeatures(), teacher)
    before = {name: value.clone() for name, value in teacher.module.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    step.update_teacher(model, global_step=0)
    assert teacher.num_updates == 1
    student = model.bat.state_dict()
    for name, value in teacher.module.state_dict().items():
        torch.testing.assert_close(value, 0.5 * before[name] + 0.5 * student[name], msg=name)


# ---- construction --------------------------------------------------------------------------------


def test_step_checks_its_parts_and_takes_the_sample_rate_of_the_features():
    model = tiny_model()
    teacher = build_ema_teacher(model)
    with pytest.raises(TypeError, match="batch_features"):
        BootstrapPretrainingStep(object(), teacher)
    with pytest.raises(TypeError, match="ModelEMA"):
        BootstrapPretrainingStep(FrameFeatures(), model)
    with pytest.raises(ValueError, match="not both"):
        BootstrapPretrainingStep(FrameFeatures(), teacher, rr_teacher=RecordingRRTeacher(), rr_column="rr")
    with pytest.raises(TypeError, match="embed"):
        BootstrapPretrainingStep(FrameFeatures(), teacher, rr_teacher=object())
    plain = BootstrapPretrainingStep(FrameFeatures(), teacher)
    assert plain.sample_rate == 8000 and not plain.uses_rr
    assert plain.rr_targets(spectrogram_batch()) is None
    on_the_fly = BootstrapPretrainingStep(
        FrameFeatures(), teacher, rr_teacher=RecordingRRTeacher(), sample_rate=48000
    )
    assert on_the_fly.sample_rate == 48000 and on_the_fly.uses_rr
    assert BootstrapPretrainingStep(FrameFeatures(), teacher, rr_column="rr").uses_rr


# ---- teacher targets ----------------------------------------------------------------------------


@pytest.mark.parametrize("instance_norm, layer_norm", [(True, True), (False, True), (True, False)])
def test_teacher_targets_come_from_the_ema_encoder_with_padding_out_of_the_statistics(
    instance_norm, layer_norm
):
    model = tiny_model(
        average_top_k_layers=1, instance_norm_targets=instance_norm, layer_norm_targets=layer_norm
    )
    teacher = build_ema_teacher(model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)  # the student drifts away: the targets must be the teacher's
    step = BootstrapPretrainingStep(FrameFeatures(), teacher)
    batch = spectrogram_batch(lengths=(64, 20))  # clip 1: time steps 0, 1 real (frames 16..19 carry signal)
    input_values, attention_mask = FrameFeatures().batch_features(batch["waveforms"], batch["lengths"])
    targets = step.teacher_targets(input_values, attention_mask)
    assert targets.shape == (2, 8, 16) and not targets.requires_grad
    with torch.no_grad():
        outputs = teacher.module(input_values, attention_mask=attention_mask, output_ffn_states=True)
    patch_mask = torch.tensor([[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]])
    expected = make_teacher_targets(
        outputs.ffn_states, 1, instance_norm=instance_norm, layer_norm=layer_norm, patch_mask=patch_mask
    )
    torch.testing.assert_close(targets, expected)
    # Only the top layer was averaged: the bottom one would give other targets.
    lower = make_teacher_targets(
        outputs.ffn_states[:1], 1, instance_norm=instance_norm, layer_norm=layer_norm, patch_mask=patch_mask
    )
    assert (targets - lower).abs().max() > 1e-3
    # Unpadded clips need no patch mask.
    full = step.teacher_targets(input_values, torch.ones_like(attention_mask))
    with torch.no_grad():
        unmasked = teacher.module(input_values, output_ffn_states=True).ffn_states
    torch.testing.assert_close(
        full, make_teacher_targets(unmasked, 1, instance_norm=instance_norm, layer_norm=layer_norm)
    )
    torch.testing.assert_close(step.teacher_targets(input_values, None), full)


# ---- RR targets -----------------------------------------------------------------------------------


def test_rr_targets_from_a_frozen_encoder_run_in_float32_outside_autocast():
    rr_teacher = RecordingRRTeacher()
    step = BootstrapPretrainingStep(
        FrameFeatures(), build_ema_teacher(tiny_model()), rr_teacher=rr_teacher, sample_rate=48000
    )
    batch = spectrogram_batch()
    batch["waveforms"] = batch["waveforms"].half()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        targets = step.rr_targets(batch)
    waveforms, lengths, sample_rate, autocast = rr_teacher.calls[0]
    assert waveforms.dtype == torch.float32 and not autocast and sample_rate == 48000
    assert lengths is batch["lengths"]
    assert targets.dtype == torch.float32
    torch.testing.assert_close(targets, batch["waveforms"].float().flatten(1)[:, :6])


def test_rr_targets_from_a_column_and_a_clear_error_without_it():
    step = BootstrapPretrainingStep(FrameFeatures(), build_ema_teacher(tiny_model()), rr_column="rr")
    batch = spectrogram_batch()
    targets = step.rr_targets(batch)
    assert targets.dtype == torch.float32
    torch.testing.assert_close(targets, batch["rr"].float())
    del batch["rr"]
    with pytest.raises(KeyError, match=r"no 'rr' entry.*extra_columns=\('rr',\).*'lengths', 'waveforms'"):
        step.rr_targets(batch)


# ---- the step ------------------------------------------------------------------------------------


def test_step_is_the_model_loss_on_the_teacher_targets_and_logs_its_parts():
    model = tiny_model()
    teacher = build_ema_teacher(model)
    features = FrameFeatures()
    step = BootstrapPretrainingStep(features, teacher, rr_column="rr")
    batch = spectrogram_batch()
    batch["waveforms"] = batch["waveforms"].half()
    teacher.num_updates = 2  # mid-ramp: decay 0.7
    torch.manual_seed(3)
    loss, logs = step(model, batch)
    assert features.seen == [torch.float32], "features are computed from float32 waveforms"
    input_values = batch["waveforms"].float()
    attention_mask = (torch.arange(64)[None] < batch["lengths"][:, None]).long()
    torch.manual_seed(3)
    expected = model(
        input_values=input_values,
        attention_mask=attention_mask,
        teacher_targets=step.teacher_targets(input_values, attention_mask),
        rr_targets=batch["rr"].float(),
    )
    torch.testing.assert_close(loss, expected.loss)
    assert set(logs) == {"patch_loss", "cls_loss", "rr_loss", "ema_decay"}
    for part in ("patch_loss", "cls_loss", "rr_loss"):
        torch.testing.assert_close(logs[part], getattr(expected, part))
        assert logs[part].grad_fn is None
    assert logs["ema_decay"] == pytest.approx(0.7)
    # The gradient reaches the student, never the teacher.
    loss.backward()
    assert model.bat.blocks[0].mlp.fc1.weight.grad.abs().sum() > 0
    assert model.rr_projector.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.module.parameters())


def test_step_without_rr_logs_no_rr_loss():
    model = tiny_model(rr_embedding_dim=0)
    step = BootstrapPretrainingStep(FrameFeatures(), build_ema_teacher(model))
    loss, logs = step(model, spectrogram_batch())
    assert set(logs) == {"patch_loss", "cls_loss", "ema_decay"} and logs["ema_decay"] == 0.5
    assert isinstance(step.teacher, ModelEMA) and torch.isfinite(loss)


def test_step_leaves_a_cls_term_of_weight_0_out_of_the_log():
    model = tiny_model(rr_embedding_dim=0, cls_loss_weight=0.0)
    step = BootstrapPretrainingStep(FrameFeatures(), build_ema_teacher(model))
    torch.manual_seed(0)
    loss, logs = step(model, spectrogram_batch())
    assert set(logs) == {"patch_loss", "ema_decay"}
    torch.testing.assert_close(loss, logs["patch_loss"])  # the loss is the patch term alone
