"""Corpus BLEU-1..4 of captions (Papineni et al., 2002) as an `evaluate` metric module, computed as
coco-caption's ``Bleu`` scorer computes it, the number audio- and image-captioning papers report.

It loads from a local path, so it works offline:
``evaluate.load(hf_audiorep.evaluation.captioning.BLEU_METRIC_PATH)``.

Text normalisation: lower-case, apostrophes dropped (``dog's`` -> ``dogs``), every other punctuation character
turned into a space, then split on whitespace. coco-caption instead runs the Stanford PTB tokenizer, which
splits clitics off as tokens of their own (``dog 's``, ``do n't``), keeps hyphenated words whole and removes
only a fixed list of punctuation tokens; scores therefore differ slightly on captions with apostrophes,
hyphens or symbols, and agree on plain lower-case words. ``caption_cider`` normalises identically.
"""

import math
import unicodedata
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = (
    "Corpus BLEU-1..4 as coco-caption computes it: clipped n-gram precisions summed over the corpus, their "
    "geometric mean, and a brevity penalty from the corpus length against the closest reference length of "
    "each prediction. Several references per prediction."
)
_KWARGS = """
Args:
    predictions (list of str): one caption per clip.
    references (list of str, or list of list of str): the reference caption(s) of each clip.
    max_order (int, optional): the longest n-gram, 4 by default.
Returns:
    bleu_1 .. bleu_<max_order> (float, in [0, 1]), brevity_penalty, length_ratio (prediction words over
    effective reference words), prediction_length, reference_length (int).
"""
_CITATION = """\
@inproceedings{papineni2002bleu,
  title={BLEU: a method for automatic evaluation of machine translation},
  author={Papineni, Kishore and Roukos, Salim and Ward, Todd and Zhu, Wei-Jing},
  booktitle={ACL},
  year={2002}
}
"""

# coco-caption's smoothing of a precision: (matches + TINY) / (candidates + SMALL). A corpus without a single
# matching n-gram of some order then scores (nearly) 0 instead of failing on log 0, and the numbers agree with
# coco-caption's to float precision.
_TINY = 1e-15
_SMALL = 1e-9


def normalize_caption(text: str) -> list[str]:
    """The words BLEU and CIDEr-D compare: lower-cased, apostrophes dropped, other punctuation a space."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    # Unicode category P* is punctuation in every script (commas, dashes, quotes, brackets, ...).
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return text.split()


def ngram_counts(words: list[str], max_order: int) -> Counter:
    """How often each n-gram (a tuple of 1..max_order words) occurs in ``words``."""
    return Counter(
        tuple(words[i : i + n]) for n in range(1, max_order + 1) for i in range(len(words) - n + 1)
    )


def check_corpus(predictions, references) -> list[list[str]]:
    """Each prediction's list of references; a clear error for an empty corpus, mismatched lengths or a
    prediction without a reference."""
    if len(predictions) == 0:
        raise ValueError("the corpus is empty: there are no predictions to score")
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} reference entries: one entry (a caption "
            "or a list of captions) per prediction is needed"
        )
    refs = [[r] if isinstance(r, str) else list(r) for r in references]
    for index, (prediction, group) in enumerate(zip(predictions, refs, strict=True)):
        if not group:
            raise ValueError(f"prediction {index} ({prediction!r}) has no reference caption")
    return refs


def _closest_length(lengths: list[int], length: int) -> int:
    # The reference length nearest the prediction's; on a tie the shorter one, as coco-caption picks.
    return min(lengths, key=lambda ref: (abs(ref - length), ref))


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CaptionBleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            # Several references per prediction, or one as a plain string.
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            reference_urls=["https://github.com/tylin/coco-caption"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Score ``predictions`` against ``references`` (see below)."""
        # (evaluate appends the inputs description to the docstring.) The inputs are checked before
        # `evaluate` sees them: its own errors for an empty corpus or an empty list of references do not
        # say what is wrong. A lone reference string becomes a list of one, so strings and lists may mix.
        if predictions is not None and references is not None:
            references = check_corpus(predictions, references)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, max_order: int = 4):
        if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
            raise ValueError(f"max_order must be a positive integer, got {max_order!r}")
        refs = check_corpus(predictions, references)
        matches = [0] * max_order  # clipped n-gram matches, per order, summed over the corpus
        candidates = [0] * max_order  # n-grams in the predictions, per order
        prediction_length = reference_length = 0
        for prediction, group in zip(predictions, refs, strict=True):
            words = normalize_caption(prediction)
            ref_words = [normalize_caption(r) for r in group]
            # Clipping: an n-gram counts at most as often as it occurs in any single reference.
            max_ref_counts = Counter()
            for r in ref_words:
                max_ref_counts |= ngram_counts(r, max_order)
            for ngram, count in ngram_counts(words, max_order).items():
                matches[len(ngram) - 1] += min(count, max_ref_counts[ngram])
            for n in range(1, max_order + 1):
                candidates[n - 1] += max(0, len(words) - n + 1)
            prediction_length += len(words)
            reference_length += _closest_length([len(r) for r in ref_words], len(words))
        ratio = (prediction_length + _TINY) / (reference_length + _SMALL)
        brevity_penalty = 1.0 if ratio >= 1 else math.exp(1 - 1 / ratio)
        scores = {}
        log_precision = 0.0
        for n in range(1, max_order + 1):
            log_precision += math.log((matches[n - 1] + _TINY) / (candidates[n - 1] + _SMALL))
            scores[f"bleu_{n}"] = brevity_penalty * math.exp(log_precision / n)
        return {
            **scores,
            "brevity_penalty": brevity_penalty,
            "length_ratio": ratio,
            "prediction_length": prediction_length,
            "reference_length": reference_length,
        }
