"""How `select_C` scored single-label held-out folds before and after it used log-probabilities.

Before the twenty-second session `select_C` ranked each held-out clip by the class's raw logit of the fitted
multinomial model. The softmax ignores a per-clip shift of the logits, so with three or more classes a raw
logit ranks clips otherwise than the class's probability, and `linear_probe` measures its test clips by the
log-probabilities. For one encoder of a UTS run (its random initialisation, rebuilt as
`experiments/uts_reprobe.py` rebuilds it, or the trained one), every single-label attribute task of the
corpus: the 3-fold cross-validated mAP at each C of `C_GRID` scored both ways, the C each way picks, and the
test split's mAP and accuracy at each C (read here only to show which choice was right; `select_C` never
reads it).

    PYTHONPATH=. python experiments/diag_select_C.py outputs/uts_rerun/ar_tags_s1 --encoder initialisation

The embeddings are kept in ``<run>/diag_select_C_<encoder>.npz`` and read from there on a second run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from transformers import AutoFeatureExtractor

from experiments.uts_reprobe import _encoders, _run_arguments
from hf_audiorep.data import load_embedded_corpus
from hf_audiorep.evaluation.linear_probe import C_GRID, fit_linear_classifier, linear_probe, select_C
from hf_audiorep.evaluation.metrics import mean_average_precision
from hf_audiorep.evaluation.task_probes import _task_data, corpus_probe_tasks, embed_splits


def _raw_logit_scores(X, y, folds: int = 3, seed: int = 0) -> dict[float, float]:
    """`select_C`'s held-out mAP per C as it was: the same folds, each clip ranked by the raw logits."""
    Y = np.eye(int(y.max()) + 1, dtype=np.float32)[y]
    parts = np.array_split(np.random.default_rng(seed).permutation(len(X)), folds)
    scores = {}
    for C in C_GRID:
        held_out = []
        for k, part in enumerate(parts):
            fit = np.concatenate([p for j, p in enumerate(parts) if j != k])
            weight, bias = fit_linear_classifier(X[fit], Y[fit], multi_label=False, C=C)
            held_out.append(mean_average_precision(X[part] @ weight.T + bias, Y[part]).mAP)
        scores[C] = float(np.mean(held_out))
    return scores


def _pick(scores: dict[float, float]) -> float:
    return max(scores, key=lambda C: (scores[C], -C))  # select_C's rule: ties to the smaller C


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="an output folder of recipes/pretrain_uts.py")
    parser.add_argument("--encoder", choices=("initialisation", "trained"), default="initialisation")
    args = parser.parse_args()
    arguments = _run_arguments(args.run)
    clip_seconds = float(arguments.get("clip_seconds", 3.0))
    corpus = load_embedded_corpus(seed=int(arguments.get("corpus_seed", 0)), clip_seconds=clip_seconds)
    splits = {"train": corpus["train"], "test": corpus["test"]}
    cache = args.run / f"diag_select_C_{args.encoder}.npz"
    if cache.exists():
        saved = np.load(cache)
        embedded = {role: tuple(saved[f"{role}_{k}"] for k in "XYi") for role in splits}
    else:
        encoder = _encoders(args.run, int(arguments.get("seed", 0)))[args.encoder]
        feature_extractor = AutoFeatureExtractor.from_pretrained(args.run)
        embedded = embed_splits(encoder.base_model, feature_extractor, splits, clip_seconds=clip_seconds)
        arrays = {f"{role}_{k}": v for role in embedded for k, v in zip("XYi", embedded[role], strict=True)}
        np.savez(cache, **arrays)
    grid = ", ".join(f"{C:g}" for C in C_GRID)
    print(f"{args.run} ({args.encoder}): single-label attribute tasks, mAP per C ({grid})")
    for task in corpus_probe_tasks():
        if task.multi_label:
            continue
        (X, y), (test_X, test_y) = (_task_data(task, splits[role], *embedded[role]) for role in splits)
        rows = {
            "held-out, raw logits (before)": _raw_logit_scores(X, y),
            "held-out, log-probabilities (now)": select_C(X, y, multi_label=False)[1],
        }
        test = {C: linear_probe(X, y, test_X, test_y, multi_label=False, C=C) for C in C_GRID}
        print(f"\n{task.name}: {int(y.max()) + 1} classes, {len(X)} train / {len(test_X)} test clips")
        for label, scores in rows.items():
            cells = " ".join(f"{scores[C]:.3f}" for C in C_GRID)
            print(f"  {label:34s} {cells}   picks C={_pick(scores):g}")
        for metric in ("probe_mAP", "probe_accuracy"):
            cells = " ".join(f"{test[C][metric]:.3f}" for C in C_GRID)
            print(f"  {'test ' + metric.removeprefix('probe_'):34s} {cells}")


if __name__ == "__main__":
    main()
