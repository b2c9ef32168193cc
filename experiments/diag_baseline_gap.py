"""Why does a pre-trained encoder probe below the per-bin mean and std of its own input features?

Probes, on the pre-training recipes' probe clips (the first --train_clips corpus train clips, the test
split), one encoder and its input side by side with several poolings, so that what the encoder's pooling
drops can be told apart from what its features lack: the encoder's ``pooler_output``; the mean, and the mean
and standard deviation, of its patch tokens over the clip; and the input features' per-bin mean, standard
deviation, and both (the recipes' trivial baseline). Each at C=1 and with C chosen by cross-validation.

    python experiments/diag_baseline_gap.py outputs/quickstart random:cat-small:0 --clip_seconds 4 \\
        --max_length 400 --train_clips 800
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch
from accelerate import PartialState
from probe_encoder import _load

from hf_audiorep.data.arguments import DataArguments
from hf_audiorep.evaluation import ProbeArguments, linear_probe
from hf_audiorep.evaluation.linear_probe import clip_input_statistics
from hf_audiorep.evaluation.probe import probe_batches
from hf_audiorep.training import TrainingArguments


@torch.no_grad()
def _features(encoder, feature_extractor, batches) -> tuple[dict[str, np.ndarray], np.ndarray]:
    encoder.eval()
    found, targets = defaultdict(list), []
    for batch in batches:
        values, mask = feature_extractor.batch_features(batch["waveforms"].float(), batch["lengths"])
        outputs = encoder(input_values=values, attention_mask=mask)
        grid_t, grid_f = encoder.grid_shape(values.shape[1])
        tokens = outputs.last_hidden_state[:, -grid_t * grid_f :].float()  # the patch tokens
        statistics = clip_input_statistics(values, mask)
        bins = values.shape[-1]
        found["encoder: pooler_output"].append(outputs.pooler_output.float())
        found["encoder: mean of patch tokens"].append(tokens.mean(1))
        found["encoder: mean and std of patch tokens"].append(torch.cat([tokens.mean(1), tokens.std(1)], 1))
        found["input: mean per bin"].append(statistics[:, :bins])
        found["input: std per bin"].append(statistics[:, bins:])
        found["input: mean and std per bin"].append(statistics)
        targets.append(np.asarray(batch["labels"]))
    return {name: torch.cat(rows).numpy() for name, rows in found.items()}, np.concatenate(targets)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="model directories or random:<preset>[:<seed>]")
    parser.add_argument("--clip_seconds", type=float, default=4.0, help="clip length of the probe clips")
    parser.add_argument("--max_length", type=int, default=400, help="frames of a random:<preset> encoder")
    parser.add_argument("--train_clips", type=int, default=800, help="train clips the probes are fitted on")
    args = parser.parse_args()

    data = DataArguments(clip_seconds=args.clip_seconds, num_decode_threads=1)
    train = TrainingArguments(output_dir="outputs/probe", per_device_batch_size=16, cpu=True)
    clips = probe_batches(
        ProbeArguments(probe_train_clips=args.train_clips), data, train, 16000, PartialState(cpu=True)
    )
    print("| encoder | features | dims | C=1 | C by CV (C) |\n|---|---|---:|---:|---:|", flush=True)
    for name in args.models:
        encoder, feature_extractor = _load(name, args.max_length)
        train_X, train_Y = _features(encoder, feature_extractor, clips("train", args.train_clips))
        test_X, test_Y = _features(encoder, feature_extractor, clips("test", None))
        for features in train_X:
            fixed = linear_probe(train_X[features], train_Y, test_X[features], test_Y)
            chosen = linear_probe(train_X[features], train_Y, test_X[features], test_Y, C="auto")
            print(
                f"| {name} | {features} | {train_X[features].shape[1]} | {fixed['probe_mAP']:.4f} | "
                f"{chosen['probe_mAP']:.4f} ({chosen['probe_C']:g}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
