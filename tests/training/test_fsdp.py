"""FSDP (issue 18): the accelerate config files of recipes/accelerate_configs/, the loop's refusals where
parameters are sharded, and a real 2-process FSDP2 run on CPU (gloo) with sharded checkpoints, an exact
resume and an evaluation over shards of unequal lengths. The run lives in tests/scripts/fsdp_train_script.py
(see its docstring for why the script, not the library, lets accelerate's FSDP branch run on CPU)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from torch import nn

from hf_audiorep.training import ModelEMA
from hf_audiorep.training.checkpoint import check_extra_state_supported, shards_parameters

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
SCRIPT = ROOT / "tests" / "scripts" / "fsdp_train_script.py"
RUN_TIMEOUT_S = 400  # about 1.5 min on a busy 2-core machine

sys.path.insert(0, str(SCRIPT.parent))
import fsdp_train_script as fsdp_script  # noqa: E402
from recipe_utils import launch_env  # noqa: E402
from toy_training import fresh_accelerate_state  # noqa: E402, F401  (autouse: resets accelerate's state)

# ------------------------------------------------------------------------------------------- config files


def _fsdp_plugin_from(path: Path):
    """What `accelerate launch --config_file path` hands the training processes: the config is turned into
    FSDP_* environment variables, which the plugin reads."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin, prepare_multi_gpu_env

    config = load_config_from_file(str(path))
    assert config.distributed_type == DistributedType.FSDP
    args = launch_command_parser().parse_args(["--config_file", str(path), "x.py"])
    args, *_ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
    return env, plugin


def test_fsdp_config_shards_every_vit_block_with_sharded_checkpoints():
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    raw = yaml.safe_load((CONFIGS / "fsdp_vit.yaml").read_text())
    assert raw["distributed_type"] == "FSDP" and raw["mixed_precision"] == "bf16"
    env, plugin = _fsdp_plugin_from(CONFIGS / "fsdp_vit.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2's spelling of FULL_SHARD
    assert plugin.state_dict_type.name == "SHARDED_STATE_DICT"
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    # No class list in the file: the wrapped blocks come from each model's _no_split_modules.
    assert plugin.transformer_cls_names_to_wrap is None
    assert plugin.cpu_ram_efficient_loading is True


@pytest.mark.parametrize(
    ("preset", "block"),
    [
        ("audiomae-base", "PreLNBlock"),
        ("bat-base", "PreLNBlock"),
        ("cat-base", "PostLNBlock"),
        ("eat-base", "PostLNBlock"),
    ],
)
def test_fsdp_config_wraps_the_transformer_blocks_of_each_vit_base_preset(preset, block):
    """The auto-wrap policy of the config, resolved on each ViT-B model, picks exactly its blocks."""
    from transformers import AutoModelForAudioClassification

    import hf_audiorep

    _, plugin = _fsdp_plugin_from(CONFIGS / "fsdp_vit.yaml")
    config = hf_audiorep.config_from_preset(preset)
    with torch.device("meta"):  # ViT-B shapes without allocating 86 M parameters
        model = AutoModelForAudioClassification.from_config(config)
    plugin.set_auto_wrap_policy(model)
    policy = plugin.auto_wrap_policy
    wrapped = {n for n, m in model.named_modules() if policy(module=m, recurse=False, nonwrapped_numel=0)}
    blocks = {name for name, module in model.named_modules() if type(module).__name__ == block}
    # ViT-B: 768 wide, 12 blocks (CAT's multi-resolution stem stands in for the first of them)
    assert config.hidden_size == 768 and len(blocks) in (11, 12)
    assert wrapped == blocks


def test_deepspeed_zero2_config_parses():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml"))
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.mixed_precision == "bf16"
    ds = config.deepspeed_config
    assert ds["zero_stage"] == 2
    assert ds["offload_optimizer_device"] == "none" and ds["offload_param_device"] == "none"
    assert ds["gradient_clipping"] == 1.0  # DeepSpeed clips itself; accelerate would fill "auto" with 1.0


def test_deepspeed_micro_batch_size_comes_from_the_arguments():
    """accelerate takes an ``auto`` micro-batch size from a prepared dataloader, which the loop never passes:
    without a value, ``prepare`` raises under DeepSpeed. Needs the loop change of issue 18."""
    from accelerate.utils import DeepSpeedPlugin

    from hf_audiorep.training.loop import _set_deepspeed_batch_size

    def accelerator(plugin, distributed_type=DistributedType.DEEPSPEED):
        return SimpleNamespace(
            distributed_type=distributed_type, state=SimpleNamespace(deepspeed_plugin=plugin)
        )

    plugin = DeepSpeedPlugin(zero_stage=2)
    assert plugin.is_auto("train_micro_batch_size_per_gpu")
    _set_deepspeed_batch_size(accelerator(plugin, DistributedType.MULTI_GPU), 6)  # not DeepSpeed: untouched
    assert plugin.is_auto("train_micro_batch_size_per_gpu")
    _set_deepspeed_batch_size(accelerator(plugin), 6)
    assert plugin.get_value("train_micro_batch_size_per_gpu") == 6
    _set_deepspeed_batch_size(accelerator(plugin), 3)  # a value the user set is kept
    assert plugin.get_value("train_micro_batch_size_per_gpu") == 6


# -------------------------------------------------------------------------------- refusals when sharded


def _accelerator(distributed_type, zero_stage=None):
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(distributed_type=distributed_type, state=SimpleNamespace(deepspeed_plugin=plugin))


@pytest.mark.parametrize(
    ("distributed_type", "zero_stage", "sharded"),
    [
        (DistributedType.FSDP, None, True),
        (DistributedType.DEEPSPEED, 3, True),
        (DistributedType.DEEPSPEED, 2, False),
        (DistributedType.DEEPSPEED, 1, False),
        (DistributedType.MULTI_GPU, None, False),
        (DistributedType.MULTI_CPU, None, False),
        (DistributedType.NO, None, False),
    ],
)
def test_shards_parameters_only_under_fsdp_and_zero3(distributed_type, zero_stage, sharded):
    assert shards_parameters(_accelerator(distributed_type, zero_stage)) is sharded


class _Counter:
    def __init__(self):
        self.count = 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_an_ema_teacher_is_refused_when_parameters_are_sharded():
    ema = ModelEMA(nn.Linear(2, 2))
    for accelerator in (_accelerator(DistributedType.FSDP), _accelerator(DistributedType.DEEPSPEED, 3)):
        with pytest.raises(NotImplementedError, match=r"extra_state\['teacher'\] \(ModelEMA\).*ZeRO-2"):
            check_extra_state_supported(accelerator, {"counter": _Counter(), "teacher": ema})
        # A bare module kept as extra state is a model copy as well.
        with pytest.raises(NotImplementedError, match=r"extra_state\['copy'\] \(Linear\)"):
            check_extra_state_supported(accelerator, {"copy": nn.Linear(2, 2)})
        check_extra_state_supported(accelerator, {"counter": _Counter()})  # no model copy: accepted
    for accelerator in (
        _accelerator(DistributedType.MULTI_GPU),
        _accelerator(DistributedType.DEEPSPEED, 2),
        _accelerator(DistributedType.NO),
    ):
        check_extra_state_supported(accelerator, {"teacher": ema})  # whole parameters: EMA works


def test_resume_restores_a_step_boundary_after_an_interrupted_accumulation(tmp_path):
    """The process-wide GradientState is left at "no sync" by an accumulation interrupted in this process;
    under FSDP2 accelerate then loads the optimizer state into nothing (the 2-process run below covers that
    path), so a resume resets it: the next micro-step starts an accumulation afresh."""
    from accelerate import Accelerator

    from hf_audiorep.training.checkpoint import load_checkpoint, save_checkpoint

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = nn.Linear(3, 2)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=0.1))
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    path = save_checkpoint(accelerator, tmp_path, global_step=1, epoch=0, data_state={"position": 4})
    saved = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    with accelerator.accumulate(model):  # the first of two micro-steps: no sync
        assert not accelerator.sync_gradients
    restored = load_checkpoint(accelerator, path)
    assert accelerator.sync_gradients
    assert restored["data"] == {"position": 4} and restored["global_step"] == 1
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(value, saved[key]), key


