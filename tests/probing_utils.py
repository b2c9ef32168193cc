"""Tiny random encoders of three families, labelled tone clips and an in-memory feature cache, for the probing
tests (no Hub access)."""

from pathlib import Path

import numpy as np
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    AutoModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)

import hf_audiorep
from hf_audiorep.evaluation.probing import FeatureCache, LayerFeatureEncoder
from hf_audiorep.modeling import AudioFbankFeatureExtractor

SAMPLE_RATE = 16000
#: the tone of each class of `tone_batches`, in Hz
TONES = (300.0, 700.0, 1500.0, 3100.0)


def tiny_ast(seed: int = 0) -> tuple[ASTModel, ASTFeatureExtractor]:
    """A 2-block, 32-wide AST over 128 frames (1.28 s): CLS + distillation token + 14 patches."""
    torch.manual_seed(seed)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_length=128,
        num_mel_bins=128,
        frequency_stride=16,
        time_stride=16,
    )
    return ASTModel(config).eval(), ASTFeatureExtractor(max_length=128)


def tiny_wav2vec2(seed: int = 0) -> tuple[Wav2Vec2Model, Wav2Vec2FeatureExtractor]:
    """A 2-block, 32-wide wav2vec2 with a 2-layer convolutional front end (stride 20: 50 tokens per 1000
    samples), whose feature extractor returns an attention mask (so padded tokens are masked)."""
    torch.manual_seed(seed)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 4),
        conv_kernel=(10, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
    )
    return Wav2Vec2Model(config).eval(), Wav2Vec2FeatureExtractor(return_attention_mask=True)


def tiny_audiomae(seed: int = 0, max_length: int = 208) -> tuple[torch.nn.Module, AudioFbankFeatureExtractor]:
    """The library's random audiomae-tiny encoder over ``max_length`` frames."""
    torch.manual_seed(seed)
    config = hf_audiorep.config_from_preset("audiomae-tiny", max_length=max_length)
    return AutoModel.from_config(config).eval(), AudioFbankFeatureExtractor(target_length=max_length)


def layer_encoder(family: str, **kwargs) -> LayerFeatureEncoder:
    """`LayerFeatureEncoder` of a tiny ``ast``, ``wav2vec2`` or ``audiomae`` encoder."""
    build = {"ast": tiny_ast, "wav2vec2": tiny_wav2vec2, "audiomae": tiny_audiomae}[family]
    model, feature_extractor = build()
    kind = "hf_audiorep" if family == "audiomae" else "auto"
    return LayerFeatureEncoder(model, feature_extractor, kind, **kwargs)


def tone_batches(
    num_clips: int, batch_size: int = 8, seconds: float = 1.0, seed: int = 0, short: bool = False
) -> list[dict]:
    """Batches of noisy tones, each clip holding one or two of the `TONES` (its multi-hot labels); with
    ``short`` every other clip is shorter than the batch width (zero padding past its length)."""
    rng = np.random.default_rng(seed)
    width = int(seconds * SAMPLE_RATE)
    t = np.arange(width) / SAMPLE_RATE
    batches = []
    for start in range(0, num_clips, batch_size):
        count = min(batch_size, num_clips - start)
        waveforms = np.zeros((count, width), dtype=np.float32)
        labels = np.zeros((count, len(TONES)), dtype=np.float32)
        lengths = np.full(count, width)
        for i in range(count):
            classes = rng.choice(len(TONES), size=rng.integers(1, 3), replace=False)
            labels[i, classes] = 1.0
            wave = sum(np.sin(2 * np.pi * TONES[c] * t + rng.uniform(0, 6.3)) for c in classes)
            wave = 0.2 * wave + 0.05 * rng.standard_normal(width)
            if short and (start + i) % 2:
                lengths[i] = width // 2
            waveforms[i, : lengths[i]] = wave[: lengths[i]]
        batches.append(
            {
                "waveforms": torch.from_numpy(waveforms),
                "lengths": torch.from_numpy(lengths),
                "labels": torch.from_numpy(labels),
            }
        )
    return batches


def save_tiny_ast(directory: Path) -> Path:
    """The tiny AST saved as a model directory (config, weights, preprocessor config)."""
    model, feature_extractor = tiny_ast()
    model.save_pretrained(directory)
    feature_extractor.save_pretrained(directory)
    return directory


class ArrayCache(FeatureCache):
    """A feature cache held in memory (the probe training and fitting read only these attributes)."""

    def __init__(self, features, mask, labels):
        self.features, self.token_mask, self.labels = features, mask, labels
        self.meta = {}
