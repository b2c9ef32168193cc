"""The caption model's own computations against values written out by hand: the decoder's self-attention
mask with a cache (AR rows causal, PAR rows bidirectional, padding keys masked), a cached AR / PAR step
against the uncached forward, the refusals' messages and the decoder presets' ids."""

import pytest
import torch
from transformers import DynamicCache, EncoderDecoderCache

from hf_audiorep.modeling.configuration_zipformer import DECODER_PRESETS, ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer_caption import (
    MAX_CAPTION_TOKENS,
    ZipformerForConditionalGeneration,
    _self_attention_mask,
    caption_decoder_config,
)
from tests.models.zipformer.test_caption_model import build, features, tokenizer  # noqa: F401 (fixture)

MIN32 = torch.finfo(torch.float32).min


def _by_hand(parallel, key_mask, query_length):
    """allowed[b, 0, i, j]: query i (the key position key_length - query_length + i) reads key j."""
    batch, key_length = key_mask.shape
    allowed = torch.zeros(batch, 1, query_length, key_length, dtype=torch.bool)
    for b in range(batch):
        for i in range(query_length):
            position = key_length - query_length + i
            for j in range(key_length):
                allowed[b, 0, i, j] = bool(key_mask[b, j]) and (bool(parallel[b]) or j <= position)
    return allowed


@pytest.mark.parametrize("query_length", [1, 2, 5])
def test_self_attention_mask_reads_the_last_queries_of_the_keys(query_length):
    # Row 0 AR, row 1 PAR, row 2 AR with a padded key in the middle; 5 keys, the last query_length queried
    # (a cache holds the others).
    parallel = torch.tensor([False, True, False])
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 0, 1, 1, 1]])
    expected = _by_hand(parallel, key_mask, query_length)
    sdpa = _self_attention_mask(parallel, key_mask, query_length, "sdpa", torch.float32)
    assert sdpa.dtype == torch.bool and sdpa.shape == (3, 1, query_length, 5)
    assert torch.equal(sdpa, expected)
    eager = _self_attention_mask(parallel, key_mask, query_length, "eager", torch.float32)
    assert eager.dtype == torch.float32
    torch.testing.assert_close(eager, torch.where(expected, 0.0, MIN32))
    # The eager mask is in the dtype it is added to, with that dtype's minimum.
    half = _self_attention_mask(parallel, key_mask, query_length, "eager", torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half == torch.finfo(torch.bfloat16).min, ~expected)


def test_self_attention_mask_names_the_implementations_it_builds_for():
    with pytest.raises(ValueError) as excinfo:
        _self_attention_mask(torch.tensor([True]), torch.ones(1, 3), 3, "flash_attention_2", torch.float32)
    assert str(excinfo.value) == (
        "parallel decoding builds its own attention mask, which 'flash_attention_2' attention cannot take; "
        "load the model with attn_implementation='sdpa' or 'eager'"
    )


