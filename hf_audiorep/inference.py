"""Tag audio of any length with a classification model: sliding windows, sigmoid scores.

Shared by the ``hf-audiorep tag`` command and the Space so both report the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TaggingResult:
    labels: list[str]  # every class, in model order
    clip_scores: np.ndarray  # (C,) max over windows: "the sound occurs somewhere in the clip"
    window_scores: np.ndarray  # (W, C) per window
    window_starts: np.ndarray  # (W,) seconds

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.clip_scores)[:k]
        return [(self.labels[i], float(self.clip_scores[i])) for i in order]


def model_window_seconds(feature_extractor) -> float:
    """Seconds of audio one forward pass sees: ``target_length`` frames, ``frame_shift_ms`` apart."""
    shift = getattr(feature_extractor, "frame_shift_ms", 10.0) / 1000.0
    target = getattr(feature_extractor, "target_length", None)
    return float(target * shift) if target else 10.0


@torch.no_grad()
def tag_waveform(
    model,
    feature_extractor,
    waveform: np.ndarray,
    sampling_rate: int,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
) -> TaggingResult:
    """Score a mono waveform already at ``feature_extractor.sampling_rate``.

    Clips longer than the model's window are cut into windows (hop = half a window by default) so
    nothing past the first 10 s is silently dropped, as a plain feature-extractor call would do.
    """
    if sampling_rate != feature_extractor.sampling_rate:
        raise ValueError(
            f"audio is at {sampling_rate} Hz but the model expects {feature_extractor.sampling_rate} Hz; "
            "resample first (hf_audiorep.data.decode.decode_audio does it)"
        )
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {waveform.shape}")
    window = window_seconds or model_window_seconds(feature_extractor)
    hop = hop_seconds or window / 2
    win_n, hop_n = int(round(window * sampling_rate)), max(1, int(round(hop * sampling_rate)))
    n_windows = 1 if len(waveform) <= win_n else 1 + math.ceil((len(waveform) - win_n) / hop_n)
    starts = [min(i * hop_n, max(0, len(waveform) - win_n)) for i in range(n_windows)]
    device = next(model.parameters()).device
    outputs = []
    for i in range(0, n_windows, batch_size):
        chunk = [waveform[s : s + win_n] for s in starts[i : i + batch_size]]
        inputs = feature_extractor(chunk, sampling_rate=sampling_rate, return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        logits = model(**inputs).logits.float()
        outputs.append(torch.sigmoid(logits).cpu().numpy())
    window_scores = np.concatenate(outputs)
    id2label = model.config.id2label
    labels = [id2label[i] for i in range(len(id2label))]
    return TaggingResult(
        labels=labels,
        clip_scores=window_scores.max(axis=0),
        window_scores=window_scores,
        window_starts=np.asarray(starts, dtype=np.float64) / sampling_rate,
    )


@torch.no_grad()
def log_mel_spectrogram(feature_extractor, waveform: np.ndarray) -> np.ndarray:
    """``(frames, mel_bins)`` log-mel of a whole mono clip, as the model's feature extractor computes it.

    Unlike calling the feature extractor, nothing is cut to ``target_length``, padded or normalised: this
    is the picture of the clip (the Space draws it), not a model input. Settings the extractor does not
    have fall back to the Kaldi defaults the library's extractors use.
    """
    from .modeling._fbank import kaldi_fbank

    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {waveform.shape}")
    fe = feature_extractor
    frame_ms = float(getattr(fe, "frame_length_ms", 25.0))
    if waveform.size < int(frame_ms * fe.sampling_rate / 1000):
        raise ValueError(f"the clip is shorter than one {frame_ms:g}-ms analysis frame")
    scale = float(getattr(fe, "waveform_scale", 1.0))
    fbank = kaldi_fbank(
        torch.from_numpy(waveform * scale),
        sample_rate=fe.sampling_rate,
        num_mel_bins=int(getattr(fe, "num_mel_bins", 128)),
        frame_length_ms=frame_ms,
        frame_shift_ms=float(getattr(fe, "frame_shift_ms", 10.0)),
        window_type=str(getattr(fe, "window_type", "hanning")),
        preemphasis=float(getattr(fe, "preemphasis", 0.97)),
        remove_dc_offset=bool(getattr(fe, "remove_dc_offset", True)),
        low_freq=float(getattr(fe, "low_freq", 20.0)),
        high_freq=float(getattr(fe, "high_freq", 0.0)),
    )
    return fbank.reshape(fbank.shape[-2], fbank.shape[-1]).numpy()
