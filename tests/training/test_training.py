"""The shared training loop: parameter groups, schedules, EMA, checkpoints, exact resume, and a real
2-process (gloo) run. The toy model and the AudioStream stand-in live in tests/scripts/ddp_train_script.py."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from recipe_utils import launch_env
from safetensors.torch import load_file
from torch import nn
from toy_training import fresh_accelerate_state, toy  # noqa: F401  (fresh_accelerate_state: autouse)
from transformers import HfArgumentParser, Wav2Vec2FeatureExtractor, set_seed

from hf_audiorep.training import (
    ModelEMA,
    TrainingArguments,
    TrainLoop,
    build_param_groups,
    build_scheduler,
    default_layer_id,
    find_latest_checkpoint,
    list_checkpoints,
    rotate_checkpoints,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_train_script.py"


def _args(tmp_path, **overrides) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=6,
        learning_rate=1e-2,
        min_learning_rate=1e-4,
        warmup_steps=2,
        logging_steps=2,
        checkpointing_steps=None,
        cpu=True,
        disable_progress_bar=True,
    )
    defaults.update(overrides)
    return TrainingArguments(**defaults)


def _loop(args, step_fn=None, num_examples=48, batch_size=4, **kwargs):
    set_seed(0)
    model = toy.ToyModel(toy.ToyConfig())
    features, labels = toy.synthetic_data(num_examples)
    stream = toy.SyntheticStream(features, labels, batch_size=batch_size, seed=1)
    return TrainLoop(args, model, stream, step_fn or toy.classification_step(), **kwargs)


# ------------------------------------------------------------------------------------------ optimizer groups


def test_default_layer_id_parses_transformers_and_timm_names():
    assert default_layer_id("encoder.layers.3.attention.q_proj.weight", 12) == 4
    assert default_layer_id("blocks.0.mlp.fc1.weight", 12) == 1
    assert default_layer_id("audio_spectrogram_transformer.encoder.layer.11.output.dense.bias", 12) == 12
    assert default_layer_id("patch_embed.proj.weight", 12) == 0
    assert default_layer_id("cls_token", 12) == 0
    assert default_layer_id("model.embeddings.position_embeddings", 12) == 0
    assert default_layer_id("head.weight", 12) == 13
    assert default_layer_id("fc_norm.weight", 12) == 13


def test_param_groups_exempt_biases_and_norms_and_scale_lr_per_layer():
    model = toy.ToyModel(toy.ToyConfig(num_hidden_layers=2))
    groups = build_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    group_of = {id(p): g for g in groups for p in g["params"]}
    expected_layer = {"embeddings": 0, "layers.0": 1, "layers.1": 2, "final_norm": 3, "head": 3}
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        no_decay = name.endswith(".bias") or ".norm." in name or name.startswith("final_norm")
        assert group["weight_decay"] == (0.0 if no_decay else 0.05), name
        layer = next(v for k, v in expected_layer.items() if name.startswith(k))
        assert group["layer_id"] == layer, name
        assert group["lr_scale"] == pytest.approx(0.5 ** (2 + 1 - layer)), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_param_groups_without_layer_decay_skip_frozen_and_honour_no_weight_decay():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.proj = nn.Linear(8, 8)
            self.frozen = nn.Linear(8, 8).requires_grad_(False)

        def no_weight_decay(self):
            return {"pos_embed"}

    net = Net()
    groups = build_param_groups(net, weight_decay=0.1)
    decays = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert decays == {id(net.pos_embed): 0.0, id(net.proj.weight): 0.1, id(net.proj.bias): 0.0}
    assert all(g["lr_scale"] == 1.0 for g in groups)
    with pytest.raises(ValueError, match="num_layers"):
        build_param_groups(net, weight_decay=0.1, layer_decay=0.5)


def test_warmup_then_cosine_to_min_lr_keeps_layer_ratios():
    head, embed = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [head], "lr": 1.0}, {"params": [embed], "lr": 0.25}])
    scheduler = build_scheduler(
        optimizer, max_steps=14, warmup_steps=4, learning_rate=1.0, min_learning_rate=0.1
    )
    lrs = [scheduler.get_last_lr()]
    for _ in range(14):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr())
    expected = {0: 0.0, 2: 0.5, 4: 1.0, 9: 0.1 + 0.9 * 0.5, 14: 0.1}
    for step, value in expected.items():
        assert lrs[step][0] == pytest.approx(value), step
        assert lrs[step][1] == pytest.approx(0.25 * value), step
    assert lrs[6][0] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))


@pytest.mark.parametrize("schedule, at_step_7", [("linear", 0.1 + 0.9 * 0.5), ("constant", 1.0)])
def test_linear_and_constant_schedules(schedule, at_step_7):
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = build_scheduler(optimizer, 12, warmup_steps=2, schedule=schedule, min_learning_rate=0.1)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(at_step_7)


# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "field, value",
    [
        ("max_steps", 0),
        ("learning_rate", 0.0),
        ("layer_decay", 1.5),
        ("layer_decay", 0.0),
        ("lr_scheduler", "exponential"),
        ("gradient_accumulation_steps", 0),
        ("min_learning_rate", 1.0),
        ("save_total_limit", 0),
        ("max_grad_norm", -1.0),
        ("mixed_precision", "fp32"),
        ("warmup_ratio", 1.5),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainingArguments(**{field: value})


def test_arguments_parse_from_the_command_line():
    (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
        [
            "--max_steps",
            "5",
            "--cpu",
            "true",
            "--eval_steps",
            "3",
            "--adam_beta2",
            "0.98",
            "--max_grad_norm",
            "0",
        ]
    )
    assert (args.max_steps, args.cpu, args.eval_steps, args.adam_betas) == (5, True, 3, (0.9, 0.98))
    assert args.max_grad_norm is None and args.mixed_precision is None  # 0 = no clipping
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainingArguments(warmup_steps=10, warmup_ratio=0.1)


# --------------------------------------------------------------------------------------------------- EMA


def test_ema_ramps_decay_and_round_trips_its_state():
    model = nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.5, end_decay=0.9, ramp_steps=4)
    assert [ema.decay_at(s) for s in (0, 2, 4, 10)] == pytest.approx([0.5, 0.7, 0.9, 0.9])
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert ema.update(model) == 0.5
    torch.testing.assert_close(ema.module.weight, start + 0.5)  # halfway toward the moved weights
    cosine = ModelEMA(model, decay=0.5, end_decay=0.9, ramp_steps=4, ramp="cosine")
    assert cosine.decay_at(2) == pytest.approx(0.7)
    assert cosine.decay_at(1) == pytest.approx(0.9 - 0.4 * 0.5 * (1 + math.cos(math.pi / 4)))
    restored = ModelEMA(nn.Linear(3, 2), decay=0.5, end_decay=0.9, ramp_steps=4)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 1 and torch.equal(restored.module.weight, ema.module.weight)
    with pytest.raises(ValueError, match="ramp_steps"):
        ModelEMA(model, decay=0.5, end_decay=0.9)


# -------------------------------------------------------------------------------------- resume and disk


def _resume_args(tmp_path, output_dir, resume=None) -> TrainingArguments:
    """12 steps of 2 accumulated batches with a checkpoint every 4: a crash at step 8 is mid-epoch."""
    return _args(
        tmp_path,
        output_dir=str(output_dir),
        max_steps=12,
        gradient_accumulation_steps=2,
        checkpointing_steps=4,
        save_total_limit=None,
        resume_from_checkpoint=resume,
    )


def _assert_same_weights(loop_a, loop_b) -> None:
    for (name, a), b in zip(
        loop_a.model.state_dict().items(), loop_b.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path):
    # 48 clips / batch 4 = 12 batches per epoch, 2 batches per step: 6 steps per epoch, so the crash at
    # step 8 is in the middle of epoch 1 and dropout draws must come back from the checkpoint.
    def run(output_dir, step_fn, resume=None):
        args = _resume_args(tmp_path, output_dir, resume)
        args.eval_steps = 4  # evaluations at 4 and 8 live in the checkpoint, the one at 12 after resuming
        set_seed(0)
        model = toy.ToyModel(toy.ToyConfig())
        ema = ModelEMA(model, decay=0.5, end_decay=0.9, ramp_steps=6)
        stream = toy.SyntheticStream(*toy.synthetic_data(48), batch_size=4, seed=1)
        loop = TrainLoop(
            args,
            model,
            stream,
            step_fn,
            extra_state={"ema": ema},
            on_optimizer_step=[lambda model, step: ema.update(model)],
            eval_fn=lambda model: {"head_sum": float(model.head.weight.detach().sum())},
        )
        return loop, ema, loop.run()

    reference = {}
    loop_a, ema_a, summary_a = run(tmp_path / "a", toy.classification_step(reference))
    assert [row["step"] for row in loop_a.eval_history] == [4, 8, 12]

    with pytest.raises(toy.Crash):
        run(tmp_path / "b", toy.crashing_step(toy.classification_step(), after_calls=8 * 2))
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["step_4", "step_8"]
    state = json.loads((tmp_path / "b" / "checkpoints" / "step_8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["ranks"] == [
        {"epoch": 1, "data": {"epoch": 1, "examples_consumed": 16}}
    ]

    resumed = {}
    loop_b, ema_b, summary = run(tmp_path / "b", toy.classification_step(resumed), resume="latest")
    assert summary["resumed_from_checkpoint"].endswith("step_8") and summary["global_step"] == 12
    assert loop_b.eval_history == loop_a.eval_history  # the evaluations before the crash come back too
    assert state["epoch"] == 1  # step 8 of 6-step epochs
    assert resumed["losses"] == reference["losses"][16:]
    assert resumed["indices"] == reference["indices"][16 * 4 :]
    # train_loss is the whole run's mean, the 16 micro-steps before the crash included
    assert state["train_loss_totals"]["micro_steps"] == 16
    assert summary["train_loss"] == pytest.approx(summary_a["train_loss"], rel=1e-6)
    assert summary["train_loss"] != pytest.approx(sum(resumed["losses"]) / len(resumed["losses"]), rel=1e-3)
    _assert_same_weights(loop_a, loop_b)
    assert torch.equal(ema_a.module.head.weight, ema_b.module.head.weight) and ema_b.num_updates == 12
    assert loop_a.optimizer.param_groups[0]["lr"] == loop_b.optimizer.param_groups[0]["lr"]
    # Checkpoints hold only safetensors for tensors of our own, and JSON.
    step_8 = tmp_path / "b" / "checkpoints" / "step_8"
    assert set(load_file(step_8 / "extra_ema.safetensors")) >= {"module.head.weight"}
    assert json.loads((step_8 / "extra_ema.json").read_text()) == {"num_updates": 8}


def _adam_and_step_lr():
    """``optimizer_fn`` / ``scheduler_fn`` hooks (Adam, lr halved every 3 steps) that keep what they built."""
    made = {}

    def optimizer_fn(model, args):
        made["optimizer"] = torch.optim.Adam(model.parameters(), lr=args.learning_rate, betas=(0.8, 0.99))
        return made["optimizer"]

    def scheduler_fn(optimizer, args):
        made["scheduler"] = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return made["scheduler"]

    return made, optimizer_fn, scheduler_fn


def test_optimizer_and_scheduler_hooks_train_and_resume_exactly(tmp_path):
    # As the resume test above, with Adam + StepLR from the hooks instead of the default AdamW + cosine.
    def run(output_dir, step_fn, resume=None):
        args = _resume_args(tmp_path, output_dir, resume)
        made, optimizer_fn, scheduler_fn = _adam_and_step_lr()
        loop = _loop(args, step_fn, optimizer_fn=optimizer_fn, scheduler_fn=scheduler_fn)
        return loop, made, loop.run()

    reference = {}
    loop_a, made_a, _ = run(tmp_path / "a", toy.classification_step(reference))
    # The loop trains with the objects the hooks built (accelerate only wraps them).
    assert type(made_a["optimizer"]) is torch.optim.Adam and loop_a.optimizer.optimizer is made_a["optimizer"]
    assert loop_a.scheduler.scheduler is made_a["scheduler"]
    assert made_a["optimizer"].param_groups[0]["betas"] == (0.8, 0.99)
    # StepLR, stepped once per optimizer step: 12 steps halve the rate 4 times (no warmup, no cosine).
    assert made_a["scheduler"].last_epoch == 12
    assert made_a["optimizer"].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**4)
    losses = reference["losses"]
    assert sum(losses[-6:]) / 6 < sum(losses[:6]) / 6  # it learns

    with pytest.raises(toy.Crash):
        run(tmp_path / "b", toy.crashing_step(toy.classification_step(), after_calls=8 * 2))
    resumed = {}
    loop_b, made_b, summary = run(tmp_path / "b", toy.classification_step(resumed), resume="latest")
    assert summary["resumed_from_checkpoint"].endswith("step_8") and summary["global_step"] == 12
    assert resumed["losses"] == reference["losses"][16:]
    _assert_same_weights(loop_a, loop_b)
    # Adam's moments and step counts and the schedule's position came back from the checkpoint.
    state_a, state_b = made_a["optimizer"].state_dict(), made_b["optimizer"].state_dict()
    assert state_a["param_groups"] == state_b["param_groups"]
    for key, moments in state_a["state"].items():
        for field, value in moments.items():
            assert torch.equal(value, state_b["state"][key][field]), (key, field)
    assert made_a["scheduler"].state_dict() == made_b["scheduler"].state_dict()


def test_optimizer_and_scheduler_hooks_reject_what_would_not_train_or_resume(tmp_path):
    args = _args(tmp_path)
    made, optimizer_fn, scheduler_fn = _adam_and_step_lr()
    with pytest.raises(ValueError, match="param_groups_fn"):
        _loop(args, optimizer_fn=optimizer_fn, param_groups_fn=lambda model: [])
    other = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="not parameters of the model"):
        _loop(args, optimizer_fn=lambda model, args: torch.optim.Adam(other.parameters()))
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        _loop(args, optimizer_fn=lambda model, args: [p for p in model.parameters()])
    with pytest.raises(ValueError, match="optimizer it was given"):
        _loop(
            args,
            scheduler_fn=lambda optimizer, args: torch.optim.lr_scheduler.StepLR(
                torch.optim.SGD(other.parameters(), lr=0.1), step_size=1
            ),
        )
    with pytest.raises(TypeError, match="ReduceLROnPlateau"):
        _loop(args, scheduler_fn=lambda opt, args: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    # The default schedule also runs on a custom optimizer: warmup to args.learning_rate, then cosine.
    loop = _loop(args, optimizer_fn=optimizer_fn)
    loop.run()
    assert made["optimizer"].param_groups[0]["lr"] == pytest.approx(args.min_learning_rate)


def test_latest_ignores_unfinished_saves_and_rotation_keeps_the_limit(tmp_path):
    args = _args(tmp_path, max_steps=6, checkpointing_steps=2, save_total_limit=2)
    _loop(args).run()
    root = Path(args.output_dir) / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_4", "step_6"]
    # A crash while saving step 99 leaves a temp dir; a step dir without trainer_state.json is incomplete.
    (root / ".tmp-step_99").mkdir()
    (root / ".tmp-step_99" / "model.safetensors").write_bytes(b"truncated")
    (root / "step_50").mkdir()
    assert find_latest_checkpoint(root).name == "step_6"

    summary = _loop(
        _args(tmp_path, max_steps=8, checkpointing_steps=2, resume_from_checkpoint="latest")
    ).run()
    assert summary["resumed_from_checkpoint"].endswith("step_6") and summary["global_step"] == 8
    assert [p.name for p in list_checkpoints(root)] == ["step_6", "step_8"]

    # A fresh (not resuming) run must not mix its checkpoints with these.
    with pytest.raises(ValueError, match="earlier run"):
        _loop(_args(tmp_path, max_steps=2, checkpointing_steps=2)).run()
    _loop(_args(tmp_path, max_steps=2, checkpointing_steps=2, overwrite_output_dir=True)).run()
    assert [p.name for p in list_checkpoints(root)] == ["step_2"]

    fake = tmp_path / "fake"
    for step in (2, 9, 10):
        (fake / f"step_{step}").mkdir(parents=True)
        (fake / f"step_{step}" / "trainer_state.json").write_text("{}")
    assert find_latest_checkpoint(fake).name == "step_10"  # numeric, not lexical, order
    (tmp_path / "empty").mkdir()
    assert find_latest_checkpoint(tmp_path / "empty") is None  # "latest" on a first launch: start fresh
    assert [p.name for p in rotate_checkpoints(fake, 1)] == ["step_2", "step_9"]


def test_resume_from_a_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        _loop(_args(tmp_path, resume_from_checkpoint=str(tmp_path / "nowhere"))).run()


# ------------------------------------------------------------------------------------------------ errors


def test_non_finite_loss_raises_naming_the_step(tmp_path):
    calls = {"n": 0}
    base = toy.classification_step()

    def step(model, batch):
        loss, logs = base(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), logs

    with pytest.raises(FloatingPointError, match="optimizer step 3"):
        _loop(_args(tmp_path), step).run()


def test_bad_step_fn_output_and_bad_stream_are_type_errors(tmp_path):
    with pytest.raises(TypeError, match=r"\(loss, logs\)"):
        _loop(_args(tmp_path), lambda model, batch: model(batch["waveforms"]).sum()).run()
    with pytest.raises(TypeError, match="scalar"):
        _loop(_args(tmp_path), lambda model, batch: (model(batch["waveforms"]), {})).run()
    with pytest.raises(TypeError, match="AudioStream contract"):
        TrainLoop(_args(tmp_path), toy.ToyModel(toy.ToyConfig()), [1, 2], toy.classification_step())


def test_an_empty_epoch_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no batch in epoch 0"):
        _loop(_args(tmp_path), num_examples=3, batch_size=4).run()


# --------------------------------------------------------------------------------------- outputs and logs


def test_final_save_eval_and_tensorboard_logs(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = _args(tmp_path, max_steps=4, eval_steps=2, log_with="tensorboard", project_name="toy")
    eval_steps = []

    def eval_fn(model):
        assert not model.training and isinstance(model, toy.ToyModel)
        eval_steps.append(loop.global_step)
        return {"eval_score": float(loop.global_step)}

    loop = _loop(args, eval_fn=eval_fn, feature_extractor=Wav2Vec2FeatureExtractor())
    summary = loop.run()
    out = Path(args.output_dir)
    assert eval_steps == [2, 4]  # every eval_steps, and not twice at the end
    assert summary["eval_score"] == 4.0 and summary["global_step"] == 4 and summary["world_size"] == 1
    assert json.loads((out / "train_results.json").read_text())["eval_score"] == 4.0
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    reloaded = toy.ToyModel.from_pretrained(out)
    for name, tensor in loop.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name

    assert [entry["step"] for entry in loop.log_history] == [2, 4]
    assert {"loss", "lr", "grad_norm", "clips_per_second", "accuracy"} <= set(loop.log_history[0])
    assert loop.log_history[0]["clips_per_second"] > 0
    events = EventAccumulator(str(out / "runs" / "toy")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "eval_score"} <= scalars
    assert [e.step for e in events.Scalars("loss")] == [2, 4]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([h["loss"] for h in loop.log_history])


# ------------------------------------------------------------------------------------- two real processes


def test_two_process_cpu_run_shards_data_and_resumes_exactly(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    out = tmp_path / "ddp"
    env = launch_env(tmp_path)
    command = [
        str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT),
        "--output_dir", str(out), "--cpu", "true", "--max_steps", "5", "--gradient_accumulation_steps", "2",
        "--checkpointing_steps", "2", "--crash_after_steps", "4", "--learning_rate", "0.01",
        "--logging_steps", "1", "--disable_progress_bar", "true",
    ]  # fmt: skip
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    assert [r["world_size"] for r in ranks] == [2, 2] and [r["summary_world_size"] for r in ranks] == [2, 2]
    assert {r["distributed_type"] for r in ranks} == {"DistributedType.MULTI_CPU"}
    assert sorted(r["rank"] for r in ranks) == [0, 1]
    # DDP kept the replicas identical, and the resumed run (crash after step 4) matches bit for bit.
    assert ranks[0]["params_reference"] == ranks[1]["params_reference"]
    for r in ranks:
        assert r["params_resumed"] == r["params_reference"]
        assert r["losses_resumed"] == r["losses_reference"][4 * 2 :]
        assert r["resumed_from"].endswith("step_4")
    # Epoch 0 (6 batches of 4 per rank): disjoint shards covering the 48 clips.
    first_epoch = [set(r["indices"][:24]) for r in ranks]
    assert not first_epoch[0] & first_epoch[1]
    assert first_epoch[0] | first_epoch[1] == set(range(48))


@pytest.mark.parametrize("preset", ["cat-small", "audiomae-tiny"])
def test_layer_decay_uses_the_models_own_layer_ids(preset):
    """CAT's conv stem and pre-block norm sit below block 0 (the lowest rate), and a pre-training decoder's
    `layers.N` / `blocks.N` sit with the head; a name pattern got both wrong."""
    from transformers import AutoModelForPreTraining

    import hf_audiorep

    model = AutoModelForPreTraining.from_config(hf_audiorep.config_from_preset(preset))
    groups = build_param_groups(model, weight_decay=0.05, layer_decay=0.5)
    group_of = {id(p): g for g in groups for p in g["params"]}
    top = model.config.num_hidden_layers + 1
    for name, param in model.named_parameters():
        assert group_of[id(param)]["layer_id"] == model.get_layer_id(name), name
        if name.startswith(("cat.stem.", "cat.pre_norm.", "audiomae.patch_embed.")):
            assert group_of[id(param)]["layer_id"] == 0, name
        if name.startswith("decoder."):
            assert group_of[id(param)]["layer_id"] == top, name
    lowest = min(g["lr_scale"] for g in groups)
    stem = [p for n, p in model.named_parameters() if n.startswith(("cat.stem.", "audiomae.patch_embed."))]
    assert all(group_of[id(p)]["lr_scale"] == lowest for p in stem)


def test_one_log_line_per_checkpoint(tmp_path, caplog):
    """accelerate's five INFO lines per save ("Model weights saved in ...", ...) are held back; ours stays."""
    import logging

    args = _args(tmp_path, max_steps=4, checkpointing_steps=2)
    with caplog.at_level(logging.INFO):
        _loop(args).run()
    from_accelerate = [r for r in caplog.records if r.name.startswith("accelerate") and "saved" in r.message]
    assert not from_accelerate, [r.message for r in from_accelerate]
    ours = [r for r in caplog.records if "saved checkpoint" in r.getMessage()]
    assert len(ours) == 2
    assert logging.getLogger("accelerate.checkpointing").level == logging.NOTSET  # restored afterwards


