"""A tiny CLAP (HTSAT audio tower, RoBERTa text tower) for the teacher and RR tests: random weights, seconds
to build, the shapes and code paths of laion/clap-htsat-unfused."""

from transformers import ClapFeatureExtractor

# The smallest HTSAT that runs: 16 mel bins on a 64 x 64 "image" (freq_ratio 4, so 256 time frames
# hold a 1 s clip's 101), 2 Swin stages of one block with 4 x 4 windows; 8 + 16 channels.
TINY_HTSAT = {
    "spec_size": 64,
    "num_mel_bins": 16,
    "window_size": 4,
    "depths": [1, 1],
    "num_attention_heads": [1, 2],
    "patch_embeds_hidden_size": 8,
    "hidden_size": 16,  # = patch_embeds_hidden_size * 2 ** (stages - 1), the width the projection reads
}
TINY_ROBERTA = {
    "vocab_size": 99,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 40,
}
PROJECTION_DIM = 8


def clap_extractor(**overrides) -> ClapFeatureExtractor:
    kwargs = {"feature_size": 16, "max_length_s": 1, "truncation": "rand_trunc", "frequency_min": 50}
    return ClapFeatureExtractor(**{**kwargs, **overrides})
