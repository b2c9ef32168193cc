"""Read audio files block by block, so a long file is scored in bounded memory.

``decode_audio`` returns a whole clip, which is right for 10-s training clips and wrong for an hour-long
recording a user hands to ``hf-audiorep tag`` (gigabytes of float32) or to the Space (which only scores
its first seconds). :class:`AudioFile` reads mono blocks at the file's own rate, with soundfile where
libsndfile knows the format and torchcodec (FFmpeg) otherwise; :func:`iter_windows` turns them into the
model's overlapping windows, each resampled on its own, holding at most one window and one block.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import soundfile as sf

from .decode import CorruptAudioError, check_audio_path, resample, undecodable

#: samples read from the decoder at a time: small enough to bound memory, large enough to be fast
BLOCK_SECONDS = 5.0
#: decoded past a cut so the windowed-sinc resampler sees real samples on both sides of it
_RESAMPLE_MARGIN_SECONDS = 0.05


class AudioFile:
    """A mono view of an audio file, read in blocks: ``read(n)`` returns at most ``n`` samples at
    ``sample_rate`` (an empty array at the end). ``duration`` is the length the header declares (None
    when it does not say). Raises ``FileNotFoundError`` / ``CorruptAudioError`` with the reason."""

    def __init__(self, path: str | os.PathLike):
        self.path = check_audio_path(path)
        self._sf: sf.SoundFile | None = None
        self._decoder = None
        self._pending = np.zeros(0, np.float32)  # torchcodec hands out time ranges, not sample counts
        self._next_pts = 0.0
        self.frames_read = 0
        try:
            self._sf = sf.SoundFile(self.path)
            self.sample_rate, frames = int(self._sf.samplerate), self._sf.frames
            # libsndfile reports 2**63 - 1 frames for streams it cannot measure (some OGG, MP3).
            self.num_frames = frames if 0 < frames < 2**62 else None
        except Exception as sf_error:  # noqa: BLE001 - libsndfile raises several types for bad input
            try:
                from torchcodec.decoders import AudioDecoder

                self._decoder = AudioDecoder(self.path)
                meta = self._decoder.metadata
                self.sample_rate = int(meta.sample_rate)
                seconds = meta.duration_seconds
                self.num_frames = round(seconds * self.sample_rate) if seconds else None
            except Exception:  # noqa: BLE001 - torchcodec missing, or not audio at all
                raise undecodable(self.path, self.path, sf_error) from sf_error
        if self.sample_rate <= 0:
            raise CorruptAudioError(f"{self.path} declares an invalid sampling rate ({self.sample_rate} Hz)")

    @property
    def duration(self) -> float | None:
        return None if self.num_frames is None else self.num_frames / self.sample_rate

    def _read_decoder(self, frames: int) -> np.ndarray:
        while len(self._pending) < frames:
            stop = self._next_pts + max(frames / self.sample_rate, BLOCK_SECONDS)
            try:
                samples = self._decoder.get_samples_played_in_range(self._next_pts, stop)
            except Exception as err:  # noqa: BLE001 - past the end, or the stream is damaged
                if self.num_frames is not None and self._next_pts < self.duration - 0.05:
                    raise CorruptAudioError(
                        f"cannot decode {self.path} past {self._next_pts:.1f} s: {err}"
                    ) from err
                break
            block = samples.data.mean(dim=0).numpy().astype(np.float32, copy=False)
            if block.size == 0:
                break
            self._pending = np.concatenate([self._pending, block])
            self._next_pts = stop
        out, self._pending = self._pending[:frames], self._pending[frames:]
        return out

    def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` mono float32 samples; ``CorruptAudioError`` for damaged or non-finite data."""
        if self._sf is not None:
            try:
                data = self._sf.read(frames, dtype="float32", always_2d=True)
            except Exception as err:  # noqa: BLE001 - a truncated or damaged stream
                at = self.frames_read / self.sample_rate
                reason = getattr(err, "error_string", None) or str(err)
                raise CorruptAudioError(
                    f"cannot decode {self.path} past {at:.1f} s: truncated or damaged ({reason})"
                ) from err
            block = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        else:
            block = self._read_decoder(frames)
        if not np.isfinite(block).all():
            at = (self.frames_read + int(np.argmin(np.isfinite(block)))) / self.sample_rate
            raise CorruptAudioError(f"{self.path} contains NaN or infinite samples (first at {at:.2f} s)")
        self.frames_read += len(block)
        return np.ascontiguousarray(block)

    def check_complete(self) -> None:
        """After reading to the end: a file that ended well before its declared length was truncated."""
        if self.num_frames is not None and self._sf is not None and self.frames_read < self.num_frames:
            raise CorruptAudioError(
                f"{self.path} is truncated: its header declares {self.num_frames / self.sample_rate:.2f} s "
                f"but only {self.frames_read / self.sample_rate:.2f} s could be read"
            )

    def close(self) -> None:
        if self._sf is not None:
            self._sf.close()

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArrayReader:
    """The :class:`AudioFile` reading interface over a waveform already in memory."""

    def __init__(self, waveform: np.ndarray, sample_rate: int):
        self.waveform, self.sample_rate = np.asarray(waveform, dtype=np.float32), int(sample_rate)
        self.num_frames, self.frames_read = len(self.waveform), 0

    def read(self, frames: int) -> np.ndarray:
        out = self.waveform[self.frames_read : self.frames_read + frames]
        self.frames_read += len(out)
        return out

    def check_complete(self) -> None:
        pass


