"""A tiny audio-text contrastive Zipformer for the tests of its objective and its evaluation: a two-stack
Zipformer on 32 mel bins and a one-layer BERT over a given tokenizer, milliseconds per step."""

import torch
from transformers import BertConfig

from hf_audiorep.modeling import ZipformerConfig, ZipformerForAudioTextContrastive

TINY_ZIPFORMER = dict(
    num_encoder_layers=(1, 1),
    downsampling_factor=(1, 2),
    encoder_dim=(16, 24),
    feedforward_dim=(32, 48),
    num_heads=(2, 2),
    encoder_unmasked_dim=(8, 16),
    cnn_module_kernel=(5, 3),
    query_head_dim=8,
    value_head_dim=4,
    pos_head_dim=2,
    pos_dim=8,
    subsampling_channels=(4, 8, 8),
    num_mel_bins=32,
)


def tiny_clap(tokenizer, seed: int = 0, **overrides) -> ZipformerForAudioTextContrastive:
    """Random weights (seeded); ``overrides`` are `ZipformerConfig` fields."""
    torch.manual_seed(seed)
    text_config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    config = ZipformerConfig(
        **{**TINY_ZIPFORMER, "text_config": text_config, "projection_dim": 12, **overrides}
    )
    return ZipformerForAudioTextContrastive(config)
