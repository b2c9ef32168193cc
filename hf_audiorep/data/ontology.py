"""Label vocabularies: one type for every class table, and the mapping from a record's label field.

:class:`LabelVocabulary` is the class table of a task: ``ids[i]`` and ``names[i]`` describe class
``i`` (the label index used everywhere), optionally grouped under parent nodes and with classes held
out for few-shot / open-set evaluation. The same type serves

- the 527 AudioSet classes (:data:`AUDIOSET_ONTOLOGY`, ids are MIDs such as ``/m/09x0r``),
- the embedded corpus's ontology (``hf_audiorep.data.embedded.EMBEDDED_ONTOLOGY``, ids
  ``/hf/e/000``, parent families, held-out classes),
- a plain list of names, e.g. a tag vocabulary mined from captions
  (:meth:`LabelVocabulary.from_names`).

The AudioSet table is AudioSet's ``class_labels_indices.csv`` (index, MID, display name), shipped as
``audioset_ontology.csv`` beside this module. AudioSet ontology, (c) Google, CC BY 4.0,
https://research.google.com/audioset/ . None of the Hub copies of AudioSet carries this table, and
models trained on them must agree on the class order, so the library ships one.

A vocabulary also reads whatever a dataset stores as labels (:meth:`LabelVocabulary.indices`,
:meth:`~LabelVocabulary.multi_hot`): MIDs (``/m/09x0r``), display names, integer indices, lists of those,
``;``-separated strings, or the JSON dict of a WebDataset sample (``{"label": [...], "label_id": [...]}``).
The rules live in :class:`LabelMapper`, the vocabulary's lookup table.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

import numpy as np

ONTOLOGY_CSV = Path(__file__).with_name("audioset_ontology.csv")
NUM_AUDIOSET_CLASSES = 527

# Keys a WebDataset JSON sidecar may hold its labels under. Names/MIDs come first: they are
# unambiguous, whereas integer ids depend on which class table the shard writer used.
_DICT_NAME_KEYS = ("labels", "label", "mids", "mid", "human_labels", "tags")
_DICT_INDEX_KEYS = ("label_ids", "label_id", "indices", "label_indices", "targets")
_MID_PREFIXES = ("/m/", "/t/", "/g/")


def is_mid(label: str) -> bool:
    """True for a Freebase/Google knowledge-graph id such as ``/m/09x0r`` or ``/t/dd00001``."""
    return isinstance(label, str) and label.startswith(_MID_PREFIXES)


def split_label_string(value: str) -> list[str]:
    """Split a string holding several labels: on ``;`` when present, else on ``,``.

    Only used for strings that are not themselves a class name, because AudioSet display names
    contain commas ("Male speech, man speaking"); write such names separated by ``;``.
    """
    sep = ";" if ";" in value else ","
    return [token.strip() for token in value.split(sep) if token.strip()]


class UnknownLabelError(KeyError, ValueError):
    """A label that names no class of a vocabulary.

    Both a ``KeyError`` (a failed lookup, as ``vocabulary.index`` always raised for the corpus) and a
    ``ValueError`` (a bad label value, as label mapping always raised for AudioSet), so callers of
    either kind keep working."""

    def __str__(self) -> str:  # KeyError would print the message quoted, like a dict key
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class LabelMapper:
    """Callable turning one record's label field into a sorted list of class indices: the rules behind
    :meth:`LabelVocabulary.indices`, over a bare lookup table.

    ``lookup`` maps names (and, for AudioSet, MIDs) to indices; integer labels are taken as indices
    directly. Unknown names and out-of-range indices raise :class:`UnknownLabelError` (a ``ValueError``)
    naming the label, so the stream can skip and count the record instead of training on a silently
    wrong target.
    """

    num_classes: int
    lookup: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")

    def __call__(self, value) -> list[int]:
        return sorted(set(self._indices(value)))

    def multi_hot(self, value) -> np.ndarray:
        return labels_to_multi_hot(self(value), self.num_classes)

    def _indices(self, value) -> list[int]:
        if value is None:
            return []  # an unlabelled clip: an all-zero target
        if isinstance(value, bool):
            raise ValueError(f"a boolean is not a class label: {value!r}")
        if isinstance(value, int | np.integer):
            return [self._check_index(int(value))]
        if isinstance(value, str):
            return self._from_string(value)
        if isinstance(value, Mapping):
            return self._from_dict(value)
        if isinstance(value, Sequence | np.ndarray):
            return [i for item in value for i in self._indices(item)]
        raise ValueError(f"cannot read class labels from a {type(value).__name__}: {value!r}")

    def split(self, value: str) -> list[str]:
        """The labels a string holds: the string itself when it names a class (AudioSet display names hold
        commas), else its ``;``- or ``,``-separated parts."""
        value = value.strip()
        return [value] if value in self.lookup else split_label_string(value)

    def unknown(self, value) -> set[str]:
        """The parts of one record's label field that do not map (empty when it maps)."""
        try:
            self(value)
            return set()
        except ValueError:
            pass
        if isinstance(value, str):
            return {t for t in self.split(value) if t not in self.lookup} or {value.strip()}
        if isinstance(value, list | tuple):
            return set().union(*(self.unknown(item) for item in value))
        return {repr(value)}  # an out-of-range index, or a JSON sidecar naming no known class

    def _check_index(self, index: int) -> int:
        if not 0 <= index < self.num_classes:
            raise UnknownLabelError(f"class index {index} is outside [0, {self.num_classes})")
        return index

    def _from_string(self, value: str) -> list[int]:
        tokens = self.split(value)
        unknown = [t for t in tokens if t not in self.lookup]
        if unknown or not tokens:
            label = unknown[0] if unknown else value.strip()
            raise UnknownLabelError(f"unknown class label {label!r} (in {value.strip()!r})")
        return [self.lookup[t] for t in tokens]

    def _from_dict(self, value: Mapping) -> list[int]:
        # WebDataset JSON sidecar. Prefer names; fall back to integer ids if the names do not
        # resolve (e.g. a shard writer that used its own spelling of the display names).
        first_error = None
        for key in _DICT_NAME_KEYS + _DICT_INDEX_KEYS:
            if key in value and value[key] is not None:
                try:
                    return self._indices(value[key])
                except ValueError as err:
                    first_error = first_error or err
        if first_error is not None:
            raise first_error
        raise ValueError(
            f"no label key in the sample's JSON (looked for {_DICT_NAME_KEYS + _DICT_INDEX_KEYS}); "
            f"it has {sorted(value)}"
        )


