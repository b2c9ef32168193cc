"""ContrastASC on the embedded scene corpus: a teacher fine-tuned with or without the supervised contrastive
term, then CP-Mobile students of several sizes trained with CE, CE + KD or CE + KD + CRD, with BatchNorm or
LayerNorm in the output block; each scored closed-set, on unseen devices and 5-shot on held-out scenes.

Every run is ``recipes/finetune.py`` (teachers) or ``recipes/distill.py`` (students); a finished run (its
``eval_results.json`` exists) is reused, so an interrupted sweep resumes. Each finished run's results are
archived in ``experiments/results/contrastasc/<teacher preset>_<teacher steps>/`` (committed), so the table
can be regenerated on a fresh checkout; a teacher is re-trained only when one of its students has no
archive. Prints one table (mean +- std over the seeds) and writes it to ``<work_dir>/summary.md``. Arguments
after ``--`` go to every student run (such runs are not archived: they are not the table's setting).

    python experiments/contrastasc_students.py --seeds 0 1 2 --presets cp-mobile-6k cp-mobile-18k \
        cp-mobile-dcase24 --norms batch layer --losses ce kd crd --work_dir outputs/contrastasc

The teacher is a CP-Mobile of the largest preset (``--teacher_preset``) trained from scratch: on a CPU the
paper's BEATs teacher cannot be fine-tuned, and no pre-trained BEATs weights can be downloaded here.

Every run gets ``--threads`` intra-op threads (1 by default): a CPU run reproduces bit for bit only at the
same thread count, and the archived runs were made with one (a 2-thread teacher of the same seed scores
differently; docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _runs import RESULTS, mean_std_cell, report, run_recipe

LOSSES = {"ce": ("0", "0"), "kd": ("1", "0"), "crd": ("1", "0.8")}  # (kd_weight, crd_weight)
SCENE_AUGMENTATION = ["--time_mask", "0", "--freq_mask", "48"]


def _threads_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def _teacher(
    work_dir: Path,
    preset: str,
    supcon: bool,
    seed: int,
    steps: int,
    archive: Path,
    needed: bool,
    env: dict[str, str],
) -> tuple[Path, dict]:
    """The teacher's run directory and results; trained unless its results are archived and no student
    still to run needs its weights."""
    output = work_dir / f"teacher_{'supcon' if supcon else 'ce'}_s{seed}"
    if archive.exists() and not needed:
        return output, json.loads(archive.read_text())
    args = [
        "--dataset",
        "embedded-scenes",
        "--problem_type",
        "single_label_classification",
        "--preset",
        preset,
    ]
    args += ["--seed", str(seed), "--max_steps", str(steps), "--per_device_batch_size", "32"]
    args += ["--learning_rate", "3e-3", "--mixup_alpha", "0.3", "--eval_steps", "0", *SCENE_AUGMENTATION]
    args += ["--disable_progress_bar", "true", "--num_decode_threads", "1"]
    if supcon:
        args += ["--supcon_weight", "0.25"]
    # Trained here if need be: an archive alone has no weights.
    results = run_recipe("finetune", output, args, env=env)
    if archive.exists():
        # Students distilled from two different teachers must not share a table.
        archived = json.loads(archive.read_text())
        if results["test_accuracy"] != archived["test_accuracy"]:
            # Archives from before the recipes recorded their thread count were made with one thread.
            then = archived.get("train_results", {}).get("cpu_threads", 1)
            now = json.loads((output / "train_results.json").read_text()).get("cpu_threads")
            raise SystemExit(
                f"the re-trained teacher {output} scores {results['test_accuracy']:.4f}, its archive "
                f"{archive} {archived['test_accuracy']:.4f} (intra-op threads: {now} now, {then} then; "
                "runs reproduce only at the same count): the archived students were distilled from the "
                "archived teacher; move that seed's archives aside to run it again"
            )
    return output, run_recipe("finetune", output, args, archive=archive, env=env)


COLUMNS = (
    "closed-set accuracy",
    "unseen-device accuracy",
    "5-shot prototype",
    "5-shot logistic",
    "5-shot prototype at init",
)


def _row(results: dict) -> dict[str, float]:
    few_shot, initial = results["few_shot"]["scores"], results["few_shot_at_initialisation"]["scores"]
    values = (
        results["test_accuracy"],
        results["unseen_device_accuracy"],
        few_shot["prototype"]["accuracy"],
        few_shot["logistic"]["accuracy"],
        initial["prototype"]["accuracy"],
    )
    return dict(zip(COLUMNS, values, strict=True))


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of teachers and students")
    parser.add_argument("--presets", nargs="+", default=["cp-mobile-6k"], help="student presets")
    parser.add_argument("--norms", nargs="+", default=["batch", "layer"], help="output-block norms")
    parser.add_argument(
        "--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES), help="student losses"
    )
    parser.add_argument(
        "--teachers", nargs="+", default=["supcon"], choices=["supcon", "ce"], help="teachers"
    )
    parser.add_argument("--teacher_preset", default="cp-mobile-dcase23", help="the teacher's architecture")
    parser.add_argument("--teacher_steps", type=int, default=600, help="teacher fine-tuning steps")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/contrastasc"), help="runs and summary")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of every run (results depend on it; the archives were made with 1)",
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")

    env = _threads_env(args.threads)
    archive_dir = RESULTS / "contrastasc" / f"{args.teacher_preset}_{args.teacher_steps}"
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for kind in args.teachers:
            students = [
                (preset, norm, loss, f"{preset}_{norm}_{loss}_{kind}_s{seed}")
                for preset in args.presets
                for norm in args.norms
                for loss in args.losses
            ]
            needed = bool(extra) or any(not (archive_dir / f"{run}.json").exists() for *_, run in students)
            teacher, teacher_results = _teacher(
                args.work_dir,
                args.teacher_preset,
                kind == "supcon",
                seed,
                args.teacher_steps,
                archive_dir / f"teacher_{kind}_s{seed}.json",
                needed,
                env,
            )
            rows.setdefault(f"teacher {kind} ({args.teacher_preset})", []).append(
                {"closed-set accuracy": teacher_results["test_accuracy"]}
            )
            for preset, norm, loss, run in students:
                kd, crd = LOSSES[loss]
                student_args = ["--teacher", str(teacher), "--preset", preset, "--output_norm", norm]
                student_args += ["--kd_weight", kd, "--crd_weight", crd, "--seed", str(seed)]
                student_args += ["--disable_progress_bar", "true", "--num_decode_threads", "1", *extra]
                results = run_recipe(
                    "distill",
                    args.work_dir / run,
                    student_args,
                    archive=None if extra else archive_dir / f"{run}.json",
                    env=env,
                )
                rows.setdefault(f"{preset} {norm} {loss} <- {kind}", []).append(_row(results))
    lines = ["| run | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, values in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(mean_std_cell([v[c] for v in values if c in v]) for c in COLUMNS)
            + " |"
        )
    summary = "\n".join(lines)
    report(summary, args.work_dir)


if __name__ == "__main__":
    main()
