"""Tag extractors: caption text -> list of tags.

Every extractor is a :class:`TagExtractor`: ``extract(caption) -> list[str]``, ``extract_batch(captions)``
(what the builder calls; batched where a model runs), an optional ``fit(captions)`` that sees the whole
caption set first, and ``describe()``, which the tag system's files record as "how the tags were made".

- :class:`KeywordTagExtractor`, the offline default: deterministic content words and multi-word terms.
- :class:`LLMTagExtractor`: any transformers ``text-generation`` pipeline prompted for 5-10 one-word
  lowercase tags (UTS used Qwen2.5-7B-Instruct), its answers read by :func:`parse_generated_tags`.
- :func:`split_tags`: tags given directly (a ``tags`` column, ``;``-separated or a list).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

# ---------------------------------------------------------------------------------------------------------
# words
# ---------------------------------------------------------------------------------------------------------

# scikit-learn's English stop list names a few sound sources and traits ("fire", "cry", "call", "thick"...);
# those stay content words.
_CONTENT_WORDS_IN_SKLEARN_STOP_LIST = frozenset(
    {"fire", "cry", "call", "empty", "full", "thick", "thin", "system", "fill", "mill", "bottom", "top"}
)
# Words that say how many but are no tag on their own: kept only as the first word of a term ("two voices").
COUNT_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve fifteen twenty forty fifty sixty "
    "hundred single multiple several many few".split()
)
# The words of captions that describe no sound: the clip and its capture, vague agents, and the words
# that order events in time.
CAPTION_FILLER_WORDS = frozenset(
    "sound sounds audio clip clips recording recordings recorded acoustically source sources "
    "somebody person thing things kind sort bit lot twice times time later "
    "heard hear hears hearing audible like just away followed follows follow begins begin starts start "
    "ends continues continue occasionally used using use yes".split()
)
# First words of compound adjectives: "low pitched" is written "low-pitched".
_COMPOUND_MODIFIERS = frozenset(
    "low high mid medium fast slow well poorly badly heavily lightly closely close far deep sharp soft hard "
    "short long open dry wet full half".split()
)


@lru_cache(maxsize=1)
def default_stop_words() -> frozenset[str]:
    """scikit-learn's ``ENGLISH_STOP_WORDS`` less a few sound words, plus caption filler and count words
    (count words return as the first word of a term)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(
        (ENGLISH_STOP_WORDS - _CONTENT_WORDS_IN_SKLEARN_STOP_LIST) | CAPTION_FILLER_WORDS | COUNT_WORDS
    )


# Endings inflect would wrongly strip an "s" from ("bus" -> "bu", "gas" -> "ga", "lens" -> "len").
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "as", "os", "ics", "ens")
# Plurals without an -s that captions use ("people" stays: a crowd is not a person).
_IRREGULAR_PLURALS = frozenset({"children", "men", "women", "feet", "teeth", "geese", "mice"})


@lru_cache(maxsize=1)
def _inflect_engine():
    import inflect

    return inflect.engine()


@lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """The singular of an English plural noun (``inflect``), else the word unchanged; the last part of a
    hyphenated word (``hand-claps`` -> ``hand-clap``). Also turns third-person verbs into their base form
    (``barks`` -> ``bark``), which is what a tag wants."""
    head, sep, last = word.rpartition("-")
    if last not in _IRREGULAR_PLURALS and (
        len(last) < 4 or not last.endswith("s") or last.endswith(_NOT_PLURAL_ENDINGS)
    ):
        return word
    singular = _inflect_engine().singular_noun(last)
    return head + sep + singular if singular else word


def _preprocess(text: str) -> str:
    # NFKC folds full-width forms and ligatures; accents go as scikit-learn's strip_accents="unicode" does.
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'").replace("‘", "'")
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text


# A word: letters/digits with inner hyphens or apostrophes ("low-pitched", "child's"); anything else that is
# not a space (punctuation) ends a phrase.
_TOKEN = re.compile(r"[^\W_]+(?:['-][^\W_]+)*|[^\w\s]")


