"""Cost of every CP-Mobile student preset on a 1-s clip: parameters, multiply-accumulates (the model on its
log-mel features; `hf_audiorep.evaluation.model_cost`), and CPU latency per clip in float32 (eager PyTorch,
one thread, median of repeated runs, front end excluded and reported separately).

    python benchmarks/bench_student_cost.py                 # 10 classes, as the DCASE tables count
    python benchmarks/bench_student_cost.py --num_labels 11 --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_audiorep.evaluation import model_cost
from hf_audiorep.modeling import CPMobileConfig, CPMobileForAudioClassification, LogMelFeatureExtractor
from hf_audiorep.modeling.configuration_cp_mobile import CP_MOBILE_PRESETS


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_labels", type=int, default=10, help="classes of the head (DCASE: 10)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per model")
    args = parser.parse_args()
    torch.set_num_threads(1)

    extractor = LogMelFeatureExtractor()
    waveform = torch.randn(1, extractor.sampling_rate) * 0.1
    features, mask = extractor.batch_features(waveform)
    front_end_ms = _median_ms(lambda: extractor.batch_features(waveform), args.repeats)
    print(f"front end (32 kHz log-mel, 1 s): {front_end_ms:.2f} ms; features {tuple(features.shape)}")
    print("| preset | parameters | MACs | fp32 latency (ms / 1-s clip) |")
    print("|---|---:|---:|---:|")
    for preset in CP_MOBILE_PRESETS:
        config = CPMobileConfig.from_preset(preset, num_labels=args.num_labels)
        model = CPMobileForAudioClassification(config).eval()
        cost = model_cost(model, extractor, seconds=1.0)
        with torch.inference_mode():
            latency = _median_ms(lambda m=model: m(input_values=features, attention_mask=mask), args.repeats)
        print(f"| {preset} | {cost['parameters']:,} | {cost['macs']:,} | {latency:.2f} |", flush=True)


if __name__ == "__main__":
    main()