def labels_to_multi_hot(indices: Iterable[int], num_classes: int) -> np.ndarray:
    """A float32 ``(num_classes,)`` vector with 1 at every index in ``indices``."""
    target = np.zeros(num_classes, dtype=np.float32)
    idx = np.fromiter((int(i) for i in indices), dtype=np.int64)
    if idx.size:
        if idx.min() < 0 or idx.max() >= num_classes:
            bad = idx[(idx < 0) | (idx >= num_classes)][0]
            raise ValueError(f"class index {bad} is outside [0, {num_classes})")
        target[idx] = 1.0
    return target


@dataclass(frozen=True)
class LabelGroup:
    """A parent node of a vocabulary (AudioSet's top-level groups, the corpus's sound families):
    ``children`` are the indices of its classes."""

    id: str
    name: str
    children: tuple[int, ...]


@dataclass(frozen=True)
class LabelVocabulary:
    """The ordered class table of a task: ``ids[i]`` and ``names[i]`` describe class ``i``.

    Args:
        ids: unique string ids (AudioSet MIDs, ``/hf/e/000`` for the corpus; the names themselves for
            a plain list of names).
        names: unique display names, the labels a model config's ``id2label`` carries.
        groups: parent nodes; each class belongs to at most one (``parent_of``).
        heldout: classes reserved for few-shot / open-set evaluation (``main_classes`` are the rest).

    Names and ids both resolve to a class (:meth:`index`); an id may equal its own class's name, never
    another class's. A record's label field (names, ids, indices, lists of them, ``;``-separated strings,
    a WebDataset JSON sidecar) becomes class indices with :meth:`indices` and a target with
    :meth:`multi_hot`; :meth:`unknown_labels` names the parts of it that are not classes.
    """

    ids: tuple[str, ...]
    names: tuple[str, ...]
    groups: tuple[LabelGroup, ...] = ()
    heldout: frozenset[int] = frozenset()

    id_to_index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    name_to_index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    parent_of: tuple[int | None, ...] = field(init=False, repr=False, compare=False)
    """Index into ``groups`` of each class's parent, ``None`` for a class without one."""
    _mapper: LabelMapper = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # Plain sequences are accepted; stored as tuples so that the vocabulary is hashable and immutable.
        for name in ("ids", "names", "groups"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "heldout", frozenset(int(i) for i in self.heldout))
        n = len(self.names)
        if n == 0:
            raise ValueError("a vocabulary needs at least one class")
        if len(self.ids) != n:
            raise ValueError(f"a vocabulary needs one id per name: {len(self.ids)} ids for {n} names")
        for kind, values in (("ids", self.ids), ("names", self.names)):
            if not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"class {kind} must be non-empty strings")
            if len(set(values)) != n:
                duplicate = next(v for i, v in enumerate(values) if v in values[:i])
                raise ValueError(f"class {kind} must be unique; {duplicate!r} occurs more than once")
        id_to_index = {v: i for i, v in enumerate(self.ids)}
        name_to_index = {v: i for i, v in enumerate(self.names)}
        clash = [v for v, i in id_to_index.items() if name_to_index.get(v, i) != i]
        if clash:
            raise ValueError(f"{clash[0]!r} is the id of one class and the name of another")
        if not self.heldout <= set(range(n)):
            raise ValueError(f"held-out class indices must be in [0, {n}), got {sorted(self.heldout)}")
        parent_of: list[int | None] = [None] * n
        for group_index, group in enumerate(self.groups):
            for child in group.children:
                if not 0 <= child < n:
                    raise ValueError(f"group {group.name!r} has class index {child}, outside [0, {n})")
                if parent_of[child] is not None:
                    raise ValueError(f"class {self.names[child]!r} is in more than one group")
                parent_of[child] = group_index
        object.__setattr__(self, "id_to_index", MappingProxyType(id_to_index))
        object.__setattr__(self, "name_to_index", MappingProxyType(name_to_index))
        object.__setattr__(self, "parent_of", tuple(parent_of))
        # Names and ids never point at different classes (checked above), so one lookup serves both.
        object.__setattr__(self, "_mapper", LabelMapper(n, {**name_to_index, **id_to_index}))

    def __reduce__(self):
        # Rebuilt from the constructor's fields: the derived tables are read-only proxies, which pickle
        # (used by process pools and datasets' fingerprinting) cannot copy.
        return _rebuild, (type(self), {f.name: getattr(self, f.name) for f in fields(self) if f.init})

    @classmethod
    def from_names(cls, names: Iterable[str], ids: Iterable[str] | None = None) -> LabelVocabulary:
        """A flat vocabulary from a list of names (e.g. tags mined from captions); ``ids``
        default to the names."""
        names = tuple(names)
        return cls(names if ids is None else tuple(ids), names)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        """``{index: display name}``, the form a model config's ``id2label`` takes."""
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return dict(self.name_to_index)

    @property
    def main_classes(self) -> tuple[int, ...]:
        """Indices of the classes not held out."""
        return tuple(i for i in range(len(self)) if i not in self.heldout)

    def index(self, label: str | int) -> int:
        """The class index of a display name, an id or an index; :class:`UnknownLabelError` (a
        ``KeyError`` and a ``ValueError``) for anything else."""
        if isinstance(label, int | np.integer) and not isinstance(label, bool):
            if 0 <= label < len(self):
                return int(label)
        elif isinstance(label, str):
            found = self.name_to_index.get(label, self.id_to_index.get(label))
            if found is not None:
                return found
        raise UnknownLabelError(f"{label!r} is not a class name, id or index of this vocabulary")

    def group_of(self, index: int) -> LabelGroup | None:
        """The parent group of class ``index`` (``None`` when it has none)."""
        parent = self.parent_of[index]
        return None if parent is None else self.groups[parent]

    def indices(self, labels) -> list[int]:
        """The sorted class indices of one record's label field: names, ids, indices (any mix, in lists,
        or ``;``-separated in a string), a WebDataset JSON sidecar; ``None`` (unlabelled) gives ``[]``.
        A label that is no class raises :class:`UnknownLabelError`."""
        return self._mapper(labels)

    def multi_hot(self, labels) -> np.ndarray:
        """Multi-hot float32 ``(num_classes,)`` target of one record's label field (see :meth:`indices`)."""
        return self._mapper.multi_hot(labels)

    def split_labels(self, value: str) -> list[str]:
        """The labels a string holds: itself when it is a class name or id (AudioSet display names hold
        commas), else its ``;``- or ``,``-separated parts."""
        return self._mapper.split(value)

    def unknown_labels(self, labels) -> set[str]:
        """The parts of one record's label field that name no class (empty when :meth:`indices` maps it)."""
        return self._mapper.unknown(labels)

    def label_mapper(self) -> LabelMapper:
        """A standalone :class:`LabelMapper` with this vocabulary's rules (what :meth:`indices` applies);
        its own copy of the lookup, so that changing it leaves the vocabulary alone."""
        return LabelMapper(len(self), dict(self._mapper.lookup))


def _rebuild(cls, kwargs):
    return cls(**kwargs)


@dataclass(frozen=True)
class AudioSetOntology(LabelVocabulary):
    """The AudioSet class table: a :class:`LabelVocabulary` whose ids are MIDs."""

    @property
    def mids(self) -> tuple[str, ...]:
        return self.ids

    @property
    def mid_to_index(self) -> Mapping[str, int]:
        return self.id_to_index


def load_audioset_ontology(path: str | Path = ONTOLOGY_CSV) -> AudioSetOntology:
    """Read an ``index,mid,display_name`` table and check it is the complete, ordered class list."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(rows[0]) != {"index", "mid", "display_name"}:
        raise ValueError(f"{path} must have the columns index,mid,display_name")
    indices = [int(r["index"]) for r in rows]
    if indices != list(range(len(rows))):
        raise ValueError(f"{path}: class indices must run 0..{len(rows) - 1} in order")
    return AudioSetOntology(tuple(r["mid"] for r in rows), tuple(r["display_name"] for r in rows))


AUDIOSET_ONTOLOGY = load_audioset_ontology()
