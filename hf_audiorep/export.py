"""ONNX export, int8 quantisation and CPU latency of a classifier, for devices (ContrastASC's students first).

The graph holds the model on its features, not the front end: ``input_values`` ``(batch, frames, bins)`` in,
``logits`` ``(batch, num_labels)`` out. The feature extractor is saved beside the graph as
``preprocessor_config.json`` (and the model's ``config.json``, for ``id2label``), so a runtime computes the
features as the library does and the graph stays free of STFT operators that some runtimes and quantisers do
not handle.

No ``attention_mask`` input: the graph takes full clips, whose mask is all ones, so it computes what the
model computes without a mask. For CP-Mobile that is a clip of the exported length (``seconds``); a shorter
one is zero-padded by the runtime, as the training collate does, and then scored with its padding (PyTorch
with a mask would leave the padded frames out). A ViT's extractor pads every clip to its ``target_length``
(``seconds`` does not change its graph) and the PyTorch model masks patches made only of padding; the graph
does not, so the two agree exactly on clips that fill ``target_length``. One graph input keeps the runtime's
contract simple and the quantiser's calibration to one tensor; the batch axis is dynamic, the time axis
fixed.

Quantisation is static, in QDQ form (`quantize_int8`): weights int8 per output channel, activations uint8
with ranges calibrated on a few clips. Dynamic quantisation would only quantise MatMul/Gemm, which leaves a
CNN such as CP-Mobile (all convolutions) in float32; per-channel weights matter for its depthwise
convolutions, whose channels differ widely in scale.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "calibration_features",
    "check_onnx_parity",
    "embedded_scene_features",
    "export_onnx",
    "load_for_export",
    "onnx_latency",
    "onnx_logits",
    "quantize_int8",
    "top1_agreement",
]


def load_for_export(model_dir: str | Path):
    """The classifier and feature extractor of a saved model directory (or Hub id), in eval mode, on the
    CPU."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    import hf_audiorep  # noqa: F401  (registers the Auto classes)

    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    return model, AutoFeatureExtractor.from_pretrained(model_dir)


class _LogitsOnly(torch.nn.Module):
    """The model as a function of its features alone, returning a tensor (ONNX has no ModelOutput)."""

    def __init__(self, model: torch.nn.Module, input_name: str):
        super().__init__()
        self.model = model
        self.input_name = input_name

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model(**{self.input_name: input_values}).logits


def _features(feature_extractor, waveforms: torch.Tensor) -> torch.Tensor:
    return feature_extractor(
        list(waveforms.numpy()), sampling_rate=feature_extractor.sampling_rate, return_tensors="pt"
    )["input_values"]


