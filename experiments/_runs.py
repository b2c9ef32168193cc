"""What the experiment scripts share: run a recipe once (a finished run is reused, so a sweep resumes) and
write mean +- std cells."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


#: where finished runs' results are kept in the repository, one JSON per run, so a sweep resumes on a fresh
#: checkout (``outputs/`` is not committed) and its table can be regenerated from what earlier sessions ran
RESULTS = ROOT / "experiments" / "results"


def run_recipe(
    recipe: str,
    output_dir: Path,
    args: list[str],
    results_file: str = "eval_results.json",
    report_only: bool = False,
    archive: Path | None = None,
    env: dict[str, str] | None = None,
) -> dict | None:
    """``python recipes/<recipe>.py ARGS --output_dir OUTPUT_DIR`` unless its results already exist (in
    ``archive`` when given, else in the run's results file); with ``report_only`` a missing run is not
    started and gives None (a summary of what has finished). A finished run's results (with its
    ``train_results.json`` as ``train_results``) are copied to ``archive``; ``env`` adds to the subprocess's
    environment."""
    results = output_dir / results_file
    if archive is not None and archive.exists():
        return json.loads(archive.read_text())
    if not results.exists() and report_only:
        return None
    if not results.exists():
        command = [
            sys.executable,
            str(ROOT / "recipes" / f"{recipe}.py"),
            *args,
            "--output_dir",
            str(output_dir),
        ]
        if any((output_dir / "checkpoints").glob("step_*")):
            # A run killed part-way continues from its last complete checkpoint (resume is exact) instead of
            # being refused by the recipe for the checkpoints it left.
            command += ["--resume_from_checkpoint", "latest"]
        print("$", " ".join(command), flush=True)
        run_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        _run_measured(command, run_env, output_dir / RESOURCES)
    data = json.loads(results.read_text())
    _check_same_run(output_dir, args)
    if archive is not None:
        # The run's training summary (time, last logged loss, command) and what it used go with its results.
        train = output_dir / "train_results.json"
        if results_file != train.name and train.exists():
            data["train_results"] = json.loads(train.read_text())
        if (output_dir / RESOURCES).exists():
            data["resources"] = json.loads((output_dir / RESOURCES).read_text())
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_text(json.dumps(data, indent=1) + "\n")
    return data


#: a run's own peak memory and CPU time, written beside its results by `run_recipe`
RESOURCES = "resources.json"


def _run_measured(command: list[str], env: dict[str, str], record: Path) -> None:
    """Run ``command`` and write what that one process used to ``record``: its peak resident memory (the
    kernel's high-water mark of the process's own memory, ``VmHWM``, read every ``POLL_SECONDS`` while it
    runs) and its CPU seconds (``os.wait4``). Not ``ru_maxrss``: it keeps the high-water mark of the process
    that forked the run (this one, which may hold torch), so a small run would report a large peak."""
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    peak_kb = 0
    try:
        while True:
            peak_kb = max(peak_kb, _high_water_kb(process.pid))
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(POLL_SECONDS)
    except BaseException:
        process.kill()
        raise
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    record.parent.mkdir(parents=True, exist_ok=True)
    used = {"peak_rss_mb": peak_kb / 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime}
    record.write_text(json.dumps(used))


#: how often a run's memory high-water mark is read: growth in its last fraction of a second is not seen
POLL_SECONDS = 0.1


def _high_water_kb(pid: int) -> int:
    """``VmHWM`` of a running process in kB (0 once it has exited, or where /proc has no such line)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), 0)


def _check_same_run(output_dir: Path, args: list[str]) -> None:
    """Refuse results that an earlier run with other arguments left in ``output_dir`` (a sweep of another
    protocol in the same work dir): archiving them would file one protocol's numbers under another's."""
    train = output_dir / "train_results.json"
    command = json.loads(train.read_text()).get("training_command") if train.exists() else None
    if not command:
        return
    words = shlex.split(command)
    # The arguments after the recipe's path, however it was launched (python, accelerate launch, ...).
    recipe_at = next((i for i, word in enumerate(words) if word.endswith(".py")), len(words))
    recorded = words[recipe_at + 1 :]
    for option in ("--output_dir", "--resume_from_checkpoint"):  # where it ran, and whether it resumed
        if option in recorded:
            at = recorded.index(option)
            del recorded[at : at + 2]
    if not _same_arguments(recorded, list(args)):
        raise RuntimeError(
            f"{output_dir} holds a run with other arguments ({' '.join(recorded)}), not {' '.join(args)}: "
            "give another --work_dir or remove that folder"
        )


def _same_arguments(recorded: list[str], args: list[str]) -> bool:
    """``args`` as the run recorded them; a value the recorder masked as a credential (``<redacted>``, the
    value of an option named like ``--hub_token``) matches whatever was given."""
    if len(recorded) != len(args):
        return False
    for seen, given in zip(recorded, args, strict=True):
        name, eq, value = seen.partition("=")
        if seen == "<redacted>" or (eq and value == "<redacted>" and given.startswith(f"{name}=")):
            continue
        if seen != given:
            return False
    return True


def cpu_run(recipe: str, output_dir: Path, args: list[str], results_file: str = "eval_results.json") -> float:
    """Run a recipe once and return the CPU seconds it used (``run_recipe``'s record of the run, kept beside
    its results, so a rerun reuses it). CPU time, not wall-clock: on a machine shared with other jobs the
    wall-clock of a step varies several fold with the load, its CPU time hardly."""
    legacy = output_dir / "cpu_seconds.json"  # runs recorded before resources.json
    if legacy.exists():
        return json.loads(legacy.read_text())["cpu_seconds"]
    run_recipe(recipe, output_dir, args, results_file)
    return json.loads((output_dir / RESOURCES).read_text())["cpu_seconds"]


def mean_attribute_accuracy(probes: dict, kind: str = "probe") -> float:
    """Out of domain in one number: the mean ``<task>/<kind>_accuracy`` over the single-label (attribute)
    tasks of a ``probe_tasks`` result; ``kind="chance"`` gives the trivial baseline's."""
    return float(np.mean([v for k, v in probes.items() if k.endswith(f"/{kind}_accuracy")]))


def mean_std_cell(values: list[float], digits: int = 3) -> str:
    """``mean ± std (n)`` over seeds (``digits`` decimals); one value as is; nothing as an empty cell."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f} ({len(values)})"


def report(summary: str, work_dir: Path) -> None:
    """Print a sweep's table and keep it as ``<work_dir>/summary.md``."""
    print(summary)
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / "summary.md").write_text(summary + "\n")
