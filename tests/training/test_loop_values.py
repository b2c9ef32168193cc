"""TrainLoop (hf_audiorep/training/loop.py) against values computed independently of it.

test_training.py drives the loop through whole runs (resume, checkpoints, clipping, tensorboard); these pin
what a one-character bug in the loop would bend without failing such a run: how many micro-steps make an
optimizer step, the accumulated update written out by hand with plain autograd (clipped or not), the lr
of every step against the schedule's formula, when logging, evaluation and checkpoints fire (the last
step included), what each log line and ``trainer_state.json`` hold, an exact resume at an epoch boundary,
the final save of a plain module and of an export, and the small helpers (``launch_command``, the model
file pattern, the batch size).
"""

import copy
import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_training import _args, _assert_same_weights
from torch import nn
from toy_training import fresh_accelerate_state, toy  # noqa: F401  (fresh_accelerate_state: autouse)
from transformers import set_seed

from hf_audiorep.training import TrainLoop
from hf_audiorep.training import checkpoint as checkpoint_module
from hf_audiorep.training import loop as loop_module
from hf_audiorep.training.loop import _MODEL_FILE, _batch_size, launch_command


class _RecordingStream(toy.SyntheticStream):
    """The toy stream, remembering every ``set_epoch`` call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_epoch_calls = []

    def set_epoch(self, epoch):
        self.set_epoch_calls.append(epoch)
        super().set_epoch(epoch)


def _model(dropout=0.3):
    set_seed(0)
    return toy.ToyModel(toy.ToyConfig(dropout=dropout))


def _stream(num_examples=48, batch_size=4):
    return _RecordingStream(*toy.synthetic_data(num_examples), batch_size=batch_size, seed=1)


def _lr_at(step, max_steps, warmup, lr, min_lr):
    """The default schedule written out: linear warmup from 0, then cosine from lr down to min_lr."""
    if step < warmup:
        return lr * step / warmup
    progress = (step - warmup) / (max_steps - warmup)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def _sgd(model, args):
    return torch.optim.SGD(model.parameters(), lr=args.learning_rate)


def _constant(optimizer, args):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


# ----------------------------------------------------------------------- steps, cadence, logs, state


def test_accumulated_steps_fire_logging_eval_and_checkpoints_on_their_steps_and_the_last(tmp_path):
    # 48 clips in batches of 4: 12 batches per epoch, 3 per optimizer step, so 4 steps per epoch; 7 steps
    # end in the middle of epoch 1, and 7 is a multiple of none of the cadences (3).
    args = _args(
        tmp_path,
        max_steps=7,
        gradient_accumulation_steps=3,
        warmup_steps=2,
        logging_steps=3,
        eval_steps=3,
        checkpointing_steps=3,
        save_total_limit=None,
        eval_on_start=True,
    )
    stream = _stream()
    calls = []  # (global_step at the call, loss, accuracy, lr the optimizer holds) per micro-step
    hooks, evals = [], []
    holder = {}

    def step_fn(model, batch):
        logits = model(batch["waveforms"])
        loss = F.cross_entropy(logits, batch["labels"])
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean().item()
        loop = holder["loop"]
        calls.append((loop.global_step, loss.item(), accuracy, loop.optimizer.param_groups[0]["lr"]))
        return loss, {"accuracy": accuracy}

    def hook(model, step):
        assert model is holder["loop"].model
        hooks.append(step)

    def eval_fn(model):
        evals.append(holder["loop"].global_step)
        return {"eval_score": 10.0 * holder["loop"].global_step}

    loop = TrainLoop(args, _model(), stream, step_fn, eval_fn=eval_fn, on_optimizer_step=[hook])
    holder["loop"] = loop
    summary = loop.run()

    # 7 optimizer steps of 3 micro-steps each, and not one micro-step more.
    assert [c[0] for c in calls] == [step for step in range(7) for _ in range(3)]
    assert hooks == list(range(1, 8))
    assert stream.set_epoch_calls == [0, 1]
    assert loop.global_step == 7 and loop.epoch == 1
    assert loop.scheduler.scheduler.last_epoch == 7  # stepped once per optimizer step, not per micro-step
    # Every micro-step of step s + 1 trains with the rate the schedule gives after s steps.
    for step, _, _, lr in calls:
        assert lr == pytest.approx(_lr_at(step, 7, 2, 1e-2, 1e-4), rel=1e-9, abs=1e-15), step

    # Logs every 3 steps and at the last: means over the window's micro-steps, the rate after the step.
    windows = {3: calls[0:9], 6: calls[9:18], 7: calls[18:21]}
    assert [row["step"] for row in loop.log_history] == [3, 6, 7]
    for row in loop.log_history:
        window = windows[row["step"]]
        assert row["loss"] == pytest.approx(sum(c[1] for c in window) / len(window), rel=1e-6)
        assert row["accuracy"] == pytest.approx(sum(c[2] for c in window) / len(window), rel=1e-6)
        assert row["lr"] == pytest.approx(_lr_at(row["step"], 7, 2, 1e-2, 1e-4), rel=1e-9)
        assert row["grad_norm"] > 0 and row["clips_per_second"] > 0
    assert [row["epoch"] for row in loop.log_history] == [0, 1, 1]

    # Evaluations: before the first step, every 3 steps, and once at the (off-cadence) end.
    assert evals == [0, 3, 6, 7]
    assert [row["step"] for row in loop.eval_history] == [0, 3, 6, 7]
    assert [row["eval_score"] for row in loop.eval_history] == [0.0, 30.0, 60.0, 70.0]

    # Checkpoints every 3 steps (none at the last step), each after that step's evaluation.
    root = Path(args.output_dir) / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_3", "step_6"]
    state_3 = json.loads((root / "step_3" / "trainer_state.json").read_text())
    state_6 = json.loads((root / "step_6" / "trainer_state.json").read_text())
    assert (state_3["global_step"], state_3["epoch"], state_3["world_size"]) == (3, 0, 1)
    assert state_3["ranks"] == [{"epoch": 0, "data": {"epoch": 0, "examples_consumed": 3 * 3 * 4}}]
    assert [row["step"] for row in state_3["eval_history"]] == [0, 3]
    assert (state_6["global_step"], state_6["epoch"]) == (6, 1)
    assert state_6["ranks"] == [{"epoch": 1, "data": {"epoch": 1, "examples_consumed": 2 * 3 * 4}}]
    assert state_6["eval_history"] == [{"step": s, "eval_score": 10.0 * s} for s in (0, 3, 6)]

    # The summary: this invocation's mean loss and clip count, and the last evaluation.
    assert summary["global_step"] == 7 and summary["epoch"] == 1
    assert summary["train_loss"] == pytest.approx(sum(c[1] for c in calls) / 21, rel=1e-6)
    assert summary["train_clips"] == 21 * 4
    assert summary["last_log"] == loop.log_history[-1] and summary["last_log"]["step"] == 7
    assert summary["train_clips_per_second"] == pytest.approx(84 / summary["train_runtime"])
    assert summary["eval_score"] == 70.0 and "step" not in summary
    assert summary["resumed_from_checkpoint"] is None and summary["world_size"] == 1
    assert summary["distributed_type"] == "DistributedType.NO" and summary["mixed_precision"] == "no"
    assert summary["cpu_threads"] == torch.get_num_threads() >= 1
    script = sys.argv[0] if sys.argv else ""
    assert summary["recipe"] == (Path(script).stem if script.endswith(".py") else None)
    assert summary["training_command"] == launch_command() != ""
    assert json.loads((Path(args.output_dir) / "train_results.json").read_text()) == json.loads(
        json.dumps(summary, default=str)
    )


@pytest.mark.parametrize("max_grad_norm", [None, 0.05])
def test_accumulated_update_is_the_mean_gradient_of_the_micro_batches_clipped(tmp_path, max_grad_norm):
    """SGD at a constant rate, 2 steps of 3 micro-batches: each step moves the weights by lr times the mean
    of the 3 micro-batch gradients (rescaled to max_grad_norm when longer), computed here with autograd."""
    lr, accumulation = 0.5, 3
    args = _args(
        tmp_path,
        max_steps=2,
        gradient_accumulation_steps=accumulation,
        learning_rate=lr,
        warmup_steps=0,
        logging_steps=1,
        max_grad_norm=max_grad_norm,
    )
    model = _model(dropout=0.0)
    reference = copy.deepcopy(model)
    batches = list(_stream())[: 2 * accumulation]
    loop = TrainLoop(
        args, model, _stream(), toy.classification_step(), optimizer_fn=_sgd, scheduler_fn=_constant
    )
    loop.run()

    norms = []
    for step in range(2):
        grads = [torch.zeros_like(p) for p in reference.parameters()]
        for batch in batches[step * accumulation : (step + 1) * accumulation]:
            loss = F.cross_entropy(reference(batch["waveforms"]), batch["labels"])
            for total, grad in zip(
                grads, torch.autograd.grad(loss, list(reference.parameters())), strict=True
            ):
                total += grad / accumulation
        norm = torch.sqrt(sum((g**2).sum() for g in grads)).item()
        norms.append(norm)
        scale = 1.0 if max_grad_norm is None else min(1.0, max_grad_norm / (norm + 1e-6))
        with torch.no_grad():
            for param, grad in zip(reference.parameters(), grads, strict=True):
                param -= lr * scale * grad
    if max_grad_norm is not None:
        assert min(norms) > 2 * max_grad_norm  # the clipping is really exercised
    for (name, got), want in zip(loop.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.detach(), want.detach(), rtol=1e-4, atol=1e-6, msg=name)
    # The logged norm is the accumulated gradient's, before clipping.
    assert [row["grad_norm"] for row in loop.log_history] == pytest.approx(norms, rel=1e-4)


def test_a_parameter_no_loss_reached_in_a_step_is_left_alone_by_adamw(tmp_path):
    """The gradients are freed after each step (``zero_grad(set_to_none=True)``): a parameter the next loss
    does not reach has no gradient, and AdamW skips it; a zeroed gradient would let AdamW move it by its
    momentum. Step 2's loss reaches the head's bias only (with a zero gradient, so momentum moves it)."""
    base = toy.classification_step()
    calls = []

    def step_fn(model, batch):
        calls.append(1)
        if len(calls) == 1:
            return base(model, batch)
        return model.head.bias.sum() * 0, {}

    after = []  # the weights after each optimizer step

    def hook(model, step):
        after.append({name: p.detach().clone() for name, p in model.named_parameters()})

    args = _args(tmp_path, max_steps=2, warmup_steps=0, weight_decay=0.1)
    TrainLoop(args, _model(), _stream(), step_fn, on_optimizer_step=[hook]).run()
    first, second = after
    assert [name for name in first if not torch.equal(first[name], second[name])] == ["head.bias"]


def test_log_values_are_means_of_floats_and_one_element_tensors(tmp_path):
    args = _args(tmp_path, max_steps=4, logging_steps=2)
    counter = {"n": 0}
    base = toy.classification_step()

    def step_fn(model, batch):
        loss, _ = base(model, batch)
        counter["n"] += 1
        return loss.reshape(1), {"const": 0.5, "call": torch.tensor([float(counter["n"])])}

    loop = TrainLoop(args, _model(), _stream(), step_fn)
    loop.run()
    assert [(r["step"], r["const"], r["call"]) for r in loop.log_history] == [(2, 0.5, 1.5), (4, 0.5, 3.5)]


def test_low_precision_and_bool_log_values_are_summed_in_float64_without_their_graph(tmp_path, monkeypatch):
    """Under mixed precision a step's logs are fp16/bf16 tensors: summed in their own dtype, 2048 + 1 + 1 + 1
    stays 2048 in fp16 (its spacing there is 2) and the mean reads 512, not 512.75; bools summed as bools
    stay True. A log value that requires grad must not keep its graph alive in the window until the log."""
    base = toy.classification_step()
    halves = iter([2048.0, 1.0, 1.0, 1.0])
    flags = iter([True, False, True, True])

    def step_fn(model, batch):
        loss, _ = base(model, batch)
        return loss, {
            "half": torch.tensor(next(halves), dtype=torch.float16),
            "flag": torch.tensor(next(flags)),
            "live": loss * 2,  # requires grad
        }

    held_graph = []
    add_micro = loop_module._Window.add_micro

    def recording_add_micro(window, loss, logs, clips):
        add_micro(window, loss, logs, clips)
        held_graph.append(any(total.requires_grad for total in window.log_sums.values()))

    monkeypatch.setattr(loop_module._Window, "add_micro", recording_add_micro)
    args = _args(tmp_path, max_steps=4, logging_steps=4)
    loop = TrainLoop(args, _model(), _stream(), step_fn)
    loop.run()
    (row,) = loop.log_history
    assert (row["half"], row["flag"]) == (512.75, 0.75)
    assert held_graph == [False] * 8  # 4 micro-steps, each added to the log window and to the run's totals


def test_losses_and_grad_norms_are_summed_in_float64_over_the_window_and_the_run(tmp_path):
    """Losses and gradient norms 2**24, 1, 1, 2: float32 has a spacing of 2 above 2**24, so a float32 running
    sum drops the ones (2**24 + 2 in all, mean 4194304.5); the float64 sum is 2**24 + 4, which the float32
    all-reduce of the losses holds exactly: mean 4194305."""
    values = iter([2.0**24, 1.0, 1.0, 2.0])
    base = toy.classification_step()

    def step_fn(model, batch):
        loss, _ = base(model, batch)
        value = next(values)
        weight = model.head.weight[0, 0]
        # The loss is exactly `value`, and its gradient is `value` on one weight: a norm of `value`.
        return loss * 0 + value + value * (weight - weight.detach()), {}

    args = _args(tmp_path, max_steps=4, logging_steps=4, max_grad_norm=None)
    loop = TrainLoop(args, _model(), _stream(), step_fn, optimizer_fn=_sgd, scheduler_fn=_constant)
    summary = loop.run()
    (row,) = loop.log_history
    assert row["loss"] == summary["train_loss"] == row["grad_norm"] == (2**24 + 4) / 4


def test_logs_none_is_no_logs_and_the_grad_norm_is_the_mean_over_the_window(tmp_path):
    norms = []

    class RecordingSGD(torch.optim.SGD):
        def step(self, closure=None):
            grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
            norms.append(torch.sqrt(sum((g**2).sum() for g in grads)).item())
            return super().step(closure)

    base = toy.classification_step()
    args = _args(tmp_path, max_steps=5, logging_steps=2, max_grad_norm=None)
    loop = TrainLoop(
        args,
        _model(),
        _stream(),
        lambda model, batch: (base(model, batch)[0], None),
        optimizer_fn=lambda model, args: RecordingSGD(model.parameters(), lr=args.learning_rate),
    )
    loop.run()
    assert [r["step"] for r in loop.log_history] == [2, 4, 5]
    assert set(loop.log_history[0]) == {"step", "loss", "grad_norm", "lr", "clips_per_second", "epoch"}
    expected = [(norms[0] + norms[1]) / 2, (norms[2] + norms[3]) / 2, norms[4]]
    assert [r["grad_norm"] for r in loop.log_history] == pytest.approx(expected, rel=1e-5)


def test_tracker_gets_training_logs_and_the_scalar_eval_metrics_at_their_steps(tmp_path):
    args = _args(tmp_path, max_steps=4, logging_steps=2, eval_steps=2)
    logged = []

    def eval_fn(model):
        return {
            "score": torch.tensor(0.25),
            "vector": torch.tensor([1.0, 2.0]),
            "flag": True,
            "name": "dev",
            "count": 3,
        }

    loop = TrainLoop(args, _model(), _stream(), toy.classification_step(), eval_fn=eval_fn)
    loop.accelerator.log = lambda values, step=None: logged.append((step, dict(values)))
    summary = loop.run()
    evaluations = [(step, values) for step, values in logged if "score" in values]
    assert evaluations == [(2, {"score": 0.25, "count": 3}), (4, {"score": 0.25, "count": 3})]
    training = [(step, set(values)) for step, values in logged if "loss" in values]
    keys = {"loss", "accuracy", "grad_norm", "lr", "clips_per_second", "epoch"}
    assert training == [(2, keys), (4, keys)]
    first = loop.eval_history[0]
    assert first["step"] == 2 and type(first["score"]) is float and first["score"] == 0.25
    assert torch.equal(first["vector"], torch.tensor([1.0, 2.0]))
    assert (first["flag"], first["name"], first["count"]) == (True, "dev", 3)
    assert len(loop.eval_history) == 2  # the evaluation at the last step is not repeated
    assert summary["score"] == 0.25 and summary["name"] == "dev"


def test_the_tracker_is_started_with_the_project_name_and_the_run_arguments(tmp_path):
    args = _args(tmp_path, max_steps=1, log_with="tensorboard", project_name="toy-project")
    loop = TrainLoop(args, _model(), _stream(), toy.classification_step())
    started = []
    loop.accelerator.init_trackers = lambda name, config=None, **kwargs: started.append((name, config))
    loop.run()
    assert started == [("toy-project", args.to_sanitized_dict())]


def test_only_an_export_or_a_model_copy_of_a_sharded_model_is_refused(tmp_path, monkeypatch):
    """Under FSDP an export would see one rank's shards: refused before the first step, and so is a model copy
    in extra_state at construction; without either a sharded run trains. FSDP itself needs two processes, so
    the check's answer is stood in for."""
    monkeypatch.setattr(loop_module, "shards_parameters", lambda accelerator: True)
    monkeypatch.setattr(checkpoint_module, "shards_parameters", lambda accelerator: True)
    loop = TrainLoop(_args(tmp_path, max_steps=1), _model(), _stream(), toy.classification_step())
    assert loop.run()["global_step"] == 1
    # A copy of the model in extra_state (an EMA teacher) could not follow the shards either.
    with pytest.raises(NotImplementedError, match=r"extra_state\['ema'\] \(Linear\) holds a copy of a model"):
        TrainLoop(
            _args(tmp_path),
            _model(),
            _stream(),
            toy.classification_step(),
            extra_state={"ema": nn.Linear(2, 2)},
        )
    args = _args(tmp_path, output_dir=str(tmp_path / "export"), max_steps=1)
    loop = TrainLoop(args, _model(), _stream(), toy.classification_step())
    loop.export_fn = copy.deepcopy
    with pytest.raises(NotImplementedError, match=r"export_fn \(e.g. a LoRA merge .* parameters are sharded"):
        loop.run()
    assert loop.global_step == 0


