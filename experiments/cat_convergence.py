"""CAT's convergence claim at our scale: pre-training with vs without representation regularization (RR).

1. Trains the RR teacher with the library's own fine-tuning recipe on the embedded corpus (skipped when
   ``--rr_teacher`` names an existing model directory).
2. Pre-trains the same CAT preset twice with ``recipes/pretrain_cat.py`` -- same seed, data and steps --
   once without RR and once with RR toward that frozen teacher, probing the encoder (linear probe mAP on
   the corpus test split) every ``--eval_steps``.
3. Prints the probe mAP against steps for both runs, the number of steps each needs to reach the no-RR
   run's final mAP, and draws the curves to a PNG.

    python experiments/cat_convergence.py --out docs/cat_convergence.png

Several seeds (one ``--work_dir`` each), then one table over them, mean +- std per probed step and the
steps to reach each seed's no-RR final mAP, with every run's curve in one PNG:

    python experiments/cat_convergence.py --summarize outputs/cat_convergence_s0 outputs/cat_convergence_s1 \
        outputs/cat_convergence_s2 --out docs/cat_convergence.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from hf_audiorep.evaluation.plot import plot_curves

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, args: list[str]) -> None:
    command = [sys.executable, str(ROOT / "recipes" / script), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def _history(output_dir: Path) -> list[tuple[int, float]]:
    results = json.loads((output_dir / "eval_results.json").read_text())
    return [(int(row["step"]), float(row["probe_mAP"])) for row in results["eval_history"]]


def _finished(output_dir: Path, max_steps: int) -> bool:
    """A run of this many steps already ended in ``output_dir`` (so a seed interrupted after its no-RR run
    resumes with the RR run)."""
    results = output_dir / "train_results.json"
    return results.exists() and json.loads(results.read_text()).get("global_step") == max_steps


def steps_to_reach(history: list[tuple[int, float]], target: float) -> int | None:
    """First probed step whose mAP is at least ``target`` (None if never)."""
    return next((step for step, value in history if value >= target), None)


RUNS = ("no RR", "RR")


def summarize(work_dirs: list[Path], out: Path) -> str:
    """One table over seeds: mean +- std of each run's probe mAP per step, steps to reach each seed's no-RR
    final mAP; draws every run's curve to ``out``."""
    curves = {
        (name, work.name): _history(work / name.replace(" ", "_")) for work in work_dirs for name in RUNS
    }
    steps = [step for step, _ in curves[(RUNS[0], work_dirs[0].name)]]
    lines = [
        f"linear-probe mAP over {len(work_dirs)} seeds (mean +- std)",
        "step   " + "  ".join(f"{name:>16}" for name in RUNS),
    ]
    for i, step in enumerate(steps):
        cells = []
        for name in RUNS:
            values = np.array([curves[(name, w.name)][i][1] for w in work_dirs])
            cells.append(f"{values.mean():.4f} +- {values.std(ddof=1) if len(values) > 1 else 0.0:.4f}")
        lines.append(f"{step:<6} " + "  ".join(f"{c:>16}" for c in cells))
    for work in work_dirs:
        target = curves[(RUNS[0], work.name)][-1][1]
        reached = {name: steps_to_reach(curves[(name, work.name)], target) for name in RUNS}
        lines.append(
            f"{work.name}: no-RR final {target:.4f}; reached at step "
            + ", ".join(f"{name} {reached[name]}" for name in RUNS)
        )
    plot_curves(
        {f"{name} ({work_name})": curve for (name, work_name), curve in curves.items()},
        out,
        f"CAT: probe mAP vs pre-training step, with and without RR ({len(work_dirs)} seeds)",
        xlabel="pre-training step",
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work_dir", default="outputs/cat_convergence")
    parser.add_argument("--rr_teacher", default=None, help="an existing teacher directory (skips step 1)")
    parser.add_argument("--teacher_args", default="", help="extra arguments of the teacher's fine-tuning run")
    parser.add_argument("--preset", default="cat-small")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--eval_steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip_seconds", type=float, default=5.0)
    parser.add_argument("--probe_train_clips", type=int, default=800)
    parser.add_argument("--extra", default="", help="extra arguments for both pre-training runs")
    parser.add_argument("--out", default="docs/cat_convergence.png")
    parser.add_argument(
        "--summarize",
        nargs="+",
        default=None,
        help="work dirs of finished runs: one table over them, no training",
    )
    args = parser.parse_args()
    if args.summarize:
        print(summarize([ROOT / d for d in args.summarize], ROOT / args.out))
        print(f"plot written to {args.out}")
        return

    work = ROOT / args.work_dir
    frames = str(int(round(args.clip_seconds * 100 / 16)) * 16)
    common_data = [
        "--clip_seconds",
        str(args.clip_seconds),
        "--cpu",
        "true",
        "--disable_progress_bar",
        "true",
    ]
    teacher = Path(args.rr_teacher) if args.rr_teacher else work / "rr_teacher"
    if not (teacher / "config.json").exists():
        _run(
            "finetune.py",
            [
                "--output_dir",
                str(teacher),
                "--overwrite_output_dir",
                "true",
                "--max_length",
                frames,
                *common_data,
                *args.teacher_args.split(),
            ],
        )
    runs = {"no RR": [], "RR": ["--rr_teacher", str(teacher)]}
    curves = {}
    for name, rr in runs.items():
        out = work / name.replace(" ", "_")
        if _finished(out, args.max_steps):
            print(f"{name}: reusing the finished run in {out}")
            curves[name] = _history(out)
            continue
        _run(
            "pretrain_cat.py",
            [
                "--output_dir",
                str(out),
                "--overwrite_output_dir",
                "true",
                "--preset",
                args.preset,
                "--max_length",
                frames,
                "--max_steps",
                str(args.max_steps),
                "--eval_steps",
                str(args.eval_steps),
                "--checkpointing_steps",
                "0",
                "--seed",
                str(args.seed),
                "--probe_train_clips",
                str(args.probe_train_clips),
                *common_data,
                *rr,
                *args.extra.split(),
            ],
        )
        curves[name] = _history(out)

    target = curves["no RR"][-1][1]
    print(f"\nlinear-probe mAP on the corpus test split ({args.preset}, seed {args.seed}):")
    print("step   " + "  ".join(f"{name:>8}" for name in curves))
    for i, (step, _) in enumerate(curves["no RR"]):
        print(f"{step:<6} " + "  ".join(f"{curve[i][1]:8.4f}" for curve in curves.values()))
    for name, curve in curves.items():
        reached = steps_to_reach(curve, target)
        print(f"{name}: reaches the no-RR final mAP {target:.4f} at step {reached}")
    plot_curves(
        curves,
        ROOT / args.out,
        f"CAT {args.preset}: probe mAP vs pre-training step (seed {args.seed})",
        xlabel="pre-training step",
    )
    print(f"plot written to {args.out}")


if __name__ == "__main__":
    main()
