"""Audio-text contrastive model on the Zipformer: the contrastive variant of UTS (arXiv 2603.25767), after
Auden's CLAP (``src/auden/models/clap``).

Two towers meet in one ``projection_dim``-wide space: the Zipformer encoder, whose output frames are each
projected (Linear -> ReLU -> Linear) and then averaged over the clip's valid frames, and a BERT text encoder
whose [CLS] state is projected the same way. Both embeddings are L2-normalised and compared by cosine
similarity divided by a temperature, fixed at ``contrastive_temperature`` (Auden) or learned as CLIP's log
logit scale (``learn_temperature``).

The projection is the same two-layer MLP as `hf_audiorep.objectives.contrastive.ProjectionHead` without its
optional norm; it is written out here because this file may import only torch and transformers (it ships as
Hub remote code), and its parameter names (``0``/``2`` of an ``nn.Sequential``) follow Auden's, so a
converted checkpoint maps one to one.

``forward(..., return_loss=True)`` gives the in-batch symmetric InfoNCE of this process's batch (CLIP's loss);
distributed training gathers the embeddings of every process first (`hf_audiorep.objectives.audio_text`).
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ._layers import geometry_mismatches, masked_mean
from .modeling_zipformer import ZipformerModel, ZipformerPreTrainedModel, _normalise_valid_frames

__all__ = [
    "MAX_LOGIT_SCALE",
    "ZipformerAudioTextOutput",
    "ZipformerForAudioTextContrastive",
    "init_text_encoder_from",
]

#: CLIP's ceiling on the learned logit scale (temperature >= 0.01), which keeps its training stable
MAX_LOGIT_SCALE = 100.0

# The BertConfig fields that fix the shapes of a text tower's weights.
_TEXT_GEOMETRY = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)


@dataclass
class ZipformerAudioTextOutput(ModelOutput):
    r"""
    Output of [`ZipformerForAudioTextContrastive`] (the fields of transformers' ``ClapOutput``, plus the
    logit scale the logits were computed with).

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned with `return_loss=True`):
        In-batch symmetric InfoNCE, ``(CE(audio -> text) + CE(text -> audio)) / 2``, mean over the pairs.
    logits_per_audio (`torch.FloatTensor` of shape `(audio_batch, text_batch)`):
        ``logit_scale * cos(audio_i, text_j)``; None when only one modality was given.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch, audio_batch)`):
        The transpose of ``logits_per_audio``.
    audio_embeds (`torch.FloatTensor` of shape `(audio_batch, projection_dim)`):
        Unit-norm audio embeddings.
    text_embeds (`torch.FloatTensor` of shape `(text_batch, projection_dim)`):
        Unit-norm text embeddings.
    logit_scale (`torch.FloatTensor` of shape `()`):
        ``1 / temperature``; the losses computed outside the model (gathered over processes) read it here, so
        a learned scale is used once per forward.
    """

    loss: torch.FloatTensor | None = None
    logits_per_audio: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    audio_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logit_scale: torch.FloatTensor | None = None


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """Auden's CLAP projection: Linear -> ReLU -> Linear, ``out_dim`` wide throughout."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(), nn.Linear(out_dim, out_dim))


def _in_batch_info_nce(logits_per_audio: torch.Tensor) -> torch.Tensor:
    """Mean of the two cross-entropies of a square in-batch logit matrix, pair ``i`` on the diagonal."""
    targets = torch.arange(logits_per_audio.shape[0], device=logits_per_audio.device)
    logits = logits_per_audio.float()
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ZipformerForAudioTextContrastive(ZipformerPreTrainedModel):
    """Zipformer audio tower + BERT text tower trained by symmetric InfoNCE (see the module docstring).

    The config's ``text_config`` (a `BertConfig`, e.g. from ``TEXT_ENCODER_PRESETS``) builds the text tower;
    ``projection_dim``, ``contrastive_temperature`` and ``learn_temperature`` the shared space. The encoder is
    ``self.zipformer``, as in every Zipformer head, so ``AutoModel`` on a saved model loads the encoder alone.
    """

    _no_split_modules = ["ZipformerEncoderLayer", "BertLayer"]

    def __init__(self, config):
        if config.text_config is None:
            raise ValueError(
                "ZipformerForAudioTextContrastive needs config.text_config (a BertConfig for the text tower, "
                "e.g. BertConfig(**TEXT_ENCODER_PRESETS['small'], vocab_size=len(tokenizer))); it is None"
            )
        super().__init__(config)
        self.zipformer = ZipformerModel(config)
        # No pooling layer: the embedding is the [CLS] state (Auden's CLAP), not BERT's NSP pooler.
        self.text_model = BertModel(config.text_config, add_pooling_layer=False)
        self.audio_projection = _projection(config.hidden_size, config.projection_dim)
        # As the captioner's: standardised frames, so that what tells clips apart reaches the projection.
        self.text_frames_norm = None
        if config.text_frames_norm == "batch":
            self.text_frames_norm = nn.BatchNorm1d(config.hidden_size, affine=False)
        self.text_projection = _projection(config.text_config.hidden_size, config.projection_dim)
        initial = math.log(1.0 / config.contrastive_temperature)
        if config.learn_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(initial))
        else:
            self.register_buffer("logit_scale", torch.tensor(initial))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """The projections follow the Zipformer's convention (PyTorch's default ranges, via the parent); the
        logit scale starts at ``log(1 / contrastive_temperature)``. The text tower is a `BertModel`, which
        transformers initialises with BERT's own ``_init_weights``."""
        super()._init_weights(module)
        if isinstance(module, ZipformerForAudioTextContrastive):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.contrastive_temperature))

    def get_logit_scale(self) -> torch.Tensor:
        """``1 / temperature``; a learned scale is clamped at CLIP's ceiling (`MAX_LOGIT_SCALE`)."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def get_audio_features(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-norm ``(batch, projection_dim)`` audio embeddings: every encoder frame projected, then the
        mean over the clip's valid frames (padding never enters), then L2-normalised."""
        outputs = self.zipformer(input_values, attention_mask=attention_mask)
        frames = outputs.last_hidden_state
        if self.text_frames_norm is not None:
            frames = _normalise_valid_frames(self.text_frames_norm, frames, outputs.attention_mask)
        frames = self.audio_projection(frames)
        return F.normalize(masked_mean(frames, outputs.attention_mask, dim=1), dim=-1)

    def get_text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-norm ``(batch, projection_dim)`` text embeddings: the projected [CLS] state (the first token;
        the tokenizer must add it, as BERT's does)."""
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.text_pooling == "mean":
            pooled = masked_mean(hidden, attention_mask, dim=1)  # no mask: every token
        else:
            pooled = hidden[:, 0]
        return F.normalize(self.text_projection(pooled), dim=-1)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        text_attention_mask: torch.Tensor | None = None,
        return_loss: bool = False,
        **kwargs: Any,
    ) -> ZipformerAudioTextOutput:
        r"""
        input_values (`torch.Tensor` of shape `(batch, frames, num_mel_bins)`): fbank (`ZipformerModel`'s).
        attention_mask (`torch.Tensor` of shape `(batch, frames)`): 1 on valid frames.
        input_ids (`torch.Tensor` of shape `(batch, tokens)`): the texts, tokenized with [CLS] first.
        text_attention_mask (`torch.Tensor` of shape `(batch, tokens)`): 1 on real tokens.
        return_loss (`bool`): add the in-batch symmetric InfoNCE (needs both modalities, paired by row).
        """
        if input_values is None and input_ids is None:
            raise ValueError("ZipformerForAudioTextContrastive needs input_values, input_ids or both")
        audio_embeds = text_embeds = logits_per_audio = logits_per_text = loss = None
        if input_values is not None:
            audio_embeds = self.get_audio_features(input_values, attention_mask)
        if input_ids is not None:
            text_embeds = self.get_text_features(input_ids, text_attention_mask)
        logit_scale = self.get_logit_scale()
        if audio_embeds is not None and text_embeds is not None:
            logits_per_audio = logit_scale * audio_embeds @ text_embeds.T
            logits_per_text = logits_per_audio.T
        if return_loss:
            if logits_per_audio is None:
                raise ValueError("return_loss=True needs both input_values and input_ids")
            if logits_per_audio.shape[0] != logits_per_audio.shape[1]:
                raise ValueError(
                    f"return_loss=True needs one text per clip; got {logits_per_audio.shape[0]} clips and "
                    f"{logits_per_audio.shape[1]} texts"
                )
            loss = _in_batch_info_nce(logits_per_audio)
        return ZipformerAudioTextOutput(
            loss=loss,
            logits_per_audio=logits_per_audio,
            logits_per_text=logits_per_text,
            audio_embeds=audio_embeds,
            text_embeds=text_embeds,
            logit_scale=logit_scale,
        )


def init_text_encoder_from(model: ZipformerForAudioTextContrastive, name_or_path: str) -> None:
    """Copy a pretrained `BertModel` (a folder or a Hub id such as ``bert-base-uncased``) into
    ``model.text_model``; its pooler, which the model does not use, is dropped.

    The checkpoint's geometry must be the text tower's (``text_config``), vocabulary included: the tokenizer
    that fed the checkpoint is the one to use with the model.
    """
    source = BertModel.from_pretrained(name_or_path, add_pooling_layer=False)
    target: BertConfig = model.config.text_config
    mismatched = geometry_mismatches(source.config, target, _TEXT_GEOMETRY)
    if mismatched:
        raise ValueError(
            f"the text encoder {name_or_path!r} does not fit the model's text_config: "
            + "; ".join(mismatched)
            + " (build the model with text_config=BertConfig.from_pretrained(...) of that checkpoint)"
        )
    model.text_model.load_state_dict(source.state_dict())