def test_a_failing_or_malformed_evaluation_leaves_the_model_training(tmp_path):
    def broken(model):
        raise KeyError("no dev split")

    loop = TrainLoop(
        _args(tmp_path, max_steps=2, eval_steps=1), _model(), _stream(), toy.classification_step()
    )
    loop.eval_fn = broken
    with pytest.raises(KeyError, match="no dev split"):
        loop.run()
    assert loop.prepared_model.training and loop.model.training

    loop = TrainLoop(
        _args(tmp_path, output_dir=str(tmp_path / "b"), max_steps=2, eval_steps=1),
        _model(),
        _stream(),
        toy.classification_step(),
        eval_fn=lambda model: [0.5],
    )
    with pytest.raises(TypeError, match="dict of metrics, got list"):
        loop.run()
    assert loop.model.training


def test_eval_steps_without_eval_fn_and_an_end_on_an_eval_step_evaluate_as_asked(tmp_path):
    # eval_steps with no eval_fn: nothing to call, the run completes.
    summary = TrainLoop(
        _args(tmp_path, max_steps=2, eval_steps=1), _model(), _stream(), toy.classification_step()
    ).run()
    assert summary["global_step"] == 2 and "eval_score" not in summary
    # No eval_steps: evaluated once, at the end.
    steps = []
    holder = {}
    loop = TrainLoop(
        _args(tmp_path, output_dir=str(tmp_path / "b"), max_steps=3),
        _model(),
        _stream(),
        toy.classification_step(),
        eval_fn=lambda model: steps.append(holder["loop"].global_step) or {"x": 1.0},
    )
    holder["loop"] = loop
    loop.run()
    assert steps == [3]


