"""AudioMAE encoder and audio classifier (Huang et al., "Masked Autoencoders that Listen", 2022).

The encoder is timm's pre-LN ViT over 16 x 16 patches of a log-mel spectrogram, with fixed 2-D
sin-cos positions and a CLS token. Fine-tuning follows facebookresearch/AudioMAE ``models_vit``:
``global_pool`` (mean of the patch tokens, then ``fc_norm``, with no final ``norm``) and, in
training, 2-D patch-out of whole time columns and frequency rows.

Parameter names follow timm (``patch_embed.proj``, ``cls_token``, ``blocks.{i}.attn.qkv``,
``fc_norm``, ...) under the ``audiomae.`` prefix, so a timm/AudioMAE state dict converts by renaming
keys (``head.*`` -> ``classifier.*``, everything else -> ``audiomae.*``). ``pos_embed`` is a
non-persistent buffer: AudioMAE keeps it frozen (``requires_grad=False``) at its sin-cos value, so it
is recomputed rather than stored.
"""

import re

import torch
from torch import nn
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ._layers import (
    Attention,
    PatchEmbed,
    PreLNBlock,
    frames_to_patch_mask,
    get_2d_sincos_pos_embed,
    patch_out_mask_2d,
)
from .configuration_audiomae import AudioMAEConfig

__all__ = ["AudioMAEForAudioClassification", "AudioMAEModel", "AudioMAEPreTrainedModel"]

_BLOCK_PARAM = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