def _cached_step(model, values, mask, tokens, rows):
    """Decode ``tokens[:, :3]`` into a cache, then the last two positions with it."""
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())  # as generate() makes for BART
    model(values, mask, decoder_input_ids=tokens[:, :3], parallel=rows, past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 3
    return model(
        values, mask, decoder_input_ids=tokens[:, 3:], parallel=rows, past_key_values=cache, use_cache=True
    ).logits


def test_a_cached_step_of_ar_rows_equals_the_uncached_forward(tokenizer):  # noqa: F811
    model = build(tokenizer)
    values, mask = features(batch=2)
    tokens = torch.tensor([[0, 17, 23, 31, 40], [0, 4, 9, 4, 11]])
    rows = torch.tensor([False, False])
    full = model(values, mask, decoder_input_ids=tokens, parallel=rows).logits
    torch.testing.assert_close(
        _cached_step(model, values, mask, tokens, rows), full[:, 3:], atol=1e-4, rtol=1e-4
    )


def test_a_cached_step_of_par_rows_reads_the_later_new_position(tokenizer):  # noqa: F811
    """With three positions cached, the first new query of a PAR row reads the second new position (the
    queries are the last two of five keys); an AR row's cannot."""
    model = build(tokenizer)
    values, mask = features(batch=2)
    tokens = torch.tensor([[0, 17, 23, 31, 40], [0, 4, 9, 4, 11]])
    changed = tokens.clone()
    changed[:, 4] = 50
    rows = torch.tensor([False, True])
    before = _cached_step(model, values, mask, tokens, rows)
    after = _cached_step(model, values, mask, changed, rows)
    torch.testing.assert_close(before[0, 0], after[0, 0])
    assert (before[1, 0] - after[1, 0]).abs().amax() > 1e-4


def test_labels_with_decoder_inputs_keep_the_inputs_and_score_them(tokenizer):  # noqa: F811
    """PAR training passes <mask> inputs and the labels together: the inputs are decoded (not replaced by the
    shifted labels), the loss is the plain cross-entropy of those logits; a training pass keeps no cache."""
    model = build(tokenizer)
    values, mask = features(batch=2)
    masks = torch.full((2, 4), tokenizer.mask_token_id)
    labels = torch.tensor([[17, 23, 31, tokenizer.eos_token_id], [9, 4, tokenizer.eos_token_id, -100]])
    rows = torch.tensor([True, True])
    scored = model(values, mask, decoder_input_ids=masks, parallel=rows, labels=labels, use_cache=True)
    plain = model(values, mask, decoder_input_ids=masks, parallel=rows)
    torch.testing.assert_close(scored.logits, plain.logits)
    kept = labels != -100
    expected = -torch.log_softmax(plain.logits[kept], dim=-1).gather(1, labels[kept][:, None]).mean()
    torch.testing.assert_close(scored.loss, expected)
    assert scored.past_key_values is None


def test_an_inference_pass_keeps_its_cache_and_the_encoders_hidden_states(tokenizer):  # noqa: F811
    model = build(tokenizer)
    model.set_attn_implementation("eager")  # SDPA returns no attention weights
    values, mask = features(batch=2)
    tokens = torch.tensor([[0, 17, 23], [0, 4, 9]])
    out = model(
        values,
        mask,
        decoder_input_ids=tokens,
        use_cache=True,
        output_hidden_states=True,
        output_attentions=True,
    )
    assert out.loss is None
    assert out.past_key_values is not None and out.past_key_values.get_seq_length() == 3
    layers = model.config.decoder_config.decoder_layers
    assert len(out.decoder_hidden_states) == layers + 1 and out.decoder_hidden_states[0].shape == (
        2,
        3,
        model.config.decoder_config.d_model,
    )
    assert len(out.decoder_attentions) == len(out.cross_attentions) == layers
    assert out.cross_attentions[0].shape[-1] == out.encoder_attention_mask.shape[1]
    encoder = model.get_encoder()(values, attention_mask=mask, output_hidden_states=True)
    assert out.encoder_hidden_states is not None
    assert len(out.encoder_hidden_states) == len(encoder.hidden_states)
    for ours, theirs in zip(out.encoder_hidden_states, encoder.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs)
    assert model(values, mask, decoder_input_ids=tokens).encoder_hidden_states is None


def test_forward_refusals_say_what_to_give(tokenizer):  # noqa: F811
    model = build(tokenizer)
    values, mask = features(batch=1)
    tokens = torch.tensor([[0, 17]])
    with pytest.raises(ValueError) as excinfo:
        model(decoder_input_ids=tokens)
    assert str(excinfo.value) == "give input_values (fbank features) or encoder_outputs"
    encoded = model.get_encoder()(values, attention_mask=mask)
    with pytest.raises(TypeError) as excinfo:
        model(encoder_outputs=encoded.to_tuple(), decoder_input_ids=tokens)
    assert str(excinfo.value) == (
        "encoder_outputs must be the encoder's ZipformerModelOutput (its attention_mask masks the padding "
        "frames), got tuple"
    )
    with pytest.raises(ValueError) as excinfo:
        model(encoder_outputs=encoded)
    assert str(excinfo.value) == "give decoder_input_ids or labels"


def test_the_decoder_reads_frames_standardised_over_the_valid_frames_only(tokenizer):  # noqa: F811
    """In training (batch statistics) the frames the decoder reads are standardised with the padding left
    out: what enc_to_dec_proj receives is `_text_frames` of the encoder's frames under its frame mask."""
    model = build(tokenizer, text_frames_norm="batch").train()
    values, mask = features(batch=3)
    seen = {}
    model.zipformer.register_forward_hook(lambda module, args, out: seen.update(encoded=out))
    model.enc_to_dec_proj.register_forward_hook(lambda module, args, out: seen.update(read=args[0]))
    model(values, mask, decoder_input_ids=torch.tensor([[0, 17, 23]] * 3))
    frames, frame_mask = seen["encoded"].last_hidden_state, seen["encoded"].attention_mask
    assert not frame_mask.bool().all()
    with torch.no_grad():
        expected = model._text_frames(frames, frame_mask)
    torch.testing.assert_close(seen["read"], expected)


class _Tokenizer:
    """A tokenizer's ids, none of them BART's defaults (0 / 1 / 2 / none), so that each is seen to be read."""

    bos_token_id, eos_token_id, pad_token_id, mask_token_id = 5, 6, 7, 8

    def __len__(self):
        return 40


def test_caption_decoder_config_reads_every_id_from_the_tokenizer():
    config = caption_decoder_config(_Tokenizer(), max_position_embeddings=24)
    assert config.vocab_size == 40
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id, config.mask_token_id) == (
        5,
        6,
        7,
        8,
    )
    assert config.decoder_start_token_id == 5 and config.forced_eos_token_id == 6
    # The "small" preset by default, an override on top of it.
    assert {field: getattr(config, field) for field in DECODER_PRESETS["small"]} == {
        **DECODER_PRESETS["small"],
        "max_position_embeddings": 24,
    }
    with pytest.raises(ValueError) as excinfo:
        caption_decoder_config(_Tokenizer(), "tiny")
    assert str(excinfo.value) == f"unknown decoder preset 'tiny'; available: {sorted(DECODER_PRESETS)}"


