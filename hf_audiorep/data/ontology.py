"""The 527 AudioSet classes and the mapping from a record's label field to class indices.

The class table is AudioSet's ``class_labels_indices.csv`` (index, MID, display name), shipped as
``audioset_ontology.csv`` beside this module. AudioSet ontology, (c) Google, CC BY 4.0,
https://research.google.com/audioset/ . None of the Hub copies of AudioSet carries this table, and
models trained on them must agree on the class order, so the library ships one.

``LabelMapper`` turns whatever a dataset stores as labels into class indices: MIDs (``/m/09x0r``),
display names, integer indices, lists of those, ``;``-separated strings, or the JSON dict of a
WebDataset sample (``{"label": [...], "label_id": [...]}``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class LabelMapper:
    """Callable turning one record's label field into a sorted list of class indices.

    ``lookup`` maps names (and, for AudioSet, MIDs) to indices; integer labels are taken as indices
    directly. Unknown names and out-of-range indices raise ``ValueError`` naming the label, so the
    stream can skip and count the record instead of training on a silently wrong target.
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

    def _check_index(self, index: int) -> int:
        if not 0 <= index < self.num_classes:
            raise ValueError(f"class index {index} is outside [0, {self.num_classes})")
        return index

    def _from_string(self, value: str) -> list[int]:
        value = value.strip()
        if value in self.lookup:
            return [self.lookup[value]]
        tokens = split_label_string(value)
        unknown = [t for t in tokens if t not in self.lookup]
        if unknown or not tokens:
            raise ValueError(f"unknown class label {unknown[0] if unknown else value!r} (in {value!r})")
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
class AudioSetOntology:
    """The AudioSet class table: ``mids[i]`` and ``names[i]`` describe class ``i``."""

    mids: tuple[str, ...]
    names: tuple[str, ...]

    def __post_init__(self):
        if len(self.mids) != len(self.names):
            raise ValueError("mids and names must have the same length")
        if len(set(self.mids)) != len(self.mids):
            raise ValueError("AudioSet MIDs must be unique")
        object.__setattr__(self, "mid_to_index", MappingProxyType({m: i for i, m in enumerate(self.mids)}))
        object.__setattr__(self, "name_to_index", MappingProxyType({n: i for i, n in enumerate(self.names)}))

    mid_to_index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    name_to_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.mids)

    @property
    def id2label(self) -> dict[int, str]:
        """``{index: display name}``, the form a model config's ``id2label`` takes."""
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return dict(self.name_to_index)

    def index(self, label: str | int) -> int:
        """The class index of a MID, a display name or an index."""
        indices = self.label_mapper()(label)
        if len(indices) != 1:
            raise ValueError(f"{label!r} does not name exactly one AudioSet class")
        return indices[0]

    def label_mapper(self) -> LabelMapper:
        # MIDs and display names never collide (MIDs start with '/'), so one lookup serves both.
        return LabelMapper(len(self), {**self.name_to_index, **self.mid_to_index})

    def multi_hot(self, labels) -> np.ndarray:
        """Multi-hot float32 vector from MIDs, display names or indices (any mix)."""
        return self.label_mapper().multi_hot(labels)


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