class AudioMAEPreTrainedModel(PreTrainedModel):
    config: AudioMAEConfig
    base_model_prefix = "audiomae"
    main_input_name = "input_values"
    input_modalities = ("audio",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["PreLNBlock"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {"hidden_states": PreLNBlock, "attentions": Attention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """MAE initialisation, plus AudioMAE's near-zero head.

        Every call goes through the guarded ``transformers.initialization`` functions, which leave
        loaded tensors alone; the sin-cos ``pos_embed`` buffer is recomputed on every call because
        ``from_pretrained`` re-creates non-persistent buffers uninitialised.
        """
        super()._init_weights(module)  # LayerNorm -> ones / zeros
        if module is getattr(self, "classifier", None):
            # AudioMAE re-initialises the head with a tiny std so fine-tuning starts from ~0 logits.
            init.trunc_normal_(module.weight, std=2e-5)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            # MAE initialises the patch projection as the Linear it is: xavier over (out, in * k * k).
            # The bound is computed here because a reshaped view would lose the "already loaded" flag.
            fan_out, fan_in = module.weight.shape[0], module.weight[0].numel()
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, AudioMAEModel):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            init.copy_(module.pos_embed, module.sincos_pos_embed())

    def get_layer_id(self, param_name: str) -> int:
        """Depth of a parameter for layer-wise learning-rate decay (AudioMAE ``lr_decay``).

        0 for the patch embedding, CLS token and positions; ``i + 1`` for block ``i``;
        ``num_hidden_layers + 1`` for the final norms and the head. Names may carry the
        ``audiomae.`` prefix or not.
        """
        name = param_name.removeprefix(f"{self.base_model_prefix}.")
        if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
            return 0
        match = _BLOCK_PARAM.search(name)
        if match:
            return int(match.group(1)) + 1
        return self.config.num_hidden_layers + 1

    def layer_ids(self) -> dict[str, int]:
        """``{parameter name: layer id}`` for every parameter, see `get_layer_id`."""
        return {name: self.get_layer_id(name) for name, _ in self.named_parameters()}

    @property
    def num_layer_ids(self) -> int:
        """Number of distinct layer ids (``num_hidden_layers + 2``)."""
        return self.config.num_hidden_layers + 2


class AudioMAEModel(AudioMAEPreTrainedModel):
    """The AudioMAE ViT encoder.

    ``forward(input_values, attention_mask=None, ids_keep=None, output_hidden_states=None)``:

    - ``input_values`` ``(batch, frames, num_mel_bins)`` log-mel features with ``frames <=
      max_length``; frames are zero-padded to a multiple of ``patch_size`` and positions are
      taken for the actual grid.
    - ``attention_mask`` ``(batch, frames)``, 1 on real frames: patches made only of padding are
      excluded from attention and from mean pooling.
    - ``ids_keep`` ``(batch, num_kept)`` indices of the patches to encode (row-major ``(t, f)``),
      e.g. from `patch_out_mask_2d` or `random_masking`; the others are dropped after positions
      are added.

    Returns `BaseModelOutputWithPooling`: ``last_hidden_state`` ``(batch, 1 + patches, hidden)``
    with the CLS token first (normalised by ``norm`` with CLS pooling; with AudioMAE's global pool
    there is no final norm and it is the last block's output), ``pooler_output`` ``(batch,
    hidden)`` and ``hidden_states`` (embeddings + one per block) on request.
    """

    def __init__(self, config: AudioMAEConfig):
        super().__init__(config)
        self.config = config
        grid_t, grid_f = config.grid_size
        self.patch_embed = PatchEmbed(config.patch_size, config.hidden_size, config.num_channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        num_positions = 1 + grid_t * grid_f
        self.register_buffer("pos_embed", torch.zeros(1, num_positions, config.hidden_size), persistent=False)
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        # Stochastic depth grows linearly with depth, as in timm (plain Python: no tensor on the meta device).
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([PreLNBlock(config, drop_path=rate) for rate in rates])
        # timm's layout: exactly one of `norm` (CLS pooling) and `fc_norm` (global pool) is a LayerNorm,
        # so every parameter is used and AudioMAE's fine-tuned checkpoints load without leftovers.
        eps = config.layer_norm_eps
        self.norm = nn.LayerNorm(config.hidden_size, eps=eps) if config.use_cls_pooling else nn.Identity()
        self.fc_norm = nn.Identity() if config.use_cls_pooling else nn.LayerNorm(config.hidden_size, eps=eps)
        self.post_init()

    def sincos_pos_embed(self) -> torch.Tensor:
        """The fixed positions for the ``max_length`` grid, CLS row (zeros) first: ``(1, 1 + N, hidden)``."""
        grid_t, grid_f = self.config.grid_size
        embedding = get_2d_sincos_pos_embed(self.config.hidden_size, grid_t, grid_f, cls_token=True)
        return embedding.unsqueeze(0).to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)

    def get_input_embeddings(self) -> PatchEmbed:
        return self.patch_embed

    def _check_inputs(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        config = self.config
        if not isinstance(input_values, torch.Tensor):
            raise TypeError(f"input_values must be a torch.Tensor, got {type(input_values).__name__}")
        single_channel = config.num_channels == 1
        expected = "(batch, frames, num_mel_bins)" if single_channel else "(batch, channels, frames, bins)"
        if input_values.ndim != (3 if single_channel else 4):
            raise ValueError(f"input_values must be {expected}, got shape {tuple(input_values.shape)}")
        num_frames, num_bins = input_values.shape[-2:]
        if num_bins != config.num_mel_bins:
            raise ValueError(
                f"input_values has {num_bins} mel bins but config.num_mel_bins is {config.num_mel_bins}"
            )
        if num_frames > config.max_length:
            raise ValueError(
                f"input_values has {num_frames} frames, more than config.max_length={config.max_length}; "
                "crop the clip or build the model with a larger max_length"
            )
        if attention_mask is not None and tuple(attention_mask.shape) != (input_values.shape[0], num_frames):
            raise ValueError(
                f"attention_mask must be (batch, frames) = {(input_values.shape[0], num_frames)}, "
                f"got {tuple(attention_mask.shape)}"
            )

    def _pool(self, sequence_output: torch.Tensor, patch_mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.use_cls_pooling:
            return sequence_output[:, 0]
        patches = sequence_output[:, 1:]
        if patch_mask is None:
            return self.fc_norm(patches.mean(dim=1))
        weights = patch_mask.to(patches.dtype).unsqueeze(-1)
        # A clip with no real patch left (all padding, or all dropped by patch-out) pools to zeros.
        pooled = (patches * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return self.fc_norm(pooled)

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        ids_keep: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        self._check_inputs(input_values, attention_mask)
        patch_size = self.config.patch_size
        num_frames = input_values.shape[-2]
        pad = -num_frames % patch_size
        if pad:
            # Zero-pad the time axis only; the partial last patch is kept (it has real frames).
            input_values = nn.functional.pad(input_values, (0, 0, 0, pad))
        input_values = input_values.to(self.patch_embed.proj.weight.dtype)
        grid_t, grid_f = self.patch_embed.grid_shape(num_frames + pad, self.config.num_mel_bins)

        patches = self.patch_embed(input_values)
        # Row-major (t, f) positions: the first grid_t * grid_f rows are those of a shorter grid.
        patches = patches + self.pos_embed[:, 1 : 1 + grid_t * grid_f].to(patches.dtype)
        patch_mask = None
        if attention_mask is not None:
            patch_mask = frames_to_patch_mask(attention_mask, patch_size, grid_f)
        if ids_keep is not None:
            if ids_keep.ndim != 2 or ids_keep.shape[0] != patches.shape[0]:
                raise ValueError(f"ids_keep must be (batch, num_kept), got shape {tuple(ids_keep.shape)}")
            ids_keep = ids_keep.to(patches.device)
            patches = torch.gather(patches, 1, ids_keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
            if patch_mask is not None:
                patch_mask = torch.gather(patch_mask, 1, ids_keep)

        cls_token = (self.cls_token + self.pos_embed[:, :1]).to(patches.dtype)
        hidden_states = torch.cat([cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        hidden_states = self.pos_drop(hidden_states)

        token_mask = None
        if patch_mask is not None:
            token_mask = torch.cat([patch_mask.new_ones(patch_mask.shape[0], 1), patch_mask], dim=1)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden_states, attention_mask=token_mask
        )
        for block in self.blocks:
            hidden_states = block(hidden_states, attention_mask, **kwargs)

        sequence_output = self.norm(hidden_states)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=self._pool(sequence_output, patch_mask)
        )


class AudioMAEForAudioClassification(AudioMAEPreTrainedModel):
    """AudioMAE encoder + dropout + linear head, for tagging (AudioSet) or classification.

    In training mode each clip drops ``mask_t_prob`` of its time-patch columns and ``mask_f_prob``
    of its frequency-patch rows before the encoder (AudioMAE's 2-D patch-out); in eval mode every
    patch is used. The loss follows ``config.problem_type`` (``multi_label_classification`` gives
    BCE-with-logits on multi-hot float labels).
    """

    def __init__(self, config: AudioMAEConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.audiomae = AudioMAEModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        self.post_init()

    def patch_out(
        self, input_values: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Kept-patch indices for one training batch, or None when patch-out is off."""
        config = self.config
        if not self.training or (config.mask_t_prob == 0 and config.mask_f_prob == 0):
            return None
        num_frames = input_values.shape[-2]
        grid_t = -(-num_frames // config.patch_size)
        grid_f = config.num_mel_bins // config.patch_size
        ids_keep, _ = patch_out_mask_2d(
            input_values.shape[0], grid_t, grid_f, config.mask_t_prob, config.mask_f_prob,
            generator=generator, device=input_values.device,
        )
        return ids_keep

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ids_keep: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels (`torch.Tensor`, *optional*): ``(batch, num_labels)`` multi-hot floats for
            ``multi_label_classification``, ``(batch,)`` class indices for ``single_label_classification``.
        ids_keep (`torch.LongTensor`, *optional*): patches to encode, overriding the random patch-out
            (e.g. to share one mask between views); see `AudioMAEModel`.
        """
        if ids_keep is None and isinstance(input_values, torch.Tensor):
            ids_keep = self.patch_out(input_values)
        outputs: BaseModelOutputWithPooling = self.audiomae(
            input_values, attention_mask=attention_mask, ids_keep=ids_keep, **kwargs
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))

        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
