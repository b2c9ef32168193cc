"""Re-probe finished UTS runs, their trained encoder and the random initialisation it started from, with
each of several probe penalties: does the objective comparison's verdict depend on the probe's C?

The comparison's archived runs (`experiments/uts_objectives.py`, `experiments/uts_label_quality.py`) probed
at C=1. A fixed C favours some encoders over others (docs/benchmarks.md, "A linear probe fitted to its
optimum"), and the comparison's "no better than the random initialisation" is a comparison of two encoders.
For each RUN (an output folder of `recipes/pretrain_uts.py` on the embedded corpus), the initialisation is
rebuilt as the recipe builds it (the run's seed, then its model class from its saved config) and checked
against the run's own probes: one of the C columns (the run's own C: 1, or ``auto``, the recipe's default
now) must repeat ``probes_at_initialisation`` and ``probes`` of its eval_results.json, or the script stops.
Each split is embedded once per encoder; every C fits on the same embeddings.

    PYTHONPATH=. python experiments/uts_reprobe.py outputs/uts_rerun/{mtc_s0,ar_tags_s0,par_tags_s0} \\
        --C 1 auto

Prints one table per run, then one row per run (events mAP, the attribute tasks' mean accuracy and how many of
them the trained encoder is ahead of its initialisation on, at each C), and writes ``<run>/reprobe.json``;
``--archive DIR`` copies it to ``DIR/<run name>.json``, and a run already there is read, not probed again.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import time
from pathlib import Path

from transformers import AutoConfig, AutoFeatureExtractor, set_seed

import hf_audiorep.modeling
from experiments._runs import mean_std_cell
from hf_audiorep.data import load_embedded_corpus
from hf_audiorep.evaluation.linear_probe import parse_C
from hf_audiorep.evaluation.task_probes import corpus_probe_tasks, embed_splits, fit_task_probes

#: how close the rebuilt probes must come to the run's own (float32 embeddings, same fit)
TOLERANCE = 1e-4


def _run_arguments(run: Path) -> dict[str, str]:
    """The recipe options the run was started with (``--name value`` pairs of its recorded command)."""
    command = json.loads((run / "train_results.json").read_text())["training_command"]
    words = shlex.split(command)
    return {w[2:]: v for w, v in zip(words, [*words[1:], ""], strict=True) if w.startswith("--")}


def _encoders(run: Path, seed: int):
    """The run's random initialisation (rebuilt) and its trained model."""
    config = AutoConfig.from_pretrained(run)
    model_class = getattr(hf_audiorep.modeling, config.architectures[0])
    set_seed(seed)  # as the recipe does, right before it builds the model
    initial = model_class(config)
    return {"initialisation": initial.eval(), "trained": model_class.from_pretrained(run).eval()}


def _check_against_run(name: str, columns: dict[str, dict], recorded: dict) -> str:
    """The column of ``columns`` that repeats the run's own probes (fitted at the C the run used), or exit.

    Only the tasks probed at the same C are compared: a run that chose C by cross-validation before
    `select_C` scored single-label folds by their log-probabilities may have chosen another C for a task
    of three or more classes; its multi-label events probe must still be repeated."""

    def compared(ours: dict) -> list[str]:
        tasks = {k.split("/")[0] for k in recorded if k.endswith("/probe_C") and recorded[k] == ours.get(k)}
        return [k for k in recorded if re.search(r"/probe_(mAP|accuracy)$", k) and k.split("/")[0] in tasks]

    worst = {}
    for column, ours in columns.items():
        keys = compared(ours)
        if "events/probe_mAP" in keys:
            worst[column] = max(abs(ours[k] - recorded[k]) for k in keys)
    # Of the columns that repeat the run, the one that repeats it on the most tasks (a column at C=1 also
    # repeats a cross-validated run on every task where cross-validation chose 1, events often among them).
    best = (
        min(worst, key=lambda c: (worst[c] > TOLERANCE, -len(compared(columns[c])), worst[c]))
        if worst
        else None
    )
    if best is None or worst[best] > TOLERANCE:
        closest = f"closest: {best}, off by {worst[best]:.4f}" if best else "no column fits events at its C"
        raise SystemExit(
            f"{name}: no probe column repeats the run's own probes ({closest}): the encoder or the data "
            "is not the run's, or the run probed at a C not given to --C"
        )
    tasks = {k.split("/")[0] for k in compared(columns[best])}
    print(f"{name}: {best} repeats the run's probes on {len(tasks)} tasks", flush=True)
    return best