def test_each_epoch_boundary_moves_to_the_next_epoch_and_the_runtime_is_the_runs(tmp_path):
    # 8 clips in batches of 4: 2 steps an epoch, so 5 steps run through epochs 0, 1 and 2.
    stream = _stream(num_examples=8)
    loop = TrainLoop(_args(tmp_path, max_steps=5), _model(), stream, toy.classification_step())
    start = time.perf_counter()
    summary = loop.run()
    total = time.perf_counter() - start
    assert stream.set_epoch_calls == [0, 1, 2] and loop.epoch == summary["epoch"] == 2
    assert 0 < summary["train_runtime"] <= total


# ------------------------------------------------------------------------------------------------ resume


def test_resume_from_a_checkpoint_at_the_end_of_an_epoch_reproduces_the_uninterrupted_run(tmp_path):
    """The checkpoint at step 4 holds a stream that has handed out its whole epoch 0: the resumed run must
    move on to epoch 1 (not call the exhausted epoch empty) and train exactly as the uninterrupted run."""

    def run(output_dir, step_fn, resume=None):
        args = _args(
            tmp_path,
            output_dir=str(output_dir),
            max_steps=6,
            gradient_accumulation_steps=3,
            checkpointing_steps=4,
            resume_from_checkpoint=resume,
            eval_on_start=True,
        )
        stream = _stream()
        evals = []
        loop = TrainLoop(args, _model(), stream, step_fn, eval_fn=lambda model: evals.append(1) or {"e": 1.0})
        return loop, stream, evals, loop.run()

    reference = {}
    loop_a, _, _, _ = run(tmp_path / "a", toy.classification_step(reference))
    with pytest.raises(toy.Crash):
        run(tmp_path / "b", toy.crashing_step(toy.classification_step(), after_calls=4 * 3))
    state = json.loads((tmp_path / "b" / "checkpoints" / "step_4" / "trainer_state.json").read_text())
    assert state["ranks"] == [{"epoch": 0, "data": {"epoch": 0, "examples_consumed": 48}}]

    resumed = {}
    loop_b, stream_b, evals_b, summary = run(
        tmp_path / "b", toy.classification_step(resumed), resume="latest"
    )
    assert summary["resumed_from_checkpoint"].endswith("step_4") and summary["global_step"] == 6
    assert stream_b.set_epoch_calls == [1] and loop_b.epoch == 1
    assert resumed["losses"] == reference["losses"][12:]
    assert resumed["indices"] == reference["indices"][12 * 4 :]
    _assert_same_weights(loop_a, loop_b)
    assert len(evals_b) == 1  # only the final evaluation: no step-0 baseline when resuming
    assert [row["step"] for row in loop_b.eval_history] == [0, 6]  # the baseline came back with step 4
    assert summary["train_clips"] == 2 * 3 * 4  # clips of this invocation only


