"""LoRA fine-tuning of the library's classifiers through ``peft``.

:func:`apply_lora` wraps a ``*ForAudioClassification`` model in a ``peft.PeftModel``: low-rank adapters on
linear layers of the encoder's transformer blocks, and the classification head (``classifier``, and
``fc_norm`` where the model has one) trained in full through ``modules_to_save``, since a new label set
starts from a new head. Everything else is frozen. The wrapped model trains in
:class:`~hf_audiorep.training.TrainLoop` like any other; its ``save_pretrained`` writes peft's adapter
directory (``adapter_config.json`` naming the base model, ``adapter_model.safetensors``), which
``peft.PeftModel.from_pretrained(base_model, directory)`` loads. :func:`merged_model` folds the adapters
into the weights for export as a plain model.

Targets are module names inside one block (``"attn.qkv"``, ``"mlp.fc1"``); the defaults are the
architecture's ``lora_target_modules`` in :mod:`hf_audiorep.registry`. They are matched only under the
encoder's ``blocks.<i>`` (peft's ``layers_pattern``): CAT's convolutional stem has ``mlp.fc1`` layers too,
and LoRA must not reach them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from .registry import architecture_for

__all__ = ["HEAD_MODULES", "apply_lora", "default_lora_targets", "merged_model"]

#: modules trained in full beside the adapters, where the model has them with parameters
HEAD_MODULES = ("classifier", "fc_norm")
#: the encoder's list of transformer blocks in the library's ViTs (the name layer-wise decay reads, too)
_BLOCKS = "blocks"
_IN_BLOCK = re.compile(rf"(?:^|\.){_BLOCKS}\.(?P<index>\d+)\.(?P<inner>.+)$")


def default_lora_targets(model_or_config) -> tuple[str, ...]:
    """The LoRA targets the registry declares for the architecture of a model or config."""
    config = getattr(model_or_config, "config", model_or_config)
    architecture = architecture_for(getattr(config, "model_type", None))
    if not architecture.lora_target_modules:
        raise ValueError(
            f"lora_target_modules: the {architecture.name} architecture declares no default LoRA targets; "
            "name the layers to adapt"
        )
    return architecture.lora_target_modules


def apply_lora(
    model: PreTrainedModel,
    lora_r: int = 8,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
    lora_target_modules: Sequence[str] | None = None,
) -> PeftModel:
    """``model`` wrapped for LoRA fine-tuning: rank-``lora_r`` adapters scaled by ``lora_alpha / lora_r``
    on ``lora_target_modules`` (default: :func:`default_lora_targets`) in every block, the head trained in
    full, every other weight frozen. ``model`` is modified in place (peft injects the adapters into it)."""
    if isinstance(lora_r, bool) or not isinstance(lora_r, int) or lora_r <= 0:
        raise ValueError(f"lora_r must be a positive integer (the adapters' rank), got {lora_r!r}")
    if not lora_alpha > 0:
        raise ValueError(
            f"lora_alpha must be > 0 (the update is scaled by lora_alpha / lora_r), got {lora_alpha}"
        )
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout}")
    if lora_target_modules is None:
        targets = default_lora_targets(model)
    elif isinstance(lora_target_modules, str):
        raise TypeError(f"lora_target_modules must be a list of names, not a string: {lora_target_modules!r}")
    else:
        targets = tuple(lora_target_modules)
    heads = [name for name in HEAD_MODULES if _has_trained_module(model, name)]
    if "classifier" not in heads:
        raise ValueError(
            f"model: {type(model).__name__} has no classifier with weights; LoRA fine-tuning wraps a "
            "*ForAudioClassification model with num_labels > 0"
        )
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=list(targets),
        layers_pattern=_BLOCKS,
        layers_to_transform=_block_indices(model, targets),
        modules_to_save=heads,
    )
    return get_peft_model(model, config)


def merged_model(model: PeftModel) -> PreTrainedModel:
    """A plain copy of ``model`` with the adapters folded into its weights and the trained head in place
    (peft's ``merge_and_unload``): once saved, ``AutoModelForAudioClassification.from_pretrained`` loads it.
    ``model`` itself is left unmerged, so it can keep training or be evaluated."""
    return copy.deepcopy(model).merge_and_unload()


def _has_trained_module(model: nn.Module, name: str) -> bool:
    return any(
        (path == name or path.endswith(f".{name}")) and any(True for _ in module.parameters())
        for path, module in model.named_modules()
    )


def _block_indices(model: nn.Module, targets: Sequence[str]) -> list[int]:
    """The indices of the blocks, after checking that each target names a linear layer inside them."""
    if not targets:
        raise ValueError("lora_target_modules is empty: name at least one layer to adapt")
    linear = {}  # the name inside its block -> block indices, for every linear layer of the blocks
    for path, module in model.named_modules():
        match = _IN_BLOCK.search(path)
        if match and isinstance(module, nn.Linear):
            linear.setdefault(match["inner"], set()).add(int(match["index"]))
    for target in targets:
        if not any(inner == target or inner.endswith(f".{target}") for inner in linear):
            known = ", ".join(sorted(linear)) or "none"
            raise ValueError(
                f"lora_target_modules: {target!r} matches no linear layer in the {_BLOCKS} of "
                f"{type(model).__name__}; its layers there are: {known}"
            )
    return sorted(set().union(*linear.values()))
