"""ScaledAdam and Eden (hf_audiorep/training/scaled_adam.py), the optimizer option of the loop (optim.py,
arguments.py), and their exact resume through the loop's checkpoints."""

import copy
import io
import math

import pytest
import torch
from torch import nn
from toy_training import fresh_accelerate_state, toy  # noqa: F401  (fresh_accelerate_state: autouse)
from transformers import HfArgumentParser, set_seed

from hf_audiorep.training import (
    Eden,
    ScaledAdam,
    TrainingArguments,
    TrainLoop,
    build_scaled_adam,
    build_scheduler,
    optimizer_from_args,
    scheduler_from_args,
)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


# ------------------------------------------------------------------------------------------- one step


@pytest.mark.parametrize("slr", [0.1, 100.0])  # 100: the scale step is clamped to -0.1..0.1
def test_two_steps_on_a_matrix_and_a_scalar_match_the_update_written_out(slr):
    lr, b1, b2, eps = 0.1, 0.5, 0.75, 1e-8
    w0 = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    s0 = torch.tensor([1.5], dtype=torch.float64)
    w, s = nn.Parameter(w0.clone()), nn.Parameter(s0.clone())
    optimizer = ScaledAdam(
        [w, s], lr=lr, betas=(b1, b2), eps=eps, scalar_lr_scale=slr, size_update_period=2, clipping_scale=None
    )
    g1 = torch.tensor([[0.3, -0.1], [0.2, 0.4]], dtype=torch.float64)
    h1 = torch.tensor([-2.0], dtype=torch.float64)
    w.grad, s.grad = g1.clone(), h1.clone()
    optimizer.step()

    # Step 1: v_hat = g², so the Adam direction is g / (|g| + eps); the matrix's is scaled by rms(w0); the
    # momentum holds (1 - beta1) of the step (no bias correction); the scalar moves at lr * scalar_lr_scale.
    delta_w1 = -lr * g1 / (g1.abs() + eps) * _rms(w0)
    m_w1 = (1 - b1) * delta_w1
    w1 = w0 + m_w1
    delta_s1 = -lr * slr * h1 / (h1.abs() + eps)
    m_s1 = (1 - b1) * delta_s1
    s1 = s0 + m_s1
    torch.testing.assert_close(w.detach(), w1)
    torch.testing.assert_close(s.detach(), s1)

    g2 = torch.tensor([[-0.2, 0.5], [0.1, 0.3]], dtype=torch.float64)
    h2 = torch.tensor([0.5], dtype=torch.float64)
    w.grad, s.grad = g2.clone(), h2.clone()
    optimizer.step()

    # Step 2 closes the size period: rms is refreshed from w1 and the log-scale takes one Adam step on
    # sum(w * g) of both steps, with beta2 ** period.
    v_w = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    direction = g2 / ((v_w / (1 - b2**2)).sqrt() + eps)
    delta_w2 = -lr * direction * _rms(w1)
    scale_grads = torch.stack([(w0 * g1).sum(), (w1 * g2).sum()])
    beta2_period = b2**2
    scale_v = (1 - beta2_period) * (scale_grads**2).mean()
    scale_step = -lr * slr * math.sqrt(1 - beta2_period) * scale_grads.sum() / (scale_v.sqrt() + eps)
    assert (abs(scale_step) > 0.1) == (slr > 1)  # both sides of the clamp
    delta_w2 = delta_w2 + w1 * scale_step.clamp(-0.1, 0.1)
    w2 = w1 + b1 * m_w1 + (1 - b1) * delta_w2
    torch.testing.assert_close(w.detach(), w2)

    v_s = b2 * (1 - b2) * h1**2 + (1 - b2) * h2**2
    delta_s2 = -lr * slr * h2 / ((v_s / (1 - b2**2)).sqrt() + eps)
    torch.testing.assert_close(s.detach(), s1 + b1 * m_s1 + (1 - b1) * delta_s2)
    state = optimizer.state[w]
    assert int(state["step"]) == 2 and state["step"].device.type == "cpu"
    torch.testing.assert_close(state["param_rms"], _rms(w1))


def test_scalars_are_clamped_and_tiny_tensors_get_the_minimum_rms():
    s = nn.Parameter(torch.tensor([9.99]))
    tiny = nn.Parameter(torch.zeros(3))
    optimizer = ScaledAdam([s, tiny], lr=10.0, scalar_max=10.0, clipping_scale=None)
    s.grad, tiny.grad = torch.tensor([-1.0]), torch.tensor([1.0, -1.0, 0.0])
    optimizer.step()
    assert s.item() == 10.0
    # rms(0) = 0 is floored at param_min_rms (1e-5): the tensor still moves, by lr * 1e-5 * (1 - beta1).
    torch.testing.assert_close(tiny.detach(), torch.tensor([-1.0, 1.0, 0.0]) * 10.0 * 1e-5 * 0.1)


