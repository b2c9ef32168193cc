"""ModelEMA against the update rule written out by hand: ramps, averaging, buffers, wrappers, state."""

import math

import pytest
import torch
from torch import nn

from hf_audiorep.training import ModelEMA


class _Net(nn.Module):
    """A linear layer and a BatchNorm: float parameters, float buffers and an integer counter."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)


def _shift(model, amount):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(amount)


@pytest.mark.parametrize(
    "decay, end_decay, field",
    [(1.5, None, "decay"), (-0.1, None, "decay"), (0.5, 1.01, "end_decay"), (0.5, -0.5, "end_decay")],
)
def test_decays_outside_zero_one_are_refused_naming_the_argument(decay, end_decay, field):
    with pytest.raises(ValueError, match=f"^{field} must be in \\[0, 1\\]"):
        ModelEMA(nn.Linear(2, 2), decay=decay, end_decay=end_decay, ramp_steps=3)


def test_valid_edges_and_bad_ramps():
    for decay in (0.0, 1.0):  # both ends of [0, 1] are allowed
        assert ModelEMA(nn.Linear(2, 2), decay=decay).decay_at(0) == decay
    # end_decay equal to decay needs no ramp.
    assert ModelEMA(nn.Linear(2, 2), decay=0.9, end_decay=0.9).decay_at(5) == 0.9
    with pytest.raises(ValueError, match="ramp must be one of"):
        ModelEMA(nn.Linear(2, 2), ramp="exponential")
    with pytest.raises(ValueError, match="ramp_steps must be >= 0"):
        ModelEMA(nn.Linear(2, 2), ramp_steps=-1)
    assert ModelEMA(nn.Linear(2, 2), decay=0.9, end_decay=0.99, ramp_steps=1).decay_at(1) == 0.99
    with pytest.raises(ValueError, match="^end_decay differs from decay but ramp_steps is 0"):
        ModelEMA(nn.Linear(2, 2), decay=0.9, end_decay=0.99)


def test_linear_and_cosine_ramps_match_their_formulas():
    start, end, steps = 0.6, 0.96, 8
    linear = ModelEMA(nn.Linear(2, 2), decay=start, end_decay=end, ramp_steps=steps)
    cosine = ModelEMA(nn.Linear(2, 2), decay=start, end_decay=end, ramp_steps=steps, ramp="cosine")
    for step in range(12):
        t = min(step, steps) / steps
        assert linear.decay_at(step) == pytest.approx(start + (end - start) * t), step
        assert cosine.decay_at(step) == pytest.approx(end - (end - start) * (1 + math.cos(math.pi * t)) / 2)
    # Without end_decay the decay is constant.
    constant = ModelEMA(nn.Linear(2, 2), decay=0.7)
    assert [constant.decay_at(s) for s in (0, 1, 100)] == [0.7, 0.7, 0.7]


def test_updates_follow_the_rule_and_the_ramp():
    torch.manual_seed(0)
    model = _Net()
    ema = ModelEMA(model, decay=0.5, end_decay=0.9, ramp_steps=2)
    expected = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    for step, decay in enumerate([0.5, 0.7, 0.9, 0.9]):
        _shift(model, 1.0)
        with torch.no_grad():
            model.norm.running_mean.add_(2.0)
            model.norm.num_batches_tracked.add_(3)
        assert ema.current_decay == pytest.approx(decay)
        assert ema.update(model) == pytest.approx(decay)
        assert ema.num_updates == step + 1
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                expected[name] = decay * expected[name] + (1 - decay) * value.float()
            else:
                expected[name] = value.clone()  # integer counters are copied, not averaged
        for name, value in ema.module.state_dict().items():
            torch.testing.assert_close(value, expected[name], msg=name)


def test_the_average_is_fp32_frozen_and_in_eval_mode_whatever_the_model():
    model = nn.Linear(4, 4).bfloat16()
    ema = ModelEMA(model, decay=0.25)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training
    before = ema.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.25 * before + 0.75 * model.weight.float())
    assert model.weight.dtype == torch.bfloat16 and model.weight.requires_grad  # the model is untouched


def test_copy_to_writes_every_tensor_into_the_model():
    model = _Net()
    ema = ModelEMA(model, decay=0.5)
    _shift(model, 3.0)
    with torch.no_grad():
        model.norm.num_batches_tracked.fill_(7)
    ema.copy_to(model)
    for name, value in ema.module.state_dict().items():
        assert torch.equal(model.state_dict()[name].float(), value.float()), name


def test_data_parallel_wrappers_are_unwrapped():
    model = nn.Linear(3, 3)
    ema = ModelEMA(nn.DataParallel(model), decay=0.5)
    assert set(dict(ema.module.named_parameters())) == {"weight", "bias"}
    _shift(model, 2.0)
    ema.update(nn.DataParallel(model))
    target = nn.Linear(3, 3)
    ema.copy_to(nn.DataParallel(target))
    torch.testing.assert_close(target.weight, model.weight - 1.0)


def test_a_different_model_is_refused_naming_the_tensors():
    ema = ModelEMA(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="does not match the EMA copy.*weight"):
        ema.update(nn.Sequential(nn.Linear(3, 3)))


def test_state_dict_round_trip_restores_weights_and_the_ramp_position():
    model = _Net()
    ema = ModelEMA(model, decay=0.5, end_decay=0.9, ramp_steps=4)
    for _ in range(3):
        _shift(model, 1.0)
        ema.update(model)
    state = ema.state_dict()
    assert state["num_updates"] == 3
    assert {k for k in state if k != "num_updates"} == {"module." + k for k in model.state_dict()}
    restored = ModelEMA(_Net(), decay=0.5, end_decay=0.9, ramp_steps=4)
    restored.load_state_dict({**state, "unrelated": torch.zeros(1)})  # keys outside "module." are ignored
    assert restored.num_updates == 3 and restored.current_decay == pytest.approx(0.8)
    for name, value in ema.module.state_dict().items():
        assert torch.equal(restored.module.state_dict()[name], value), name