def reprobe(run: Path, Cs: list, clip_seconds: float) -> dict:
    results = json.loads((run / "eval_results.json").read_text())
    arguments = _run_arguments(run)
    seed = int(arguments.get("seed", 0))
    clip_seconds = float(arguments.get("clip_seconds", clip_seconds))
    corpus = load_embedded_corpus(seed=int(arguments.get("corpus_seed", 0)), clip_seconds=clip_seconds)
    splits = {"train": corpus["train"], "test": corpus["test"]}
    tasks = corpus_probe_tasks()
    feature_extractor = AutoFeatureExtractor.from_pretrained(run)
    out: dict = {"run": str(run), "objective": results.get("objective"), "seed": seed, "probes": {}}
    for role, encoder in _encoders(run, seed).items():
        start = time.perf_counter()
        embedded = embed_splits(encoder.base_model, feature_extractor, splits, clip_seconds=clip_seconds)
        columns = {f"{role}, C={C}": fit_task_probes(embedded, splits, tasks, C=C) for C in Cs}
        recorded = results["probes_at_initialisation" if role == "initialisation" else "probes"]
        out[f"{role}_repeats_the_run"] = _check_against_run(f"{run} {role}", columns, recorded)
        out["probes"].update(columns)
        print(f"{run} {role}: {time.perf_counter() - start:.0f} s", flush=True)
    return out


def _attribute_accuracies(probes: dict) -> dict[str, float]:
    return {k.split("/")[0]: v for k, v in probes.items() if k.endswith("/probe_accuracy")}


def _reading(out: dict, C) -> dict[str, float]:
    """Events mAP, the attribute tasks' mean accuracy and the speech tasks' mean mAP of a run's two encoders
    at one C, their differences (trained minus initialisation), the number of attribute tasks the trained one
    is ahead on, and the binomial standard error of the trained attribute mean on this few test clips (the
    scale of the test split's sampling noise)."""
    initial, trained = (out["probes"][f"{role}, C={C}"] for role in ("initialisation", "trained"))
    a, b = _attribute_accuracies(initial), _attribute_accuracies(trained)
    reading = {
        "events, initialisation": initial["events/probe_mAP"],
        "events, trained": trained["events/probe_mAP"],
        "attributes, initialisation": sum(a.values()) / len(a),
        "attributes, trained": sum(b.values()) / len(b),
    }
    reading["events, difference"] = reading["events, trained"] - reading["events, initialisation"]
    reading["attributes, difference"] = reading["attributes, trained"] - reading["attributes, initialisation"]
    # the paper's speech comparison (PAR 38.78 vs AR 29.87): the corpus's speech-like tasks, mean mAP
    for role, probes in (("initialisation", initial), ("trained", trained)):
        speech = [v for k, v in probes.items() if k.startswith("speech_") and k.endswith("/probe_mAP")]
        reading[f"speech mAP, {role}"] = sum(speech) / len(speech)
    reading["speech mAP, difference"] = reading["speech mAP, trained"] - reading["speech mAP, initialisation"]
    reading["attribute tasks ahead"] = sum(b[task] > a[task] for task in a)
    variance = sum(p * (1 - p) / trained[f"{task}/probe_num_clips"] for task, p in b.items())
    reading["attributes, standard error"] = variance**0.5 / len(b)
    return reading


