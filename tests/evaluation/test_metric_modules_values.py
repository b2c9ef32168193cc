"""Value tests of the three `evaluate` metric modules (CIDEr-D, BLEU, AudioSet mAP), each imported under its
package name and instantiated directly, not through ``evaluate.load``: `evaluate` copies a module's script
into its own cache and imports it as ``evaluate_modules.metrics.<name>.<hash>.<name>``, a module mutation
testing never mutates (mutmut matches mutants by module name), so tests through ``evaluate.load`` cannot
catch a bug planted in the package's file (see docs/testing.md). ``tests/evaluation/test_caption_metrics.py``
covers the loading itself. Expected values: CIDEr-D from its formula written out below with
collections/numpy, BLEU by hand on tiny corpora, mAP by hand and with scikit-learn."""

from __future__ import annotations

import importlib
import math
import warnings
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

cider_module = importlib.import_module("hf_audiorep.evaluation.metric_modules.caption_cider.caption_cider")
bleu_module = importlib.import_module("hf_audiorep.evaluation.metric_modules.caption_bleu.caption_bleu")
map_module = importlib.import_module("hf_audiorep.evaluation.metric_modules.audioset_map.audioset_map")

TINY, SMALL = 1e-15, 1e-9  # coco-caption's smoothing of a BLEU precision: (matches + TINY) / (n + SMALL)


# `evaluate.Metric.__init__` appends the inputs description to the docstring of a copy of ``compute``. Under
# mutmut the modules' own ``compute`` is a trampoline whose code has no docstring, so the append fails; a
# subclass with a documented ``compute`` that hands over to the module's keeps both the real and the mutated
# module instantiable (and still runs the module's ``compute``).
class _Cider(cider_module.CaptionCider):
    def compute(self, **kwargs):
        """CaptionCider.compute."""
        return super().compute(**kwargs)


class _Bleu(bleu_module.CaptionBleu):
    def compute(self, **kwargs):
        """CaptionBleu.compute."""
        return super().compute(**kwargs)


@pytest.fixture(scope="module")
def cider():
    return _Cider()


@pytest.fixture(scope="module")
def bleu():
    return _Bleu()


@pytest.fixture(scope="module")
def audioset_map():
    return map_module.AudiosetMap()


# -- CIDEr-D, written out --------------------------------------------------------------------------------


def _grams(words, n):
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def cider_d(predictions, references, max_order=4, sigma=6.0):
    """CIDEr-D per clip from its definition, for captions already in lower-case words separated by spaces:
    tf-idf vectors per order with df over the clips' references (max(1, df)), the prediction's weights
    clipped at the reference's, cosine times exp(-(l_p - l_r)^2 / (2 sigma^2)), mean over orders and
    references, times 10."""
    num_clips = len(predictions)
    df = Counter()
    for group in references:
        seen = set()
        for ref in group:
            for n in range(1, max_order + 1):
                seen |= set(_grams(ref.split(), n))
        df.update(seen)

    def vector(words, n):
        return {g: c * (np.log(num_clips) - np.log(max(1, df[g]))) for g, c in _grams(words, n).items()}

    scores = []
    for prediction, group in zip(predictions, references, strict=True):
        p_words, total = prediction.split(), 0.0
        for ref in group:
            r_words = ref.split()
            penalty = np.exp(-((len(p_words) - len(r_words)) ** 2) / (2 * sigma**2))
            for n in range(1, max_order + 1):
                p, r = vector(p_words, n), vector(r_words, n)
                dot = sum(min(w, r.get(g, 0.0)) * r.get(g, 0.0) for g, w in p.items())
                norms = np.sqrt(sum(w * w for w in p.values())) * np.sqrt(sum(w * w for w in r.values()))
                total += (dot / norms if norms > 0 else 0.0) * penalty
        scores.append(10 * total / max_order / len(group))
    return scores


