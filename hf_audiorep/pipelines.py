"""``pipeline("audio-classification")`` for the library's classifiers: the whole clip, scored as trained.

transformers' ``AudioClassificationPipeline`` feeds one feature-extractor call to the model, so a clip longer
than the model's window is silently cut to its first window, and it decodes through an ``ffmpeg`` pipe that
accepts a truncated FLAC without a word. :class:`AudioTaggingPipeline` is registered for the
``audio-classification`` task when ``hf_audiorep`` is imported. For the library's models it decodes with the
library's decoder (clear errors for missing, non-audio or damaged files), scores every window as the CLI and
the Space do (:mod:`hf_audiorep.inference`; a file path is streamed in bounded memory), and applies the
model's own activation (sigmoid for tagging, softmax for single-label) unless ``function_to_apply`` says
otherwise. Every other model goes through transformers' pipeline unchanged.

``batch_size`` (over a list, dataset or generator of inputs) gives each input the result ``batch_size=1``
gives it: clips are scored one at a time, and a ``batch_size`` above the library's default number of windows
per forward pass raises that number for each clip. Windows of different clips are not stacked into one
forward pass: a front end without a fixed ``target_length`` would pad a short clip to a longer clip's window
and change its scores.
"""

from __future__ import annotations

import numbers
import os

import numpy as np
import torch
from transformers.pipelines import PIPELINE_REGISTRY, AudioClassificationPipeline
from transformers.utils import logging as hf_logging

from .data.decode import decode_audio
from .inference import tag_file, tag_waveform

#: windows per forward pass at ``batch_size=1``: ``tag_windows``' default, the CLI's too
_WINDOWS_PER_PASS = 8


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
        if top_k is not None and self._is_library_model():
            # As the CLI's --top_k: slicing would turn 0 into no labels and -1 into all labels but one.
            if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
                raise ValueError(f"top_k must be a positive integer or None (every label), got {top_k!r}")
            top_k = int(top_k)
        preprocess, forward, postprocess = super()._sanitize_parameters(top_k, function_to_apply, **kwargs)
        if self._is_library_model() and "function_to_apply" in postprocess:
            # Windows are aggregated after the activation (max of sigmoids, mean of softmaxes), so it is
            # applied in the forward step, not on the aggregate.
            forward["activation"] = postprocess.pop("function_to_apply")
        return preprocess, forward, postprocess

    def get_iterator(
        self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
    ):
        if not self._is_library_model() or batch_size == 1:
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        # One preprocessed clip (a path, or a waveform of its own length) per forward step: transformers'
        # collation would hand _forward several clips at once, and stacking their windows is not exact (see
        # the module docstring). The batch size goes to the windows of each clip instead.
        forward_params = {**forward_params, "window_batch_size": max(batch_size, _WINDOWS_PER_PASS)}
        return super().get_iterator(
            inputs, num_workers, 1, preprocess_params, forward_params, postprocess_params
        )

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

    def _forward(self, model_inputs, activation=None, window_batch_size=_WINDOWS_PER_PASS):
        if not self._is_library_model():
            return super()._forward(model_inputs)
        model, fe = self.model, self.feature_extractor
        if "path" in model_inputs:
            result, _ = tag_file(
                model, fe, model_inputs["path"], batch_size=window_batch_size, activation=activation
            )
        else:
            result = tag_waveform(
                model,
                fe,
                model_inputs["waveform"],
                fe.sampling_rate,
                batch_size=window_batch_size,
                activation=activation,
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