def test_a_fresh_run_over_an_earlier_runs_checkpoints_names_the_latest_and_the_two_ways_out(tmp_path):
    args = _args(tmp_path, max_steps=1)
    root = Path(args.output_dir) / "checkpoints"
    for step in (2, 9, 10):  # numeric order: step_10 is the latest, step_9 the one before
        (root / f"step_{step}").mkdir(parents=True)
        (root / f"step_{step}" / "trainer_state.json").write_text("{}")
    loop = TrainLoop(args, _model(), _stream(), toy.classification_step())
    advice = (
        r"earlier run \(step_10\); pass resume_from_checkpoint='latest' to continue it, "
        r"overwrite_output_dir=True to discard them"
    )
    with pytest.raises(ValueError, match=advice):
        loop.run()
    assert loop.global_step == 0 and sorted(p.name for p in root.iterdir()) == ["step_10", "step_2", "step_9"]


# ----------------------------------------------------------------------------------------- optimizer


def test_param_groups_fn_builds_adamw_with_the_arguments_hyper_parameters(tmp_path):
    args = _args(
        tmp_path,
        learning_rate=0.02,
        warmup_steps=0,
        weight_decay=0.3,
        adam_beta1=0.8,
        adam_beta2=0.95,
        adam_epsilon=1e-3,
    )
    model = _model()
    given = []

    def param_groups_fn(m):  # the groups of the model it is given
        given.append(m)
        head = list(m.head.parameters())
        rest = [p for n, p in m.named_parameters() if not n.startswith("head.")]
        return [{"params": rest, "lr_scale": 0.5}, {"params": head, "weight_decay": 0.0}]

    loop = TrainLoop(args, model, _stream(), toy.classification_step(), param_groups_fn=param_groups_fn)
    assert len(given) == 1 and given[0] is model
    optimizer = loop.optimizer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.02])
    assert [g["weight_decay"] for g in groups] == [0.3, 0.0]
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-3 for g in groups)
    with pytest.raises(ValueError, match="AdamW only"):
        TrainLoop(
            _args(tmp_path, optimizer="scaled_adam", max_grad_norm=None),
            _model(),
            _stream(),
            toy.classification_step(),
            param_groups_fn=lambda m: [{"params": list(m.parameters())}],
        )
    # The factories get the model, the optimizer built and the run's arguments.
    calls = []

    def optimizer_fn(m, a):
        calls.append((m, a))
        return _sgd(m, a)

    def scheduler_fn(o, a):
        calls.append((o, a))
        return _constant(o, a)

    model = _model()
    loop = TrainLoop(
        args,
        model,
        _stream(),
        toy.classification_step(),
        optimizer_fn=optimizer_fn,
        scheduler_fn=scheduler_fn,
    )
    assert [(type(x).__name__, a is args) for x, a in calls] == [("ToyModel", True), ("SGD", True)]
    assert calls[0][0] is model and calls[1][0] is loop.optimizer.optimizer


