"""Tag audio of any length with a classification model: sliding windows, scored as the model was trained.

Shared by the ``hf-audiorep tag`` command, the audio-classification pipeline and the Space, so all three
report the same numbers. A multi-label model (``problem_type`` ``multi_label_classification``) gets
independent sigmoids, and a label's clip score is its highest window score ("the sound occurs somewhere");
a single-label model gets a softmax per window, averaged over windows, so the clip's scores sum to 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from .data.audio_file import ArrayReader, AudioFile, iter_windows, window_count
from .heap import release_freed_memory

#: a clip whose peak is below this is reported as silent (16-bit dither sits near -90 dBFS)
SILENCE_DBFS = -60.0
#: shortest clip worth tagging: a few analysis frames
MIN_SECONDS = 0.1


@dataclass
class TaggingResult:
    labels: list[str]  # every class, in model order
    clip_scores: np.ndarray  # (C,) sigmoid: max over windows; softmax: mean over windows
    window_scores: np.ndarray  # (W, C) per window
    window_starts: np.ndarray  # (W,) seconds
    activation: str = "sigmoid"  # "sigmoid" (multi-label), "softmax" (single-label) or "none" (raw logits)
    seconds: float = 0.0  # audio scored
    peak: float = 0.0  # largest deviation of a sample from its window's mean (sound_peak)
    precision: str = "fp32"  # what the model ran in (hf_audiorep.precision): "fp32" or "bf16"

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.clip_scores)[:k]
        return [(self.labels[i], float(self.clip_scores[i])) for i in order]

    def describe_scoring(self) -> str:
        """One sentence on what the scores are, for the CLI and the Space."""
        if self.activation == "softmax":
            return "Scores are softmax probabilities (single-label model: exactly one class is present)."
        if self.activation == "sigmoid":
            return "Scores are sigmoids (multi-label model: labels are independent)."
        return "Scores are raw logits."

    def describe_precision(self) -> str | None:
        """One sentence when the model did not run in float32 (hf_audiorep.precision), else None."""
        if self.precision == "bf16":
            return (
                "Scored in bfloat16 (fast on this CPU; scores within a few hundredths of float32, mostly "
                "thousandths)."
            )
        return None

    def silence_notice(self) -> str | None:
        """A notice when the scored audio is silent: the scores then mean little."""
        return describe_silence(self.peak, "the scores are the model's answer to silence and mean little")


def sound_peak(waveform: np.ndarray) -> float:
    """The largest deviation of a sample from the waveform's mean: a constant (DC) offset is no sound,
    however far from zero it sits."""
    waveform = np.asarray(waveform, dtype=np.float64)
    return float(np.max(np.abs(waveform - waveform.mean()))) if waveform.size else 0.0


def describe_silence(peak: float, consequence: str) -> str | None:
    """``"the clip is silent (peak ... dBFS): <consequence>"`` when ``peak`` (:func:`sound_peak`) is below
    ``SILENCE_DBFS``, else None."""
    if peak > 0.0 and 20 * math.log10(peak) >= SILENCE_DBFS:
        return None
    level = "-inf" if peak == 0.0 else f"{20 * math.log10(peak):.0f}"
    return f"the clip is silent (peak {level} dBFS): {consequence}"


def label_names(config) -> list[str] | None:
    """The class names of a classification config, or None for an encoder (no names, or only the
    ``LABEL_0, LABEL_1`` placeholders every config carries by default)."""
    id2label = getattr(config, "id2label", None) or {}
    if not id2label or all(name == f"LABEL_{i}" for i, name in id2label.items()):
        return None
    return [id2label[i] for i in range(len(id2label))]


def activation_for(config) -> str:
    """How a model's logits become scores: as it was trained (``config.problem_type``)."""
    if getattr(config, "problem_type", None) == "single_label_classification":
        return "softmax"
    if getattr(config, "problem_type", None) == "regression":
        return "none"
    # Tagging (BCE) is the library's default, and an unset problem_type with several labels is read
    # by transformers as multi-label when the labels are multi-hot.
    return "sigmoid"


def describe_duration(num_samples: int, sampling_rate: int) -> str:
    """``"3.2 s"``, ``"40 ms"``, ``"99.9 ms"`` or ``"1 sample (0.06 ms)"``: never "lasts 0 ms", and never
    rounded up to a limit the clip falls short of (``"100 ms"`` for 99.94)."""
    seconds = num_samples / sampling_rate
    if seconds >= 1.0:
        return f"{seconds:.1f} s"
    if seconds >= 0.001:
        return f"{math.floor(round(seconds * 10000, 6)) / 10:g} ms"
    return f"{num_samples} sample{'s' if num_samples != 1 else ''} ({seconds * 1000:.2f} ms)"


def check_taggable(num_samples: int, sampling_rate: int) -> None:
    """Raise ``ValueError`` naming the length when a clip is too short to tag."""
    if num_samples < MIN_SECONDS * sampling_rate:
        raise ValueError(
            f"the clip lasts {describe_duration(num_samples, sampling_rate)}, too short to tag: at least "
            f"{MIN_SECONDS:g} s of audio is needed"
        )


