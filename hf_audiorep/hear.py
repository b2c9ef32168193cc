"""The HEAR embedding API over the library's ViT encoders on a fixed patch grid (AudioMAE, CAT, BAT).

HEAR (Holistic Evaluation of Audio Representations, Turian et al. 2022) and the benchmarks built on its
runner call three functions of a module::

    model = hf_audiorep.hear.load_model("org/cat-base")            # a path or Hub id
    scene = hf_audiorep.hear.get_scene_embeddings(audio, model)      # (n_sounds, scene_embedding_size)
    emb, ts = hf_audiorep.hear.get_timestamp_embeddings(audio, model)
    # emb (n_sounds, n_timestamps, timestamp_embedding_size), ts (n_sounds, n_timestamps) in milliseconds

``audio`` is a float ``(n_sounds, n_samples)`` tensor in [-1, 1] at ``model.sample_rate`` (the feature
extractor's rate). Sounds longer than the model's window are cut into consecutive windows of exactly
``target_length`` frames, so every frame keeps its place on the clip's frame grid; one batch of windows
is in memory at a time.

- **Timestamp embeddings**: one per time column of patches, the patch tokens of that column averaged over
  frequency; its timestamp is the centre of the column's frames (the front end's ``frame_times``). With
  16-frame patches at a 10 ms shift that is one embedding per 160 ms: coarser than HEAR's suggested
  50 ms, because a ViT has no finer token in time.
- **Scene embedding**: the model's own clip embedding (``pooler_output``: CLS or mean of patches, as the
  config says), averaged over the windows, each weighted by the frames of real audio it holds.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel

#: windows encoded per forward pass
BATCH_WINDOWS = 8


class HearModel(nn.Module):
    """A frozen encoder and its feature extractor, with the attributes the HEAR API requires."""

    def __init__(self, encoder: nn.Module, feature_extractor, batch_windows: int = BATCH_WINDOWS):
        super().__init__()
        if not hasattr(encoder, "grid_shape"):
            raise TypeError(
                f"hf_audiorep.hear serves the library's ViT encoders on a fixed patch grid (AudioMAE, CAT, "
                f"BAT), whose timestamp embeddings are the grid's columns; {type(encoder).__name__} has no "
                "such grid (grid_shape)"
            )
        if getattr(feature_extractor, "target_length", None) is None:
            raise ValueError("the feature extractor must have a target_length: it sets the window length")
        self.encoder = encoder.eval()
        self.feature_extractor = feature_extractor
        self.batch_windows = int(batch_windows)
        self.sample_rate = int(feature_extractor.sampling_rate)
        self.scene_embedding_size = self.timestamp_embedding_size = int(encoder.config.hidden_size)

    @property
    def window_frames(self) -> int:
        return int(self.feature_extractor.target_length)


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
    min_samples = model.feature_extractor.min_samples
    if audio.shape[1] < min_samples:
        raise ValueError(
            f"the sounds last {audio.shape[1]} samples; at least {min_samples} (one analysis frame at "
            f"{model.sample_rate} Hz) are needed"
        )
    finite = torch.isfinite(audio).all(dim=1)
    if not finite.all():
        # A NaN would reach every embedding of its sound silently; the other entry points refuse it too.
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"sound {bad[0]} contains NaN or infinite samples ({len(bad)} such sound(s) in all)")
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
def _encode(audio: torch.Tensor, model: HearModel):
    """Per sound: column embeddings ``(n_columns, D)``, their centres in seconds ``(n_columns,)`` and the
    scene embedding ``(D,)``. Windows of all sounds are batched together, ``batch_windows`` at a time."""
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