def _base_candidates(word: str) -> list[str]:
    """Dictionary forms an -ing, -ed or -ly word may come from, most likely first."""
    out = []
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            stem = word[: -len(suffix)]
            out += [stem, stem + "e"]
            if len(stem) > 2 and stem[-1] == stem[-2]:
                out.append(stem[:-1])  # clapping -> clap, slammed -> slam
            if suffix == "ed" and stem.endswith("i"):
                out.append(stem[:-1] + "y")  # carried -> carry
    if word.endswith("ly") and len(word) > 4:
        stem = word[:-2]
        # loudly -> loud, truly -> true, gently -> gentle (an -le adjective drops its "e" before "-ly")
        out += [stem, stem + "e", stem + "le"]
        if stem.endswith("i"):
            out.append(stem[:-1] + "y")  # noisily -> noisy
    return [c for c in out if len(c) >= 3]


# ---------------------------------------------------------------------------------------------------------
# the interface
# ---------------------------------------------------------------------------------------------------------


class TagExtractor:
    """Caption text -> list of tags (lowercase strings, each at most once, in caption order)."""

    def fit(self, captions: Sequence[str]) -> TagExtractor:
        """Look at the whole caption set before extracting (no-op unless the extractor learns from it)."""
        return self

    def extract(self, caption: str) -> list[str]:
        return self.extract_batch([caption])[0]

    def extract_batch(self, captions: Sequence[str]) -> list[list[str]]:
        return [self.extract(caption) for caption in captions]

    def __call__(self, captions: str | Sequence[str]):
        return self.extract(captions) if isinstance(captions, str) else self.extract_batch(captions)

    def describe(self) -> dict:
        """How the tags are made, as JSON (recorded in the tag system's sidecar)."""
        return {"type": type(self).__name__}


def split_tags(value) -> list[str]:
    """Tags given directly: a list, or a string separated by ``;`` (Auden's ``audio_tag``) or else ``,``;
    stripped, lowercased, each kept once. ``None`` gives ``[]``."""
    if value is None:
        return []
    if isinstance(value, str):
        sep = ";" if ";" in value else ","
        items = value.split(sep)
    elif isinstance(value, Iterable):
        items = [v for item in value for v in ([item] if isinstance(item, str) else split_tags(item))]
    else:
        raise ValueError(f"cannot read tags from a {type(value).__name__}: {value!r}")
    return _unique(" ".join(_preprocess(item).split()) for item in items)