# ------------------------------------------------------------------------------- the 2-process FSDP run


def _launch(out: Path, tmp_path: Path) -> None:
    accelerate = Path(sys.executable).parent / "accelerate"
    env = launch_env(tmp_path)
    command = [
        str(accelerate), "launch", "--config_file", str(CONFIGS / "fsdp_vit.yaml"), "--num_processes", "2",
        "--mixed_precision", "no", str(SCRIPT),
        "--output_dir", str(out), "--cpu", "true", "--max_steps", "4", "--gradient_accumulation_steps", "2",
        "--checkpointing_steps", "2", "--crash_after_steps", "3", "--learning_rate", "0.01",
        "--logging_steps", "1", "--disable_progress_bar", "true",
    ]  # fmt: skip
    # A hang (e.g. ranks whose forwards are out of step) must fail the test, not block it: torchrun starts
    # each rank in a session of its own, so killing the launcher leaves the ranks waiting forever (holding
    # any pipe to the test open). The output goes to files, and each rank writes its pid to kill it by.
    logs = (tmp_path / "launch.out", tmp_path / "launch.err")
    with open(logs[0], "w") as stdout, open(logs[1], "w") as stderr:
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=stdout, stderr=stderr, start_new_session=True
        )
        try:
            proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for pid_file in out.glob("pid*"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    stdout, stderr = (log.read_text() for log in logs)
    assert proc.returncode is not None and proc.returncode >= 0, (
        f"the 2-process run did not finish in {RUN_TIMEOUT_S} s\n{stdout[-3000:]}{stderr[-6000:]}"
    )
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]


