"""Decode one clip to a mono float32 waveform at the model's sampling rate, then crop or pad it.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG, MP3) on the raw bytes that
``datasets.Audio(decode=False)`` yields, instead of letting ``datasets`` decode through torchcodec:
soundfile needs no FFmpeg, releases the GIL (so a thread pool decodes in parallel), and a broken
file raises here, where the stream can skip it, rather than deep inside a ``datasets`` iterator.
Containers libsndfile cannot read (m4a, webm) fall back to torchcodec when it is importable.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from collections.abc import Mapping

import numpy as np
import soundfile as sf
import torch
import torchaudio

from ..modeling.feature_extraction_base import integer_to_unit_scale, sample_range_problem
from .formats import declared_length, truncation_message, undecodable_message

# Every extension the decoder opens: libsndfile's formats (RAW needs a header it lacks), then FFmpeg's.
AUDIO_EXTENSIONS: tuple[str, ...] = tuple(
    sorted(
        {f".{name.lower()}" for name in sf.available_formats() if name != "RAW"}
        | {".aif", ".aifc", ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3"}  # aliases and the usual ones
        | {".m4a", ".m4b", ".aac", ".ac3", ".amr", ".mka", ".mp4", ".webm", ".wma", ".wv", ".3gp"}
    )
)


class CorruptAudioError(ValueError):
    """A clip that cannot be decoded, is empty, or holds NaN/infinite samples."""


def _read_soundfile(data: bytes, declared) -> tuple[np.ndarray, int]:
    with sf.SoundFile(io.BytesIO(data)) as f:
        if f.format == "MP3" and declared is None:
            # libsndfile stops an MP3 without a length header at a length it estimates from the first frame's
            # bitrate, a fraction of a VBR file; FFmpeg (torchcodec) reads it to its end.
            raise ValueError("an MP3 without a length header")
        frames = f.read(dtype="float32", always_2d=True)  # (frames, channels) for mono and multichannel alike
        return frames.mean(axis=1) if frames.shape[1] > 1 else frames[:, 0], int(f.samplerate)


def _read_torchcodec(source) -> tuple[np.ndarray, int]:
    from torchcodec.decoders import AudioDecoder  # optional: needs FFmpeg shared libraries

    return _from_decoder(AudioDecoder(source))


def _from_decoder(decoder) -> tuple[np.ndarray, int]:
    samples = decoder.get_all_samples()
    data = samples.data  # (channels, frames)
    return data.mean(dim=0).numpy().astype(np.float32, copy=False), int(samples.sample_rate)


def check_audio_path(path) -> str:
    """``path`` as a string, or the error a user should see: no such file, a directory, an empty file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if os.path.islink(path):
            raise FileNotFoundError(f"{path} is a broken symbolic link: {os.readlink(path)} does not exist")
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise CorruptAudioError(f"{path} is empty (0 bytes)")
    return path


def undecodable(source, what: str, error: BaseException) -> CorruptAudioError:
    """The error for ``source`` (bytes or a path) that no decoder could read: names what it is instead."""
    if isinstance(source, bytes):
        head = source[:8192]
    else:
        with open(source, "rb") as f:
            head = f.read(8192)
    # LibsndfileError.error_string is the reason alone, without the repr of the BytesIO.
    reason = getattr(error, "error_string", None) or str(error)
    return CorruptAudioError(undecodable_message(what, head, reason))


