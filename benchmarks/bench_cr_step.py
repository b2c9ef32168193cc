"""Cost of consistency regularization: clips/s of a CR training step with k views vs the plain step.

Same batch of clips for every k: the CR step computes the filterbank once per clip, makes k views
(SpecAugment, random erasing, patch-out per view) and runs them in one batched forward, so its
cost grows with k through the encoder. k = 1 is the plain supervised step.

    python benchmarks/bench_cr_step.py                       # CPU, audiomae-tiny, 8 clips of 10 s
    python benchmarks/bench_cr_step.py --device cuda --preset audiomae-base --batch 32 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_audiorep.modeling import (  # noqa: E402
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
)
from hf_audiorep.objectives import (  # noqa: E402
    AugmentationArguments,
    ConsistencyArguments,
    ConsistencyClassificationStep,
    SupervisedClassificationStep,
)


def measure(k: int, args, batch, model, fe) -> float:
    aug = AugmentationArguments()
    if k == 1:
        step = SupervisedClassificationStep(fe, aug)
    else:
        step = ConsistencyClassificationStep(
            fe, aug, ConsistencyArguments(consistency_regularization=True, num_views=k)
        )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            loss, _ = step(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="audiomae-tiny")
    parser.add_argument("--batch", type=int, default=8, help="clips per step (before views)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--views", type=int, nargs="+", default=[1, 2, 6])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda was requested but CUDA is not available")
    torch.manual_seed(0)
    config = AudioMAEConfig.from_preset(
        args.preset, num_labels=527, problem_type="multi_label_classification"
    )
    model = AudioMAEForAudioClassification(config).to(args.device).train()
    fe = AudioFbankFeatureExtractor(target_length=config.max_length)
    n = int(args.seconds * 16000)
    batch = {
        "waveforms": torch.randn(args.batch, n, device=args.device) * 0.1,
        "lengths": torch.full((args.batch,), n, device=args.device),
        "labels": (torch.rand(args.batch, 527, device=args.device) < 0.01).float(),
    }
    print(
        f"torch {torch.__version__}; device {args.device}; preset {args.preset}; {args.batch} clips x "
        f"{args.seconds} s per step; {args.dtype}; median of {args.steps} steps after {args.warmup} warm-up"
    )
    base = None
    for k in args.views:
        rate = measure(k, args, batch, model, fe)
        base = base or rate
        print(f"  k={k}: {rate:8.2f} clips/s   ({rate / base:.2f}x the k={args.views[0]} step)")


if __name__ == "__main__":
    main()