def test_scaling_a_parameter_by_c_scales_its_updates_by_c():
    torch.manual_seed(0)
    c = 4.0
    p0 = torch.randn(6, 5, dtype=torch.float64) * 0.5
    a, b = nn.Parameter(p0.clone()), nn.Parameter(c * p0.clone())
    opt_a = ScaledAdam([a], lr=0.05, size_update_period=2, clipping_scale=None, eps=1e-12)
    opt_b = ScaledAdam([b], lr=0.05, size_update_period=2, clipping_scale=None, eps=1e-12)
    for _ in range(5):  # two size updates included
        g = torch.randn(6, 5, dtype=torch.float64)
        before_a, before_b = a.detach().clone(), b.detach().clone()
        a.grad, b.grad = g.clone(), g / c  # the chain rule for loss(b / c)
        opt_a.step()
        opt_b.step()
        torch.testing.assert_close(b.detach() - before_b, c * (a.detach() - before_a), rtol=1e-9, atol=1e-12)
    # ...while plain Adam moves both by the same absolute amount: the point of the scaling.
    assert not torch.allclose(b.detach(), c * p0)


def test_minimises_a_small_regression_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1) + 0.3
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    gain = nn.Parameter(torch.ones(1))  # a scalar parameter in the mix
    optimizer = build_scaled_adam(
        [{"params": list(model.parameters())}, {"params": [gain], "lr_scale": 0.5}],
        learning_rate=0.03,
        clipping_update_period=20,
    )
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.03, 0.015])
    losses = []
    for _ in range(300):
        loss = ((model(x) * gain - y) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.01 * losses[0]
    assert optimizer.state_dict()["clipping"]["threshold"] is not None  # clipping was live


def test_clipping_scales_an_outlier_gradient_down_to_the_threshold():
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(4, 3))
    optimizer = ScaledAdam([w], lr=0.01, clipping_scale=2.0, clipping_update_period=5)
    for _ in range(6):  # steps 0..5: the threshold is estimated at step 5 from the norms of steps 1..5
        w.grad = torch.randn(4, 3)
        optimizer.step()
    threshold = optimizer.state_dict()["clipping"]["threshold"]
    assert threshold is not None and threshold > 0

    outlier = 100.0 * torch.randn(4, 3)
    norm = (outlier * optimizer.state[w]["param_rms"]).norm().item()
    assert norm > threshold
    saved = copy.deepcopy(optimizer.state_dict())
    w_before = w.detach().clone()
    w.grad = outlier.clone()
    optimizer.step()
    clipped = w.detach().clone()
    assert optimizer.state_dict()["clipping"]["num_clipped"] == 1

    with torch.no_grad():
        w.copy_(w_before)
    unclipped = ScaledAdam([w], lr=0.01, clipping_scale=None)
    unclipped.load_state_dict(saved)  # the same moments, without clipping
    w.grad = outlier * (threshold / norm)
    unclipped.step()
    torch.testing.assert_close(clipped, w.detach())


