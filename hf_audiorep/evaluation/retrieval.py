"""Audio-text retrieval and zero-shot tagging with an audio-text contrastive model
(`~hf_audiorep.modeling.modeling_zipformer_clap.ZipformerForAudioTextContrastive`).

- Retrieval: for paired rows (clip ``i`` and its text ``i``), ``audio_to_text_R@k`` is the fraction of clips
  whose own text is among the ``k`` texts most similar to it (cosine), ``text_to_audio_R@k`` the same from
  the texts' side (the AudioCaps / Clotho protocol with one caption per clip).
- Zero-shot tagging: each clip is scored against the text embedding of every label name (put in a
  ``template`` such as ``"the sound of {}"``) and the scores are ranked per class by the library's mAP; the
  mAP of a constant score (the classes' prevalence) is reported alongside as chance.

The audio of a ``datasets`` split is read by the library's `AudioStream` (decoding, resampling, cropping to
``clip_seconds`` and padding), as the probes read it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sources import labels_outside_vocabulary, load_audio_source
from ..data.stream import AudioStream
from .metrics import mean_average_precision

__all__ = [
    "embed_audio_text",
    "embed_texts",
    "retrieval_recall",
    "zero_shot_scores",
    "zero_shot_tagging",
]


def _as_matrix(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (rows, dim) array, got shape {tuple(x.shape)}")
    return x


def _recall_at(scores: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Fraction of rows whose diagonal entry ranks within the top ``k`` of the row.

    Ties count against the row (pessimistic): the rank of the true item is the number of items scoring at
    least as high as it, itself included, so a constant score gives rank N, never 1.
    """
    true = scores.diagonal().unsqueeze(1)
    ranks = (scores >= true).sum(dim=1)
    return {k: float((ranks <= k).float().mean()) for k in ks}


