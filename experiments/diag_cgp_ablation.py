"""Which part of CGP keeps it below a properly fitted linear probe? (Issue "BAT and Convex Gated Probing",
docs/benchmarks.md "Why CGP stays below the linear probe".)

On each feature cache (a ``recipes/probe.py`` cache directory with ``train`` and ``test`` splits), the heads'
seed ``--seed``, the tokens centred on their position's means where the recipe's ``--center_positions auto``
would, every variant trained and scored like the recipe's CGP (AdamW, 100 epochs), each reported with its
train and test mAP (train mAP far above test: the head over-fits; both low: it cannot fit):

- ``cgp``: the recipe's CGP, top-k 1 (max over tokens);
- ``cgp, mean over tokens``: the prototype scores averaged over the real tokens instead of maxed;
- ``cgp, standardised scores``: each prototype's pooled score standardised over the batch (BatchNorm without
  affine, running statistics in evaluation) before the non-negative class weights, as the linear heads
  standardise their pooled vector;
- ``cgp, J=1``: one prototype per class instead of 10;
- ``prototype, last layer``: the prototype head without gates;
- ``cgp, top-K mean in evaluation too``: the top-K mean of the prototype scores in training and evaluation
  (the recipe evaluates the max);
- ``cgp, learned score scale``: the pooled scores multiplied by a learned ``exp(s)``, ``s`` starting at 0 (a
  cosine classifier's temperature);
- ``linear on CGP's gated tokens``: the trained CGP's convex combination of the layers, mean-pooled, under
  the library's L-BFGS logistic regression with C chosen by cross-validation on the train clips;
- ``linear, last layer``: the same L-BFGS fit of the last layer's mean token (the probe table's "linear
  (L-BFGS, CV)" fit).

The first five variants run by default (``--variants`` picks others); the two linear fits follow ``cgp``.
``--epochs N ...`` trains each variant for each N instead (no linear fits):

    OMP_NUM_THREADS=1 python experiments/diag_cgp_ablation.py outputs/probe_table/cache/pretrain_cat-small \\
        outputs/probe_table/cache/pretrain_bat-small outputs/probe_table/cache/pretrain_audiomae-tiny
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from hf_audiorep.evaluation.linear_probe import C_GRID, fit_linear_classifier, select_C
from hf_audiorep.evaluation.metrics import mean_average_precision
from hf_audiorep.evaluation.probing import FeatureCache, build_probe, evaluate_probe, train_probe
from hf_audiorep.evaluation.probing.heads import masked_mean

VARIANTS = (
    "cgp",
    "cgp, mean over tokens",
    "cgp, standardised scores",
    "cgp, J=1",
    "prototype, last layer",
    "cgp, top-3 mean in evaluation too",
    "cgp, top-8 mean in evaluation too",
    "cgp, learned score scale",
)


def _mean_pool(similarities: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """The prototype scores averaged over the real tokens, in training and evaluation alike."""
    return masked_mean(similarities, token_mask, dim=1)


def build_variant(variant: str, cache: FeatureCache):
    shape = (cache.num_layers, cache.hidden_size, cache.num_labels)
    if variant == "prototype, last layer":
        return build_probe("prototype", *shape, topk=1)
    head = build_probe("cgp", *shape, topk=1, prototypes_per_class=1 if variant == "cgp, J=1" else 10)
    prototypes = head.prototype_head
    if variant == "cgp, mean over tokens":
        prototypes.pool = _mean_pool
    elif variant.startswith("cgp, top-"):
        k = int(variant.split("-")[1].split()[0])
        prototypes.topk = k
        train_mode_pool = prototypes.pool

        def pool(similarities, token_mask):
            was_training = prototypes.training
            prototypes.training = True  # the top-k mean, not the max, in evaluation too
            try:
                return train_mode_pool(similarities, token_mask)
            finally:
                prototypes.training = was_training

        prototypes.pool = pool
    elif variant == "cgp, learned score scale":
        # A cosine classifier's temperature: the scores' spread between clips is small against the logits
        # BCE wants, and the class weights grow only at the optimiser's pace.
        prototypes.log_scale = nn.Parameter(torch.zeros(()))
        pool = prototypes.pool
        prototypes.pool = (
            lambda similarities, token_mask: pool(similarities, token_mask) * prototypes.log_scale.exp()
        )
    elif variant == "cgp, standardised scores":
        # A submodule of the head, so that train()/eval() switch it between batch and running statistics.
        prototypes.score_norm = nn.BatchNorm1d(prototypes.prototypes.shape[0], affine=False)
        pool = prototypes.pool
        prototypes.pool = lambda similarities, token_mask: prototypes.score_norm(
            pool(similarities, token_mask)
        )
    return head


@torch.no_grad()
def mean_tokens(head, cache: FeatureCache, layer_weights: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Every clip's mean over its real tokens of the convex combination ``layer_weights`` of the layers as the
    head reads them (normalised, centred when it centres): ``(clips, dim)``."""
    rows = []
    for start in range(0, len(cache), batch_size):
        features, mask = head.prepare(*cache.read(slice(start, start + batch_size))[:2])
        tokens = torch.einsum("bltd,l->btd", features, layer_weights)
        rows.append(masked_mean(tokens, mask, dim=1).double().numpy())
    return np.concatenate(rows)


