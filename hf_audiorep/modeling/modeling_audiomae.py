"""AudioMAE encoder, audio classifier and masked-autoencoder pre-training (Huang et al., "Masked
Autoencoders that Listen", 2022).

The encoder is timm's pre-LN ViT over 16 x 16 patches of a log-mel spectrogram, with fixed 2-D
sin-cos positions and a CLS token. Fine-tuning follows facebookresearch/AudioMAE ``models_vit``:
``global_pool`` (mean of the patch tokens, then ``fc_norm``, with no final ``norm``) and, in
training, 2-D patch-out of whole time columns and frequency rows.

Parameter names follow timm (``patch_embed.proj``, ``cls_token``, ``blocks.{i}.attn.qkv``,
``fc_norm``, ...) under the ``audiomae.`` prefix, so a timm/AudioMAE state dict converts by renaming
keys (``head.*`` -> ``classifier.*``, everything else -> ``audiomae.*``). ``pos_embed`` is a
non-persistent buffer: AudioMAE keeps it frozen (``requires_grad=False``) at its sin-cos value, so it
is recomputed rather than stored.

Pre-training (`AudioMAEForPreTraining`) is MAE's: the encoder sees a random 20 % of the patches, a light
transformer decoder fills in mask tokens and predicts the pixels of every 16 x 16 patch, and the loss is
the mean squared error on the masked patches against per-patch normalised targets. The encoder is the
same `AudioMAEModel` under the same ``audiomae.`` prefix, so a pre-training checkpoint loads straight
into `AudioMAEForAudioClassification` or `AutoModel`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import capture_outputs

from ._heads import CosineClassifier
from ._layers import (
    Attention,
    ConfigView,
    LayerDecayMixin,
    PatchEmbed,
    PreLNBlock,
    SpectrogramModelMixin,
    classification_output,
    classifier_head,
    drop_path_rates,
    frames_to_patch_mask,
    gather_tokens,
    init_cosine_classifier,
    init_patch_projection_,
    masked_mean,
    masking_from_noise,
    pad_to_patches,
    patch_out_mask_2d,
    pool_tokens,
    random_masking,
    sincos_pos_embed_like,
    token_attention_mask,
    visible_indices,
    without_stochastic_depth,
)
from .configuration_audiomae import AudioMAEConfig

__all__ = [
    "AudioMAEForAudioClassification",
    "AudioMAEForPreTraining",
    "AudioMAEForPreTrainingOutput",
    "AudioMAEModel",
    "AudioMAEPreTrainedModel",
]


class AudioMAEPreTrainedModel(SpectrogramModelMixin, LayerDecayMixin, PreTrainedModel):
    config: AudioMAEConfig
    base_model_prefix = "audiomae"
    # Layer decay (AudioMAE's lr_decay): patch embedding, CLS token and positions sit below block 0.
    embedding_param_prefixes = ("patch_embed.", "cls_token", "pos_embed")
    # A pre-training checkpoint carries its decoder; loading it as an encoder or a classifier drops it by
    # design, which is not worth an "UNEXPECTED" report on every load.
    _keys_to_ignore_on_load_unexpected = [r"^decoder\."]
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
        if isinstance(module, CosineClassifier):  # only its rows' directions matter: no near-zero start
            init_cosine_classifier(module)
        elif module is getattr(self, "classifier", None):
            # AudioMAE fine-tunes a pre-trained encoder with a 2e-5 head; from scratch that stalls (see the
            # config), hence the configurable std.
            init.trunc_normal_(module.weight, std=self.config.classifier_init_std)
            init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init_patch_projection_(module)  # the patch embedding is AudioMAE's only conv
        elif isinstance(module, AudioMAEModel):
            init.normal_(module.cls_token, std=self.config.initializer_range)
            init.copy_(module.pos_embed, module.sincos_pos_embed())
        elif isinstance(module, AudioMAEDecoder):
            init.normal_(module.mask_token, std=self.config.initializer_range)
            init.copy_(module.pos_embed, module.sincos_pos_embed())


class AudioMAEModel(AudioMAEPreTrainedModel):
    """The AudioMAE ViT encoder.

    ``forward(input_values, attention_mask=None, ids_keep=None, mask=None, output_hidden_states=None)``:

    - ``input_values`` ``(batch, frames, num_mel_bins)`` log-mel features with ``frames <=
      max_length``; frames are zero-padded to a multiple of ``patch_size`` and positions are
      taken for the actual grid.
    - ``attention_mask`` ``(batch, frames)``, 1 on real frames: patches made only of padding are
      excluded from attention and from mean pooling.
    - ``mask`` ``(batch, num_patches)`` bool, True on patches to drop (e.g. the patch-out mask of
      `patch_out_mask_2d`); every row must drop the same number. The others are encoded in patch order.
    - ``ids_keep`` ``(batch, num_kept)`` indices of the patches to encode (row-major ``(t, f)``), in
      the given order: MAE pre-training's shuffled selection from `random_masking`, which its decoder
      un-shuffles. At most one of ``mask`` and ``ids_keep``; the dropped patches leave after
      positions are added.

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
        # Filled now as well as in _init_weights: a model built without weight init and given a state dict
        # (which never holds this buffer) must not compute with all-zero positions.
        self.pos_embed.copy_(self.sincos_pos_embed())
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.blocks = nn.ModuleList([PreLNBlock(config, drop_path=rate) for rate in rates])
        # timm's layout: exactly one of `norm` (CLS pooling) and `fc_norm` (global pool) is a LayerNorm,
        # so every parameter is used and AudioMAE's fine-tuned checkpoints load without leftovers.
        eps = config.layer_norm_eps
        self.norm = nn.LayerNorm(config.hidden_size, eps=eps) if config.use_cls_pooling else nn.Identity()
        self.fc_norm = nn.Identity() if config.use_cls_pooling else nn.LayerNorm(config.hidden_size, eps=eps)
        self.post_init()

    def sincos_pos_embed(self) -> torch.Tensor:
        """The fixed positions for the ``max_length`` grid, CLS row (zeros) first: ``(1, 1 + N, hidden)``."""
        return sincos_pos_embed_like(self.pos_embed, self.config.grid_size, cls_token=True)

    def get_input_embeddings(self) -> PatchEmbed:
        return self.patch_embed

    def _pool(self, sequence_output: torch.Tensor, patch_mask: torch.Tensor | None) -> torch.Tensor:
        # `use_cls_pooling` is the saved name of CAT's pooling="cls"; `fc_norm` is the identity then.
        pooling = "cls" if self.config.use_cls_pooling else "mean"
        return self.fc_norm(pool_tokens(sequence_output, patch_mask, pooling))

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        ids_keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        ids_keep (`torch.LongTensor` of shape `(batch, num_kept)`, *optional*): patches to encode, in order.
        mask (`torch.BoolTensor` of shape `(batch, num_patches)`, *optional*): True on patches to drop; every
            row must drop the same number.
        """
        self._check_inputs(input_values, attention_mask)
        if mask is not None and ids_keep is not None:
            raise ValueError("pass the patches to drop as mask or the patches to keep as ids_keep, not both")
        patch_size = self.config.patch_size
        batch = input_values.shape[0]
        grid_t, grid_f = self.grid_shape(input_values.shape[-2])
        input_values = pad_to_patches(input_values, patch_size).to(self.patch_embed.proj.weight.dtype)

        patches = self.patch_embed(input_values)
        # Row-major (t, f) positions: the first grid_t * grid_f rows are those of a shorter grid.
        patches = patches + self.pos_embed[:, 1 : 1 + grid_t * grid_f].to(patches.dtype)
        patch_mask = None
        if attention_mask is not None:
            patch_mask = frames_to_patch_mask(attention_mask, patch_size, grid_f)
        if mask is not None:
            ids_keep = visible_indices(mask.to(patches.device), batch, grid_t * grid_f)
        if ids_keep is not None:
            if ids_keep.ndim != 2 or ids_keep.shape[0] != batch:
                raise ValueError(f"ids_keep must be (batch, num_kept), got shape {tuple(ids_keep.shape)}")
            ids_keep = ids_keep.to(patches.device)
            patches = gather_tokens(patches, ids_keep)
            if patch_mask is not None:
                patch_mask = gather_tokens(patch_mask, ids_keep)

        cls_token = (self.cls_token + self.pos_embed[:, :1]).to(patches.dtype)
        hidden_states = torch.cat([cls_token.expand(batch, -1, -1), patches], dim=1)
        hidden_states = self.pos_drop(hidden_states)

        attention_mask = token_attention_mask(self.config, hidden_states, patch_mask)
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
        self.classifier = classifier_head(config)
        self.post_init()

    def patch_out(
        self, input_values: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """A training batch's patch-out mask ``(batch, num_patches)``, True on the dropped patches (whole time
        columns and frequency rows), or None when patch-out is off."""
        config = self.config
        if not self.training or (config.mask_t_prob == 0 and config.mask_f_prob == 0):
            return None
        grid_t, grid_f = self.grid_shape(input_values.shape[-2])
        _, mask = patch_out_mask_2d(
            input_values.shape[0],
            grid_t,
            grid_f,
            config.mask_t_prob,
            config.mask_f_prob,
            generator=generator,
            device=input_values.device,
        )
        return mask

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        ids_keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> SequenceClassifierOutput:
        r"""
        labels (`torch.Tensor`, *optional*): ``(batch, num_labels)`` multi-hot floats for
            ``multi_label_classification``, ``(batch,)`` class indices for ``single_label_classification``.
        ids_keep (`torch.LongTensor`, *optional*): patches to encode, overriding the random patch-out.
        mask (`torch.BoolTensor`, *optional*): patches to drop, overriding the random patch-out (e.g. to share
            one mask between views); see `AudioMAEModel`.
        """
        if mask is None and ids_keep is None and isinstance(input_values, torch.Tensor):
            mask = self.patch_out(input_values)
        outputs: BaseModelOutputWithPooling = self.audiomae(
            input_values, attention_mask=attention_mask, ids_keep=ids_keep, mask=mask, **kwargs
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        return classification_output(self, logits, labels, outputs, **kwargs)


# --------------------------------------------------------------------------------------------
# Masked-autoencoder pre-training
# --------------------------------------------------------------------------------------------


@dataclass
class AudioMAEForPreTrainingOutput(ModelOutput):
    r"""
    Output of [`AudioMAEForPreTraining`].

    loss (`torch.FloatTensor` of shape `()`):
        Mean squared error between predicted and target pixels, averaged over the masked patches that are
        not padding (targets per-patch normalised when `config.norm_pix_loss`).
    logits (`torch.FloatTensor` of shape `(batch, num_patches, patch_size**2 * num_channels)`):
        The decoder's pixel predictions for every patch, in row-major `(t, f)` order (use
        [`AudioMAEForPreTraining.unpatchify`] to view them as a spectrogram).
    mask (`torch.BoolTensor` of shape `(batch, num_patches)`):
        True where a patch was hidden from the encoder. Boolean, unlike ViTMAE's 0/1 float mask, because it
        indexes patches (`logits[mask]`) wherever it is used; compare two of them with `torch.equal`, not by
        subtraction (transformers' output-equivalence checks subtract, so they skip this field).
    ids_restore (`torch.LongTensor` of shape `(batch, num_patches)`):
        The permutation that puts `[visible patches, mask tokens]` back in patch order.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The encoder's hidden states (embeddings + one per block) over the CLS token and the visible patches.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        The encoder's attention weights, when the attention backend returns them.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mask: torch.BoolTensor | None = None
    ids_restore: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class AudioMAEDecoder(nn.Module):
    """MAE's light decoder: embed the visible latents, insert mask tokens, add fixed sin-cos positions,
    run pre-LN blocks with GLOBAL attention over every patch, predict each patch's pixels.

    AudioMAE's released pre-training used a Swin-style decoder with local 4 x 4 windows
    (``decoder_mode=1``); this is MAE's default, global attention, instead. The decoder only shapes the
    pre-training signal: the encoder, and so every checkpoint that fine-tuning or conversion touches, is
    the same either way.
    """

    def __init__(self, config: AudioMAEConfig):
        super().__init__()
        self.config = config
        width = config.decoder_hidden_size
        grid_t, grid_f = config.grid_size
        self.embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("pos_embed", torch.zeros(1, 1 + grid_t * grid_f, width), persistent=False)
        self.pos_embed.copy_(self.sincos_pos_embed())  # as the encoder's: correct without weight init
        block_config = ConfigView(
            config,
            hidden_size=width,
            num_attention_heads=config.decoder_num_attention_heads,
        )
        self.blocks = nn.ModuleList(
            [PreLNBlock(block_config) for _ in range(config.decoder_num_hidden_layers)]
        )
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.pred = nn.Linear(width, config.patch_size**2 * config.num_channels)

    def sincos_pos_embed(self) -> torch.Tensor:
        """Fixed decoder positions for the ``max_length`` grid, CLS row first: ``(1, 1 + N, width)``."""
        return sincos_pos_embed_like(self.pos_embed, self.config.grid_size, cls_token=True)

    def forward(
        self, latent: torch.Tensor, ids_restore: torch.Tensor, patch_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``latent`` ``(batch, 1 + visible, hidden)`` (CLS first) -> pixels ``(batch, num_patches, p*p*C)``.

        ``patch_mask`` ``(batch, num_patches)``, 1 on real patches, keeps padding out of the attention, so
        a clip's reconstruction does not depend on how much padding its batch needed.
        """
        hidden_states = self.embed(latent)
        batch, num_visible, width = hidden_states.shape[0], hidden_states.shape[1] - 1, hidden_states.shape[2]
        num_patches = ids_restore.shape[1]
        mask_tokens = self.mask_token.to(hidden_states.dtype).expand(batch, num_patches - num_visible, width)
        patches = gather_tokens(torch.cat([hidden_states[:, 1:], mask_tokens], dim=1), ids_restore)
        hidden_states = torch.cat([hidden_states[:, :1], patches], dim=1)
        # Row-major (t, f) positions: a shorter clip uses a prefix of the grid, as in the encoder.
        hidden_states = hidden_states + self.pos_embed[:, : 1 + num_patches].to(hidden_states.dtype)

        attention_mask = token_attention_mask(self.config, hidden_states, patch_mask)
        for block in self.blocks:
            hidden_states = block(hidden_states, attention_mask)
        return self.pred(self.norm(hidden_states))[:, 1:]


class AudioMAEForPreTraining(AudioMAEPreTrainedModel):
    """AudioMAE's masked-autoencoder pre-training: encoder on the visible patches, decoder on all of them.

    ``forward(input_values, attention_mask=None, mask_ratio=None, generator=None, noise=None)``:

    1. ``mask_ratio`` (default ``config.mask_ratio`` = 0.8) of the patches of each clip are hidden, chosen
       at random per clip (`random_masking`; from ``generator`` if given, or from ``noise``, see below);
    2. the encoder (`AudioMAEModel`, the ``audiomae`` attribute) runs on CLS + the visible 20 %, and its
       output is layer-normalised by the encoder's final norm: ``norm`` with CLS pooling, ``fc_norm`` with
       AudioMAE's global pool (so the norm trained here is the one the classifier starts from, as in the
       timm port of AudioMAE's weights, and no encoder parameter is left without a gradient);
    3. `AudioMAEDecoder` predicts the 16 x 16 pixels of every patch (global attention; AudioMAE's Swin-style
       local decoder is not implemented);
    4. the loss is the per-patch mean squared error, averaged over the masked patches, against targets
       normalised per patch (``config.norm_pix_loss``). Patches made only of padding (``attention_mask``)
       are left out of attention and of the loss.

    Stochastic depth (``drop_path_rate``) is a fine-tuning setting: MAE pre-trains without it, so the
    encoder's blocks here have none and the config keeps the value for the classifier that loads this
    checkpoint.

    ``noise`` ``(batch, num_patches)``: uniform noise that decides the mask (the lowest values are kept),
    for reproducible masks independent of the batch composition (as ``ViTMAEForPreTraining``).
    """

    def __init__(self, config: AudioMAEConfig):
        super().__init__(config)
        self.audiomae = without_stochastic_depth(AudioMAEModel(config))
        self.decoder = AudioMAEDecoder(config)
        self.post_init()

    def get_layer_id(self, param_name: str) -> int:
        """As the encoder's; the decoder sits with the head, after the last block."""
        if param_name.startswith("decoder."):
            return self.config.num_hidden_layers + 1
        return super().get_layer_id(param_name)

    def patchify(self, input_values: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, bins)`` (or ``(batch, C, frames, bins)``) -> ``(batch, num_patches, p*p*C)``.

        Frames are zero-padded to a multiple of the patch size, as the encoder does. Each row holds one
        patch's pixels in ``(time, frequency, channel)`` order, MAE's ``patchify``.
        """
        p = self.config.patch_size
        if input_values.ndim == 3:
            input_values = input_values.unsqueeze(1)
        input_values = pad_to_patches(input_values, p)
        batch, channels, num_frames, num_bins = input_values.shape
        grid_t, grid_f = num_frames // p, num_bins // p
        patches = input_values.reshape(batch, channels, grid_t, p, grid_f, p).permute(0, 2, 4, 3, 5, 1)
        return patches.reshape(batch, grid_t * grid_f, p * p * channels)

    def unpatchify(self, patches: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        """Inverse of `patchify`: ``(batch, num_patches, p*p*C)`` -> ``(batch, frames, bins)`` (C = 1) or
        ``(batch, C, frames, bins)``, cropped to ``num_frames`` when given."""
        config = self.config
        p, channels = config.patch_size, config.num_channels
        grid_f = config.num_mel_bins // p
        batch, num_patches, _ = patches.shape
        grid_t = num_patches // grid_f
        pixels = patches.reshape(batch, grid_t, grid_f, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        pixels = pixels.reshape(batch, channels, grid_t * p, grid_f * p)
        if num_frames is not None:
            pixels = pixels[:, :, :num_frames]
        return pixels[:, 0] if channels == 1 else pixels

    def reconstruction_loss(
        self,
        input_values: torch.Tensor,
        pred: torch.Tensor,
        mask: torch.Tensor,
        patch_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MAE's loss: per-patch MSE against (normalised) pixels, mean over masked, non-padding patches."""
        # float32: the per-patch variance of bf16 log-mels is too coarse to normalise by.
        target = self.patchify(input_values).float()
        if self.config.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased, as MAE
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        weights = mask.float()
        if patch_mask is not None:
            weights = weights * patch_mask.float()
        # A batch with nothing masked (mask_ratio=0) gives a zero loss, not NaN.
        return masked_mean(per_patch, weights)

    @can_return_tuple
    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> AudioMAEForPreTrainingOutput:
        r"""
        mask_ratio (`float`, *optional*): fraction of patches to hide, in [0, 1); default `config.mask_ratio`.
        generator (`torch.Generator`, *optional*): draws the random masks (for reproducible evaluation).
        noise (`torch.FloatTensor` of shape `(batch, num_patches)`, *optional*): decides the masks instead
            of random draws: per clip the lowest-noise patches are visible.
        """
        config = self.config
        self._check_inputs(input_values, attention_mask)
        ratio = config.mask_ratio if mask_ratio is None else float(mask_ratio)
        batch = input_values.shape[0]
        grid_t, grid_f = self.grid_shape(input_values.shape[-2])
        num_patches = grid_t * grid_f
        if noise is not None:
            if tuple(noise.shape) != (batch, num_patches):
                raise ValueError(
                    f"noise must be (batch, num_patches) = {(batch, num_patches)}, got {tuple(noise.shape)}"
                )
            ids_keep, mask, ids_restore = masking_from_noise(noise.to(input_values.device), ratio)
        else:
            ids_keep, mask, ids_restore = random_masking(
                batch, num_patches, ratio, generator=generator, device=input_values.device
            )

        encoder_outputs: BaseModelOutputWithPooling = self.audiomae(
            input_values, attention_mask=attention_mask, ids_keep=ids_keep, **kwargs
        )
        # With CLS pooling `norm` has already been applied; with the global pool the encoder ends without
        # a norm and its `fc_norm` plays MAE's final encoder norm here.
        latent = self.audiomae.fc_norm(encoder_outputs.last_hidden_state)
        patch_mask = None
        if attention_mask is not None:
            patch_mask = frames_to_patch_mask(attention_mask, config.patch_size, grid_f)
        logits = self.decoder(latent, ids_restore, patch_mask)
        loss = self.reconstruction_loss(input_values, logits, mask, patch_mask)
        return AudioMAEForPreTrainingOutput(
            loss=loss,
            logits=logits,
            mask=mask,
            ids_restore=ids_restore,
            hidden_states=encoder_outputs.hidden_states,
            attentions=encoder_outputs.attentions,
        )
