"""Why does fine-tuning a pre-trained encoder stay at the label prior when a linear probe of it does not?

Fine-tuning's classifier reads ``classifier(dropout(fc_norm(pooled)))``; the pre-training recipes' probe
reads ``LogisticRegression(StandardScaler(pooled))``. This script freezes the encoder, embeds the probe's
train and test clips once, and trains heads on the same embeddings so that only the head differs:

- ``sklearn``: the recipes' probe (per-feature standardisation, logistic regression);
- ``<input> lr=<lr>``: a torch linear head trained with AdamW and BCE for ``--epochs`` epochs of
  ``--batch_size`` clips, on ``raw`` pooled features, ``layernorm`` (a fresh LayerNorm, as ``fc_norm`` starts)
  or ``standardised`` (training-split mean and std per feature).

It also prints how the embeddings are spread: the mean over features of the across-clip std, against the
size of the across-clip mean vector, before and after a LayerNorm. A head that cannot learn from
``layernorm`` inputs but can from ``standardised`` ones points at the classifier's input, not the encoder.

    PYTHONPATH=. python experiments/diag_finetune_head.py outputs/cat_convergence_s0/no_RR --clip_seconds 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from accelerate import PartialState
from transformers import AutoFeatureExtractor, AutoModel, set_seed

import hf_audiorep  # noqa: F401  (registers the library's models)
from hf_audiorep.data.arguments import DataArguments
from hf_audiorep.evaluation import ProbeArguments
from hf_audiorep.evaluation.linear_probe import extract_embeddings, linear_probe
from hf_audiorep.evaluation.metrics import mean_average_precision
from hf_audiorep.evaluation.probe import probe_batches
from hf_audiorep.training import TrainingArguments


def spread(x: torch.Tensor) -> str:
    """Across-clip std per feature (mean over features) against the norm of the mean clip per feature."""
    return f"across-clip std {x.std(0).mean():.4f}, |mean| per feature {x.mean(0).abs().mean():.4f}"


def train_head(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: np.ndarray, args, lr: float
) -> float:
    set_seed(args.seed)
    head = torch.nn.Linear(train_x.shape[1], train_y.shape[1])
    # As the library's classifier_head: small normal weights, zero bias.
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.nn.init.zeros_(head.bias)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    for _ in range(args.epochs):
        for batch in torch.randperm(len(train_x)).split(args.batch_size):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(train_x[batch]), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        scores = torch.sigmoid(head(test_x)).numpy()
    return mean_average_precision(scores, test_y).mAP


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="a saved model directory of the library")
    parser.add_argument("--clip_seconds", type=float, default=4.0)
    parser.add_argument("--train_clips", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each torch head")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per step (the recipes' default)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    encoder = AutoModel.from_pretrained(args.model).eval()
    feature_extractor = AutoFeatureExtractor.from_pretrained(args.model)
    data = DataArguments(clip_seconds=args.clip_seconds, num_decode_threads=1)
    train_args = TrainingArguments(output_dir="outputs/diag", per_device_batch_size=16, cpu=True)
    probe_args = ProbeArguments(probe_train_clips=args.train_clips)
    clips = probe_batches(
        probe_args, data, train_args, feature_extractor.sampling_rate, PartialState(cpu=True)
    )
    with torch.no_grad():
        train_x, train_y = extract_embeddings(encoder, clips("train", args.train_clips), feature_extractor)
        test_x, test_y = extract_embeddings(encoder, clips("test", None), feature_extractor)
    train_x, test_x = train_x[: args.train_clips], test_x
    train_y = train_y[: args.train_clips]
    print(f"{args.model}: {len(train_x)} train / {len(test_x)} test clips, {train_x.shape[1]} features")
    print(f"sklearn probe: mAP {linear_probe(train_x, train_y, test_x, test_y)['probe_mAP']:.4f}")

    raw_train, raw_test = torch.from_numpy(train_x), torch.from_numpy(test_x)
    mean, std = raw_train.mean(0), raw_train.std(0).clamp_min(1e-6)
    layer_norm = torch.nn.LayerNorm(raw_train.shape[1])  # a fresh fc_norm: weight 1, bias 0
    with torch.no_grad():
        inputs = {
            "raw": (raw_train, raw_test),
            "layernorm": (layer_norm(raw_train), layer_norm(raw_test)),
            "standardised": ((raw_train - mean) / std, (raw_test - mean) / std),
        }
    for name, (x, _) in inputs.items():
        print(f"{name:>13}: {spread(x)}")
    targets = torch.from_numpy(train_y).float()
    for name, (x, x_test) in inputs.items():
        for lr in args.lrs:
            score = train_head(x, targets, x_test, test_y, args, lr)
            print(f"{name:>13} lr={lr:g}: test mAP {score:.4f}", flush=True)


if __name__ == "__main__":
    main()
