"""Convert AudioMAE weights in timm's layout into `AudioMAEModel` / `AudioMAEForAudioClassification`.

The public AudioMAE ports (``vit_base_patch16_1024_128.audiomae_as2m`` and its AS-20K fine-tuned sibling)
are timm ``VisionTransformer`` state dicts: ``img_size=(1024, 128)``, ``patch_size=16``, ``in_chans=1``,
``global_pool="avg"`` (so ``fc_norm`` and no final ``norm``). timm sees a spectrogram as an image of
height 1024 (time) and width 128 (mel bins), ``(B, 1, 1024, 128)``; our models take ``(B, 1024, 128)``
and patch it in the same row-major (time, frequency) order, so the conversion is a key rename:

=========================================  ==============================================
timm                                       hf_audiorep
=========================================  ==============================================
``cls_token``, ``patch_embed.proj.*``       ``audiomae.cls_token``, ``audiomae.patch_embed.proj.*``
``blocks.{i}.*``                           ``audiomae.blocks.{i}.*`` (same sub-names)
``fc_norm.*`` / ``norm.*``                 ``audiomae.fc_norm.*`` / ``audiomae.norm.*``
``head.*``                                 ``classifier.*``
``pos_embed``                              dropped: ours is the fixed 2-D sin-cos buffer
=========================================  ==============================================

AudioMAE keeps ``pos_embed`` frozen at its sin-cos value, so it is checked against ours and dropped (a
checkpoint whose positions were trained would not be reproduced; that is warned about). Only
safetensors files are read: a pickled ``.bin`` / ``.pth`` can run code when loaded.

Command line::

    python -m hf_audiorep.conversion.audiomae_timm model.safetensors converted/ [--no-head]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..modeling import get_2d_sincos_pos_embed
from ..modeling.configuration_audiomae import AudioMAEConfig
from ..modeling.modeling_audiomae import AudioMAEForAudioClassification, AudioMAEModel

__all__ = [
    "convert_timm_audiomae_state_dict",
    "infer_timm_audiomae_config",
    "load_timm_audiomae",
    "read_safetensors_state_dict",
]

logger = logging.getLogger(__name__)

_BLOCK_KEY = re.compile(
    r"^blocks\.(\d+)\.(?:norm1|attn\.qkv|attn\.proj|norm2|mlp\.fc1|mlp\.fc2)\.(?:weight|bias)$"
)
_ENCODER_KEYS = {
    "cls_token",
    "patch_embed.proj.weight",
    "patch_embed.proj.bias",
    "norm.weight",
    "norm.bias",
    "fc_norm.weight",
    "fc_norm.bias",
}
_HEAD_KEYS = {"head.weight", "head.bias"}
# timm's ViTs use 64-channel heads (S, B, L); the head count is not visible in the weights.
_TIMM_HEAD_DIM = 64
_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl", ".pickle")
_AUDIOSET_CLASSES = 527


def state_dict_from(path_or_state_dict) -> Mapping[str, torch.Tensor]:
    """A converter's input as a state dict: given as one, or read with `read_safetensors_state_dict`."""
    if isinstance(path_or_state_dict, Mapping):
        return path_or_state_dict
    if isinstance(path_or_state_dict, str | os.PathLike):
        return read_safetensors_state_dict(path_or_state_dict)
    raise TypeError(
        f"expected a path to a .safetensors file or a state dict, got {type(path_or_state_dict).__name__}"
    )


def read_safetensors_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (or of ``model.safetensors`` in a directory), on the CPU.

    Pickled checkpoints are refused rather than unpickled: loading one runs whatever code it carries.
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / "model.safetensors"
        if not candidate.is_file():
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", *_PICKLE_SUFFIXES))
            raise FileNotFoundError(f"no model.safetensors in {path} (found: {found or 'nothing usable'})")
        path = candidate
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ValueError(
            f"{path} is a pickled PyTorch checkpoint, which this converter does not load (unpickling can run "
            "arbitrary code). Convert it to safetensors first, in an environment you trust, e.g. "
            "`safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')` "
            "(take the 'model' entry first if the file holds a training checkpoint)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return load_file(str(path), device="cpu")


def _strip_wrappers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # DDP checkpoints prefix every key with "module."
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key.removeprefix("module."): value for key, value in state_dict.items()}
    return dict(state_dict)


