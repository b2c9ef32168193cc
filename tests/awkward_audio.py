"""A corpus of awkward audio files, made at test time (nothing binary is committed).

Each case is a file a user may hand to the library — empty, one sample, NaN, garbage, a picture or a text
file named as audio, a truncated FLAC, an hour at 8 kHz, six channels at 96 kHz, silence, ... — with what
every entry point must do with it: tag it (``expect=None``) or refuse it with a message that contains
``expect``. ``python tests/awkward_audio.py DIR`` writes them for trying by hand.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


@dataclass(frozen=True)
class AwkwardFile:
    name: str
    write: Callable[[Path], None]
    expect: str | None  # None: tagged; otherwise a phrase the error message must contain
    slow: bool = False  # long enough to matter for a test's run time


def _tone(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)
    if channels == 1:
        return mono.astype(np.float32)
    return np.stack([mono * (1 - 0.1 * c) for c in range(channels)], axis=1).astype(np.float32)


def _write(data, sr, **kwargs):
    return lambda path: sf.write(path, data, sr, **kwargs)


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(path, format="PNG")


def _truncated_flac(path: Path) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, _tone(3.0, 16000), 16000, format="FLAC")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _long_flac(path: Path, seconds: float = 3600.0, sr: int = 8000) -> None:
    # Written block by block: an hour of float samples never sits in memory here either.
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, format="FLAC", subtype="PCM_16") as f:
        for start in range(0, int(seconds), 60):
            f.write(_tone(60.0, sr, seed=start))


def _m4a(path: Path) -> None:
    import torch
    from torchcodec.encoders import AudioEncoder

    AudioEncoder(torch.from_numpy(_tone(2.0, 44100))[None], sample_rate=44100).to_file(str(path))


def _directory(path: Path) -> None:
    path.mkdir()


def _unfinished_wav(path: Path) -> None:
    """What a recorder that crashed leaves: the RIFF and data sizes never written (0), the samples there."""
    import struct

    rate, samples = 16000, (_tone(2.0, 16000) * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", 0) + samples
    path.write_bytes(b"RIFF" + struct.pack("<I", 0) + body)


AWKWARD_FILES = (
    AwkwardFile("empty.wav", lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    AwkwardFile("zero_samples.wav", _write(np.zeros(0, np.float32), 16000), "no samples"),
    AwkwardFile("one_sample.wav", _write(np.full(1, 0.5, np.float32), 16000), "1 sample"),
    AwkwardFile("nan.wav", _write(np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT"), "NaN"),
    # finite, but its spectrogram's power overflows float32: every score would be NaN
    AwkwardFile("huge_float.wav", _write(1e20 * _tone(2.0, 16000), 16000, subtype="FLOAT"), "far outside"),
    AwkwardFile("unfinished.wav", _unfinished_wav, None),
    AwkwardFile(
        "garbage.wav", lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not an audio file"
    ),
    AwkwardFile("picture.wav", _png, "not an audio file (an image (PNG"),
    AwkwardFile(
        "notes.mp3", lambda p: p.write_text("a text file, not a song\n" * 20), "not an audio file (text)"
    ),
    AwkwardFile("truncated.flac", _truncated_flac, "truncated or damaged"),
    AwkwardFile("missing.wav", lambda p: None, "no such file"),
    AwkwardFile("dangling.wav", lambda p: p.symlink_to(p.with_name("gone.wav")), "is a broken symbolic link"),
    AwkwardFile("folder.wav", _directory, "is a directory"),
    AwkwardFile("click_30ms.wav", _write(_tone(0.03, 16000), 16000), "at least 0.1 s"),
    AwkwardFile("silence.wav", _write(np.zeros(32000, np.float32), 16000), None),
    AwkwardFile("six_channels_96k.wav", _write(_tone(3.0, 96000, channels=6), 96000, subtype="PCM_24"), None),
    AwkwardFile("stereo_44k.flac", _write(_tone(5.0, 44100, channels=2), 44100), None),
    AwkwardFile("clipped_float.wav", _write(3.0 * _tone(2.0, 16000), 16000, subtype="FLOAT"), None),
    AwkwardFile("unsigned_8bit_11k.wav", _write(_tone(2.0, 11025), 11025, subtype="PCM_U8"), None),
    AwkwardFile("pcm24_22k.aiff", _write(_tone(2.0, 22050), 22050, subtype="PCM_24"), None),
    AwkwardFile("vorbis.oga", _write(_tone(2.0, 16000), 16000, format="OGG", subtype="VORBIS"), None),
    AwkwardFile("layer3.mp3", _write(_tone(2.0, 16000), 16000, format="MP3", subtype="MPEG_LAYER_III"), None),
    AwkwardFile("aac.m4a", _m4a, None),
    AwkwardFile("hour_8k.flac", _long_flac, None, slow=True),
)


def write_awkward_files(directory: Path, include_slow: bool = True) -> dict[str, tuple[Path, AwkwardFile]]:
    """Write every case into ``directory`` (the missing one is left missing); ``{name: (path, case)}``."""
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for case in AWKWARD_FILES:
        if case.slow and not include_slow:
            continue
        path = directory / case.name
        if not (path.exists() or path.is_symlink()):
            case.write(path)
        written[case.name] = (path, case)
    return written


if __name__ == "__main__":
    for path, case in write_awkward_files(Path(sys.argv[1] if len(sys.argv) > 1 else "awkward")).values():
        print(f"{path}  expect: {case.expect or 'tagged'}")