def retrieval_recall(audio_embeds, text_embeds, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """Recall@k in both directions for paired rows (row ``i`` of each is a pair), by cosine similarity.

    A ``k`` of N or more (N pairs) gives 1.0: every item is within the top N. Ties are pessimistic (see
    `_recall_at`). Returns ``{"audio_to_text_R@k": ..., "text_to_audio_R@k": ...}`` for every ``k``.
    """
    audio = _as_matrix("audio_embeds", audio_embeds)
    text = _as_matrix("text_embeds", text_embeds)
    if audio.shape != text.shape:
        raise ValueError(
            f"audio_embeds {tuple(audio.shape)} and text_embeds {tuple(text.shape)} must be paired rows "
            "of one width"
        )
    if not ks or any(isinstance(k, bool) or int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    scores = F.normalize(audio, dim=-1) @ F.normalize(text, dim=-1).T
    results = {}
    for direction, matrix in (("audio_to_text", scores), ("text_to_audio", scores.T)):
        for k, recall in _recall_at(matrix, [int(k) for k in ks]).items():
            results[f"{direction}_R@{k}"] = recall
    return results


@torch.no_grad()
def embed_texts(
    model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 30
) -> np.ndarray:
    """``model.get_text_features`` of ``texts``, ``(len(texts), projection_dim)`` float32."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        embeds = model.get_text_features(
            encoded["input_ids"].to(device), encoded["attention_mask"].to(device)
        )
        parts.append(embeds.float().cpu().numpy())
    return np.concatenate(parts)


@torch.no_grad()
def _embed_split(model, feature_extractor, stream, text_column: str | None):
    """Audio embeddings, targets and (with ``text_column``) the texts of every clip of ``stream``."""
    device = next(model.parameters()).device
    audio, targets, texts = [], [], []
    for batch in stream:
        waveforms = batch["waveforms"].to(device)
        # The filterbank stays in float32 even when the caller runs under autocast.
        with torch.autocast(device.type, enabled=False):
            features, mask = feature_extractor.batch_features(waveforms.float(), batch["lengths"].to(device))
        audio.append(model.get_audio_features(features, mask).float().cpu().numpy())
        targets.append(batch["labels"].numpy())
        if text_column is not None:
            texts.extend(batch[text_column])
    if not audio:
        raise ValueError("the dataset produced no clips")
    return np.concatenate(audio), np.concatenate(targets), texts


def _stream(dataset, feature_extractor, batch_size, clip_seconds, extra=(), label_names=None) -> AudioStream:
    source = load_audio_source(dataset, label_names=label_names)
    if label_names is not None:
        # A ClassLabel column stores indices of its own names: read against label_names in another order
        # they would name other classes (and the prompts would meet the wrong targets). Refuse that, and
        # labels the prompts do not name.
        unknown = labels_outside_vocabulary(source)
        if unknown:
            raise ValueError(f"the dataset has labels that label_names does not name: {unknown[:10]}")
    return AudioStream(
        source,
        batch_size=batch_size,
        sample_rate=feature_extractor.sampling_rate,
        clip_seconds=clip_seconds,
        train=False,
        extra_columns=extra,
    )


def embed_audio_text(
    model,
    feature_extractor,
    tokenizer,
    dataset,
    text_column: str = "text",
    batch_size: int = 8,
    clip_seconds: float = 10.0,
    max_text_length: int = 30,
) -> tuple[np.ndarray, np.ndarray]:
    """Audio and text embeddings of a ``datasets`` split with an ``audio`` column and one text per clip
    (``text_column``), row ``i`` of both from clip ``i``: the input of `retrieval_recall`.

    Clips are cut to their first ``clip_seconds`` (the model's training length). The model is in eval mode
    meanwhile and gets its mode back after.
    """
    if text_column not in dataset.column_names:
        raise ValueError(f"text_column {text_column!r} not in the dataset columns {dataset.column_names}")
    was_training = model.training
    model.eval()
    try:
        stream = _stream(dataset, feature_extractor, batch_size, clip_seconds, extra=(text_column,))
        audio, _, texts = _embed_split(model, feature_extractor, stream, text_column)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError(f"column {text_column!r} must hold one string per clip")
        text = embed_texts(model, tokenizer, texts, max_length=max_text_length)
    finally:
        model.train(was_training)
    return audio, text


def zero_shot_scores(audio_embeds, label_embeds, targets) -> dict[str, float]:
    """mAP of cosine scores between clips and label texts against the multi-hot ``targets``, and the chance
    mAP (every clip scored alike: each class's AP is its prevalence)."""
    audio = _as_matrix("audio_embeds", audio_embeds)
    labels = _as_matrix("label_embeds", label_embeds)
    targets = np.asarray(targets, dtype=np.float64)
    if audio.shape[1] != labels.shape[1]:
        raise ValueError(
            f"audio_embeds ({audio.shape[1]}) and label_embeds ({labels.shape[1]}) differ in width"
        )
    if targets.shape != (audio.shape[0], labels.shape[0]):
        raise ValueError(
            f"targets must be (clips, labels) = {(audio.shape[0], labels.shape[0])}, got {targets.shape}"
        )
    scores = (F.normalize(audio, dim=-1) @ F.normalize(labels, dim=-1).T).numpy()
    tagging = mean_average_precision(scores, targets)
    prevalence = (targets >= 0.5).mean(axis=0)
    return {
        "zero_shot_mAP": tagging.mAP,
        "zero_shot_mAUC": tagging.mAUC,
        "chance_mAP": float(prevalence[prevalence > 0].mean()),
        "num_clips": tagging.num_clips,
        "num_classes_evaluated": tagging.num_classes_evaluated,
    }


def zero_shot_tagging(
    model,
    feature_extractor,
    tokenizer,
    dataset,
    label_names: Sequence[str],
    template: str = "{}",
    batch_size: int = 8,
    clip_seconds: float = 10.0,
) -> dict[str, float]:
    """Zero-shot tagging of a ``datasets`` split with an ``audio`` column and multi-hot labels: each clip's
    audio embedding against the text embedding of ``template.format(name)`` for every label name; mAP (the
    library's) and the chance mAP. ``label_names`` fixes the class order the dataset's labels are read in.
    """
    if "{}" not in template:
        raise ValueError(f"template must hold '{{}}' where the label name goes, got {template!r}")
    was_training = model.training
    model.eval()
    try:
        stream = _stream(dataset, feature_extractor, batch_size, clip_seconds, label_names=list(label_names))
        audio, targets, _ = _embed_split(model, feature_extractor, stream, None)
        prompts = [template.format(name) for name in label_names]
        labels = embed_texts(model, tokenizer, prompts)
    finally:
        model.train(was_training)
    return zero_shot_scores(audio, labels, targets)
