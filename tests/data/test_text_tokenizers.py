"""The text tokenizers of UTS's text objectives: trained offline like BART's and BERT's, saved and reloaded
with AutoTokenizer, and the Hub's reference tokenizers used when they load."""

import pytest
from transformers import AutoTokenizer

from hf_audiorep.data import text_tokenizers
from hf_audiorep.data.text_tokenizers import (
    BART_SPECIAL_TOKENS,
    load_or_train_tokenizer,
    train_bpe_tokenizer,
    train_wordpiece_tokenizer,
)

CAPTIONS = [
    "A dog barks while rain falls on a tin roof.",
    "An engine idles, then a drill whirs near construction work.",
    "A woman speaks slowly in a quiet room; birds chirp outside.",
    "Music with a steady drum beat and a bright guitar.",
] * 5


def test_bpe_tokenizer_has_barts_special_ids_framing_and_decodes_any_text_exactly(tmp_path):
    tokenizer = train_bpe_tokenizer(CAPTIONS, vocab_size=500)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in BART_SPECIAL_TOKENS}
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.mask_token_id == 4
    encoded = tokenizer(CAPTIONS[0]).input_ids
    assert encoded[0] == 0 and encoded[-1] == 2 and 0 not in encoded[1:-1]
    assert len(tokenizer(CAPTIONS[0], add_special_tokens=False).input_ids) == len(encoded) - 2
    # Byte-level: text never seen in training (accents, symbols) still round-trips, without <unk>.
    unseen = "Zürich ☃ — a café's 3 dogs"
    unseen_ids = tokenizer(unseen).input_ids
    assert tokenizer.unk_token_id not in unseen_ids
    assert tokenizer.decode(unseen_ids, skip_special_tokens=True) == unseen
    # Frequent words become single tokens: the merges were learned from the texts.
    assert len(tokenizer(" dog", add_special_tokens=False).input_ids) == 1

    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in (*CAPTIONS[:4], unseen):
        assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.mask_token_id == 4 and reloaded.pad_token_id == 1


def test_wordpiece_tokenizer_is_uncased_and_framed_like_bert(tmp_path):
    tokenizer = train_wordpiece_tokenizer(CAPTIONS, vocab_size=200)
    ids = tokenizer("A DOG Barks").input_ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a dog barks"
    assert tokenizer("a dog barks").input_ids == ids
    assert tokenizer.unk_token_id in tokenizer("xylophone ☃").input_ids  # WordPiece has an <unk>
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("A DOG Barks").input_ids == ids


@pytest.mark.parametrize("train", [train_bpe_tokenizer, train_wordpiece_tokenizer])
def test_training_on_no_text_is_a_clear_error(train):
    with pytest.raises(ValueError, match="no non-empty text"):
        train(["", "   ", None])


def test_load_or_train_uses_a_saved_tokenizer_and_trains_when_the_hub_is_unreachable(tmp_path, caplog):
    saved = train_wordpiece_tokenizer(CAPTIONS, vocab_size=150)
    saved.save_pretrained(tmp_path / "tok")
    loaded = load_or_train_tokenizer(str(tmp_path / "tok"), ["unrelated text"], "bpe")
    assert loaded("a dog").input_ids == saved("a dog").input_ids  # loaded, not trained (kind ignored)

    # Tests run offline: a Hub id does not load, so a tokenizer of the requested kind is trained.
    trained = load_or_train_tokenizer("facebook/bart-base", CAPTIONS, "bpe", vocab_size=300)
    assert trained.convert_tokens_to_ids("<mask>") == 4 and len(trained) <= 300
    assert "not reachable" in caplog.text
    assert load_or_train_tokenizer(None, CAPTIONS, "wordpiece", vocab_size=150).cls_token_id is not None


def test_a_local_path_that_does_not_load_is_an_error_not_a_fallback(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(Exception) as err:
        load_or_train_tokenizer(str(tmp_path / "broken"), CAPTIONS, "bpe")
    assert "not reachable" not in str(err.value)
    with pytest.raises(ValueError, match="tokenizer kind"):
        load_or_train_tokenizer(None, CAPTIONS, "sentencepiece")


def test_the_reference_tokenizers_are_barts_and_berts():
    assert text_tokenizers.DECODER_TOKENIZER == "facebook/bart-base"
    assert text_tokenizers.TEXT_ENCODER_TOKENIZER == "bert-base-uncased"
