"""Optimizer groups, AdamW and lr schedules against hand computations (hf_audiorep/training/optim.py).

test_training.py covers the groups of real models and whole schedules through TrainLoop; these pin the
pieces a one-character bug would bend without failing a training run: each group's lr and decay, the
AdamW hyper-parameters, the schedule's edges, and the layer-id name rules.
"""

import math

import pytest
import torch
from torch import nn

from hf_audiorep.training import build_optimizer, build_param_groups, build_scheduler, default_layer_id
from hf_audiorep.training.optim import lr_multiplier

# --------------------------------------------------------------------------------------------- AdamW


def test_each_group_gets_the_base_lr_times_its_scale_and_the_default_decay():
    a, b, c = (nn.Parameter(torch.ones(2, 2)) for _ in range(3))
    groups = [
        {"params": [a], "lr_scale": 0.25, "weight_decay": 0.0},
        {"params": [b], "lr_scale": 0.5},
        {"params": [c]},
    ]
    optimizer = build_optimizer(groups, learning_rate=2e-3, weight_decay=0.05)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([0.5e-3, 1e-3, 2e-3])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.05, 0.05]
    assert [g["lr_scale"] for g in optimizer.param_groups] == [0.25, 0.5, 1.0]
    assert "lr" not in groups[0] and "lr_scale" not in groups[2], "the caller's dicts are not modified"
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-8
    assert optimizer.defaults["lr"] == 2e-3 and optimizer.defaults["weight_decay"] == 0.05


def test_first_adamw_step_matches_the_update_rule_by_hand():
    # Step 1 of AdamW: m_hat = g, v_hat = g^2, so p <- p (1 - lr wd) - lr g / (|g| + eps).
    lr, wd, eps = 0.1, 0.5, 0.5
    p = nn.Parameter(torch.tensor([2.0, -1.0, 4.0]))
    q = nn.Parameter(torch.tensor([3.0]))
    optimizer = build_optimizer(
        [{"params": [p], "lr_scale": 0.5}, {"params": [q], "weight_decay": 0.0}],
        learning_rate=lr,
        weight_decay=wd,
        betas=(0.5, 0.75),
        eps=eps,
    )
    grad = torch.tensor([1.0, -2.0, 0.5])
    p.grad, q.grad = grad.clone(), torch.tensor([1.0])
    optimizer.step()
    lr_p = lr * 0.5
    expected_p = torch.tensor([2.0, -1.0, 4.0]) * (1 - lr_p * wd) - lr_p * grad / (grad.abs() + eps)
    torch.testing.assert_close(p.detach(), expected_p)
    torch.testing.assert_close(q.detach(), torch.tensor([3.0 - lr * 1.0 / (1.0 + eps)]))
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.75)


def test_default_eps_is_tiny_next_to_a_unit_gradient():
    p = nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([{"params": [p]}], learning_rate=0.01, weight_decay=0.0)
    p.grad = torch.ones(1)
    optimizer.step()
    assert p.item() == pytest.approx(-0.01, rel=1e-6)  # lr * g / (|g| + 1e-8)


# ------------------------------------------------------------------------------------------ schedules


def test_lr_multiplier_defaults_to_cosine_to_zero():
    assert lr_multiplier(0, 10, 0) == pytest.approx(1.0)
    assert lr_multiplier(5, 10, 0) == pytest.approx(0.5)
    assert lr_multiplier(10, 10, 0) == pytest.approx(0.0, abs=1e-12)
    assert lr_multiplier(3, 10, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_lr_multiplier_warmup_edges_and_clamping():
    assert [lr_multiplier(s, 20, 4, "linear") for s in range(5)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    # Linear decay from the end of warmup, floored at min_ratio, and flat past max_steps.
    assert lr_multiplier(12, 20, 4, "linear", min_ratio=0.2) == pytest.approx(0.2 + 0.8 * 0.5)
    assert lr_multiplier(20, 20, 4, "linear", min_ratio=0.2) == pytest.approx(0.2)
    assert lr_multiplier(50, 20, 4, "cosine", min_ratio=0.2) == pytest.approx(0.2)
    assert lr_multiplier(2, 20, 4, "constant") == pytest.approx(0.5)
    assert lr_multiplier(19, 20, 4, "constant", min_ratio=0.2) == 1.0
    # Warmup as long as the run: no division by zero, the run ends at the floor.
    assert lr_multiplier(4, 4, 4, "cosine", min_ratio=0.1) == pytest.approx(1.0)
    assert lr_multiplier(5, 4, 4, "cosine", min_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_multiplier(0, 10, 0, "exponential")


def test_scheduler_reads_the_peak_lr_from_the_groups_and_floors_the_head_rate():
    head, body = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [head], "lr": 0.4}, {"params": [body], "lr": 0.1}], lr=0.4)
    scheduler = build_scheduler(optimizer, max_steps=4, min_learning_rate=0.1)  # no warmup by default
    assert scheduler.get_last_lr() == pytest.approx([0.4, 0.1])
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    # min_learning_rate / peak (0.4) = 1/4 of every group's own rate at the end.
    assert scheduler.get_last_lr() == pytest.approx([0.1, 0.025])
    with pytest.raises(ValueError, match="unknown lr_scheduler"):
        build_scheduler(optimizer, max_steps=4, schedule="step")


def test_scheduler_decays_to_zero_by_default():
    p = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=0.3)
    scheduler = build_scheduler(optimizer, max_steps=2)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr() == pytest.approx([0.0], abs=1e-12)


def test_scheduler_with_a_zero_peak_lr_has_no_floor_and_its_state_is_plain_numbers():
    p = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([p], lr=0.0)
    scheduler = build_scheduler(optimizer, max_steps=3, min_learning_rate=0.5)
    optimizer.step()
    scheduler.step()
    assert scheduler.get_last_lr() == [0.0]
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [None]  # the schedule function holds no state to pickle


