"""ScaledAdam and Eden (hf_audiorep/training/scaled_adam.py) against values computed by hand.

test_scaled_adam.py checks the update of two steps, resume and the loop; these pin what a one-character
bug would bend without failing those: the documented defaults and every argument check at its edge, the
boundary between a scalar and a tensor (one element or two), both clamps of the scalars, every bound of
the learned scale's step (±0.1, ``param_max_rms``, ``param_min_rms`` at and past the floor), a size period
of one step, the dtype of the state, the clipping norm's weights, its window and lower median, the early
estimates, the factor and the count of clipped steps, the clipping history in ``state_dict``, and Eden's
factor at and around its edges.
"""

import inspect
import math

import pytest
import torch
from torch import nn

from hf_audiorep.training import Eden, ScaledAdam


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean().sqrt()


# ----------------------------------------------------------------------------------- defaults, checks


def _defaults(cls) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


#: icefall's ScaledAdam defaults with its Zipformer recipe's lr (0.045, the docstring's typical value) and
#: clipping_scale (2.0)
SCALED_ADAM_DEFAULTS = {
    "lr": 0.045,
    "betas": (0.9, 0.98),
    "eps": 1e-8,
    "scalar_lr_scale": 0.1,
    "param_min_rms": 1e-5,
    "param_max_rms": 3.0,
    "scalar_max": 10.0,
    "size_update_period": 4,
    "clipping_scale": 2.0,
    "clipping_update_period": 100,
}


