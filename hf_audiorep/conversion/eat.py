"""Convert EAT and CAT encoder weights (fairseq data2vec-multi layout, or EAT's Hub remote-code layout) into
`CATModel`.

Two layouts are read, both verified against the public code (cwx-worst-one/EAT and realzhouchushu/CAT
``models/{images,base,modules,EAT_pretraining}.py``; the Hub port's ``eat_model.py``):

Below, ``IMAGE.`` stands for fairseq's ``modality_encoders.IMAGE.`` (a fine-tuned model nests all of it
under ``model.``):

======================================================  ===============================================
fairseq (``Data2VecMultiModel``)                        hf_audiorep `CATModel`
======================================================  ===============================================
``IMAGE.local_encoder.proj.*`` (EAT)                    ``patch_embed.proj.*``
``IMAGE.extra_tokens``                                  ``cls_token``
``IMAGE.context_encoder.norm.*``                        ``pre_norm.*``
``blocks.{i}.{norm1,attn.*,norm2,mlp.*}.*``             ``blocks.{i}.*`` (same names)
``IMAGE.fixed_positional_encoder.positions``            dropped: ours is the fixed sin-cos buffer
CAT stem: ``IMAGE.patch_embed.{0,1,2}.{proj,norm}.*``   ``stem.stage_embeds.{0,1,2}.{proj,norm}.*``
``IMAGE.patch_embed.3.*`` (a Linear)                    ``stem.token_proj.*``
``IMAGE.conv_blocks.{s}.{j}.*`` (``attn`` = depthwise)  ``stem.stages.{s}.{j}.*`` (``dwconv``)
``IMAGE.stage_output_decode.{0,1}.*``                   ``stem.side_outputs.{0,1}.*``
======================================================  ===============================================

The Hub layout (``worstchan/EAT-base_epoch30_pretrain``, ``EATModel.model = EAT(config)``) is
``model.local_encoder.proj.*``, ``model.extra_tokens``, ``model.fixed_positional_encoder.positions``,
``model.pre_norm.*`` and ``model.blocks.{i}.*``.

Dropped with a logged list: the student decoder (``...decoder.*``), the EMA teacher (``_ema``, ``ema.*``), the
pretraining-only projections (``clap_proj``, ``recon_proj``, ``cls_proj``, ``center``, ``shared_decoder``),
``encoder_mask``, and a fine-tuned model's ``fc_norm`` / ``head`` (load those into
`CATForAudioClassification` by hand if needed). Anything else raises a ValueError listing it.
Only safetensors files are read (a pickled fairseq ``.pt`` must be converted first, in a trusted
environment: ``save_file(torch.load(p, weights_only=True)["model"], "model.safetensors")``; drop the
non-tensor ``_ema`` entry).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping

import torch

from ..modeling import get_2d_sincos_pos_embed
from ..modeling.configuration_cat import CATConfig
from ..modeling.modeling_cat import CATModel
from .audiomae_timm import state_dict_from

__all__ = ["convert_cat_state_dict", "convert_eat_state_dict", "infer_eat_config", "load_eat_checkpoint"]

logger = logging.getLogger(__name__)

_FAIRSEQ = "modality_encoders.IMAGE."
_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_CBLOCK = re.compile(
    r"^conv_blocks\.(\d+)\.(\d+)\.(norm1|conv1|attn|conv2|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)$"
)
_STAGE_EMBED = re.compile(r"^patch_embed\.([012])\.(proj|norm)\.(weight|bias)$")
_SIDE = re.compile(r"^stage_output_decode\.([01])\.(weight|bias)$")
_ENCODER_RENAMES = {
    "local_encoder.proj.weight": "patch_embed.proj.weight",
    "local_encoder.proj.bias": "patch_embed.proj.bias",
    "extra_tokens": "cls_token",
    "context_encoder.norm.weight": "pre_norm.weight",
    "context_encoder.norm.bias": "pre_norm.bias",
    "pre_norm.weight": "pre_norm.weight",  # Hub layout
    "pre_norm.bias": "pre_norm.bias",
    "patch_embed.3.weight": "stem.token_proj.weight",
    "patch_embed.3.bias": "stem.token_proj.bias",
}
_POSITIONS = "fixed_positional_encoder.positions"
_DROPPED_PREFIXES = (
    "decoder.",
    "_ema",
    "ema.",
    "clap_proj.",
    "recon_proj.",
    "cls_proj.",
    "shared_decoder.",
    "fc_norm.",
    "head.",
)
_DROPPED_KEYS = {"center", "encoder_mask", "alibi_scale"}


def _normalise_keys(state_dict: Mapping[str, object]) -> dict[str, object]:
    """Strip the wrappers around the encoder's names: DDP's ``module.``, the fine-tuning model's / the Hub
    port's ``model.``, and fairseq's ``modality_encoders.IMAGE.``."""
    keys = dict(state_dict)
    if keys and all(k.startswith("module.") for k in keys):
        keys = {k.removeprefix("module."): v for k, v in keys.items()}
    if any(k.startswith("model.") for k in keys):
        # fc_norm / head of a fine-tuned fairseq model sit beside `model.`; everything else is inside it.
        keys = {k.removeprefix("model."): v for k, v in keys.items()}
    return {k.removeprefix(_FAIRSEQ): v for k, v in keys.items()}


def _rename(key: str) -> str | None:
    if key in _ENCODER_RENAMES:
        return _ENCODER_RENAMES[key]
    if _BLOCK.match(key):
        return key
    if match := _CBLOCK.match(key):
        stage, index, part, kind = match.groups()
        part = "dwconv" if part == "attn" else part
        return f"stem.stages.{stage}.{index}.{part}.{kind}"
    if match := _STAGE_EMBED.match(key):
        return f"stem.stage_embeds.{match.group(1)}.{match.group(2)}.{match.group(3)}"
    if match := _SIDE.match(key):
        return f"stem.side_outputs.{match.group(1)}.{match.group(2)}"
    return None


def _is_dropped(key: str) -> bool:
    return key in _DROPPED_KEYS or key.startswith(_DROPPED_PREFIXES)


def convert_eat_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An EAT or CAT checkpoint's state dict (fairseq or Hub layout) -> the state dict of `CATModel`.

    Tensors are returned as float32 (meta tensors pass through, for shapes-only checks). The fixed
    positions are compared with our sin-cos table (a warning if they differ) and dropped; decoder, EMA,
    pretraining-only and head entries are dropped with a logged list; any other unknown key is a ValueError.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    keys = _normalise_keys(state_dict)
    converted: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, value in keys.items():
        if key == _POSITIONS:
            _check_positions(value)
            continue
        new_key = _rename(key)
        if new_key is not None:
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{key!r} is not a tensor ({type(value).__name__})")
            converted[new_key] = value.float() if value.is_floating_point() else value
        elif _is_dropped(key):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"keys that hf_audiorep's CAT/EAT encoder has no place for: {sorted(unknown)[:10]}"
            f"{' ...' if len(unknown) > 10 else ''}"
        )
    if "cls_token" not in converted or not any(k.startswith("blocks.") for k in converted):
        raise ValueError("not an EAT/CAT state dict: no extra_tokens (CLS) or no transformer blocks found")
    if dropped:
        logger.info("dropped %d pre-training / head entries: %s", len(dropped), sorted(dropped))
    return converted


# CAT's stem keys are read by the same renaming; the name says what the caller has.
convert_cat_state_dict = convert_eat_state_dict


def _check_positions(positions) -> None:
    if not isinstance(positions, torch.Tensor) or positions.is_meta or positions.ndim != 3:
        return
    _, rows, dim = positions.shape
    grid_f = 8  # 128 mel bins / 16: the only geometry EAT and CAT were trained with
    if rows % grid_f or dim % 4:
        return
    fixed = get_2d_sincos_pos_embed(dim, rows // grid_f, grid_f)
    difference = (positions[0].float() - fixed).abs().max().item()
    if difference > 1e-4:
        warnings.warn(
            f"the checkpoint's fixed positions differ from the 2-D sin-cos table by up to {difference:.3g}; "
            "the converted model always uses the sin-cos table",
            UserWarning,
            stacklevel=3,
        )


def infer_eat_config(state_dict: Mapping[str, torch.Tensor], **overrides) -> CATConfig:
    """The `CATConfig` an EAT/CAT state dict implies (``eat-base`` / ``cat-base`` presets, with width, depth,
    MLP ratio, patch size, stem widths and depths, and the position grid read from the shapes). Attention
    heads are not in the weights: 64-channel heads are assumed unless ``num_attention_heads`` is given."""
    converted = convert_eat_state_dict(state_dict)
    has_stem = "stem.token_proj.weight" in converted
    hidden = converted["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in converted if k.startswith("blocks."))
    fields: dict = {
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "num_attention_heads": max(1, hidden // 64),
        "mlp_ratio": converted["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "average_top_k_layers": depth,
    }
    if has_stem:
        widths = (converted[f"stem.stage_embeds.{i}.proj.weight"].shape[0] for i in (0, 1))
        fields["stem_channels"] = tuple(widths)
        fields["stem_depths"] = tuple(
            len({k.split(".")[3] for k in converted if k.startswith(f"stem.stages.{s}.")}) for s in (0, 1)
        )
        fields["num_channels"] = converted["stem.stage_embeds.0.proj.weight"].shape[1]
        stride_3 = converted["stem.stage_embeds.2.proj.weight"].shape[-1]
        fields["patch_size"] = 8 * stride_3
        first = "stem.stages.0.0."
        if first + "dwconv.weight" in converted:
            fields["stem_kernel_size"] = converted[first + "dwconv.weight"].shape[-1]
            mlp_width = converted[first + "mlp.fc1.weight"].shape[0]
            fields["stem_mlp_ratio"] = mlp_width / fields["stem_channels"][0]
    else:
        proj = converted["patch_embed.proj.weight"]
        fields["num_channels"], fields["patch_size"] = proj.shape[1], proj.shape[-1]
    positions = _normalise_keys(state_dict).get(_POSITIONS)
    num_bins = overrides.get("num_mel_bins", 128)
    grid_f = num_bins // fields["patch_size"]
    if isinstance(positions, torch.Tensor) and positions.ndim == 3 and positions.shape[1] % grid_f == 0:
        fields["max_length"] = positions.shape[1] // grid_f * fields["patch_size"]
    preset = CATConfig.from_preset("cat-base" if has_stem else "eat-base").to_dict()
    for key in ("model_type", "transformers_version", "architectures"):
        preset.pop(key, None)
    return CATConfig(**{**preset, **fields, **overrides})


def load_eat_checkpoint(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor], config: CATConfig | None = None
) -> CATModel:
    """`CATModel` (in eval mode) from an EAT/CAT checkpoint: a ``.safetensors`` file, a directory holding
    ``model.safetensors``, or a state dict. Every encoder weight must load (strict); the config is inferred
    from the shapes when not given (see `infer_eat_config`)."""
    state_dict = state_dict_from(path_or_state_dict)
    converted = convert_eat_state_dict(state_dict)
    if config is None:
        config = infer_eat_config(state_dict)
    model = CATModel(config)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as error:
        raise ValueError(f"the checkpoint does not fit the config: {error}") from None
    return model.eval()