def lbfgs_scores(train_X, train_Y, test_X, test_Y) -> tuple[float, float, float]:
    """Train mAP, test mAP and the C cross-validation picked."""
    C, _ = select_C(train_X, train_Y, True, C_GRID)
    weight, bias = fit_linear_classifier(train_X, train_Y, True, C=C)
    return (
        mean_average_precision(train_X @ weight.T + bias, train_Y).mAP,
        mean_average_precision(test_X @ weight.T + bias, test_Y).mAP,
        C,
    )


def train_and_score(variant: str, train: FeatureCache, test: FeatureCache, seed: int, epochs: int = 100):
    """The variant trained as the recipe trains CGP (centring auto), and its train and test mAP:
    ``(head, train_probe's report, {"train_mAP", "test_mAP", ...})``."""
    torch.manual_seed(seed)
    head = build_variant(variant, train)
    fit = train_probe(head, train, center_positions="auto", seed=seed, epochs=epochs)
    return head, fit, evaluate_probe(head, train, prefix="train_") | evaluate_probe(head, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", help="feature cache directories (with train/ and test/)")
    parser.add_argument("--seed", type=int, default=0, help="the heads' seed")
    parser.add_argument(
        "--epochs",
        type=int,
        nargs="+",
        help="each variant trained for each of these numbers of epochs (its whole cosine schedule each time) "
        "instead of the recipe's 100, and no linear probes",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=VARIANTS[:5],
        metavar="VARIANT",
        help=f"the variants to train, of: {'; '.join(VARIANTS)} (default: the first five)",
    )
    args = parser.parse_args()
    for directory in args.caches:
        train, test = FeatureCache(f"{directory}/train"), FeatureCache(f"{directory}/test")
        if args.epochs:
            for variant in args.variants:
                for epochs in args.epochs:
                    _, _, scores = train_and_score(variant, train, test, args.seed, epochs)
                    print(
                        f"{directory} | {variant}, {epochs} epochs | train mAP {scores['train_mAP']:.3f} | "
                        f"test mAP {scores['test_mAP']:.3f}",
                        flush=True,
                    )
            continue
        train_Y = np.asarray(train.labels, dtype=np.float32)
        test_Y = np.asarray(test.labels, dtype=np.float32)
        for variant in args.variants:
            started = time.perf_counter()
            head, fit, scores = train_and_score(variant, train, test, args.seed)
            gates = head.layer_weights()
            gates = " / ".join(f"{w:.2f}" for w in gates.tolist()) if gates is not None else "-"
            print(
                f"{directory} | {variant} | train mAP {scores['train_mAP']:.3f} | test mAP "
                f"{scores['test_mAP']:.3f} | centred {fit['centred']} | gates {gates} | "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
            if variant == "cgp":
                last = torch.zeros(train.num_layers)
                last[-1] = 1.0
                for name, weights in (
                    ("linear on CGP's gated tokens", head.layer_weights()),
                    ("linear, last layer", last),
                ):
                    train_X, test_X = mean_tokens(head, train, weights), mean_tokens(head, test, weights)
                    train_map, test_map, C = lbfgs_scores(train_X, train_Y, test_X, test_Y)
                    print(
                        f"{directory} | {name} (L-BFGS, C={C:g} by CV) | train mAP {train_map:.3f} | "
                        f"test mAP {test_map:.3f}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
