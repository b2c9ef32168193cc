"""Throughput and peak memory of one AudioSet fine-tuning step: AudioMAE (ours) vs transformers' AST.

One step = forward + BCE loss over 527 classes + backward + AdamW update, on random 1024 x 128
spectrograms (10.24 s clips). AudioMAE runs as it fine-tunes (2-D patch-out 0.2 / 0.2 in training
mode: 1 + 51 * 6 = 307 tokens per clip); ``ASTForAudioClassification`` is configured to the same
size (the preset's width, depth, heads and MLP, 16 x 16 patches with stride 16, i.e. the same
64 x 8 grid, plus its CLS and distillation tokens: 514 tokens). Same batch, dtype and optimizer.

Each model runs in its own fresh process so that memory figures do not mix:

- CUDA: ``torch.cuda.max_memory_allocated`` over the timed steps (weights, gradients, AdamW
  states and activations; the caching allocator's reserve is not counted).
- CPU: resident set size. ``peak RSS`` is the process's high-water mark (``ru_maxrss``);
  ``step RSS growth`` is that peak minus the RSS just before the first step, when the model,
  optimizer and batch exist but no gradient or AdamW state does yet.

Examples::

    python benchmarks/bench_train_step.py                      # CPU: batch 2, 3 timed steps
    python benchmarks/bench_train_step.py --device cuda --dtype bf16
    python benchmarks/bench_train_step.py --model ours --no-patch-out
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import torch

NUM_CLASSES = 527


def _ensure_repo_on_path() -> None:
    """Let the script run from a checkout without installing the package."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)


def _current_rss_bytes() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # Linux fallback: resident pages from /proc
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()


def build_model(name: str, preset: str, patch_out: bool) -> tuple[torch.nn.Module, int]:
    """The model and the number of tokens its encoder sees per clip in training mode."""
    _ensure_repo_on_path()
    from hf_audiorep.modeling.configuration_audiomae import AudioMAEConfig
    from hf_audiorep.modeling.modeling_audiomae import AudioMAEForAudioClassification

    config = AudioMAEConfig.from_preset(
        preset, num_labels=NUM_CLASSES, problem_type="multi_label_classification"
    )
    if not patch_out:
        config.mask_t_prob = config.mask_f_prob = 0.0
    grid_t, grid_f = config.grid_size
    if name == "ours":
        keep_t = max(1, int(grid_t * (1 - config.mask_t_prob)))
        keep_f = max(1, int(grid_f * (1 - config.mask_f_prob)))
        return AudioMAEForAudioClassification(config), 1 + keep_t * keep_f

    from transformers import ASTConfig, ASTForAudioClassification

    ast_config = ASTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=int(config.hidden_size * config.mlp_ratio),
        patch_size=config.patch_size,
        frequency_stride=config.patch_size,
        time_stride=config.patch_size,
        max_length=config.max_length,
        num_mel_bins=config.num_mel_bins,
        num_labels=NUM_CLASSES,
        problem_type="multi_label_classification",
    )
    return ASTForAudioClassification(ast_config), 2 + grid_t * grid_f


def measure(name: str, args: argparse.Namespace) -> dict:
    """Runs in a fresh process: build, warm up, time ``args.steps`` training steps."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    model, tokens = build_model(name, args.preset, args.patch_out)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    input_values = torch.randn(args.batch, 1024, 128, device=device)
    labels = (torch.rand(args.batch, NUM_CLASSES, device=device) < 0.02).float()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

    def step() -> float:
        with autocast:
            loss = model(input_values=input_values, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # also synchronises the device

    rss_before = _current_rss_bytes()
    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    elapsed = time.perf_counter() - start

    result = {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "tokens_per_clip": tokens,
        "clips_per_s": args.batch * args.steps / elapsed,
        "s_per_step": elapsed / args.steps,
        "loss": loss,
    }
    if device.type == "cuda":
        result["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        result["peak_rss_mib"] = peak / 2**20
        result["step_rss_growth_mib"] = (peak - rss_before) / 2**20
    return result


def _worker(name: str, args: argparse.Namespace, queue) -> None:
    queue.put(json.dumps(measure(name, args)))


def run_isolated(name: str, args: argparse.Namespace) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_worker, args=(name, args, queue))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the {name} benchmark process failed with exit code {process.exitcode}")
    return json.loads(queue.get())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, help="clips per step (default: 64 on cuda, 2 on cpu)")
    parser.add_argument("--steps", type=int, help="timed steps (default: 20 on cuda, 3 on cpu)")
    parser.add_argument("--warmup", type=int, help="untimed steps (default: 5 on cuda, 1 on cpu)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = torch.autocast")
    parser.add_argument("--model", choices=("both", "ours", "ast"), default="both")
    parser.add_argument("--preset", default="audiomae-base", help="AudioMAE preset; AST gets the same size")
    parser.add_argument(
        "--patch-out",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="AudioMAE's 2-D patch-out during training (default: on, as it fine-tunes)",
    )
    args = parser.parse_args(argv)
    on_cuda = args.device.startswith("cuda")
    args.batch = args.batch or (64 if on_cuda else 2)
    args.steps = args.steps or (20 if on_cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    if min(args.batch, args.steps) <= 0 or args.warmup < 0:
        parser.error("--batch and --steps must be positive, --warmup non-negative")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    names = ("ours", "ast") if args.model == "both" else (args.model,)
    print(
        f"device={args.device} dtype={args.dtype} batch={args.batch} steps={args.steps} "
        f"warmup={args.warmup} preset={args.preset} patch_out={args.patch_out} torch={torch.__version__} "
        f"threads={torch.get_num_threads()}"
    )
    results = [run_isolated(name, args) for name in names]
    memory_keys = ("peak_cuda_allocated_mib", "peak_rss_mib", "step_rss_growth_mib")
    memory_keys = [k for k in memory_keys if k in results[0]]
    header = ["model", "params", "tokens/clip", "clips/s", "s/step", *memory_keys]
    print(" | ".join(header))
    for r in results:
        row = [
            r["model"],
            f"{r['parameters']:,}",
            str(r["tokens_per_clip"]),
            f"{r['clips_per_s']:.2f}",
            f"{r['s_per_step']:.3f}",
            *(f"{r[k]:.0f}" for k in memory_keys),
        ]
        print(" | ".join(row))
    if len(results) == 2:
        print(f"clips/s ratio ours/ast: {results[0]['clips_per_s'] / results[1]['clips_per_s']:.2f}x")
    return results


if __name__ == "__main__":
    main()
