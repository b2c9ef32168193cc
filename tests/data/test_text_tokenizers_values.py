"""The trained tokenizers' exact make-up: BERT's special ids and vocabulary size, the framing of a pair, the
vocabulary size asked for, BPE training that depends only on the texts (not on their order or on the run), the
texts kept for training, and the fallback of `load_or_train_tokenizer` (the Hub mocked: never reached)."""

import logging

import pytest
from huggingface_hub.errors import HFValidationError
from test_text_tokenizers import CAPTIONS
from transformers import AutoTokenizer

from hf_audiorep.data import text_tokenizers
from hf_audiorep.data.text_tokenizers import (
    CORPUS_TOKENIZER,
    load_or_train_tokenizer,
    train_bpe_tokenizer,
    train_wordpiece_tokenizer,
)


def test_wordpiece_has_berts_special_ids_and_the_vocabulary_size_asked_for():
    tokenizer = train_wordpiece_tokenizer(CAPTIONS, vocab_size=120)
    ids = {
        name: tokenizer.convert_tokens_to_ids(name) for name in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    }
    assert ids == {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.mask_token_id) == (0, 1, 4)
    assert len(tokenizer) == 120
    # a pair: [CLS] a [SEP] b [SEP], the second segment (and its [SEP]) of type id 1, as BERT's
    a = tokenizer("a dog", add_special_tokens=False).input_ids
    b = tokenizer("rain", add_special_tokens=False).input_ids
    pair = tokenizer("a dog", "rain")
    assert pair.input_ids == [2, *a, 3, *b, 3]
    assert pair.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    # word pieces are glued back without "##"
    assert tokenizer.decode(tokenizer("construction").input_ids, skip_special_tokens=True) == "construction"
    assert tokenizer.do_lower_case


def test_bpe_has_the_vocabulary_size_asked_for_and_frames_a_pair_like_bart():
    tokenizer = train_bpe_tokenizer(CAPTIONS, vocab_size=300)
    assert len(tokenizer) == 300
    a = tokenizer("a dog", add_special_tokens=False).input_ids
    b = tokenizer("rain", add_special_tokens=False).input_ids
    assert tokenizer("a dog", "rain").input_ids == [0, *a, 2, 2, *b, 2]
    assert tokenizer.cls_token_id == 0 and tokenizer.sep_token_id == 2 and tokenizer.unk_token_id == 3
    # no space is put before the first word: " dog" and "dog" are different tokens
    assert (
        tokenizer("dog", add_special_tokens=False).input_ids
        != tokenizer(" dog", add_special_tokens=False).input_ids
    )


@pytest.mark.parametrize(
    "train, size",
    # Not WordPiece: tokenizers' WordPieceTrainer gives another vocabulary on each run over the same texts,
    # which is why pretrain_uts.py trains the run's tokenizer once (uts_text_recipe.run_tokenizer).
    [(train_bpe_tokenizer, 300)],
)
def test_training_depends_only_on_the_texts(train, size, tmp_path):
    first, again = train(CAPTIONS, vocab_size=size), train(list(CAPTIONS), vocab_size=size)
    assert first.get_vocab() == again.get_vocab()
    # blank and non-string entries are dropped, not trained on
    padded = train([None, "", "   ", *CAPTIONS, 7], vocab_size=size)
    assert padded.get_vocab() == first.get_vocab()
    # a generator is read once, like a list
    assert train((c for c in CAPTIONS), vocab_size=size).get_vocab() == first.get_vocab()
    first.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == first.get_vocab() and type(reloaded).__name__ == type(first).__name__
    assert reloaded("a dog", "rain").input_ids == first("a dog", "rain").input_ids


def test_the_default_vocabulary_is_two_thousand_tokens_when_the_texts_hold_that_many():
    words = [f"w{i:04d}x{i * 7 % 1000:03d}" for i in range(3000)]
    texts = [" ".join(words[i : i + 10]) for i in range(0, 3000, 10)]
    assert len(train_wordpiece_tokenizer(texts)) == 2000
    assert len(train_bpe_tokenizer(texts)) == 2000
    assert len(load_or_train_tokenizer(None, texts, "wordpiece")) == 2000


def test_corpus_and_none_train_without_asking_the_hub(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the Hub (or a path) was asked for a tokenizer")

    monkeypatch.setattr(text_tokenizers.AutoTokenizer, "from_pretrained", refuse)
    for name in (None, "", CORPUS_TOKENIZER):
        tokenizer = load_or_train_tokenizer(name, CAPTIONS, "bpe", vocab_size=300)
        assert len(tokenizer) == 300 and tokenizer.mask_token_id == 4
    assert CORPUS_TOKENIZER == "corpus"
    wordpiece = load_or_train_tokenizer(CORPUS_TOKENIZER, CAPTIONS, "wordpiece", vocab_size=150)
    assert wordpiece.cls_token_id == 2 and len(wordpiece) == 150


@pytest.mark.parametrize("error", [OSError("offline"), HFValidationError("bad id")])
def test_an_unreachable_hub_id_falls_back_to_training_and_says_so(monkeypatch, caplog, error):
    asked = []

    def unreachable(name, *args, **kwargs):
        asked.append(name)
        raise error

    monkeypatch.setattr(text_tokenizers.AutoTokenizer, "from_pretrained", unreachable)
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.text_tokenizers"):
        tokenizer = load_or_train_tokenizer("someone/tokenizer", CAPTIONS, "wordpiece", vocab_size=150)
    assert asked == ["someone/tokenizer"]
    assert tokenizer.do_lower_case and len(tokenizer) == 150
    assert tokenizer("a dog").input_ids[0] == 2  # [CLS]
    assert caplog.messages == [
        f"tokenizer someone/tokenizer is not reachable ({type(error).__name__}); training a wordpiece "
        "tokenizer of 150 tokens on the corpus text"
    ]


def test_a_tokenizer_that_loads_is_returned_as_loaded(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(text_tokenizers.AutoTokenizer, "from_pretrained", lambda name: sentinel)
    assert load_or_train_tokenizer("facebook/bart-base", [], "bpe") is sentinel
    # other errors are not a reason to train
    monkeypatch.setattr(
        text_tokenizers.AutoTokenizer, "from_pretrained", lambda name: (_ for _ in ()).throw(KeyError(name))
    )
    with pytest.raises(KeyError):
        load_or_train_tokenizer("facebook/bart-base", CAPTIONS, "bpe")


def test_a_local_path_that_fails_to_load_raises_its_own_error(monkeypatch, tmp_path):
    def missing(name, *args, **kwargs):
        raise OSError(f"no tokenizer files in {name}")

    monkeypatch.setattr(text_tokenizers.AutoTokenizer, "from_pretrained", missing)
    with pytest.raises(OSError, match="no tokenizer files in"):
        load_or_train_tokenizer(str(tmp_path), CAPTIONS, "bpe")
    with pytest.raises(ValueError, match=r"tokenizer kind must be one of \['bpe', 'wordpiece'\], got 'BPE'"):
        load_or_train_tokenizer(str(tmp_path), CAPTIONS, "BPE")


@pytest.mark.parametrize("train", [train_bpe_tokenizer, train_wordpiece_tokenizer])
def test_training_on_blank_texts_says_why_it_cannot_train(train):
    with pytest.raises(ValueError, match=r"^cannot train a tokenizer: no non-empty text was given$"):
        train(["", " \n", None, 3])
