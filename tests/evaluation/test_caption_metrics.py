"""The caption metrics as `evaluate` modules loaded offline from their paths: BLEU-1..4 and CIDEr-D against
values computed by hand from coco-caption's definitions, their edge cases, and their shared normalisation."""

import importlib.util
import math

import evaluate
import pytest

from hf_audiorep.evaluation.captioning import BLEU_METRIC_PATH, CIDER_METRIC_PATH, caption_metrics

# coco-caption's smoothing of a precision, (matches + 1e-15) / (candidates + 1e-9): hand values that hold a
# zero precision carry it.
TINY = 1e-15


@pytest.fixture(scope="module")
def bleu():
    return evaluate.load(BLEU_METRIC_PATH)


@pytest.fixture(scope="module")
def cider():
    return evaluate.load(CIDER_METRIC_PATH)


def _module(path):
    spec = importlib.util.spec_from_file_location(path.rsplit("/", 1)[-1].removesuffix(".py"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- BLEU -------------------------------------------------------------------------------------------------


def test_bleu_of_a_two_caption_corpus_by_hand(bleu):
    predictions = ["the the the dog", "a cat sits"]
    references = [
        # 3 and 5 words are equally close to 4: the shorter counts (not the shortest, "dog")
        ["the dog barks", "a dog and the cat", "dog"],
        # "sits" is only in the second reference: clipping takes each n-gram's count in any reference
        ["a cat is sitting on a mat", "a cat sits on the mat"],
    ]
    # Clipped matches per order over the corpus: "the" counts once (at most once in any one reference),
    # so unigrams 2 + 3, bigrams ("the dog"; "a cat", "cat sits") 1 + 2, trigrams 0 + 1, 4-grams 0.
    # Candidates: 4 + 3, 3 + 2, 2 + 1, 1 + 0. Lengths: 7 predicted against 3 + 6 closest reference words.
    bp = math.exp(1 - 9 / 7)
    expected = {
        "bleu_1": bp * 5 / 7,
        "bleu_2": bp * (5 / 7 * 3 / 5) ** (1 / 2),
        "bleu_3": bp * (5 / 7 * 3 / 5 * 1 / 3) ** (1 / 3),
        "bleu_4": bp * (5 / 7 * 3 / 5 * 1 / 3 * TINY / 1) ** (1 / 4),
    }
    result = bleu.compute(predictions=predictions, references=references)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-6), name
    assert result["brevity_penalty"] == pytest.approx(bp, rel=1e-9)
    assert (result["prediction_length"], result["reference_length"]) == (7, 9)


def test_bleu_is_one_for_a_perfect_corpus_and_zero_for_a_disjoint_one(bleu):
    references = [["a dog barks twice in the rain", "rain falls"], ["a woman speaks over loud music"]]
    perfect = bleu.compute(
        predictions=["a dog barks twice in the rain", "a woman speaks over loud music"], references=references
    )
    disjoint = bleu.compute(
        predictions=["engines idle nearby quietly now", "birds chirp at dawn outside"], references=references
    )
    for n in range(1, 5):
        assert perfect[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-8)
        assert disjoint[f"bleu_{n}"] < 1e-9


def test_bleu_takes_a_reference_string_or_a_list(bleu):
    as_strings = bleu.compute(
        predictions=["a dog barks", "rain"], references=["a dog barks loudly", "rain falls"]
    )
    as_lists = bleu.compute(
        predictions=["a dog barks", "rain"], references=[["a dog barks loudly"], ["rain falls"]]
    )
    mixed = bleu.compute(
        predictions=["a dog barks", "rain"], references=["a dog barks loudly", ["rain falls"]]
    )
    assert as_strings == as_lists == mixed


def test_bleu_ignores_case_and_punctuation(bleu):
    plain = bleu.compute(
        predictions=["a dogs bark is heard"], references=[["the dogs bark is heard far away"]]
    )
    styled = bleu.compute(
        predictions=["A dog's bark is heard!"], references=[["The dog's bark is heard, far away."]]
    )
    assert plain == styled


# -- CIDEr-D ----------------------------------------------------------------------------------------------


def test_cider_d_of_a_two_clip_corpus_by_hand(cider):
    # N = 2 clips. "a" is in both clips' references: df = 2, weight log(2/2) = 0. Every other n-gram is in
    # one: weight log 2. Clip 1 repeats its reference: cosine 1 for n = 1, 2, 3 and no 4-gram (0), no length
    # penalty: 10 * 3/4. Clip 2 ("a cat" for "a cat meows"): unigrams (0, w) against (0, w, w) and bigrams
    # (w) against (w, w) have cosine 1/sqrt(2); no trigram or 4-gram; one word short: exp(-1 / (2 * 6^2)).
    clip_1 = 10 * 3 / 4
    clip_2 = 10 * (2 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    result = cider.compute(
        predictions=["a dog barks", "a cat"], references=[["a dog barks"], ["a cat meows"]]
    )
    assert result["cider_per_clip"] == pytest.approx([clip_1, clip_2], rel=1e-12)
    assert result["cider"] == pytest.approx((clip_1 + clip_2) / 2, rel=1e-12)


def test_cider_d_clips_a_repeated_word_at_the_reference_count(cider):
    # Both clips' n-grams occur in one clip each: weight w = log 2. "dog dog" against "dog barks": unigrams
    # (2w) against (w, w); the clipped dot product is min(2w, w) * w = w^2, the norms 2w and sqrt(2) w, so the
    # cosine is 1 / (2 sqrt 2) (unclipped it would be 1 / sqrt 2); no bigram in common, same length.
    result = cider.compute(predictions=["dog dog", "cat"], references=[["dog barks"], ["cat meows"]])
    assert result["cider_per_clip"] == pytest.approx(
        [10 * (1 / (2 * math.sqrt(2))) / 4, 10 * (1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)], rel=1e-12
    )


def test_cider_d_averages_the_references_of_a_clip(cider):
    references = [["a dog barks at a cat"], ["rain falls on a tin roof"], ["a man speaks softly"]]

    def score(prediction, refs):
        return cider.compute(predictions=[prediction, "rain", "a man"], references=refs)["cider_per_clip"][0]

    single = score("a dog barks", references)
    # Two identical references count as one (their mean), not twice (a sum); df counts the clip once.
    twice = [["a dog barks at a cat", "a dog barks at a cat"], *references[1:]]
    assert score("a dog barks", twice) == pytest.approx(single, rel=1e-12)
    # A second, unrelated reference halves the clip's score.
    other = [["a dog barks at a cat", "zz yy xx"], *references[1:]]
    assert score("a dog barks", other) == pytest.approx(single / 2, rel=1e-12)


def test_cider_d_is_highest_for_the_reference_itself_and_punishes_order_and_length(cider):
    references = [["a dog barks loudly at the mail carrier"], ["rain falls on a tin roof"], ["a man speaks"]]

    def score(prediction):
        return cider.compute(predictions=[prediction, "rain", "a man"], references=references)[
            "cider_per_clip"
        ][0]

    exact = score("a dog barks loudly at the mail carrier")
    shuffled = score("the mail carrier barks loudly at a dog")  # same words: only the n > 1 grams change
    shorter = score("a dog barks loudly")
    longer = score("a dog barks loudly at the mail carrier " + "and then runs away down the long street " * 2)
    assert exact == pytest.approx(10.0, rel=1e-12)  # identical, every order present, no length penalty
    assert exact > max(shuffled, shorter, longer)
    assert shuffled > 0
    # The Gaussian length penalty alone: the same n-grams 20 words longer lose exp(-20^2 / 72) of the score.
    padded = score("a dog barks loudly at the mail carrier" + " zz" * 20)
    assert padded < exact * math.exp(-(20**2) / 72) + 1e-9


def test_cider_d_of_one_clip_is_zero_and_says_why(cider):
    with pytest.warns(UserWarning, match="single clip"):
        result = cider.compute(predictions=["a dog barks"], references=[["a dog barks"]])
    assert result["cider"] == 0.0


# -- both -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [BLEU_METRIC_PATH, CIDER_METRIC_PATH], ids=["bleu", "cider"])
@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ([], [], "corpus is empty"),
        (["a dog", "a cat"], [["a dog"]], "2 predictions but 1 reference"),
        (["a dog", "a cat"], [["a dog"], []], r"prediction 1 \('a cat'\) has no reference"),
    ],
    ids=["empty", "mismatched", "no-reference"],
)
def test_bad_corpora_are_refused_with_the_reason(path, predictions, references, message):
    metric = evaluate.load(path)
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=predictions, references=references)


