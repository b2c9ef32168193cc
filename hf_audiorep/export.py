"""ONNX and `torch.export` of the models, int8 quantisation and CPU latency, for devices (ContrastASC's
students first).

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
fixed unless ``dynamic_length=True``.

`torch.export` (`export_program`, saved as ``.pt2`` with `save_program`) gives the same function as an
``ExportedProgram``: a classifier's ``logits``, or an encoder's ``last_hidden_state`` and ``pooler_output``,
with a symbolic batch axis and, by default, a symbolic time axis. Every family of the library (AudioMAE,
CAT, BAT, BEATs, CP-Mobile, Zipformer; encoder and classifier) exports with both, to a program and to an
ONNX graph (`export_onnx` with ``dynamic_length=True``), and both agree with eager PyTorch to rounding
(``tests/test_export_families.py``: tiny models of each family, batch sizes and lengths other than the
example's). No architecture has to be exported at a fixed length:

- CP-Mobile, BEATs and Zipformer are convolutions and attention over the frames they are given: any length
  from the shortest their strided front ends reduce to at least two frames, up to ``max_length`` (BEATs,
  Zipformer: the models' own input check; CP-Mobile has none).
- The ViTs (AudioMAE, CAT, BAT) are not tied to their patch grid either: a shorter clip takes the first rows
  of the fixed 2-D sin-cos positions (row-major, time first), as in eager mode, and a length that is not a
  whole number of patches is zero-padded inside the graph. Their time axis runs from two time patches to
  ``max_length``, the longest grid the position table holds; a longer clip cannot run (eager mode refuses
  it too) without a model built with a larger ``max_length``.

Two shape rules hold in every graph: an axis the exporter saw as symbolic is assumed not to be 1, so a clip
must reduce to at least two time steps wherever the model strides or patches (a one-patch ViT clip, a BEATs
clip under 32 frames); and the batch axis is traced with two clips or more (`export_program` repeats an
example of one clip), or the exporter fixes it. `frame_lengths` (and `frame_range`) give the lengths the
program takes: the range the exporter recorded for the input, narrowed by the guards it keeps on the
derived sizes, which a ``.pt2`` program checks, raising on a clip it cannot take; an ONNX graph does not
check, and its result is then undefined.

Model code changed for the exporter (numerically unchanged in eager mode): `_layers.pad_to_patches`
and the patch-grid ceilings avoid a branch on the padding amount and negative operands of ``%`` and ``//``
(torch's ONNX exporter translates those with C's truncation, giving a ViT clip of 57 frames a 3-patch
position table for 4 patches); the Zipformer splits its attention's query/key slices with ``unflatten``
rather than ``reshape`` and makes its convolution module's output contiguous before the Linear (both left
guards that refused a batch of one clip), and upsamples a stack's output by gathering frame ``t // factor``
rather than repeating and cutting (the cut fixed the parity of the example's length).

Masks: neither graph takes an ``attention_mask``; they compute what the model computes without one, on
clips whose every frame is real. With a dynamic time axis, give each clip at its own length (or batch clips
of one length) instead of padding; a zero-padded clip is scored with its padding, where PyTorch with the
mask would leave it out (a ViT's extractor pads to ``target_length``: drop the padding, or export the model
and feed it full clips).

Quantisation is static, in QDQ form (`quantize_int8`): weights int8 per output channel, activations uint8
with ranges calibrated on a few clips. Dynamic quantisation would only quantise MatMul/Gemm, which leaves a
CNN such as CP-Mobile (all convolutions) in float32; per-channel weights matter for its depthwise
convolutions, whose channels differ widely in scale.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import statistics
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import sympy
import torch

__all__ = [
    "calibration_features",
    "check_onnx_parity",
    "check_program_parity",
    "embedded_scene_features",
    "embedded_scene_split",
    "export_onnx",
    "export_program",
    "FrameLengths",
    "frame_lengths",
    "frame_range",
    "load_for_export",
    "onnx_latency",
    "onnx_logits",
    "onnx_outputs",
    "output_names",
    "program_outputs",
    "quantize_int8",
    "save_program",
    "scene_accuracy",
    "top1_agreement",
]

#: what an encoder's graph returns; a classifier's returns ``logits``
ENCODER_OUTPUTS = ("last_hidden_state", "pooler_output")


def load_for_export(model_dir: str | Path):
    """The classifier and feature extractor of a saved model directory (or Hub id), in eval mode, on the
    CPU."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    import hf_audiorep  # noqa: F401  (registers the Auto classes)

    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    return model, AutoFeatureExtractor.from_pretrained(model_dir)


