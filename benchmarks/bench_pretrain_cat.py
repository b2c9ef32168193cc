"""Throughput, peak memory and FLOPs of one CAT pre-training step.

One step = EMA-teacher forward on the unmasked clips (no grad) + student forward on ``clone_batch``
masked clones per clip (multi-resolution stem with masked convolution, visible tokens through the
blocks, CNN decoder) + the three losses (masked patch regression, CLS alignment, RR toward random
512-d targets) + backward + AdamW + the EMA update. Inputs are random 1024 x 128 spectrograms
(10.24 s clips), so the figures are those of the model, not of the data path.

FLOPs are counted once with ``torch.utils.flop_counter.FlopCounterMode`` over the same step (forward +
backward, teacher included; the optimizer and EMA are elementwise and not counted) and divided by the
number of clips. Utilisation = FLOPs per step / step time / the accelerator's dense bf16 peak
(``--peak_tflops``; default 989 for an H100/H200 SXM, dense bf16).

Examples::

    python benchmarks/bench_pretrain_cat.py                               # CPU: cat-base, 2 clips x 4 clones
    python benchmarks/bench_pretrain_cat.py --preset cat-small --batch 8
    python benchmarks/bench_pretrain_cat.py --device cuda --dtype bf16 --batch 96   # the issue's setting
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_audiorep.modeling import CATConfig, CATForPreTraining  # noqa: E402
from hf_audiorep.objectives import BootstrapPretrainingStep, build_ema_teacher  # noqa: E402


class _RandomFeatures:
    """Stands in for the filterbank: the batch already holds spectrograms."""

    sampling_rate = 16000

    def batch_features(self, waveforms, lengths):
        return waveforms, None


def _step_fn(model, step, batch, optimizer, dtype, device):
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss, _ = step(model, batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step.update_teacher(model, 0)


def _count_flops(model, step, batch, dtype, device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = step(model, batch)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cat-base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=2, help="clips per step (each gets clone_batch clones)")
    parser.add_argument("--clone_batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="dense bf16 peak of the accelerator")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student")
    args = parser.parse_args()

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    config = CATConfig.from_preset(args.preset, clone_batch=args.clone_batch, max_length=args.frames)
    model = CATForPreTraining(config).to(device).train()
    teacher = build_ema_teacher(model)
    step = BootstrapPretrainingStep(_RandomFeatures(), teacher)
    student = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    rr_dim = config.rr_embedding_dim
    batch = {
        "waveforms": torch.randn(args.batch, args.frames, config.num_mel_bins, device=device),
        "lengths": torch.full((args.batch,), args.frames, device=device),
    }
    if rr_dim:
        step.rr_column = "rr_targets"
        batch["rr_targets"] = torch.randn(args.batch, rr_dim, device=device)

    encoder_params = sum(p.numel() for p in model.base_model.parameters())
    flops = _count_flops(model, step, batch, dtype, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        _step_fn(student, step, batch, optimizer, dtype, device)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        _step_fn(student, step, batch, optimizer, dtype, device)
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (max_memory_allocated)"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB (peak RSS)"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, {args.dtype}, preset {args.preset}: encoder {encoder_params:,} params, "
        f"{args.batch} clips x {args.clone_batch} clones, {args.frames} frames, compile={args.compile}"
    )
    print(
        f"  step time (median of {args.steps}): {seconds * 1000:.1f} ms"
        f"  ->  {args.batch / seconds:.2f} clips/s"
    )
    print(f"  peak memory: {peak}")
    print(f"  model FLOPs per clip (fwd + bwd, teacher included): {flops / args.batch / 1e9:.1f} GFLOP")
    achieved = flops / seconds / 1e12
    print(
        f"  achieved {achieved:.2f} TFLOP/s = {100 * achieved / args.peak_tflops:.1f}% of a "
        f"{args.peak_tflops:.0f} TFLOP/s peak"
    )


if __name__ == "__main__":
    main()
