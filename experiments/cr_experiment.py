"""AudioMAE-CR on the embedded corpus: test mAP of the baseline, CR (k = 2, k = 6) and semi-supervised CR.

Every configuration fine-tunes the same model on a small labelled split (the first ``--num_labeled``
training clips), with the same augmentations (mixup, SpecAugment, random erasing, patch-out), for the same
number of steps, over several seeds; the semi-supervised run adds the remaining training clips as
unlabelled audio (their labels are never read). Prints a Markdown table with mean +- std of test mAP.

As in the paper, the encoder should be pre-trained: a tiny ViT trained from scratch for a few hundred CPU
steps stays near the label prior whatever the loss (docs/benchmarks.md). The measured protocol:

    python recipes/pretrain_audiomae.py --clip_seconds 3 --max_length 304 --per_device_batch_size 32 \
        --max_steps 2000 --learning_rate 1e-3 --warmup_steps 100 --output_dir outputs/mae-tiny-corpus
    python experiments/cr_experiment.py --model_name_or_path outputs/mae-tiny-corpus --lr 1e-2 \
        --layer_decay 0.5 --max_steps 300 --jobs 2

``--configs`` picks the rows by short name (baseline, views2, cr2, cr6, semi2, semi6;
default: baseline, cr2, cr6, semi6).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The semi-supervised runs add the other training clips as unlabelled audio, one per labelled clip.
_UNLABELED = ["--unlabeled_dataset", "train_remainder", "--unlabeled_ratio", "1.0"]
# short name: (table row, recipe arguments)
CONFIGS = {
    "baseline": ("baseline (lambda = 0)", ["--num_views", "1", "--consistency_weight", "0"]),
    # Control: k = 2 views with BCE on each but no consistency term, which separates the effect of the
    # term from that of seeing twice as many augmented views per step.
    "views2": ("2 views, lambda = 0", ["--num_views", "2", "--consistency_weight", "0"]),
    "cr2": ("CR, k = 2", ["--num_views", "2"]),
    "cr6": ("CR, k = 6", ["--num_views", "6"]),
    "semi2": ("semi-supervised CR, k = 2", ["--num_views", "2", *_UNLABELED]),
    "semi6": ("semi-supervised CR, k = 6", ["--num_views", "6", *_UNLABELED]),
}
DEFAULT_CONFIGS = ["baseline", "cr2", "cr6", "semi6"]


def _relative_cost(config_args: list[str]) -> float:
    """Encoder passes per labelled clip: the views, times two when an unlabelled clip joins each one."""
    views = int(config_args[config_args.index("--num_views") + 1])
    return views * (2 if "--unlabeled_dataset" in config_args else 1)


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
        str(args.random_erasing_prob),
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
        "1",
        "--output_dir",
        str(out),
        *config_args,
    ]
    # SpecAugment's time mask scales with the clip: AudioMAE's 192 frames are for 1024-frame inputs.
    time_mask = args.time_mask if args.time_mask is not None else round(192 * args.max_length / 1024)
    cmd += ["--freq_mask", str(args.freq_mask), "--time_mask", str(time_mask)]
    cmd += ["--mixup_prob", str(args.mixup_prob)]
    if args.model_name_or_path:
        cmd += ["--model_name_or_path", args.model_name_or_path]
    if args.classifier_init_std is not None:
        cmd += ["--classifier_init_std", str(args.classifier_init_std)]
    if args.layer_decay != 1.0:
        cmd += ["--layer_decay", str(args.layer_decay)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = "1"  # parallel runs on one thread each: oversubscribed cores run far slower
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return json.loads((out / "eval_results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--preset", default="audiomae-tiny")
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="start every run from this pre-trained encoder (e.g. a recipes/pretrain_audiomae.py output)",
    )
    parser.add_argument("--layer_decay", type=float, default=1.0)
    parser.add_argument("--classifier_init_std", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--mixup_prob", type=float, default=0.5, help="AudioMAE: 0.5 (once per clip)")
    parser.add_argument("--freq_mask", type=int, default=48)
    parser.add_argument("--random_erasing_prob", type=float, default=0.25, help="AudioMAE-CR: 0.25")
    parser.add_argument("--time_mask", type=int, default=None, help="default: 192 frames per 1024")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each on one CPU thread)")
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
        f"{args.max_steps} steps, lr {args.lr}, lambda {args.weight}, mixup {args.mixup_prob}, "
        f"SpecAugment {args.freq_mask}/{'scaled' if args.time_mask is None else args.time_mask}, "
        f"random erasing {args.random_erasing_prob}, seeds {args.seeds}",
        flush=True,
    )
    runs = [(name, seed) for name in args.configs for seed in args.seeds]
    scores: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:

        def one(index: int, name: str, seed: int) -> None:
            start = time.perf_counter()
            try:
                result = run(CONFIGS[name][1], seed, args, Path(tmp) / f"{index}-{seed}")
            except subprocess.CalledProcessError as err:
                raise SystemExit(f"{CONFIGS[name][0]}, seed {seed} failed:\n{err.stderr[-3000:]}") from err
            scores[name, seed] = result["test_mAP"]
            print(
                f"  {CONFIGS[name][0]:28s} seed {seed}: test mAP {result['test_mAP']:.4f} "
                f"({result['test_num_clips']} clips, {time.perf_counter() - start:.0f} s)",
                flush=True,
            )

        # The costliest runs (most views, unlabelled clips) first, so that parallel jobs finish together.
        order = sorted(range(len(runs)), key=lambda i: -_relative_cost(CONFIGS[runs[i][0]][1]))
        for future in [pool.submit(one, i, *runs[i]) for i in order]:
            future.result()
    rows = []
    for name in args.configs:
        values = [scores[name, seed] for seed in args.seeds]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append((CONFIGS[name][0], statistics.mean(values), std, values))
    print("\n| configuration | test mAP (mean +- std) | per seed |\n|---|---|---|")
    for name, mean, std, scores in rows:
        print(f"| {name} | {mean:.4f} +- {std:.4f} | {', '.join(f'{s:.4f}' for s in scores)} |")


if __name__ == "__main__":
    main()