def test_both_modules_normalise_captions_the_same_way():
    bleu_module, cider_module = _module(BLEU_METRIC_PATH), _module(CIDER_METRIC_PATH)
    texts = [
        "A Dog's bark, LOUD!",
        "high-pitched  beeps\t(three of them)...",
        "Rain \u2014 heavy \u201crain\u201d on the roof; wind\u2019s howling",
        "",
    ]
    for text in texts:
        assert bleu_module.normalize_caption(text) == cider_module.normalize_caption(text), text
    assert bleu_module.normalize_caption(texts[0]) == ["a", "dogs", "bark", "loud"]
    assert bleu_module.normalize_caption(texts[1]) == ["high", "pitched", "beeps", "three", "of", "them"]


def test_caption_metrics_returns_bleu_1_to_4_and_cider():
    predictions = ["a dog barks", "a cat"]
    references = [["a dog barks"], "a cat meows"]
    metrics = caption_metrics(predictions, references)
    assert list(metrics) == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "cider"]
    expected_bleu = evaluate.load(BLEU_METRIC_PATH).compute(predictions=predictions, references=references)
    for n in range(1, 5):
        assert metrics[f"bleu_{n}"] == expected_bleu[f"bleu_{n}"]
    assert metrics["cider"] == pytest.approx((10 * 3 / 4 + 10 * math.sqrt(2) / 4 * math.exp(-1 / 72)) / 2)