def test_the_threshold_is_first_estimated_early_at_twice_the_scale_then_every_period():
    torch.manual_seed(2)
    w = nn.Parameter(torch.randn(3, 3))
    optimizer = ScaledAdam([w], lr=0.01, clipping_scale=1.5, clipping_update_period=12)

    def median(norms):
        return sorted(norms)[(len(norms) - 1) // 2]

    for step in range(13):
        w.grad = torch.randn(3, 3) * (1 + step % 3)
        optimizer.step()
        clipping = optimizer.state_dict()["clipping"]
        if step < 10:
            assert clipping["threshold"] is None  # steps 1..9: no estimate yet, nothing clipped
        elif step == 10:  # early: twice the usual threshold, from the 10 norms of steps 1..10
            assert len(clipping["norms"]) == 10
            assert clipping["threshold"] == pytest.approx(2 * 1.5 * median(clipping["norms"]))
        elif step == 12:  # the period: the usual threshold over the window
            assert clipping["threshold"] == pytest.approx(1.5 * median(clipping["norms"]))


def test_a_non_finite_gradient_is_zeroed_once_clipping_is_on():
    w = nn.Parameter(torch.ones(2, 2))
    optimizer = ScaledAdam([w], lr=0.1, clipping_scale=2.0, clipping_update_period=3)
    for _ in range(4):
        w.grad = torch.full((2, 2), 0.5)
        optimizer.step()
    before = w.detach().clone()
    momentum = optimizer.state[w]["exp_avg"].clone()
    w.grad = torch.tensor([[float("inf"), 0.0], [0.0, 0.0]])
    optimizer.step()
    assert torch.isfinite(w).all()
    torch.testing.assert_close(w.detach(), before + 0.9 * momentum)  # momentum coasts, no new gradient


# ------------------------------------------------------------------------------------------- state


def _train(optimizer, params, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator)
        optimizer.step()


def test_state_dict_round_trip_through_weights_only_load_continues_identically():
    torch.manual_seed(0)
    make = lambda ps: ScaledAdam(ps, lr=0.02, size_update_period=3, clipping_update_period=4)  # noqa: E731
    params_a = [nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(4)), nn.Parameter(torch.zeros(1))]
    optimizer_a = make(params_a)
    _train(optimizer_a, params_a, steps=7, seed=1)

    buffer = io.BytesIO()
    torch.save(optimizer_a.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what accelerate's load_state does
    params_b = [nn.Parameter(p.detach().clone()) for p in params_a]
    optimizer_b = make(params_b)
    optimizer_b.load_state_dict(saved)
    assert optimizer_b.state_dict()["clipping"] == optimizer_a.state_dict()["clipping"]

    _train(optimizer_a, params_a, steps=6, seed=2)
    _train(optimizer_b, params_b, steps=6, seed=2)
    for a, b in zip(params_a, params_b, strict=True):
        assert torch.equal(a, b)


def _eden_args(tmp_path, output_dir, resume=None) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=12,
        gradient_accumulation_steps=2,
        checkpointing_steps=4,
        save_total_limit=None,
        resume_from_checkpoint=resume,
        logging_steps=2,
        cpu=True,
        disable_progress_bar=True,
        optimizer="scaled_adam",
        learning_rate=0.045,
        max_grad_norm=None,
        lr_scheduler="eden",
        eden_lr_batches=5,
        eden_lr_epochs=2,
        eden_steps_per_epoch=6,
        warmup_steps=3,
        scaled_adam_clipping_update_period=3,
    )


def test_scaled_adam_and_eden_through_the_loop_resume_exactly(tmp_path):
    def run(output_dir, step_fn, resume=None):
        args = _eden_args(tmp_path, output_dir, resume)
        set_seed(0)
        model = toy.ToyModel(toy.ToyConfig())
        stream = toy.SyntheticStream(*toy.synthetic_data(48), batch_size=4, seed=1)
        loop = TrainLoop(args, model, stream, step_fn)  # --optimizer / --lr_scheduler alone choose them
        return loop, loop.run()

    reference = {}
    loop_a, _ = run(tmp_path / "a", toy.classification_step(reference))
    optimizer_a = loop_a.optimizer.optimizer
    assert isinstance(optimizer_a, ScaledAdam) and isinstance(loop_a.scheduler.scheduler, Eden)
    expected_lr = 0.045 * loop_a.scheduler.scheduler.factor(12)
    assert optimizer_a.param_groups[0]["lr"] == pytest.approx(expected_lr)
    losses = reference["losses"]
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6

    with pytest.raises(toy.Crash):
        run(tmp_path / "b", toy.crashing_step(toy.classification_step(), after_calls=8 * 2))
    resumed = {}
    loop_b, summary = run(tmp_path / "b", toy.classification_step(resumed), resume="latest")
    assert summary["resumed_from_checkpoint"].endswith("step_8")
    assert resumed["losses"] == reference["losses"][16:]
    for (name, a), b in zip(
        loop_a.model.state_dict().items(), loop_b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    state_a, state_b = optimizer_a.state_dict(), loop_b.optimizer.optimizer.state_dict()
    assert state_a["clipping"] == state_b["clipping"] and state_a["clipping"]["step"] == 12
    for key, values in state_a["state"].items():
        for field, value in values.items():
            assert torch.equal(value, state_b["state"][key][field]), (key, field)
    assert loop_a.scheduler.scheduler.state_dict() == loop_b.scheduler.scheduler.state_dict()


# -------------------------------------------------------------------------------------------- Eden


def _eden(**kwargs):
    p = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [p], "lr": 0.045}, {"params": [], "lr": 0.009}], lr=0.045)
    return optimizer, Eden(optimizer, **kwargs)


