"""The tag extractors' values by hand: which tags come out of which caption, normalisation, stop words,
terms and their thresholds (document counts, normalised PMI), the order, and the LLM answer parser.

inflect and scikit-learn's text module are imported here, at collection, although the module under test
imports them lazily: mutmut forks every mutant from a server that has collected the tests, and without
this each mutant paid their import (several seconds)."""

import math
from collections.abc import Mapping
from types import SimpleNamespace
from unittest import mock

import inflect  # noqa: F401
import pytest
import sklearn.feature_extraction.text
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from hf_audiorep.data.tags.extract import (
    DEFAULT_TAG_PROMPT,
    KeywordTagExtractor,
    LLMTagExtractor,
    TagExtractor,
    _agreement_patterns,
    _base_candidates,
    _is_clause,
    _is_json,
    _json_items,
    _model_name,
    _npmi,
    _preprocess,
    generated_text,
    make_extractor,
    parse_generated_tags,
    singularize,
    split_tags,
)

F, T = False, True

# ------------------------------------------------------------------------------------------------ words


def test_preprocess_folds_width_ligatures_case_quotes_and_accents():
    assert _preprocess("Ｃａｆé ＤＯＧ’s ‘ﬁne’ Ñoño") == "cafe dog's 'fine' nono"


@pytest.mark.parametrize(
    "word, expected",
    [
        ("barking", ["bark", "barke"]),
        ("clapping", ["clapp", "clappe", "clap"]),  # doubled consonant
        ("slammed", ["slamm", "slamme", "slam"]),
        ("carried", ["carri", "carrie", "carry"]),  # -ied -> -y, for -ed only
        ("skiing", ["ski", "skie"]),
        ("seeing", ["see", "seee"]),  # "se" is too short
        ("speed", ["spe", "spee"]),
        ("loudly", ["loud", "loude", "loudle"]),
        ("noisily", ["noisi", "noisie", "noisile", "noisy"]),
        ("early", ["ear", "eare", "earle"]),
        ("gently", ["gent", "gente", "gentle"]),
        ("bring", []),  # too short for -ing
        ("fled", []),  # too short for -ed
        ("only", []),  # too short for -ly
        ("dog", []),
    ],
)
def test_base_candidates_by_hand(word, expected):
    assert _base_candidates(word) == expected


# ------------------------------------------------------------------------------------------ the interface


class Upper(TagExtractor):
    def extract(self, caption):
        return [caption.upper()]


class Batched(TagExtractor):
    def __init__(self):
        self.batches = []

    def extract_batch(self, captions):
        self.batches.append(list(captions))
        return [[c, "x"] for c in captions]


def test_the_base_class_routes_single_captions_and_batches():
    upper = Upper()
    assert upper.fit(["a"]) is upper
    assert upper.extract_batch(["a", "b"]) == [["A"], ["B"]]
    assert upper("a") == ["A"] and upper(["a", "b"]) == [["A"], ["B"]] and upper(("c",)) == [["C"]]
    assert upper.describe() == {"type": "Upper"}
    batched = Batched()
    assert batched.extract("dog") == ["dog", "x"] and batched.batches == [["dog"]]


def test_split_tags_by_hand():
    assert split_tags("Dog; Barking ,x; ;") == ["dog", "barking ,x"]  # ";" wins over ","
    assert split_tags("Dog,  Rain  Falling ,dog") == ["dog", "rain falling"]
    # a list: its strings are tags as they are (not split), nested lists and None are read recursively
    assert split_tags(["A;B", ["Ｃａｔ", None, ("dog", "A;B")]]) == ["a;b", "cat", "dog"]
    assert split_tags("") == [] and split_tags("café") == ["cafe"] and split_tags(None) == []
    with pytest.raises(ValueError, match=r"^cannot read tags from a int: 5$"):
        split_tags(5)


# ------------------------------------------------------------------------------------ the keyword extractor