def _read_encoded(source, what: str) -> tuple[np.ndarray, int]:
    """Decode encoded audio (bytes or a path). A file is read as `hf-audiorep tag` reads it (`AudioFile`:
    soundfile, else torchcodec; an MP3 without a length header measured to its end), so every entry point
    decodes a file alike and refuses one that holds less audio than its container declares: the decoders
    return the part before the cut without a word, and half a recording scored or trained on as the whole
    one misleads."""
    if not isinstance(source, bytes):
        return _read_file(check_audio_path(source))
    if not source:
        raise CorruptAudioError(f"{what} is empty (0 bytes)")
    declared = declared_length(source)
    if declared is None or (not declared.cut and declared.has_audio):
        try:
            try:
                waveform, sr = _read_soundfile(source, declared)
            except Exception:  # noqa: BLE001 - libsndfile raises several types for bad input
                waveform, sr = _read_torchcodec(source)
        except Exception:  # noqa: BLE001 - torchcodec missing, or the data really is broken: said below
            pass
        else:
            # An empty read may be a WAV whose data size was never written: the file reader tries FFmpeg.
            if len(waveform) and sr > 0 and truncation_message(what, declared, len(waveform) / sr) is None:
                return waveform, sr
    # Something is wrong with these bytes: the file reader reads them or says what, as it does for a file.
    with tempfile.TemporaryDirectory(prefix="hf-audiorep-") as folder:
        spooled = os.path.join(folder, "audio")
        with open(spooled, "wb") as f:
            f.write(source)
        try:
            return _read_file(spooled)
        except CorruptAudioError as err:
            raise CorruptAudioError(str(err).replace(spooled, what)) from None


def _read_file(path: str) -> tuple[np.ndarray, int]:
    """A whole file, mono at its own rate, through `AudioFile` (which raises for a truncated file)."""
    from .audio_file import BLOCK_SECONDS, AudioFile  # it builds on this module

    with AudioFile(path) as audio:
        block, parts = max(1, round(BLOCK_SECONDS * audio.sample_rate)), []
        while len(chunk := audio.read(block)):
            parts.append(chunk)
        audio.check_complete()
        waveform = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return waveform, audio.sample_rate


def _to_mono(array, what: str) -> np.ndarray:
    array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array)
    integer_scale = integer_to_unit_scale(array.dtype)
    if array.dtype.kind == "f" and array.dtype.itemsize > 4 and array.size:
        # Past float32's range the cast makes inf, and the error would then misname the user's samples.
        problem = sample_range_problem(float(np.abs(array).max()))
        if problem is not None:
            raise CorruptAudioError(f"{what} {problem}")
    array = array.astype(np.float32, copy=False)
    if integer_scale is not None:  # int16 PCM and the like: to [-1, 1), as the feature extractor does
        offset, scale = integer_scale
        array = (array - offset) / scale
    if array.ndim == 2:
        # datasets/torchcodec arrays are channels-first; soundfile's are channels-last. Channels are
        # the short axis in every real clip, so average over that one.
        array = array.mean(axis=0 if array.shape[0] <= array.shape[1] else 1)
    if array.ndim != 1:
        raise CorruptAudioError(f"{what} has shape {array.shape}; expected (samples,) or (channels, samples)")
    return array


def _read_any(audio, sampling_rate: int | None) -> tuple[np.ndarray, int]:
    if isinstance(audio, bytes | bytearray | memoryview):
        return _read_encoded(bytes(audio), "the audio bytes")
    if isinstance(audio, str | os.PathLike):
        return _read_encoded(os.fspath(audio), os.fspath(audio))
    if isinstance(audio, Mapping):
        if audio.get("array") is not None:
            sr = audio.get("sampling_rate") or sampling_rate
            if not sr:
                raise ValueError("a decoded audio dict needs a 'sampling_rate'")
            return _to_mono(audio["array"], "audio array"), int(sr)
        if audio.get("bytes") is not None:
            what = f"the audio bytes of {audio.get('path') or 'a record'}"
            return _read_encoded(bytes(audio["bytes"]), what)
        if audio.get("path"):
            return _read_encoded(audio["path"], str(audio["path"]))
        raise CorruptAudioError("the audio value has neither 'array', 'bytes' nor 'path'")
    if hasattr(audio, "get_all_samples"):  # a torchcodec AudioDecoder, as datasets decodes Audio
        try:
            return _from_decoder(audio)
        except Exception as err:  # noqa: BLE001
            raise CorruptAudioError(f"torchcodec could not decode the clip: {err}") from err
    if isinstance(audio, np.ndarray | torch.Tensor):
        if not sampling_rate:
            raise TypeError("decode_audio got a raw array: pass its sampling_rate=")
        return _to_mono(audio, "audio array"), int(sampling_rate)
    raise TypeError(
        "decode_audio accepts bytes, a path, a datasets Audio value ({'bytes', 'path'} or "
        f"{{'array', 'sampling_rate'}}), a torchcodec AudioDecoder or an array; got {type(audio).__name__}"
    )


