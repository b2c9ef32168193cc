"""The HEAR embedding API over every encoder of the library: the ViT encoders on a fixed patch grid (AudioMAE,
CAT, BAT), BEATs, the Zipformer and the CP-Mobile CNN.

HEAR (Holistic Evaluation of Audio Representations, Turian et al. 2022) and the benchmarks built on its
runner call three functions of a module::

    model = hf_audiorep.hear.load_model("org/cat-base")            # a path or Hub id
    scene = hf_audiorep.hear.get_scene_embeddings(audio, model)      # (n_sounds, scene_embedding_size)
    emb, ts = hf_audiorep.hear.get_timestamp_embeddings(audio, model)
    # emb (n_sounds, n_timestamps, timestamp_embedding_size), ts (n_sounds, n_timestamps) in milliseconds

``audio`` is a float ``(n_sounds, n_samples)`` tensor in [-1, 1] at ``model.sample_rate`` (the feature
extractor's rate). Sounds longer than the model's window are cut into windows on the clip's frame grid, so
every frame keeps its place; one batch of windows is in memory at a time. Every sound of a call gets the same
timestamps, as HEAR asks.

- **Timestamp embeddings**: one per time step of the encoder's last layer, its timestamp the centre of the
  input frames the step reads (the receptive field of the layers that take the frames to that step, read off
  the model's own modules):

  - ViT on a patch grid (AudioMAE, CAT, BAT): one per time column of patches, the patch tokens of that column
    averaged over frequency, centred on the column's frames (the front end's ``frame_times``). With 16-frame
    patches at a 10 ms shift that is one embedding per 160 ms: coarser than HEAR's suggested 50 ms, because a
    ViT has no finer token in time.
  - BEATs: the same, on its patch grid (its tokens run frequency-fastest within a time column). A partial
    last patch is dropped, as BEATs drops it.
  - Zipformer: its output frames (``last_hidden_state``, the valid ones by its output ``attention_mask``),
    placed by its unpadded front-end convolutions and its output downsampling (the stacks inside return to
    their input's rate, frame for frame; the ConvNeXt between them widens a step's context symmetrically).
  - CP-Mobile: the last feature map averaged over frequency, one per time column, the stride of its stem and
    blocks apart, each centred where its 'same'-padded convolutions centre it. Its width is the last stage's
    channels, which differs from the clip embedding's when ``config.embedding_size`` is set.

  ``model.timestamp_hop_ms`` gives the hop of a loaded model.

- **Scene embedding**: the model's own clip embedding (``pooler_output``: CLS or mean of patches for a ViT, as
  the config says; the mean of the valid output frames or columns for the others), averaged over the windows,
  each weighted by the real audio it holds (its frames for a ViT, its time steps for the others).

Windows: a ViT sees consecutive blocks of its feature extractor's ``target_length`` frames. The other
encoders see windows of `hf_audiorep.inference.model_window_seconds` (or ``window_seconds``) that start a
whole number of steps apart: each keeps the steps it computes whole, so the steps of consecutive windows
continue one another on one grid (the Zipformer's windows overlap by the few frames its unpadded front end
needs at their edges). All windows of one batch have the same length, so none is padded (unless the feature
extractor pads to a ``target_length``) and a sound's embeddings do not depend on the other sounds of the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel

from .modeling.feature_extraction_base import MAX_SAMPLE_MAGNITUDE, sample_range_problem

#: windows encoded per forward pass
BATCH_WINDOWS = 8


# ---- the time axis of the encoders without a patch grid ---------------------------------------------------

#: ``(kernel, stride, padding)`` of one layer along time
Layer = tuple[int, int, int]


def _conv_on_time(conv: nn.Conv2d, axis: int) -> Layer:
    return int(conv.kernel_size[axis]), int(conv.stride[axis]), int(conv.padding[axis])


def _beats_layers(encoder) -> list[Layer]:
    # The patch convolution sees (batch, 1, frames, mel bins): time is its first axis.
    return [_conv_on_time(encoder.patch_embedding, 0)]


def _zipformer_layers(encoder) -> list[Layer]:
    # Conv2dSubsampling sees (batch, 1, frames, mel bins). The stacks inside downsample and repeat back to the
    # front end's rate, frame t staying frame t, so only the front end and the output downsampling move time.
    embed = encoder.embed
    convs = (embed.conv1, embed.conv2, embed.conv3, embed.convnext.depthwise_conv)
    factor = int(encoder.downsample_output.downsample)
    return [*(_conv_on_time(conv, 0) for conv in convs), (factor, factor, 0)]


def _cp_mobile_layers(encoder) -> list[Layer]:
    # CP-Mobile sees the spectrogram as (batch, channels, mel bins, frames): time is the second axis. The
    # shortcut's average pooling has the depthwise convolution's geometry, so the main path says it all.
    convs = [encoder.stem.conv1.conv, encoder.stem.conv2.conv]
    for block in encoder.blocks:
        convs += [block.expand.conv, block.depthwise.conv, block.project.conv]
    return [_conv_on_time(conv, 1) for conv in convs]


def _compose(layers: list[Layer]) -> tuple[int, int, int]:
    """``(stride, first, last)``: step ``i`` of the last layer reads input frames ``stride * i + first`` to
    ``stride * i + last`` (negative or past the end: the layers' zero padding)."""
    stride, first, last = 1, 0, 0
    for kernel, step, padding in reversed(layers):
        first, last = step * first - padding, step * last - padding + kernel - 1
        stride *= step
    return stride, first, last


@dataclass(frozen=True)
class TimeGeometry:
    """Where an encoder's time steps sit on its input frames."""

    #: input frames from one step to the next
    stride: int
    #: input frame (fractional) at the centre of step 0's receptive field; step i is ``stride * i`` later
    centre: float
    #: frames one whole step needs: the encoder makes no step of fewer, and a window of ``L`` frames makes
    #: ``(L - span) // stride + 1`` whole steps
    span: int

    @classmethod
    def of(cls, layers: list[Layer]) -> TimeGeometry:
        stride, first, last = _compose(layers)
        # A padded ('same') layer widens a step's context symmetrically: it moves no centre and makes a step
        # of any input, so only the unpadded layers say how many frames a whole step needs.
        _, need_first, need_last = _compose([(k, s, 0) if p == 0 else (1, s, 0) for k, s, p in layers])
        return cls(stride=stride, centre=(first + last) / 2.0, span=need_last - need_first + 1)

    def whole_steps(self, frames: int) -> int:
        """Steps a window of ``frames`` frames computes from its own frames, never more than one per
        ``stride`` frames (so that consecutive windows leave no frame out)."""
        return max(0, min((frames - self.span) // self.stride + 1, frames // self.stride))


# ---- the time steps of each family's output -------------------------------------------------------------


def _beats_steps(encoder, out, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Patches run frequency-fastest (row-major (time, frequency), see BEATsModel): a time column is a run of
    # num_mel_bins / patch_size consecutive tokens.
    config = encoder.config
    grid_f = config.num_mel_bins // config.patch_size
    tokens = out.last_hidden_state
    columns = tokens.reshape(tokens.shape[0], -1, grid_f, tokens.shape[-1]).mean(2)
    # BEATs drops a partial last patch; real frames // patch are the columns of real audio.
    return columns, mask.sum(1) // config.patch_size


def _zipformer_steps(encoder, out, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return out.last_hidden_state, out.attention_mask.sum(1)


def _cp_mobile_steps(encoder, out, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # (batch, channels, freq, time) -> (batch, time, channels)
    return out.last_hidden_state.mean(2).transpose(1, 2), out.attention_mask.sum(1)


@dataclass(frozen=True)
class _Family:
    name: str
    time_layers: Callable[[nn.Module], list[Layer]]
    #: ``(encoder, output, input frame mask)`` -> steps ``(batch, steps, D)`` and the valid steps per row
    steps: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    #: width of the timestamp embeddings
    step_size: Callable[[object], int]


_FAMILIES = {
    "audiorep-beats": _Family("BEATs", _beats_layers, _beats_steps, lambda c: c.hidden_size),
    "audiorep-zipformer": _Family("Zipformer", _zipformer_layers, _zipformer_steps, lambda c: c.hidden_size),
    # The timestamp embeddings are the last feature map's channels, before any output block.
    "audiorep-cp-mobile": _Family(
        "CP-Mobile", _cp_mobile_layers, _cp_mobile_steps, lambda c: c.stage_channels[-1]
    ),
}


def _family_of(encoder: nn.Module) -> _Family:
    model_type = getattr(getattr(encoder, "config", None), "model_type", None)
    family = _FAMILIES.get(model_type)
    if family is None:
        raise TypeError(
            "hf_audiorep.hear serves the library's encoders: the ViT encoders on a fixed patch grid "
            "(AudioMAE, CAT, BAT; grid_shape), BEATs, the Zipformer and CP-Mobile; "
            f"{type(encoder).__name__} (model_type {model_type!r}) is none of them"
        )
    return family


def _samples_for(fe, frames: int) -> int:
    """Fewest samples that make ``frames`` frames."""
    samples = fe.min_samples
    while fe.num_frames(samples) < frames:
        samples += 1
    return samples


# ---- the model ----------------------------------------------------------------------------------------


class HearModel(nn.Module):
    """A frozen encoder and its feature extractor, with the attributes the HEAR API requires.

    ``window_seconds`` sets the window of an encoder without a patch grid whose feature extractor has no
    ``target_length`` (default: `hf_audiorep.inference.model_window_seconds`); a ViT's window is its
    ``target_length``. A classifier is served by its encoder, without its head.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_extractor,
        batch_windows: int = BATCH_WINDOWS,
        window_seconds: float | None = None,
    ):
        super().__init__()
        if not hasattr(encoder, "grid_shape"):
            # A classifier of the library keeps its encoder under base_model_prefix; the head is not needed.
            encoder = getattr(encoder, "base_model", encoder)
        self.family = None if hasattr(encoder, "grid_shape") else _family_of(encoder)
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        self.batch_windows = int(batch_windows)
        self.sample_rate = int(feature_extractor.sampling_rate)
        config = encoder.config
        self.scene_embedding_size = int(config.hidden_size)
        if self.family is None:
            self._init_grid(feature_extractor, window_seconds)
        else:
            self._init_steps(feature_extractor, window_seconds)

    def _init_grid(self, fe, window_seconds: float | None) -> None:
        if getattr(fe, "target_length", None) is None:
            raise ValueError("the feature extractor must have a target_length: it sets the window length")
        if window_seconds is not None:
            raise ValueError(
                "a ViT encoder's window is its feature extractor's target_length, not window_seconds"
            )
        self.timestamp_embedding_size = self.scene_embedding_size
        self._window_frames = int(fe.target_length)
        self.min_samples = fe.min_samples
        self._min_samples_reason = f"one analysis frame at {self.sample_rate} Hz"

    def _init_steps(self, fe, window_seconds: float | None) -> None:
        from hf_audiorep.inference import model_window_seconds

        config = self.encoder.config
        self.timestamp_embedding_size = int(self.family.step_size(config))
        self.geometry = TimeGeometry.of(self.family.time_layers(self.encoder))
        if getattr(fe, "target_length", None) is not None:
            if window_seconds is not None:
                raise ValueError("the feature extractor's target_length sets the window: drop window_seconds")
            self.window_samples, self._window_frames = fe.max_samples, int(fe.target_length)
        else:
            seconds = model_window_seconds(fe, config) if window_seconds is None else float(window_seconds)
            self.window_samples = round(seconds * self.sample_rate)
            self._window_frames = fe.num_frames(self.window_samples)
        max_length = getattr(config, "max_length", None)
        if max_length and self._window_frames > max_length:
            raise ValueError(
                f"a window of {self._window_frames} frames is longer than the {max_length} the model accepts"
            )
        self.window_steps = self.geometry.whole_steps(self._window_frames)
        if self.window_steps == 0:
            raise ValueError(
                f"a window of {self._window_frames} frames holds no whole step of the {self.family.name} "
                f"encoder ({self.geometry.span} frames)"
            )
        self.min_samples = _samples_for(fe, self.geometry.span)
        self._min_samples_reason = (
            f"one time step of the {self.family.name} encoder: {self.geometry.span} frames at "
            f"{self.sample_rate} Hz"
        )

    @property
    def window_frames(self) -> int:
        return self._window_frames

    @property
    def timestamp_hop_ms(self) -> float:
        """Milliseconds between consecutive timestamps."""
        fe = self.feature_extractor
        shift = _hop_samples(fe) / fe.sampling_rate
        stride = int(self.encoder.config.patch_size) if self.family is None else self.geometry.stride
        return stride * shift * 1000.0


def load_model(model_file_path: str = "", device: str | torch.device | None = None) -> HearModel:
    """The encoder at ``model_file_path`` (a directory or Hub id of any model of the library; a classifier's
    encoder is used without its head), frozen, in evaluation mode, on ``device`` (default: CUDA when
    available)."""
    if not model_file_path:
        raise ValueError(
            "load_model needs a model: a directory saved by the library or a Hub id such as 'org/cat-base'"
        )
    import hf_audiorep  # noqa: F401  (registers the architectures with the Auto classes)

    encoder = AutoModel.from_pretrained(model_file_path)
    feature_extractor = AutoFeatureExtractor.from_pretrained(model_file_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder.requires_grad_(False)
    return HearModel(encoder.to(device), feature_extractor)


def _check_audio(audio, model: HearModel) -> torch.Tensor:
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise TypeError(f"audio must hold floats in [-1, 1], got dtype {audio.dtype}")
    if audio.shape[0] == 0:
        raise ValueError("audio holds no sounds")
    min_samples = model.min_samples
    if audio.shape[1] < min_samples:
        raise ValueError(
            f"the sounds last {audio.shape[1]} samples; at least {min_samples} ({model._min_samples_reason}) "
            "are needed"
        )
    peaks = audio.abs().amax(dim=1)
    bad = torch.nonzero(~(peaks <= MAX_SAMPLE_MAGNITUDE)).flatten().tolist()
    if bad:
        # A NaN would reach every embedding of its sound silently; the other entry points refuse it too.
        problem = sample_range_problem(float(peaks[bad[0]]))
        raise ValueError(f"sound {bad[0]} {problem} ({len(bad)} such sound(s) in all)")
    return audio.float()


def _hop_samples(fe) -> int:
    times = fe.frame_times(2)
    return round((times[1] - times[0]) * fe.sampling_rate)


def _windows(model: HearModel, num_samples: int) -> list[tuple[int, int]]:
    """``(first sample, first frame)`` of each window: consecutive blocks of ``window_frames`` frames, so
    frame k of a window is frame ``first frame + k`` of the whole sound."""
    fe = model.feature_extractor
    count = max(1, math.ceil(fe.num_frames(num_samples) / model.window_frames))
    hop = _hop_samples(fe)
    return [(w * model.window_frames * hop, w * model.window_frames) for w in range(count)]


def _column_centres(fe, first_frames: np.ndarray, patch: int) -> np.ndarray:
    """Seconds to the centre of each column of ``patch`` frames starting at ``first_frames``."""
    times = fe.frame_times(int(first_frames.max()) + patch)
    return (times[first_frames] + times[first_frames + patch - 1]) / 2.0


@torch.no_grad()
def _encode_grid(audio: torch.Tensor, model: HearModel):
    """For a ViT on a patch grid, per sound: column embeddings ``(n_columns, D)``, their centres in seconds
    ``(n_columns,)`` and the scene embedding ``(D,)``. Windows of all sounds are batched together,
    ``batch_windows`` at a time."""
    fe, encoder = model.feature_extractor, model.encoder
    device = next(encoder.parameters()).device
    patch = int(encoder.config.patch_size)
    windows = _windows(model, audio.shape[1])
    span = fe.max_samples
    grid_t, grid_f = encoder.grid_shape(model.window_frames)
    jobs = [(s, w) for s in range(audio.shape[0]) for w in range(len(windows))]
    columns = [[] for _ in range(audio.shape[0])]  # per sound: (first frame of each column, embeddings)
    pooled = [[] for _ in range(audio.shape[0])]  # per sound: (frames of real audio, pooler output)
    for i in range(0, len(jobs), model.batch_windows):
        batch = jobs[i : i + model.batch_windows]
        padded = torch.zeros(len(batch), span)
        lengths = torch.zeros(len(batch), dtype=torch.long)
        for row, (s, w) in enumerate(batch):
            piece = audio[s, windows[w][0] : windows[w][0] + span]
            padded[row, : len(piece)] = piece
            lengths[row] = len(piece)
        inputs, mask = fe.batch_features(padded.to(device), lengths.to(device))
        out = encoder(input_values=inputs, attention_mask=mask)
        tokens = out.last_hidden_state[:, -grid_t * grid_f :]  # the patch tokens follow any CLS token
        grid = tokens.reshape(len(batch), grid_t, grid_f, -1).mean(2).float().cpu()
        scene = out.pooler_output.float().cpu()
        for row, frames in enumerate(mask.sum(1).tolist()):
            if frames == 0:  # a last window shorter than one analysis frame holds nothing
                continue
            s, w = batch[row]
            kept = math.ceil(frames / patch)
            columns[s].append((windows[w][1] + np.arange(kept) * patch, grid[row, :kept]))
            pooled[s].append((frames, scene[row]))
    results = []
    for sound_columns, sound_pooled in zip(columns, pooled, strict=True):
        first_frames = np.concatenate([f for f, _ in sound_columns])
        weights = torch.tensor([n for n, _ in sound_pooled], dtype=torch.float32)
        scene = (torch.stack([e for _, e in sound_pooled]) * weights[:, None]).sum(0) / weights.sum()
        results.append(
            (torch.cat([e for _, e in sound_columns]), _column_centres(fe, first_frames, patch), scene)
        )
    return results


def _frame_seconds(fe, frames: np.ndarray) -> np.ndarray:
    """Seconds to the centre of (fractional) frame indices: the front end's frames are evenly spaced."""
    first, second = fe.frame_times(2)
    return first + frames * (second - first)


def _step_windows(model: HearModel, num_samples: int) -> list[tuple[int, int]]:
    """``(first sample, first frame)`` of each window of an encoder without a patch grid: windows start
    ``window_steps`` steps apart, until one reaches the last frame. A last window too short for one whole
    step is left out: the encoder would make no step of it (BEATs drops a partial patch of the whole sound
    too)."""
    fe = model.feature_extractor
    frames = fe.num_frames(num_samples)
    hop_frames = model.window_steps * model.geometry.stride
    count = 1 + max(0, math.ceil((frames - model.window_frames) / hop_frames))
    if count > 1 and frames - (count - 1) * hop_frames < model.geometry.span:
        count -= 1
    hop = _hop_samples(fe)
    return [(w * hop_frames * hop, w * hop_frames) for w in range(count)]


@torch.no_grad()
def _encode_steps(audio: torch.Tensor, model: HearModel):
    """`_encode` for the encoders without a patch grid. A batch holds one window of several sounds: all
    sounds have the same length, so the windows of a batch have too and none is padded."""
    fe, encoder, geometry = model.feature_extractor, model.encoder, model.geometry
    device = next(encoder.parameters()).device
    windows = _step_windows(model, audio.shape[1])
    steps = [[] for _ in range(audio.shape[0])]  # per sound: (global index of each step, embeddings)
    pooled = [[] for _ in range(audio.shape[0])]  # per sound: (steps kept, pooler output)
    for w, (first_sample, first_frame) in enumerate(windows):
        pieces = audio[:, first_sample : first_sample + model.window_samples]
        for i in range(0, audio.shape[0], model.batch_windows):
            inputs, mask = fe.batch_features(pieces[i : i + model.batch_windows].to(device))
            out = encoder(input_values=inputs, attention_mask=mask)
            embeddings, valid = model.family.steps(encoder, out, mask)
            embeddings, scene = embeddings.float().cpu(), out.pooler_output.float().cpu()
            for row, count in enumerate(valid.tolist()):
                # A window that is not the last keeps its whole steps only; the next one starts after them.
                kept = count if w == len(windows) - 1 else model.window_steps
                index = first_frame // geometry.stride + np.arange(kept)
                steps[i + row].append((index, embeddings[row, :kept]))
                pooled[i + row].append((kept, scene[row]))
    results = []
    for sound_steps, sound_pooled in zip(steps, pooled, strict=True):
        index = np.concatenate([n for n, _ in sound_steps])
        weights = torch.tensor([n for n, _ in sound_pooled], dtype=torch.float32)
        scene = (torch.stack([e for _, e in sound_pooled]) * weights[:, None]).sum(0) / weights.sum()
        centres = _frame_seconds(fe, geometry.stride * index + geometry.centre)
        results.append((torch.cat([e for _, e in sound_steps]), centres, scene))
    return results


def _encode(audio: torch.Tensor, model: HearModel):
    """Per sound: timestamp embeddings ``(n_steps, D)``, their centres in seconds ``(n_steps,)`` and the
    scene embedding."""
    return _encode_grid(audio, model) if model.family is None else _encode_steps(audio, model)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """One embedding per sound: ``(n_sounds, model.scene_embedding_size)`` float32."""
    audio = _check_audio(audio, model)
    return torch.stack([scene for _, _, scene in _encode(audio, model)])


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings over time and their times: ``(n_sounds, n_timestamps, D)`` float32 and
    ``(n_sounds, n_timestamps)`` milliseconds (centres), the same timestamps for every sound."""
    audio = _check_audio(audio, model)
    encoded = _encode(audio, model)
    embeddings = torch.stack([columns for columns, _, _ in encoded])
    times = torch.as_tensor(encoded[0][1] * 1000.0, dtype=torch.float32)
    return embeddings, times.expand(len(encoded), -1).contiguous()
