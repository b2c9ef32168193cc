"""Why a small ViT learns the embedded corpus slowly: the same precomputed features, several learners.

Computes the fbank features of 400 training and 200 test clips once, then trains each learner for a
fixed number of AdamW steps on random batches of them and prints test and train mAP. No decoding or
augmentation runs inside the loop, so only the learner differs.

    PYTHONPATH=. python benchmarks/diag_from_scratch.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from hf_audiorep.data import AudioStream, load_audio_source, load_embedded_corpus
from hf_audiorep.evaluation import mean_average_precision
from hf_audiorep.modeling import AudioFbankFeatureExtractor, AudioMAEConfig, AudioMAEForAudioClassification


def precompute(corpus, split: str, n: int, fe) -> tuple[torch.Tensor, torch.Tensor]:
    stream = AudioStream(load_audio_source(corpus[split].select(range(n))), batch_size=50, train=False)
    features, labels = [], []
    for batch in stream:
        x, _ = fe.batch_features(batch["waveforms"], batch["lengths"])
        features.append(x)
        labels.append(batch["labels"])
    return torch.cat(features), torch.cat(labels)


class StatsLinear(torch.nn.Module):
    """Logistic regression on the per-bin mean and standard deviation over time."""

    def __init__(self, bins: int, classes: int):
        super().__init__()
        self.linear = torch.nn.Linear(2 * bins, classes)

    def forward(self, x):
        return self.linear(torch.cat([x.mean(1), x.std(1)], -1))


class TinyViT(torch.nn.Module):
    def __init__(self, classes: int, input_scale: float = 1.0, **overrides):
        super().__init__()
        config = AudioMAEConfig.from_preset("audiomae-tiny", num_labels=classes, **overrides)
        self.model = AudioMAEForAudioClassification(config)
        self.input_scale = input_scale

    def forward(self, x):
        return self.model(input_values=x * self.input_scale).logits


@torch.no_grad()
def scores(model, x) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + 50]) for i in range(0, len(x), 50)])


def run(name, make, data, lr: float, steps: int = 150, batch: int = 16) -> None:
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(0)
    model = make()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    start = time.time()
    for _ in range(steps):
        model.train()
        idx = torch.randint(0, len(x_train), (batch,))
        loss = F.binary_cross_entropy_with_logits(model(x_train[idx]), y_train[idx])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    test_map = mean_average_precision(scores(model, x_test), y_test).mAP
    train_map = mean_average_precision(scores(model, x_train[:200]), y_train[:200]).mAP
    print(
        f"{name:40s} loss {loss.item():.3f}  test mAP {test_map:.3f}  train mAP {train_map:.3f}  "
        f"({time.time() - start:.0f} s)",
        flush=True,
    )


def main() -> None:
    corpus = load_embedded_corpus()
    fe = AudioFbankFeatureExtractor()
    data = (precompute(corpus, "train", 400, fe), precompute(corpus, "test", 200, fe))
    classes, bins = data[0][1].shape[1], data[0][0].shape[2]
    run("linear on mean+std (300 steps)", lambda: StatsLinear(bins, classes), data, 1e-2, steps=300)
    run("vit tiny lr1e-3", lambda: TinyViT(classes), data, 1e-3)
    no_reg = {"mask_t_prob": 0.0, "mask_f_prob": 0.0, "drop_path_rate": 0.0}
    run("vit tiny, no patch-out / drop-path", lambda: TinyViT(classes, **no_reg), data, 1e-3)
    run("vit tiny, CLS pooling", lambda: TinyViT(classes, use_cls_pooling=True), data, 1e-3)
    run("vit tiny, input x 4", lambda: TinyViT(classes, input_scale=4.0), data, 1e-3)


if __name__ == "__main__":
    main()