# Four clips: shared words (df 2..4), a word no reference holds ("purrs": df 0, weighted as df 1), a word the
# prediction repeats more often than any reference ("dog dog dog": clipped), references of different
# lengths (the length penalty), and predictions shorter than 4 words (no 3- or 4-grams: a zero norm).
CORPUS_PREDICTIONS = [
    "a dog dog dog barks at the mailman",
    "a cat purrs",
    "rain falls on a tin roof while a dog barks",
    "a man speaks",
]
CORPUS_REFERENCES = [
    ["a dog barks at the mailman", "the dog barks loudly at a man on a bike", "a dog"],
    ["a cat meows", "a small cat meows twice"],
    ["rain falls on a tin roof", "heavy rain on a roof"],
    ["a man speaks softly", "a man and a woman speak", "someone speaks"],
]


def test_cider_d_of_a_corpus_is_its_formula(cider):
    expected = cider_d(CORPUS_PREDICTIONS, CORPUS_REFERENCES)
    result = cider.compute(predictions=CORPUS_PREDICTIONS, references=CORPUS_REFERENCES)
    assert result["cider_per_clip"] == pytest.approx(expected, rel=1e-12)
    assert result["cider"] == pytest.approx(np.mean(expected), rel=1e-12)
    # The defaults are 4 orders and sigma 6, and other values reach the score.
    for max_order, sigma in [(1, 6.0), (2, 6.0), (4, 1.5), (3, 20.0), (4, 0.5)]:
        result = cider.compute(
            predictions=CORPUS_PREDICTIONS, references=CORPUS_REFERENCES, max_order=max_order, sigma=sigma
        )
        assert result["cider_per_clip"] == pytest.approx(
            cider_d(CORPUS_PREDICTIONS, CORPUS_REFERENCES, max_order, sigma), rel=1e-12
        ), (max_order, sigma)


def test_cider_d_weights_clipping_and_length_penalty_by_hand(cider):
    # N = 2. "dog" is in both clips' references (df 2, weight 0); "dog barks" and "barks" only in clip 1's
    # and "cat" only in clip 2's (weight w = log 2); "zebra" in none (weighted as df 1: w).
    # Clip 1, "dog dog barks zebra" against "dog barks": unigrams (0, w, w) against (0, w): clipped dot w^2,
    # norms sqrt(2) w and w: 1 / sqrt 2; bigrams ("dog dog" w, "dog barks" w, "barks zebra" w) against
    # ("dog barks" w): 1 / sqrt 3; no common 3-gram; lengths 4 and 2: exp(-4 / 72).
    # Clip 2, "cat cat" against "dog cat": unigrams (2w) against (0, w): min(2w, w) w / (2w * w) = 1/2.
    w = math.log(2)
    assert w > 0
    clip_1 = 10 * (1 / math.sqrt(2) + 1 / math.sqrt(3)) / 4 * math.exp(-4 / 72)
    clip_2 = 10 * (1 / 2) / 4
    result = cider.compute(
        predictions=["dog dog barks zebra", "cat cat"], references=["dog barks", "dog cat"]
    )
    assert result["cider_per_clip"] == pytest.approx([clip_1, clip_2], rel=1e-12)
    assert result["cider"] == pytest.approx((clip_1 + clip_2) / 2, rel=1e-12)
    # sigma 2: the same clip 1 loses exp(-4 / 8) instead.
    narrow = cider.compute(
        predictions=["dog dog barks zebra", "cat cat"], references=["dog barks", "dog cat"], sigma=2
    )
    assert narrow["cider_per_clip"][0] == pytest.approx(clip_1 / math.exp(-4 / 72) * math.exp(-4 / 8))


def test_cider_d_normalises_captions_and_takes_strings_lists_or_batches(cider):
    plain = cider.compute(predictions=CORPUS_PREDICTIONS, references=CORPUS_REFERENCES)
    styled = cider.compute(
        predictions=["A Dog, dog; DOG barks at the mailman!", *CORPUS_PREDICTIONS[1:]],
        references=[["A dog barks at the mailman.", *CORPUS_REFERENCES[0][1:]], *CORPUS_REFERENCES[1:]],
    )
    assert styled == plain
    # A lone reference string is a list of one; strings and lists may mix.
    as_lists = cider.compute(predictions=["a dog barks", "a cat"], references=[["a dog"], ["a cat meows"]])
    mixed = cider.compute(predictions=["a dog barks", "a cat"], references=["a dog", ["a cat meows"]])
    assert mixed == as_lists
    assert as_lists["cider_per_clip"] == pytest.approx(
        cider_d(["a dog barks", "a cat"], [["a dog"], ["a cat meows"]]), rel=1e-12
    )
    # Batches added first, then compute() without arguments.
    metric = _Cider()
    metric.add_batch(predictions=CORPUS_PREDICTIONS[:2], references=CORPUS_REFERENCES[:2])
    metric.add_batch(predictions=CORPUS_PREDICTIONS[2:], references=CORPUS_REFERENCES[2:])
    assert metric.compute() == plain


