"""Weight conversion from the public reference checkpoints into hf_audiorep models.

Each converter reads safetensors only (never pickles), maps the reference key layout onto ours,
infers the config from the tensor shapes, and is tested on state dicts with the reference layout.
"""

from .audiomae_timm import (
    convert_timm_audiomae_state_dict,
    infer_timm_audiomae_config,
    load_timm_audiomae,
    read_safetensors_state_dict,
)

__all__ = [
    "convert_timm_audiomae_state_dict",
    "infer_timm_audiomae_config",
    "load_timm_audiomae",
    "read_safetensors_state_dict",
]
