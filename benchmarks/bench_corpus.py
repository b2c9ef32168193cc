"""Cost of generating the embedded corpus, per clip, and the floor under it.

Renders --clips clips of the training split in one process (what each generation worker does), then
times two steps every clip needs whatever the synthesis: drawing one clip's worth of Gaussian noise
(every background and noise texture starts from it) and encoding the clip as 16-bit FLAC (what the
``Audio`` column stores). Their sum times the default corpus size, over the worker count, is a floor
on the first (uncached) ``load_embedded_corpus()`` on this machine.

    PYTHONPATH=. python benchmarks/bench_corpus.py --clips 64
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

import numpy as np

from hf_audiorep.data.embedded import corpus


def _median_ms(run, repeats: int = 20) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clips", type=int, default=64, help="training clips rendered for the timing")
    parser.add_argument("--clip_seconds", type=float, default=10.0)
    args = parser.parse_args()

    parameters = inspect.signature(corpus.load_embedded_corpus).parameters
    sizes = {split: parameters[f"num_{split}"].default for split in corpus.SPLITS}
    total = sum(sizes.values())
    config = corpus._config(0, *sizes.values(), args.clip_seconds, 16000)

    corpus._split_rows("train", sizes["train"], config, 0, 2)  # warm-up: imports, tables
    start = time.perf_counter()
    corpus._split_rows("train", sizes["train"], config, 0, args.clips)
    per_clip = (time.perf_counter() - start) * 1e3 / args.clips

    samples = int(args.clip_seconds * 16000)
    rng = np.random.default_rng(0)
    waveform = (0.1 * rng.standard_normal(samples)).astype(np.float32)
    noise_ms = _median_ms(lambda: rng.standard_normal(samples, dtype=np.float32))
    flac_ms = _median_ms(lambda: corpus._flac_bytes(waveform, 16000))
    workers = corpus._generation_workers(None, total)

    print(f"default corpus: {total} clips x {args.clip_seconds:g} s ({sizes}); {os.cpu_count()} CPUs")
    one_core = per_clip * total / 1e3
    print(f"rendering + FLAC, one process: {per_clip:.1f} ms/clip -> {one_core:.1f} s on one core")
    print(f"floor per clip: Gaussian noise {noise_ms:.2f} ms + FLAC encode {flac_ms:.2f} ms")
    floor = (noise_ms + flac_ms) * total / 1e3
    print(
        f"floor for the default corpus: {floor:.1f} s on one core, "
        f"{floor / workers:.1f} s on {workers} workers"
    )


if __name__ == "__main__":
    main()