def test_keyword_extractor_settings_are_checked_and_described():
    for bad, message in [
        ({"min_term_df": 0}, r"^min_term_df must be >= 1, got 0$"),
        ({"min_term_npmi": 1.5}, r"^min_term_npmi must be in \[-1, 1\], got 1.5$"),
        ({"min_term_npmi": -1.5}, r"^min_term_npmi must be in \[-1, 1\], got -1.5$"),
    ]:
        with pytest.raises(ValueError, match=message):
            KeywordTagExtractor(**bad)
    for edge in ({"min_term_df": 1}, {"min_term_npmi": 1.0}, {"min_term_npmi": -1.0}):
        KeywordTagExtractor(**edge)
    assert KeywordTagExtractor().describe() == {
        "type": "KeywordTagExtractor",
        "stop_words": "sklearn ENGLISH_STOP_WORDS - sound words + caption filler + count words",
        "extra_stop_words": [],
        "keep_words": [],
        "min_term_df": 3,
        "min_term_npmi": 0.5,
        "keep_term_parts": False,
        "max_tags": None,
        "fitted_on_captions": 0,
        "terms": [],
    }
    custom = KeywordTagExtractor(
        extra_stop_words=["Hall", "Café"],
        keep_words=["The"],
        min_term_df=2,
        min_term_npmi=0.25,
        keep_term_parts=True,
        max_tags=4,
    )
    described = custom.describe()
    assert (described["extra_stop_words"], described["keep_words"]) == (["cafe", "hall"], ["the"])
    assert [described[k] for k in ("min_term_df", "min_term_npmi", "keep_term_parts", "max_tags")] == [
        2,
        0.25,
        True,
        4,
    ]
    assert "hall" in custom.stop_words and "cafe" in custom.stop_words and "the" not in custom.stop_words
    assert custom.phrases("The hall fire") == [[("the", "the")], [("fire", "fire")]]


def test_the_default_stop_list():
    stop = KeywordTagExtractor().stop_words
    assert "the" in ENGLISH_STOP_WORDS and "the" in stop
    # scikit-learn's sound words stay content words; caption filler and count words are stop words
    for word in ("fire", "cry", "call", "thick", "top"):
        assert word in ENGLISH_STOP_WORDS and word not in stop
    for word in ("sound", "recording", "heard", "followed", "two", "several", "seven", "single"):
        assert word in stop
    assert "sound" not in ENGLISH_STOP_WORDS and "single" not in ENGLISH_STOP_WORDS


@pytest.mark.parametrize(
    "word, expected",
    [
        ("dogs", "dog"),
        ("cats", "cat"),
        ("barks", "bark"),  # a verb's -s too
        ("children", "child"),  # irregular plurals
        ("women", "woman"),
        ("mice", "mouse"),
        ("teeth", "tooth"),
        ("hand-claps", "hand-clap"),  # the last part of a hyphenated word
        ("low-pitched", "low-pitched"),
        ("people", "people"),
        ("ads", "ads"),  # too short to tell
        ("lens", "lens"),  # endings that are no plural
        ("gas", "gas"),
        ("physics", "physics"),
        ("basis", "basis"),
        ("cosmos", "cosmos"),
        ("glass", "glass"),
        ("glasses", "glass"),
    ],
)
def test_singularize_by_hand(word, expected):
    assert singularize(word) == expected


def test_phrases_by_hand():
    phrases = KeywordTagExtractor().phrases(
        "The dog's bark, two cats' meows & 3 birds; x ox mp3 rock'n'roll ' persons hums"
    )
    assert phrases == [
        [("dog", "dog"), ("bark", "bark")],  # possessive cut; "the" a stop word
        [("two", "two"), ("cats", "cat")],  # a count word kept; a lone "'" ends the phrase
        [("meows", "meow")],
        [("birds", "bird")],  # "3" ends a phrase, ";" too
        [("ox", "ox")],  # "x" too short, "ox" not; "mp3" has a digit
        [("rocknroll", "rocknroll")],  # inner apostrophes dropped
        [("hums", "hum")],  # "persons" -> "person", caption filler
    ]
    assert KeywordTagExtractor().phrases(None) == [] and KeywordTagExtractor().phrases("the of") == []


# Six captions: acoustic in 4, guitar in 3, the pair in 3 (twice in the third caption), rain in 3.
FIT = [
    "An acoustic guitar plays, acoustic.",
    "Acoustic guitars and rain.",
    "Rain on an acoustic guitar; acoustic guitar.",
    "Acoustic music.",
    "Rain.",
    "Thunder.",
]
NPMI_GUITAR = math.log(3 * 6 / (4 * 3)) / -math.log(3 / 6)  # log 1.5 / log 2 = 0.585
NPMI_MUSIC = math.log(1 * 6 / (4 * 1)) / -math.log(1 / 6)  # log 1.5 / log 6 = 0.226


