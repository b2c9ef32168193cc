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
from collections.abc import Mapping

import numpy as np
import soundfile as sf
import torch
import torchaudio


class CorruptAudioError(ValueError):
    """A clip that cannot be decoded, is empty, or holds NaN/infinite samples."""


def _read_soundfile(file) -> tuple[np.ndarray, int]:
    # always_2d gives (frames, channels) for mono and multichannel alike.
    data, sr = sf.read(file, dtype="float32", always_2d=True)
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], int(sr)


def _read_torchcodec(source) -> tuple[np.ndarray, int]:
    from torchcodec.decoders import AudioDecoder  # optional: needs FFmpeg shared libraries

    return _from_decoder(AudioDecoder(source))


def _from_decoder(decoder) -> tuple[np.ndarray, int]:
    samples = decoder.get_all_samples()
    data = samples.data  # (channels, frames)
    return data.mean(dim=0).numpy().astype(np.float32, copy=False), int(samples.sample_rate)


def _read_encoded(source, what: str) -> tuple[np.ndarray, int]:
    """Decode encoded audio (bytes or a path) with soundfile, else torchcodec."""
    try:
        return _read_soundfile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as sf_error:  # noqa: BLE001 - libsndfile raises several types for bad input
        try:
            return _read_torchcodec(source)
        except Exception:  # noqa: BLE001 - torchcodec missing, or the data really is broken
            # LibsndfileError.error_string is the reason alone, without the repr of the BytesIO.
            reason = getattr(sf_error, "error_string", None) or str(sf_error)
            raise CorruptAudioError(f"cannot decode {what}: {reason}") from sf_error


def _to_mono(array, what: str) -> np.ndarray:
    array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array, dtype=np.float32)
    if array.ndim == 2:
        # datasets/torchcodec arrays are channels-first; soundfile's are channels-last. Channels are
        # the short axis in every real clip, so average over that one.
        array = array.mean(axis=0 if array.shape[0] <= array.shape[1] else 1)
    if array.ndim != 1:
        raise CorruptAudioError(f"{what} has shape {array.shape}; expected (samples,) or (channels, samples)")
    return array


def _read_any(audio, sampling_rate: int | None) -> tuple[np.ndarray, int]:
    if isinstance(audio, bytes | bytearray | memoryview):
        return _read_encoded(bytes(audio), "audio bytes")
    if isinstance(audio, str | os.PathLike):
        return _read_encoded(os.fspath(audio), f"audio file {os.fspath(audio)!r}")
    if isinstance(audio, Mapping):
        if audio.get("array") is not None:
            sr = audio.get("sampling_rate") or sampling_rate
            if not sr:
                raise ValueError("a decoded audio dict needs a 'sampling_rate'")
            return _to_mono(audio["array"], "audio array"), int(sr)
        if audio.get("bytes") is not None:
            return _read_encoded(bytes(audio["bytes"]), f"audio bytes of {audio.get('path') or 'a record'!r}")
        if audio.get("path"):
            return _read_encoded(audio["path"], f"audio file {audio['path']!r}")
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
    if sr <= 0:
        raise CorruptAudioError(f"invalid sampling rate {sr}")
    if waveform.size == 0:
        raise CorruptAudioError("the clip has no samples")
    if not np.isfinite(waveform).all():
        raise CorruptAudioError("the clip contains NaN or infinite samples")
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