def window_count(num_samples: int, window: int, hop: int) -> int:
    """Windows of ``window`` samples every ``hop`` over ``num_samples``, the last aligned to the end."""
    return 1 if num_samples <= window else 1 + math.ceil((num_samples - window) / hop)


def iter_windows(
    reader,
    target_sr: int,
    window_seconds: float,
    hop_seconds: float,
    max_seconds: float | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """``(start seconds, mono window at target_sr)`` over a reader (:class:`AudioFile` or
    :class:`ArrayReader`): windows every ``hop_seconds``, plus one aligned to the end so the tail is scored;
    a clip shorter than one window is one (short) window. Only ``max_seconds`` (when given) are read.
    Memory holds one window and one block, whatever the file's length."""
    sr = reader.sample_rate
    window = max(1, round(window_seconds * sr))
    hop = max(1, round(hop_seconds * sr))
    if hop > window:
        raise ValueError(f"hop_seconds ({hop_seconds}) must not exceed window_seconds ({window_seconds})")
    limit = math.inf if max_seconds is None else round(max_seconds * sr)
    block = max(hop, round(BLOCK_SECONDS * sr))
    buffer = np.zeros(0, np.float32)  # samples from `offset` on
    offset, start, total, ended = 0, 0, 0, False
    while True:
        # Fill the buffer until the window at `start` is complete or the input ends.
        while not ended and offset + len(buffer) < start + window:
            want = int(min(block, limit - total))
            chunk = reader.read(want) if want > 0 else np.zeros(0, np.float32)
            if len(chunk) == 0:
                ended = True
                if total < limit:
                    reader.check_complete()
                break
            total += len(chunk)
            buffer = np.concatenate([buffer, chunk])
        if offset + len(buffer) < start + window:
            break
        yield start / sr, resample(buffer[start - offset : start - offset + window], sr, target_sr)
        start += hop
        # Keep from the window just scored on: an end-aligned last window starts after it.
        buffer, offset = buffer[start - hop - offset :], start - hop
    # The input ended before the window at `start` was full.
    if start == 0 and total > 0:  # shorter than one window: score what there is
        yield 0.0, resample(buffer, sr, target_sr)
    elif start > 0 and start - hop + window < total:  # a tail past the last full window
        yield (total - window) / sr, resample(buffer[total - window - offset :], sr, target_sr)


def read_head(path: str | os.PathLike, target_sr: int, max_seconds: float) -> tuple[np.ndarray, float]:
    """The first ``max_seconds`` of a file, mono at ``target_sr``, and the file's duration in seconds:
    what the Space needs to score a clip and say it was cut, without decoding the rest. The result equals
    decoding the whole file and cutting it (a short margin past the cut keeps the resampler's edge out)."""
    with AudioFile(path) as audio:
        sr = audio.sample_rate
        limit = round((max_seconds + _RESAMPLE_MARGIN_SECONDS) * sr)
        parts, got = [], 0
        while got < limit:
            chunk = audio.read(min(limit - got, round(BLOCK_SECONDS * sr)))
            if len(chunk) == 0:
                audio.check_complete()
                break
            parts.append(chunk)
            got += len(chunk)
        if got == 0:
            raise CorruptAudioError(f"cannot decode {audio.path}: it holds no samples")
        duration = audio.duration if audio.duration is not None and got >= limit else got / sr
        waveform = resample(np.concatenate(parts), sr, target_sr)[: round(max_seconds * target_sr)]
        return np.ascontiguousarray(waveform, dtype=np.float32), duration