def test_mixed_precision_from_the_arguments_runs_the_step_under_autocast(tmp_path):
    seen = []
    base = toy.classification_step()

    def step_fn(model, batch):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return base(model, batch)

    args = _args(tmp_path, max_steps=1, mixed_precision="bf16")
    summary = TrainLoop(args, _model(), _stream(), step_fn).run()
    assert seen == [(True, torch.bfloat16)] and summary["mixed_precision"] == "bf16"


def test_constructor_rejects_what_is_not_a_loop_input(tmp_path):
    args = _args(tmp_path)
    step = toy.classification_step()
    with pytest.raises(TypeError, match="TrainingArguments, got dict"):
        TrainLoop({}, _model(), _stream(), step)
    with pytest.raises(TypeError, match="torch.nn.Module, got function"):
        TrainLoop(args, lambda x: x, _stream(), step)
    with pytest.raises(TypeError, match=r"lacks \['set_epoch', 'state_dict', 'load_state_dict'\]"):
        TrainLoop(args, _model(), [1, 2], step)
    with pytest.raises(TypeError, match="step_fn must be callable"):
        TrainLoop(args, _model(), _stream(), None)
    with pytest.raises(TypeError, match="eval_fn must be callable"):
        TrainLoop(args, _model(), _stream(), step, eval_fn=3)
    with pytest.raises(TypeError, match="optimizer_fn must be callable, got int"):
        TrainLoop(args, _model(), _stream(), step, optimizer_fn=1)
    with pytest.raises(TypeError, match="scheduler_fn must be callable, got str"):
        TrainLoop(args, _model(), _stream(), step, scheduler_fn="cosine")
    other = nn.Linear(2, 2)  # a weight and a bias
    with pytest.raises(ValueError, match=r"holds 2 tensor\(s\) that are not parameters"):
        TrainLoop(
            args, _model(), _stream(), step, optimizer_fn=lambda m, a: torch.optim.SGD(other.parameters())
        )
    with pytest.raises(TypeError, match="must return a torch.optim.Optimizer, got list"):
        TrainLoop(args, _model(), _stream(), step, optimizer_fn=lambda m, a: list(m.parameters()))
    with pytest.raises(TypeError, match="LRScheduler, got dict"):
        TrainLoop(args, _model(), _stream(), step, scheduler_fn=lambda o, a: {})


