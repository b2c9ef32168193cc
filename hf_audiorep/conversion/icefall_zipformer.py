"""Convert icefall's Zipformer audio tagger (k2-fsa/icefall ``egs/audioset/AT/zipformer``) into
`ZipformerForAudioClassification` (or its encoder into `ZipformerModel`).

icefall's ``AudioTaggingModel`` state dict has three parts: ``encoder_embed.*`` (``Conv2dSubsampling``),
``encoder.*`` (``Zipformer2``: ``encoder.encoders.{s}`` per stack, whose layers sit under ``layers.{j}`` for a
stack at 50 frames/s and under ``encoder.layers.{j}`` for a downsampled one) and ``classifier.1.*`` (the
Linear after the Dropout). Inside a layer the names are ours already; what changes:

==================================================  ===========================================
icefall                                             hf_audiorep (under ``zipformer.``)
==================================================  ===========================================
``encoder_embed.conv.{0,4,7}.*``                    ``embed.conv{1,2,3}.*``
``encoder_embed.{convnext,out,out_norm}.*``         ``embed.{convnext,out,out_norm}.*``
``encoder.encoders.{s}[.encoder].layers.{j}.*``     ``blocks.{first layer of stack s + j}.*``
``encoder.encoders.{s}.downsample.bias``            ``stacks.{s}.downsample.bias``
``encoder.encoders.{s}.out_combiner.bypass_scale``  ``stacks.{s}.out_combiner.bypass_scale``
``encoder.downsample_output.bias``                  ``downsample_output.bias``
``classifier.1.{weight,bias}``                      ``classifier.{weight,bias}`` (no prefix)
==================================================  ===========================================

A layer's own ``bypass_scale`` (icefall: "TODO: remove it"; no forward pass reads it) is dropped. The config
comes from icefall's training arguments (`config_from_icefall_args`: the ``--encoder-dim`` ... options, as
strings or tuples), since the shapes alone do not tell the number of heads from the head widths.

Also a command-line script::

    python -m hf_audiorep.conversion.icefall_zipformer model.safetensors args.json out_dir
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "config_from_icefall_args",
    "convert_icefall_zipformer_state_dict",
    "load_icefall_zipformer",
]

_EMBED_CONVS = {"conv.0.": "conv1.", "conv.4.": "conv2.", "conv.7.": "conv3."}
_LAYER = re.compile(r"^encoder\.encoders\.(\d+)\.(?:encoder\.)?layers\.(\d+)\.(.+)$")
_STACK = re.compile(r"^encoder\.encoders\.(\d+)\.(downsample\.bias|out_combiner\.bypass_scale)$")
#: read by no forward pass of icefall's layer; the converter drops it
_UNUSED_LAYER_PARAM = "bypass_scale"

# icefall option (train.py's add_model_arguments, dashes as underscores) -> ZipformerConfig field
_ARGUMENTS = {
    "num_encoder_layers": "num_encoder_layers",
    "downsampling_factor": "downsampling_factor",
    "encoder_dim": "encoder_dim",
    "feedforward_dim": "feedforward_dim",
    "num_heads": "num_heads",
    "encoder_unmasked_dim": "encoder_unmasked_dim",
    "cnn_module_kernel": "cnn_module_kernel",
    "query_head_dim": "query_head_dim",
    "value_head_dim": "value_head_dim",
    "pos_head_dim": "pos_head_dim",
    "pos_dim": "pos_dim",
    "feature_dim": "num_mel_bins",
    "num_events": "num_labels",
}


def _ints(value) -> tuple[int, ...] | int:
    if isinstance(value, str):  # icefall passes "2,2,3,4,3,2"
        value = tuple(int(v) for v in value.split(","))
    if isinstance(value, (list, tuple)):
        value = tuple(int(v) for v in value)
        return value[0] if len(value) == 1 else value
    return int(value)


def config_from_icefall_args(args: Mapping[str, Any], **overrides: Any):
    """A `ZipformerConfig` from icefall's model arguments (``--encoder-dim 192,256,...`` etc., as a dict with
    dashes or underscores; ``layer_channels`` gives ``Conv2dSubsampling``'s three channel counts when they
    are not icefall's 8/32/128). ``num_events`` becomes ``num_labels`` with multi-label classification.
    Options left out keep our defaults: icefall's Zipformer-M, except for the feed-forward widths (Auden's).
    """
    from hf_audiorep.modeling.configuration_zipformer import ZipformerConfig

    args = {key.lstrip("-").replace("-", "_"): value for key, value in args.items()}
    if args.get("causal") in (True, "True", "true", 1, "1"):
        raise ValueError(
            "args: causal (streaming) Zipformers are not supported; convert a causal=False model"
        )
    fields: dict[str, Any] = {}
    for option, field in _ARGUMENTS.items():
        if option in args:
            fields[field] = _ints(args[option])
    if "layer_channels" in args:
        fields["subsampling_channels"] = tuple(int(c) for c in args["layer_channels"])
    if "num_labels" in fields:
        fields["problem_type"] = "multi_label_classification"
    return ZipformerConfig(**{**fields, **overrides})


def convert_icefall_zipformer_state_dict(
    state_dict: Mapping[str, torch.Tensor], config, prefix: str = "zipformer."
) -> dict[str, torch.Tensor]:
    """Rename an icefall ``AudioTaggingModel`` state dict (optionally wrapped as ``{"model": ...}`` or with a
    ``module.`` DDP prefix) to `ZipformerForAudioClassification`'s keys; with ``prefix=""`` and no
    classifier, to `ZipformerModel`'s. Raises a ``KeyError`` naming every missing and unexpected key when the
    checkpoint does not have the layout ``config`` describes (shapes are checked when the model loads it).
    """
    if "model" in state_dict and isinstance(state_dict["model"], Mapping):
        state_dict = state_dict["model"]
    first_layer = [sum(config.num_encoder_layers[:s]) for s in range(config.num_stacks)]
    converted: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith("encoder_embed."):
            name = key.removeprefix("encoder_embed.")
            for old, new in _EMBED_CONVS.items():
                if name.startswith(old):
                    name = new + name.removeprefix(old)
            converted[f"{prefix}embed.{name}"] = tensor
        elif match := _LAYER.match(key):
            stack, layer, name = int(match[1]), int(match[2]), match[3]
            if stack >= config.num_stacks or layer >= config.num_encoder_layers[stack]:
                unexpected.append(key)
            elif name != _UNUSED_LAYER_PARAM:
                converted[f"{prefix}blocks.{first_layer[stack] + layer}.{name}"] = tensor
        elif match := _STACK.match(key):
            converted[f"{prefix}stacks.{match[1]}.{match[2]}"] = tensor
        elif key == "encoder.downsample_output.bias":
            converted[f"{prefix}downsample_output.bias"] = tensor
        elif key.startswith("classifier.1."):
            converted[f"classifier.{key.removeprefix('classifier.1.')}"] = tensor
        else:
            unexpected.append(key)
    with_classifier = any(k.startswith("classifier.") for k in converted)
    expected = set(_expected_keys(config, prefix, with_classifier))
    missing = sorted(expected - set(converted))
    unexpected += sorted(set(converted) - expected)
    if missing or unexpected:
        raise KeyError(
            "the state dict does not have the layout of icefall's Zipformer AudioTaggingModel for this "
            f"config; missing (our names): {missing or 'none'}; unexpected: {unexpected or 'none'}"
        )
    return converted


def _expected_keys(config, prefix: str, with_classifier: bool) -> list[str]:
    from hf_audiorep.modeling.modeling_zipformer import ZipformerModel

    with torch.device("meta"):
        names = [f"{prefix}{name}" for name in ZipformerModel(config).state_dict()]
    if with_classifier:
        names += ["classifier.weight", "classifier.bias"]
    return names


def load_icefall_zipformer(
    checkpoint: str | Path, args: Mapping[str, Any] | str | Path, **overrides: Any
) -> torch.nn.Module:
    """`ZipformerForAudioClassification` (or `ZipformerModel` when the checkpoint has no classifier) from an
    icefall tagging checkpoint saved as safetensors and its model arguments (a dict or a JSON file)."""
    from safetensors.torch import load_file

    from hf_audiorep.modeling.modeling_zipformer import ZipformerForAudioClassification, ZipformerModel

    if not isinstance(args, Mapping):
        args = json.loads(Path(args).read_text())
    config = config_from_icefall_args(args, **overrides)
    state_dict = load_file(str(checkpoint))
    has_classifier = any(k.removeprefix("module.").startswith("classifier.") for k in state_dict)
    model_class = ZipformerForAudioClassification if has_classifier else ZipformerModel
    prefix = "zipformer." if has_classifier else ""
    model = model_class(config)
    model.load_state_dict(
        convert_icefall_zipformer_state_dict(state_dict, config, prefix=prefix), strict=True
    )
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="icefall AudioTaggingModel state dict as .safetensors")
    parser.add_argument("args", help="JSON file of icefall's model arguments (encoder_dim, num_heads, ...)")
    parser.add_argument("output_dir")
    options = parser.parse_args(argv)
    load_icefall_zipformer(options.checkpoint, options.args).save_pretrained(options.output_dir)


if __name__ == "__main__":
    main()
