"""Issue "BAT and Convex Gated Probing": three encoders pre-trained with the same CPU time, each probed
five ways on the same cached features, beside full fine-tuning and the random initialisation.

Stages, each resumable: a finished run's results are kept in ``experiments/results/probe_table/<budget>min/``
(committed), so the sweep resumes on a fresh checkout; an archived pre-training is re-run at its archived step
count (same seed, same encoder) only when a new probe or fine-tuning needs the encoder:

1. calibrate: two short runs of each pre-training recipe measure its CPU seconds per step (one thread;
   CPU time rather than wall-clock, which on a shared machine varies several fold with the load);
2. pre-train each encoder (AudioMAE-tiny by MAE, CAT-small and BAT-small by bootstrapping) for the steps
   that fit ``--budget_minutes`` of CPU time (equal compute, each at its recipe's own batch and
   learning rate; all on the corpus's 4-s clips, so every encoder is probed on the same clips);
3. probe every encoder (and its random initialisation: ``--random_init_probes``) with ``recipes/probe.py``
   (the encoder runs once per clip into a shared cache, then by default the linear, weighted-sum and
   attentive heads on standardised pooled features and CGP top-k 1 on tokens centred on their position's
   mean are trained on it; ``--probes`` adds the first protocol's columns), for each seed;
4. fine-tune each pre-trained encoder fully with ``recipes/finetune.py`` (the settings that fine-tune
   these small encoders without wrecking their lower layers: docs/benchmarks.md), for each seed: by LP-FT
   without the families' AudioSet regularizers (the best of the three; ``--finetunings`` adds fine-tuning
   from a random head and LP-FT with them).

The seeds are those of the probe heads and of fine-tuning; each encoder is pre-trained once (seed 0).
Probes run seed-major (every probe of seed 0 before seed 1), then the fine-tuning runs, the slowest, so a
stopped sweep still gives complete rows. Prints the table (mean +- std over the seeds that finished) with
the share of the linear -> fine-tuning gap CGP closes, and writes it to ``<work_dir>/summary.md``.

    OMP_NUM_THREADS=1 python experiments/probe_table.py --seeds 0 1 2 --budget_minutes 8 \\
        --work_dir outputs/probe_table
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from _runs import RESULTS, cpu_run, mean_std_cell, report, run_recipe

from hf_audiorep.evaluation.probing.report import plot_layer_weights

# name -> (pre-training recipe, preset, recipe arguments besides the defaults)
ENCODERS = {
    "AudioMAE-tiny": (
        "pretrain_audiomae",
        "audiomae-tiny",
        ["--max_length", "400", "--per_device_batch_size", "32", "--learning_rate", "1e-3"],
    ),
    "CAT-small": ("pretrain_cat", "cat-small", []),
    "BAT-small": ("pretrain_bat", "bat-small", []),
}
# column -> recipes/probe.py arguments. The first five columns are the table's first protocol: tokens as they
# are, linear heads on raw pooled features (under-trained: docs/benchmarks.md). "CGP (top-k 1) centred" and
# the standardised columns are the recipe's current heads, and "linear (L-BFGS, CV)" its linear probe fitted
# to the optimum with C chosen by cross-validation on the train clips ("linear (L-BFGS)": C=1; the AdamW
# linear columns state their optimizer, the recipe's default until then); those are the defaults of --probes.
UNCENTRED = ["--center_positions", "false"]
RAW = [*UNCENTRED, "--standardize", "false"]
ADAMW = ["--optimizer", "adamw"]
PROBES = {
    "linear": ["--probe", "linear", *ADAMW, *RAW],
    "weighted sum": ["--probe", "weighted_sum", *RAW],
    "attentive": ["--probe", "attentive", *RAW],
    "CGP (top-k 3)": ["--probe", "cgp", "--prototype_topk", "3", *UNCENTRED],
    "CGP (top-k 1)": ["--probe", "cgp", "--prototype_topk", "1", *UNCENTRED],
    "CGP (top-k 1) centred": ["--probe", "cgp", "--prototype_topk", "1", "--center_positions", "true"],
    "linear (standardised)": ["--probe", "linear", *ADAMW, *UNCENTRED],
    "linear (L-BFGS)": ["--probe", "linear", "--optimizer", "lbfgs", "--lbfgs_C", "1", *UNCENTRED],
    "linear (L-BFGS, CV)": ["--probe", "linear", "--optimizer", "lbfgs", *UNCENTRED],
    "weighted sum (standardised)": ["--probe", "weighted_sum", *UNCENTRED],
    "attentive (standardised)": ["--probe", "attentive", *UNCENTRED],
}
CURRENT_PROBES = [
    "linear (L-BFGS, CV)",
    "linear (standardised)",
    "weighted sum (standardised)",
    "attentive (standardised)",
    "CGP (top-k 1) centred",
]
# The share of the gap is measured from the first of these the table has.
LINEAR_COLUMNS = ("linear (L-BFGS, CV)", "linear (L-BFGS)", "linear (standardised)", "linear")
CGP_COLUMNS = [name for name in PROBES if name.startswith("CGP")]
FINETUNE = [
    "--learning_rate", "1e-2", "--layer_decay", "0.2", "--mixup_prob", "0", "--max_steps", "300",
    "--warmup_steps", "30", "--eval_steps", "0", "--checkpointing_steps", "0",
]  # fmt: skip
COMMON = ["--clip_seconds", "4", "--cpu", "true", "--num_decode_threads", "1"]
CALIBRATION_STEPS = (5, 25)


def _pretrain_args(recipe: str, preset: str, extra: list[str], steps: int) -> list[str]:
    args = [*COMMON, "--preset", preset, *extra, "--max_steps", str(steps), "--seed", "0"]
    return [*args, "--disable_progress_bar", "true", "--checkpointing_steps", "0", "--eval_steps", "0"]


def _cpu_seconds_per_step(work_dir: Path, name: str) -> float:
    """From two short runs, so that start-up (imports, corpus, model) cancels out."""
    recipe, preset, extra = ENCODERS[name]
    cpu = {}
    for steps in CALIBRATION_STEPS:
        args = _pretrain_args(recipe, preset, extra, steps)
        args += ["--warmup_steps", "1", "--eval_on_start", "false", "--probe_dataset", ""]
        cpu[steps] = cpu_run(recipe, work_dir / f"calibrate_{preset}_{steps}", args, "train_results.json")
    short, long = CALIBRATION_STEPS
    return (cpu[long] - cpu[short]) / (long - short)


def _archive(budget_minutes: float, *parts: str) -> Path:
    """Where a finished run's results are kept in the repository, by pre-training budget: a sweep resumes
    from them on a fresh checkout (``outputs/`` does not survive one)."""
    return RESULTS.joinpath("probe_table", f"{budget_minutes:g}min", *parts[:-1], f"{parts[-1]}.json")


def _calibration(info: dict) -> str:
    if info["cpu_per_step"] is None:
        return "steps pinned by --pretrain_steps"
    return f"{info['cpu_per_step']:.2f} CPU s a step calibrated"


def _pretrain(
    work_dir: Path, name: str, budget_seconds: float, report_only: bool, pinned_steps: int | None = None
) -> tuple[Path, dict]:
    recipe, preset, extra = ENCODERS[name]
    output = work_dir / f"pretrain_{preset}"
    archive = _archive(budget_seconds / 60, f"pretrain_{preset}")
    if archive.exists():
        # The archived step count, not a new calibration: the same seed and steps give the same encoder the
        # archived probes were fitted on (so a resumed sweep's new seeds probe that encoder too).
        info = json.loads(archive.read_text())
        if not report_only and not (output / "eval_results.json").exists():
            args = _pretrain_args(recipe, preset, extra, info["steps"])
            cpu_run(recipe, output, [*args, "--warmup_steps", str(max(1, info["steps"] // 20))])
        return output, info
    if pinned_steps is None:
        per_step = _cpu_seconds_per_step(work_dir, name)
        steps = max(20, math.floor(budget_seconds / per_step))
    else:  # an earlier sweep's step count, given by hand (that sweep predates the archive): no calibration
        per_step, steps = None, pinned_steps
    warmup = ["--warmup_steps", str(max(1, steps // 20))]
    cpu = cpu_run(recipe, output, [*_pretrain_args(recipe, preset, extra, steps), *warmup])
    results = json.loads((output / "eval_results.json").read_text())
    train = json.loads((output / "train_results.json").read_text())
    info = {"steps": train["global_step"], "seconds": train["train_runtime"], "cpu_per_step": per_step}
    info = {**info, "cpu_seconds": cpu, **results}
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_text(json.dumps(info, indent=1) + "\n")
    return output, info


def _probe(
    work_dir: Path, budget: float, encoder: str, probe: str, seed: int, report_only: bool
) -> float | None:
    slug = probe.replace(" ", "_").replace("(", "").replace(")", "").replace("-", "").replace(",", "")
    if encoder.startswith("random:"):  # the preset's random initialisation, at the corpus's 4-s window
        source, name = (
            ["--preset", encoder.split(":", 1)[1], "--max_length", "400"],
            encoder.replace(":", "_"),
        )
    else:
        source, name = ["--model_name_or_path", encoder], Path(encoder).name
    args = [*source, *PROBES[probe], "--token_pooling", "8", "--seed", str(seed), *COMMON]
    args += ["--cache_dir", str(work_dir / "cache" / name)]
    run = f"{name}_{slug}_s{seed}"
    archive = _archive(budget, "probes", run)
    results = run_recipe("probe", work_dir / "probes" / run, args, report_only=report_only, archive=archive)
    return None if results is None else results["test_mAP"]


# column -> (the runs' folder, arguments, whether the family's AudioSet regularizers are turned off)
FINETUNINGS = {
    "fine-tuning": ("finetune", [], False),
    "LP-FT": ("lpft", ["--lp_ft", "true"], False),
    "LP-FT (no AudioSet regularizers)": ("lpft_noreg", ["--lp_ft", "true"], True),
}
# The regularizers each family fine-tunes on AudioSet with, which on 1,600 clips cost more than they give
# (docs/benchmarks.md, "What kept fine-tuning below the probes"): SpecAugment, and AudioMAE's patch dropping
# and stochastic depth.
NO_SPEC_AUGMENT = ["--freq_mask", "0", "--time_mask", "0"]
NO_FAMILY_REGULARIZERS = {
    "AudioMAE-tiny": ["--config_overrides", "mask_t_prob=0,mask_f_prob=0,drop_path_rate=0"],
}


def _finetune(
    work_dir: Path, budget: float, name: str, encoder: Path | None, seed: int, report_only: bool, kind: str
) -> float | None:
    """One fine-tuning run of the pre-trained ``encoder``, or with ``encoder=None`` of the preset's random
    initialisation at the corpus's 4-s window (what the pre-training adds to fine-tuning)."""
    folder, extra, no_regularizers = FINETUNINGS[kind]
    preset = ENCODERS[name][1]
    if encoder is None:
        source, run = ["--preset", preset, "--max_length", "400"], f"random_{preset}"
    else:
        source, run = ["--model_name_or_path", str(encoder)], encoder.name
    args = [*source, *FINETUNE, *extra, *COMMON, "--seed", str(seed), "--disable_progress_bar", "true"]
    if no_regularizers:
        args += [*NO_SPEC_AUGMENT, *NO_FAMILY_REGULARIZERS.get(name, [])]
    output = work_dir / folder / f"{run}_s{seed}"
    archive = _archive(budget, folder, output.name)
    results = run_recipe("finetune", output, args, report_only=report_only, archive=archive)
    return None if results is None else results["test_mAP"]


