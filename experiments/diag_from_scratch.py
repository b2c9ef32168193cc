"""Why a small ViT learned the embedded corpus slowly from scratch: same features, several learners.

Computes the log-mel features of the first 3 s of 400 training and 300 test clips once, then trains each
learner for a fixed number of AdamW steps on random batches of them and prints train and test mAP. No decoding
or augmentation runs inside the loop, so only the learner differs. Labels are those of the events that start
in the first 3 s (clip-level labels would name events the crop does not contain).

Finding: AudioMAE's fine-tuning head initialisation (``trunc_normal(std=2e-5)``, zero bias) stalls training
from scratch. While the logits are ~0 the head learns only the label prior, along the direction every clip's
``fc_norm`` output shares, so each row of the head ends up parallel to that common vector; the backward pass
of LayerNorm removes exactly the component of the gradient parallel to its own (normalised) output, so
almost nothing reaches the encoder and its features collapse onto one vector. With an ordinary head init
(std 0.02, timm's ViT init, which MAE/AudioMAE also use when they do not load a checkpoint, or PyTorch's
default) the same ViT memorises 64 clips; the minimal ``nn.TransformerEncoder`` ViT behaves the same way with
either head (``--what memorise`` and ``--what flow``).

That is not the whole gap: on 400 clips with the sparse 3-s event labels, 300 steps, neither ViT (the
library's with either head, nor the minimal one) leaves the label prior, while a small CNN and a linear model
on pooled statistics do. At initialisation the mean-pooled, normalised features of all clips are nearly the
same vector (cosine to their mean > 0.99), so early training fits the prior along it; no implementation
difference from the minimal ViT was found.

    PYTHONPATH=. python experiments/diag_from_scratch.py                    # learnability table
    PYTHONPATH=. python experiments/diag_from_scratch.py --what memorise    # fit 64 clips, no regularisation
    PYTHONPATH=. python experiments/diag_from_scratch.py --what flow        # gradient through fc_norm
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from hf_audiorep.data import AudioStream, load_audio_source, load_embedded_corpus
from hf_audiorep.evaluation import mean_average_precision
from hf_audiorep.modeling import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
    get_2d_sincos_pos_embed,
)

CLIP_SECONDS = 3.0


def precompute(corpus, split: str, n: int, fe=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (by default ``(n, 298, 128)`` Kaldi fbank) of each clip's first 3 s, the labels of the events
    heard in them, and the clip's own labels, denser, which the memorisation checks use (any labels can be
    memorised)."""
    dataset = corpus[split].select(range(n))
    fe = fe or AudioFbankFeatureExtractor(target_length=None)  # 298 frames: no padding to 1024
    stream = AudioStream(load_audio_source(dataset), batch_size=50, train=False, clip_seconds=CLIP_SECONDS)
    features, clip_labels = [], []
    for batch in stream:
        x, _ = fe.batch_features(batch["waveforms"], batch["lengths"])
        features.append(x)
        clip_labels.append(batch["labels"])
    labels = torch.zeros(n, clip_labels[0].shape[1])
    for i, events in enumerate(dataset["events"]):
        for event in events:
            if event["onset_s"] < CLIP_SECONDS - 0.1:  # heard for at least 100 ms of the crop
                labels[i, event["label"]] = 1.0
    return torch.cat(features), labels, torch.cat(clip_labels)


class StatsLinear(nn.Module):
    """Logistic regression on the per-bin mean and standard deviation over time, standardised (the raw
    statistics span very different scales, which plain AdamW steps fit poorly)."""

    def __init__(self, bins: int, classes: int):
        super().__init__()
        self.standardise = nn.BatchNorm1d(2 * bins, affine=False)
        self.linear = nn.Linear(2 * bins, classes)

    def forward(self, x):
        return self.linear(self.standardise(torch.cat([x.mean(1), x.std(1)], -1)))


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-maxpool stages and global average pooling: what a small learned model reaches.
    The first convolution has stride 2, so a step costs about as much as the tiny ViT's on one CPU thread."""

    def __init__(self, classes: int, width: int = 32):
        super().__init__()
        layers, channels = [], 1
        for i, out in enumerate((width, width, 2 * width, 4 * width)):
            stride = 2 if i == 0 else 1
            layers += [nn.Conv2d(channels, out, 3, stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            layers.append(nn.MaxPool2d(2))
            channels = out
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        return self.head(self.body(x[:, None]).mean((2, 3)))


class MinimalViT(nn.Module):
    """Pre-LN ViT from ``torch.nn.TransformerEncoder``: AudioMAE-tiny's width, depth, patching, positions and
    pooling, with PyTorch's own initialisation. The reference the library's encoder is compared with."""

    def __init__(self, classes: int, head_std: float | None = None, dim=192, depth=4, heads=3, patch=16):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(1, dim, patch, patch)
        self.register_buffer("pos", get_2d_sincos_pos_embed(dim, 64, 128 // patch)[None], persistent=False)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.fc_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        if head_std is not None:
            nn.init.trunc_normal_(self.head.weight, std=head_std)
            nn.init.zeros_(self.head.bias)

    def forward(self, x):
        x = F.pad(x, (0, 0, 0, -x.shape[1] % self.patch))
        tokens = self.proj(x[:, None]).flatten(2).transpose(1, 2)
        tokens = tokens + self.pos[:, : tokens.shape[1]]
        return self.head(self.fc_norm(self.encoder(tokens).mean(1)))


class TinyViT(nn.Module):
    """``audiomae-tiny`` from the library; ``head_std`` re-initialises its classifier (None: the library's
    current default), so the comparison does not depend on which default the checkout ships."""

    def __init__(self, classes: int, head_std: float | None = None, **overrides):
        super().__init__()
        config = AudioMAEConfig.from_preset("audiomae-tiny", num_labels=classes, **overrides)
        self.model = AudioMAEForAudioClassification(config)
        if head_std is not None:
            nn.init.trunc_normal_(self.model.classifier.weight, std=head_std)
            nn.init.zeros_(self.model.classifier.bias)

    def forward(self, x):
        return self.model(input_values=x).logits


NO_REGULARISATION = {"mask_t_prob": 0.0, "mask_f_prob": 0.0, "drop_path_rate": 0.0}


@torch.no_grad()
def scores(model, x) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + 50]) for i in range(0, len(x), 50)])