def summary(outs: list[dict], Cs: list) -> str:
    """One row per run: events mAP and the attribute tasks' mean accuracy, initialisation -> trained, and how
    many attribute tasks the trained encoder is ahead of its initialisation on, at each C."""
    header = "| run | objective | " + " | ".join(
        f"events mAP, C={C} | attributes mean accuracy, C={C} | attribute tasks ahead, C={C}" for C in Cs
    )
    rows = [header + " |", "|---|---|" + "---:|---:|---:|" * len(Cs)]
    for out in outs:
        cells = []
        for C in Cs:
            r = _reading(out, C)
            num_tasks = len(_attribute_accuracies(out["probes"][f"trained, C={C}"]))
            cells += [
                f"{r['events, initialisation']:.3f} -> {r['events, trained']:.3f}",
                f"{r['attributes, initialisation']:.3f} -> {r['attributes, trained']:.3f} "
                f"(SE {r['attributes, standard error']:.3f})",
                f"{r['attribute tasks ahead']} of {num_tasks}",
            ]
        rows.append(f"| {Path(out['run']).name} | {out['objective']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def seed_summary(outs: list[dict], Cs: list) -> str:
    """Mean ± std over the seeds of each objective: events mAP and attribute mean accuracy of the
    initialisation and the trained encoder, and the per-seed differences (each seed's trained encoder minus
    its own initialisation: the initialisations differ by seed too), at each C."""
    by_objective: dict[str, list[dict]] = {}
    for out in outs:
        by_objective.setdefault(out["objective"], []).append(out)
    keys = list(_reading(outs[0], Cs[0]))
    rows = []
    for C in Cs:
        rows += [
            f"C={C}",
            "",
            "| objective | seeds | " + " | ".join(keys) + " |",
            "|---|---|" + "---:|" * len(keys),
        ]
        for objective, runs in by_objective.items():
            readings = [_reading(out, C) for out in runs]
            seeds = ", ".join(str(out["seed"]) for out in runs)
            cells = [
                mean_std_cell([r[k] for r in readings], digits=1 if k.endswith("ahead") else 3) for k in keys
            ]
            rows.append(f"| {objective} | {seeds} | " + " | ".join(cells) + " |")
        rows.append("")
    return "\n".join(rows)


def table(out: dict) -> str:
    columns = list(out["probes"])
    first = out["probes"][columns[0]]
    rows = [
        f"{out['run']} ({out['objective']}, seed {out['seed']})",
        "",
        "| task | metric | chance | " + " | ".join(columns) + " |",
        "|---|---|---:|" + "---:|" * len(columns),
    ]
    for key in first:
        task, metric = key.split("/", 1)
        if metric not in ("probe_mAP", "probe_accuracy"):
            continue
        name = metric.removeprefix("probe_")
        cells = [f"{out['probes'][c][key]:.3f} (C={out['probes'][c][f'{task}/probe_C']:g})" for c in columns]
        rows.append(f"| {task} | {name} | {first[f'{task}/chance_{name}']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of recipes/pretrain_uts.py")
    parser.add_argument(
        "--C", nargs="+", default=["1", "auto"], help="probe penalties: numbers or auto (default: 1 auto)"
    )
    parser.add_argument(
        "--clip_seconds", type=float, default=3.0, help="clip length of a run whose command does not give one"
    )
    parser.add_argument("--archive", type=Path, default=None, help="folder to copy each run's JSON to")
    args = parser.parse_args()
    Cs = [parse_C(C) for C in args.C]
    outs = []
    for run in args.runs:
        archived = args.archive / f"{run.name}.json" if args.archive is not None else None
        if archived is not None and archived.exists():
            out = json.loads(archived.read_text())
        else:
            out = reprobe(run, Cs, args.clip_seconds)
            text = json.dumps(out, indent=1) + "\n"
            (run / "reprobe.json").write_text(text)
            if archived is not None:
                archived.parent.mkdir(parents=True, exist_ok=True)
                archived.write_text(text)
        outs.append(out)
        print(table(out), flush=True)
    print(summary(outs, Cs))
    if len({out["objective"] for out in outs}) < len(outs):  # some objective has several seeds
        print(seed_summary(outs, Cs))


if __name__ == "__main__":
    main()
