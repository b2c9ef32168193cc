"""Convert a microsoft/unilm BEATs checkpoint into `BEATsModel` / `BEATsForAudioClassification`.

A released checkpoint (``BEATs_iter3.pt``, ``BEATs_iter3_plus_AS2M.pt``, the fine-tuned ones) is a torch
pickle ``{"cfg": dict, "model": state_dict, ...}``; fine-tuned ones also carry a ``label_dict``. The config
is built from ``cfg`` (`BEATsConfig.from_reference_cfg`), never from the class defaults, which differ from
every released model. Key layout, reference -> ours, with ``L.`` the reference's ``encoder.layers.{i}.`` and
``B.`` our ``beats.encoder.blocks.{i}.``:

==========================================================  ==================================================
reference (``BEATs``)                                       hf_audiorep
==========================================================  ==================================================
``patch_embedding.*``, ``layer_norm.*``,                    ``beats.`` + same name
``post_extract_proj.*``, ``encoder.layer_norm.*``
``encoder.pos_conv.0.weight_g`` + ``weight_v``              ``beats.encoder.pos_conv.conv.weight``
(weight norm over dim 2)                                    (``g * v / ||v||``, folded)
``encoder.pos_conv.0.bias``                                 ``beats.encoder.pos_conv.conv.bias``
``L.self_attn.relative_attention_bias.weight`` (one         ``beats.encoder.relative_attention_bias.weight``
module shared by every block, so saved once per block)      (stored once)
``L.self_attn.grep_linear.*``, ``...grep_a``             ``B.self_attn.gru_rel_pos_linear.*``, ``..._const``
other ``L.*``                                               ``B.*``
``predictor.*`` (fine-tuned checkpoints)                    ``classifier.*``
==========================================================  ==================================================

The positional conv may also come already folded (``encoder.pos_conv.0.weight``) or in torch's newer
parametrisation layout (``encoder.pos_conv.0.parametrizations.weight.original0`` / ``original1``, g / v). Any
other key raises a ValueError listing it.

Loading a ``.pt`` uses ``torch.load(weights_only=True)``: its unpickler rebuilds only tensors and plain
containers (dicts, lists, numbers, strings), so a checkpoint cannot run code while it is read. The released
checkpoints are believed to hold nothing else (a cfg dict, an ordered dict of tensors, a dict of label
names); this could not be checked here, as they are not on the Hub. If one ever fails to load that way,
convert it once in a trusted environment to ``model.safetensors`` plus ``cfg.json`` (see
`load_beats_checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..modeling.configuration_beats import BEATsConfig
from ..modeling.modeling_beats import BEATsForAudioClassification, BEATsModel

__all__ = ["convert_beats_state_dict", "fold_weight_norm", "load_beats_checkpoint", "read_beats_checkpoint"]

logger = logging.getLogger(__name__)

_POS_CONV = "encoder.pos_conv.0."
_WEIGHT_NORM_PAIRS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)
_SHARED_BIAS = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight$")
_LAYER = re.compile(r"^encoder\.layers\.\d+\.")
_LAYER_RENAMES = {
    ".self_attn.grep_linear.": ".self_attn.gru_rel_pos_linear.",
    ".self_attn.grep_a": ".self_attn.gru_rel_pos_const",
}
_TOP_LEVEL = re.compile(
    r"^(patch_embedding|layer_norm|post_extract_proj|encoder\.layer_norm)\.(weight|bias)$"
)


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """The weight that ``torch.nn.utils.weight_norm(..., dim=dim)`` computes: ``g * v / ||v||``, the norm
    taken over every axis but ``dim`` (BEATs normalises its positional conv per kernel tap, ``dim=2``)."""
    other_axes = tuple(axis for axis in range(weight_v.ndim) if axis != dim)
    norm = torch.linalg.vector_norm(weight_v.float(), dim=other_axes, keepdim=True)
    return (weight_g.float() * weight_v.float() / norm).to(weight_v.dtype)


def _pos_conv_weight(state_dict: Mapping[str, torch.Tensor]) -> torch.Tensor:
    for g_name, v_name in _WEIGHT_NORM_PAIRS:
        if _POS_CONV + g_name in state_dict and _POS_CONV + v_name in state_dict:
            return fold_weight_norm(state_dict[_POS_CONV + g_name], state_dict[_POS_CONV + v_name])
    if _POS_CONV + "weight" in state_dict:
        return state_dict[_POS_CONV + "weight"]
    raise ValueError(
        f"no positional conv weight in the checkpoint: expected {_POS_CONV}weight_g and {_POS_CONV}weight_v "
        f"(weight norm), their parametrizations.* form, or a plain {_POS_CONV}weight"
    )


def convert_beats_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference BEATs state dict (``checkpoint["model"]``) in our key layout.

    The keys are those of `BEATsForAudioClassification` (``beats.*`` and ``classifier.*``) when the checkpoint
    has a predictor, and of `BEATsModel` (no prefix) otherwise.
    """
    has_head = "predictor.weight" in state_dict
    prefix = "beats." if has_head else ""
    converted: dict[str, torch.Tensor] = {}
    pos_conv_names = {_POS_CONV + name for pair in _WEIGHT_NORM_PAIRS for name in pair} | {
        _POS_CONV + "weight"
    }
    converted[prefix + "encoder.pos_conv.conv.weight"] = _pos_conv_weight(state_dict)
    shared_bias: torch.Tensor | None = None
    unknown = []
    for key, tensor in state_dict.items():
        if key in pos_conv_names:
            continue
        if key == _POS_CONV + "bias":
            converted[prefix + "encoder.pos_conv.conv.bias"] = tensor
        elif _SHARED_BIAS.match(key):
            if shared_bias is None:
                shared_bias = tensor
            elif not torch.equal(shared_bias, tensor):
                raise ValueError(
                    f"{key} differs from the first block's relative position table; the reference shares one "
                    "table across blocks, so this is not a BEATs checkpoint"
                )
        elif _LAYER.match(key):
            key = "encoder.blocks." + key.removeprefix("encoder.layers.")
            for old, new in _LAYER_RENAMES.items():
                key = key.replace(old, new)
            converted[prefix + key] = tensor
        elif _TOP_LEVEL.match(key):
            converted[prefix + key] = tensor
        elif key in ("predictor.weight", "predictor.bias"):
            converted["classifier." + key.removeprefix("predictor.")] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"keys that are not part of a BEATs checkpoint: {sorted(unknown)}")
    if shared_bias is not None:
        converted[prefix + "encoder.relative_attention_bias.weight"] = shared_bias
    return converted


