"""Issue "UTS, part 1": Zipformer-small trained with MTC (on the ontology or on mined tags) against
AudioMAE-tiny (MAE) and CAT-small (bootstrap), each pre-trained by its own recipe for the same CPU time on
the corpus's 3-s clips, every encoder linear-probed on the same tasks: event tagging (in domain) and the
attribute tasks the ontology does not name (out of domain). Each is shown beside its random initialisation.

The Zipformer runs are those of ``experiments/uts_label_quality.py`` (its protocol, read from
``experiments/results/uts_label_quality/``); their mean training time sets the budget. AudioMAE-tiny and
CAT-small get the number of steps that fits that budget in CPU time, measured from two short runs of each
recipe (one thread; so start-up cancels out). Results are kept in ``experiments/results/uts_encoders/``
(committed), so the comparison resumes on a fresh checkout:

    OMP_NUM_THREADS=1 python experiments/uts_encoders.py --seeds 0 --vocabulary_size 100

Prints the table (mean +- std over seeds) and writes it to ``<work_dir>/summary.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoModel, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import RESULTS, cpu_run, mean_attribute_accuracy, mean_std_cell  # noqa: E402
from uts_label_quality import PROTOCOL, protocol_name  # noqa: E402

import hf_audiorep  # noqa: E402
from hf_audiorep.data.embedded import load_embedded_corpus  # noqa: E402
from hf_audiorep.evaluation import corpus_probe_tasks, probe_tasks  # noqa: E402
from hf_audiorep.modeling import AudioFbankFeatureExtractor  # noqa: E402

CLIP_SECONDS = 3.0
FRAMES = 304  # 3 s at 100 frames/s, rounded up to whole 16-frame patches
# name -> (pre-training recipe, preset, recipe arguments besides the defaults)
ENCODERS = {
    "AudioMAE-tiny": (
        "pretrain_audiomae",
        "audiomae-tiny",
        ["--max_length", str(FRAMES), "--per_device_batch_size", "32", "--learning_rate", "1e-3"],
    ),
    "CAT-small": ("pretrain_cat", "cat-small", ["--max_length", str(FRAMES)]),
}
COMMON = [
    "--clip_seconds",
    str(CLIP_SECONDS),
    "--cpu",
    "true",
    "--num_decode_threads",
    "1",
    "--eval_on_start",
    "false",
]
CALIBRATION_STEPS = (5, 25)
METRICS = ("probe_mAP", "probe_accuracy")
ZIPFORMER_RUNS = RESULTS / "uts_label_quality" / protocol_name(PROTOCOL)


def _pretrain_args(recipe_args: list[str], preset: str, steps: int, seed: int) -> list[str]:
    args = [*COMMON, "--preset", preset, *recipe_args, "--max_steps", str(steps), "--seed", str(seed)]
    args += ["--disable_progress_bar", "true", "--checkpointing_steps", "0", "--eval_steps", "0"]
    return [*args, "--probe_dataset", ""]  # probed below, on every task


def _pretrain(work_dir: Path, name: str, budget_seconds: float, seed: int) -> tuple[Path, dict]:
    recipe, preset, extra = ENCODERS[name]
    cpu = {}
    for steps in CALIBRATION_STEPS:
        args = [*_pretrain_args(extra, preset, steps, 0), "--warmup_steps", "1"]
        cpu[steps] = cpu_run(recipe, work_dir / f"calibrate_{preset}_{steps}", args, "train_results.json")
    short, long = CALIBRATION_STEPS
    per_step = (cpu[long] - cpu[short]) / (long - short)
    steps = max(20, math.floor(budget_seconds / per_step))
    output = work_dir / f"pretrain_{preset}_s{seed}"
    args = [*_pretrain_args(extra, preset, steps, seed), "--warmup_steps", str(max(1, steps // 20))]
    cpu_seconds = cpu_run(recipe, output, args, "train_results.json")
    return output, {"steps": steps, "cpu_seconds_per_step": per_step, "cpu_seconds": cpu_seconds}


def _probe(model, feature_extractor) -> dict:
    corpus = load_embedded_corpus(seed=0, clip_seconds=CLIP_SECONDS)
    splits = {"train": corpus["train"], "test": corpus["test"]}
    model.eval()
    with torch.no_grad():
        return probe_tasks(model, feature_extractor, splits, corpus_probe_tasks(), clip_seconds=CLIP_SECONDS)


def _random_init(preset: str, seed: int):
    set_seed(seed)
    config = hf_audiorep.config_from_preset(preset, max_length=FRAMES)
    return AutoModel.from_config(config), AudioFbankFeatureExtractor(target_length=FRAMES)


def _encoder_results(work_dir: Path, name: str, budget: float, seed: int) -> dict:
    archive = RESULTS / "uts_encoders" / f"{ENCODERS[name][1]}_s{seed}.json"
    if archive.exists():
        return json.loads(archive.read_text())
    output, info = _pretrain(work_dir, name, budget, seed)
    model = AutoModel.from_pretrained(output)
    trained = _probe(model, AutoFeatureExtractor.from_pretrained(output))
    initial = _probe(*_random_init(ENCODERS[name][1], seed))
    results = {**info, "budget_seconds": budget, "probes": trained, "probes_at_initialisation": initial}
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_text(json.dumps(results, indent=1) + "\n")
    return results


def _zipformer_runs(labels: str, k: int | None, seeds: list[int]) -> list[dict]:
    """The finished Zipformer runs of the label-quality protocol for these seeds (any may be missing)."""
    name = f"{labels}{'' if k is None else f'_k{k}'}"
    runs = [ZIPFORMER_RUNS / f"{name}_s{seed}.json" for seed in seeds]
    return [json.loads(path.read_text()) for path in runs if path.exists()]


def _budget_seconds() -> float:
    """Mean training time of every finished Zipformer run of the protocol (one thread each), fixed by the
    first encoder run archived: later seeds get the same budget (the mean moves as runs finish under
    different loads, and seeds must differ only in their seed)."""
    fixed = {
        json.loads(path.read_text())["budget_seconds"] for path in (RESULTS / "uts_encoders").glob("*.json")
    }
    if len(fixed) > 1:
        raise SystemExit(
            f"the archived encoder runs in {RESULTS / 'uts_encoders'} have different budgets {fixed}"
        )
    if fixed:
        return fixed.pop()
    times = [
        json.loads(path.read_text()).get("train_results", {}) for path in ZIPFORMER_RUNS.glob("*_s*.json")
    ]
    times = [t["train_runtime"] for t in times if "train_runtime" in t]
    if not times:
        raise SystemExit(
            f"no finished Zipformer run in {ZIPFORMER_RUNS}: run experiments/uts_label_quality.py"
        )
    return float(np.mean(times))


def _table(columns: dict[str, list[dict]]) -> str:
    """Rows: task x metric (and the mean attribute accuracy); columns: chance, then each encoder, after its
    architecture's random initialisation (once: the Zipformer runs of one seed share theirs)."""
    reference = next(iter(columns.values()))
    cells_of = {"chance": lambda runs, value: [value(r["probes"], "chance") for r in reference]}
    header, getters = ["task", "metric", "chance"], [cells_of["chance"]]
    shown_inits = set()
    for name, runs in columns.items():
        architecture = name.split()[0]
        if architecture not in shown_inits:
            shown_inits.add(architecture)
            header.append(f"{architecture} init")
            getters.append(lambda _, value, runs=runs: [value(r["probes_at_initialisation"]) for r in runs])
        header.append(name)
        getters.append(lambda _, value, runs=runs: [value(r["probes"]) for r in runs])
    rows = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for key in reference[0]["probes"]:
        task, metric = key.split("/", 1)
        if metric not in METRICS:
            continue
        short = metric.removeprefix("probe_")

        def value(probes, kind="probe", task=task, short=short):
            return probes[f"{task}/{kind}_{short}"]

        cells = [mean_std_cell(get(None, value)) for get in getters]
        rows.append(f"| {task} | {short} | " + " | ".join(cells) + " |")
    cells = [mean_std_cell(get(None, mean_attribute_accuracy)) for get in getters]
    rows.append("| attributes (mean of the tasks above) | accuracy | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="pre-training seeds (default: 0)")
    parser.add_argument(
        "--vocabulary_size", type=int, default=100, help="K of the mined-tag Zipformer shown (default: 100)"
    )
    parser.add_argument(
        "--work_dir", type=Path, default=Path("outputs/uts_encoders"), help="the runs' folders"
    )
    args = parser.parse_args()
    zipformer = {
        "Zipformer ontology": _zipformer_runs("ontology", None, args.seeds),
        f"Zipformer tags K={args.vocabulary_size}": _zipformer_runs("tags", args.vocabulary_size, args.seeds),
    }
    # The Zipformer runs' training time: the budget every other encoder gets in CPU time.
    budget = _budget_seconds()
    others = {}
    for name in ENCODERS:
        others[name] = [_encoder_results(args.work_dir, name, budget, seed) for seed in args.seeds]
    zipformer = {name: runs for name, runs in zipformer.items() if runs}
    table = _table({**zipformer, **others})
    steps = {name: [r["steps"] for r in runs] for name, runs in others.items()}
    text = f"budget {budget:.0f} CPU s per encoder; steps {steps}; seeds {args.seeds}\n\n{table}\n"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
