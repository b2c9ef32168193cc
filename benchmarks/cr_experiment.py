"""AudioMAE-CR on the embedded corpus: test mAP of the baseline, CR (k = 2, k = 6) and semi-supervised CR.

Every configuration fine-tunes the same small model from scratch on a small labelled split (the
first ``--num_labeled`` training clips), with the same augmentations (mixup, SpecAugment, random
erasing, patch-out), for the same number of steps, over several seeds; the semi-supervised run adds
the remaining training clips as unlabelled audio (their labels are never read). Prints a Markdown
table with mean +- std of test mAP.

    python benchmarks/cr_experiment.py                      # 3 seeds, CPU, about half an hour
    python benchmarks/cr_experiment.py --seeds 0 1 2 3 4 --max_steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "baseline (lambda = 0)": ["--num_views", "1", "--consistency_weight", "0"],
    "CR, k = 2": ["--num_views", "2"],
    "CR, k = 6": ["--num_views", "6"],
    "semi-supervised CR, k = 6": [
        "--num_views",
        "6",
        "--unlabeled_dataset",
        "train_remainder",
        "--unlabeled_ratio",
        "1.0",
    ],
}


def run(config_args: list[str], seed: int, args, out: Path) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "finetune.py"),
        "--preset",
        args.preset,
        "--clip_seconds",
        str(args.clip_seconds),
        "--max_length",
        str(args.max_length),
        "--num_labeled_clips",
        str(args.num_labeled),
        "--consistency_regularization",
        "true",
        "--consistency_weight",
        str(args.weight),
        "--random_erasing_prob",
        "0.25",
        "--per_device_batch_size",
        str(args.batch),
        "--max_steps",
        str(args.max_steps),
        "--learning_rate",
        str(args.lr),
        "--warmup_steps",
        str(args.max_steps // 10),
        "--eval_split",
        "",
        "--eval_steps",
        "0",
        "--checkpointing_steps",
        "0",
        "--logging_steps",
        "50",
        "--seed",
        str(seed),
        "--cpu",
        "true",
        "--disable_progress_bar",
        "true",
        "--num_decode_threads",
        "2",
        "--output_dir",
        str(out),
        *config_args,
    ]
    if args.model_name_or_path:
        # Fine-tune a pre-trained encoder as AudioMAE does: near-zero head, layer-wise lr decay.
        cmd += ["--model_name_or_path", args.model_name_or_path, "--classifier_init_std", "2e-5"]
    if args.layer_decay != 1.0:
        cmd += ["--layer_decay", str(args.layer_decay)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads((out / "eval_results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--preset", default="audiomae-tiny")
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="start every run from this pre-trained encoder (e.g. a recipes/pretrain_audiomae.py output)",
    )
    parser.add_argument("--layer_decay", type=float, default=1.0)
    parser.add_argument("--clip_seconds", type=float, default=3.0)
    parser.add_argument("--max_length", type=int, default=304, help="frames (multiple of 16)")
    parser.add_argument("--num_labeled", type=int, default=200)
    parser.add_argument("--batch", type=int, default=8, help="labelled clips per step")
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight", type=float, default=2.0, help="lambda for the CR runs")
    args = parser.parse_args()
    print(
        f"labelled clips {args.num_labeled}, {args.clip_seconds} s, "
        f"{args.model_name_or_path or args.preset}, layer decay {args.layer_decay}, batch {args.batch}, "
        f"{args.max_steps} steps, lr {args.lr}, lambda {args.weight}, seeds {args.seeds}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            scores = []
            for seed in args.seeds:
                start = time.perf_counter()
                try:
                    result = run(CONFIGS[name], seed, args, Path(tmp) / f"{len(rows)}-{seed}")
                except subprocess.CalledProcessError as err:
                    sys.exit(f"{name}, seed {seed} failed:\n{err.stderr[-3000:]}")
                scores.append(result["test_mAP"])
                print(
                    f"  {name:28s} seed {seed}: test mAP {result['test_mAP']:.4f} "
                    f"({result['test_num_clips']} clips, {time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
            std = statistics.stdev(scores) if len(scores) > 1 else 0.0
            rows.append((name, statistics.mean(scores), std, scores))
    print("\n| configuration | test mAP (mean +- std) | per seed |\n|---|---|---|")
    for name, mean, std, scores in rows:
        print(f"| {name} | {mean:.4f} +- {std:.4f} | {', '.join(f'{s:.4f}' for s in scores)} |")


if __name__ == "__main__":
    main()
