"""Tokenizers for UTS's text objectives: the reference ones from the Hub when reachable, else trained offline
on the corpus's own text with the `tokenizers` library.

Auden's caption decoder reads BART's tokenizer (byte-level BPE, ``facebook/bart-base``) and its CLAP text
tower BERT's (WordPiece, ``bert-base-uncased``). With no Hub (a test, an offline machine) a tokenizer of the
same kind and the same special tokens is trained on the captions: it is saved with the model, so a checkpoint
decodes the same way wherever it is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, BartTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

__all__ = [
    "BART_SPECIAL_TOKENS",
    "CORPUS_TOKENIZER",
    "DECODER_TOKENIZER",
    "TEXT_ENCODER_TOKENIZER",
    "load_or_train_tokenizer",
    "train_bpe_tokenizer",
    "train_wordpiece_tokenizer",
]

logger = logging.getLogger(__name__)

#: the name that asks for a tokenizer trained on the corpus text even when the Hub is reachable (a run that
#: must not depend on the machine's network)
CORPUS_TOKENIZER = "corpus"
#: the reference tokenizers (architectures.md 5(a))
DECODER_TOKENIZER = "facebook/bart-base"
TEXT_ENCODER_TOKENIZER = "bert-base-uncased"

#: BART's special tokens, in BART's id order (<s> 0, <pad> 1, </s> 2, <unk> 3); <mask> is PAR's decoder input
BART_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _texts(texts: Iterable[str]) -> list[str]:
    kept = [t for t in texts if isinstance(t, str) and t.strip()]
    if not kept:
        raise ValueError("cannot train a tokenizer: no non-empty text was given")
    return kept


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer like BART's (same special tokens, ids and ``<s> ... </s>`` framing), trained
    on ``texts``; any string encodes (bytes never fall out of the vocabulary) and decodes back exactly."""
    texts = _texts(texts)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(BART_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # No post-processor here: BartTokenizer installs BART's own (<s> $A </s>, pair <s> $A </s> </s> $B </s>)
    # over whatever the backend holds.
    return BartTokenizer(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerBase:
    """An uncased WordPiece tokenizer like BERT's (``[CLS] ... [SEP]``, same special tokens), trained on
    ``texts``."""
    texts = _texts(texts)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(_BERT_SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # No post-processor here: BertTokenizerFast installs BERT's own ([CLS] $A [SEP], pair [CLS] $A [SEP] $B
    # [SEP] with type id 1 for the second text) over whatever the backend holds.
    return BertTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        do_lower_case=True,
    )


_TRAINERS = {"bpe": train_bpe_tokenizer, "wordpiece": train_wordpiece_tokenizer}


def load_or_train_tokenizer(
    name_or_path: str | None, texts: Iterable[str], kind: str, vocab_size: int = 2000
) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(name_or_path)`` when it loads (a folder, or a Hub id when the Hub is
    reachable); otherwise, or when ``name_or_path`` is None or ``"corpus"``, a ``kind`` (``"bpe"`` or
    ``"wordpiece"``) tokenizer trained on ``texts``. A local path that does not load is an error, not a
    fallback."""
    if kind not in _TRAINERS:
        raise ValueError(f"tokenizer kind must be one of {sorted(_TRAINERS)}, got {kind!r}")
    if name_or_path and name_or_path != CORPUS_TOKENIZER:
        try:
            return AutoTokenizer.from_pretrained(name_or_path)
        # OSError covers a missing repo and an offline Hub (OfflineModeIsEnabled is a ConnectionError).
        except (OSError, HFValidationError) as err:
            if Path(name_or_path).exists():
                raise
            logger.warning(
                "tokenizer %s is not reachable (%s); training a %s tokenizer of %d tokens on the corpus text",
                name_or_path,
                type(err).__name__,
                kind,
                vocab_size,
            )
    return _TRAINERS[kind](texts, vocab_size)