def test_step_output_checks(tmp_path):
    def run(step_fn, name):
        return TrainLoop(
            _args(tmp_path, output_dir=str(tmp_path / name), max_steps=1), _model(), _stream(), step_fn
        ).run()

    with pytest.raises(
        TypeError, match="scalar float tensor, got a tensor of shape \\(\\) and dtype torch.int64"
    ):
        run(lambda model, batch: (torch.tensor(1), {}), "int")
    with pytest.raises(TypeError, match="scalar float tensor, got float"):
        run(lambda model, batch: (1.0, {}), "float")
    with pytest.raises(ValueError, match="does not require grad"):
        run(lambda model, batch: (torch.tensor(1.0), {}), "nograd")
    with pytest.raises(TypeError, match="dict of name -> number, got list"):
        run(lambda model, batch: (model(batch["waveforms"]).sum(), [1.0]), "logs")
    with pytest.raises(TypeError, match=r"\(loss, logs\), got tuple"):
        run(lambda model, batch: (model(batch["waveforms"]).sum(),), "one")


def test_clips_per_second_counts_the_window_clips_over_its_training_time(tmp_path):
    # Each micro-step sleeps 20 ms, so a window of n micro-steps of 4 clips runs at most 4 / 0.02 clips/s;
    # and its time is at most the whole run's.
    base = toy.classification_step()

    def slow_step(model, batch):
        time.sleep(0.02)
        return base(model, batch)

    args = _args(tmp_path, max_steps=4, logging_steps=2, gradient_accumulation_steps=2)
    loop = TrainLoop(args, _model(), _stream(), slow_step)
    start = time.perf_counter()
    loop.run()
    total = time.perf_counter() - start
    for row in loop.log_history:
        assert 2 * 2 * 4 / total <= row["clips_per_second"] <= 4 / 0.02


