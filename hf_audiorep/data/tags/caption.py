"""Captioners: audio -> text, with any transformers pipeline that turns audio into text.

UTS captioned its clips with an audio LLM (Qwen3-Omni-30B-A3B-Captioner). Here any pipeline does: an
``automatic-speech-recognition``-style pipeline gets ``{"raw": waveform, "sampling_rate": sr}``; a chat
pipeline (``any-to-any``, ``audio-text-to-text``, ``image-text-to-text``) gets a user message holding the
audio and the prompt. ``make_input`` overrides what one clip is sent as.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..decode import decode_audio
from .extract import generated_text

DEFAULT_CAPTION_PROMPT = (
    "Describe this audio clip in detail: the scene, every sound source and event, speech (voices, pitch, "
    "rate), music (instruments, tempo, mode, rhythm), the room and distance, loudness and recording quality."
)
_CHAT_TASKS = ("any-to-any", "audio-text-to-text", "image-text-to-text")


class AudioCaptioner:
    """Captions clips in batches with a pipeline (or a model id/path: ``task`` then says which pipeline).

    Args:
        captioner: a transformers pipeline, a model id or local path, or any callable taking a list of
            inputs and keyword arguments and returning one output per input.
        task: the pipeline task when ``captioner`` is a model id (default: the model's own).
        prompt: the instruction for chat pipelines.
        batch_size: clips per call.
        sampling_rate: the rate clips are resampled to (default: the pipeline's feature extractor's, else
            16 kHz).
        generate_kwargs: generation settings passed to the pipeline (``None``: the pipeline's defaults,
            e.g. greedy decoding for ASR).
        make_input: ``(waveform, sampling_rate) -> pipeline input`` for one clip, to override the default.
        progress: a progress bar over the batches.
    """

    def __init__(
        self,
        captioner: Any,
        *,
        task: str | None = None,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        batch_size: int = 8,
        sampling_rate: int | None = None,
        generate_kwargs: Mapping | None = None,
        make_input: Callable[[np.ndarray, int], Any] | None = None,
        device: str | int | None = None,
        progress: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if isinstance(captioner, str):
            from transformers import pipeline

            captioner = (
                pipeline(task, model=captioner, device=device)
                if task
                else pipeline(model=captioner, device=device)
            )
        self.pipeline = captioner
        self.task = task or getattr(captioner, "task", None)
        feature_extractor = getattr(captioner, "feature_extractor", None)
        self.sampling_rate = int(sampling_rate or getattr(feature_extractor, "sampling_rate", None) or 16000)
        self.prompt = prompt
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})
        self.make_input = make_input
        self.progress = progress

    def _input(self, waveform: np.ndarray):
        if self.make_input is not None:
            return self.make_input(waveform, self.sampling_rate)
        if self.task in _CHAT_TASKS:
            content = [{"type": "audio", "audio": waveform}, {"type": "text", "text": self.prompt}]
            return [{"role": "user", "content": content}]
        return {"raw": waveform, "sampling_rate": self.sampling_rate}

    def _call(self, batch: list) -> list[str]:
        kwargs = {"batch_size": len(batch)}
        if self.generate_kwargs:
            kwargs["generate_kwargs"] = self.generate_kwargs
        outputs = self.pipeline(batch, **kwargs)
        if isinstance(outputs, Mapping) and len(batch) == 1:
            outputs = [outputs]
        if len(outputs) != len(batch):
            raise RuntimeError(f"the captioner returned {len(outputs)} outputs for {len(batch)} clips")
        return [" ".join(generated_text(o).split()) for o in outputs]

    def caption(self, audio: Iterable, total: int | None = None) -> list[str]:
        """Captions of audio values (anything :func:`~hf_audiorep.data.decode.decode_audio` reads: a
        ``datasets.Audio`` value, ``{"array", "sampling_rate"}``, bytes, a path)."""
        from tqdm.auto import tqdm

        if total is None and isinstance(audio, Sequence):
            total = len(audio)
        captions: list[str] = []
        batch: list = []
        with tqdm(total=total, desc="captioning", unit="clip", disable=not self.progress) as bar:
            for value in audio:
                batch.append(self._input(decode_audio(value, self.sampling_rate)))
                if len(batch) == self.batch_size:
                    captions += self._call(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                captions += self._call(batch)
                bar.update(len(batch))
        return captions

    def describe(self) -> dict:
        model = getattr(self.pipeline, "model", None)
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
        return {
            "type": type(self).__name__,
            "model": str(name) if name else type(self.pipeline).__name__,
            "task": self.task,
            "prompt": self.prompt if self.task in _CHAT_TASKS else None,
            "sampling_rate": self.sampling_rate,
        }