def test_cider_d_warns_only_for_a_single_clip(cider):
    with pytest.warns(UserWarning, match=r"^CIDEr-D of a single clip is 0: .* weight log\(1/1\) = 0$"):
        one = cider.compute(predictions=["a dog barks"], references=[["a dog barks"]])
    assert one == {"cider": 0.0, "cider_per_clip": [0.0]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        two = cider.compute(predictions=["a dog barks", "a cat"], references=["a dog barks", "a cat"])
    assert two["cider_per_clip"] == pytest.approx([10 * 3 / 4, 10 * 2 / 4], rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_order": 0}, "max_order must be a positive integer, got 0"),
        ({"max_order": -1}, "max_order must be a positive integer, got -1"),
        ({"max_order": 2.0}, "max_order must be a positive integer, got 2.0"),
        ({"max_order": True}, "max_order must be a positive integer, got True"),
        ({"sigma": 0}, "sigma must be positive, got 0"),
        ({"sigma": -1.0}, r"sigma must be positive, got -1.0"),
        ({"sigma": float("nan")}, "sigma must be positive, got nan"),
    ],
)
def test_cider_d_refuses_bad_settings(cider, kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        # (the module's _compute directly: through evaluate's compute a failing call waits a second on a lock)
        cider._compute(["a dog", "a cat"], ["a dog", "a cat"], **kwargs)


# -- helpers shared by both caption modules --------------------------------------------------------------


@pytest.mark.parametrize("module", [cider_module, bleu_module], ids=["cider", "bleu"])
def test_caption_normalisation_ngrams_and_corpus_checks(module):
    assert module.normalize_caption("A Dog's BARK, loud!") == ["a", "dogs", "bark", "loud"]
    assert module.normalize_caption("wind\u2019s  howl\t(high-pitched)") == [
        "winds",
        "howl",
        "high",
        "pitched",
    ]
    assert module.normalize_caption("\u201cRain\u201d \u2014 x") == ["rain", "x"]
    assert module.normalize_caption("") == []
    assert module.ngram_counts(["a", "b", "a", "b"], 3) == Counter(
        {("a",): 2, ("b",): 2, ("a", "b"): 2, ("b", "a"): 1, ("a", "b", "a"): 1, ("b", "a", "b"): 1}
    )
    assert module.ngram_counts(["a"], 2) == Counter({("a",): 1})
    assert module.check_corpus(["x", "y"], ["a", ("b", "c")]) == [["a"], ["b", "c"]]
    with pytest.raises(ValueError, match=r"^the corpus is empty: there are no predictions to score$"):
        module.check_corpus([], [])
    with pytest.raises(ValueError, match=r"^2 predictions but 1 reference entries: one entry \(a caption "):
        module.check_corpus(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"^prediction 1 \('b'\) has no reference caption$"):
        module.check_corpus(["a", "b"], [["a"], []])


@pytest.mark.parametrize("factory", [_Cider, _Bleu], ids=["cider", "bleu"])
def test_compute_refuses_a_bad_corpus_before_evaluate_sees_it(factory):
    # `evaluate` would fail on these with errors that do not say what is wrong.
    metric = factory()
    with pytest.raises(ValueError, match=r"^the corpus is empty: there are no predictions to score$"):
        metric.compute(predictions=[], references=[])
    with pytest.raises(ValueError, match=r"^prediction 1 \('b'\) has no reference caption$"):
        metric.compute(predictions=["a", "b"], references=[["a"], []])


@pytest.mark.parametrize(
    ("factory", "url"),
    [(_Cider, "https://github.com/vrama91/cider"), (_Bleu, "https://github.com/tylin/coco-caption")],
    ids=["cider", "bleu"],
)
def test_caption_metric_info(factory, url):
    metric = factory()
    module = cider_module if factory is _Cider else bleu_module
    assert metric.description == module._DESCRIPTION and metric.citation == module._CITATION
    assert metric.inputs_description == module._KWARGS and metric.reference_urls == [url]
    # Several references per prediction (a list of strings), or one as a plain string.
    several, one = metric.features
    assert set(several) == set(one) == {"predictions", "references"}
    assert several["predictions"].dtype == one["predictions"].dtype == "string"
    assert several["references"].feature.dtype == one["references"].dtype == "string"


# -- BLEU ------------------------------------------------------------------------------------------------


def test_bleu_of_a_corpus_by_hand(bleu):
    predictions = ["the cat the cat sat", "a dog"]
    references = [
        # Clipping takes an n-gram's largest count in any single reference, not the sum over references:
        # "cat" and "the cat" count once, not twice. The closest reference length to 5 words is 5.
        ["the cat and the hat", "the cat sat down"],
        # lengths 1 and 3 are equally far from 2: the shorter (1) counts
        ["dog", "a dog barks"],
    ]
    # Clip 1 unigrams: the x2 (ref max 2), cat x2 (ref max 1), sat x1 (1): 2 + 1 + 1 = 4 of 5.
    # Bigrams: "the cat" x2 (max 1), "cat the" (0), "cat sat" (1): 2 of 4. Trigrams: "the cat the" 0,
    # "cat the cat" 0, "the cat sat" 1: 1 of 3. 4-grams: 0 of 2.
    # Clip 2: "a", "dog", "a dog": unigrams 2 of 2, bigrams 1 of 1, no 3- or 4-gram.
    matches, candidates = [6, 3, 1, 0], [7, 5, 3, 2]
    prediction_length, reference_length = 7, 5 + 1
    result = bleu.compute(predictions=predictions, references=references)
    assert result["prediction_length"] == prediction_length and result["reference_length"] == reference_length
    ratio = (7 + TINY) / (6 + SMALL)
    assert result["length_ratio"] == pytest.approx(ratio, rel=1e-15) and result["brevity_penalty"] == 1.0
    log_p = 0.0
    for n in range(1, 5):
        log_p += math.log((matches[n - 1] + TINY) / (candidates[n - 1] + SMALL))
        assert result[f"bleu_{n}"] == pytest.approx(math.exp(log_p / n), rel=1e-12), n
    assert set(result) == {
        "bleu_1",
        "bleu_2",
        "bleu_3",
        "bleu_4",
        "brevity_penalty",
        "length_ratio",
        "prediction_length",
        "reference_length",
    }


def test_bleu_brevity_penalty_and_orders(bleu):
    # 3 predicted words against the closest reference lengths 4 and 3 (7): penalty exp(1 - 7/3); every
    # n-gram matches, so each BLEU-n is the penalty.
    predictions, references = ["a dog barks", "rain"], [["a dog barks now"], ["rain falls on"]]
    result = bleu.compute(predictions=predictions, references=references, max_order=2)
    ratio = (4 + TINY) / (7 + SMALL)
    bp = math.exp(1 - 1 / ratio)
    assert set(result) == {"bleu_1", "bleu_2", "brevity_penalty", "length_ratio"} | {
        "prediction_length",
        "reference_length",
    }
    assert result["brevity_penalty"] == pytest.approx(bp, rel=1e-12)
    assert result["bleu_1"] == pytest.approx(bp * (4 + TINY) / (4 + SMALL), rel=1e-12)
    # Bigrams: "a dog", "dog barks" of clip 1; "rain" has none (max(0, 1 - 2 + 1) = 0 candidates).
    assert result["bleu_2"] == pytest.approx(
        bp * ((4 + TINY) / (4 + SMALL) * (2 + TINY) / (2 + SMALL)) ** 0.5
    )
    # max_order 1: only BLEU-1; a corpus with no 4-gram at all has the 4-gram precision TINY / SMALL.
    only_1 = bleu.compute(predictions=predictions, references=references, max_order=1)
    assert set(only_1) == set(result) - {"bleu_2"} and only_1["bleu_1"] == result["bleu_1"]
    short = bleu.compute(predictions=["a dog", "rain"], references=[["a dog"], ["rain"]])
    assert short["brevity_penalty"] == pytest.approx(math.exp(1 - (3 + SMALL) / (3 + TINY)), rel=1e-12)
    expected_4 = (
        short["brevity_penalty"]
        * ((3 + TINY) / (3 + SMALL) * (1 + TINY) / (1 + SMALL) * (TINY / SMALL) ** 2) ** 0.25
    )
    assert short["bleu_4"] == pytest.approx(expected_4, rel=1e-9)


def test_bleu_takes_strings_lists_or_batches(bleu):
    as_lists = bleu.compute(predictions=["a dog barks", "rain"], references=[["a dog barks"], ["rain falls"]])
    mixed = bleu.compute(predictions=["a dog barks", "rain"], references=["a dog barks", ["rain falls"]])
    assert mixed == as_lists
    metric = _Bleu()
    metric.add_batch(predictions=["a dog barks"], references=[["a dog barks"]])
    metric.add_batch(predictions=["rain"], references=[["rain falls"]])
    assert metric.compute() == as_lists


@pytest.mark.parametrize("max_order", [0, -2, 1.0, True])
def test_bleu_refuses_a_bad_max_order(bleu, max_order):
    with pytest.raises(ValueError, match=f"^max_order must be a positive integer, got {max_order!r}$"):
        bleu._compute(["a dog"], ["a dog"], max_order=max_order)


def test_bleu_closest_reference_length_prefers_the_shorter_on_a_tie():
    assert bleu_module._closest_length([1, 3], 2) == 1
    assert bleu_module._closest_length([3, 1], 2) == 1
    assert bleu_module._closest_length([6, 2, 5], 4) == 5
    assert bleu_module._closest_length([2, 9], 7) == 9


# -- AudioSet mAP ----------------------------------------------------------------------------------------


def _average_precision(scores, positives):
    """Mean over the positives of the precision at each one's rank (scores without ties)."""
    order = np.argsort(-scores)
    hits = positives[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return precision[hits].mean()


def test_map_is_the_mean_ap_over_classes_with_a_positive(audioset_map):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(12, 5))
    # Class 2 has no positive (left out); class 4 exactly one; references may hold counts above 1.
    references = np.zeros((12, 5), dtype=int)
    references[[0, 3, 5, 7], 0] = 1
    references[[1, 2, 8], 1] = 2
    references[[4, 6, 9, 10, 11], 3] = 1
    references[[5], 4] = 1
    result = audioset_map.compute(predictions=scores.tolist(), references=references.tolist())
    scores32 = scores.astype(np.float32).astype(np.float64)  # the module's features are float32
    aps = [_average_precision(scores32[:, c], references[:, c] >= 1) for c in (0, 1, 3, 4)]
    assert aps == pytest.approx(
        [average_precision_score(references[:, c] >= 1, scores32[:, c]) for c in (0, 1, 3, 4)], rel=1e-12
    )
    assert result["mAP"] == pytest.approx(np.mean(aps), rel=1e-9)
    assert result == {"mAP": result["mAP"], "num_classes_evaluated": 4, "num_clips": 12}
    assert type(result["mAP"]) is float and type(result["num_clips"]) is int


def test_map_by_hand_and_without_positives(audioset_map):
    # Class 0: positives ranked 1st and 3rd: (1/1 + 2/3) / 2; class 1: its one positive ranked 2nd: 1/2.
    scores = [[0.9, 0.1], [0.8, 0.7], [0.4, 0.9], [0.1, 0.2]]
    references = [[1, 0], [0, 1], [1, 0], [0, 0]]
    result = audioset_map.compute(predictions=scores, references=references)
    assert result["mAP"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 2) / 2, rel=1e-9)
    assert (result["num_classes_evaluated"], result["num_clips"]) == (2, 4)
    with pytest.raises(ValueError, match="^no class has a positive example: mAP is undefined$"):
        audioset_map.compute(predictions=scores, references=[[0, 0]] * 4)


def test_map_metric_info():
    # A fresh instance: mutmut credits `_info` (run in __init__) to the test that builds the metric.
    audioset_map = map_module.AudiosetMap()
    assert audioset_map.description == map_module._DESCRIPTION and audioset_map.citation == ""
    assert audioset_map.inputs_description == map_module._KWARGS
    features = audioset_map.features
    assert features["predictions"].feature.dtype == "float32"
    assert features["references"].feature.dtype == "int32"