def test_the_window_throughput_leaves_out_the_evaluation_inside_it(tmp_path):
    """Each evaluation sleeps 1 s; the one at step 1 falls inside the window logged at step 2, the one at
    step 2 after that log. Training time only: the window's time is at most the run's less both sleeps."""

    def eval_fn(model):
        time.sleep(1.0)
        return {"x": 1.0}

    args = _args(tmp_path, max_steps=2, logging_steps=2, eval_steps=1)
    loop = TrainLoop(args, _model(), _stream(), toy.classification_step(), eval_fn=eval_fn)
    start = time.perf_counter()
    loop.run()
    total = time.perf_counter() - start
    (row,) = loop.log_history
    assert [e["step"] for e in loop.eval_history] == [1, 2]
    assert row["clips_per_second"] >= 2 * 4 / (total - 2.0)


# ---------------------------------------------------------------------------------------- final save


def test_a_plain_module_is_saved_as_safetensors_and_an_export_replaces_the_saved_model(tmp_path):
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)

        def forward(self, inputs):
            return self.head(inputs)

    set_seed(0)
    plain = Plain()
    args = _args(tmp_path, max_steps=2)
    loop = TrainLoop(args, plain, _stream(), toy.classification_step())
    loop.training_command = "python my_script.py --x 1"
    summary = loop.run()
    out = Path(args.output_dir)
    saved = load_file(out / "model.safetensors")
    assert set(saved) == {"head.weight", "head.bias"}
    for name, tensor in plain.state_dict().items():
        assert torch.equal(saved[name], tensor), name
    assert not (out / "config.json").exists()
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == summary["global_step"] == 2
    assert results["training_command"] == summary["training_command"] == "python my_script.py --x 1"

    def export(model):
        exported = copy.deepcopy(model)
        with torch.no_grad():
            exported.head.weight.zero_()
        return exported

    args = _args(tmp_path, output_dir=str(tmp_path / "exported"), max_steps=2)
    loop = TrainLoop(args, _model(), _stream(), toy.classification_step())
    loop.export_fn = export
    loop.run()
    reloaded = toy.ToyModel.from_pretrained(tmp_path / "exported")
    assert torch.count_nonzero(reloaded.head.weight) == 0
    assert torch.equal(reloaded.head.bias, loop.model.head.bias)
    assert torch.count_nonzero(loop.model.head.weight) > 0  # loop.model is the trained model