def _file_name_of(audio) -> str | None:
    """The file ``audio`` was read from (a path, or a datasets value's ``path``), or None: a record that
    decodes to nothing must be found in a dataset of thousands of files by its name."""
    if isinstance(audio, str | os.PathLike):
        return os.fspath(audio)
    if isinstance(audio, Mapping) and audio.get("path"):
        return str(audio["path"])
    return None


@functools.lru_cache(maxsize=8)
def _resampler(orig_sr: int, target_sr: int) -> torchaudio.transforms.Resample:
    # The sinc kernel costs as much to build as it does to apply to a 10 s clip; AudioSet has only
    # two source rates (48 and 44.1 kHz), so a handful of cached kernels (< 1 MB) covers it.
    return torchaudio.transforms.Resample(orig_sr, target_sr)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited (windowed-sinc, ``torchaudio.functional.resample``) resampling of a 1-D waveform."""
    if orig_sr == target_sr:
        return waveform
    with torch.no_grad():
        out = _resampler(int(orig_sr), int(target_sr))(torch.from_numpy(np.ascontiguousarray(waveform)))
    return out.numpy()


def decode_audio(audio, target_sr: int, *, sampling_rate: int | None = None) -> np.ndarray:
    """Decode ``audio`` to a mono float32 waveform at ``target_sr`` Hz.

    ``audio`` is a ``datasets.Audio(decode=False)`` value ``{"bytes", "path"}``, a decoded value
    ``{"array", "sampling_rate"}``, a torchcodec ``AudioDecoder``, encoded bytes, a file path, or a
    1-D/2-D array together with ``sampling_rate``. Channels are averaged. Raises
    ``CorruptAudioError`` (a ``ValueError``) for undecodable, empty or non-finite audio, and
    ``TypeError`` for a value of an unsupported type.
    """
    if target_sr <= 0:
        raise ValueError(f"target_sr must be positive, got {target_sr}")
    waveform, sr = _read_any(audio, sampling_rate)
    what = _file_name_of(audio) or "the clip"
    if sr <= 0:
        raise CorruptAudioError(f"{what} has an invalid sampling rate ({sr})")
    if waveform.size == 0:
        raise CorruptAudioError(f"{what} has no samples")
    problem = sample_range_problem(float(np.abs(waveform).max()))
    if problem is not None:
        raise CorruptAudioError(f"{what} {problem}")
    return np.ascontiguousarray(resample(waveform, sr, target_sr), dtype=np.float32)


def crop_or_pad(
    waveform: np.ndarray, num_samples: int, rng: np.random.Generator | None = None, train: bool = False
) -> tuple[np.ndarray, int]:
    """Cut or zero-pad ``waveform`` to exactly ``num_samples``; return it with its real length.

    A longer clip is cropped at a random offset drawn from ``rng`` when training (a cheap time-shift
    augmentation) and from its start at evaluation, the AudioSet convention that makes evaluation
    deterministic. Padding goes at the end; the returned length (samples before padding) lets the
    feature extractor mask the padded frames.
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    n = len(waveform)
    if n >= num_samples:
        start = 0
        if train and n > num_samples:
            if rng is None:
                raise ValueError("a random crop needs an rng")
            start = int(rng.integers(0, n - num_samples + 1))
        return waveform[start : start + num_samples], num_samples
    out = np.zeros(num_samples, dtype=np.float32)
    out[:n] = waveform
    return out, n
