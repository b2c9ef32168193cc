"""Cost of every CP-Mobile student preset on a 1-s clip: parameters, multiply-accumulates (the model on its
log-mel features; `hf_audiorep.evaluation.model_cost`), and CPU latency per clip in float32 (eager PyTorch,
one thread, median of repeated runs, front end excluded and reported separately); then the deployed form
(`hf_audiorep.export`): the ONNX file's size, its float32 latency in onnxruntime, the statically quantised
int8 graph's latency, and int8's top-1 agreement with the float32 PyTorch model on clips of the embedded
scene corpus (calibrated on as many other clips).

The weights are random (the cost does not depend on them); agreement on a trained student is higher, as its
top classes are separated by wider margins than a random network's.

    python benchmarks/bench_student_cost.py                 # 10 classes, as the DCASE tables count
    python benchmarks/bench_student_cost.py --num_labels 11 --repeats 200
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hf_audiorep.evaluation import model_cost
from hf_audiorep.export import (
    embedded_scene_features,
    export_onnx,
    onnx_latency,
    onnx_logits,
    quantize_int8,
    top1_agreement,
)
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
    parser.add_argument(
        "--clips",
        type=int,
        default=64,
        help="embedded scene clips: half calibrate int8, half check its agreement",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    extractor = LogMelFeatureExtractor()
    waveform = torch.randn(1, extractor.sampling_rate) * 0.1
    features, mask = extractor.batch_features(waveform)
    front_end_ms = _median_ms(lambda: extractor.batch_features(waveform), args.repeats)
    clips = embedded_scene_features(extractor, args.clips)
    calibration, check = clips[: args.clips // 2], clips[args.clips // 2 :]
    print(f"front end (32 kHz log-mel, 1 s): {front_end_ms:.2f} ms; features {tuple(features.shape)}")
    print(
        "| preset | parameters | MACs | fp32 latency (ms / 1-s clip) | ONNX size (bytes) | ONNX fp32 (ms) "
        f"| int8 size (bytes) | int8 (ms) | int8 top-1 agreement ({len(check)} clips) | fp32 top-1 classes |"
    )
    # The last column: how many classes the float32 model's top-1 takes on those clips; with one, any graph
    # that runs agrees fully, so agreement means something only where it is above one.
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for preset in CP_MOBILE_PRESETS:
        config = CPMobileConfig.from_preset(preset, num_labels=args.num_labels)
        model = CPMobileForAudioClassification(config).eval()
        cost = model_cost(model, extractor, seconds=1.0)
        with torch.inference_mode():
            latency = _median_ms(lambda m=model: m(input_values=features, attention_mask=mask), args.repeats)
        with tempfile.TemporaryDirectory() as tmp:
            fp32 = export_onnx(model, extractor, Path(tmp) / "model.onnx")
            int8 = quantize_int8(fp32, Path(tmp) / "model.int8.onnx", calibration)
            onnx_ms, int8_ms = (onnx_latency(path, features, args.repeats) for path in (fp32, int8))
            sizes = fp32.stat().st_size, int8.stat().st_size
            agreement = top1_agreement(model, int8, check)
            classes = len(set(onnx_logits(fp32, check).argmax(-1).tolist()))
        print(
            f"| {preset} | {cost['parameters']:,} | {cost['macs']:,} | {latency:.2f} | {sizes[0]:,} "
            f"| {onnx_ms:.2f} | {sizes[1]:,} | {int8_ms:.2f} | {agreement:.0%} | {classes} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