#: the window of a model whose front end crops to no fixed length (the Zipformer's): an AudioSet clip
DEFAULT_WINDOW_SECONDS = 10.0


def model_window_seconds(feature_extractor, config=None) -> float:
    """Seconds of audio one forward pass sees: the samples that make the front end's ``target_length``
    frames exactly (``target_length`` frame shifts would leave the last frame or two padded). A front end
    that crops to no fixed length gets `DEFAULT_WINDOW_SECONDS`, or less where the model's
    ``config.max_length`` (the frames it accepts) is shorter."""
    rate = feature_extractor.sampling_rate
    if getattr(feature_extractor, "target_length", None):
        exact = getattr(feature_extractor, "max_samples", None)
        if exact is not None:
            return exact / rate
        # Another library's extractor: its frames, one shift apart.
        return feature_extractor.target_length * getattr(feature_extractor, "frame_shift_ms", 10.0) / 1000.0
    max_length = getattr(config, "max_length", None)
    frames_of = getattr(feature_extractor, "num_frames", None)
    samples = round(DEFAULT_WINDOW_SECONDS * rate)
    if not max_length or frames_of is None or frames_of(samples) <= max_length:
        return DEFAULT_WINDOW_SECONDS
    # The longest clip whose frames the model accepts (frames grow with samples: a binary search).
    low, high = 0, samples
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if frames_of(middle) <= max_length else (low, middle - 1)
    return low / rate


def model_clip_seconds(feature_extractor) -> float | None:
    """The clip length the recipes pair with a model of ``target_length`` frames: frames times the frame
    shift, the inverse of how they turn ``--clip_seconds`` into frames, so that fine-tuning or probing a saved
    model reads clips of the length it was trained on (the corpus it was trained on, not a new one a few
    milliseconds longer). None without a ``target_length``. Tagging uses `model_window_seconds`, the samples
    that fill every frame."""
    target = getattr(feature_extractor, "target_length", None)
    if not target:
        return None
    return target * getattr(feature_extractor, "frame_shift_ms", 10.0) / 1000.0


def _apply(activation: str, logits: torch.Tensor) -> torch.Tensor:
    if activation == "softmax":
        return logits.softmax(-1)
    if activation == "sigmoid":
        return logits.sigmoid()
    if activation == "none":
        return logits
    raise ValueError(f"activation must be 'sigmoid', 'softmax' or 'none', got {activation!r}")


# A trim costs about a millisecond; a batch of windows, tens of them.
_BATCHES_PER_HEAP_TRIM = 16


