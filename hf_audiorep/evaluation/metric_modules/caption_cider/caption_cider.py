"""CIDEr-D of captions (Vedantam et al., 2015) as an `evaluate` metric module, computed as coco-caption's
``CiderD`` scorer computes it, the number audio- and image-captioning papers report as CIDEr.

It loads from a local path, so it works offline:
``evaluate.load(hf_audiorep.evaluation.captioning.CIDER_METRIC_PATH)``.

Each caption becomes one TF-IDF vector per n-gram order (n = 1..4): raw n-gram counts weighted by
log(N / df), where N is the number of clips evaluated and df the number of clips whose references hold the
n-gram, so the weights come from the evaluated corpus itself. A prediction scores, per order, the cosine
similarity to each reference with the prediction's weights clipped at the reference's (repeating a word earns
nothing), times a Gaussian penalty exp(-(l_pred - l_ref)^2 / (2 sigma^2)) on the length difference
(sigma = 6); the orders are averaged, the references averaged, and the result scaled by 10. The corpus score
is the mean over clips. With a single clip every n-gram has df = N and weight 0: CIDEr-D needs a corpus.

Text normalisation: lower-case, apostrophes dropped (``dog's`` -> ``dogs``), every other punctuation character
turned into a space, then split on whitespace. coco-caption instead runs the Stanford PTB tokenizer, which
splits clitics off as tokens of their own (``dog 's``, ``do n't``), keeps hyphenated words whole and removes
only a fixed list of punctuation tokens; scores therefore differ slightly on captions with apostrophes,
hyphens or symbols, and agree on plain lower-case words. ``caption_bleu`` normalises identically.
"""

import math
import unicodedata
import warnings
from collections import Counter

import datasets
import evaluate

_DESCRIPTION = (
    "CIDEr-D as coco-caption computes it: TF-IDF n-gram vectors (n = 1..4, document frequencies over the "
    "evaluated corpus's references), clipped cosine similarity with a Gaussian length penalty (sigma 6), "
    "averaged over n-gram orders and references, times 10, averaged over clips."
)
_KWARGS = """
Args:
    predictions (list of str): one caption per clip.
    references (list of str, or list of list of str): the reference caption(s) of each clip.
    max_order (int, optional): the longest n-gram, 4 by default.
    sigma (float, optional): the width of the length penalty, in words; 6 by default.
Returns:
    cider (float, the corpus mean; 10 at most), cider_per_clip (list of float).
"""
_CITATION = """\
@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based image description evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
"""


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


def _tfidf(counts: Counter, document_frequency: Counter, log_num_clips: float, max_order: int):
    """Per n-gram order: the TF-IDF weights of a caption's n-grams, and the vector's Euclidean norm."""
    vectors = [{} for _ in range(max_order)]
    for ngram, count in counts.items():
        # An n-gram no reference holds is weighted as if one clip held it (coco's max(1, df)).
        vectors[len(ngram) - 1][ngram] = count * (log_num_clips - math.log(max(1, document_frequency[ngram])))
    norms = [math.sqrt(sum(w * w for w in v.values())) for v in vectors]
    return vectors, norms


def _similarity(prediction, reference, length_difference: int, sigma: float) -> list[float]:
    """Per order: the clipped cosine similarity of two TF-IDF vectors, times the Gaussian length penalty."""
    (pred_vectors, pred_norms), (ref_vectors, ref_norms) = prediction, reference
    penalty = math.exp(-(length_difference**2) / (2 * sigma**2))
    scores = []
    orders = zip(pred_vectors, ref_vectors, pred_norms, ref_norms, strict=True)
    for pred, ref, pred_norm, ref_norm in orders:
        # CIDEr-D's clipping: the prediction's weight counts at most up to the reference's.
        dot = sum(min(w, ref.get(ngram, 0.0)) * ref.get(ngram, 0.0) for ngram, w in pred.items())
        cosine = dot / (pred_norm * ref_norm) if pred_norm > 0 and ref_norm > 0 else 0.0
        scores.append(cosine * penalty)
    return scores


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CaptionCider(evaluate.Metric):
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
            reference_urls=["https://github.com/vrama91/cider"],
        )

    def compute(self, *, predictions=None, references=None, **kwargs):
        """Score ``predictions`` against ``references`` (see below)."""
        # (evaluate appends the inputs description to the docstring.) The inputs are checked before
        # `evaluate` sees them: its own errors for an empty corpus or an empty list of references do not
        # say what is wrong. A lone reference string becomes a list of one, so strings and lists may mix.
        if predictions is not None and references is not None:
            references = check_corpus(predictions, references)
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions, references, max_order: int = 4, sigma: float = 6.0):
        if isinstance(max_order, bool) or not isinstance(max_order, int) or max_order < 1:
            raise ValueError(f"max_order must be a positive integer, got {max_order!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        refs = check_corpus(predictions, references)
        if len(predictions) == 1:
            warnings.warn(
                "CIDEr-D of a single clip is 0: its document frequencies come from the evaluated corpus, and "
                "with one clip every n-gram of its references has weight log(1/1) = 0",
                stacklevel=2,
            )
        ref_words = [[normalize_caption(r) for r in group] for group in refs]
        ref_counts = [[ngram_counts(words, max_order) for words in group] for group in ref_words]
        # df: in how many clips' references (any of them) each n-gram occurs.
        document_frequency = Counter()
        for group in ref_counts:
            document_frequency.update(set().union(*group))
        log_num_clips = math.log(len(predictions))
        per_clip = []
        for prediction, words_group, counts_group in zip(predictions, ref_words, ref_counts, strict=True):
            words = normalize_caption(prediction)
            pred = _tfidf(ngram_counts(words, max_order), document_frequency, log_num_clips, max_order)
            total = [0.0] * max_order
            for ref_words_one, counts in zip(words_group, counts_group, strict=True):
                ref = _tfidf(counts, document_frequency, log_num_clips, max_order)
                # coco-caption measures lengths in bigrams (words - 1): the same difference whenever both
                # captions have a word, and without one the cosine is 0 whatever the penalty.
                sims = _similarity(pred, ref, len(words) - len(ref_words_one), sigma)
                total = [t + s for t, s in zip(total, sims, strict=True)]
            # Mean over the n-gram orders, mean over the references, times 10 (CIDEr-D's scale).
            per_clip.append(10.0 * sum(total) / max_order / len(words_group))
        return {"cider": sum(per_clip) / len(per_clip), "cider_per_clip": per_clip}