def test_fit_counts_documents_and_keeps_pairs_by_df_and_npmi():
    default = KeywordTagExtractor().fit(FIT)
    assert default.num_fitted == 6 and default.describe()["fitted_on_captions"] == 6
    assert default.vocabulary == {"acoustic", "guitar", "play", "rain", "music", "thunder"}
    assert default.terms == {("acoustic", "guitar"): "acoustic guitar"}
    assert default.term_npmi == {("acoustic", "guitar"): pytest.approx(NPMI_GUITAR, abs=1e-12)}
    assert default.extract_batch(FIT) == [
        ["acoustic guitar", "play", "acoustic"],
        ["acoustic guitar", "rain"],
        ["rain", "acoustic guitar"],
        ["acoustic", "music"],
        ["rain"],
        ["thunder"],
    ]
    # the npmi threshold (0.585 is below 0.6) and the df threshold (3 captions, not 4)
    assert KeywordTagExtractor(min_term_npmi=0.6).fit(FIT).terms == {}
    assert KeywordTagExtractor(min_term_df=4).fit(FIT).terms == {}
    # every pair once: "guitar play" is a clause ("a guitar plays"), "acoustic music" passes npmi -1
    everything = KeywordTagExtractor(min_term_df=1, min_term_npmi=-1.0).fit(FIT)
    assert everything.terms == {
        ("acoustic", "guitar"): "acoustic guitar",
        ("acoustic", "music"): "acoustic music",
    }
    assert everything.term_npmi[("acoustic", "music")] == pytest.approx(NPMI_MUSIC, abs=1e-12)
    assert everything.describe()["terms"] == ["acoustic guitar", "acoustic music"]


def test_a_pair_in_every_caption_has_npmi_one_and_meets_a_threshold_of_one():
    fitted = KeywordTagExtractor(min_term_df=2, min_term_npmi=1.0).fit(
        ["Church bells.", "A church bell rings."]
    )
    assert fitted.terms == {("church", "bell"): "church bell"} and fitted.term_npmi[("church", "bell")] == 1.0


def test_fit_edge_cases():
    with pytest.raises(ValueError, match="^cannot fit a tag extractor on no captions$"):
        KeywordTagExtractor().fit([])
    fitted = KeywordTagExtractor().fit(FIT)
    # not one content word: no vocabulary, no terms, and the earlier fit is forgotten
    assert fitted.fit(["The sound of it.", None]) is fitted
    assert (fitted.vocabulary, fitted.terms, fitted.term_npmi, fitted.num_fitted) == (frozenset(), {}, {}, 2)
    # hyphenated surfaces join the vocabulary next to their singular
    hyphens = KeywordTagExtractor().fit(["Hand-claps and low-pitched hums.", None])
    assert hyphens.vocabulary == {"hand-clap", "hand-claps", "low-pitched", "hum"}
    assert hyphens.terms == {} and hyphens.num_fitted == 2


def test_count_words_clauses_and_participles_in_fit():
    # two count words are no term; a count word and a noun are
    assert KeywordTagExtractor().fit(["Two hundred.", "Two hundred.", "Two hundred.", "Rain."]).terms == {}
    one = KeywordTagExtractor().fit(["One dog.", "One dog.", "One dog.", "Rain."])
    assert one.terms == {("one", "dog"): "one dog"} and one("one dog barks") == ["one dog", "bark"]
    # the count's noun is spelled as the captions spell it ("many dogs")
    many = KeywordTagExtractor().fit(["Many dog.", "Many dog.", "Many dogs.", "Rain."])
    assert many.terms == {("many", "dog"): "many dogs"}
    # a count word before a plural is a term, not a clause ("two voices" is no "a dog barks")
    voices = KeywordTagExtractor().fit(["Two voices talk.", "Two voices.", "Two voices hum.", "Rain."])
    assert voices.terms == {("two", "voice"): "two voices"}
    assert voices("two voices in a hall") == ["two voices", "hall"]
    # subject + verb by agreement is a clause, in either number; a participle before a plural is a term
    assert KeywordTagExtractor().fit(["A dog barks."] * 3 + ["Rain."]).terms == {}
    assert KeywordTagExtractor().fit(["Logs crackle."] * 3 + ["Rain."]).terms == {}
    plucked = KeywordTagExtractor().fit(
        ["Plucked strings.", "Plucked strings ring.", "Plucked strings.", "Rain."]
    )
    assert plucked.terms == {("plucked", "string"): "plucked string"}
    assert plucked.term_npmi[("plucked", "string")] == pytest.approx(1.0, abs=1e-12)  # log(4/3) / log(4/3)


