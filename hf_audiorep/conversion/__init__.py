"""Weight conversion from the public reference checkpoints into hf_audiorep models.

Each converter reads safetensors (BEATs' released ``.pt`` files are read with
``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers), maps the reference key
layout onto ours, infers the config from the tensor shapes (BEATs: from the checkpoint's own cfg), and is
tested on state dicts with the reference layout.
Converters are also command-line scripts (``python -m hf_audiorep.conversion.audiomae_timm``), so
the package imports them lazily: an eager import would load the module twice under ``-m``.
"""

import importlib

_EXPORTS = {
    "convert_cat_state_dict": ".eat",
    "convert_eat_state_dict": ".eat",
    "infer_eat_config": ".eat",
    "load_eat_checkpoint": ".eat",
    "convert_timm_audiomae_state_dict": ".audiomae_timm",
    "infer_timm_audiomae_config": ".audiomae_timm",
    "load_timm_audiomae": ".audiomae_timm",
    "read_safetensors_state_dict": ".audiomae_timm",
    "convert_beats_state_dict": ".beats",
    "fold_weight_norm": ".beats",
    "load_beats_checkpoint": ".beats",
    "read_beats_checkpoint": ".beats",
    "config_from_icefall_args": ".icefall_zipformer",
    "convert_icefall_zipformer_state_dict": ".icefall_zipformer",
    "load_icefall_zipformer": ".icefall_zipformer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
