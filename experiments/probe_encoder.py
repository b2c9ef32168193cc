"""Linear-probe mAP of frozen encoders on the embedded corpus (the pre-training recipes' evaluator).

Each MODEL is a saved model directory (any model of the library: its encoder is probed) or
``random:<preset>[:<seed>]`` for a freshly initialised encoder of that preset (seed 0 unless given; a
pre-training recipe draws its initialisation the same way, after ``set_seed(--seed)``). The probe is a
logistic regression fitted on the first --train_clips training clips and scored on the test split, beside
its trivial baselines on the same clips (a constant score; the input features' mean and std).

    PYTHONPATH=. python experiments/probe_encoder.py random:audiomae-tiny outputs/pretrain-audiomae \\
        --clip_seconds 3 --train_clips 200
"""

from __future__ import annotations

import argparse
import time

import torch
from accelerate import PartialState
from transformers import AutoModel, set_seed

import hf_audiorep
from hf_audiorep.data.arguments import DataArguments
from hf_audiorep.evaluation import ProbeArguments, build_linear_probe
from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.training import TrainingArguments


def _load(name: str, max_length: int) -> tuple[torch.nn.Module, AudioFbankFeatureExtractor]:
    if name.startswith("random:"):
        _, preset, *seed = name.split(":")
        set_seed(int(seed[0]) if seed else 0)
        config = hf_audiorep.config_from_preset(preset, max_length=max_length)
        return AutoModel.from_config(config), AudioFbankFeatureExtractor(target_length=max_length)
    return AutoModel.from_pretrained(name), AudioFbankFeatureExtractor.from_pretrained(name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model directories or random:<preset>[:<seed>]")
    parser.add_argument("--clip_seconds", type=float, default=3.0)
    parser.add_argument("--max_length", type=int, default=304, help="frames of a random:<preset> encoder")
    parser.add_argument("--train_clips", type=int, default=200)
    parser.add_argument("--probe_C", default="1", help="the probe's C, or auto (cross-validated per encoder)")
    args = parser.parse_args()

    data = DataArguments(clip_seconds=args.clip_seconds, num_decode_threads=1)
    train = TrainingArguments(output_dir="outputs/probe", per_device_batch_size=16, cpu=True)
    probe = build_linear_probe(
        ProbeArguments(probe_train_clips=args.train_clips, probe_C=args.probe_C),
        data,
        train,
        16000,
        PartialState(cpu=True),
    )
    for name in args.models:
        start = time.perf_counter()
        encoder, feature_extractor = _load(name, args.max_length)
        # A bare encoder is its own base_model, which is what the probe reads.
        result = probe(encoder.eval(), feature_extractor)
        print(
            f"{name}: probe mAP {result['probe_mAP']:.4f} (C={result['probe_C']:g}), mAUC "
            f"{result['probe_mAUC']:.4f} ({result['probe_num_train_clips']} train / "
            f"{result['probe_num_clips']} test clips, {time.perf_counter() - start:.0f} s); baselines: input "
            f"statistics "
            f"{result['probe_mAP_input_statistics']:.4f}, constant score {result['probe_mAP_chance']:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