def _unique(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return list(seen)


# ---------------------------------------------------------------------------------------------------------
# the offline default
# ---------------------------------------------------------------------------------------------------------


class KeywordTagExtractor(TagExtractor):
    """Content words and multi-word terms of a caption, without a model: deterministic and offline.

    A caption is lowercased and accent-folded and cut into phrases at punctuation and stop words
    (:func:`default_stop_words`: scikit-learn's list, caption filler such as "sound" or "twice", count
    words). Words are singularised (``inflect``); an -ing/-ed/-ly word becomes the base form the caption set
    also uses (``barking`` -> ``bark`` when some caption says ``barks``; ``loudly`` -> ``loud``).

    Multi-word terms are collocations found in the caption set by :meth:`fit`: two adjacent words of a
    phrase that occur together in at least ``min_term_df`` captions with a normalised PMI of at least
    ``min_term_npmi`` (counted with scikit-learn's ``CountVectorizer``). A pair whose number agreement
    marks it as subject and verb in every caption ("a dog barks", "logs crackle") is a clause, not a term.
    A term replaces its two words (``keep_term_parts=True`` keeps them too; of two overlapping terms the
    more exclusive one wins); it is written with a hyphen when the caption set spells it so or it is a
    compound adjective (``low pitched`` -> ``low-pitched``), else with a space (``acoustic guitar``).
    Unfitted, only single words and hyphenated words come out.

    Args:
        extra_stop_words: more words that are never tags.
        keep_words: stop words that should be tags here.
        min_term_df, min_term_npmi: how often and how exclusively two words must co-occur to be a term.
        keep_term_parts: also emit the words of a term.
        max_tags: keep at most this many tags of a caption (in caption order); ``None``: all.
    """

    def __init__(
        self,
        *,
        extra_stop_words: Iterable[str] = (),
        keep_words: Iterable[str] = (),
        min_term_df: int = 3,
        min_term_npmi: float = 0.5,
        keep_term_parts: bool = False,
        max_tags: int | None = None,
    ):
        if min_term_df < 1:
            raise ValueError(f"min_term_df must be >= 1, got {min_term_df}")
        if not -1.0 <= min_term_npmi <= 1.0:
            raise ValueError(f"min_term_npmi must be in [-1, 1], got {min_term_npmi}")
        self.extra_stop_words = frozenset(_preprocess(w) for w in extra_stop_words)
        self.keep_words = frozenset(_preprocess(w) for w in keep_words)
        self.stop_words = (default_stop_words() | self.extra_stop_words) - self.keep_words
        self.min_term_df = min_term_df
        self.min_term_npmi = min_term_npmi
        self.keep_term_parts = keep_term_parts
        self.max_tags = max_tags
        self.terms: dict[tuple[str, str], str] = {}
        self.term_npmi: dict[tuple[str, str], float] = {}
        self.vocabulary: frozenset[str] = frozenset()
        self.num_fitted = 0

    # ---------------------------------------------------------------- phrases

    def phrases(self, caption: str) -> list[list[tuple[str, str]]]:
        """The caption's phrases: runs of ``(surface, singular)`` content words between punctuation and
        stop words (count words are kept: they may start a term)."""
        runs: list[list[tuple[str, str]]] = [[]]
        for token in _TOKEN.findall(_preprocess(caption or "")):
            word = re.sub(r"'s$|s'$", "", token).replace("'", "")  # possessives: "child's" -> "child"
            if (
                not word
                or not word[0].isalpha()
                or any(c.isdigit() for c in word)
                or len(word) < 2
                or (word in self.stop_words and word not in COUNT_WORDS)
            ):
                runs.append([])
                continue
            norm = singularize(word)
            if norm in self.stop_words and norm not in COUNT_WORDS:  # "sounds" -> "sound"
                runs.append([])
                continue
            runs[-1].append((word, norm))
        return [run for run in runs if run]

    # ---------------------------------------------------------------- fit

    def fit(self, captions: Sequence[str]) -> KeywordTagExtractor:
        """Find the caption set's terms and the base forms it uses."""
        from sklearn.feature_extraction.text import CountVectorizer

        captions = [c or "" for c in captions]
        if not captions:
            raise ValueError("cannot fit a tag extractor on no captions")
        phrases = [self.phrases(c) for c in captions]

        def unigrams(runs):
            return [norm for run in runs for _, norm in run]

        def bigrams(runs):
            return ["\t".join((a[1], b[1])) for run in runs for a, b in zip(run, run[1:], strict=False)]

        try:
            words = CountVectorizer(analyzer=unigrams, binary=True).fit(phrases)
        except ValueError:  # not one content word in the whole caption set
            self.vocabulary, self.terms, self.term_npmi, self.num_fitted = frozenset(), {}, {}, len(captions)
            return self
        word_df = dict(
            zip(words.get_feature_names_out(), words.transform(phrases).sum(axis=0).A1, strict=True)
        )
        self.vocabulary = frozenset(word_df) | {
            w for runs in phrases for run in runs for w, _ in run if "-" in w
        }
        self.terms, self.term_npmi = {}, {}
        try:
            pairs = CountVectorizer(analyzer=bigrams, binary=True, min_df=self.min_term_df).fit(phrases)
        except ValueError:  # no pair reaches min_term_df
            pairs = None
        if pairs is not None:
            surfaces = {norm: word for runs in phrases for run in runs for word, norm in run}
            agreement = _agreement_patterns(phrases)
            pair_df = pairs.transform(phrases).sum(axis=0).A1
            n = len(captions)
            for pair, both in zip(pairs.get_feature_names_out(), pair_df, strict=True):
                first, second = pair.split("\t")
                # A count word is no subject: "two voices" reads (singular, plural) as "a dog barks" does.
                if (
                    first in COUNT_WORDS
                    and second in COUNT_WORDS
                    or (first not in COUNT_WORDS and _is_clause(first, agreement[(first, second)]))
                ):
                    continue
                npmi = _npmi(int(both), word_df[first], word_df[second], n)
                if npmi >= self.min_term_npmi:
                    self.terms[(first, second)] = self._spell(first, second, surfaces)
                    self.term_npmi[(first, second)] = npmi
        self.num_fitted = len(captions)
        return self

    def _spell(self, first: str, second: str, surfaces: Mapping[str, str]) -> str:
        if first in COUNT_WORDS:  # "two voices": the count says the plural
            second = surfaces.get(second, second)
        hyphenated = f"{first}-{second}"
        if hyphenated in self.vocabulary or (first in _COMPOUND_MODIFIERS and second.endswith(("ed", "ing"))):
            return hyphenated
        return f"{first} {second}"

    # ---------------------------------------------------------------- extract

    def _base_form(self, norm: str, known: frozenset[str] | set[str]) -> str:
        for candidate in _base_candidates(norm):
            if candidate in known:
                return candidate
        return norm

    def extract(self, caption: str) -> list[str]:
        runs = self.phrases(caption)
        known = self.vocabulary | {norm for run in runs for _, norm in run}
        tags: list[str] = []
        for run in runs:
            i = 0
            while i < len(run):
                pair = (run[i][1], run[i + 1][1]) if i + 1 < len(run) else None
                following = (run[i + 1][1], run[i + 2][1]) if i + 2 < len(run) else None
                if pair in self.terms and following in self.terms:
                    # "cosy living room": keep the more exclusive pair ("living room")
                    if self.term_npmi[following] > self.term_npmi[pair]:
                        pair = None
                if pair in self.terms:
                    tags.append(self.terms[pair])
                    if self.keep_term_parts:
                        tags += [self._base_form(n, known) for n in pair if n not in COUNT_WORDS]
                    i += 2
                    continue
                norm = run[i][1]
                if norm not in COUNT_WORDS:
                    tags.append(self._base_form(norm, known))
                i += 1
        tags = _unique(tags)
        return tags[: self.max_tags] if self.max_tags is not None else tags

    def describe(self) -> dict:
        return {
            "type": type(self).__name__,
            "stop_words": "sklearn ENGLISH_STOP_WORDS - sound words + caption filler + count words",
            "extra_stop_words": sorted(self.extra_stop_words),
            "keep_words": sorted(self.keep_words),
            "min_term_df": self.min_term_df,
            "min_term_npmi": self.min_term_npmi,
            "keep_term_parts": self.keep_term_parts,
            "max_tags": self.max_tags,
            "fitted_on_captions": self.num_fitted,
            "terms": sorted(self.terms.values()),
        }


def _agreement_patterns(phrases) -> dict[tuple[str, str], set[tuple[bool, bool]]]:
    """For each adjacent word pair, the (first is inflected, second is inflected) patterns it occurs in."""
    patterns: dict[tuple[str, str], set[tuple[bool, bool]]] = {}
    for runs in phrases:
        for run in runs:
            for (w1, n1), (w2, n2) in zip(run, run[1:], strict=False):
                patterns.setdefault((n1, n2), set()).add((w1 != n1, w2 != n2))
    return patterns


def _is_clause(first: str, patterns: set[tuple[bool, bool]]) -> bool:
    """Whether a pair is always subject + verb by number agreement: "a dog barks" (the verb's -s after a
    singular noun) or "logs crackle" (a plural noun, a bare verb). A compound marks only its last word
    ("vacuum cleaners"), and is used in the singular too; a participle modifies ("plucked strings")."""
    if not patterns or not patterns <= {(False, True), (True, False)}:
        return False
    return (False, True) not in patterns or not first.endswith(("ing", "ed"))


def _npmi(both: int, first: int, second: int, n: int) -> float:
    """Normalised pointwise mutual information of two words over ``n`` documents, from document counts."""
    if both >= n:
        return 1.0
    return math.log(both * n / (first * second)) / -math.log(both / n)


# ---------------------------------------------------------------------------------------------------------
# LLM answers
# ---------------------------------------------------------------------------------------------------------

DEFAULT_TAG_PROMPT = (
    "You label audio clips for a sound-tagging data set. Below is a description of one clip. "
    "Answer with 5 to 10 tags for the clip, each a single lowercase English word, separated by commas. "
    "Cover the acoustic scene, the sound sources, the sound events, production traits (loudness, distance, "
    "reverberation, recording quality) and what the sound is for (speech, music, alarm, ambience). "
    "Answer with the tags only.\n\nDescription: {caption}\nTags:"
)

# Words a model says around its answer that are never tags.
_ANSWER_WORDS = frozenset(
    "sure okay ok here tag tags answer answers assistant user system none n/a na output json list keyword "
    "keywords description label labels".split()
)
_BULLET = re.compile(r"^\s*(?:[-*•·>]+|\(?\d{1,2}\s*[.):\]-]|#+|[a-z][.)](?=\s))\s*")
_STRIP = " \t\"'`*_.,;:!?()[]{}<>“”‘’«»"


def generated_text(output) -> str:
    """The text a pipeline produced: from a string, ``{"generated_text": ...}`` (a string, or a chat: the
    last assistant message), a list of such (the first), a chat message ``{"role", "content"}`` or a
    list of content parts ``[{"type": "text", "text": ...}]``."""
    if output is None:
        return ""
    if isinstance(output, str):
        return output
    if isinstance(output, Mapping):
        for key in ("generated_text", "content", "text"):
            if key in output:
                return generated_text(output[key])
        return ""
    if isinstance(output, Sequence):
        if not output:
            return ""
        if all(isinstance(m, Mapping) and "role" in m for m in output):  # a chat: the model's last turn
            answers = [m for m in output if m.get("role") == "assistant"] or [output[-1]]
            return generated_text(answers[-1].get("content"))
        if all(isinstance(p, Mapping) and p.get("type") == "text" for p in output):
            return "\n".join(generated_text(p) for p in output)
        if all(isinstance(item, str) for item in output):  # already a list of tags
            return "\n".join(output)
        return generated_text(output[0])
    return str(output)


def _json_items(text: str) -> list[str] | None:
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    end = max(text.rfind("]"), text.rfind("}"))
    try:
        value = json.loads(text[start : end + 1])
    except (json.JSONDecodeError, ValueError):
        return None
    if isinstance(value, Mapping):
        value = next((v for k, v in value.items() if str(k).lower() in ("tags", "tag", "labels")), None)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def parse_generated_tags(
    output,
    *,
    prompt: str | None = None,
    max_tags: int | None = 10,
    max_words: int = 3,
    normalize: bool = True,
) -> list[str]:
    """The tags in a model's answer, however it was written; never raises.

    Reads the text of ``output`` (:func:`generated_text`), cuts an echoed ``prompt`` and anything up to the
    last ``Tags:``, then takes a JSON list if there is one, else the items between newlines, commas,
    semicolons and bars, less bullets, numbering, quotes, trailing punctuation, a ``Scene:``-style label,
    stop words and answer words ("here", "tags"). An item of more than ``max_words`` words (a sentence) is
    read word by word. Tags are lowercased, singularised when ``normalize``, kept once, at most ``max_tags``.
    """
    try:
        text = generated_text(output)
    except Exception:  # noqa: BLE001 - an unreadable answer has no tags
        return []
    if not isinstance(text, str):
        return []
    if prompt and prompt in text:
        text = text[text.rindex(prompt) + len(prompt) :]
    marker = list(re.finditer(r"\btags?\s*:", text, flags=re.IGNORECASE))
    if marker:
        text = text[marker[-1].end() :]
    items = _json_items(text)
    if items is None:
        items = []
        for line in text.splitlines():
            line = _BULLET.sub("", line)
            if ":" in line:  # "Scene: park"
                line = line.rsplit(":", 1)[1]
            items += re.split(r"[,;|/]|\s+-\s+|\band\b", line)
    stop = default_stop_words() - COUNT_WORDS
    tags: list[str] = []
    for item in items:
        words = _preprocess(str(item)).strip(_STRIP).split()
        words = [w.strip(_STRIP) for w in words]
        words = [w for w in words if w]
        while words and words[0] in ("a", "an", "the"):
            words = words[1:]
        if not words:
            continue
        groups = [words] if len(words) <= max_words else [[w] for w in words]
        for group in groups:
            if not all(re.fullmatch(r"[^\W\d_]+(?:['-][^\W\d_]+)*", w) for w in group):
                continue
            if len(group) == 1 and (group[0] in stop or group[0] in _ANSWER_WORDS):
                continue
            if normalize:
                group = [*group[:-1], singularize(group[-1])]
            tags.append(" ".join(group))
    tags = _unique(tags)
    return tags[:max_tags] if max_tags is not None else tags


class LLMTagExtractor(TagExtractor):
    """Tags from a text-generation model prompted with each caption (UTS's LLM tag parser).

    Args:
        generator: a transformers ``text-generation`` pipeline, a model id or local path (a pipeline is
            built), or any callable taking a list of prompts and pipeline keyword arguments.
        prompt: a template with ``{caption}``; the default asks for 5-10 one-word lowercase tags covering
            scene, sources, events, production traits and semantic function.
        use_chat_template: send the prompt as a chat message (default: when the tokenizer has a chat
            template).
        batch_size, max_new_tokens: generation batches and length.
        generate_kwargs: more generation settings; the default is greedy (``do_sample=False``), so tags
            are a deterministic function of the caption.
        max_tags: keep at most this many tags of an answer (:func:`parse_generated_tags`).
        device: where to build the pipeline from a model id (``"cpu"``, ``"cuda"``, ...).
        progress: a progress bar over the batches.
    """

    def __init__(
        self,
        generator: Any,
        *,
        prompt: str = DEFAULT_TAG_PROMPT,
        system_prompt: str | None = None,
        use_chat_template: bool | None = None,
        batch_size: int = 8,
        max_new_tokens: int = 48,
        generate_kwargs: Mapping | None = None,
        max_tags: int | None = 10,
        device: str | int | None = None,
        progress: bool = False,
    ):
        if "{caption}" not in prompt:
            raise ValueError("the prompt must hold a {caption} placeholder")
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be positive")
        if isinstance(generator, str):
            from transformers import pipeline

            generator = pipeline("text-generation", model=generator, device=device)
        self.pipeline = generator
        self.model_name = _model_name(generator)
        tokenizer = getattr(generator, "tokenizer", None)
        if tokenizer is not None:
            if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                tokenizer.pad_token = tokenizer.eos_token  # batched generation pads
            tokenizer.padding_side = "left"  # decoder-only models continue from the right
        if use_chat_template is None:
            use_chat_template = getattr(tokenizer, "chat_template", None) is not None
        self.prompt = prompt
        self.system_prompt = system_prompt
        self.use_chat_template = use_chat_template
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.generate_kwargs = {"do_sample": False, "num_beams": 1, **(generate_kwargs or {})}
        self.max_tags = max_tags
        self.progress = progress

    def _input(self, caption: str):
        text = self.prompt.replace("{caption}", (caption or "").strip())
        if not self.use_chat_template:
            return text
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*messages, {"role": "user", "content": text}]

    def generate(self, captions: Sequence[str]) -> list:
        """The model's raw answers to ``captions`` (one per caption)."""
        from tqdm.auto import tqdm

        outputs: list = []
        starts = range(0, len(captions), self.batch_size)
        for start in tqdm(starts, desc="tagging captions", unit="batch", disable=not self.progress):
            batch = [self._input(c) for c in captions[start : start + self.batch_size]]
            answers = self.pipeline(
                batch,
                batch_size=len(batch),
                max_new_tokens=self.max_new_tokens,
                return_full_text=False,
                **self.generate_kwargs,
            )
            if len(answers) != len(batch):
                raise RuntimeError(f"the generator returned {len(answers)} answers for {len(batch)} prompts")
            outputs += answers
        return outputs

    def extract_batch(self, captions: Sequence[str]) -> list[list[str]]:
        prompts = [self.prompt.replace("{caption}", (c or "").strip()) for c in captions]
        return [
            parse_generated_tags(answer, prompt=prompt, max_tags=self.max_tags)
            for answer, prompt in zip(self.generate(list(captions)), prompts, strict=True)
        ]

    def describe(self) -> dict:
        return {
            "type": type(self).__name__,
            "model": self.model_name,
            "prompt": self.prompt,
            "system_prompt": self.system_prompt,
            "chat_template": self.use_chat_template,
            "max_new_tokens": self.max_new_tokens,
            "generate_kwargs": {k: v for k, v in self.generate_kwargs.items() if _is_json(v)},
            "max_tags": self.max_tags,
        }


def _model_name(generator) -> str | None:
    model = getattr(generator, "model", None)
    name = getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(
        model, "name_or_path", None
    )
    return str(name) if name else type(generator).__name__


def _is_json(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


ExtractorSpec = TagExtractor | str | Callable | None


def make_extractor(spec: ExtractorSpec = "default", **kwargs) -> TagExtractor:
    """A :class:`TagExtractor` from ``"default"`` (or ``None``; :class:`KeywordTagExtractor`), an extractor,
    or anything :class:`LLMTagExtractor` takes (a pipeline, a model id or local path); ``kwargs`` go to the
    LLM extractor."""
    if spec is None or (isinstance(spec, str) and spec in ("default", "keyword", "keywords")):
        return KeywordTagExtractor()
    if isinstance(spec, TagExtractor):
        return spec
    return LLMTagExtractor(spec, **kwargs)