def test_defaults_are_the_documented_zipformer_values():
    # Eden: the recipe's 7500 batches, 3.5 epochs, 500 warmup steps from half the rate.
    assert _defaults(ScaledAdam) == SCALED_ADAM_DEFAULTS
    assert _defaults(Eden) == {
        "lr_batches": 7500.0,
        "lr_epochs": 3.5,
        "steps_per_epoch": None,
        "warmup_batches": 500.0,
        "warmup_start": 0.5,
        "last_epoch": -1,
    }
    optimizer = ScaledAdam([nn.Parameter(torch.zeros(2))])
    group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
    clipping = ("clipping_scale", "clipping_update_period")
    assert group == {k: v for k, v in SCALED_ADAM_DEFAULTS.items() if k not in clipping}
    assert (optimizer.clipping_scale, optimizer.clipping_update_period) == tuple(
        SCALED_ADAM_DEFAULTS[k] for k in clipping
    )
    # What a default Eden does, not only its signature (mutmut's trampoline shows the original one).
    eden = Eden(_sgd())
    assert (eden.lr_batches, eden.lr_epochs, eden.steps_per_epoch) == (7500.0, 3.5, None)
    assert (eden.warmup_batches, eden.warmup_start) == (500.0, 0.5)
    assert eden.factor(250) == pytest.approx((1 + (250 / 7500) ** 2) ** -0.25 * 0.75, rel=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.0},
        {"betas": (0.0, 0.0)},
        {"betas": (0.999, 0.999)},
        {"eps": 1e-30},
        {"scalar_lr_scale": 1e-6},
        {"param_min_rms": 1e-12, "param_max_rms": 2e-12},
        {"scalar_max": 0.5},
        {"size_update_period": 1},
        {"clipping_update_period": 1},
        {"clipping_scale": 0.5},
        {"clipping_scale": None},
    ],
)
def test_scaled_adam_accepts_each_argument_at_its_edge(kwargs):
    ScaledAdam([nn.Parameter(torch.zeros(2))], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1e-9}, r"^lr must be >= 0"),
        ({"betas": (1.0, 0.5)}, r"^betas must be in \[0, 1\)"),
        ({"betas": (1.5, 0.5)}, r"^betas must be in \[0, 1\)"),
        ({"betas": (-0.1, 0.5)}, r"^betas must be in \[0, 1\)"),
        ({"betas": (0.5, 1.0)}, r"^betas must be in \[0, 1\)"),
        ({"betas": (0.5, -0.1)}, r"^betas must be in \[0, 1\)"),
        ({"eps": 0.0}, r"^eps must be > 0"),
        ({"scalar_lr_scale": 0.0}, r"^scalar_lr_scale must be > 0"),
        ({"param_min_rms": 0.0}, r"^need 0 < param_min_rms < param_max_rms"),
        ({"param_min_rms": 3.0, "param_max_rms": 3.0}, r"^need 0 < param_min_rms < param_max_rms"),
        ({"param_min_rms": 4.0, "param_max_rms": 3.0}, r"^need 0 < param_min_rms < param_max_rms"),
        ({"scalar_max": 0.0}, r"^scalar_max must be > 0"),
        ({"size_update_period": 0}, r"^size_update_period must be a positive integer"),
        ({"size_update_period": True}, r"^size_update_period must be a positive integer"),
        ({"size_update_period": 2.0}, r"^size_update_period must be a positive integer"),
        ({"clipping_update_period": 0}, r"^clipping_update_period must be a positive integer"),
        ({"clipping_update_period": True}, r"^clipping_update_period must be a positive integer"),
        ({"clipping_update_period": 1.5}, r"^clipping_update_period must be a positive integer"),
        ({"clipping_scale": 0.0}, r"^clipping_scale must be > 0 or None"),
    ],
)
def test_scaled_adam_refuses_each_argument_just_past_its_edge(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ScaledAdam([nn.Parameter(torch.zeros(2))], **kwargs)


def _sgd():
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.045)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr_batches": 0.5},
        {"lr_epochs": 0.5},
        {"steps_per_epoch": 0.5},
        {"warmup_batches": 0.0},
        {"warmup_start": 0.0},
        {"warmup_start": 1.0},
    ],
)
def test_eden_accepts_each_argument_at_its_edge(kwargs):
    Eden(_sgd(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr_batches": 0.0}, r"^lr_batches must be > 0"),
        ({"lr_epochs": 0.0}, r"^lr_epochs must be > 0"),
        ({"steps_per_epoch": 0.0}, r"^steps_per_epoch must be > 0 or None"),
        ({"warmup_batches": -1.0}, r"^warmup_batches must be >= 0"),
        ({"warmup_start": -0.1}, r"^warmup_start must be in \[0, 1\]"),
        ({"warmup_start": 1.1}, r"^warmup_start must be in \[0, 1\]"),
    ],
)
def test_eden_refuses_each_argument_just_past_its_edge(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Eden(_sgd(), **kwargs)


# ------------------------------------------------------------------------------- scalars and tensors


def test_a_two_element_tensor_is_scaled_by_its_rms_and_a_one_element_one_is_a_scalar():
    lr, b1, slr = 0.1, 0.9, 0.1
    v0, s0 = torch.tensor([3.0, -4.0], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    v, s = nn.Parameter(v0.clone()), nn.Parameter(s0.clone())
    optimizer = ScaledAdam([v, s], lr=lr, scalar_lr_scale=slr, clipping_scale=None)
    v.grad, s.grad = torch.tensor([0.5, 0.25], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    optimizer.step()
    # First step: v_hat = g², so the Adam direction is sign(g) (up to eps), times (1 - beta1) of momentum.
    torch.testing.assert_close(v.detach(), v0 - (1 - b1) * lr * _rms(v0) * torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(s.detach(), s0 - (1 - b1) * lr * slr)
    adam = {"step", "exp_avg", "exp_avg_sq"}
    assert set(optimizer.state[v]) == adam | {"param_rms", "scale_exp_avg_sq", "scale_grads"}
    assert set(optimizer.state[s]) == adam


def test_scalars_are_clamped_to_scalar_max_on_both_sides():
    # lr * scalar_lr_scale * (1 - beta1) = 0.2 per step: each scalar would pass the bound by 0.15.
    up, down = nn.Parameter(torch.tensor([1.95])), nn.Parameter(torch.tensor([-1.95]))
    optimizer = ScaledAdam([up, down], lr=2.0, scalar_lr_scale=1.0, scalar_max=2.0, clipping_scale=None)
    up.grad, down.grad = torch.tensor([-1.0]), torch.tensor([1.0])
    optimizer.step()
    assert (up.item(), down.item()) == (2.0, -2.0)


def test_the_state_follows_the_parameter_dtype():
    w = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    optimizer = ScaledAdam([w], clipping_scale=None)
    w.grad = torch.ones(2, 2, dtype=torch.float64)
    optimizer.step()
    state = optimizer.state[w]
    for name in ("exp_avg", "exp_avg_sq", "param_rms", "scale_exp_avg_sq", "scale_grads"):
        assert state[name].dtype == torch.float64, name


# ------------------------------------------------------------------------------------- the scale step

_W0 = torch.full((2, 2), 0.5, dtype=torch.float64)  # rms 0.5, exact in float32 as well
_G = torch.tensor([[-0.3, 0.1], [-0.2, -0.4]], dtype=torch.float64)  # sum(w * g) < 0: the scale grows


@pytest.mark.parametrize(
    "kwargs, bound",
    [
        # free: a large eps, which the scale's Adam adds to its denominator as well
        ({"scalar_lr_scale": 0.1, "eps": 0.05}, lambda raw: raw),
        ({"scalar_lr_scale": 1.0}, lambda raw: 0.1),  # at most +10% per update
        (
            {"scalar_lr_scale": 1.0, "param_max_rms": 0.52},
            lambda raw: 0.52 / 0.5 - 1,
        ),  # never past the ceiling
        ({"scalar_lr_scale": 0.1, "param_min_rms": 0.5}, lambda raw: raw),  # at the floor: still learned
        ({"scalar_lr_scale": 0.1, "param_min_rms": 0.6}, lambda raw: 0.0),  # below it: no scale step
    ],
)
def test_the_scale_step_and_its_bounds_match_the_update_written_out(kwargs, bound):
    lr, (b1, b2) = 0.1, (0.9, 0.98)
    eps, slr = kwargs.get("eps", 1e-8), kwargs["scalar_lr_scale"]
    min_rms = kwargs.get("param_min_rms", 1e-5)
    w = nn.Parameter(_W0.clone())
    optimizer = ScaledAdam([w], lr=lr, size_update_period=2, clipping_scale=None, **kwargs)
    # Step 0 with a zero gradient changes nothing (0 / (0 + eps)); step 1 closes the size period.
    w.grad = torch.zeros_like(_W0)
    optimizer.step()
    assert torch.equal(w.detach(), _W0)
    w.grad = _G.clone()
    optimizer.step()

    v_hat = (1 - b2) * _G**2 / (1 - b2**2)
    adam = -lr * _G / (v_hat.sqrt() + eps) * max(0.5, min_rms)
    # The log-scale's Adam over the period's two gradients, 0 and sum(w * g), with beta2 ** 2.
    scale_grad = (_W0 * _G).sum().item()
    scale_v = (1 - b2**2) * scale_grad**2 / 2
    raw = -lr * slr * math.sqrt(1 - b2**2) * scale_grad / (math.sqrt(scale_v) + eps)
    scale_step = bound(raw)
    assert 0 < scale_step <= raw or scale_step == 0.0
    torch.testing.assert_close(w.detach(), _W0 + (1 - b1) * (adam + _W0 * scale_step))


def test_a_size_period_of_one_step_updates_the_scale_from_the_second_step_on():
    lr, b1, b2, eps, slr = 0.1, 0.5, 0.75, 1e-8, 0.1
    w0 = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)
    g1 = torch.tensor([[0.3, -0.1], [0.2, 0.4]], dtype=torch.float64)
    g2 = torch.tensor([[-0.2, 0.5], [0.1, 0.3]], dtype=torch.float64)
    w = nn.Parameter(w0.clone())
    optimizer = ScaledAdam(
        [w], lr=lr, betas=(b1, b2), eps=eps, scalar_lr_scale=slr, size_update_period=1, clipping_scale=None
    )
    w.grad = g1.clone()
    optimizer.step()
    # Step 0 ends a period of one step too, but learns no scale: plain scaled Adam.
    m1 = (1 - b1) * (-lr * g1 / (g1.abs() + eps) * _rms(w0))
    w1 = w0 + m1
    torch.testing.assert_close(w.detach(), w1)

    w.grad = g2.clone()
    optimizer.step()
    v = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    adam = -lr * g2 / ((v / (1 - b2**2)).sqrt() + eps) * _rms(w1)
    # The scale's first Adam step (beta2 ** 1), bias-corrected as the second update (step + 1) // period,
    # as icefall counts it.
    scale_grad = (w1 * g2).sum().item()
    scale_v = (1 - b2) * scale_grad**2
    scale_step = -lr * slr * math.sqrt(1 - b2**2) * scale_grad / (math.sqrt(scale_v) + eps)
    assert abs(scale_step) < 0.1
    torch.testing.assert_close(w.detach(), w1 + b1 * m1 + (1 - b1) * (adam + w1 * scale_step))


# ------------------------------------------------------------------------------------------- clipping


def _clipped_run(magnitudes, **kwargs):
    """A 2x2 parameter of rms 0.5 with lr 0, so nothing moves: the gradient c * ones has the clipping norm
    0.5 * |c * ones| = c. Yields the step, the optimizer and the clipping state after each step."""
    w = nn.Parameter(torch.full((2, 2), 0.5, dtype=torch.float64))
    optimizer = ScaledAdam([w], lr=0.0, **kwargs)
    for step, c in enumerate(magnitudes):
        w.grad = torch.full((2, 2), float(c), dtype=torch.float64)
        optimizer.step()
        yield step, optimizer, optimizer.state_dict()["clipping"]


def test_the_clipping_norm_weighs_tensors_by_rms_and_scalars_by_scalar_lr_scale():
    v, s = nn.Parameter(torch.tensor([3.0, 4.0])), nn.Parameter(torch.tensor([1.0]))
    optimizer = ScaledAdam([v, s], lr=0.0, scalar_lr_scale=0.2, clipping_update_period=10)
    for _ in range(2):  # step 0 records nothing
        v.grad, s.grad = torch.tensor([1.0, 2.0]), torch.tensor([5.0])
        optimizer.step()
    rms = math.sqrt((9 + 16) / 2)
    expected = math.sqrt((rms * math.sqrt(5)) ** 2 + (0.2 * 5.0) ** 2)
    assert optimizer.state_dict()["clipping"]["norms"] == [pytest.approx(expected, rel=1e-6)]


@pytest.mark.parametrize(
    "period, first, second",
    [
        # Odd window: the middle one. Even window: the lower of the two middle ones.
        (5, [5, 1, 4, 2, 3], [10, 6, 9, 7, 8]),
        (4, [4, 1, 3, 2], [8, 5, 7, 6]),
    ],
)
def test_the_threshold_is_the_scale_times_the_lower_median_of_the_last_period_norms(period, first, second):
    magnitudes = [1.0, *first, *second]  # step 0's norm is never recorded
    medians = {period: sorted(first)[(period - 1) // 2], 2 * period: sorted(second)[(period - 1) // 2]}
    for step, _, clipping in _clipped_run(magnitudes, clipping_scale=1.5, clipping_update_period=period):
        assert len(clipping["norms"]) == min(step, period)
        if step in medians:
            assert clipping["threshold"] == pytest.approx(1.5 * medians[step])
    assert sorted(clipping["norms"]) == pytest.approx(sorted(second))


@pytest.mark.parametrize(
    "period, estimates",
    [
        # Before the first period: at steps 10, 20 and 40, at twice the threshold, over all norms so far.
        (50, {10: 2 * 5, 20: 2 * 10, 40: 2 * 20}),
        (10, {10: 5, 20: 15, 30: 25, 40: 35}),  # step 10 is the period: the usual threshold
        (8, {8: 4, 16: 12, 24: 20, 32: 28, 40: 36}),  # steps 10, 20, 40 come after the period: no early one
    ],
)
def test_early_thresholds_come_at_the_listed_steps_only_before_the_first_period(period, estimates):
    threshold = None
    # The norm of step k is k: the lower median of steps 1..n is n // 2 (n even), of steps n-7..n it is n-4.
    for step, _, clipping in _clipped_run(range(42), clipping_scale=1.0, clipping_update_period=period):
        threshold = estimates.get(step, threshold)
        assert clipping["threshold"] == (None if threshold is None else pytest.approx(threshold)), step


def test_only_steps_above_the_threshold_are_scaled_down_and_counted():
    # Steps 1..10 have norms 1..10: the early estimate at step 10 is 2 * median = 10.
    magnitudes = [1, *range(1, 11), 9, 0, 20, 40, 1, 1, 1, 1, 1, 1]
    factors = {11: 1.0, 12: 1.0, 13: 0.5, 14: 0.25}
    counts = {11: 0, 12: 0, 13: 1, 14: 2, 20: 0}  # the count starts over with each estimate
    b2 = 0.5
    w = nn.Parameter(torch.full((2, 2), 0.5, dtype=torch.float64))
    optimizer = ScaledAdam([w], lr=0.0, betas=(0.9, b2), clipping_scale=1.0, clipping_update_period=100)
    assert optimizer.state_dict()["clipping"]["num_clipped"] == 0
    count = 0
    for step, c in enumerate(magnitudes):
        before = optimizer.state[w]["exp_avg_sq"].clone() if step else torch.zeros(2, 2, dtype=torch.float64)
        w.grad = torch.full((2, 2), float(c), dtype=torch.float64)
        optimizer.step()
        # The second moment sees the gradient after clipping, so it shows the factor.
        f = factors.get(step, 1.0)
        expected = b2 * before + (1 - b2) * (f * c) ** 2
        torch.testing.assert_close(optimizer.state[w]["exp_avg_sq"], expected, rtol=1e-12, atol=0.0)
        count = counts.get(step, count)
        assert optimizer.state_dict()["clipping"]["num_clipped"] == count, step


def test_a_median_that_is_not_finite_stops_the_run():
    w = nn.Parameter(torch.ones(2, 2))
    optimizer = ScaledAdam([w], lr=0.0, clipping_update_period=3)
    w.grad = torch.ones(2, 2)
    optimizer.step()
    for _ in range(2):  # steps 1, 2: zeroed
        w.grad = torch.full((2, 2), float("inf"))
        optimizer.step()
    w.grad = torch.full((2, 2), float("inf"))
    with pytest.raises(RuntimeError, match=r"^ScaledAdam: too many gradients were not finite"):
        optimizer.step()


# ---------------------------------------------------------------------------------------------- state


_FRESH = {"step": 0, "norms": [], "threshold": None, "num_clipped": 0}


def test_the_clipping_history_in_state_dict_and_back():
    # Norms 1, 2, 3 give the threshold 2 * 2 at step 3; steps 4 and 5 take the places 4 % 3 and 5 % 3; only
    # step 5 is above the threshold.
    run = list(_clipped_run([1, 1, 2, 3, 4, 5], clipping_update_period=3))
    assert run[0][2] == {**_FRESH, "step": 1}
    _, optimizer, clipping = run[-1]
    saved = {"step": 6, "norms": [1.0, 4.0, 5.0], "threshold": pytest.approx(4.0), "num_clipped": 1}
    assert clipping == saved
    clipping["norms"].append(99.0)  # a copy: the optimizer's history is its own
    assert optimizer.state_dict()["clipping"] == saved
    restored = ScaledAdam([nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))], lr=0.0)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.state_dict()["clipping"] == saved

    # A state without "clipping" (e.g. saved by torch's own code) loads, with the history started over.
    state = optimizer.state_dict()
    del state["clipping"]
    w = nn.Parameter(torch.full((2, 2), 0.5, dtype=torch.float64))
    other = ScaledAdam([w], lr=0.0, clipping_update_period=3)
    for _ in range(3):
        w.grad = torch.ones(2, 2, dtype=torch.float64)
        other.step()
    other.load_state_dict(state)
    assert other.state_dict()["clipping"] == _FRESH
    assert int(other.state[w]["step"]) == 6


# ----------------------------------------------------------------------------------------------- Eden


def _eden_by_hand(step, lr_batches, lr_epochs, steps_per_epoch, warmup_batches, warmup_start):
    epoch = 0.0 if steps_per_epoch is None else step / steps_per_epoch
    warmup = warmup_start + (1 - warmup_start) * step / warmup_batches if step < warmup_batches else 1.0
    return (1 + (step / lr_batches) ** 2) ** -0.25 * (1 + (epoch / lr_epochs) ** 2) ** -0.25 * warmup


@pytest.mark.parametrize("steps_per_epoch", [None, 20.0])
@pytest.mark.parametrize("step", [0, 1, 9, 10, 11, 40, 1000])
def test_eden_factor_matches_the_formula_around_its_edges(step, steps_per_epoch):
    constants = dict(lr_batches=30.0, lr_epochs=1.5, steps_per_epoch=steps_per_epoch)
    constants.update(warmup_batches=10.0, warmup_start=0.25)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.04)
    eden = Eden(optimizer, **constants)
    assert eden.factor(step) == pytest.approx(_eden_by_hand(step, **constants), rel=1e-12)
    if step <= 40:
        for _ in range(step):
            optimizer.step()
            eden.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.04 * _eden_by_hand(step, **constants))


def test_eden_hands_last_epoch_to_the_scheduler():
    # torch's resume by constructor: the groups carry initial_lr, and the scheduler steps once past it.
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    optimizer.param_groups[0]["initial_lr"] = 0.04
    eden = Eden(optimizer, lr_batches=10.0, warmup_batches=4.0, last_epoch=5)
    assert eden.last_epoch == 6
    expected = _eden_by_hand(6, 10.0, 3.5, None, 4.0, 0.5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.04 * expected)
