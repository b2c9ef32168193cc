"""UTS's label-quality experiment on the embedded corpus: the same Zipformer trained with MTC on the event
ontology (the AudioSet-like labels) or on tag vocabularies of several sizes mined from the captions, each
encoder then linear-probed in domain (event tagging) and out of domain (the corpus's attribute tasks).

The paper's direction: mined tags win out of domain, ontology labels in domain, and an intermediate
vocabulary size is best. Every run is ``recipes/pretrain_uts.py`` with the same seed, data and steps, by
default the protocol of the first run that learned its labels (900 steps of 16 x 3-s clips, SpecAugment off;
docs/benchmarks.md). Runs go ``--jobs`` at a time, one thread each. A finished run's results are kept in
``experiments/results/uts_label_quality/<protocol>/`` (committed), so the sweep resumes on a fresh checkout
and ``--report_only`` rebuilds the table from whatever has finished:

    python experiments/uts_label_quality.py --seeds 0 1 2 --vocabulary_sizes 25 100 256 --jobs 2

Prints one table, mean +- std over the seeds per label system and task (the probe at initialisation and
the trivial baseline beside it), and writes it to ``<work_dir>/summary.md``. Arguments after ``--`` replace
the protocol's recipe arguments (e.g. ``-- --clip_seconds 4 --max_steps 400``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import RESULTS, mean_attribute_accuracy, mean_std_cell, run_recipe  # noqa: E402

METRICS = ("probe_mAP", "probe_accuracy")
#: the recipe arguments of every run unless replaced after ``--``: the protocol of the first UTS run whose
#: training loss clearly left the label prior (docs/benchmarks.md, "A run that learns its labels")
#: and of the 3-seed sweep in docs/benchmarks.md, with the optimizer it ran with (the recipe's default then)
#: spelled out, so that a later change of the recipe's defaults cannot change what these arguments mean
PROTOCOL = (
    "--clip_seconds 3 --max_steps 900 --freq_mask 0 --time_mask 0 --logging_steps 50 "
    "--disable_progress_bar true --num_decode_threads 1 "
    "--optimizer scaled_adam --lr_scheduler eden --learning_rate 0.045 --max_grad_norm 0"
).split()


#: the probe every archived run was measured with, C=1 (the recipe's default then; `--probe_C auto` is now):
#: stated outside the protocol's name, so a missing seed runs as the archived ones did and their name holds
ARCHIVED_PROBE = ["--probe_C", "1"]


def protocol_name(extra: list[str]) -> str:
    """A short stable name for a list of recipe arguments: results of different protocols never mix."""
    return hashlib.sha1(" ".join(extra).encode()).hexdigest()[:10]


def _run(work_dir: Path, archive: Path, labels: str, k: int | None, seed: int, extra: list[str], report_only):
    name = f"{labels}{'' if k is None else f'_k{k}'}_s{seed}"
    args = ["--labels", labels, "--seed", str(seed), *extra, *ARCHIVED_PROBE]
    args += [] if k is None else ["--vocabulary_size", str(k)]
    return run_recipe(
        "pretrain_uts",
        work_dir / name,
        args,
        report_only=report_only,
        archive=archive / f"{name}.json",
        env={"OMP_NUM_THREADS": "1"},
    )


def summarize(runs: dict[str, list[dict]]) -> str:
    """One row per (task, metric): chance, the initialisation (first system), then each label system."""
    systems = list(runs)
    first = runs[systems[0]][0]["probes"]
    header = ["task", "metric", "chance", "initialisation", *systems]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for key in first:
        task, metric = key.split("/", 1)
        if metric not in METRICS:
            continue
        name = metric.removeprefix("probe_")
        chance = [r["probes"].get(f"{task}/chance_{name}") for r in runs[systems[0]]]
        initial = [r["probes_at_initialisation"][key] for r in runs[systems[0]]]
        cells = [mean_std_cell([c for c in chance if c is not None]), mean_std_cell(initial)]
        cells += [mean_std_cell([r["probes"][key] for r in runs[system]]) for system in systems]
        rows.append(f"| {task} | {name} | " + " | ".join(cells) + " |")

    chance = [mean_attribute_accuracy(r["probes"], "chance") for r in runs[systems[0]]]
    initial = [mean_attribute_accuracy(r["probes_at_initialisation"]) for r in runs[systems[0]]]
    cells = [mean_std_cell(chance), mean_std_cell(initial)]
    for system in systems:
        cells.append(mean_std_cell([mean_attribute_accuracy(r["probes"]) for r in runs[system]]))
    rows.append("| attributes (mean of the tasks above) | accuracy | " + " | ".join(cells) + " |")
    # Per system: on how many attribute tasks its mean accuracy beats the initialisation's and the ontology's.
    tasks = [k for k in first if k.endswith("/probe_accuracy")]

    def mean(system: str, key: str, field: str = "probes") -> float:
        return float(np.mean([r[field][key] for r in runs[system]]))

    for label, baseline in (("the initialisation", None), ("the ontology run", "ontology")):
        if baseline is not None and baseline not in runs:
            continue
        cells = ["", ""]
        for system in systems:
            reference = [
                mean(baseline, k) if baseline else mean(system, k, "probes_at_initialisation") for k in tasks
            ]
            ahead = sum(mean(system, k) > ref + 1e-9 for k, ref in zip(tasks, reference, strict=True))
            cells.append(f"{ahead} of {len(tasks)}")
        rows.append(f"| attribute tasks ahead of {label} | accuracy | " + " | ".join(cells) + " |")
    # Did each run learn its labels? Its last logged training loss against the prior-only BCE.
    for label, value in (
        (
            "training loss, last logged window",
            lambda r: r.get("train_results", {}).get("last_log", {}).get("loss"),
        ),
        ("prior-only BCE of its labels", lambda r: r.get("label_prior_bce")),
    ):
        cells = ["", ""] + [
            mean_std_cell([v for r in runs[s] if (v := value(r)) is not None]) for s in systems
        ]
        rows.append(f"| {label} | BCE | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else PROTOCOL
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    parser.add_argument(
        "--vocabulary_sizes", type=int, nargs="+", default=[25, 100, 256], help="K of each mined vocabulary"
    )
    parser.add_argument(
        "--work_dir", type=Path, default=Path("outputs/uts_label_quality"), help="the runs' folders"
    )
    parser.add_argument(
        "--ontology",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train on the ontology labels (the AudioSet-like baseline; default: yes)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--report_only", action="store_true", help="table of finished runs; start none")
    args = parser.parse_args(argv)
    archive = RESULTS / "uts_label_quality" / protocol_name(extra)
    archive.mkdir(parents=True, exist_ok=True)
    (archive / "protocol.json").write_text(json.dumps({"recipe": "pretrain_uts", "arguments": extra}) + "\n")
    systems = {"ontology": ("ontology", None)} if args.ontology else {}
    systems.update({f"tags K={k}": ("tags", k) for k in args.vocabulary_sizes})
    cells = [(name, seed) for seed in args.seeds for name in systems]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            (name, seed): pool.submit(
                _run, args.work_dir, archive, *systems[name], seed, extra, args.report_only
            )
            for name, seed in cells
        }
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    for (name, _), future in futures.items():
        if future.result() is not None:
            runs[name].append(future.result())
    runs = {name: r for name, r in runs.items() if r}
    if not runs:
        print("no finished runs")
        return
    table = summarize(runs)
    counts = {name: len(r) for name, r in runs.items()}
    sizes = {name: r[0].get("num_labels") for name, r in runs.items()}
    text = (
        f"seeds {args.seeds} (finished runs per system {counts}); labels per system {sizes}; "
        f"recipe arguments {extra}\n\n{table}\n"
    )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