def test_agreement_patterns_and_clauses_by_hand():
    phrases = [
        [[("dogs", "dog"), ("bark", "bark"), ("loudly", "loudly")]],
        [[("dog", "dog"), ("barks", "bark")]],
        [[("dog", "dog")]],
    ]
    assert _agreement_patterns(phrases) == {("dog", "bark"): {(T, F), (F, T)}, ("bark", "loudly"): {(F, F)}}
    assert _is_clause("dog", set()) is False
    assert _is_clause("dog", {(F, T)}) is True  # a dog barks
    assert _is_clause("log", {(T, F)}) is True  # logs crackle
    assert _is_clause("dog", {(F, T), (T, F)}) is True
    assert _is_clause("plucked", {(F, T)}) is False  # plucked strings
    assert _is_clause("barking", {(F, T)}) is False
    assert _is_clause("plucked", {(T, F)}) is True
    assert _is_clause("plucked", {(F, T), (T, F)}) is False
    assert _is_clause("dog", {(F, F)}) is False and _is_clause("dog", {(F, T), (F, F)}) is False
    assert _is_clause("dog", {(T, T)}) is False


def test_npmi_by_hand():
    assert _npmi(3, 3, 3, 3) == 1.0 and _npmi(4, 4, 4, 3) == 1.0
    assert _npmi(2, 3, 2, 6) == pytest.approx(math.log(2) / math.log(3), abs=1e-12)
    assert _npmi(1, 4, 1, 6) == pytest.approx(NPMI_MUSIC, abs=1e-12)
    assert _npmi(1, 2, 2, 4) == pytest.approx(0.0, abs=1e-12)  # independent


def test_spelling_of_terms():
    extractor = KeywordTagExtractor()
    extractor.vocabulary = frozenset({"hand-clap"})
    assert extractor._spell("hand", "clap", {}) == "hand-clap"  # the caption set writes it so
    assert extractor._spell("low", "pitched", {}) == "low-pitched"  # a compound adjective
    assert extractor._spell("fast", "moving", {}) == "fast-moving"
    assert extractor._spell("low", "hum", {}) == "low hum"
    assert extractor._spell("loud", "pitched", {}) == "loud pitched"
    assert extractor._spell("acoustic", "guitar", {"guitar": "guitars"}) == "acoustic guitar"
    assert extractor._spell("two", "dog", {"dog": "dogs"}) == "two dogs"
    assert extractor._spell("two", "cat", {}) == "two cat"


def test_base_form_takes_the_first_known_candidate():
    extractor = KeywordTagExtractor()
    assert extractor._base_form("clapping", {"clap", "clappe"}) == "clappe"
    assert extractor._base_form("clapping", {"clap"}) == "clap"
    assert extractor._base_form("clapping", set()) == "clapping"
    fitted = KeywordTagExtractor().fit(["Dogs bark."])
    assert fitted("Barking loudly") == ["bark", "loudly"]  # "bark" from the caption set
    assert KeywordTagExtractor()("Barking loudly") == ["barking", "loudly"]
    assert KeywordTagExtractor()("Barking loudly, a loud bark") == ["bark", "loud"]  # from the caption itself
    assert KeywordTagExtractor().fit(["A gentle hum."])("Rain falls gently") == ["rain", "fall", "gentle"]


def with_terms(npmi: dict, **kwargs) -> KeywordTagExtractor:
    extractor = KeywordTagExtractor(**kwargs)
    extractor.terms = {pair: " ".join(pair) for pair in npmi}
    extractor.term_npmi = dict(npmi)
    return extractor


def test_overlapping_terms_keep_the_more_exclusive_pair():
    cosy, living = ("cosy", "living"), ("living", "room")
    assert with_terms({cosy: 0.6, living: 0.8})("a cosy living room") == ["cosy", "living room"]
    assert with_terms({cosy: 0.8, living: 0.6})("a cosy living room") == ["cosy living", "room"]
    assert with_terms({cosy: 0.7, living: 0.7})("a cosy living room") == ["cosy living", "room"]  # a tie
    assert with_terms({living: 0.7})("a cosy living room, living room") == ["cosy", "living room"]


