"""Has a UTS audio-text contrastive model collapsed? Its embeddings of the first 16 test clips and their
captions, read from a saved state dict (a training checkpoint's ``model.safetensors``: the run's config is
only written at its end, so the model is rebuilt from the weights' shapes, zipformer-small with the `small`
text tower).

Prints the mean cosine between different clips' audio embeddings and between different captions' text
embeddings (1: every input maps to one point, so InfoNCE sits at ln(batch) with no gradient), the same for
the encoder's pooled frames, and the fraction of each projection's ReLUs that are active (near 0: dead units).

    PYTHONPATH=. python experiments/diag_uts_clap.py outputs/uts_objectives/contrastive_s0/model.safetensors
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from hf_audiorep.data import load_embedded_corpus
from hf_audiorep.data.text_tokenizers import train_wordpiece_tokenizer
from hf_audiorep.modeling import (
    TEXT_ENCODER_PRESETS,
    ZipformerConfig,
    ZipformerFbankFeatureExtractor,
    ZipformerForAudioTextContrastive,
)

CLIPS = 16


def _between(embeds: torch.Tensor) -> float:
    """Mean cosine between different rows of unit-norm ``embeds``."""
    return (embeds @ embeds.T)[~torch.eye(len(embeds), dtype=torch.bool)].mean().item()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="model.safetensors of a contrastive run (final or a checkpoint)")
    args = parser.parse_args()
    state = load_file(args.weights)
    vocab = state["text_model.embeddings.word_embeddings.weight"].shape[0]
    config = ZipformerConfig.from_preset(
        "zipformer-small", text_config={**TEXT_ENCODER_PRESETS["small"], "vocab_size": vocab}
    )
    model = ZipformerForAudioTextContrastive(config)
    model.load_state_dict(state)
    model.eval()
    corpus = load_embedded_corpus(clip_seconds=3.0)
    test = corpus["test"].select(range(CLIPS))
    audio = ZipformerFbankFeatureExtractor()(
        [np.asarray(a["array"], dtype=np.float32) for a in test["audio"]],
        sampling_rate=16000,
        return_tensors="pt",
    )
    # The run's offline tokenizer, near enough: the recipe trains it on these captions plus the tag names.
    tokenizer = train_wordpiece_tokenizer(corpus["train"]["caption"], 1000)
    text = tokenizer(
        list(test["caption"]), padding=True, truncation=True, max_length=128, return_tensors="pt"
    )
    encoded = model.zipformer(audio["input_values"], attention_mask=audio["attention_mask"])
    cls = model.text_model(
        input_ids=text["input_ids"], attention_mask=text["attention_mask"]
    ).last_hidden_state[:, 0]
    rows = {
        "audio projection ReLUs active": (model.audio_projection[0](encoded.last_hidden_state) > 0)
        .float()
        .mean(),
        "text projection ReLUs active": (model.text_projection[0](cls) > 0).float().mean(),
        "cosine between clips' audio embeddings": _between(
            model.get_audio_features(audio["input_values"], audio["attention_mask"])
        ),
        "cosine between captions' text embeddings": _between(
            model.get_text_features(text["input_ids"], text["attention_mask"])
        ),
        "cosine between clips' pooled encoder frames": _between(F.normalize(encoded.pooler_output, dim=-1)),
    }
    for name, value in rows.items():
        print(f"{name}: {float(value):.5f}")


if __name__ == "__main__":
    main()