def read_beats_checkpoint(
    path: str | os.PathLike,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[int, str] | None]:
    """``(cfg, state_dict, label_dict)`` of a reference checkpoint: a ``.pt`` file (read with
    ``weights_only=True``) or a directory holding ``model.safetensors`` and ``cfg.json`` (the reference's cfg
    dict as JSON), and optionally ``label_dict.json``. ``label_dict`` (class index -> label, e.g. an AudioSet
    id) is a fine-tuned checkpoint's, None when there is none."""
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file

        weights, cfg_file = path / "model.safetensors", path / "cfg.json"
        for required in (weights, cfg_file):
            if not required.is_file():
                raise FileNotFoundError(
                    f"{required} not found (a converted BEATs checkpoint directory holds both)"
                )
        labels_file = path / "label_dict.json"
        labels = json.loads(labels_file.read_text()) if labels_file.is_file() else None
        return json.loads(cfg_file.read_text()), load_file(weights), _label_dict(labels)
    if not path.is_file():
        raise FileNotFoundError(f"no BEATs checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "cfg" not in checkpoint or "model" not in checkpoint:
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"{path} is not a BEATs checkpoint: expected a dict with 'cfg' and 'model', got {found}"
        )
    return dict(checkpoint["cfg"]), dict(checkpoint["model"]), _label_dict(checkpoint.get("label_dict"))


def _label_dict(labels: Mapping | None) -> dict[int, str] | None:
    # JSON keys are strings; the reference's are class indices.
    return None if labels is None else {int(index): str(label) for index, label in labels.items()}


def load_beats_checkpoint(
    path_or_cfg: str | os.PathLike | Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor] | None = None,
    with_head: bool | None = None,
    label_dict: Mapping[int, str] | None = None,
) -> BEATsModel | BEATsForAudioClassification:
    """Our model from a reference checkpoint: a path (see `read_beats_checkpoint`), or its ``cfg`` dict and
    ``state_dict``.

    ``with_head``: ``True`` returns `BEATsForAudioClassification` (the checkpoint must be fine-tuned),
    ``False`` the encoder `BEATsModel` (a predictor is dropped), ``None`` picks by the checkpoint. Every
    weight must load (strict); the model is returned in eval mode. A fine-tuned checkpoint's ``label_dict``
    (read from the file, or given) becomes the config's ``id2label``.
    """
    if isinstance(path_or_cfg, Mapping):
        if state_dict is None:
            raise ValueError("pass the checkpoint's state_dict with its cfg")
        cfg = dict(path_or_cfg)
    else:
        if state_dict is not None:
            raise ValueError(
                "pass a checkpoint path, or a cfg dict and a state_dict, not a path and a state_dict"
            )
        cfg, state_dict, read_labels = read_beats_checkpoint(path_or_cfg)
        label_dict = read_labels if label_dict is None else label_dict
    converted = convert_beats_state_dict(state_dict)
    has_head = "classifier.weight" in converted
    with_head = has_head if with_head is None else with_head
    if with_head and not has_head:
        raise ValueError(
            "the checkpoint has no predictor (it is not fine-tuned); load it with with_head=False"
        )
    config = BEATsConfig.from_reference_cfg(cfg)
    if label_dict is not None:
        if len(label_dict) != config.num_labels:
            raise ValueError(
                f"label_dict has {len(label_dict)} labels but the checkpoint's predictor {config.num_labels}"
            )
        config.id2label = {int(index): str(label) for index, label in label_dict.items()}
        config.label2id = {label: index for index, label in config.id2label.items()}
    if with_head:
        model = BEATsForAudioClassification(config)
    else:
        model = BEATsModel(config)
        if has_head:
            converted = {k.removeprefix("beats."): v for k, v in converted.items() if k.startswith("beats.")}
    model.load_state_dict(converted, strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hf_audiorep.conversion.beats",
        description="Convert a microsoft/unilm BEATs checkpoint into an hf_audiorep model directory.",
    )
    parser.add_argument(
        "input", help="a BEATs .pt checkpoint, or a directory with model.safetensors + cfg.json"
    )
    parser.add_argument("output_dir", help="where the model and preprocessor_config.json are written")
    parser.add_argument("--no-head", action="store_true", help="save the encoder only (BEATsModel)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from ..modeling.feature_extraction_beats import BEATsFeatureExtractor

    try:
        model = load_beats_checkpoint(args.input, with_head=False if args.no_head else None)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))  # a usage message and exit status 2, not a traceback
    model.save_pretrained(args.output_dir)
    BEATsFeatureExtractor().save_pretrained(args.output_dir)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info("wrote %s (%.2f M parameters) to %s", type(model).__name__, num_params / 1e6, args.output_dir)


if __name__ == "__main__":
    main()