def test_generation_config_and_the_models_fixed_parts_follow_the_decoder_config():
    decoder = caption_decoder_config(_Tokenizer(), max_position_embeddings=24)
    config = ZipformerConfig.from_preset("zipformer-small", decoder_config=decoder, text_frames_norm="batch")
    model = ZipformerForConditionalGeneration(config)
    generation = model.generation_config
    assert (generation.decoder_start_token_id, generation.bos_token_id) == (5, 5)
    assert (generation.eos_token_id, generation.pad_token_id) == (6, 7)
    assert generation.max_new_tokens == 23  # the start token takes one of the 24 positions
    wide = caption_decoder_config(_Tokenizer(), max_position_embeddings=1024)
    wide_model = ZipformerForConditionalGeneration(
        ZipformerConfig.from_preset("zipformer-small", decoder_config=wide)
    )
    assert wide_model.generation_config.max_new_tokens == MAX_CAPTION_TOKENS - 1
    # Auden's projection has no bias; the frames' standardisation has no affine parameters.
    assert model.enc_to_dec_proj.bias is None
    assert model.enc_to_dec_proj.weight.shape == (decoder.d_model, config.hidden_size)
    assert not model.text_frames_norm.affine and list(model.text_frames_norm.parameters()) == []


def test_the_output_carries_the_encoders_frames_and_mask(tokenizer):  # noqa: F811
    model = build(tokenizer)
    values, mask = features(batch=2)
    out = model(values, mask, decoder_input_ids=torch.tensor([[0, 17], [0, 4]]))
    encoded = model.get_encoder()(values, attention_mask=mask)
    torch.testing.assert_close(out.encoder_last_hidden_state, encoded.last_hidden_state)
    assert torch.equal(out.encoder_attention_mask, encoded.attention_mask)
