"""Caption the clips of a dataset with an audio captioner and score the captions against references: corpus
BLEU-1..4 and CIDEr-D, computed as coco-caption computes them, through the two `evaluate` modules under
``metric_modules`` (they load from a local path, so they work offline).

Captions come from autoregressive decoding (``model.generate``) or, with ``parallel=True``, from one parallel
(PAR) pass (``model.parallel_generate``), the two decoders UTS trains (arXiv 2603.25767).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = [
    "BLEU_METRIC_PATH",
    "CIDER_METRIC_PATH",
    "caption_metrics",
    "caption_waveforms",
    "check_captionable",
    "evaluate_captioning",
    "generate_captions",
]

_MODULES = Path(__file__).parent / "metric_modules"
#: Local path of the BLEU `evaluate` module: ``evaluate.load(BLEU_METRIC_PATH)`` works offline.
BLEU_METRIC_PATH = str(_MODULES / "caption_bleu" / "caption_bleu.py")
#: Local path of the CIDEr-D `evaluate` module: ``evaluate.load(CIDER_METRIC_PATH)`` works offline.
CIDER_METRIC_PATH = str(_MODULES / "caption_cider" / "caption_cider.py")


@functools.cache
def _metric(path: str):
    import evaluate

    return evaluate.load(path)


def caption_metrics(predictions, references) -> dict[str, float]:
    """``bleu_1`` .. ``bleu_4`` and ``cider`` (CIDEr-D) of ``predictions`` (one caption per clip) against
    ``references`` (per clip, one caption or a list of captions). CIDEr-D's document frequencies come from
    these references, so scores of different subsets of a split are not comparable. Raises ``ValueError``
    for an empty corpus, mismatched lengths or a clip without a reference."""
    predictions = list(predictions)
    references = [r if isinstance(r, str) else list(r) for r in references]
    bleu = _metric(BLEU_METRIC_PATH).compute(predictions=predictions, references=references)
    cider = _metric(CIDER_METRIC_PATH).compute(predictions=predictions, references=references)
    return {**{f"bleu_{n}": bleu[f"bleu_{n}"] for n in range(1, 5)}, "cider": cider["cider"]}


def _sampling_rate(processor) -> int:
    feature_extractor = getattr(processor, "feature_extractor", processor)
    rate = getattr(feature_extractor, "sampling_rate", None)
    if not rate:
        raise TypeError(
            f"{type(processor).__name__} names no sampling_rate: is it the captioner's processor?"
        )
    return int(rate)


def _check_captioner(model, parallel: bool) -> None:
    if parallel:
        if not callable(getattr(model, "parallel_generate", None)):
            raise TypeError(
                f"{type(model).__name__} has no parallel_generate: parallel (PAR) decoding needs a captioner "
                "such as ZipformerForConditionalGeneration"
            )
    elif not (callable(getattr(model, "can_generate", None)) and model.can_generate()):
        raise TypeError(f"{type(model).__name__} cannot generate text: it has no caption decoder")


def check_captionable(waveform, sampling_rate: int):
    """``waveform``, or ``ValueError`` naming its length when it is too short to caption: the encoder needs a
    few frames (a clip that short only passes when padded in a batch with longer ones, so it is refused
    whatever its batch)."""
    from ..inference import MIN_SECONDS, describe_duration

    if len(waveform) < MIN_SECONDS * sampling_rate:
        raise ValueError(
            f"the clip lasts {describe_duration(len(waveform), sampling_rate)}, too short to caption: at "
            f"least {MIN_SECONDS:g} s of audio is needed"
        )
    return waveform


def caption_waveforms(
    model, processor, waveforms: list, *, parallel: bool = False, max_new_tokens: int | None = None
) -> list[str]:
    """Captions of mono waveforms at the processor's sampling rate: one batch, one decoding pass. The model
    runs where its parameters are, in their dtype."""
    if not waveforms:
        return []
    parameter = next(model.parameters())
    inputs = processor(audio=waveforms, sampling_rate=_sampling_rate(processor), return_tensors="pt")
    input_values = inputs["input_values"].to(parameter.device, parameter.dtype)
    attention_mask = inputs.get("attention_mask")
    if attention_mask is not None:
        attention_mask = attention_mask.to(parameter.device)
    with torch.no_grad():
        if parallel:
            ids = model.parallel_generate(input_values, attention_mask, max_new_tokens)
        else:
            length = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
            ids = model.generate(input_values=input_values, attention_mask=attention_mask, **length)
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]


def generate_captions(
    model,
    processor,
    dataset,
    *,
    batch_size: int = 16,
    parallel: bool = False,
    max_new_tokens: int | None = None,
    clip_seconds: float | None = None,
    progress: bool = True,
    audio_column: str | None = None,
) -> list[str]:
    """One caption per clip of ``dataset``, in its order.

    Args:
        model: a captioner (``ZipformerForConditionalGeneration`` or any model whose ``generate`` takes
            ``input_values`` and ``attention_mask``); it runs where it is, in eval mode, and gets its training
            mode back afterwards.
        processor: its processor: ``processor(audio=[...], sampling_rate=..., return_tensors="pt")`` gives
            ``input_values`` and ``attention_mask``, ``processor.batch_decode`` the text.
        dataset: a ``datasets.Dataset`` or ``IterableDataset`` with an audio column (an ``Audio`` feature,
            file paths, or ``{"array", "sampling_rate"}`` records).
        batch_size: clips per decoding pass; only one batch of audio is held at a time.
        parallel: PAR decoding (``model.parallel_generate``, one pass) instead of autoregressive
            ``model.generate``.
        max_new_tokens: the caption length limit in tokens (default: the model's own).
        clip_seconds: caption only the first N seconds of each clip (default: all of it).
        progress: a progress bar over the clips (on a terminal).
        audio_column: the audio column (default: detected as ``load_audio_source`` does).

    Clips are read by the library's decoder (``data.decode.decode_audio``: soundfile, channels averaged,
    band-limited resampling to the processor's rate), as the probes read them. Raises ``ValueError`` naming
    the clip when one cannot be decoded or lasts under 0.1 s: a caption list with a hole would pair captions
    with the wrong references.
    """
    from datasets import Audio, Dataset, IterableDataset
    from tqdm.auto import tqdm

    from ..data.decode import CorruptAudioError, decode_audio
    from ..data.sources import find_audio_column

    if not isinstance(dataset, Dataset | IterableDataset):
        raise TypeError(
            f"dataset must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if clip_seconds is not None and not clip_seconds > 0:
        raise ValueError(f"clip_seconds must be positive, got {clip_seconds!r}")
    _check_captioner(model, parallel)
    sampling_rate = _sampling_rate(processor)
    column = find_audio_column(dataset, audio_column)
    audio = dataset.select_columns([column])
    if isinstance(audio.features[column], Audio):
        # Raw bytes in, so the library's decoder (soundfile, mono, band-limited resampling) does the work.
        audio = audio.cast_column(column, Audio(decode=False))
    limit = None if clip_seconds is None else round(clip_seconds * sampling_rate)
    total = len(dataset) if isinstance(dataset, Dataset) else None
    captions: list[str] = []
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=total, unit="clip", desc="captioning", disable=None if progress else True) as bar:
            for batch in audio.iter(batch_size=batch_size):
                waveforms = []
                for value in batch[column]:
                    try:
                        waveforms.append(
                            check_captionable(decode_audio(value, sampling_rate)[:limit], sampling_rate)
                        )
                    except (ValueError, OSError) as err:  # undecodable, empty, missing, too short
                        where = value.get("path") if isinstance(value, dict) else None
                        name = f" ({where})" if where else ""
                        raise CorruptAudioError(
                            f"clip {len(captions) + len(waveforms)}{name} cannot be captioned: {err}"
                        ) from err
                captions.extend(
                    caption_waveforms(
                        model, processor, waveforms, parallel=parallel, max_new_tokens=max_new_tokens
                    )
                )
                bar.update(len(waveforms))
    finally:
        model.train(was_training)
    return captions


def evaluate_captioning(
    model,
    processor,
    dataset,
    caption_column: str = "caption",
    parallel: bool = False,
    *,
    batch_size: int = 16,
    max_new_tokens: int | None = None,
    clip_seconds: float | None = None,
    num_examples: int = 5,
    progress: bool = True,
    audio_column: str | None = None,
) -> tuple[dict[str, float], list[tuple[str | list[str], str]]]:
    """Caption every clip of ``dataset`` (see :func:`generate_captions`) and score the captions against its
    ``caption_column`` (one caption or a list of captions per clip).

    Returns:
        the metrics ``{"bleu_1" .. "bleu_4", "cider"}`` and the first ``num_examples`` (reference(s),
        prediction) pairs, to read what the scores mean.
    """
    features = dataset.features
    if features is not None and caption_column not in features:
        raise ValueError(f"caption_column {caption_column!r} not in the dataset columns {list(features)}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative integer, got {num_examples!r}")
    predictions = generate_captions(
        model,
        processor,
        dataset,
        batch_size=batch_size,
        parallel=parallel,
        max_new_tokens=max_new_tokens,
        clip_seconds=clip_seconds,
        progress=progress,
        audio_column=audio_column,
    )
    # Text only: the audio column is not read (or decoded) a second time.
    references = [row[caption_column] for row in dataset.select_columns([caption_column])]
    metrics = caption_metrics(predictions, references)
    examples = list(zip(references, predictions, strict=True))[:num_examples]
    return metrics, examples