def _is_mae(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """A raw MAE pre-training checkpoint: the decoder is stored beside the encoder."""
    return any(key.startswith("decoder_") or key == "mask_token" for key in state_dict)


def infer_timm_audiomae_config(state_dict: Mapping[str, torch.Tensor], **overrides) -> AudioMAEConfig:
    """The `AudioMAEConfig` a timm AudioMAE state dict implies; keyword arguments override fields.

    Read from the shapes: width, depth, MLP ratio, qkv bias, patch size, input channels, the grid (from
    ``pos_embed``, assuming 128 mel bins unless ``num_mel_bins`` is given), pooling (``fc_norm`` -> global
    pool, ``norm`` -> CLS token) and the number of classes (``head``; 527 classes get AudioSet's names and
    ``multi_label_classification``). The number of heads is not in the weights: timm's 64-channel heads are
    assumed unless ``num_attention_heads`` is given.
    """
    state_dict = _strip_wrappers(state_dict)
    for key in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "pos_embed"):
        if key not in state_dict:
            raise ValueError(f"cannot infer the architecture: {key!r} is missing from the state dict")
    is_mae = _is_mae(state_dict)
    proj = state_dict["patch_embed.proj.weight"]
    if proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise ValueError(
            f"patch_embed.proj.weight must be a square conv kernel, got shape {tuple(proj.shape)}"
        )
    hidden, channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    depth = 1 + max(int(m.group(1)) for m in map(_BLOCK_KEY.match, state_dict) if m)
    fc1 = state_dict["blocks.0.mlp.fc1.weight"]
    if "num_attention_heads" not in overrides and hidden % _TIMM_HEAD_DIM:
        raise ValueError(
            f"cannot infer the number of attention heads of a {hidden}-wide model (timm ViTs use "
            f"{_TIMM_HEAD_DIM}-channel heads); pass num_attention_heads=..."
        )
    # The position table fixes the grid; AudioSet fbanks have 128 mel bins, so the rest is time.
    num_bins = overrides.get("num_mel_bins", 128)
    grid_f = num_bins // patch
    num_patches = state_dict["pos_embed"].shape[1] - 1
    if num_patches % grid_f:
        raise ValueError(
            f"pos_embed has {num_patches} patch positions, not a whole number of {grid_f}-patch rows of a "
            f"{num_bins}-bin spectrogram; pass a config with the right num_mel_bins and max_length"
        )
    fields = dict(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=max(1, hidden // _TIMM_HEAD_DIM),
        mlp_ratio=fc1.shape[0] / hidden,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        patch_size=patch,
        num_channels=channels,
        num_mel_bins=num_bins,
        max_length=num_patches // grid_f * patch,
        # A raw MAE encoder (decoder weights alongside) ends with `norm`, which AudioMAE's global pool
        # replaces: it becomes `fc_norm`, as in AudioMAEForPreTraining. Otherwise `norm` means timm's
        # CLS-token pooling.
        use_cls_pooling="fc_norm.weight" not in state_dict and not is_mae,
    )
    if "head.weight" in state_dict:
        num_labels = state_dict["head.weight"].shape[0]
        fields["num_labels"] = num_labels
        if num_labels == _AUDIOSET_CLASSES:
            from ..data.ontology import AUDIOSET_ONTOLOGY  # deferred: pulls in `datasets`

            fields.update(
                id2label=AUDIOSET_ONTOLOGY.id2label,
                label2id=AUDIOSET_ONTOLOGY.label2id,
                problem_type="multi_label_classification",
            )
    return AudioMAEConfig(**{**fields, **overrides})


def _check_config(config: AudioMAEConfig, state_dict: Mapping[str, torch.Tensor], has_head: bool) -> None:
    """Reject a given config that the weights do not fit, naming the field."""
    proj = state_dict["patch_embed.proj.weight"]
    expected = {
        "hidden_size": proj.shape[0],
        "num_channels": proj.shape[1],
        "patch_size": proj.shape[2],
        "num_hidden_layers": 1 + max(int(m.group(1)) for m in map(_BLOCK_KEY.match, state_dict) if m),
        "mlp_ratio": state_dict["blocks.0.mlp.fc1.weight"].shape[0] / proj.shape[0],
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
    }
    if has_head:
        expected["num_labels"] = state_dict["head.weight"].shape[0]
    for name, value in expected.items():
        if getattr(config, name) != value:
            raise ValueError(f"config.{name} is {getattr(config, name)!r} but the weights need {value!r}")
    if "fc_norm.weight" in state_dict and config.use_cls_pooling:
        raise ValueError(
            "config.use_cls_pooling is True but the checkpoint has fc_norm (global average pooling)"
        )
    if "norm.weight" in state_dict and not _is_mae(state_dict) and not config.use_cls_pooling:
        raise ValueError(
            "config.use_cls_pooling is False but the checkpoint ends with a final norm "
            "(timm's CLS-token pooling)"
        )
    grid_t, grid_f = config.grid_size
    if "pos_embed" in state_dict and state_dict["pos_embed"].shape[1] != 1 + grid_t * grid_f:
        raise ValueError(
            f"pos_embed has {state_dict['pos_embed'].shape[1] - 1} patch positions but the config's grid "
            f"(max_length={config.max_length}, num_mel_bins={config.num_mel_bins}) has {grid_t * grid_f}"
        )


def _check_positions(pos_embed: torch.Tensor, config: AudioMAEConfig) -> None:
    if pos_embed.is_meta:  # shapes-only conversion: there are no values to compare
        return
    grid_t, grid_f = config.grid_size
    fixed = get_2d_sincos_pos_embed(config.hidden_size, grid_t, grid_f, cls_token=True)
    difference = (pos_embed.reshape(fixed.shape).float() - fixed).abs().max().item()
    if difference > 1e-4:
        warnings.warn(
            f"the checkpoint's pos_embed differs from the fixed 2-D sin-cos positions by up to "
            f"{difference:.3g}; "
            "hf_audiorep's AudioMAE always uses the fixed positions (AudioMAE never trains them), so this "
            "model's outputs will differ from the checkpoint's",
            UserWarning,
            stacklevel=3,
        )


def convert_timm_audiomae_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: AudioMAEConfig | None = None
) -> tuple[AudioMAEConfig, dict[str, torch.Tensor]]:
    """timm AudioMAE state dict -> ``(config, state dict of AudioMAEForAudioClassification)``.

    Args:
        state_dict: a timm ``VisionTransformer`` state dict (``cls_token``, ``pos_embed``,
            ``patch_embed.proj.*``, ``blocks.{i}.*``, ``fc_norm.*`` or ``norm.*``, optional ``head.*``).
            Meta tensors are accepted for a shapes-only conversion (the position check is then skipped).
        config: the target architecture; inferred from the shapes when ``None`` (depth, width, MLP ratio,
            patch size, grid from ``pos_embed`` at 128 mel bins, pooling from ``fc_norm`` vs ``norm``,
            number of classes from ``head``; heads assume timm's 64-channel heads; see
            `infer_timm_audiomae_config`). A given config is checked against the weights.

    Returns:
        The config and the converted tensors, float32, keyed ``audiomae.*`` (and ``classifier.*`` when the
        checkpoint has a head). MAE decoder weights (``decoder_*``, ``mask_token``) are dropped.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    state_dict = _strip_wrappers(state_dict)
    for key in ("patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "cls_token"):
        if key not in state_dict:
            raise ValueError(f"not a timm AudioMAE/ViT state dict: {key!r} is missing")
    decoder_keys = sorted(k for k in state_dict if k.startswith("decoder_") or k == "mask_token")
    if "pos_embed" not in state_dict and config is None:
        raise ValueError("the state dict has no pos_embed, so its patch grid is unknown; pass a config")
    unknown = sorted(
        key
        for key in state_dict
        if key not in _ENCODER_KEYS | _HEAD_KEYS | {"pos_embed"}
        and not _BLOCK_KEY.match(key)
        and key not in decoder_keys
    )
    if unknown:
        raise ValueError(
            f"keys that hf_audiorep's AudioMAE has no place for (register tokens, layer scale, qk-norm, "
            f"attention pooling, ...): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
        )
    has_head = "head.weight" in state_dict
    if config is None:
        config = infer_timm_audiomae_config(state_dict)
    else:
        _check_config(config, state_dict, has_head)
    if "pos_embed" in state_dict:
        _check_positions(state_dict["pos_embed"], config)
    if decoder_keys:
        logger.info("dropping %d MAE decoder tensors (%s, ...)", len(decoder_keys), decoder_keys[0])

    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key == "pos_embed" or key in decoder_keys:
            continue
        if key in _HEAD_KEYS:
            new_key = "classifier." + key.removeprefix("head.")
        elif key.startswith("norm.") and not config.use_cls_pooling:
            new_key = "audiomae.fc_norm." + key.removeprefix("norm.")
        else:
            new_key = "audiomae." + key
        converted[new_key] = tensor.float() if tensor.is_floating_point() else tensor
    return config, converted


def load_timm_audiomae(
    path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor],
    with_head: bool | None = None,
    config: AudioMAEConfig | None = None,
) -> AudioMAEModel | AudioMAEForAudioClassification:
    """Build our model from a timm AudioMAE checkpoint (a ``.safetensors`` file, a directory holding
    ``model.safetensors``, or an in-memory state dict).

    ``with_head``: ``True`` returns `AudioMAEForAudioClassification` (the checkpoint must have a head),
    ``False`` returns the encoder `AudioMAEModel` (any head is dropped), ``None`` picks by whether the
    checkpoint has a head. The model is returned in eval mode; every weight must load (strict).
    """
    state_dict = state_dict_from(path_or_state_dict)
    config, converted = convert_timm_audiomae_state_dict(state_dict, config)
    has_head = "classifier.weight" in converted
    if with_head is None:
        with_head = has_head
    if with_head and not has_head:
        raise ValueError(
            "the checkpoint has no classification head (head.weight); load it with with_head=False, or "
            "save it and use AudioMAEForAudioClassification.from_pretrained(dir, num_labels=...) for a "
            "new head"
        )
    if with_head:
        model = AudioMAEForAudioClassification(config)
    else:
        model = AudioMAEModel(config)
        prefix = "audiomae."
        converted = {k.removeprefix(prefix): v for k, v in converted.items() if k.startswith(prefix)}
    model.load_state_dict(converted, strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hf_audiorep.conversion.audiomae_timm",
        description="Convert a timm AudioMAE checkpoint (safetensors) into an hf_audiorep model directory.",
    )
    parser.add_argument("input", help="model.safetensors of a timm AudioMAE (or a directory holding one)")
    parser.add_argument("output_dir", help="where the model and preprocessor_config.json are written")
    parser.add_argument("--no-head", action="store_true", help="save the encoder only (AudioMAEModel)")
    parser.add_argument(
        "--num-attention-heads",
        type=int,
        default=None,
        help="heads per block, when the width is not a multiple of 64",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from ..modeling.feature_extraction_fbank import AudioFbankFeatureExtractor

    try:
        state_dict = read_safetensors_state_dict(args.input)
        config = None
        if args.num_attention_heads is not None:
            config = infer_timm_audiomae_config(state_dict, num_attention_heads=args.num_attention_heads)
        model = load_timm_audiomae(state_dict, with_head=False if args.no_head else None, config=config)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))  # a usage message and exit status 2, not a traceback
    model.save_pretrained(args.output_dir)
    # AudioMAE's front end: Kaldi fbank, 128 bins, 1024 frames, AudioSet mean/std (the extractor's defaults).
    AudioFbankFeatureExtractor(target_length=model.config.max_length).save_pretrained(args.output_dir)
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "wrote %s (%s, %.2f M parameters) to %s",
        type(model).__name__,
        model.config.model_type,
        num_params / 1e6,
        args.output_dir,
    )


if __name__ == "__main__":
    main()