def test_term_parts_counts_and_max_tags():
    terms = {("barking", "dog"): 0.5, ("one", "cat"): 0.5}
    caption = "barking dogs, one cat; a dog barks"
    assert with_terms(terms)(caption) == ["barking dog", "one cat", "dog", "bark"]
    parts = with_terms(terms, keep_term_parts=True)
    assert parts(caption) == ["barking dog", "bark", "dog", "one cat", "cat"]  # no count word, base forms
    assert KeywordTagExtractor()("two dogs and one") == ["dog"]  # a count alone is no tag
    assert KeywordTagExtractor(max_tags=1)("dog cat") == ["dog"]
    assert KeywordTagExtractor(max_tags=0)("dog cat") == []
    assert KeywordTagExtractor(max_tags=5)("dog cat") == ["dog", "cat"]


# ------------------------------------------------------------------------------------------- LLM answers


def test_generated_text_by_hand():
    assert generated_text(None) == "" and generated_text("x") == "x" and generated_text(42) == "42"
    assert generated_text({"generated_text": "a"}) == "a"
    assert generated_text({"content": "b"}) == "b" and generated_text({"text": "c"}) == "c"
    assert generated_text({"other": "d"}) == ""
    assert generated_text({"text": "t", "generated_text": "g"}) == "g"
    assert generated_text({"text": "t", "content": "c"}) == "c"
    assert generated_text([]) == ""
    chat = [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert generated_text(chat) == "a2"
    assert generated_text([{"role": "user", "content": "u"}, {"role": "system", "content": "s"}]) == "s"
    assert generated_text([{"role": "assistant"}]) == ""
    # the last assistant turn, not the last turn; without one, the last turn
    turns = [
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "v"},
    ]
    assert generated_text(turns) == "a"
    no_answer = [
        {"role": "user", "content": "u"},
        {"role": "system", "content": "s"},
        {"role": "tool", "content": "t"},
    ]
    assert generated_text(no_answer) == "t"
    assert generated_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "a\nb"
    assert generated_text(["a", "b"]) == "a\nb" and generated_text(("a", "b")) == "a\nb"
    assert generated_text([{"generated_text": "x"}, 5]) == "x"


def test_json_items_by_hand():
    assert _json_items("dog, cat") is None
    assert _json_items('["a"]') == ["a"]
    assert _json_items('["a"].') == ["a"]
    assert _json_items('Tags {"Tags": ["x", "y"]} done') == ["x", "y"]
    assert _json_items('a {"tag": ["x"]}') == ["x"]
    assert _json_items('{"LABELS": ["z"]}') == ["z"]
    assert _json_items('{"other": ["x"]}') is None
    assert _json_items("[1, 2]") is None and _json_items('["a", 1]') is None
    assert _json_items("[owl]!") is None
    # from the first opening bracket of either kind to the last closing one
    assert _json_items('["a", "[b"]') == ["a", "[b"]
    assert _json_items('["a]", "b"]') == ["a]", "b"]
    assert _json_items('{"tags": ["a"], "n": {"x": 1}}') == ["a"]


class Unreadable(Mapping):
    def __getitem__(self, key):
        raise RuntimeError("unreadable")

    def __iter__(self):
        raise RuntimeError("unreadable")

    def __len__(self):
        return 1


@pytest.mark.parametrize(
    "output, expected",
    [
        ("Tags: dog\nTags: rain, wind", ["rain", "wind"]),  # after the last marker
        ("TAG: bell", ["bell"]),
        ("dog and cat / bird - owl | rain", ["dog", "cat", "bird", "owl", "rain"]),
        ("sandy beach, low-pitched hum", ["sandy beach", "low-pitched hum"]),
        ("Big red fire truck", ["big", "red", "fire", "truck"]),  # over 3 words: word by word
        ("Big red truck", ["big red truck"]),
        ("the dog; The A cat; a an the", ["dog", "cat"]),
        ("two, dogs", ["two", "dog"]),
        ("mp3, 3d, dog2, owl", ["owl"]),
        ("sound of rain, sound, here, keywords", ["sound of rain"]),
        ("Vacuum cleaners", ["vacuum cleaner"]),
        ("\"dog\", 'cat', (bird), [owl]!", ["dog", "cat", "bird", "owl"]),
        ("dog, (big) cat", ["dog", "big cat"]),
        ("dog ( cat,  , owl", ["dog cat", "owl"]),
        ("a) dog\nb. cat\n# owl\n> bird\n12: rain", ["dog", "cat", "owl", "bird", "rain"]),
        ("Scene: park: wet grass", ["wet grass"]),
        ('["rain and thunder", "dog"]', ["rain and thunder", "dog"]),  # a JSON item is one tag, "and" kept
        ("mp3 here big red truck", ["big", "red", "truck"]),  # word by word: a bad or answer word is skipped
        (Unreadable(), []),
    ],
)
def test_parse_generated_tags_by_hand(output, expected):
    assert parse_generated_tags(output) == expected