def test_eden_formula_at_the_start_end_of_warmup_and_late():
    optimizer, eden = _eden(lr_batches=7500, lr_epochs=3.5, steps_per_epoch=1000, warmup_batches=500)
    assert eden.get_last_lr() == pytest.approx([0.045 * 0.5, 0.009 * 0.5])  # b = 0: half the rate
    for _ in range(250):
        optimizer.step()
        eden.step()
    b, e = 250, 0.25
    batch = ((b**2 + 7500**2) / 7500**2) ** -0.25
    epoch = ((e**2 + 3.5**2) / 3.5**2) ** -0.25
    assert eden.get_last_lr()[0] == pytest.approx(0.045 * batch * epoch * 0.75)
    for _ in range(250):
        optimizer.step()
        eden.step()
    b, e = 500, 0.5
    at_warmup_end = ((b**2 + 7500**2) / 7500**2) ** -0.25 * ((e**2 + 3.5**2) / 3.5**2) ** -0.25
    assert eden.get_last_lr() == pytest.approx([0.045 * at_warmup_end, 0.009 * at_warmup_end])
    # Late: both factors ~ (B / b)^0.5 * (E / e)^0.5.
    b = 300_000
    late = eden.factor(b)
    assert late == pytest.approx(
        ((b**2 + 7500**2) / 7500**2) ** -0.25 * ((300**2 + 3.5**2) / 3.5**2) ** -0.25
    )
    assert late == pytest.approx(math.sqrt(7500 / b) * math.sqrt(3.5 / 300), rel=1e-3)


def test_eden_without_epochs_and_without_warmup():
    _, eden = _eden(lr_batches=100, lr_epochs=3.5, steps_per_epoch=None, warmup_batches=0)
    assert eden.factor(0) == 1.0
    assert eden.factor(100) == pytest.approx(2**-0.25)
    with pytest.raises(ValueError, match="lr_batches"):
        _eden(lr_batches=0)
    with pytest.raises(ValueError, match="warmup_start"):
        _eden(warmup_start=1.5)


def test_build_scheduler_eden_needs_its_constants_and_keeps_group_ratios():
    optimizer, _ = _eden(lr_batches=10)
    with pytest.raises(ValueError, match="eden_lr_batches"):
        build_scheduler(optimizer, max_steps=10, schedule="eden")
    optimizer = torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": 0.04}], lr=0.04)
    eden = build_scheduler(
        optimizer, max_steps=10, warmup_steps=4, schedule="eden", eden_lr_batches=10, eden_lr_epochs=2
    )
    assert isinstance(eden, Eden) and eden.warmup_batches == 4 and eden.steps_per_epoch is None
    assert eden.state_dict()["last_epoch"] == 0  # plain numbers only


# --------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"optimizer": "sgd"}, "optimizer"),
        ({"lr_scheduler": "eden2"}, "lr_scheduler"),
        ({"eden_lr_batches": 0.0}, "eden_lr_batches"),
        ({"eden_lr_epochs": -1.0}, "eden_lr_epochs"),
        ({"eden_steps_per_epoch": -5.0}, "eden_steps_per_epoch"),
        ({"scaled_adam_clipping_scale": -1.0}, "scaled_adam_clipping_scale"),
        ({"scaled_adam_clipping_update_period": 0}, "scaled_adam_clipping_update_period"),
        ({"scaled_adam_param_min_rms": 5.0}, "scaled_adam_param_min_rms"),
        ({"scaled_adam_beta2": 1.0}, "scaled_adam_beta2"),
        ({"optimizer": "scaled_adam"}, "max_grad_norm"),  # the loop's clipping is on by default
        ({"optimizer": "scaled_adam", "max_grad_norm": None, "layer_decay": 0.75}, "layer_decay"),
    ],
)
def test_bad_optimizer_arguments_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(**overrides)


def test_optimizer_arguments_parse_and_build(tmp_path):
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        [
            "--optimizer",
            "scaled_adam",
            "--max_grad_norm",
            "0",
            "--learning_rate",
            "0.045",
            "--lr_scheduler",
            "eden",
            "--warmup_steps",
            "500",
            "--eden_steps_per_epoch",
            "0",
            "--scaled_adam_clipping_scale",
            "0",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert args.eden_steps_per_epoch is None and args.scaled_adam_clipping_scale is None
    assert (args.eden_lr_batches, args.eden_lr_epochs) == (7500.0, 3.5)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    optimizer = optimizer_from_args(model, args)
    assert isinstance(optimizer, ScaledAdam) and optimizer.clipping_scale is None
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.98) and optimizer.param_groups[0]["lr"] == 0.045
    assert len(optimizer.param_groups[0]["params"]) == 3  # frozen LayerNorm weight left out
    eden = scheduler_from_args(optimizer, args)
    assert isinstance(eden, Eden) and eden.warmup_batches == 500
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.045 * 0.5)
    # The default stays AdamW with its groups.
    default = TrainingArguments(output_dir=str(tmp_path))
    assert type(optimizer_from_args(model, default)) is torch.optim.AdamW
