"""A real fine-tuning process killed with SIGKILL while it writes a checkpoint, then resumed from "latest":
the final weights equal those of the same run left alone, bit for bit.

The kill is timed from outside, with no hook in the library: the test watches ``checkpoints/`` and sends
SIGKILL as soon as a ``.tmp-step_<n>`` directory (n >= 4, so that a complete checkpoint precedes it) has
received its first file, i.e. while accelerate's ``save_state`` is writing the weights, inside
``save_checkpoint``. A write takes tens of milliseconds or more (the tiny model's weights, AdamW moments,
RNG states) and the directory is polled every half millisecond, so the first checkpoint aimed at is hit
(3 runs out of 3 when this was written); should the rename still win the race, the attempt is repeated in
a fresh directory, and the test asserts that the kill it kept really landed inside a write.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from recipe_utils import tiny_finetune_args
from safetensors.torch import load_file

from hf_audiorep.data import load_embedded_corpus
from hf_audiorep.training import list_checkpoints

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "finetune.py"
TMP_STEP = re.compile(r"^\.tmp-step_(\d+)$")
#: 12 steps of 8 clips (2 epochs of the 48-clip corpus), a checkpoint every 2: 6 writes to aim at
RUN = dict(
    max_steps=12, checkpointing_steps=2, eval_split="none", test_split="none", disable_progress_bar="true"
)
ATTEMPTS = 5


def _start(output_dir: Path, log: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(RECIPE), *tiny_finetune_args(**RUN, output_dir=output_dir), *extra]
    env = {
        **os.environ,  # the same HF_HOME as this process: the corpus is generated once
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",  # the same float arithmetic in every run
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]


def _kill_during_a_checkpoint_write(output_dir: Path, log: Path) -> tuple[int, list[str]] | None:
    """Run the recipe and SIGKILL it while it writes a checkpoint of step >= 4; returns the step and the
    files its temp directory held, or None when the process was past the write (or done) before the kill."""
    checkpoints = output_dir / "checkpoints"
    proc = _start(output_dir, log)
    try:
        while proc.poll() is None:
            try:
                names = os.listdir(checkpoints)
            except FileNotFoundError:
                names = []
            for name in names:
                match = TMP_STEP.match(name)
                if match and int(match.group(1)) >= 4:
                    try:
                        written = os.listdir(checkpoints / name)
                    except FileNotFoundError:  # renamed to step_<n> meanwhile
                        continue
                    if written:
                        proc.send_signal(signal.SIGKILL)
                        assert proc.wait(timeout=60) == -signal.SIGKILL
                        step = int(match.group(1))
                        tmp_dir = checkpoints / name
                        if not tmp_dir.is_dir() or (checkpoints / f"step_{step}").exists():
                            return None  # the write completed before the signal landed
                        return step, sorted(os.listdir(tmp_dir))
            time.sleep(0.0005)
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_a_run_killed_while_checkpointing_resumes_to_the_same_weights(tmp_path):
    options = dict(zip(tiny_finetune_args()[::2], tiny_finetune_args()[1::2], strict=True))
    load_embedded_corpus(  # the runs' corpus, generated here once so that no run below generates it
        num_train=int(options["--num_train_clips"]),
        num_validation=int(options["--num_eval_clips"]),
        num_test=int(options["--num_test_clips"]),
        clip_seconds=float(options["--clip_seconds"]),
    )
    reference = _start(tmp_path / "reference", tmp_path / "reference.log")  # meanwhile, on the other core

    for attempt in range(ATTEMPTS):
        killed_dir, log = tmp_path / f"killed{attempt}", tmp_path / f"killed{attempt}.log"
        hit = _kill_during_a_checkpoint_write(killed_dir, log)
        if hit is not None:
            break
    else:
        pytest.fail(f"no SIGKILL landed inside a checkpoint write in {ATTEMPTS} runs")
    step, half_written = hit
    checkpoints = killed_dir / "checkpoints"
    # Killed mid-write: the step's files are partly there, its trainer_state.json (written last) is not,
    # and "latest" is the step before, complete.
    assert half_written and "trainer_state.json" not in half_written, half_written
    complete = list_checkpoints(checkpoints)
    assert complete and complete[-1].name == f"step_{step - 2}"
    assert not (killed_dir / "model.safetensors").exists()

    resumed = _start(killed_dir, tmp_path / "resumed.log", "--resume_from_checkpoint", "latest")
    _finish(resumed, tmp_path / "resumed.log")
    _finish(reference, tmp_path / "reference.log")

    results = json.loads((killed_dir / "train_results.json").read_text())
    assert results["global_step"] == 12 and results["resumed_from_checkpoint"].endswith(f"step_{step - 2}")
    # The resumed run wrote the interrupted step again over the leftover temp directory, and went on.
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step_10", "step_12"]
    assert not [name for name in os.listdir(checkpoints) if name.startswith(".tmp-")]
    expected = load_file(tmp_path / "reference" / "model.safetensors")
    actual = load_file(killed_dir / "model.safetensors")
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), f"{name} differs after the kill and resume at step {step}"