def test_parse_generated_tags_cuts_the_last_echo_of_the_prompt_and_its_options():
    prompt = "Give tags for a dog."
    assert parse_generated_tags(f"{prompt} cat {prompt} bird", prompt=prompt) == ["bird"]
    assert parse_generated_tags("cat, bird", prompt="not in the answer") == ["cat", "bird"]
    assert parse_generated_tags("Vacuum cleaners", normalize=False) == ["vacuum cleaners"]
    assert parse_generated_tags("big red fire truck", max_words=4) == ["big red fire truck"]
    letters = ", ".join("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo".split())
    assert len(parse_generated_tags(letters)) == 10 and parse_generated_tags(letters)[-1] == "juliet"
    assert parse_generated_tags(letters, max_tags=0) == []


# ------------------------------------------------------------------------------------------- LLM extractor


class FakePipeline:
    """Records its calls; answers every prompt with ``answer(prompt)`` as a pipeline would (one list each)."""

    def __init__(self, answer=lambda prompt: "dog, cats", tokenizer=None, count=None):
        self.answer, self.tokenizer, self.count, self.calls = answer, tokenizer, count, []

    def __call__(self, inputs, **kwargs):
        self.calls.append((list(inputs), kwargs))
        answers = [[{"generated_text": self.answer(p)}] for p in inputs]
        return answers[: self.count] if self.count is not None else answers


def test_llm_extractor_defaults_and_checks():
    pipe = FakePipeline()
    extractor = LLMTagExtractor(pipe)
    assert (extractor.pipeline, extractor.prompt, extractor.system_prompt) == (pipe, DEFAULT_TAG_PROMPT, None)
    assert (extractor.batch_size, extractor.max_new_tokens, extractor.max_tags) == (8, 48, 10)
    assert extractor.use_chat_template is False and extractor.progress is False
    assert extractor.generate_kwargs == {"do_sample": False, "num_beams": 1}
    assert extractor.describe() == {
        "type": "LLMTagExtractor",
        "model": "FakePipeline",
        "prompt": DEFAULT_TAG_PROMPT,
        "system_prompt": None,
        "chat_template": False,
        "max_new_tokens": 48,
        "generate_kwargs": {"do_sample": False, "num_beams": 1},
        "max_tags": 10,
    }
    extractor.generate([f"c{i}" for i in range(9)])
    assert [len(inputs) for inputs, _ in pipe.calls] == [8, 1]
    with pytest.raises(ValueError, match=r"^the prompt must hold a \{caption\} placeholder$"):
        LLMTagExtractor(pipe, prompt="no placeholder")
    for bad in ({"batch_size": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match="^batch_size and max_new_tokens must be positive$"):
            LLMTagExtractor(pipe, **bad)
    LLMTagExtractor(pipe, batch_size=1, max_new_tokens=1)
    overridden = LLMTagExtractor(pipe, generate_kwargs={"do_sample": True, "streamer": object()})
    assert overridden.generate_kwargs["do_sample"] is True and overridden.generate_kwargs["num_beams"] == 1
    assert overridden.describe()["generate_kwargs"] == {"do_sample": True, "num_beams": 1}  # no non-JSON


def test_llm_extractor_prepares_the_tokenizer():
    tokenizer = SimpleNamespace(pad_token=None, eos_token="</s>", padding_side="right", chat_template=None)
    assert LLMTagExtractor(FakePipeline(tokenizer=tokenizer)).use_chat_template is False
    assert (tokenizer.pad_token, tokenizer.padding_side) == ("</s>", "left")
    chat = SimpleNamespace(pad_token="<pad>", eos_token="</s>", padding_side="right", chat_template="{{x}}")
    assert LLMTagExtractor(FakePipeline(tokenizer=chat)).use_chat_template is True
    assert (chat.pad_token, chat.padding_side) == ("<pad>", "left")
    bare = SimpleNamespace(pad_token=None, eos_token=None, padding_side="right", chat_template="x")
    assert LLMTagExtractor(FakePipeline(tokenizer=bare), use_chat_template=False).use_chat_template is False
    assert bare.pad_token is None


def test_llm_extractor_batches_prompts_and_parses_the_answers():
    pipe = FakePipeline(answer=lambda prompt: prompt + " dog, cats")
    extractor = LLMTagExtractor(
        pipe, prompt="Label {caption}", batch_size=2, max_new_tokens=7, generate_kwargs={"temperature": 0.5}
    )
    assert extractor.extract_batch([" owl ", None, "rain", "wind", "bell"]) == [["dog", "cat"]] * 5
    assert [inputs for inputs, _ in pipe.calls] == [
        ["Label owl", "Label "],
        ["Label rain", "Label wind"],
        ["Label bell"],
    ]
    common = {
        "max_new_tokens": 7,
        "return_full_text": False,
        "do_sample": False,
        "num_beams": 1,
        "temperature": 0.5,
    }
    assert [kwargs for _, kwargs in pipe.calls] == [
        {"batch_size": 2, **common},
        {"batch_size": 2, **common},
        {"batch_size": 1, **common},
    ]
    assert LLMTagExtractor(pipe, prompt="Label {caption}", max_tags=1).extract_batch(["owl"]) == [["dog"]]
    with pytest.raises(RuntimeError, match="^the generator returned 1 answers for 2 prompts$"):
        LLMTagExtractor(FakePipeline(count=1), batch_size=2).generate(["a", "b"])


def test_llm_extractor_chat_messages():
    extractor = LLMTagExtractor(
        FakePipeline(), prompt="T: {caption}", use_chat_template=True, system_prompt="S"
    )
    assert extractor._input(" dog ") == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "T: dog"},
    ]
    plain = LLMTagExtractor(FakePipeline(), prompt="T: {caption}", use_chat_template=True)
    assert plain._input(None) == [{"role": "user", "content": "T: "}]
    assert LLMTagExtractor(FakePipeline(), prompt="T: {caption}", system_prompt="S")._input("x") == "T: x"


