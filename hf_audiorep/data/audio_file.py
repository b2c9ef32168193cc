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

from ..modeling.feature_extraction_base import MAX_SAMPLE_MAGNITUDE, sample_range_problem
from .decode import CorruptAudioError, check_audio_path, resample, undecodable
from .formats import declared_length, truncation_message, undecodable_message

#: samples read from the decoder at a time: small enough to bound memory, large enough to be fast
BLOCK_SECONDS = 5.0
#: decoded past a cut so the windowed-sinc resampler sees real samples on both sides of it
_RESAMPLE_MARGIN_SECONDS = 0.05
#: after a decoding error inside a block, the block is read again in steps this small (a decoder hands
#: back nothing from a call that fails), so the error says where the good audio ends
_SALVAGE_SECONDS = 0.01
#: the headers that declare an MP3's length (Xing, its CBR twin Info, and VBRI)
_MP3_HEADERS = ("Xing header", "VBRI header", "MP3 stream")


class AudioFile:
    """A mono view of an audio file, read in blocks: ``read(n)`` returns at most ``n`` samples at
    ``sample_rate`` (an empty array at the end, or where the stream is damaged). ``duration`` is the length
    the decoder expects (None when it cannot say); ``declared`` is what the container announces. Raises
    ``FileNotFoundError`` / ``CorruptAudioError`` with the reason; after reading to the end,
    :meth:`check_complete` raises ``CorruptAudioError`` for a file that is truncated (it holds less audio
    than its container declares) or damaged.

    A truncated file is refused, not tagged at the shorter length: scores of half a recording are not
    what the user asked about, and nothing else would tell them. Only the part that is read counts, so
    the head of a truncated file (``max_seconds``, the Space's first seconds) is still scored."""

    def __init__(self, path: str | os.PathLike):
        self.path = check_audio_path(path)
        self._sf: sf.SoundFile | None = None
        self._decoder = None
        self._pending = np.zeros(0, np.float32)  # torchcodec hands out time ranges, not sample counts
        self._next_pts = 0.0
        self._error: Exception | None = None  # why decoding stopped before the end of the data
        self.frames_read = 0
        #: what the container declares, read from the header and the file size before any decoding
        self.declared = declared_length(self.path)
        openers = [self._open_soundfile, self._open_torchcodec]
        if self.declared is not None and self.declared.cut and self.declared.container in _MP3_HEADERS:
            # libmpg123, libsndfile's MP3 decoder, prints its own warning about a cut stream to stderr;
            # FFmpeg decodes it quietly, and check_complete says it once, in the library's words.
            openers.reverse()
        errors = []
        for opener in openers:
            try:
                opener()
                break
            except Exception as err:  # noqa: BLE001 - libsndfile raises several types; torchcodec may be missing
                errors.append((opener, err))
        else:
            sf_error = next(err for opener, err in errors if opener == self._open_soundfile)
            if self.declared is not None and (self.declared.cut or not self.declared.has_audio):
                with open(self.path, "rb") as f:
                    head = f.read(8192)
                reason = getattr(sf_error, "error_string", None) or str(sf_error)
                raise CorruptAudioError(undecodable_message(self.path, head, reason, self.declared))
            raise undecodable(self.path, self.path, sf_error) from sf_error
        if self._sf is not None and (
            self._sf.frames == 0 or (self._sf.format == "MP3" and self.declared is None)
        ):
            self._measure_with_ffmpeg()
        if self.sample_rate <= 0:
            raise CorruptAudioError(f"{self.path} declares an invalid sampling rate ({self.sample_rate} Hz)")

    def _open_soundfile(self) -> None:
        self._sf = sf.SoundFile(self.path)
        self.sample_rate, frames = int(self._sf.samplerate), self._sf.frames
        # libsndfile reports 2**63 - 1 frames for streams it cannot measure (some OGG, MP3).
        self.num_frames = frames if 0 < frames < 2**62 else None

    def _measure_with_ffmpeg(self) -> None:
        # libsndfile stops an MP3 without a Xing or VBRI header at a length it estimates from the first
        # frame's bitrate, a fraction of a VBR file, and reads a WAV whose data size was never written (0,
        # what a recorder that crashed leaves) as empty; FFmpeg reads both to their end.
        estimate = self.sample_rate, self.num_frames
        try:
            self._open_torchcodec()
        except Exception:  # noqa: BLE001 - torchcodec missing: libsndfile's estimate it is
            self._decoder, (self.sample_rate, self.num_frames) = None, estimate
            return
        self._sf.close()
        self._sf = None

    def _open_torchcodec(self) -> None:
        from torchcodec.decoders import AudioDecoder

        self._decoder = AudioDecoder(self.path)
        meta = self._decoder.metadata
        self.sample_rate = int(meta.sample_rate)
        seconds = meta.duration_seconds
        self.num_frames = round(seconds * self.sample_rate) if seconds else None

    @property
    def duration(self) -> float | None:
        return None if self.num_frames is None else self.num_frames / self.sample_rate

    def _read_decoder(self, frames: int) -> np.ndarray:
        while len(self._pending) < frames and self._error is None:
            stop = self._next_pts + max(frames / self.sample_rate, BLOCK_SECONDS)
            try:
                block = self._decode_range(self._next_pts, stop)
            except Exception as err:  # noqa: BLE001 - past the end, or the stream is damaged
                if self.num_frames is not None and self._next_pts < self.duration - 0.05:
                    self._error = err
                    block = self._salvage_decoder(stop)
                else:
                    break
            if block.size == 0:
                break
            self._pending = np.concatenate([self._pending, block])
            self._next_pts = stop
        out, self._pending = self._pending[:frames], self._pending[frames:]
        return out

    def _decode_range(self, start: float, stop: float) -> np.ndarray:
        samples = self._decoder.get_samples_played_in_range(start, stop)
        return samples.data.mean(dim=0).numpy().astype(np.float32, copy=False)

    def _salvage_decoder(self, stop: float) -> np.ndarray:
        parts, at = [], self._next_pts
        while at < stop:
            try:
                parts.append(self._decode_range(at, min(stop, at + _SALVAGE_SECONDS)))
            except Exception:  # noqa: BLE001 - the damage the first try met
                break
            at += _SALVAGE_SECONDS
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _salvage_soundfile(self, frames: int) -> np.ndarray:
        # The failed call leaves libsndfile's handle unusable: read the block again on a fresh one.
        parts, got, step = [], 0, max(1, round(_SALVAGE_SECONDS * self.sample_rate))
        try:
            with sf.SoundFile(self.path) as again:
                again.seek(self.frames_read)
                while got < frames:
                    part = again.read(min(step, frames - got), dtype="float32", always_2d=True)
                    if len(part) == 0:
                        break
                    parts.append(part)
                    got += len(part)
        except Exception:  # noqa: BLE001 - the damage the first try met
            pass
        return np.concatenate(parts) if parts else np.zeros((0, self._sf.channels), np.float32)

    def read(self, frames: int) -> np.ndarray:
        """Up to ``frames`` mono float32 samples; ``CorruptAudioError`` for non-finite data. A damaged or
        truncated stream reads as ending where the damage starts; :meth:`check_complete` then says so."""
        if self._sf is not None:
            if self._error is not None:
                return np.zeros(0, np.float32)
            try:
                data = self._sf.read(frames, dtype="float32", always_2d=True)
            except Exception as err:  # noqa: BLE001 - a truncated or damaged stream
                self._error = err
                data = self._salvage_soundfile(frames)
            block = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        else:
            block = self._read_decoder(frames)
        magnitudes = np.abs(block)
        problem = sample_range_problem(float(magnitudes.max())) if len(block) else None
        if problem is not None:
            at = (self.frames_read + int(np.argmin(magnitudes <= MAX_SAMPLE_MAGNITUDE))) / self.sample_rate
            raise CorruptAudioError(f"{self.path} {problem} (first at {at:.2f} s)")
        self.frames_read += len(block)
        return np.ascontiguousarray(block)

    def check_complete(self) -> None:
        """After reading to the end: a file that holds less audio than its container declares was truncated,
        and one whose decoder failed before the end is damaged."""
        held = self.frames_read / self.sample_rate
        reason = None
        if self._error is not None:
            reason = getattr(self._error, "error_string", None) or str(self._error)
        message = truncation_message(self.path, self.declared, held, reason)
        if message is not None:
            raise CorruptAudioError(message)
        if reason is not None:
            at = f"{self.path} past {held:.1f} s"
            raise CorruptAudioError(f"cannot decode {at}: truncated or damaged ({reason})")

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
