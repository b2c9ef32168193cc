"""Training-step cost of a Zipformer against a ViT (AudioMAE) on the same seconds of audio, by clip length.

One step = front end excluded (random fbank features of the right shape) + forward + BCE over ``--classes``
+ backward + AdamW update, in training mode. Zipformer reads 80-bin fbank at 100 frames/s of any length;
AudioMAE reads 128-bin fbank whose frame count is the clip's rounded up to its 16-frame patches (its sin-cos
positions follow ``max_length``), so both models see the same audio. The ViT's attention is quadratic in
the number of patches; Zipformer's stacks run at 50 to 6.25 frames/s, so its cost should grow more slowly.

Examples::

    python benchmarks/bench_zipformer_step.py                                  # CPU: small presets
    python benchmarks/bench_zipformer_step.py --zipformer zipformer-m --audiomae audiomae-base \
        --seconds 2 5 10 --batch 2
    python benchmarks/bench_zipformer_step.py --device cuda --batch 32 --steps 20 --warmup 5

Prints one JSON line per (model, clip length): seconds per step, clips/s and audio seconds per second.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


def _ensure_repo_on_path() -> None:
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def build(kind: str, preset: str, seconds: float, classes: int):
    """The classifier and a function giving a random batch of ``seconds``-long clips for it."""
    _ensure_repo_on_path()
    from transformers import AutoModelForAudioClassification

    import hf_audiorep

    frames = round(seconds * 100)
    if kind == "audiomae":
        frames = math.ceil(frames / 16) * 16
        config = hf_audiorep.config_from_preset(preset, num_labels=classes, max_length=frames)
        bins = config.num_mel_bins
    else:
        config = hf_audiorep.config_from_preset(preset, num_labels=classes)
        bins = 80
    config.problem_type = "multi_label_classification"
    model = AutoModelForAudioClassification.from_config(config)

    def batch(size: int, device) -> dict:
        return {
            "input_values": torch.randn(size, frames, bins, device=device),
            "attention_mask": torch.ones(size, frames, dtype=torch.long, device=device),
            "labels": (torch.rand(size, classes, device=device) < 0.05).float(),
        }

    return model, batch


def time_steps(model, batch: dict, steps: int, warmup: int, dtype: str, device: torch.device) -> float:
    """Mean seconds per optimizer step over ``steps`` timed steps."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--zipformer", default="zipformer-small", help="Zipformer preset")
    parser.add_argument("--audiomae", default="audiomae-tiny", help="AudioMAE preset (the ViT)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[2.0, 5.0, 10.0], help="clip lengths")
    parser.add_argument("--batch", type=int, default=4, help="clips per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per (model, length)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--classes", type=int, default=527, help="labels of the BCE head")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = torch.autocast")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for seconds in args.seconds:
        # Interleaved per length, so that a change of machine load hits both models alike.
        for kind, preset in (("zipformer", args.zipformer), ("audiomae", args.audiomae)):
            torch.manual_seed(0)
            model, make_batch = build(kind, preset, seconds, args.classes)
            per_step = time_steps(
                model, make_batch(args.batch, device), args.steps, args.warmup, args.dtype, device
            )
            row = {
                "model": preset,
                "clip_seconds": seconds,
                "batch": args.batch,
                "device": args.device,
                "dtype": args.dtype,
                "parameters": sum(p.numel() for p in model.parameters()),
                "seconds_per_step": round(per_step, 4),
                "clips_per_second": round(args.batch / per_step, 2),
                "audio_seconds_per_second": round(args.batch * seconds / per_step, 1),
            }
            print(json.dumps(row), flush=True)
            del model


if __name__ == "__main__":
    main()
