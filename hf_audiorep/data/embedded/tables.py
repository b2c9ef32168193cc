"""The corpus's tables, read from the data files beside this module at import.

- ``families.csv`` (``id,name``): the parent nodes of the ontology, in order.
- ``classes.csv`` (``index,id,name,family_id,recipe,countable,heldout``): one row per class, in
  class-index order; ``recipe`` names a :mod:`~hf_audiorep.data.embedded.synth` recipe,
  ``countable`` (0/1) says captions may count its repetitions ("twice"), ``heldout`` (0/1) reserves
  it for few-shot / open-set evaluation.
- ``captions.json``: per class name, the ``clauses`` ("a dog barks") and ``nouns`` ("a barking
  dog") captions use, and the connecting words (repetition counts, loudness, overlap, succession).
- ``scenes.json``: per scene, the ``places`` captions name, event ``weights`` by class name and
  the ``background`` recipe: ``[low, high]`` ranges (drawn uniformly) or ``{"one_of": [...]}``
  per :class:`~hf_audiorep.data.embedded.synth.BackgroundParams` field.
- ``attributes.json``: the attribute tasks (what a clip's speech, music and recording are like,
  which the event classes do not say): per task its classes, the event classes it describes, how
  it is drawn, how often captions mention it and the phrases they use; and the lead-ins of the
  caption sentences about each group of attributes.

The classes are designed in families, one held out per family so that few-shot evaluation covers
every kind of sound; similar pairs across families are deliberate (flute / whistle / owl, knock /
bark / door, rain / fire / applause, engine / drill / vacuum / insect). Scenes with mains hum draw
it from 50 or 60 Hz (by country), or twice that (fridges and transformers hum at 100 / 120 Hz).

Generation draws from these tables by position (the n-th place, the n-th clause), so reordering
or editing a row changes the corpus: bump ``CORPUS_VERSION`` in ``corpus.py`` when you do.
Background fields are drawn in ``BackgroundParams`` field order whatever their order in the file,
so that reformatting the JSON cannot change the corpus. Inconsistent tables (an unknown class,
recipe or field; a class in no scene) raise at import, not deep inside generation.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ontology import LabelGroup, LabelVocabulary
from .synth import RECIPES, BackgroundParams

__all__ = [
    "ATTRIBUTE_LEAD_INS",
    "ATTRIBUTE_TASKS",
    "EMBEDDED_ONTOLOGY",
    "SCENES",
    "CAPTION_WORDS",
    "AttributeTask",
    "CaptionPhrases",
    "CaptionWords",
    "EmbeddedOntology",
    "OneOf",
    "Scene",
    "SoundFamily",
]

_HERE = Path(__file__).parent

SoundFamily = LabelGroup
"""A parent node of the corpus ontology (like AudioSet's top-level groups)."""


def _read_csv(name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    with open(_HERE / name, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or tuple(rows[0]) != columns:
        raise ValueError(f"{name} must have the columns {','.join(columns)}")
    return rows


def _read_json(name: str):
    return json.loads((_HERE / name).read_text(encoding="utf-8"))


def _flag(name: str, row: dict, column: str) -> bool:
    if row[column] not in ("0", "1"):
        raise ValueError(f"{name}: {column} of {row['name']!r} must be 0 or 1, got {row[column]!r}")
    return row[column] == "1"


# --------------------------------------------------------------------------------------------
# ontology
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionPhrases:
    """How captions talk about a class: present-tense ``clauses`` ("a dog barks"), noun phrases
    (``nouns``: "a barking dog"), and whether the recipe's repetitions can be counted ("twice")."""

    clauses: tuple[str, ...]
    nouns: tuple[str, ...]
    countable: bool = False


@dataclass(frozen=True, kw_only=True)
class EmbeddedOntology(LabelVocabulary):
    """The corpus's :class:`~hf_audiorep.data.ontology.LabelVocabulary`, with what generation needs.

    ``recipes`` (the :mod:`~hf_audiorep.data.embedded.synth` recipe of each class) and ``phrases``
    (how captions word it) are indexed by class index like ``names`` and ``ids``; ``families`` are
    the vocabulary's groups, ``parent_of[i]`` the index into them of class ``i``'s family.
    """

    recipes: tuple[str, ...]
    phrases: tuple[CaptionPhrases, ...]

    def __post_init__(self):
        super().__post_init__()
        if not len(self.recipes) == len(self.phrases) == len(self):
            raise ValueError("an embedded ontology needs one recipe and one set of phrases per class")
        if None in self.parent_of:
            raise ValueError("every class of the embedded ontology belongs to a family")

    @property
    def families(self) -> tuple[SoundFamily, ...]:
        return self.groups

    def family_of(self, index: int) -> SoundFamily:
        return self.groups[self.parent_of[index]]


def _load_ontology() -> EmbeddedOntology:
    families = _read_csv("families.csv", ("id", "name"))
    rows = _read_csv("classes.csv", ("index", "id", "name", "family_id", "recipe", "countable", "heldout"))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"classes.csv: class indices must run 0..{len(rows) - 1} in order")
    family_ids = [f["id"] for f in families]
    for row in rows:
        if row["family_id"] not in family_ids:
            raise ValueError(f"classes.csv: {row['name']!r} is in an unknown family {row['family_id']!r}")
        if row["recipe"] not in RECIPES:
            raise ValueError(f"classes.csv: {row['name']!r} has an unknown recipe {row['recipe']!r}")
    words = _read_json("captions.json")["classes"]
    names = [r["name"] for r in rows]
    if set(words) != set(names):
        raise ValueError(
            f"captions.json must phrase exactly the classes of classes.csv: {set(words) ^ set(names)}"
        )
    return EmbeddedOntology(
        ids=tuple(r["id"] for r in rows),
        names=tuple(names),
        groups=tuple(
            SoundFamily(f["id"], f["name"], tuple(i for i, r in enumerate(rows) if r["family_id"] == f["id"]))
            for f in families
        ),
        heldout=frozenset(i for i, r in enumerate(rows) if _flag("classes.csv", r, "heldout")),
        recipes=tuple(r["recipe"] for r in rows),
        phrases=tuple(
            CaptionPhrases(
                tuple(words[r["name"]]["clauses"]),
                tuple(words[r["name"]]["nouns"]),
                _flag("classes.csv", r, "countable"),
            )
            for r in rows
        ),
    )


EMBEDDED_ONTOLOGY = _load_ontology()
"""The ontology of the embedded corpus (36 classes in 6 families, 6 held out)."""


# --------------------------------------------------------------------------------------------
# caption words
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionWords:
    """The words that join class phrases into a caption: ``repetitions`` ("twice" for 2; past the
    table, ``many_repetitions``), ``loud`` / ``faint`` adverbials, and the joints between an event
    and the next when they ``overlap`` or follow each other (``after``)."""

    repetitions: dict[int, str]
    many_repetitions: str
    loud: tuple[str, ...]
    faint: tuple[str, ...]
    overlap: tuple[str, ...]
    after: tuple[str, ...]


def _load_caption_words() -> CaptionWords:
    table = _read_json("captions.json")
    return CaptionWords(
        repetitions={int(count): words for count, words in table["repetitions"].items()},
        many_repetitions=table["many_repetitions"],
        **{key: tuple(table[key]) for key in ("loud", "faint", "overlap", "after")},
    )


CAPTION_WORDS = _load_caption_words()


# --------------------------------------------------------------------------------------------
# acoustic scenes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneOf:
    """A background parameter drawn from a few discrete values (a ``(low, high)`` pair is drawn
    uniformly instead)."""

    values: tuple[float, ...]


@dataclass(frozen=True)
class Scene:
    """An acoustic scene: a distribution over events (``weights`` by class name), a background
    recipe (ranges of the fields of :class:`~hf_audiorep.data.embedded.synth.BackgroundParams`) and
    how captions say where it is (``places``)."""

    name: str
    places: tuple[str, ...]
    weights: tuple[tuple[str, float], ...]
    background: tuple[tuple[str, tuple[float, float] | OneOf], ...]

    def draw_background(self, rng: np.random.Generator) -> BackgroundParams:
        values = {}
        for field, spec in self.background:
            if isinstance(spec, OneOf):
                values[field] = spec.values[int(rng.integers(len(spec.values)))]
            else:
                values[field] = float(rng.uniform(*spec))
        if "hum_harmonics" in values:
            values["hum_harmonics"] = int(values["hum_harmonics"])
        return BackgroundParams(**values)


_BACKGROUND_FIELDS = tuple(f.name for f in dataclasses.fields(BackgroundParams))


def _background(scene: str, raw: dict) -> tuple:
    unknown = set(raw) - set(_BACKGROUND_FIELDS)
    if unknown:
        raise ValueError(f"scenes.json: scene {scene!r} has unknown background fields {sorted(unknown)}")
    spec = {}
    for field, value in raw.items():
        if isinstance(value, dict) and set(value) == {"one_of"}:
            spec[field] = OneOf(tuple(value["one_of"]))
        elif isinstance(value, list) and len(value) == 2:
            spec[field] = tuple(value)
        else:
            raise ValueError(f"scenes.json: {scene!r} {field} must be [low, high] or {{'one_of': [...]}}")
    # The draw order is part of the corpus: fix it by the dataclass, not by the file.
    return tuple((field, spec[field]) for field in _BACKGROUND_FIELDS if field in spec)


def _load_scenes() -> tuple[Scene, ...]:
    return tuple(
        Scene(
            s["name"],
            tuple(s["places"]),
            tuple(s["weights"].items()),
            _background(s["name"], s["background"]),
        )
        for s in _read_json("scenes.json")
    )


SCENES: tuple[Scene, ...] = _load_scenes()
"""The acoustic scenes (the ``scene`` column); every class occurs in at least one."""


def scene_weights(scenes=SCENES, ontology=EMBEDDED_ONTOLOGY) -> np.ndarray:
    """``(scenes, classes)`` event weights, the scene-by-class table behind every draw."""
    known = set(ontology.names)
    for scene in scenes:
        unknown = {name for name, _ in scene.weights} - known
        if unknown:
            raise ValueError(f"scene {scene.name!r} weights unknown classes {sorted(unknown)}")
    weights = np.array([[dict(scene.weights).get(name, 0.0) for name in ontology.names] for scene in scenes])
    orphans = [ontology.names[i] for i in np.flatnonzero(weights.sum(axis=0) == 0)]
    if orphans:
        raise ValueError(f"classes {orphans} occur in no scene")
    return weights


# --------------------------------------------------------------------------------------------
# attribute tasks
# --------------------------------------------------------------------------------------------

NONE = "none"
"""The class of an attribute task's column on a clip without the task's sources (no speech, say)."""


@dataclass(frozen=True)
class AttributeTask:
    """A property of a clip that the event ontology does not name, and a downstream task on it.

    The corpus draws it per clip, renders it into the audio, stores it in the ClassLabel column
    ``column`` (class names :attr:`names`) and mentions it in the caption with probability ``mention``
    (one of ``phrases[class]``, so mined tags are as noisy as real captions').

    ``sources`` are the event classes it describes (``None``: every clip, e.g. the room). A clip with
    none of them gets the extra class ``"none"``: train a probe on the clips where
    :meth:`applies` (``classes`` are then exactly the label indices ``0..len(classes)-1``).
    ``weights`` are the draw probabilities of ``classes`` (up to normalisation); ``None`` for a task
    derived from the clip's events (``families`` maps each source class to its class).
    """

    name: str
    group: str
    classes: tuple[str, ...]
    sources: frozenset[str] | None
    weights: tuple[float, ...] | None
    mention: float
    phrases: dict[str, tuple[str, ...]]
    families: dict[str, str] | None = None

    @property
    def column(self) -> str:
        return self.name

    @property
    def names(self) -> tuple[str, ...]:
        """The column's ClassLabel names: ``classes``, then ``"none"`` for a task with sources."""
        return self.classes if self.sources is None else (*self.classes, NONE)

    def applies(self, value: int | str) -> bool:
        """Whether a clip's column value (index or name) is one of the task's ``classes``."""
        return (value if isinstance(value, str) else self.names[value]) != NONE

    def probabilities(self) -> np.ndarray:
        weights = np.asarray(self.weights, dtype=np.float64)
        return weights / weights.sum()


_ATTRIBUTE_GROUPS = ("speech", "music", "recording")


def _load_attribute_tasks(ontology: EmbeddedOntology) -> dict[str, AttributeTask]:
    table = _read_json("attributes.json")
    tasks = {}
    for raw in table["tasks"]:
        name, classes = raw["name"], tuple(raw["classes"])
        if raw["group"] not in _ATTRIBUTE_GROUPS:
            raise ValueError(f"attributes.json: {name!r} has an unknown group {raw['group']!r}")
        sources = None if raw["sources"] is None else frozenset(raw["sources"])
        if sources is not None and not sources <= set(ontology.names):
            raise ValueError(
                f"attributes.json: {name!r} names unknown sources {sorted(sources - set(ontology.names))}"
            )
        weights = raw.get("weights")
        families = raw.get("families")
        if (weights is None) == (families is None):
            raise ValueError(f"attributes.json: {name!r} needs either weights (drawn) or families (derived)")
        if weights is not None and len(weights) != len(classes):
            raise ValueError(f"attributes.json: {name!r} needs one weight per class")
        if families is not None and (set(families) != sources or not set(families.values()) <= set(classes)):
            raise ValueError(f"attributes.json: {name!r} families must map each source to a class")
        if set(raw["phrases"]) != set(classes) or not all(raw["phrases"][c] for c in classes):
            raise ValueError(f"attributes.json: {name!r} needs phrases for exactly its classes")
        if NONE in classes or len(set(classes)) != len(classes):
            raise ValueError(f"attributes.json: {name!r} classes must be distinct and not {NONE!r}")
        tasks[name] = AttributeTask(
            name,
            raw["group"],
            classes,
            sources,
            None if weights is None else tuple(float(w) for w in weights),
            float(raw["mention"]),
            {c: tuple(raw["phrases"][c]) for c in classes},
            families,
        )
    _check_phrases_are_unambiguous(tasks, ontology)
    return tasks


def _check_phrases_are_unambiguous(tasks: dict[str, AttributeTask], ontology: EmbeddedOntology) -> None:
    """An attribute phrase must not occur inside any other caption text, so that finding it in a
    caption says which class was described (and tests can check it against the column)."""
    phrases = [(task.name, c, p) for task in tasks.values() for c, ps in task.phrases.items() for p in ps]
    others = [p for phrase in ontology.phrases for p in phrase.clauses + phrase.nouns]
    others += [place for scene in SCENES for place in scene.places]
    others += [*CAPTION_WORDS.loud, *CAPTION_WORDS.faint, *CAPTION_WORDS.overlap, *CAPTION_WORDS.after]
    for name, cls, phrase in phrases:
        clash = [p for _, _, p in phrases if p != phrase and phrase in p] + [o for o in others if phrase in o]
        if clash:
            raise ValueError(f"attributes.json: the {name} phrase {phrase!r} ({cls}) occurs in {clash[0]!r}")


ATTRIBUTE_TASKS = types.MappingProxyType(_load_attribute_tasks(EMBEDDED_ONTOLOGY))
"""Task name -> :class:`AttributeTask`, in column order: the corpus's attribute columns."""


def _load_lead_ins() -> dict[str, tuple[str, ...]]:
    lead_ins = _read_json("attributes.json")["lead_ins"]
    if set(lead_ins) != set(_ATTRIBUTE_GROUPS):
        raise ValueError(f"attributes.json: lead_ins must cover the groups {_ATTRIBUTE_GROUPS}")
    return {group: tuple(lead_ins[group]) for group in _ATTRIBUTE_GROUPS}


ATTRIBUTE_LEAD_INS = _load_lead_ins()
"""Per attribute group (speech, music, recording), how a caption's sentence about it may begin."""