# --------------------------------------------------------------------------------- clipping, final save


def _huge_loss_step():
    """The toy classification loss times 1e6: a gradient norm in the millions."""
    base = toy.classification_step()

    def step(model, batch):
        loss, logs = base(model, batch)
        return loss * 1e6, logs

    return step


@pytest.mark.parametrize(
    "clip, expected_norm", [({"max_grad_norm": 0.5}, 0.5), ({}, 1.0), ({"max_grad_norm": None}, None)]
)
def test_max_grad_norm_clips_the_applied_update(tmp_path, clip, expected_norm):
    """One plain-SGD step moves the weights by lr x the applied gradient: lr x max_grad_norm when clipping
    (1.0 by default), lr x the whole (logged, pre-clip) norm when it is off."""
    args = _args(tmp_path, max_steps=1, logging_steps=1, learning_rate=0.1, warmup_steps=0, **clip)
    loop = _loop(
        args,
        _huge_loss_step(),
        optimizer_fn=lambda model, args: torch.optim.SGD(model.parameters(), lr=args.learning_rate),
        scheduler_fn=lambda optimizer, args: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
    )
    before = [p.detach().clone() for p in loop.model.parameters()]
    loop.run()
    moved = math.sqrt(
        sum(
            ((p.detach() - b) ** 2).sum().item() for p, b in zip(loop.model.parameters(), before, strict=True)
        )
    )
    grad_norm = loop.log_history[0]["grad_norm"]
    assert grad_norm > 1e3  # the logged norm is the one before clipping
    applied = moved / 0.1
    if expected_norm is None:
        assert applied == pytest.approx(grad_norm, rel=1e-3)
    else:
        assert applied == pytest.approx(expected_norm, rel=1e-3), (
            f"gradient of norm {grad_norm:.3g} not clipped"
        )