# --------------------------------------------------------------------------------------------- groups


def test_default_layer_id_name_rules():
    assert default_layer_id("encoder.blocks.20.attn.weight", 12) == 13  # past the last block: the top
    assert default_layer_id("blocks.11", 12) == 12  # the index may end the name
    assert (
        default_layer_id("encoder.sublayers.2.weight", 12) == 13
    )  # a component named *layers is not a block
    assert default_layer_id("layer.0.weight", 4) == 1
    assert default_layer_id("pos_embed_freq", 12) == 0
    assert default_layer_id("patch_embedding.proj.weight", 12) == 0
    assert default_layer_id("dist_token", 12) == 0
    assert default_layer_id("model.embeddingsX.weight", 12) == 13


class _Blocks(nn.Module):
    def __init__(self, num_layers=2, frozen_head=False):
        super().__init__()
        self.config = type("Config", (), {"num_hidden_layers": num_layers})()
        self.patch_embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(num_layers))
        self.scale = nn.Parameter(torch.ones(4))
        self.head = nn.Linear(4, 3).requires_grad_(not frozen_head)


def test_groups_are_ordered_by_layer_with_the_scale_of_each_layer():
    model = _Blocks(num_layers=2)
    groups = build_param_groups(model, weight_decay=0.1, layer_decay=0.5)
    assert [(g["layer_id"], g["weight_decay"]) for g in groups] == [
        (0, 0.1),
        (0, 0.0),
        (1, 0.1),
        (1, 0.0),
        (2, 0.1),
        (2, 0.0),
        (3, 0.1),
        (3, 0.0),
    ]  # within a layer, the decayed group first
    assert [g["lr_scale"] for g in groups[::2]] == pytest.approx([0.125, 0.25, 0.5, 1.0])
    top = {id(p) for g in groups if g["layer_id"] == 3 for p in g["params"]}
    assert top == {id(model.scale), id(model.head.weight), id(model.head.bias)}


def test_an_explicit_layer_id_fn_and_the_models_own_get_layer_id_are_used():
    model = _Blocks(num_layers=2)
    groups = build_param_groups(model, 0.1, layer_decay=0.5, layer_id_fn=lambda name: 1)
    assert {g["layer_id"] for g in groups} == {1}
    model.get_layer_id = lambda name: 0 if name.startswith("head") else 3
    groups = build_param_groups(model, 0.1, layer_decay=0.5)
    head = {id(model.head.weight), id(model.head.bias)}
    assert {id(p) for g in groups if g["layer_id"] == 0 for p in g["params"]} == head
    # num_layers passed explicitly wins over the config.
    groups = build_param_groups(_Blocks(4), 0.1, layer_decay=0.5, num_layers=1, layer_id_fn=lambda n: 2)
    assert groups[0]["lr_scale"] == pytest.approx(1.0)


def test_layer_ids_outside_the_range_and_bad_arguments_are_refused():
    model = _Blocks(num_layers=2)
    with pytest.raises(ValueError, match="outside 0..3"):
        build_param_groups(model, 0.1, layer_decay=0.5, layer_id_fn=lambda name: 4)
    with pytest.raises(ValueError, match="outside 0..3"):
        build_param_groups(model, 0.1, layer_decay=0.5, layer_id_fn=lambda name: -1)
    for layer_decay in (0.0, 1.01):
        with pytest.raises(ValueError, match="layer_decay"):
            build_param_groups(model, 0.1, layer_decay=layer_decay)
    with pytest.raises(ValueError, match="weight_decay"):
        build_param_groups(model, -0.1)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_param_groups(nn.Linear(2, 2).requires_grad_(False), 0.1)
    # Without layer decay the layer ids are not asked for: any layer_id_fn is ignored.
    groups = build_param_groups(model, 0.1, layer_id_fn=lambda name: 99)
    assert {g["layer_id"] for g in groups} == {0} and {g["lr_scale"] for g in groups} == {1.0}


def test_weight_decay_exemptions_by_shape_suffix_and_model_list():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.zeros(3, 3))
            self.inner = nn.Module()
            self.inner.deeper = nn.Module()
            self.inner.deeper.cls_token = nn.Parameter(torch.zeros(1, 1, 3))
            self.kernel = nn.Parameter(torch.zeros(2, 3, 3))
            self.gain = nn.Parameter(torch.zeros(3))
            self.proj = nn.Module()
            self.proj.bias = nn.Parameter(torch.zeros(2, 3))  # a 2-D bias is still a bias

        def no_weight_decay(self):
            return ["table", "cls_token"]  # a full name, and a last component

    net = Net()
    decay = {id(p): g["weight_decay"] for g in build_param_groups(net, 0.3) for p in g["params"]}
    assert decay[id(net.table)] == 0.0 and decay[id(net.inner.deeper.cls_token)] == 0.0
    assert decay[id(net.kernel)] == 0.3 and decay[id(net.gain)] == 0.0 and decay[id(net.proj.bias)] == 0.0
    # No weight decay at all is allowed.
    assert {g["weight_decay"] for g in build_param_groups(net, 0.0)} == {0.0}


def test_a_frozen_parameter_anywhere_is_skipped_and_the_rest_kept():
    model = nn.Sequential(nn.Linear(2, 2).requires_grad_(False), nn.Linear(2, 2), nn.Linear(2, 2))
    params = [p for g in build_param_groups(model, 0.1) for p in g["params"]]
    assert {id(p) for p in params} == {
        id(p) for p in list(model[1].parameters()) + list(model[2].parameters())
    }
