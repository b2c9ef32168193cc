"""Does CGP gain from standardised tokens, as the linear heads did from a standardised pooled vector? (Issue
"BAT and Convex Gated Probing", docs/benchmarks.md "The linear probes were under-trained".)

For each feature cache (a ``recipes/probe.py`` cache directory with ``train`` and ``test`` splits), CGP
top-k 1 with the recipe's defaults (seed 0) on tokens standardised per layer and dimension with the train
split's real tokens (after the heads' layer norm, and optionally after centring them on their position's
train mean):

    OMP_NUM_THREADS=1 python experiments/diag_cgp_token_standardisation.py \\
        outputs/probe_table/cache/pretrain_cat-small outputs/probe_table/cache/pretrain_bat-small
"""

from __future__ import annotations

import argparse

import torch

from hf_audiorep.evaluation.probing import (
    FeatureCache,
    build_probe,
    evaluate_probe,
    position_means,
    train_probe,
)
from hf_audiorep.evaluation.probing.train import _normalised_tokens


def token_statistics(cache: FeatureCache, means: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and dimension, the mean and standard deviation ``(layers, dim)`` of the real normalised
    tokens (minus their position's mean when ``means`` is given)."""
    total = torch.zeros(cache.num_layers, cache.hidden_size, dtype=torch.float64)
    squares, count = total.clone(), 0.0
    for features, mask in _normalised_tokens(cache, 256):
        if means is not None:
            features = features - means[None, :, : features.shape[2]].double()
        total += torch.einsum("bltd,bt->ld", features, mask)
        squares += torch.einsum("bltd,bt->ld", features.pow(2), mask)
        count += float(mask.sum())
    mean = total / count
    return mean.float(), (squares / count - mean.pow(2)).clamp(min=1e-12).sqrt().float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("caches", nargs="+", help="feature cache directories (with train/ and test/)")
    parser.add_argument(
        "--center_positions", action="store_true", help="centre on the position means before standardising"
    )
    args = parser.parse_args()
    for directory in args.caches:
        train, test = FeatureCache(f"{directory}/train"), FeatureCache(f"{directory}/test")
        means = position_means(train) if args.center_positions else None
        mean, std = token_statistics(train, means)
        torch.manual_seed(0)
        head = build_probe("cgp", train.num_layers, train.hidden_size, train.num_labels, topk=1)
        classify = head.classify

        def standardised(features, token_mask, classify=classify, means=means, mean=mean, std=std):
            if means is not None:
                features = features - means[:, : features.shape[2]]
            return classify((features - mean[:, None]) / std[:, None], token_mask)

        head.classify = standardised
        train_probe(head, train, seed=0)
        score = evaluate_probe(head, test)["test_mAP"]
        gates = " / ".join(f"{w:.2f}" for w in head.layer_weights().tolist())
        print(f"{directory}: CGP on standardised tokens, test mAP {score:.4f}; gates {gates}", flush=True)


if __name__ == "__main__":
    main()