def _gate_figures(work_dir: Path, encoders: list[str], seeds: list[int]) -> list[Path]:
    """Where CGP puts its weight: the layer gates of each pre-trained encoder's CGP probes (top-k 1 and 3),
    averaged over the seeds that finished, as one bar chart per encoder."""
    figures = []
    for name in encoders:
        preset = ENCODERS[name][1]
        runs = [
            json.loads(path.read_text())
            for seed in seeds
            for slug in ("CGP_topk_1", "CGP_topk_3")
            if (
                path := work_dir / "probes" / f"pretrain_{preset}_{slug}_s{seed}" / "layer_weights.json"
            ).exists()
        ]
        if not runs:
            continue
        mean = np.mean([run["weights"] for run in runs], axis=0)
        title = f"{name}: CGP layer gates, mean of {len(runs)} probes (top-k 1 and 3, seeds)"
        figures.append(
            plot_layer_weights(mean, runs[0]["layers"], work_dir / f"cgp_gates_{preset}.png", title)
        )
    return figures


def _table(rows: dict[str, dict[str, list[float]]], columns: list[str]) -> str:
    lines = ["| encoder | " + " | ".join(columns) + " | CGP share of the linear -> best fine-tuning gap |"]
    lines.append("|---|" + "---:|" * (len(columns) + 1))
    for name, cells in rows.items():
        mean = {c: sum(v) / len(v) for c, v in cells.items() if v}
        share = ""
        tuned = [mean[c] for c in FINETUNINGS if c in mean]
        cgp = [mean[c] for c in CGP_COLUMNS if c in mean]
        linear = next((mean[c] for c in LINEAR_COLUMNS if c in mean), None)
        if linear is not None and cgp and tuned:
            gap = max(tuned) - linear  # against the best fine-tuning
            best_cgp = max(cgp)
            # No share of a gap that is not there (fine-tuning at or below linear): the ratio means nothing.
            share = (
                f"{(best_cgp - linear) / gap:+.2f} (gap {gap:+.3f})" if gap > 0 else f"none (gap {gap:+.3f})"
            )
        lines.append(
            f"| {name} | " + " | ".join(mean_std_cell(cells.get(c, [])) for c in columns) + f" | {share} |"
        )
    return "\n".join(lines)


