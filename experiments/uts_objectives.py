"""UTS's objective comparison on the embedded corpus: the same Zipformer pre-trained with multi-label tagging
(MTC), autoregressive captioning (AR), parallel decoding (PAR), audio-text contrastive learning and the
multi-task objective ``L_MTC + λ (0.25 L_AR + 0.75 L_PAR)``, each encoder then linear-probed in domain (event
tagging) and out of domain (the corpus's speech-, music- and recording-attribute tasks).

The paper's direction: PAR beats AR on speech tasks (the decoder cannot lean on the language prior, so the
encoder must carry the content) and multi-task gives the most balanced encoder. Every run is
``recipes/pretrain_uts.py`` with the same seed, data (the clips tagged by a K=100 vocabulary mined from the
captions) and steps: the protocol of the 3-seed label-quality sweep with AdamW (docs/benchmarks.md), so the
MTC arm is that sweep's K=100 run, read from its archive. Finished runs are kept in
``experiments/results/uts_objectives/<protocol>/`` (committed): the sweep resumes on a fresh checkout and
``--report_only`` rebuilds the table from whatever has finished:

    python experiments/uts_objectives.py --seeds 0 1 2 --jobs 2

Prints one table, mean +- std over the seeds per objective and task (the probe at initialisation and the
trivial baseline beside it; captioning, retrieval and zero-shot tagging where the objective has them), and
writes it to ``<work_dir>/summary.md``. Arguments after ``--`` replace the protocol's recipe arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _runs import RESULTS, mean_std_cell, run_recipe  # noqa: E402
from uts_label_quality import ARCHIVED_PROBE, protocol_name, summarize  # noqa: E402

OBJECTIVES = ("mtc", "ar", "par", "contrastive", "multitask")
VOCABULARY_SIZE = 100
#: the label-quality sweep's protocol with the optimizer its AdamW arm ran with (the recipe's default now)
PROTOCOL = (
    "--clip_seconds 3 --max_steps 900 --freq_mask 0 --time_mask 0 --logging_steps 50 "
    "--disable_progress_bar true --num_decode_threads 1 "
    "--optimizer adamw --lr_scheduler cosine --learning_rate 2e-3 --max_grad_norm 1"
).split()
#: rows beyond the probes: (label, section of eval_results.json, key)
TEXT_ROWS = (
    ("captioning (AR decoding), test split", "captioning", "bleu_4"),
    ("captioning (AR decoding), test split", "captioning", "cider"),
    ("captioning (PAR decoding), test split", "captioning_parallel", "bleu_4"),
    ("captioning (PAR decoding), test split", "captioning_parallel", "cider"),
    ("audio -> text retrieval, test split", "retrieval", "audio_to_text_R@1"),
    ("audio -> text retrieval, test split", "retrieval", "audio_to_text_R@10"),
    ("text -> audio retrieval, test split", "retrieval", "text_to_audio_R@1"),
    ("text -> audio retrieval, test split", "retrieval", "text_to_audio_R@10"),
    ("zero-shot event tagging, test split", "zero_shot", "mAP"),
)


def _run(work_dir: Path, extra: list[str], objective: str, seed: int, text_field: str, report_only: bool):
    name = f"{objective}_s{seed}" if objective == "mtc" else f"{objective}_{text_field}_s{seed}"
    args = ["--labels", "tags", "--seed", str(seed), *extra, "--vocabulary_size", str(VOCABULARY_SIZE)]
    args += ARCHIVED_PROBE
    if objective == "mtc":
        # The label-quality sweep's K=100 run is this run: the same command, filed under its own protocol.
        archive = (
            RESULTS / "uts_label_quality" / protocol_name(extra) / f"tags_k{VOCABULARY_SIZE}_s{seed}.json"
        )
    else:
        # A tokenizer trained on the corpus captions: the same on a machine that reaches the Hub.
        # (caption is the recipe's default: the caption runs' commands stay those of the first seed-0 runs)
        text = ["--text_field", text_field] if text_field != "caption" else []
        args = ["--objective", objective, *text, "--tokenizer", "corpus", *args]
        if objective == "contrastive":
            # Stated, not left to the recipe's defaults: with Auden's [CLS] text embedding and raw frames
            # both towers, from scratch, stayed collapsed (docs/benchmarks.md, "Why the contrastive model
            # collapsed").
            args += ["--text_pooling", "mean", "--text_frames_norm", "batch"]
        archive = RESULTS / "uts_objectives" / protocol_name(extra) / f"{name}.json"
    return run_recipe(
        "pretrain_uts",
        work_dir / name,
        args,
        report_only=report_only,
        archive=archive,
        env={"OMP_NUM_THREADS": "1"},
    )


def text_rows(runs: dict[str, list[dict]]) -> list[str]:
    """Captioning, retrieval and zero-shot rows for the objectives that have them, and each objective's last
    logged training loss (its own loss: BCE for MTC, cross-entropy for the decoders, InfoNCE, ...)."""
    rows = []
    for label, section, key in TEXT_ROWS:
        cells = [mean_std_cell([r[section][key] for r in runs[s] if key in r.get(section, {})]) for s in runs]
        if any(cells):
            rows.append(f"| {label} | {key} | | | " + " | ".join(cells) + " |")
    losses = [
        mean_std_cell(
            [v for r in runs[s] if (v := r.get("train_results", {}).get("last_log", {}).get("loss"))]
        )
        for s in runs
    ]
    rows.append("| training loss, last logged window | the objective's | | | " + " | ".join(losses) + " |")
    return rows


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else PROTOCOL
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default: 0)")
    parser.add_argument(
        "--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES, help="objectives to compare"
    )
    parser.add_argument(
        "--work_dir", type=Path, default=Path("outputs/uts_objectives"), help="the runs' folders"
    )
    parser.add_argument(
        "--text_field",
        choices=("tags", "caption"),
        default="tags",
        help="text of the AR / PAR / contrastive / multi-task objectives: the clip's tags as the canonical "
        "tag sequence, what UTS decodes (default), or its caption",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    parser.add_argument("--report_only", action="store_true", help="table of finished runs; start none")
    args = parser.parse_args(argv)
    archive = RESULTS / "uts_objectives" / protocol_name(extra)
    archive.mkdir(parents=True, exist_ok=True)
    (archive / "protocol.json").write_text(json.dumps({"recipe": "pretrain_uts", "arguments": extra}) + "\n")
    cells = [(objective, seed) for seed in args.seeds for objective in args.objectives]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {
            cell: pool.submit(_run, args.work_dir, extra, *cell, args.text_field, args.report_only)
            for cell in cells
        }
    runs: dict[str, list[dict]] = {objective: [] for objective in args.objectives}
    for (objective, _), future in futures.items():
        if future.result() is not None:
            runs[objective].append(future.result())
    runs = {objective: r for objective, r in runs.items() if r}
    if not runs:
        print("no finished runs")
        return
    # The label-quality table's probe rows; its BCE rows only mean something for MTC, so they are replaced.
    probe_rows = [row for row in summarize(runs).splitlines() if "BCE" not in row]
    table = "\n".join([*probe_rows, *text_rows(runs)])
    counts = {objective: len(r) for objective, r in runs.items()}
    text = (
        f"seeds {args.seeds} (finished runs per objective {counts}); text {args.text_field}; "
        f"recipe arguments {extra}\n\n{table}\n"
    )
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / f"summary_{args.text_field}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