@torch.no_grad()
def tag_windows(
    model,
    feature_extractor,
    windows: Iterable[tuple[float, np.ndarray]],
    activation: str | None = None,
    batch_size: int = 8,
    progress=None,
) -> TaggingResult:
    """Score ``(start seconds, mono window)`` pairs (at the feature extractor's rate) in batches.

    ``activation`` defaults to the model's (:func:`activation_for`); ``progress`` is an optional tqdm-like
    bar advanced once per window. Only one batch of windows is in memory at a time.
    """
    activation = activation or activation_for(model.config)
    sampling_rate = feature_extractor.sampling_rate
    parameter = next(model.parameters())
    device = parameter.device
    starts, outputs, pending = [], [], []
    end, peak = 0.0, 0.0

    def flush():
        inputs = feature_extractor([w for w in pending], sampling_rate=sampling_rate, return_tensors="pt")
        logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits.float()
        if not bool(torch.isfinite(logits).all()):
            # The inputs were checked, so the weights are broken (a diverged run): NaN scores are no result.
            raise ValueError(
                f"the model's scores are NaN or infinite at {starts[len(starts) - len(pending)]:.1f} s: its "
                "weights are broken (a run that diverged?)"
            )
        outputs.append(_apply(activation, logits).cpu().numpy())
        if progress is not None:
            progress.update(len(pending))
        pending.clear()
        if len(outputs) % _BATCHES_PER_HEAP_TRIM == 0:
            release_freed_memory()  # else resident memory grows with the file's length

    for start, window in windows:
        starts.append(start)
        end = max(end, start + len(window) / sampling_rate)  # windows overlap and cover the clip
        peak = max(peak, sound_peak(window))
        pending.append(window)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not starts:
        raise ValueError("no audio to tag")
    window_scores = np.concatenate(outputs)
    names = label_names(model.config) or [f"LABEL_{i}" for i in range(window_scores.shape[1])]
    clip = window_scores.mean(axis=0) if activation == "softmax" else window_scores.max(axis=0)
    return TaggingResult(
        labels=names,
        clip_scores=clip,
        window_scores=window_scores,
        window_starts=np.asarray(starts, dtype=np.float64),
        activation=activation,
        seconds=end,
        peak=peak,
        precision=getattr(model, "inference_precision", None) or _dtype_name(parameter.dtype),
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def _hop(model, feature_extractor, window_seconds, hop_seconds) -> tuple[float, float]:
    window = window_seconds or model_window_seconds(feature_extractor, model.config)
    hop = hop_seconds or window / 2
    if hop <= 0 or hop > window:
        raise ValueError(f"hop_seconds must be in (0, window = {window:g} s], got {hop:g}")
    return window, hop


def tag_waveform(
    model,
    feature_extractor,
    waveform: np.ndarray,
    sampling_rate: int,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    activation: str | None = None,
) -> TaggingResult:
    """Score a mono waveform already at ``feature_extractor.sampling_rate``.

    Clips longer than the model's window are cut into windows (hop = half a window by default, the last
    window aligned to the end) so nothing past the first window is silently dropped, as a plain
    feature-extractor call would do.
    """
    if sampling_rate != feature_extractor.sampling_rate:
        raise ValueError(
            f"audio is at {sampling_rate} Hz but the model expects {feature_extractor.sampling_rate} Hz; "
            "resample first (hf_audiorep.data.decode.decode_audio does it)"
        )
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {waveform.shape}")
    check_taggable(len(waveform), sampling_rate)
    window, hop = _hop(model, feature_extractor, window_seconds, hop_seconds)
    windows = iter_windows(ArrayReader(waveform, sampling_rate), sampling_rate, window, hop)
    return tag_windows(model, feature_extractor, windows, activation, batch_size)


def tag_file(
    model,
    feature_extractor,
    path: str | os.PathLike,
    max_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 8,
    progress: bool = False,
    activation: str | None = None,
) -> tuple[TaggingResult, float | None]:
    """Score an audio file of any length in bounded memory: windows are decoded, resampled and scored as
    they stream from the decoder. Only the first ``max_seconds`` are read when given. ``progress`` shows a
    bar (on a terminal). Returns the result and the file's declared duration (None when unknown).
    Raises ``FileNotFoundError`` or ``CorruptAudioError`` (a ``ValueError``) naming the problem."""
    from tqdm.auto import tqdm

    window, hop = _hop(model, feature_extractor, None, hop_seconds)
    sampling_rate = feature_extractor.sampling_rate
    with AudioFile(path) as audio:
        duration = audio.duration
        expected = None
        if duration is not None:
            scored = duration if max_seconds is None else min(duration, max_seconds)
            expected = window_count(
                round(scored * audio.sample_rate),
                round(window * audio.sample_rate),
                max(1, round(hop * audio.sample_rate)),
            )
        windows = iter_windows(audio, sampling_rate, window, hop, max_seconds)
        first = next(windows, None)
        if first is None:
            raise ValueError(f"{os.fspath(path)} holds no samples")
        if expected in (None, 1):
            # One window (or an unknown length): the clip must be long enough to tag at all.
            check_taggable(len(first[1]), sampling_rate)

        def chained():
            yield first
            yield from windows

        # disable=None: a bar on a terminal only, never in logs or pipes; none for a few windows.
        show = progress and (expected is None or expected >= 8)
        with tqdm(
            total=expected,
            unit="window",
            desc=os.path.basename(os.fspath(path)),
            disable=None if show else True,
            leave=False,
        ) as bar:
            result = tag_windows(model, feature_extractor, chained(), activation, batch_size, bar)
    return result, duration


@torch.no_grad()
def log_mel_spectrogram(feature_extractor, waveform: np.ndarray) -> np.ndarray:
    """``(frames, mel_bins)`` log-mel of a whole mono clip, as the model's feature extractor computes it.

    Unlike calling the feature extractor, nothing is cut to ``target_length``, padded or normalised: this
    is the picture of the clip (the Space draws it), not a model input. The library's extractors draw it
    with their own front end (Kaldi fbank, log-mel, ...); any other extractor gets a Kaldi fbank with its
    settings where it has them.
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {waveform.shape}")
    fe = feature_extractor
    frame_ms = float(getattr(fe, "frame_length_ms", 25.0))
    min_samples = int(getattr(fe, "min_samples", frame_ms * fe.sampling_rate / 1000))
    if waveform.size < min_samples:
        raise ValueError(
            f"the clip is shorter than one {1000 * min_samples / fe.sampling_rate:g}-ms analysis frame"
        )
    if hasattr(fe, "spectrogram"):
        return fe.spectrogram(waveform).numpy()
    from .modeling import kaldi_fbank

    fbank = kaldi_fbank(
        torch.from_numpy(waveform * float(getattr(fe, "waveform_scale", 1.0))),
        sample_rate=fe.sampling_rate,
        num_mel_bins=int(getattr(fe, "num_mel_bins", 128)),
        frame_length_ms=frame_ms,
        frame_shift_ms=float(getattr(fe, "frame_shift_ms", 10.0)),
    )
    return fbank.reshape(fbank.shape[-2], fbank.shape[-1]).numpy()