def _encoder_steps(item: str) -> tuple[str, int]:
    name, _, steps = item.partition("=")
    if name not in ENCODERS or not steps.isdigit() or int(steps) < 1:
        raise argparse.ArgumentTypeError(f"{item!r}: want ENCODER=STEPS, ENCODER one of {list(ENCODERS)}")
    return name, int(steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds of the probes and fine-tuning"
    )
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument(
        "--probes",
        nargs="*",
        default=CURRENT_PROBES,
        choices=list(PROBES),
        help="columns of probes (default: the recipe's current heads); none: fine-tuning only",
    )
    parser.add_argument(
        "--random_init_probes",
        nargs="*",
        default=["linear (standardised)", "CGP (top-k 1) centred"],
        choices=list(PROBES),
        help="probes of each encoder's random initialisation (what a pre-trained row is read against)",
    )
    parser.add_argument(
        "--budget_minutes", type=float, default=8.0, help="training CPU minutes of every encoder (one thread)"
    )
    parser.add_argument(
        "--finetunings",
        nargs="*",
        default=["LP-FT (no AudioSet regularizers)"],
        choices=list(FINETUNINGS),
        help="fine-tuning from a random head and/or LP-FT (the head starts as a fitted probe), LP-FT also "
        "without the families' AudioSet regularizers; none: skip",
    )
    parser.add_argument(
        "--random_init_finetunings",
        nargs="*",
        default=[],
        choices=list(FINETUNINGS),
        help="the same fine-tunings of each encoder's random initialisation (how much of the fine-tuned "
        "score the pre-training gives; a probe of the frozen encoder can only reach that part)",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="start no probe or fine-tuning run: the table of those finished",
    )
    parser.add_argument(
        "--pretrain_steps",
        nargs="*",
        default=[],
        type=_encoder_steps,
        metavar="ENCODER=STEPS",
        help="pre-train these encoders for a given step count instead of calibrating one (to re-create an "
        "encoder of a sweep whose pre-training was not archived: same seed, same steps, same encoder); an "
        "archived pre-training wins",
    )
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/probe_table"), help="runs and summary")
    args = parser.parse_args()

    budget = args.budget_minutes
    pinned = dict(args.pretrain_steps)
    pretrained = {}
    for name in args.encoders:
        pretrained[name] = _pretrain(args.work_dir, name, budget * 60, args.report_only, pinned.get(name))
    columns = [*args.probes, *dict.fromkeys([*args.finetunings, *args.random_init_finetunings])]
    rows: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        for name, (output, _) in pretrained.items():
            preset = ENCODERS[name][1]
            for encoder, row, probes in (
                (str(output), name, args.probes),
                (f"random:{preset}", f"{name}, random init", args.random_init_probes),
            ):
                for probe in probes:
                    value = _probe(args.work_dir, budget, encoder, probe, seed, args.report_only)
                    rows.setdefault(row, {}).setdefault(probe, []).extend([] if value is None else [value])
    for seed in args.seeds:  # after every probe: the slowest runs come last
        for kind in args.finetunings:
            for name, (output, _) in pretrained.items():
                value = _finetune(args.work_dir, budget, name, output, seed, args.report_only, kind)
                rows.setdefault(name, {}).setdefault(kind, []).extend([] if value is None else [value])
        for kind in args.random_init_finetunings:
            for name in pretrained:
                value = _finetune(args.work_dir, budget, name, None, seed, args.report_only, kind)
                row = rows.setdefault(f"{name}, random init", {})
                row.setdefault(kind, []).extend([] if value is None else [value])
    pretraining = "\n".join(
        f"- {name}: {info['steps']} steps ({_calibration(info)}) in "
        f"{info['cpu_seconds']:.0f} CPU s of the whole run, {info['seconds']:.0f} s of training wall-clock; "
        f"the recipe's sklearn probe {info['eval_history'][0]['probe_mAP']:.3f} at init -> "
        f"{info['probe_mAP']:.3f}"
        for name, (_, info) in pretrained.items()
    )
    summary = _table(rows, columns) + "\n\nPre-training (equal CPU time):\n" + pretraining
    figures = _gate_figures(args.work_dir, args.encoders, args.seeds)
    summary += "\n\nCGP gate figures: " + ", ".join(str(f) for f in figures)
    report(summary, args.work_dir)


if __name__ == "__main__":
    main()
