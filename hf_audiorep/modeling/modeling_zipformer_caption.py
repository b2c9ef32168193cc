"""Zipformer encoder + BART decoder: UTS's caption model (arXiv 2603.25767; Auden
``src/auden/models/audio_caption``), trained autoregressively (AR) or with parallel decoding (PAR, CapPa).

The encoder's 25 frames/s output is projected to the decoder's width (Auden's bias-free ``enc_to_dec_proj``)
and read by a transformers `BartDecoder` through cross-attention, the encoder's padding frames masked. Auden's
decoder is an ``nn.TransformerDecoder`` trained from scratch with BART's tokenizer; a BART decoder has the
same job and can also start from bart-base's weights (`init_decoder_from_bart`).

AR rows see the tokens before them (BART's causal mask); PAR rows (``parallel``) read only ``<mask>`` tokens
and attend in both directions, so a whole caption comes out of one pass (`parallel_generate`).

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BartConfig, BartForCausalLM, BartModel, GenerationConfig, GenerationMixin
from transformers.modeling_outputs import ModelOutput
from transformers.models.bart.modeling_bart import BartDecoder, shift_tokens_right
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ._layers import geometry_mismatches
from .configuration_zipformer import DECODER_PRESETS, ZipformerConfig
from .modeling_zipformer import (
    ZipformerModel,
    ZipformerModelOutput,
    ZipformerPreTrainedModel,
    _normalise_valid_frames,
    add_mtc_head,
    mtc_logits,
)

__all__ = [
    "ZipformerCaptionOutput",
    "ZipformerForConditionalGeneration",
    "caption_decoder_config",
    "default_decoder_config",
    "init_decoder_from_bart",
]

#: BART's tokenizer (facebook/bart-base): the decoder's vocabulary when the config names none
BART_VOCAB = {
    "vocab_size": 50265,
    "bos_token_id": 0,
    "pad_token_id": 1,
    "eos_token_id": 2,
    "mask_token_id": 50264,
}

#: Auden's caption length limit, and the default length of a parallel decode
MAX_CAPTION_TOKENS = 128
MAX_PARALLEL_TOKENS = 64

#: the fields two decoders must share for one's weights to fit the other
GEOMETRY_FIELDS = (
    "vocab_size",
    "d_model",
    "decoder_layers",
    "decoder_attention_heads",
    "decoder_ffn_dim",
    "max_position_embeddings",
    "activation_function",
    "scale_embedding",
)


def caption_decoder_config(tokenizer, preset: str = "small", **overrides) -> BartConfig:
    """A decoder of ``preset``'s geometry (`DECODER_PRESETS`) that reads ``tokenizer``'s ids: its vocabulary
    size and its ``<s>`` (also the decoder's start), ``</s>``, ``<pad>`` and ``<mask>`` (PAR's input).
    ``overrides`` are further `BartConfig` fields (``max_position_embeddings``, ``tie_word_embeddings``)."""
    if preset not in DECODER_PRESETS:
        raise ValueError(f"unknown decoder preset {preset!r}; available: {sorted(DECODER_PRESETS)}")
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "mask_token_id": tokenizer.mask_token_id,
        "decoder_start_token_id": tokenizer.bos_token_id,
        "forced_eos_token_id": tokenizer.eos_token_id,
    }
    return BartConfig(**{**DECODER_PRESETS[preset], **ids, **overrides})


def default_decoder_config() -> BartConfig:
    """BART-base's decoder with BART's vocabulary and ids: what a config without ``decoder_config`` gets."""
    return BartConfig(**DECODER_PRESETS["bart-base"], **BART_VOCAB, decoder_start_token_id=0)


@dataclass
class ZipformerCaptionOutput(ModelOutput):
    r"""
    Output of [`ZipformerForConditionalGeneration`] (``Seq2SeqLMOutput``'s fields, plus the MTC head and the
    encoder's frame mask).

    loss (`torch.FloatTensor`, *optional*): mean cross-entropy of ``logits`` on the ``labels`` that are not
        -100 (no label smoothing: the captioning objective adds it).
    logits (`torch.FloatTensor` of shape `(batch, tokens, vocab_size)`): next-token scores (AR rows) or
        token scores at each ``<mask>`` (PAR rows).
    tag_logits (`torch.FloatTensor` of shape `(batch, num_labels)`, *optional*): the MTC head's clip logits,
        with ``config.tagging_head``.
    encoder_attention_mask (`torch.LongTensor` of shape `(batch, frames)`): 1 on the encoder's valid frames,
        the ones cross-attention reads.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    tag_logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attention_mask: torch.LongTensor | None = None


def _self_attention_mask(
    parallel: torch.Tensor,
    key_mask: torch.Tensor,
    query_length: int,
    implementation: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The decoder's 4-D self-attention mask ``(batch, 1, queries, keys)``: query ``i`` sees key ``j`` when
    the key is not padding and, on AR rows, ``j`` is not after it (queries are the last ``query_length`` of
    the keys, as with a cache). SDPA reads booleans (True: attend), as transformers' own ``sdpa_mask``
    builds them; eager attention adds the mask to its scores, so there it is 0 / the dtype's minimum."""
    if implementation not in ("eager", "sdpa"):
        raise ValueError(
            f"parallel decoding builds its own attention mask, which {implementation!r} attention cannot "
            "take; load the model with attn_implementation='sdpa' or 'eager'"
        )
    key_length = key_mask.shape[-1]
    device = key_mask.device
    queries = torch.arange(key_length - query_length, key_length, device=device)
    causal = torch.arange(key_length, device=device)[None, :] <= queries[:, None]
    allowed = causal[None] | parallel.to(device).bool()[:, None, None]
    allowed = allowed & key_mask.bool()[:, None, :]
    allowed = allowed[:, None]
    if implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


class ZipformerForConditionalGeneration(ZipformerPreTrainedModel, GenerationMixin):
    """The Zipformer encoder, Auden's encoder-to-decoder projection, a BART decoder with its LM head and,
    with ``config.tagging_head``, the tagger's MTC head (UTS multi-task pre-training).

    ``forward(input_values, attention_mask, decoder_input_ids, decoder_attention_mask, parallel, labels,
    encoder_outputs, past_key_values, use_cache)``: ``parallel`` ``(batch,)`` bool marks the PAR rows
    (bidirectional self-attention, padding masked); the rest, and every row when it is None, decode causally
    exactly as BART does. ``labels`` (-100 ignored) give the plain cross-entropy ``loss``; without
    ``decoder_input_ids`` they are shifted right behind ``decoder_start_token_id``, as in BART.

    Without ``config.decoder_config`` the decoder is bart-base's with BART's vocabulary (50,265 tokens).
    """

    def __init__(self, config: ZipformerConfig):
        if config.decoder_config is None:
            config.decoder_config = default_decoder_config()
        # The saved config says what generate() and the Auto classes need: an encoder-decoder.
        config.is_encoder_decoder = True
        super().__init__(config)
        decoder_config = config.decoder_config
        self.zipformer = ZipformerModel(config)
        self.enc_to_dec_proj = nn.Linear(config.hidden_size, decoder_config.d_model, bias=False)
        # An untrained encoder's frames share one large direction (nearly the same for every clip):
        # standardised, what tells clips apart is what the decoder's cross-attention reads.
        self.text_frames_norm = None
        if config.text_frames_norm == "batch":
            self.text_frames_norm = nn.BatchNorm1d(config.hidden_size, affine=False)
        # BART's decoder with its LM head, tied to the token embedding when decoder_config.tie_word_embeddings
        # (BART's default; Auden unties them): the tie follows the decoder config that states it.
        self.caption_decoder = BartForCausalLM(decoder_config)
        if config.tagging_head:
            add_mtc_head(self, config)
        self.post_init()
        self.generation_config = self.caption_generation_config()

    def caption_generation_config(self) -> GenerationConfig:
        """How `generate` decodes a caption: from ``<s>`` to ``</s>``, the decoder's ids, at most
        `MAX_CAPTION_TOKENS` (what a checkpoint without ``generation_config.json`` needs set again)."""
        # Auden: the decoder reads [BOS] + tokens and predicts tokens + [EOS].
        decoder_config = self.config.decoder_config
        return GenerationConfig(
            decoder_start_token_id=decoder_config.bos_token_id,
            bos_token_id=decoder_config.bos_token_id,
            eos_token_id=decoder_config.eos_token_id,
            pad_token_id=decoder_config.pad_token_id,
            # max_new_tokens, not max_length: a caller's own max_new_tokens then replaces it without
            # transformers' warning that both were set. The start token takes one of the decoder's positions.
            max_new_tokens=min(MAX_CAPTION_TOKENS, decoder_config.max_position_embeddings) - 1,
        )

    def get_encoder(self, modality: str | None = None) -> ZipformerModel:
        return self.zipformer

    def get_decoder(self) -> BartDecoder:
        return self.caption_decoder.model.decoder

    def get_input_embeddings(self) -> nn.Embedding:
        return self.caption_decoder.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Linear:
        return self.caption_decoder.lm_head

    @property
    def mask_token_id(self) -> int:
        mask = getattr(self.config.decoder_config, "mask_token_id", None)
        if mask is None:
            raise ValueError(
                "decoder_config has no mask_token_id: parallel decoding reads <mask> tokens; set it to the "
                "tokenizer's mask_token_id"
            )
        return mask

    @can_return_tuple  # return_dict=False: a tuple, as every transformers model gives
    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        parallel: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        encoder_outputs: ZipformerModelOutput | None = None,
        past_key_values=None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ZipformerCaptionOutput:
        decoder_config = self.config.decoder_config
        if encoder_outputs is None:
            if input_values is None:
                raise ValueError("give input_values (fbank features) or encoder_outputs")
            encoder_outputs = self.zipformer(
                input_values, attention_mask=attention_mask, output_hidden_states=output_hidden_states
            )
        elif not isinstance(encoder_outputs, ZipformerModelOutput):
            # A tuple would lose the frame mask that keeps cross-attention off the padding.
            raise TypeError(
                "encoder_outputs must be the encoder's ZipformerModelOutput (its attention_mask masks the "
                f"padding frames), got {type(encoder_outputs).__name__}"
            )
        frames = encoder_outputs.last_hidden_state
        frame_mask = encoder_outputs.attention_mask
        if labels is not None:
            use_cache = False  # a training pass decodes every position at once, as BART's does
        if decoder_input_ids is None and labels is not None:
            decoder_input_ids = shift_tokens_right(
                labels, decoder_config.pad_token_id, decoder_config.bos_token_id
            )
        if decoder_input_ids is None:
            raise ValueError("give decoder_input_ids or labels")

        self_attention_mask = decoder_attention_mask
        if parallel is not None:
            past = past_key_values.get_seq_length() if past_key_values is not None else 0
            key_mask = decoder_attention_mask
            if key_mask is None:
                key_mask = torch.ones(
                    decoder_input_ids.shape[0], past + decoder_input_ids.shape[1], device=frames.device
                )
            self_attention_mask = _self_attention_mask(
                parallel,
                key_mask,
                decoder_input_ids.shape[1],
                self.caption_decoder.config._attn_implementation,
                self.get_input_embeddings().weight.dtype,
            )
        decoded = self.get_decoder()(
            input_ids=decoder_input_ids,
            attention_mask=self_attention_mask,
            encoder_hidden_states=self.enc_to_dec_proj(self._text_frames(frames, frame_mask)),
            encoder_attention_mask=frame_mask,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            **kwargs,
        )
        logits = self.caption_decoder.lm_head(decoded.last_hidden_state)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits.float().flatten(0, 1), labels.to(logits.device).flatten(), ignore_index=-100
            )
        tag_logits = mtc_logits(self, frames, frame_mask) if self.config.tagging_head else None
        return ZipformerCaptionOutput(
            loss=loss,
            logits=logits,
            tag_logits=tag_logits,
            past_key_values=decoded.past_key_values,
            decoder_hidden_states=decoded.hidden_states,
            decoder_attentions=decoded.attentions,
            cross_attentions=decoded.cross_attentions,
            encoder_last_hidden_state=frames,
            encoder_hidden_states=encoder_outputs.hidden_states,
            encoder_attention_mask=frame_mask,
        )

    def _text_frames(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.text_frames_norm is None:
            return frames
        return _normalise_valid_frames(self.text_frames_norm, frames, mask)

    @torch.no_grad()
    def parallel_generate(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int | None = None,
    ) -> torch.LongTensor:
        """PAR decoding (CapPa): ``max_new_tokens`` ``<mask>`` tokens (default: the decoder's positions, at
        most 64) decoded in one bidirectional pass, the most likely token at each; everything after a row's
        first ``</s>`` becomes padding. Returns ``(batch, max_new_tokens)`` token ids."""
        decoder_config = self.config.decoder_config
        if max_new_tokens is None:
            max_new_tokens = min(MAX_PARALLEL_TOKENS, decoder_config.max_position_embeddings)
        if not 0 < max_new_tokens <= decoder_config.max_position_embeddings:
            raise ValueError(
                f"max_new_tokens must be in [1, {decoder_config.max_position_embeddings}] (the decoder's "
                f"positions), got {max_new_tokens}"
            )
        batch = input_values.shape[0]
        device = input_values.device
        masks = torch.full((batch, max_new_tokens), self.mask_token_id, dtype=torch.long, device=device)
        parallel = torch.ones(batch, dtype=torch.bool, device=device)
        logits = self(
            input_values, attention_mask=attention_mask, decoder_input_ids=masks, parallel=parallel
        ).logits
        tokens = logits.argmax(dim=-1)
        # Positions after the first </s>: a running count of </s> seen before them is positive.
        is_eos = (tokens == decoder_config.eos_token_id).long()
        after_eos = (is_eos.cumsum(dim=-1) - is_eos) > 0
        return tokens.masked_fill(after_eos, decoder_config.pad_token_id)


@torch.no_grad()
def init_decoder_from_bart(model: ZipformerForConditionalGeneration, name_or_path: str) -> None:
    """Copy a BART checkpoint's decoder (a `BartModel` or `BartForConditionalGeneration`: its layers,
    positions, embedding norm and shared token embedding) into ``model``'s decoder; the LM head gets the
    shared embedding too, as in BART. The decoder geometry (`GEOMETRY_FIELDS`) must match, since a
    mismatched copy would be silently wrong; BART's ``final_logits_bias`` (zero in bart-base) is not kept."""
    bart = BartModel.from_pretrained(name_or_path)
    ours = model.config.decoder_config
    mismatched = geometry_mismatches(bart.config, ours, GEOMETRY_FIELDS)
    if mismatched:
        raise ValueError(
            f"{name_or_path}'s decoder does not fit the model's decoder_config: " + "; ".join(mismatched)
        )
    state = bart.decoder.state_dict()
    state["embed_tokens.weight"] = bart.shared.weight
    decoder = model.get_decoder()
    missing, unexpected = decoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{name_or_path}'s decoder weights do not match: missing {missing}, unexpected {unexpected}"
        )
    lm_head = model.get_output_embeddings()
    if lm_head.weight is not decoder.embed_tokens.weight:
        lm_head.weight.copy_(bart.shared.weight)
