"""A tiny random-weight tagger and test clips, shared by the Space, CLI, pipeline and awkward-audio tests."""

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import AutoModelForAudioClassification

import hf_audiorep
from hf_audiorep.data.embedded import EMBEDDED_ONTOLOGY
from hf_audiorep.modeling import AudioFbankFeatureExtractor

#: frames the tiny test model sees: a 2.08-s window, so a few seconds of audio already need sliding windows
MAX_LENGTH = 208


def save_tiny_tagger(directory: Path, problem_type: str = "multi_label_classification") -> Path:
    """A random-weight audiomae-tiny tagger over the embedded ontology, saved with its feature extractor."""
    names = EMBEDDED_ONTOLOGY.names
    config = hf_audiorep.config_from_preset(
        "audiomae-tiny",
        max_length=MAX_LENGTH,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
        problem_type=problem_type,
    )
    torch.manual_seed(0)
    AutoModelForAudioClassification.from_config(config).save_pretrained(directory)
    AudioFbankFeatureExtractor(target_length=MAX_LENGTH).save_pretrained(directory)
    return directory


def write_clip(path: Path, seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0):
    """A tone over noise: audible, deterministic, different per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    mono = 0.3 * np.sin(2 * np.pi * (300 + 200 * seed) * t) + 0.05 * rng.standard_normal(t.size)
    data = mono if channels == 1 else np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1)
    sf.write(path, data.astype(np.float32), sample_rate, subtype="PCM_16")
    return path
