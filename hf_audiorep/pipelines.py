"""``pipeline("audio-classification")`` for the library's classifiers: the whole clip, scored as trained.

transformers' ``AudioClassificationPipeline`` feeds one feature-extractor call to the model, so a clip longer
than the model's window is silently cut to its first window, and it decodes through an ``ffmpeg`` pipe that
accepts a truncated FLAC without a word. :class:`AudioTaggingPipeline` is registered for the
``audio-classification`` task when ``hf_audiorep`` is imported. For the library's models it decodes with the
library's decoder (clear errors for missing, non-audio or damaged files), scores every window as the CLI and
the Space do (:mod:`hf_audiorep.inference`; a file path is streamed in bounded memory), and applies the
model's own activation (sigmoid for tagging, softmax for single-label) unless ``function_to_apply`` says
otherwise. Every other model goes through transformers' pipeline unchanged.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from transformers.pipelines import PIPELINE_REGISTRY, AudioClassificationPipeline
from transformers.utils import logging as hf_logging

from .data.decode import decode_audio
from .inference import tag_file, tag_waveform


def _library_model_types() -> set[str]:
    from .registry import ARCHITECTURES

    return {architecture.model_type for architecture in ARCHITECTURES}


class AudioTaggingPipeline(AudioClassificationPipeline):
    """transformers' audio-classification pipeline, scoring whole clips for hf_audiorep models.

    Inputs are those of the parent: a file path (or http(s) URL), encoded bytes, a 1-D array at the
    feature extractor's rate, a ``{"array" or "raw", "sampling_rate"}`` dict, or a torchcodec decoder.
    """

    def _is_library_model(self) -> bool:
        return getattr(self.model.config, "model_type", None) in _library_model_types()

    def _sanitize_parameters(self, top_k=None, function_to_apply=None, **kwargs):
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k, function_to_apply, **kwargs)
        if self._is_library_model() and "function_to_apply" in postprocess:
            # Windows are aggregated after the activation (max of sigmoids, mean of softmaxes), so it is
            # applied in the forward step, not on the aggregate.
            forward["activation"] = postprocess.pop("function_to_apply")
        return preprocess, forward, postprocess

    def preprocess(self, inputs):
        if not self._is_library_model():
            return super().preprocess(inputs)
        rate = self.feature_extractor.sampling_rate
        if isinstance(inputs, str) and inputs.startswith(("http://", "https://")):
            import httpx

            inputs = httpx.get(inputs, follow_redirects=True).content
        if isinstance(inputs, str | os.PathLike):
            return {"path": os.fspath(inputs)}  # streamed from the decoder in _forward
        if isinstance(inputs, dict) and "raw" in inputs and "array" not in inputs:
            inputs = {"array": inputs["raw"], "sampling_rate": inputs.get("sampling_rate")}
        if isinstance(inputs, np.ndarray | torch.Tensor):
            # A bare array is mono audio at the model's rate (the parent pipeline's convention).
            if inputs.ndim != 1:
                raise ValueError(
                    f"expected a single channel (1-D) waveform, got shape {tuple(inputs.shape)}: downmix it, "
                    "or pass the file path"
                )
            return {"waveform": decode_audio(inputs, rate, sampling_rate=rate)}
        return {"waveform": decode_audio(inputs, rate)}

    def _forward(self, model_inputs, activation=None):
        if not self._is_library_model():
            return super()._forward(model_inputs)
        model, fe = self.model, self.feature_extractor
        if "path" in model_inputs:
            result, _ = tag_file(model, fe, model_inputs["path"], activation=activation)
        else:
            result = tag_waveform(
                model, fe, model_inputs["waveform"], fe.sampling_rate, activation=activation
            )
        return {"result": result}

    def postprocess(self, model_outputs, top_k=5, function_to_apply=None):
        if not self._is_library_model():
            return super().postprocess(model_outputs, top_k, function_to_apply)
        return [{"score": score, "label": label} for label, score in model_outputs["result"].top(top_k)]


def register_pipeline() -> None:
    """Make :class:`AudioTaggingPipeline` the ``audio-classification`` pipeline (it defers to transformers'
    for every model that is not the library's)."""
    task = PIPELINE_REGISTRY.supported_tasks["audio-classification"]
    if task["impl"] is AudioTaggingPipeline:
        return
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "already registered, overwriting" is the point here, not a warning
    try:
        PIPELINE_REGISTRY.register_pipeline(
            "audio-classification",
            pipeline_class=AudioTaggingPipeline,
            pt_model=task["pt"],
            default=task.get("default"),
            type=task.get("type"),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