def train(model, x, y, lr: float, steps: int, warmup: int = 0, batch: int = 16, on_step=None, optimizer=None):
    """AdamW (weight decay 0.05) unless ``optimizer`` is given, linear warmup then cosine to 0; random batches
    from a fixed generator."""
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps):
        model.train()
        idx = torch.randint(0, len(x), (batch,), generator=generator)
        loss = F.binary_cross_entropy_with_logits(model(x[idx]), y[idx])
        loss.backward()
        if on_step is not None:
            on_step(step, loss)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        losses.append(loss.item())
    return sum(losses[-10:]) / len(losses[-10:])


def run(name, make, train_data, test_data=None, lr=1e-3, steps=300, warmup=30) -> None:
    x, y = train_data
    torch.manual_seed(0)
    model = make()
    start = time.time()
    loss = train(model, x, y, lr, steps, warmup)
    fit = mean_average_precision(scores(model, x), y)
    line = f"{name:44s} loss {loss:.3f}  train mAP {fit.mAP:.3f} mAUC {fit.mAUC:.3f}"
    if test_data is not None:
        test = mean_average_precision(scores(model, test_data[0]), test_data[1])
        line += f"  test mAP {test.mAP:.3f} mAUC {test.mAUC:.3f}"
    print(f"{line}  ({time.time() - start:.0f} s)", flush=True)


def gradient_flow(name, make, x, y, lr=5e-4, steps=60) -> None:
    """How much of the gradient arriving at ``fc_norm``'s output passes its backward into the encoder, and
    how aligned the head rows and the clips' pooled features are with the batch-mean feature."""
    torch.manual_seed(0)
    model = make()
    fc_norm = model.model.audiomae.fc_norm
    seen = {}
    fc_norm.register_forward_hook(lambda module, args, out: seen.update(z=out.detach()))
    fc_norm.register_full_backward_hook(
        lambda module, grad_in, grad_out: seen.update(
            inp=grad_in[0].norm().item(), out=grad_out[0].norm().item()
        )
    )

    def report(step, loss):
        if step not in (10, 30, steps - 1):
            return
        weight, mean_z = model.model.classifier.weight.detach(), seen["z"].mean(0, keepdim=True)
        rows = F.cosine_similarity(weight, mean_z, dim=1).abs().mean().item()
        clips = F.cosine_similarity(seen["z"], mean_z, dim=1).mean().item()
        print(
            f"{name:28s} step {step:3d} loss {loss.item():.4f}  grad passed by fc_norm "
            f"{seen['inp'] / seen['out']:.3f}  |cos(head row, mean z)| {rows:.3f}  "
            f"cos(z_clip, mean z) {clips:.3f}",
            flush=True,
        )

    train(model, x, y, lr, steps, on_step=report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", choices=("learn", "memorise", "flow"), default="learn")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", default="", help="run only the learners whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine; and timings comparable across runs

    corpus = load_embedded_corpus()
    features, window_labels, clip_labels = precompute(corpus, "train", 400)
    train_data = (features, window_labels)
    classes, bins = window_labels.shape[1], features.shape[2]
    if args.what == "flow":
        x, y = features[:64], clip_labels[:64]
        gradient_flow("head std 2e-5 (AudioMAE)", lambda: TinyViT(classes, 2e-5, **NO_REGULARISATION), x, y)
        gradient_flow("head std 0.02", lambda: TinyViT(classes, 0.02, **NO_REGULARISATION), x, y)
        return
    if args.what == "memorise":
        # 64 clips, no patch-out / drop-path: a 1.9 M-parameter model should fit them.
        subset = (features[:64], clip_labels[:64])
        steps = args.steps
        for name, make in (
            ("vit tiny, head std 2e-5 (AudioMAE)", lambda: TinyViT(classes, 2e-5, **NO_REGULARISATION)),
            ("vit tiny, head std 0.02", lambda: TinyViT(classes, 0.02, **NO_REGULARISATION)),
            ("minimal nn.TransformerEncoder ViT", lambda: MinimalViT(classes)),
            ("minimal ViT, head std 2e-5", lambda: MinimalViT(classes, 2e-5)),
        ):
            run(name, make, subset, lr=5e-4, steps=steps, warmup=0)
        return
    test_data = precompute(corpus, "test", 300)[:2]
    # lr, then the learner; the ViTs keep the recipe's patch-out (0.2 / 0.2) and drop-path (0.1).
    learners = {
        "linear on mean+std of the log-mels": (1e-2, lambda: StatsLinear(bins, classes)),
        "small CNN (4 conv stages)": (1e-3, lambda: SmallCNN(classes)),
        "vit tiny, head std 2e-5 (AudioMAE)": (1e-3, lambda: TinyViT(classes, 2e-5)),
        "vit tiny, head std 0.02": (1e-3, lambda: TinyViT(classes, 0.02)),
    }
    for name, (lr, make) in learners.items():
        if args.only in name:
            run(name, make, train_data, test_data, lr, args.steps)


if __name__ == "__main__":
    main()
