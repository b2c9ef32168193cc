"""What the experiment scripts share: run a recipe once (a finished run is reused, so a sweep resumes) and
write mean +- std cells."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(
    recipe: str,
    output_dir: Path,
    args: list[str],
    results_file: str = "eval_results.json",
    report_only: bool = False,
) -> dict | None:
    """``python recipes/<recipe>.py ARGS --output_dir OUTPUT_DIR`` unless its results file already exists;
    with ``report_only`` a missing run is not started and gives None (a summary of what has finished)."""
    results = output_dir / results_file
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
        print("$", " ".join(command), flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(command, check=True, cwd=ROOT, env=env)
    return json.loads(results.read_text())


def mean_std_cell(values: list[float]) -> str:
    """``mean ± std (n)`` over seeds; one value as is; nothing as an empty cell."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f} ({len(values)})"