def test_final_save_never_leaves_a_half_written_model(tmp_path, monkeypatch):
    """The final save_pretrained is staged in output_dir/.tmp-final_model and renamed into place file by
    file, config.json last: a crash while writing it leaves the earlier model whole, and the files beside
    the model (checkpoints, eval_results.json) are kept."""
    from hf_audiorep.training import checkpoint

    args = _args(tmp_path, max_steps=2, checkpointing_steps=2)
    out = Path(args.output_dir)
    _loop(args, feature_extractor=Wav2Vec2FeatureExtractor()).run()
    earlier = {name: (out / name).read_bytes() for name in ("model.safetensors", "config.json")}
    (out / "eval_results.json").write_text('{"test_mAP": 0.5}')

    def crash_while_writing(self, save_directory, **kwargs):
        Path(save_directory, "model.safetensors").write_bytes(earlier["model.safetensors"][:64])
        raise OSError("No space left on device")

    rerun = dict(max_steps=4, checkpointing_steps=2, resume_from_checkpoint="latest")
    with monkeypatch.context() as patch:
        patch.setattr(toy.ToyModel, "save_pretrained", crash_while_writing)
        with pytest.raises(OSError, match="No space left"):
            _loop(_args(tmp_path, **rerun), feature_extractor=Wav2Vec2FeatureExtractor()).run()
    for name, content in earlier.items():
        assert (out / name).read_bytes() == content, f"{name} was overwritten by a save that never finished"
    toy.ToyModel.from_pretrained(out)
    assert (out / ".tmp-final_model").is_dir()  # the crashed save's leftovers, out of any loader's way

    # The rerun's save replaces the leftover, renames config.json last, drops an earlier save's stale shard.
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale shard of an earlier, sharded save")
    renamed, real_replace = [], os.replace

    def recording_replace(src, dst):
        if Path(dst).parent == out:
            renamed.append(Path(dst).name)
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", recording_replace)
    loop = _loop(_args(tmp_path, **rerun), feature_extractor=Wav2Vec2FeatureExtractor())
    loop.run()
    assert renamed[-1] == "config.json" and "model.safetensors" in renamed
    assert {"preprocessor_config.json", "train_results.json"} <= set(renamed)
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith(".tmp-")] and "model-00002-of-00002.safetensors" not in names
    assert {"checkpoints", "eval_results.json"} <= names
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 4
    reloaded = toy.ToyModel.from_pretrained(out)
    for name, tensor in loop.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
