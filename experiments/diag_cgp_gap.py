"""Why CGP did not close the linear -> fine-tuning gap on BAT-small and CAT-small (issue "BAT and Convex Gated
Probing"). For each saved encoder, on the corpus's 4-s clips, layer by layer:

- where a token's variance lies: the share shared by every clip at the token's position (the position
  pattern, which a prototype's cosine similarity then matches in every clip alike), and the share between
  clips (their mean tokens), of the layer-normalised tokens the probe heads read (test split);
- a converged linear probe (the library's L-BFGS logistic regression on standardised features,
  `linear_probe`) of the CLS token and of the mean of the patch tokens: what a linear map of the frozen
  features reaches when its optimiser is not the limit, against the AdamW heads of ``recipes/probe.py``.

    OMP_NUM_THREADS=1 python experiments/diag_cgp_gap.py outputs/probe_table/pretrain_bat-small \\
        outputs/probe_table/pretrain_cat-small outputs/probe_table/pretrain_audiomae-tiny

An encoder given as ``random:<preset>:<seed>`` is the preset's random initialisation at the corpus's 4-s
window, as ``recipes/probe.py --preset <preset> --max_length 400 --seed <seed>`` builds it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModel, set_seed

import hf_audiorep  # registers the library's models
from hf_audiorep.data.embedded import load_embedded_corpus
from hf_audiorep.data.sources import load_audio_source
from hf_audiorep.data.stream import AudioStream
from hf_audiorep.evaluation.linear_probe import linear_probe
from hf_audiorep.evaluation.probing import LayerFeatureEncoder
from hf_audiorep.registry import feature_extractor_for


def _split_features(encoder: LayerFeatureEncoder, dataset, clip_seconds: float):
    """Every clip's layer-normalised tokens ``(clips, layers, tokens, dim)`` and multi-hot labels. The clips
    are all ``clip_seconds`` long, so every token is real and positions line up across clips."""
    rate = encoder.feature_extractor.sampling_rate
    stream = AudioStream(
        load_audio_source(dataset), batch_size=16, sample_rate=rate, clip_seconds=clip_seconds, train=False
    )
    features, labels = [], []
    for batch in stream:
        tokens, mask = encoder.layer_features(batch["waveforms"], batch["lengths"], rate)
        if not mask.all():
            raise ValueError("a clip shorter than --clip_seconds: positions would not line up")
        features.append(F.layer_norm(tokens, (tokens.shape[-1],)))
        labels.append(batch["labels"].numpy())
    return torch.cat(features), np.concatenate(labels)


def variance_shares(features: torch.Tensor) -> list[tuple[float, float]]:
    """Per layer, the share of the tokens' variance that is their position's mean over the clips, and the
    share that is the clips' mean tokens (the rest is within a clip and not shared by position)."""
    shares = []
    for layer in features.unbind(dim=1):  # (clips, tokens, dim)
        centred = layer - layer.mean(dim=(0, 1))
        total = centred.pow(2).sum(-1).mean()
        position = centred.mean(dim=0).pow(2).sum(-1).mean()
        clip = centred.mean(dim=1).pow(2).sum(-1).mean()
        shares.append((float(position / total), float(clip / total)))
    return shares


def _load(spec: str) -> LayerFeatureEncoder:
    """A saved encoder, or ``random:<preset>:<seed>``: the preset's random weights as the probe recipe draws
    them (the same seed, then the model built from the preset's config at the 4-s window)."""
    if not spec.startswith("random:"):
        return LayerFeatureEncoder.from_pretrained(spec)
    _, preset, seed = spec.split(":")
    set_seed(int(seed))
    config = hf_audiorep.config_from_preset(preset, max_length=400)
    return LayerFeatureEncoder(AutoModel.from_config(config), feature_extractor_for(config), "hf_audiorep")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", help="saved encoders (this library's ViTs: their CLS first)")
    parser.add_argument("--clip_seconds", type=float, default=4.0, help="the corpus's clip length")
    args = parser.parse_args()
    corpus = load_embedded_corpus(seed=0, clip_seconds=args.clip_seconds)
    for path in args.encoders:
        encoder = _load(path)
        train_X, train_Y = _split_features(encoder, corpus["train"], args.clip_seconds)
        test_X, test_Y = _split_features(encoder, corpus["test"], args.clip_seconds)
        print(f"\n{path}: {tuple(train_X.shape[1:])} (layers, tokens, dim)")
        print("| hidden state | position share | clip share | linear probe (L-BFGS), CLS | mean of patches |")
        print("|---|---:|---:|---:|---:|")
        for index, (position, clip) in enumerate(variance_shares(test_X)):
            scores = [
                linear_probe(pool(train_X[:, index]), train_Y, pool(test_X[:, index]), test_Y)["probe_mAP"]
                for pool in (lambda x: x[:, 0].numpy(), lambda x: x[:, 1:].mean(dim=1).numpy())
            ]
            cells = f"{position:.2f} | {clip:.2f} | {scores[0]:.3f} | {scores[1]:.3f}"
            print(f"| {index} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