# --------------------------------------------------------------------------------------------- helpers


def test_model_file_pattern_matches_exactly_the_files_of_a_saved_model():
    model_files = [
        "model.safetensors",
        "model.bin",
        "pytorch_model.bin",
        "pytorch_model.safetensors",
        "model-00001-of-00002.safetensors",
        "pytorch_model-00002-of-00002.bin",
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
        "adapter_model.safetensors",
        "adapter_model.bin",
        "config.json",
        "adapter_config.json",
    ]
    other_files = [
        "preprocessor_config.json",
        "generation_config.json",
        "train_results.json",
        "eval_results.json",
        "README.md",
        "model.safetensors.tmp",
        "my_model.safetensors",
        "model-1-of-2.safetensors",
        "model.pt",
        "adapter_model.pt",
        "config.json.bak",
        "xconfig.json",
        "model.index.json",
    ]
    assert [name for name in model_files if not _MODEL_FILE.match(name)] == []
    assert [name for name in other_files if _MODEL_FILE.match(name)] == []


def test_batch_size_of_audio_batches_tuples_and_batches_without_tensors():
    assert _batch_size({"waveforms": torch.zeros(5, 100), "labels": torch.zeros(7)}) == 5
    # The clips are the waveforms' rows even when another tensor comes first (accelerate takes the first).
    assert _batch_size({"labels": torch.zeros(7), "waveforms": torch.zeros(5, 100)}) == 5
    assert _batch_size({"input_values": torch.zeros(3, 10)}) == 3  # no waveforms: found by accelerate
    assert _batch_size({"labels": torch.zeros(6), "waveforms": [1, 2]}) == 6  # waveforms not a tensor
    assert _batch_size((torch.zeros(2, 4), torch.zeros(2))) == 2
    assert _batch_size({"names": ["a", "b"]}) == 0


def test_launch_command_masks_every_secret_spelling_and_names_the_launcher():
    argv = ["train.py", "--HUB_TOKEN", "a", "--db_password=b", "--client_secret", "c", "--wandb_api_key", "d"]
    assert launch_command(argv, {}) == (
        "python train.py --HUB_TOKEN '<redacted>' '--db_password=<redacted>' --client_secret '<redacted>' "
        "--wandb_api_key '<redacted>'"
    )
    # A word of the name, not a substring: a tokenizer is not a credential (experiments compare the command).
    assert launch_command(
        ["train.py", "--tokenizer", "corpus", "--tokenizer_vocab_size", "9", "--db-passwd", "x"], {}
    ) == ("python train.py --tokenizer corpus --tokenizer_vocab_size 9 --db-passwd '<redacted>'")
    # An API key in the hyphenated spelling: neither "api" nor "key" is a secret word on its own.
    assert launch_command(["train.py", "--wandb-api-key", "k", "--cache-key", "c"], {}) == (
        "python train.py --wandb-api-key '<redacted>' --cache-key c"
    )
    # A value that merely looks like an option name, and positional words, are kept.
    assert (
        launch_command(["train.py", "token", "--name", "my-token"], {})
        == "python train.py token --name my-token"
    )
    # One process: no --num_processes; mixed precision "no" is not repeated.
    env = {"ACCELERATE_MIXED_PRECISION": "no", "WORLD_SIZE": "1"}
    assert launch_command(["train.py"], env) == "accelerate launch train.py"
    assert launch_command(["train.py"], {"ACCELERATE_DYNAMO_BACKEND": "no", "WORLD_SIZE": ""}) == (
        "accelerate launch train.py"
    )
    assert launch_command(["train.py"], {"ACCELERATE_USE_CPU": "1", "WORLD_SIZE": "2"}) == (
        "accelerate launch --num_processes 2 train.py"
    )
    assert launch_command(["train.py"], {"ACCELERATE_MIXED_PRECISION": "bf16"}) == (
        "accelerate launch --mixed_precision bf16 train.py"
    )
    assert launch_command(["-c", "--x"], {}) == "python -c '<code>' --x"
    assert launch_command([""], {}) == "python -c '<code>'"
    assert launch_command([], {}) == ""


def test_recipe_name_and_the_default_training_command(monkeypatch):
    monkeypatch.setattr(loop_module.sys, "argv", ["recipes/finetune.py", "--hub_token", "x"])
    assert loop_module._recipe_name() == "finetune"
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert launch_command() == "python recipes/finetune.py --hub_token '<redacted>'"
    monkeypatch.setattr(loop_module.sys, "argv", ["/venv/bin/hf-audiorep", "tag"])
    assert loop_module._recipe_name() is None
    monkeypatch.setattr(loop_module.sys, "argv", [])
    assert loop_module._recipe_name() is None
