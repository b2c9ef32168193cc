"""Why the UTS runs end at the label prior: the same Zipformer on the same features, several optimisers.

Every `recipes/pretrain_uts.py` run of 300 steps ended with a training loss equal to the "prior-only" BCE
(predicting each label's frequency for every clip; docs/benchmarks.md). This script takes decoding, the
stream, augmentation and the probes out of the question: it computes the Zipformer fbank features of 400
training and 300 test clips of the 3-s corpus once, then trains `zipformer-small` (MTC head, frame logits
averaged) on random batches of 16 of them, and prints the final training loss beside the prior-only BCE,
with train and test mAP. A linear model on the features' per-bin mean and standard deviation is the trivial
baseline; the untrained Zipformer (0 steps) is the initialisation.

    PYTHONPATH=. python experiments/diag_uts_learning.py                      # the sweep
    PYTHONPATH=. python experiments/diag_uts_learning.py --steps 900 --only "adamw 0.003"
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from diag_from_scratch import StatsLinear, precompute, scores, train

from hf_audiorep.data import load_embedded_corpus
from hf_audiorep.evaluation import mean_average_precision
from hf_audiorep.modeling import (
    ZipformerConfig,
    ZipformerFbankFeatureExtractor,
    ZipformerForAudioClassification,
)
from hf_audiorep.training.optim import build_scaled_adam

CLIP_SECONDS = 3.0


def prior_only_bce(y: torch.Tensor) -> float:
    """BCE of predicting every label's training frequency for every clip: where a learner that ignores the
    audio ends."""
    prior = y.mean(0).clamp(1e-6, 1 - 1e-6)
    return F.binary_cross_entropy(prior.expand_as(y), y).item()


def prior_log_odds(y: torch.Tensor) -> torch.Tensor:
    prior = y.mean(0).clamp(1e-4, 1 - 1e-4)
    return torch.log(prior / (1 - prior))


class Zipformer(torch.nn.Module):
    """``zipformer-small`` with its MTC head; ``prior_bias`` starts the head's bias at the labels' log-odds
    (so training starts at the prior-only loss), ``head_norm`` standardises every frame's features over the
    batch (BatchNorm without affine parameters) before the head."""

    def __init__(self, classes: int, prior_bias: torch.Tensor | None = None, head_norm: bool = False):
        super().__init__()
        config = ZipformerConfig.from_preset(
            "zipformer-small", num_labels=classes, problem_type="multi_label_classification"
        )
        self.model = ZipformerForAudioClassification(config)
        if prior_bias is not None:
            with torch.no_grad():
                self.model.classifier.bias.copy_(prior_bias)
        self.norm = torch.nn.BatchNorm1d(config.hidden_size, affine=False) if head_norm else None

    def forward(self, x):
        if self.norm is None:
            return self.model(input_values=x).logits
        frames = self.model.zipformer(input_values=x).last_hidden_state
        frames = self.norm(frames.transpose(1, 2)).transpose(1, 2)
        return self.model.classifier(self.model.dropout(frames)).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps of every learner")
    parser.add_argument("--num_train", type=int, default=400, help="training clips (features precomputed)")
    parser.add_argument("--only", default="", help="run only the learners whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)

    corpus = load_embedded_corpus(clip_seconds=CLIP_SECONDS)
    fe = ZipformerFbankFeatureExtractor()
    x, _, y = precompute(corpus, "train", args.num_train, fe)
    test_x, _, test_y = precompute(corpus, "test", 300, fe)
    classes, bias = y.shape[1], prior_log_odds(y)
    print(f"features {tuple(x.shape)}; prior-only BCE: train {prior_only_bce(y):.4f}", flush=True)

    def scaled_adam(lr):
        return lambda model: build_scaled_adam(model, lr)

    def adamw(lr):
        return lambda model: torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)

    learners = {
        "linear on mean+std (AdamW 1e-2)": (lambda: StatsLinear(x.shape[2], classes), adamw(1e-2), 1e-2),
        "zipformer-small, untrained": (lambda: Zipformer(classes), None, 0.0),
        "zipformer-small, adamw 0.002": (lambda: Zipformer(classes), adamw(2e-3), 2e-3),
        "zipformer-small, adamw 0.002, prior bias": (lambda: Zipformer(classes, bias), adamw(2e-3), 2e-3),
        "zipformer-small, adamw 0.002, prior bias, head norm": (
            lambda: Zipformer(classes, bias, head_norm=True),
            adamw(2e-3),
            2e-3,
        ),
        "zipformer-small, scaled_adam 0.045": (lambda: Zipformer(classes), scaled_adam(0.045), 0.045),
        "zipformer-small, scaled_adam 0.045, prior bias": (
            lambda: Zipformer(classes, bias),
            scaled_adam(0.045),
            0.045,
        ),
    }
    for name, (make, optimizer, lr) in learners.items():
        if args.only not in name:
            continue
        torch.manual_seed(0)
        model = make()
        start = time.time()
        loss = float("nan")
        if optimizer is not None:
            losses = []
            loss = train(
                model,
                x,
                y,
                lr,
                args.steps,
                warmup=30,
                optimizer=optimizer(model),
                on_step=lambda step, value, losses=losses: losses.append(value.item()),
            )
            checkpoints = [sum(losses[i - 10 : i]) / 10 for i in range(100, args.steps + 1, 100)]
            print(f"  {name}: loss every 100 steps " + " ".join(f"{v:.3f}" for v in checkpoints), flush=True)
        fit = mean_average_precision(scores(model, x), y)
        test = mean_average_precision(scores(model, test_x), test_y)
        print(
            f"{name:40s} loss {loss:.4f}  train mAP {fit.mAP:.3f}  test mAP {test.mAP:.3f} "
            f"mAUC {test.mAUC:.3f}  ({time.time() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
