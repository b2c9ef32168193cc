"""UTS's label-quality experiment on the embedded corpus: the same Zipformer trained with MTC on the event
ontology (the AudioSet-like labels) or on tag vocabularies of several sizes mined from the captions, each
encoder then linear-probed in domain (event tagging) and out of domain (the corpus's attribute tasks).

The paper's direction: mined tags win out of domain, ontology labels in domain, and an intermediate
vocabulary size is best. Every run is ``recipes/pretrain_uts.py`` with the same seed, data and steps; a
finished run (its ``eval_results.json`` exists) is reused, so an interrupted sweep resumes.

    python experiments/uts_label_quality.py --seeds 0 1 2 --vocabulary_sizes 25 100 256 \
        --work_dir outputs/uts_label_quality

Prints one table, mean +- std over the seeds per label system and task (the probe at initialisation and
the trivial baseline beside it), and writes it to ``<work_dir>/summary.md``. Arguments after ``--`` go to
every recipe run (e.g. ``-- --clip_seconds 4 --max_steps 400``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("probe_mAP", "probe_accuracy")


def _run(output_dir: Path, labels: str, k: int | None, seed: int, extra: list[str]) -> dict:
    results = output_dir / "eval_results.json"
    if not results.exists():
        command = [sys.executable, str(ROOT / "recipes" / "pretrain_uts.py"), "--labels", labels]
        command += ["--seed", str(seed), "--output_dir", str(output_dir), *extra]
        if k is not None:
            command += ["--vocabulary_size", str(k)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(results.read_text())


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    return f"{np.mean(values):.4f} ± {np.std(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


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
        cells = [_cell([c for c in chance if c is not None]), _cell(initial)]
        cells += [_cell([r["probes"][key] for r in runs[system]]) for system in systems]
        rows.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--vocabulary_sizes", type=int, nargs="+", default=[25, 100, 256])
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/uts_label_quality"))
    args = parser.parse_args(argv)
    systems = {"ontology": ("ontology", None), **{f"tags K={k}": ("tags", k) for k in args.vocabulary_sizes}}
    runs: dict[str, list[dict]] = {name: [] for name in systems}
    for seed in args.seeds:
        for name, (labels, k) in systems.items():
            directory = args.work_dir / f"{labels}{'' if k is None else f'_k{k}'}_s{seed}"
            runs[name].append(_run(directory, labels, k, seed, extra))
    table = summarize(runs)
    sizes = {name: r[0].get("num_labels") for name, r in runs.items()}
    text = f"seeds {args.seeds}; labels per system {sizes}; recipe arguments {extra}\n\n{table}\n"
    (args.work_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