def calibration_features(feature_extractor, waveforms=None, *, num_clips: int = 8, seconds: float = 1.0):
    """``input_values`` ``(N, frames, bins)`` of clips of ``seconds`` seconds, for calibration and checks.

    Args:
        feature_extractor: the model's front end.
        waveforms: ``(N, samples)`` array or tensor at the extractor's rate (cut or zero-padded to
            ``seconds``); ``None`` gives ``num_clips`` clips of seeded noise.
        num_clips: clips of noise when ``waveforms`` is ``None``.
        seconds: clip length, the exported graph's.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    num_samples = round(seconds * feature_extractor.sampling_rate)
    if waveforms is None:
        if num_clips < 1:
            raise ValueError(f"num_clips must be positive, got {num_clips!r}")
        generator = torch.Generator().manual_seed(0)
        waveforms = 0.1 * torch.randn(num_clips, num_samples, generator=generator)
    waveforms = torch.as_tensor(np.asarray(waveforms, dtype=np.float32))
    if waveforms.ndim != 2:
        raise ValueError(f"waveforms must be (clips, samples), got shape {tuple(waveforms.shape)}")
    waveforms = torch.nn.functional.pad(waveforms, (0, max(0, num_samples - waveforms.shape[1])))
    return _features(feature_extractor, waveforms[:, :num_samples])


def embedded_scene_features(feature_extractor, num_clips: int, *, seconds: float = 1.0, split="validation"):
    """``input_values`` of the first ``num_clips`` clips of a split of the embedded acoustic-scene corpus
    (`hf_audiorep.data.embedded.load_embedded_scenes`, resampled to the extractor's rate): real-looking
    audio for calibration and agreement checks without a dataset download."""
    from .data.decode import decode_audio
    from .data.embedded import load_embedded_scenes

    clips = load_embedded_scenes()[split]
    if not 0 < num_clips <= len(clips):
        raise ValueError(f"num_clips must be between 1 and {len(clips)} (the {split} split), got {num_clips}")
    rate = feature_extractor.sampling_rate
    num_samples = round(seconds * rate)
    waveforms = np.zeros((num_clips, num_samples), dtype=np.float32)
    for row, record in enumerate(clips.select(range(num_clips))):
        waveform = decode_audio(record["audio"], rate)[:num_samples]
        waveforms[row, : len(waveform)] = waveform
    return calibration_features(feature_extractor, waveforms, seconds=seconds)


def export_onnx(
    model: torch.nn.Module | str | Path,
    feature_extractor,
    path: str | Path,
    *,
    seconds: float = 1.0,
    opset: int | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` on its features to ``path`` (a ``.onnx`` file) and save the front end beside it.

    Args:
        model: an ``...ForAudioClassification`` model, or a saved model directory / Hub id to load one from.
        feature_extractor: its front end; ``None`` with a directory loads the directory's.
        path: the ``.onnx`` file; ``preprocessor_config.json`` and ``config.json`` go to its folder.
        seconds: clip length the graph takes (its fixed time axis).
        opset: ONNX opset; default torch's exporter's.
        dynamic_batch: a symbolic batch axis; ``False`` fixes it to one clip.

    Returns:
        ``path``. The graph's input is ``input_values``, its output ``logits``; see the module docstring.
    """
    if isinstance(model, str | Path):
        loaded, loaded_extractor = load_for_export(model)
        model, feature_extractor = loaded, feature_extractor or loaded_extractor
    if feature_extractor is None:
        raise ValueError("feature_extractor is required with a model object (it is saved beside the graph)")
    if opset is not None and opset < 1:
        raise ValueError(f"opset must be a positive ONNX opset version, got {opset!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    # Two clips: an exporter specialises a size-1 axis to a constant, which would defeat the dynamic batch.
    example = calibration_features(feature_extractor, num_clips=2 if dynamic_batch else 1, seconds=seconds)
    dynamic_shapes = {"input_values": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    try:
        # The exporter's progress lines go to stdout and say nothing to act on; its failures still raise.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                _LogitsOnly(model, model.main_input_name).eval(),
                (example,),
                str(path),
                input_names=["input_values"],
                output_names=["logits"],
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                external_data=False,  # one self-contained file; the students are far below protobuf's 2 GB
                dynamo=True,
                verbose=False,
            )
    finally:
        model.train(was_training)
    _strip_and_label(path, {"model_type": model.config.model_type, "clip_seconds": f"{seconds:g}"})
    feature_extractor.save_pretrained(path.parent)
    model.config.save_pretrained(path.parent)
    return path


def _strip_and_label(path: Path, metadata: dict[str, str]) -> None:
    """Drop the exporter's per-node debug records (source lines, FX names: most of a small student's file,
    and nothing a runtime reads) and record what a runtime needs to feed the graph."""
    import onnx

    graph = onnx.load(str(path))
    for node in graph.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for key, value in metadata.items():
        graph.metadata_props.add(key=f"hf_audiorep.{key}", value=value)
    onnx.save(graph, str(path))


def _session(path: str | Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One thread in and between operators: the latency of a single-core device, not of this machine.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _input_values(inputs) -> np.ndarray:
    if isinstance(inputs, Mapping):
        inputs = inputs["input_values"]
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.detach().cpu().numpy()
    return np.ascontiguousarray(inputs, dtype=np.float32)


def onnx_logits(path: str | Path, inputs) -> np.ndarray:
    """The graph's logits for ``inputs`` (``input_values``, or a mapping holding it), on the CPU."""
    return _session(path).run(["logits"], {"input_values": _input_values(inputs)})[0]


def _torch_logits(model: torch.nn.Module, inputs) -> np.ndarray:
    features = torch.from_numpy(_input_values(inputs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(**{model.main_input_name: features}).logits.float().cpu().numpy()
    finally:
        model.train(was_training)


def check_onnx_parity(model: torch.nn.Module, path: str | Path, inputs) -> float:
    """Largest absolute difference between the logits of ``model`` (PyTorch) and the graph at ``path``."""
    return float(np.abs(_torch_logits(model, inputs) - onnx_logits(path, inputs)).max())


def top1_agreement(model: torch.nn.Module, path: str | Path, inputs) -> float:
    """Fraction of clips whose top class is the same under ``model`` (PyTorch) and the graph at ``path``."""
    expected = _torch_logits(model, inputs).argmax(-1)
    return float((onnx_logits(path, inputs).argmax(-1) == expected).mean())


def _calibration_reader(features: np.ndarray):
    """onnxruntime's calibration protocol over feature rows, one clip per call."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._rows = iter(features[i : i + 1] for i in range(len(features)))

        def get_next(self):
            row = next(self._rows, None)
            return None if row is None else {"input_values": row}

    return Reader()


def quantize_int8(path: str | Path, out_path: str | Path, calibration_inputs: Iterable | np.ndarray) -> Path:
    """Statically quantise the graph at ``path`` to int8 QDQ (see the module docstring) at ``out_path``.

    Args:
        path: a float32 graph from `export_onnx`.
        out_path: the int8 graph.
        calibration_inputs: ``input_values`` ``(N, frames, bins)`` (array, tensor or mapping) whose activation
            ranges (min/max) set the quantisation scales; a few real clips of the deployment's audio are best.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    features = _input_values(calibration_inputs)
    if features.ndim != 3 or len(features) == 0:
        raise ValueError(
            f"calibration_inputs must be (clips, frames, bins) with at least one clip, got {features.shape}"
        )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph fusions first, as onnxruntime recommends, so that every Conv and MatMul
        # has known shapes and the scales are set on the fused graph.
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(path), str(prepared))
        except TypeError:
            # onnxruntime's symbolic shape inference loses the shape behind some reductions over a symbolic
            # batch (CP-Mobile's GRN, a LayerNorm over channels); ONNX's own inference still gives every
            # Conv and MatMul its shapes.
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _calibration_reader(features),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            # The matrix products are where int8 kernels pay. Relu too: onnxruntime then fuses it into the
            # convolution and quantises its output over [0, max] rather than over the pre-activation's
            # signed range, twice the resolution (fewer top-1 flips on CP-Mobile). Norms and sums stay
            # float32 (quantising LayerNorm's 1-D weights per channel is not even defined).
            op_types_to_quantize=["Conv", "Relu", "MatMul", "Gemm"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    return out_path


def onnx_latency(path: str | Path, inputs, repeats: int = 50) -> float:
    """Median milliseconds per clip of the graph at ``path`` on one CPU thread (after one warm-up run).

    ``inputs`` is one batch of ``input_values``; its time is divided by the batch size.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats!r}")
    features = _input_values(inputs)
    session = _session(path)
    feed = {"input_values": features}
    session.run(["logits"], feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(["logits"], feed)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times) / len(features)
