"""One tiny random config per model family, and models built from them: shared by the export and the
inference-precision tests, which must reach every family."""

from __future__ import annotations

import torch
from transformers import AutoModelForAudioClassification

from hf_audiorep.registry import ARCHITECTURES, architecture_for

NUM_LABELS = 3

#: tiny configs, one per family (about the sizes of the families' model tests)
TINY = {
    "audiomae": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_length=64, num_mel_bins=32
    ),
    "cat": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        stem_channels=(8, 16),
        stem_depths=(1, 1),
        max_length=64,
        num_mel_bins=32,
        average_top_k_layers=2,  # the pre-training target's layers: at most num_hidden_layers
    ),
    "bat": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_length=64,
        num_mel_bins=32,
        average_top_k_layers=2,
    ),
    "beats": dict(
        num_mel_bins=32,
        patch_embedding_dim=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_conv_pos_embeddings=4,
        num_conv_pos_embedding_groups=2,
        relative_position_embedding=True,
        gru_rel_pos=True,
        deep_norm=True,
        num_buckets=8,
        max_distance=16,
        max_length=400,
    ),
    "cp_mobile": dict(
        num_mel_bins=32,
        base_channels=8,
        channels_multiplier=2.0,
        expansion_rate=2.0,
        n_blocks=(2, 1, 1),
        strides=((1, 1), (2, 2), (1, 2), (2, 1)),
    ),
    "zipformer": dict(
        num_encoder_layers=(1, 1, 1),
        downsampling_factor=(1, 2, 4),
        encoder_dim=(16, 24, 20),
        feedforward_dim=(32, 48, 40),
        num_heads=(2, 2, 2),
        encoder_unmasked_dim=(8, 16, 16),
        cnn_module_kernel=(5, 3, 3),
        query_head_dim=8,
        value_head_dim=4,
        pos_head_dim=2,
        pos_dim=8,
        subsampling_channels=(4, 8, 8),
        num_mel_bins=32,
        max_length=200,
    ),
}


def tiny_model(family: str, classifier: bool):
    config = tiny_config(family)
    architecture = architecture_for(config.model_type)
    model_class = architecture.base_model
    if classifier:
        model_class = architecture.heads[AutoModelForAudioClassification]
    torch.manual_seed(0)
    model = model_class(config).eval()
    # Move every norm off its initial unit scale and zero shift, so that a dropped or misplaced norm shows.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model


def tiny_config(family: str):
    (architecture,) = [a for a in ARCHITECTURES if a.name == family]
    return architecture.config_class(num_labels=NUM_LABELS, **TINY[family])


def random_features(batch: int, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 32, generator=generator)


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random (LayerNorm weights and biases too): no term hides behind a 1 or 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return module