def output_names(model: torch.nn.Module) -> tuple[str, ...]:
    """What the exported graph of ``model`` returns: ``("logits",)`` for a classifier (a model whose forward
    takes ``labels``), `ENCODER_OUTPUTS` for an encoder."""
    return ("logits",) if "labels" in inspect.signature(model.forward).parameters else ENCODER_OUTPUTS


class _Outputs(torch.nn.Module):
    """The model as a function of its features alone, returning ``{name: tensor}`` for `output_names` (an
    exported graph has no ModelOutput; ONNX takes the values in that order)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.input_name = model.main_input_name
        self.names = output_names(model)

    def forward(self, input_values: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.model(**{self.input_name: input_values})
        return {name: outputs[name] for name in self.names}


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
    return embedded_scene_split(feature_extractor, split, num_clips=num_clips, seconds=seconds)[0]


def embedded_scene_split(
    feature_extractor, split: str = "test", *, num_clips: int | None = None, seconds: float = 1.0
) -> tuple[np.ndarray, list[str]]:
    """``input_values`` of the first ``num_clips`` (default: every) clips of a split of the embedded
    acoustic-scene corpus, resampled to the extractor's rate, with each clip's scene name."""
    from .data.decode import decode_audio
    from .data.embedded import load_embedded_scenes

    clips = load_embedded_scenes()[split]
    num_clips = len(clips) if num_clips is None else num_clips
    if not 0 < num_clips <= len(clips):
        raise ValueError(f"num_clips must be between 1 and {len(clips)} (the {split} split), got {num_clips}")
    clips = clips.select(range(num_clips))
    rate = feature_extractor.sampling_rate
    num_samples = round(seconds * rate)
    waveforms = np.zeros((num_clips, num_samples), dtype=np.float32)
    for row, record in enumerate(clips):
        waveform = decode_audio(record["audio"], rate)[:num_samples]
        waveforms[row, : len(waveform)] = waveform
    scenes = [clips.features["scene"].int2str(scene) for scene in clips["scene"]]
    return calibration_features(feature_extractor, waveforms, seconds=seconds), scenes


#: clips per forward pass when accuracy is measured over a whole split (bounded memory for large models)
ACCURACY_BATCH = 64


def scene_accuracy(
    model: torch.nn.Module, inputs, scenes: list[str], graphs: Mapping[str, str | Path] | None = None
) -> dict:
    """Top-1 accuracy of ``model`` (PyTorch, as ``"torch"``) and of each ONNX graph in ``graphs`` (by its
    name) on the clips in ``inputs`` whose scene, in ``scenes``, is one of the model's labels
    (``config.id2label``); the others (a corpus's held-out scenes) are left out and counted.

    Returns ``{"clips": kept, "left_out": others, "torch": accuracy, **{name: accuracy}}``.
    """
    features = _input_values(inputs)
    if len(features) != len(scenes):
        raise ValueError(f"{len(features)} clips but {len(scenes)} scenes: one scene per clip")
    label2id = {name: int(index) for index, name in model.config.id2label.items()}
    keep = [row for row, scene in enumerate(scenes) if scene in label2id]
    if not keep:
        raise ValueError(
            f"none of the {len(scenes)} clips has a scene among the model's labels "
            f"({', '.join(sorted(label2id)[:4])}, ...): accuracy needs a classifier of these scenes"
        )
    features = features[keep]
    targets = np.array([label2id[scenes[row]] for row in keep])
    predict = {"torch": partial(_torch_logits, model)}
    predict.update({name: partial(onnx_logits, path) for name, path in (graphs or {}).items()})
    result: dict = {"clips": len(keep), "left_out": len(scenes) - len(keep)}
    for name, logits_of in predict.items():
        predictions = np.concatenate(
            [
                logits_of(features[i : i + ACCURACY_BATCH]).argmax(-1)
                for i in range(0, len(features), ACCURACY_BATCH)
            ]
        )
        result[name] = float((predictions == targets).mean())
    return result


def _example_features(model: torch.nn.Module, example_inputs) -> torch.Tensor:
    if example_inputs is not None:
        return torch.from_numpy(_input_values(example_inputs))
    config = model.config
    # One second of 10 ms frames, or the longest input the model takes if that is shorter.
    frames = min(100, getattr(config, "max_length", None) or 100)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, frames, config.num_mel_bins, generator=generator)


def export_program(
    model: torch.nn.Module,
    example_inputs=None,
    *,
    dynamic_batch: bool = True,
    dynamic_length: bool = True,
) -> torch.export.ExportedProgram:
    """``model`` on its features as a `torch.export.ExportedProgram` (see the module docstring).

    Args:
        model: an encoder (``...Model``: the program returns ``last_hidden_state`` and ``pooler_output``) or
            a classifier (``...ForAudioClassification``: ``logits``); exported in eval mode.
        example_inputs: ``input_values`` ``(batch, frames, bins)`` (array, tensor or a mapping holding it)
            to trace with; ``None`` gives two clips of 100 frames of noise (fewer when ``max_length`` is).
            One clip is traced twice over, as a batch of two, so that the batch axis stays dynamic (the
            exporter fixes an axis it sees at size 1). With a dynamic length, give it a length the model
            reduces to two steps or more (`frame_lengths`' shortest).
        dynamic_batch: a symbolic batch axis; ``False`` fixes it to the example's.
        dynamic_length: a symbolic time axis, over the lengths the model accepts (`frame_lengths`);
            ``False`` fixes it to the example's.

    Returns:
        The program; ``program.module()(input_values)`` returns ``{name: tensor}`` for `output_names`, and
        `save_program` writes it as ``.pt2``.
    """
    example = _example_features(model, example_inputs)
    if dynamic_batch and len(example) == 1:
        # The exporter fixes an axis it sees at size 1. The clip twice traces the same function (the model
        # treats clips alike and independently in eval mode) with a batch axis it can leave symbolic.
        example = example.expand(2, *example.shape[1:]).contiguous()
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch")
    if dynamic_length:
        # The range is the model's: its input checks and shape arithmetic bound it (`frame_lengths`).
        dims[1] = torch.export.Dim.DYNAMIC
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.export.export(
                _Outputs(model).eval(),
                (example,),
                dynamic_shapes={"input_values": dims or None},
                strict=False,
            )
    finally:
        model.train(was_training)


#: frames past the shortest accepted length checked when the time axis has no longest: the guards' floor
#: divisions and remainders are by the models' strides and patch sizes, far shorter, so the pattern they
#: repeat with shows within it
UNBOUNDED_WINDOW = 1024


@dataclass(frozen=True)
class FrameLengths:
    """The clip lengths (``frames``) a program's time axis takes: ``shortest``, ``shortest + step``, ... up to
    ``longest`` (``None``: no longest; the pattern is checked over `UNBOUNDED_WINDOW` frames)."""

    shortest: int
    longest: int | None
    step: int = 1

    def accepts(self, frames: int) -> bool:
        """Whether the program takes a clip of ``frames`` frames."""
        in_range = self.shortest <= frames and (self.longest is None or frames <= self.longest)
        return in_range and (frames - self.shortest) % self.step == 0

    def __str__(self) -> str:
        text = f"{self.shortest} <= frames <= {'any' if self.longest is None else self.longest}"
        return text if self.step == 1 else f"{text}, in steps of {self.step} from {self.shortest}"


def frame_lengths(program: torch.export.ExportedProgram) -> FrameLengths:
    """The lengths the program's time axis takes: the example's alone when that axis is fixed.

    The exporter's range for the axis is not enough: a program also keeps guards on sizes derived from it
    (a ViT's patch count must not be 1, a stride must leave two frames) and refuses a clip that fails one.
    Every length of the range is put to those guards, on shapes alone (no clip is computed); a length
    passes when it passes at batch sizes 1 and 2 (the example's batch, when that axis is fixed).

    Raises:
        ValueError: when no length passes, or the passing ones are not evenly spaced (then no
            ``(shortest, longest, step)`` describes them).
    """
    accepted, longest = _accepted_frames(program)
    steps = {later - earlier for earlier, later in zip(accepted, accepted[1:], strict=False)}
    step = min(steps, default=1)
    if len(steps) > 1:
        raise ValueError(
            f"the program takes clips of {accepted[:8]}... frames, not evenly spaced: no range describes "
            "them; check a length with program_outputs before relying on it"
        )
    return FrameLengths(accepted[0], longest, step)


def frame_range(program: torch.export.ExportedProgram) -> tuple[int, int | None]:
    """The shortest and longest ``frames`` (``None``: unbounded) the program's time axis takes; both are the
    example's length when that axis is fixed. Between them, every length is taken unless `frame_lengths`
    gives a ``step`` over 1."""
    accepted, longest = _accepted_frames(program)
    return accepted[0], longest


def _time_axis(program: torch.export.ExportedProgram):
    """The example ``input_values`` (fake) tensor the program was traced with, and its time axis's size
    (an int when fixed, else the symbol the exporter gave it)."""
    (name,) = program.graph_signature.user_inputs
    frames = next(node for node in program.graph.nodes if node.name == name)
    example = frames.meta["val"]
    return example, example.shape[1]


def _accepted_frames(program: torch.export.ExportedProgram) -> tuple[list[int], int | None]:
    """The lengths in the exporter's range for the time axis that pass the program's guards (see
    `frame_lengths`), and the range's end (``None``: unbounded)."""
    example, size = _time_axis(program)
    if isinstance(size, int):
        return [size], size
    bounds = program.range_constraints[size.node.expr]
    # An unbounded axis ends at torch's own integer infinity, which is no sympy Integer.
    longest = int(bounds.upper) if isinstance(bounds.upper, sympy.Integer) else None
    # Sizes 0 and 1 are below every range the exporter gives a symbolic axis (it assumes neither).
    shortest = max(int(bounds.lower), 2)
    end = longest if longest is not None else shortest + UNBOUNDED_WINDOW
    passes = _guard_check(program, example)
    accepted = [frames for frames in range(shortest, end + 1) if passes(frames)]
    if not accepted:
        raise ValueError(f"the program takes no clip length between {shortest} and {end} frames")
    return accepted, (accepted[-1] if longest is not None else None)


def _guard_check(program: torch.export.ExportedProgram, example: torch.Tensor):
    """``passes(frames)``: whether a clip of ``frames`` frames passes the guards the program checks first
    when called, run on shapes alone (meta tensors)."""
    # `module()` gathers the exporter's guards (range, specialisations, derived sizes) into one function that
    # the program calls on its inputs before anything else; a failed guard raises AssertionError.
    guards = getattr(program.module(), "_guards_fn", None)
    if guards is None:  # a torch that keeps no guards beside the range: the range is all there is to check
        return lambda frames: True
    batch, _, *rest = example.shape
    batches = [batch] if isinstance(batch, int) else [1, 2]

    def passes(frames: int) -> bool:
        for size in batches:
            try:
                guards(torch.empty(size, frames, *rest, device="meta"))
            except AssertionError:
                return False
        return True

    return passes


def save_program(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Write ``program`` to ``path`` (a ``.pt2`` file; `torch.export.load` reads it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(path))
    return path


def program_outputs(program: torch.export.ExportedProgram, inputs) -> dict[str, np.ndarray]:
    """The outputs of ``program`` for ``inputs`` (``input_values``, or a mapping holding it), by name."""
    with torch.no_grad():
        outputs = program.module()(torch.from_numpy(_input_values(inputs)))
    return {name: value.numpy() for name, value in outputs.items()}


def export_onnx(
    model: torch.nn.Module | str | Path,
    feature_extractor,
    path: str | Path,
    *,
    seconds: float = 1.0,
    opset: int | None = None,
    dynamic_batch: bool = True,
    dynamic_length: bool = False,
) -> Path:
    """Export ``model`` on its features to ``path`` (a ``.onnx`` file) and save the front end beside it.

    Args:
        model: an ``...ForAudioClassification`` model (the graph returns ``logits``) or an encoder
            (``last_hidden_state``, ``pooler_output``), or a saved classifier directory / Hub id to load one
            from.
        feature_extractor: its front end; ``None`` with a directory loads the directory's.
        path: the ``.onnx`` file; ``preprocessor_config.json`` and ``config.json`` go to its folder.
        seconds: clip length of the example the graph is traced with: its time axis unless
            ``dynamic_length``.
        opset: ONNX opset; default torch's exporter's.
        dynamic_batch: a symbolic batch axis; ``False`` fixes it to one clip.
        dynamic_length: a symbolic time axis (``frames``), over the lengths the model accepts (the module
            docstring; `frame_range` of `export_program`'s program).

    Returns:
        ``path``. The graph's input is ``input_values``; see the module docstring.
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
    # Two clips: an exporter specialises a size-1 axis to a constant, which would defeat the dynamic batch.
    example = calibration_features(feature_extractor, num_clips=2 if dynamic_batch else 1, seconds=seconds)
    program = export_program(model, example, dynamic_batch=dynamic_batch, dynamic_length=dynamic_length)
    # The exporter's progress lines go to stdout and say nothing to act on; its failures still raise.
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            program,
            (example,),
            str(path),
            input_names=["input_values"],
            output_names=list(output_names(model)),
            opset_version=opset,
            external_data=False,  # one self-contained file; the students are far below protobuf's 2 GB
            dynamo=True,
            verbose=False,
        )
    metadata = {"model_type": model.config.model_type, "clip_seconds": f"{seconds:g}"}
    if dynamic_length:
        metadata = {"model_type": model.config.model_type, **_frames_metadata(program)}
    _strip_and_label(path, metadata)
    feature_extractor.save_pretrained(path.parent)
    model.config.save_pretrained(path.parent)
    return path


def _frames_metadata(program: torch.export.ExportedProgram) -> dict[str, str]:
    """``frames`` (``"low-high"``, ``"low-"`` when unbounded) and, when only every n-th length is taken,
    ``frames_step``: what a runtime must feed the graph, which checks no length itself."""
    lengths = frame_lengths(program)
    longest = "" if lengths.longest is None else lengths.longest
    metadata = {"frames": f"{lengths.shortest}-{longest}"}
    if lengths.step > 1:
        metadata["frames_step"] = str(lengths.step)
    return metadata


def _strip_and_label(path: Path, metadata: dict[str, str]) -> None:
    """Drop the exporter's per-node debug records (source lines, FX names: most of a small student's file,
    and nothing a runtime reads), name the symbolic axes (``batch``, ``frames``: the exporter's are ``s0``,
    ``s1``...) and record what a runtime needs to feed the graph."""
    import onnx

    graph = onnx.load(str(path))
    for node in graph.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    batch, frames = graph.graph.input[0].type.tensor_type.shape.dim[:2]
    names = {dim.dim_param: name for dim, name in ((batch, "batch"), (frames, "frames")) if dim.dim_param}
    for value in (*graph.graph.input, *graph.graph.output, *graph.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
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


def onnx_outputs(path: str | Path, inputs) -> dict[str, np.ndarray]:
    """Every output of the graph at ``path`` for ``inputs`` (``input_values``, or a mapping holding it), by
    name, on the CPU."""
    session = _session(path)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input_values": _input_values(inputs)}), strict=True))


def onnx_logits(path: str | Path, inputs) -> np.ndarray:
    """The graph's logits for ``inputs`` (``input_values``, or a mapping holding it), on the CPU."""
    return _session(path).run(["logits"], {"input_values": _input_values(inputs)})[0]


def _torch_outputs(model: torch.nn.Module, inputs) -> dict[str, np.ndarray]:
    features = torch.from_numpy(_input_values(inputs))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(**{model.main_input_name: features})
    finally:
        model.train(was_training)
    return {name: outputs[name].float().cpu().numpy() for name in output_names(model)}


def _torch_logits(model: torch.nn.Module, inputs) -> np.ndarray:
    return _torch_outputs(model, inputs)["logits"]


def _largest_difference(expected: dict[str, np.ndarray], exported: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over the outputs both hold; infinite when a shape differs (broadcasting
    would hide it)."""
    worst = 0.0
    for name, value in exported.items():
        if value.shape != expected[name].shape:
            return float("inf")
        worst = max(worst, float(np.abs(expected[name] - value).max(initial=0.0)))
    return worst


def check_onnx_parity(model: torch.nn.Module, path: str | Path, inputs) -> float:
    """Largest absolute difference between the outputs of ``model`` (PyTorch) and the graph at ``path``
    (``logits`` for a classifier; ``last_hidden_state`` and ``pooler_output`` for an encoder)."""
    return _largest_difference(_torch_outputs(model, inputs), onnx_outputs(path, inputs))


def check_program_parity(model: torch.nn.Module, program: torch.export.ExportedProgram, inputs) -> float:
    """Largest absolute difference between the outputs of ``model`` (PyTorch, eager) and ``program`` (from
    `export_program`, or `torch.export.load` of a saved one)."""
    return _largest_difference(_torch_outputs(model, inputs), program_outputs(program, inputs))


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
