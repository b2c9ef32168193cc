"""The UTS caption model (Zipformer encoder + BART decoder) and its processor: AR rows causal and PAR rows
bidirectional in one batch, the MTC head shared with the tagger, generate() and parallel_generate() after a
save / load round trip, loading through the Auto classes, BART weights as the decoder's start, and the
processor's offline round trip."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    BartConfig,
    BartForConditionalGeneration,
)

import hf_audiorep  # noqa: F401  (registers the Auto classes)
from hf_audiorep.data.text_tokenizers import train_bpe_tokenizer
from hf_audiorep.modeling import ZipformerFbankFeatureExtractor, caption_decoder_config
from hf_audiorep.modeling.configuration_zipformer import DECODER_PRESETS, ZipformerConfig
from hf_audiorep.modeling.modeling_zipformer import ZipformerForAudioClassification, ZipformerModel
from hf_audiorep.modeling.modeling_zipformer_caption import (
    ZipformerForConditionalGeneration,
    init_decoder_from_bart,
)
from hf_audiorep.modeling.processing_zipformer import ZipformerProcessor

CAPTIONS = [
    "a dog barks twice in a quiet yard",
    "rain falls steadily on a metal roof",
    "an engine idles and then revs up",
    "birds sing while wind blows through trees",
    "a crowd cheers in a large stadium",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer(CAPTIONS, vocab_size=300)


def decoder_config(tokenizer, **overrides) -> BartConfig:
    return caption_decoder_config(tokenizer, "small", **overrides)


def build(tokenizer, seed=0, **overrides) -> ZipformerForConditionalGeneration:
    config = ZipformerConfig.from_preset(
        "zipformer-small", decoder_config=decoder_config(tokenizer), **overrides
    )
    torch.manual_seed(seed)
    return ZipformerForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def trained(tokenizer):
    """A few AR and PAR steps on two captions, so that greedy and parallel decoding say something (an
    untrained tied decoder repeats its input token)."""
    model = build(tokenizer)
    processor = ZipformerProcessor(ZipformerFbankFeatureExtractor(), tokenizer)
    values, mask = features(batch=2)
    labels = processor.caption_labels(CAPTIONS[:2], return_tensors="pt")
    valid = (labels != -100).long()
    masks = torch.where(valid.bool(), tokenizer.mask_token_id, tokenizer.pad_token_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(12):
        ar = model(values, mask, labels=labels).loss
        par = model(
            values,
            mask,
            decoder_input_ids=masks,
            decoder_attention_mask=valid,
            parallel=valid[:, 0] > 0,
            labels=labels,
        ).loss
        optimizer.zero_grad()
        (ar + par).backward()
        optimizer.step()
    return model.eval(), processor


def features(batch=2, frames=120, seed=1):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(batch, frames, 80, generator=generator)
    mask = torch.ones(batch, frames, dtype=torch.long)
    mask[1:, frames * 3 // 4 :] = 0
    return values, mask


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_parallel_rows_attend_both_ways_and_ar_rows_causally(tokenizer, implementation):
    model = build(tokenizer)
    model.set_attn_implementation(implementation)
    assert model.get_decoder().config._attn_implementation == implementation
    values, mask = features(batch=2)
    values[1], mask[1] = values[0], mask[0]  # the same clip, decoded AR (row 0) and PAR (row 1)
    tokens = torch.tensor([[0, 17, 23, 31, 40], [4, 4, 4, 4, 4]])
    parallel = torch.tensor([False, True])
    changed = tokens.clone()
    changed[:, -1] = 50  # a later decoder input
    before = model(values, mask, decoder_input_ids=tokens, parallel=parallel).logits
    after = model(values, mask, decoder_input_ids=changed, parallel=parallel).logits
    # The PAR row's earlier positions read the later input; the AR row's cannot.
    assert (before[1, :-1] - after[1, :-1]).abs().amax() > 1e-4
    torch.testing.assert_close(before[0, :-1], after[0, :-1])
    # All-AR rows are BART's own causal decoding, padding masked the same way.
    pad_mask = torch.ones_like(tokens)
    pad_mask[0, -1] = 0
    as_bart = model(values, mask, decoder_input_ids=tokens, decoder_attention_mask=pad_mask).logits
    all_ar = model(
        values,
        mask,
        decoder_input_ids=tokens,
        decoder_attention_mask=pad_mask,
        parallel=torch.tensor([False, False]),
    ).logits
    torch.testing.assert_close(all_ar, as_bart)


def test_parallel_rows_ignore_padding_keys(tokenizer):
    model = build(tokenizer)
    values, mask = features(batch=1)
    tokens = torch.tensor([[4, 4, 4, 9]])
    pad_mask = torch.tensor([[1, 1, 1, 0]])
    parallel = torch.tensor([True])
    padded = model(values, mask, decoder_input_ids=tokens, decoder_attention_mask=pad_mask, parallel=parallel)
    tokens[0, -1] = 11
    other = model(values, mask, decoder_input_ids=tokens, decoder_attention_mask=pad_mask, parallel=parallel)
    torch.testing.assert_close(padded.logits[:, :3], other.logits[:, :3])


def test_cross_attention_ignores_the_encoders_padding(tokenizer):
    model = build(tokenizer)
    values, mask = features(batch=2)
    tokens = torch.tensor([[0, 17, 23], [0, 17, 23]])
    batched = model(values, mask, decoder_input_ids=tokens)
    valid = int(mask[1].sum())
    alone = model(values[1:, :valid], decoder_input_ids=tokens[1:])
    assert batched.encoder_attention_mask[1].sum() < batched.encoder_attention_mask[0].sum()
    torch.testing.assert_close(batched.logits[1:], alone.logits, atol=1e-5, rtol=1e-4)


def test_labels_give_plain_cross_entropy_on_bos_shifted_inputs(tokenizer):
    model = build(tokenizer)
    values, mask = features(batch=2)
    labels = torch.tensor([[17, 23, 2], [40, 2, -100]])
    out = model(values, mask, labels=labels)
    inputs = torch.tensor([[0, 17, 23], [0, 40, 2]])  # <s> + labels, shifted right
    logits = model(values, mask, decoder_input_ids=inputs).logits
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.logits, logits)
    # return_dict=False: the same values as a tuple, as any transformers model gives (it once reached the
    # BART decoder, whose tuple the captioner then read as an output object)
    loss, tuple_logits, *_ = model(values, mask, labels=labels, return_dict=False)
    torch.testing.assert_close((loss, tuple_logits), (out.loss, out.logits))


def test_tagging_head_is_the_taggers(tokenizer):
    model = build(tokenizer, tagging_head=True, num_labels=6)
    values, mask = features(batch=2)
    out = model(values, mask, decoder_input_ids=torch.tensor([[0, 5], [0, 6]]))
    tagger = ZipformerForAudioClassification(model.config).eval()
    missing, _ = tagger.load_state_dict(model.state_dict(), strict=False)
    assert missing == []
    torch.testing.assert_close(out.tag_logits, tagger(values, mask).logits)
    assert (
        build(tokenizer).forward(values, mask, decoder_input_ids=torch.tensor([[0], [0]])).tag_logits is None
    )


def test_lm_head_is_tied_to_the_token_embedding(tokenizer):
    model = build(tokenizer)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    untied = ZipformerForConditionalGeneration(
        ZipformerConfig.from_preset(
            "zipformer-small", decoder_config=decoder_config(tokenizer, tie_word_embeddings=False)
        )
    )
    assert untied.get_output_embeddings().weight is not untied.get_input_embeddings().weight


def test_default_decoder_is_bart_base_with_barts_vocabulary():
    model = ZipformerForConditionalGeneration(ZipformerConfig.from_preset("zipformer-small"))
    decoder = model.config.decoder_config
    assert (decoder.d_model, decoder.decoder_layers, decoder.decoder_attention_heads) == (768, 6, 12)
    assert (decoder.vocab_size, decoder.bos_token_id, decoder.pad_token_id, decoder.eos_token_id) == (
        50265,
        0,
        1,
        2,
    )
    assert decoder.mask_token_id == 50264
    # Auden's decoder starts from <s> (BART's own starts from </s>): the config says what the model does.
    assert decoder.decoder_start_token_id == decoder.bos_token_id == 0
    assert model.get_input_embeddings().weight.shape == (50265, 768)
    assert model.generation_config.decoder_start_token_id == 0
    assert model.generation_config.max_new_tokens < decoder.max_position_embeddings


def test_generate_and_parallel_generate_survive_save_and_load(trained, tokenizer, tmp_path):
    model, processor = trained
    values, mask = features(batch=2)
    greedy = model.generate(values, attention_mask=mask, max_new_tokens=12)
    beams = model.generate(values, attention_mask=mask, max_new_tokens=12, num_beams=2)
    parallel = model.parallel_generate(values, mask, max_new_tokens=12)
    assert (greedy[:, 0] == tokenizer.bos_token_id).all()  # Auden's input starts with <s>
    assert len(set(greedy[0, 1:].tolist())) > 3 and len(set(parallel[0].tolist())) > 3  # not a repeat
    assert beams.shape[0] == 2 and parallel.shape == (2, 12)
    text = processor.batch_decode(greedy, skip_special_tokens=True)

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForSpeechSeq2Seq.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, ZipformerForConditionalGeneration)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    reloaded_greedy = loaded.generate(values, attention_mask=mask, max_new_tokens=12)
    torch.testing.assert_close(reloaded_greedy, greedy)
    torch.testing.assert_close(
        loaded.generate(values, attention_mask=mask, max_new_tokens=12, num_beams=2), beams
    )
    torch.testing.assert_close(loaded.parallel_generate(values, mask, max_new_tokens=12), parallel)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert reloaded_processor.batch_decode(reloaded_greedy, skip_special_tokens=True) == text

    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(encoder, ZipformerModel)
    torch.testing.assert_close(
        encoder(values, mask).last_hidden_state, model.base_model(values, mask).last_hidden_state
    )


def test_generate_uses_the_cache_like_a_full_forward(trained):
    model, _ = trained
    values, mask = features(batch=2)
    out = model.generate(
        values, attention_mask=mask, max_new_tokens=5, output_scores=True, return_dict_in_generate=True
    )
    # Every step's scores are those of one uncached forward over the tokens so far.
    full = model(values, mask, decoder_input_ids=out.sequences[:, :-1]).logits
    for step, scores in enumerate(out.scores):
        torch.testing.assert_close(scores, full[:, step], atol=1e-4, rtol=1e-4)


def test_parallel_generate_pads_after_the_first_eos(tokenizer, monkeypatch):
    model = build(tokenizer)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    predicted = torch.tensor([[9, eos, 7, eos, 8], [5, 6, 7, 8, 9]])
    seen = {}

    def fake_forward(input_values, attention_mask=None, decoder_input_ids=None, parallel=None, **kwargs):
        seen.update(decoder_input_ids=decoder_input_ids, parallel=parallel)
        return type("Out", (), {"logits": F.one_hot(predicted, len(tokenizer)).float()})

    monkeypatch.setattr(model, "forward", fake_forward)
    tokens = model.parallel_generate(*features(batch=2), max_new_tokens=5)
    assert tokens.tolist() == [[9, eos, pad, pad, pad], [5, 6, 7, 8, 9]]
    assert (seen["decoder_input_ids"] == tokenizer.mask_token_id).all() and seen["parallel"].all()


def test_init_decoder_from_bart_copies_the_decoder(tokenizer, tmp_path):
    small = DECODER_PRESETS["small"]
    bart_config = BartConfig(
        vocab_size=len(tokenizer),
        encoder_layers=1,
        encoder_attention_heads=small["decoder_attention_heads"],
        encoder_ffn_dim=64,
        **small,
    )
    torch.manual_seed(5)
    bart = BartForConditionalGeneration(bart_config)
    bart.save_pretrained(tmp_path / "bart")
    model = build(tokenizer)
    init_decoder_from_bart(model, str(tmp_path / "bart"))
    ours = model.get_decoder().state_dict()
    for name, weight in bart.model.decoder.state_dict().items():
        torch.testing.assert_close(ours[name], weight, msg=name)
    torch.testing.assert_close(model.get_output_embeddings().weight, bart.model.shared.weight)

    BartForConditionalGeneration(BartConfig(**{**bart_config.to_dict(), "d_model": 64})).save_pretrained(
        tmp_path / "narrow"
    )
    with pytest.raises(ValueError, match="d_model 64 \\(checkpoint\\) != 128 \\(model\\)"):
        init_decoder_from_bart(model, str(tmp_path / "narrow"))


def test_processor_round_trips_offline(tokenizer, tmp_path):
    processor = ZipformerProcessor(ZipformerFbankFeatureExtractor(), tokenizer)
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, ZipformerProcessor)
    rng = np.random.default_rng(0)
    audio = [
        rng.standard_normal(16000).astype(np.float32) * 0.1,
        rng.standard_normal(8000).astype(np.float32),
    ]
    texts = [CAPTIONS[0], "rain falls"]
    ours = processor(audio=audio, text=texts, sampling_rate=16000, return_tensors="pt")
    theirs = loaded(audio=audio, text=texts, sampling_rate=16000, return_tensors="pt")
    for key in ("input_values", "attention_mask", "labels"):
        torch.testing.assert_close(theirs[key], ours[key])
    # Labels are the AR target: the caption's tokens then </s>, padded with -100.
    plain = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert ours["labels"][0, : len(plain) + 1].tolist() == plain + [tokenizer.eos_token_id]
    short = tokenizer(texts[1], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ours["labels"][1].tolist() == short + [-100] * (len(plain) + 1 - len(short))
    assert loaded(text=texts[1])["input_ids"] == tokenizer(texts[1])["input_ids"]
    decoded = loaded.batch_decode(ours["labels"].clamp(min=tokenizer.pad_token_id), skip_special_tokens=True)
    assert decoded == texts
    assert loaded.decode(loaded(text=texts[0])["input_ids"], skip_special_tokens=True) == texts[0]
    torch.testing.assert_close(
        loaded(audio=audio[0], sampling_rate=16000, return_tensors="pt")["input_values"],
        processor.feature_extractor(audio[0], sampling_rate=16000, return_tensors="pt")["input_values"],
    )


# ---- the shared model checks (tests/model_test_mixin.py), for a seq2seq head -------------------------------


def mixed_inputs(tokenizer):
    values, mask = features(batch=3)
    mask[2, 70:] = 0
    tokens = torch.tensor([[0, 17, 23, 31], [4, 4, 4, 1], [0, 40, 1, 1]])
    return {
        "input_values": values,
        "attention_mask": mask,
        "decoder_input_ids": tokens,
        "decoder_attention_mask": (tokens != tokenizer.pad_token_id).long(),
        "parallel": torch.tensor([False, True, False]),
    }


def test_sdpa_matches_eager_and_batched_equals_one_by_one(tokenizer):
    model = build(tokenizer, tagging_head=True, num_labels=3)
    inputs = mixed_inputs(tokenizer)
    with torch.no_grad():
        sdpa = model(**inputs)
        for i in range(3):
            single = model(**{k: v[i : i + 1] for k, v in inputs.items()})
            valid = int(inputs["decoder_attention_mask"][i].sum())
            torch.testing.assert_close(
                single.logits[:, :valid], sdpa.logits[i : i + 1, :valid], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(single.tag_logits, sdpa.tag_logits[i : i + 1], atol=1e-5, rtol=0)
        model.set_attn_implementation("eager")
        eager = model(**inputs)
    valid = inputs["decoder_attention_mask"].bool()
    torch.testing.assert_close(eager.logits[valid], sdpa.logits[valid], atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    model = build(
        tokenizer, hidden_dropout_prob=0.0, position_dropout_prob=0.0, feature_mask_prob=0.0
    ).train()
    inputs = mixed_inputs(tokenizer)
    labels = torch.tensor([[17, 23, 31, 2], [5, 6, 2, -100], [40, 2, -100, -100]])
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.activation_checkpointing_enable()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1234)
        model(**inputs, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and any(n.startswith("zipformer.") for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_construction_on_meta_device_and_without_weight_init(tokenizer):
    from transformers.initialization import no_init_weights

    config = build(tokenizer).config
    with torch.device("meta"):
        meta = ZipformerForConditionalGeneration(config)
    real = build(tokenizer)
    assert all(p.is_meta for p in meta.parameters())
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
    with no_init_weights():
        bare = ZipformerForConditionalGeneration(config)
    bare.load_state_dict(real.state_dict())
    inputs = mixed_inputs(tokenizer)
    torch.testing.assert_close(bare.eval()(**inputs).logits, real(**inputs).logits)


def test_text_frames_norm_standardises_what_the_decoder_reads_over_valid_frames(tokenizer):
    model = build(tokenizer, text_frames_norm="batch").train()
    values, mask = features(batch=3)
    with torch.no_grad():  # the encoder without its training feature masks (which zero whole channels)
        encoded = model.zipformer.eval()(values, attention_mask=mask)
    frames, frame_mask = encoded.last_hidden_state, encoded.attention_mask
    assert not frame_mask.bool().all()  # padding present
    read = model._text_frames(frames, frame_mask)
    valid = read[frame_mask.bool()]
    torch.testing.assert_close(valid.mean(0), torch.zeros(valid.shape[1]), atol=1e-4, rtol=0)
    # unit variance wherever the raw frames vary more than BatchNorm's eps (1e-5)
    varying = frames[frame_mask.bool()].var(0, unbiased=False) > 1e-3
    assert varying.sum() >= 32
    torch.testing.assert_close(
        valid.var(0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=2e-2, rtol=0
    )
    assert read[~frame_mask.bool()].abs().max() == 0  # padding never enters the statistics
    # the cross-attention reads the standardised frames: the decoder's output changes with the option
    tokens = torch.tensor([[0, 17, 23]] * 3)
    plain = build(tokenizer).train()
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(0)
    normed_logits = model.eval()(values, mask, decoder_input_ids=tokens).logits
    plain_logits = plain.eval()(values, mask, decoder_input_ids=tokens).logits
    assert not torch.allclose(normed_logits, plain_logits)
    assert build(tokenizer).text_frames_norm is None  # Auden's decoder by default
