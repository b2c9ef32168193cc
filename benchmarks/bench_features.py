"""Throughput of hf_audiorep's batched Kaldi fbank vs transformers' ASTFeatureExtractor.

Prints clips/s (median over --repeats runs, after one warm-up) for:

* ``AudioFbankFeatureExtractor.__call__`` on a (batch, samples) numpy batch, computed on --device;
* ``AudioFbankFeatureExtractor.batch_features`` on a tensor already on --device (the training-step path);
* ``ASTFeatureExtractor.__call__`` on the same clips as a list of numpy arrays (its documented input), with
  its torchaudio backend (what it uses when torchaudio is installed) and, unless --skip-numpy-ast, with its
  numpy fallback (what it uses without torchaudio);
* the FFT alone (``torch.fft.rfft`` of every zero-padded 512-sample frame of the batch, already framed): a
  floor under any exact Kaldi fbank on this device, hence a ceiling on the speed-up any of them can reach;
* the other front ends of the family, ``batch_features`` on --device: ``ZipformerFbankFeatureExtractor`` on
  the same 16 kHz batch, and ``LogMelFeatureExtractor`` on a 32 kHz batch of the same duration next to the
  reference it reproduces (``torchaudio.transforms.MelSpectrogram`` + log, batched, on the same device).

Run from the repository root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_features.py --batch 32 --seconds 10 --device cpu
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torchaudio
import transformers
from transformers import ASTFeatureExtractor
from transformers.models.audio_spectrogram_transformer import (
    feature_extraction_audio_spectrogram_transformer as ast_module,
)

from hf_audiorep.modeling.feature_extraction_fbank import (
    AudioFbankFeatureExtractor,
    ZipformerFbankFeatureExtractor,
)
from hf_audiorep.modeling.feature_extraction_log_mel import LogMelFeatureExtractor

SAMPLING_RATE = 16000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32, help="clips per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip duration")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median reported)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where hf_audiorep computes")
    parser.add_argument("--skip-numpy-ast", action="store_true", help="do not time AST's numpy fallback")
    args = parser.parse_args()
    if args.batch < 1 or args.seconds <= 0.025 or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1 and --seconds > 0.025")
    return args


def machine_description(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def median_seconds(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    def once() -> float:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    once()  # warm-up: caches, allocator, lazy CUDA init
    return statistics.median(once() for _ in range(repeats))


@contextlib.contextmanager
def ast_numpy_backend():
    """Make ASTFeatureExtractor take its torchaudio-free path (it checks this flag at init and per clip)."""
    original = ast_module.is_speech_available
    ast_module.is_speech_available = lambda: False
    try:
        yield
    finally:
        ast_module.is_speech_available = original


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda was requested but torch.cuda.is_available() is False on this machine.")
    device = torch.device(args.device)
    logging.getLogger("transformers").setLevel(logging.ERROR)

    num_samples = int(args.seconds * SAMPLING_RATE)
    rng = np.random.default_rng(0)
    batch = (0.1 * rng.standard_normal((args.batch, num_samples))).astype(np.float32)
    clips = list(batch)
    on_device = torch.from_numpy(batch).to(device)
    lengths = torch.full((args.batch,), num_samples, device=device)

    ours = AudioFbankFeatureExtractor()
    ast = ASTFeatureExtractor()

    def ours_call():
        return ours(batch, sampling_rate=SAMPLING_RATE, return_tensors="pt", device=device)

    def ours_batch_features():
        return ours.batch_features(on_device, lengths)

    frames = torch.nn.functional.pad(on_device.unfold(-1, 400, 160), (0, 112)).contiguous()

    def fft_only():
        return torch.fft.rfft(frames)

    def ast_call(extractor=ast):
        return extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")

    gap = (ours_call()["input_values"].cpu() - ast_call()["input_values"]).abs().max().item()

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    print(f"{versions}, python {platform.python_version()}")
    print(f"machine: {machine_description(device)} (shared machine: timings are noisy)")
    print(f"input: {args.batch} clips x {args.seconds:g} s at {SAMPLING_RATE} Hz; hf_audiorep on {device}")
    print(f"max |ours - AST| on this batch: {gap:.2e} (normalised log-mel units)")
    print(f"median of {args.repeats} runs after 1 warm-up:")

    timings = {
        "hf_audiorep __call__": median_seconds(ours_call, args.repeats, device),
        "hf_audiorep batch_features": median_seconds(ours_batch_features, args.repeats, device),
        "transformers AST (torchaudio backend)": median_seconds(ast_call, args.repeats, torch.device("cpu")),
        "FFT alone (floor of any exact fbank)": median_seconds(fft_only, args.repeats, device),
    }
    if not args.skip_numpy_ast:
        with ast_numpy_backend(), warnings.catch_warnings():
            # Its kaldi-scale bank has an empty lowest filter at 128 bins; it warns about it on creation.
            warnings.simplefilter("ignore", UserWarning)
            ast_numpy = ASTFeatureExtractor()
            timings["transformers AST (numpy fallback)"] = median_seconds(
                lambda: ast_call(ast_numpy), args.repeats, torch.device("cpu")
            )
    for name, seconds in timings.items():
        print(f"  {name:<40s} {seconds * 1e3:9.1f} ms/batch  {args.batch / seconds:9.1f} clips/s")
    for ours_name in ("hf_audiorep __call__", "hf_audiorep batch_features"):
        for ast_name in [name for name in timings if name.startswith("transformers")]:
            ratio = timings[ast_name] / timings[ours_name]
            print(f"  speed-up {ours_name} vs {ast_name}: {ratio:.1f}x")
    ast_seconds = timings["transformers AST (torchaudio backend)"]
    ceiling = ast_seconds / timings["FFT alone (floor of any exact fbank)"]
    print(f"  ceiling (AST torchaudio backend / FFT alone): {ceiling:.1f}x for any fbank that runs this FFT")

    # The rest of the family, on the accelerator path.
    zipformer = ZipformerFbankFeatureExtractor()
    log_mel = LogMelFeatureExtractor()
    batch_32k = torch.from_numpy(
        (0.1 * rng.standard_normal((args.batch, int(args.seconds * log_mel.sampling_rate)))).astype(
            np.float32
        )
    ).to(device)
    reference_mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=32000, n_fft=4096, win_length=3072, hop_length=500, n_mels=256
    ).to(device)

    def reference_log_mel():
        with torch.no_grad():
            return (reference_mel(batch_32k) + 1e-5).log()

    family = {
        "Zipformer fbank batch_features (16 kHz)": median_seconds(
            lambda: zipformer.batch_features(on_device, lengths), args.repeats, device
        ),
        "log-mel batch_features (32 kHz)": median_seconds(
            lambda: log_mel.batch_features(batch_32k), args.repeats, device
        ),
        "torchaudio MelSpectrogram + log (32 kHz)": median_seconds(reference_log_mel, args.repeats, device),
    }
    print("other front ends:")
    for name, seconds in family.items():
        print(f"  {name:<40s} {seconds * 1e3:9.1f} ms/batch  {args.batch / seconds:9.1f} clips/s")


if __name__ == "__main__":
    main()