@pytest.mark.slow
def test_two_process_fsdp_run_saves_shards_resumes_exactly_and_publishes_a_full_model(tmp_path):
    from transformers import AutoModelForAudioClassification

    out = tmp_path / "fsdp"
    _launch(out, tmp_path)
    trained = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    # A real FSDP2 model, sharded over the two processes.
    assert sorted(r["rank"] for r in trained) == [0, 1]
    for r in trained:
        assert r["world_size"] == 2 and r["distributed_type"] == "DistributedType.FSDP"
        assert r["fsdp_version"] == 2 and r["prepared_model_class"].startswith("FSDP")
    reference = AutoModelForAudioClassification.from_config(fsdp_script.tiny_config())
    full_sizes = {name: p.numel() for name, p in reference.named_parameters()}
    assert trained[0]["shard_numels"].keys() == full_sizes.keys()
    for name, size in full_sizes.items():
        shards = [r["shard_numels"][name] for r in trained]
        assert sum(shards) == size, name  # each rank holds its part, together the whole
    weight = "audiomae.blocks.0.mlp.fc1.weight"
    assert trained[0]["shard_numels"][weight] == trained[1]["shard_numels"][weight] == full_sizes[weight] // 2

    # Sharded gradients == the unsharded model's, from rank 0's weights on both ranks.
    for r in trained:
        check = r["gradient_check"]
        assert check["names_match"]
        assert check["max_weight_difference"] == 0.0
        assert check["max_reference_grad"] > 1e-3  # a real gradient, not all zeros
        assert check["max_grad_difference"] < 1e-6

    # EMA teachers and export_fn raise under FSDP instead of training/saving something wrong.
    for r in trained:
        assert "EMA teacher" in r["refused"]["ema"] and "sharded" in r["refused"]["ema"]
        assert "export_fn" in r["refused"]["export_fn"] and "sharded" in r["refused"]["export_fn"]

    # Checkpoints hold each rank's shard (torch.distributed.checkpoint), no gathered weights.
    step_2 = out / "b" / "checkpoints" / "step_2"
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        files = sorted(p.name for p in (step_2 / part).iterdir())
        assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"], part
    assert not (step_2 / "model.safetensors").exists()
    assert json.loads((step_2 / "trainer_state.json").read_text())["world_size"] == 2

    # Crashed in step 4's accumulation, resumed from step 2: it ends exactly where the uninterrupted run did
    # (a fresh Adam after the resume, accelerate's FSDP2 load with a stale GradientState, differs).
    for r in trained:
        assert r["resumed_from"] == str(step_2)
        assert r["losses_resumed"] == r["losses_reference"][2 * 2 :]
    params_a, params_c = trained[0]["params_reference"], trained[0]["params_resumed"]
    assert set(full_sizes) <= params_a.keys() and params_a.keys() == params_c.keys()
    for name in params_a:
        assert params_c[name] == params_a[name], name
    assert trained[1]["params_reference"] is None and trained[1]["params_resumed"] is None  # main only

    # Evaluation of the sharded model over shards of unequal batch counts (5 clips: 2 batches on rank 0, 1 on
    # rank 1; 1 clip: none on rank 1) finishes, with as many forwards on each rank, and scores every clip
    # once with the logits of the trained model evaluated whole in one process.
    from sklearn.metrics import average_precision_score

    trained_model = AutoModelForAudioClassification.from_pretrained(out / "a").eval()
    # forwards: evaluate_classifier, then collect_predictions, each as many as rank 0's batches
    for num_clips, shards, forwards in ((5, [[0, 2, 4], [1, 3]], 2 + 2), (1, [[0], []], 1 + 1)):
        evaluated = [r["evaluations"][str(num_clips)] for r in trained]
        assert [e["clips"] for e in evaluated] == shards
        assert evaluated[0]["forwards"] == evaluated[1]["forwards"] == forwards
        features, labels = fsdp_script.synthetic_spectrograms(num_clips, seed=7)
        with torch.no_grad():
            expected = trained_model(input_values=features).logits.numpy()
        for e, clips in zip(evaluated, shards, strict=True):
            got = np.asarray(e["logits"], dtype=np.float32).reshape(len(clips), expected.shape[1])
            np.testing.assert_allclose(got, expected[clips], rtol=1e-5, atol=1e-6)
        targets = np.eye(expected.shape[1])[labels.numpy()]
        ap = [average_precision_score(targets[:, c], expected[:, c]) for c in range(3) if targets[:, c].any()]
        for e in evaluated:
            assert e["metrics"]["eval_num_clips"] == num_clips
            assert e["metrics"]["eval_mAP"] == pytest.approx(np.mean(ap), abs=1e-6)

    # The final save is a whole model: it loads in one process and holds the gathered weights.
    for run in ("a", "b"):
        saved = load_file(out / run / "model.safetensors")
        assert {k: v.numel() for k, v in saved.items() if k in full_sizes} == full_sizes
        model = AutoModelForAudioClassification.from_pretrained(out / run)
        assert type(model).__name__ == "AudioMAEForAudioClassification"
        assert json.loads((out / run / "config.json").read_text())["architectures"] == [
            "AudioMAEForAudioClassification"
        ]
        for name, param in model.named_parameters():
            assert param.detach().reshape(-1).tolist() == params_a[name], (run, name)
        features, _ = fsdp_script.synthetic_spectrograms(2)
        with torch.no_grad():
            assert torch.isfinite(model.eval()(input_values=features).logits).all()
