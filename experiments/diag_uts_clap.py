"""Has a UTS audio-text contrastive model collapsed? Its embeddings of the first 16 test clips and their
captions, read from a saved state dict (a training checkpoint's ``model.safetensors``: the run's config is
only written at its end, so the model is rebuilt from the weights' shapes, zipformer-small with the `small`
text tower; a finished run's model is loaded with its config).

Prints the mean cosine between different clips' audio embeddings and between different captions' text
embeddings (1: every input maps to one point, so InfoNCE sits at ln(batch) with no gradient), the same for
the encoder's pooled frames, and the fraction of each projection's ReLUs that are active (near 0: dead units).

    PYTHONPATH=. python experiments/diag_uts_clap.py outputs/uts_objectives/contrastive_s0/model.safetensors

``--untrained`` instead measures where a run from scratch starts (seed 0): the cosine between clips' audio
embeddings from raw and from standardised frames, and between captions' text embeddings from the [CLS] state
and from the mean over the tokens (the recipe's ``--text_frames_norm`` and ``--text_pooling``).

    PYTHONPATH=. python experiments/diag_uts_clap.py --untrained
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
from hf_audiorep.modeling._layers import masked_mean

CLIPS = 16


def _between(embeds: torch.Tensor) -> float:
    """Mean cosine between different rows of unit-norm ``embeds``."""
    return (embeds @ embeds.T)[~torch.eye(len(embeds), dtype=torch.bool)].mean().item()


def _config(vocab_size: int) -> ZipformerConfig:
    """zipformer-small with the `small` text tower (what the objective comparison trains), [CLS] pooling."""
    return ZipformerConfig.from_preset(
        "zipformer-small", text_config={**TEXT_ENCODER_PRESETS["small"], "vocab_size": vocab_size}
    )


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "weights", nargs="?", help="model.safetensors of a contrastive run (final or a checkpoint)"
    )
    parser.add_argument(
        "--untrained", action="store_true", help="measure a seed-0 model from scratch instead"
    )
    args = parser.parse_args()
    if not args.untrained and not args.weights:
        parser.error("give the weights of a contrastive run, or --untrained")
    corpus = load_embedded_corpus(clip_seconds=3.0)
    test = corpus["test"].select(range(CLIPS))
    audio = ZipformerFbankFeatureExtractor()(
        [np.asarray(a["array"], dtype=np.float32) for a in test["audio"]],
        sampling_rate=16000,
        return_tensors="pt",
    )
    # The run's offline tokenizer, near enough: the recipe trains it on these captions plus the tag names.
    tokenizer = train_wordpiece_tokenizer(corpus["train"]["caption"], 1000)
    if args.untrained:
        torch.manual_seed(0)
        model = ZipformerForAudioTextContrastive(_config(len(tokenizer))).eval()
    elif (Path(args.weights).parent / "config.json").exists():
        # a finished run: its config says how the towers pool and normalise
        model = ZipformerForAudioTextContrastive.from_pretrained(Path(args.weights).parent).eval()
    else:
        state = load_file(args.weights)
        model = ZipformerForAudioTextContrastive(
            _config(state["text_model.embeddings.word_embeddings.weight"].shape[0])
        )
        model.load_state_dict(state)
        model.eval()
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
    if args.untrained:
        frames, valid = encoded.last_hidden_state, encoded.attention_mask
        standardised = (frames - frames.mean((0, 1))) / frames.std((0, 1))
        hidden = model.text_model(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        tokens_mean = masked_mean(hidden.last_hidden_state, text["attention_mask"], dim=1)
        audio_row = "cosine between clips' audio embeddings"
        text_row = "cosine between captions' text embeddings"
        pooled_row = "cosine between clips' pooled encoder frames"
        rows = {
            f"{audio_row}, raw frames": rows[audio_row],
            f"{audio_row}, standardised frames": _between(
                F.normalize(masked_mean(model.audio_projection(standardised), valid, dim=1), dim=-1)
            ),
            f"{text_row}, [CLS]": rows[text_row],
            f"{text_row}, mean over tokens": _between(
                F.normalize(model.text_projection(tokens_mean), dim=-1)
            ),
            pooled_row: rows[pooled_row],
        }
    for name, value in rows.items():
        print(f"{name}: {float(value):.5f}")


if __name__ == "__main__":
    main()
