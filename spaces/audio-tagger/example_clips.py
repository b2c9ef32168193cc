"""Example clips for the Space, synthesised at start-up with the embedded corpus's own sound recipes.

No audio is shipped in the Space repository: a few seconds of numpy render each clip from a fixed seed
(the full embedded corpus would take a minute to generate). The clips use classes of the embedded
ontology, so a model fine-tuned on the corpus tags them; they also cover what uploads look like in
practice: a 44.1 kHz stereo FLAC longer than the model's window, next to 16 kHz mono WAVs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from hf_audiorep.data.embedded import EMBEDDED_ONTOLOGY, synthesize

__all__ = ["EXAMPLES", "ExampleClip", "write_examples"]

# Bump when the clips change, so that a stale cache is not served.
_VERSION = 1


@dataclass(frozen=True)
class ExampleClip:
    """``events``: (class name, onset in seconds, gain) triples mixed into ``seconds`` of audio."""

    file_name: str
    seconds: float
    events: tuple[tuple[str, float, float], ...]
    sample_rate: int = 16000
    channels: int = 1


EXAMPLES = (
    ExampleClip("dog_bark_in_rain.wav", 10.0, (("Rain", 0.0, 0.35), ("Dog bark", 2.0, 1.0))),
    ExampleClip("siren_over_engine.wav", 10.0, (("Engine", 0.0, 0.5), ("Siren", 1.5, 0.8))),
    ExampleClip("speech_and_typing.wav", 10.0, (("Female speech", 0.5, 1.0), ("Keyboard typing", 0.0, 0.4))),
    # Longer than a 10-s window and stereo at 44.1 kHz: the Space resamples it and plots scores over time.
    ExampleClip(
        "birds_stream_then_car_horn.flac",
        24.0,
        (("Stream", 0.0, 0.3), ("Bird chirp", 1.0, 0.9), ("Bird chirp", 6.0, 0.9), ("Car horn", 17.0, 1.0)),
        sample_rate=44100,
        channels=2,
    ),
)


def _render(clip: ExampleClip, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(round(clip.seconds * clip.sample_rate))
    mix = np.zeros(n, dtype=np.float32)
    for name, onset, gain in clip.events:
        recipe = EMBEDDED_ONTOLOGY.recipes[EMBEDDED_ONTOLOGY.index(name)]
        start = int(round(onset * clip.sample_rate))
        wave = synthesize(recipe, rng, clip.sample_rate, clip.seconds - onset).waveform[: n - start]
        mix[start : start + wave.size] += gain * wave
    mix *= 0.7 / max(float(np.max(np.abs(mix))), 1e-6)  # -3 dBFS peak
    if clip.channels == 1:
        return mix
    # A slightly different balance per channel, so the app's down-mix is exercised on real stereo.
    return np.stack([mix * (1.0 - 0.2 * c / clip.channels) for c in range(clip.channels)], axis=1)


def _default_directory() -> Path:
    root = os.environ.get("HF_AUDIOREP_EXAMPLES_DIR")
    return Path(root) if root else Path(tempfile.gettempdir()) / f"hf_audiorep_space_examples_v{_VERSION}"


def write_examples(directory: str | os.PathLike | None = None, seed: int = 0) -> list[Path]:
    """Write (or reuse) the example clips in ``directory`` and return their paths.

    A clip already on disk is kept: the clips are a pure function of ``seed`` and ``_VERSION``. Files are
    written under a temporary name and renamed, so a second worker never reads half a file.
    """
    directory = Path(directory) if directory is not None else _default_directory()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, clip in enumerate(EXAMPLES):
        path = directory / clip.file_name
        if not path.is_file():
            tmp = path.with_name(f".{path.stem}.{os.getpid()}{path.suffix}")
            sf.write(tmp, _render(clip, seed + index), clip.sample_rate, subtype="PCM_16")
            os.replace(tmp, path)
        paths.append(path)
    return paths
