"""Padding waste of duration-capped batches, bucketed or not, on a synthetic mix of clip lengths.

The embedded corpus has one clip length (no waste either way), so the mix stands in for captioned audio
corpora: 40 % AudioSet-like 10-s clips, 60 % log-normal lengths between 1 and 30 s. Waste = padded frames /
all frames of the batches (`hf_audiorep.data.bucketing.padding_waste`).

    python benchmarks/bench_bucketing.py
    python benchmarks/bench_bucketing.py --clips 200000 --max_duration 800
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_audiorep.data.bucketing import bucket_by_duration, padding_waste  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=50_000, help="clips in the synthetic mix")
    parser.add_argument("--max_duration", type=float, default=600.0, help="padded seconds per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    spread = np.clip(rng.lognormal(np.log(6.0), 0.7, args.clips), 1.0, 30.0)
    durations = np.where(rng.random(args.clips) < 0.4, 10.0, spread)
    print(f"{args.clips} clips, {durations.sum() / 3600:.1f} h, mean {durations.mean():.2f} s")

    def run(num_buckets: int, buffer: float | None = None) -> None:
        start = time.perf_counter()
        clips = ((i, float(d), None) for i, d in enumerate(durations))
        batches = [
            [clip.duration for clip in batch]
            for batch in bucket_by_duration(clips, args.max_duration, num_buckets, buffer)
        ]
        print(
            f"max_duration {args.max_duration:g} s, {num_buckets:2d} bucket(s)"
            f"{'' if buffer is None else f', buffer {buffer:g} s'}: waste {padding_waste(batches):.1%}, "
            f"{len(batches)} batches, {np.mean([len(b) for b in batches]):.1f} clips/batch, "
            f"{time.perf_counter() - start:.1f} s"
        )

    for buckets in (1, 10, 30):
        run(buckets)
    run(30, buffer=2 * 30 * args.max_duration / 6)  # a sixth of the default buffer
    order = rng.permutation(args.clips)
    fixed = [durations[order[i : i + 32]].tolist() for i in range(0, args.clips, 32)]
    print(f"fixed 32 clips per batch, random order, padded to the longest: waste {padding_waste(fixed):.1%}")


if __name__ == "__main__":
    main()