def test_a_model_id_builds_a_text_generation_pipeline():
    with mock.patch("transformers.pipeline") as pipeline:
        extractor = LLMTagExtractor("org/model", device="cuda:1")
    pipeline.assert_called_once_with("text-generation", model="org/model", device="cuda:1")
    assert extractor.pipeline is pipeline.return_value


def test_model_names_and_json_values():
    named = SimpleNamespace(
        model=SimpleNamespace(config=SimpleNamespace(_name_or_path="org/m"), name_or_path="o")
    )
    assert _model_name(named) == "org/m"
    local = SimpleNamespace(
        model=SimpleNamespace(config=SimpleNamespace(_name_or_path=""), name_or_path="local/p")
    )
    assert _model_name(local) == "local/p"
    assert (
        _model_name(FakePipeline()) == "FakePipeline" and _model_name(print) == "builtin_function_or_method"
    )
    circular: list = []
    circular.append(circular)
    assert _is_json({"a": [1, "b"]}) is True and _is_json({1, 2}) is False and _is_json(circular) is False


def test_make_extractor():
    for spec in (None, "default", "keyword", "keywords"):
        made = make_extractor(spec)
        assert type(made) is KeywordTagExtractor and made.describe() == KeywordTagExtractor().describe()
    assert type(make_extractor()) is KeywordTagExtractor
    given = Upper()
    assert make_extractor(given) is given
    pipe = FakePipeline()
    llm = make_extractor(pipe, max_tags=3, batch_size=2)
    assert type(llm) is LLMTagExtractor and (llm.pipeline, llm.max_tags, llm.batch_size) == (pipe, 3, 2)


def test_make_extractor_builds_a_pipeline_from_a_model_id(monkeypatch):
    import transformers

    built = []

    def fake_pipeline(task, model=None, device=None):
        built.append((task, model, device))
        return FakePipeline()

    monkeypatch.setattr(transformers, "pipeline", fake_pipeline)
    llm = make_extractor("org/tagging-llm", device="cpu")
    assert type(llm) is LLMTagExtractor and built == [("text-generation", "org/tagging-llm", "cpu")]


assert sklearn.feature_extraction.text.CountVectorizer  # imported for the fork server (above)
