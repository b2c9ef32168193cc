"""Does a UTS caption decoder read the audio? Teacher-forced loss of saved captioners with the clip's own
encoder output, another clip's, and none.

A captioner whose loss is the same with another clip's audio (or with zeros) has learned the captions'
language and not the audio, and its encoder gets no signal worth having: what the objective comparison
(`experiments/uts_objectives.py`) reads as AR/PAR encoders at or below their random initialisation. Each
model is scored on the first ``--clips`` test clips of the 3-s corpus, in its own decoding (AR: ``[<s>] +
tokens``, causal; PAR: all ``<mask>``, bidirectional), with label smoothing 0; the frames' cosine similarity
across clips (how much of the encoder output is common to every clip) is printed beside.

    PYTHONPATH=. python experiments/diag_uts_text.py outputs/uts_objectives/{ar,par}_caption_s0
    PYTHONPATH=. python experiments/diag_uts_text.py --text_field tags outputs/uts_objectives/{ar,par}_tags_s0
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

import hf_audiorep  # noqa: F401  (registers the Auto classes)
from hf_audiorep.data import load_embedded_corpus
from hf_audiorep.data.tags import TagSystem, TagSystemBuilder
from hf_audiorep.objectives.captioning import caption_decoder_inputs
from hf_audiorep.uts_text_recipe import tags_text

CLIP_SECONDS = 3.0


def _texts(path: str, test, text_field: str) -> list[str]:
    """Each test clip's text as the run trained on it: its caption, or its tags in the run's vocabulary
    (tagged from the caption as the recipe tags its test split)."""
    if text_field == "caption":
        return list(test["caption"])
    tag_system = TagSystem.from_pretrained(path)
    tagged = TagSystemBuilder("default", caption_column="caption").tag(test).tags
    return [tags_text([n for n in tag_system.names if n in set(tags)]) for tags in tagged]


def _batches(texts: list[str], corpus, processor, clips: int, batch_size: int):
    test = corpus["test"].select(range(clips))
    for start in range(0, clips, batch_size):
        rows = test.select(range(start, min(start + batch_size, clips)))
        waves = [np.asarray(a["array"], dtype=np.float32) for a in rows["audio"]]
        yield (
            processor(audio=waves, sampling_rate=16000, return_tensors="pt"),
            texts[start : start + len(rows)],
        )


def _loss(model, encoder_outputs, inputs) -> float:
    logits = model(encoder_outputs=encoder_outputs, **inputs).logits
    labels = inputs["labels"]
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()


@torch.no_grad()
def diagnose(path: str, clips: int, batch_size: int, parallel: bool, corpus, text_field: str) -> dict:
    model = AutoModelForSpeechSeq2Seq.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    tok = processor.tokenizer
    totals = {"own audio": [], "another clip's audio": [], "no audio (zeros)": []}
    pooled = []
    texts = _texts(path, corpus["test"].select(range(clips)), text_field)
    for features, captions in _batches(texts, corpus, processor, clips, batch_size):
        encoded = model.zipformer(features["input_values"], attention_mask=features["attention_mask"])
        ids = [tok(c, add_special_tokens=False).input_ids for c in captions]
        flags = torch.full((len(ids),), parallel)
        inputs = caption_decoder_inputs(
            ids,
            flags,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            mask_token_id=tok.mask_token_id,
            max_length=128,
        )
        totals["own audio"].append(_loss(model, encoded, inputs))
        rolled = type(encoded)(
            last_hidden_state=encoded.last_hidden_state.roll(1, dims=0),
            attention_mask=encoded.attention_mask.roll(1, dims=0),
        )
        totals["another clip's audio"].append(_loss(model, rolled, inputs))
        zeros = type(encoded)(
            last_hidden_state=torch.zeros_like(encoded.last_hidden_state),
            attention_mask=encoded.attention_mask,
        )
        totals["no audio (zeros)"].append(_loss(model, zeros, inputs))
        pooled.append(encoded.pooler_output)
    pooled = F.normalize(torch.cat(pooled), dim=-1)
    similarity = pooled @ pooled.T
    off_diagonal = similarity[~torch.eye(len(pooled), dtype=torch.bool)].mean().item()
    return {
        **{k: float(np.mean(v)) for k, v in totals.items()},
        "mean cosine between clips' pooled frames": off_diagonal,
    }


@torch.no_grad()
def untrained_cosine(clips: int, corpus) -> float:
    """The same cosine for an untrained ``zipformer-small`` (seed 0): where every run starts."""
    from hf_audiorep.modeling import ZipformerConfig, ZipformerFbankFeatureExtractor, ZipformerModel

    torch.manual_seed(0)
    model = ZipformerModel(ZipformerConfig.from_preset("zipformer-small")).eval()
    test = corpus["test"].select(range(clips))
    waves = [np.asarray(a["array"], dtype=np.float32) for a in test["audio"]]
    features = ZipformerFbankFeatureExtractor()(waves, sampling_rate=16000, return_tensors="pt")
    pooled = F.normalize(model(**features).pooler_output, dim=-1)
    return (pooled @ pooled.T)[~torch.eye(len(pooled), dtype=torch.bool)].mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="saved captioners (recipe output folders)")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="also the cosine between clips of an untrained zipformer-small",
    )
    parser.add_argument(
        "--text_field",
        choices=("caption", "tags"),
        default="caption",
        help="the text the models were trained on (the recipe's --text_field; default: caption)",
    )
    parser.add_argument("--clips", type=int, default=96, help="test clips scored (default: 96)")
    parser.add_argument("--batch_size", type=int, default=16, help="clips per batch (default: 16)")
    args = parser.parse_args()
    corpus = load_embedded_corpus(clip_seconds=CLIP_SECONDS)
    if args.untrained:
        cosine = untrained_cosine(args.clips, corpus)
        print(f"untrained zipformer-small, mean cosine between clips' pooled frames: {cosine:.3f}")
    if not args.models:
        return
    rows = []
    for path in args.models:
        for parallel in (False, True):
            result = diagnose(path, args.clips, args.batch_size, parallel, corpus, args.text_field)
            rows.append((path, "PAR" if parallel else "AR", result))
    keys = list(rows[0][2])
    print("| model | decoding | " + " | ".join(keys) + " |")
    print("|---|---|" + "---:|" * len(keys))
    for path, kind, result in rows:
        print(f"| {path} | {kind} | " + " | ".join(f"{result[k]:.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
