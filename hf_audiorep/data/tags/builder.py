"""The tag-system builder: (captioner) -> captions -> tags -> scores -> top-K vocabulary -> labels.

:class:`TagSystemBuilder` runs UTS's pipeline over a ``datasets.Dataset`` (or an ``IterableDataset``, or a
plain list of captions): tags every clip once (:meth:`~TagSystemBuilder.tag`), then for each K chooses
the vocabulary and adds a label column, dropping (and counting) the clips left without a tag in it.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .caption import AudioCaptioner
from .extract import ExtractorSpec, make_extractor, split_tags
from .vocabulary import TagSystem, _check_k, document_frequency

logger = logging.getLogger(__name__)

LABEL_FORMATS = ("class_label", "multi_hot")


@dataclass
class TaggedClips:
    """Every clip's tags (the pass that runs the models), from which any number of vocabularies are chosen.

    ``tags[i]`` are clip ``i``'s tags (empty when it got none); ``captions`` the captions they came from
    (``None`` when tags were given directly); ``source`` says how (JSON)."""

    tags: list[list[str]]
    captions: list[str] | None = None
    source: dict = field(default_factory=dict)
    generated_captions: bool = False

    @property
    def num_clips(self) -> int:
        return len(self.tags)

    @property
    def num_without_tags(self) -> int:
        return sum(1 for t in self.tags if not t)

    def document_frequency(self):
        return document_frequency(self.tags)


@dataclass
class TagSystemResult:
    """One K's outcome: the tag system, the labelled dataset (``None`` for a list of captions), the kept
    clips' indices in the input, and a JSON summary (N, clips dropped, vocabulary size, df statistics)."""

    tag_system: TagSystem
    dataset: Any
    kept: list[int]
    summary: dict


class TagSystemBuilder:
    """Builds UTS tag vocabularies and their labels from a dataset.

    Args:
        extractor: ``"default"`` (:class:`~.extract.KeywordTagExtractor`), a :class:`~.extract.TagExtractor`,
            or a text-generation pipeline / model id / local path (:class:`~.extract.LLMTagExtractor`,
            built with ``extractor_kwargs``).
        captioner: ``None`` (captions are in ``caption_column``), an :class:`~.caption.AudioCaptioner`, or a
            pipeline / model id that turns audio into text (built with ``captioner_kwargs``), run on
            ``audio_column``.
        caption_column: the captions; a dotted path reads inside nested records
            (``supervisions.0.caption`` in a Lhotse manifest).
        tags_column: per-clip tags given directly (a list, or a ``;``-separated string): no extractor runs.
        label_column: the column of labels added to the dataset (replaced if present).
        label_format: ``"class_label"``, a list of class indices typed ``List(ClassLabel(names=tags))``
            (the layout of the embedded corpus's ``labels``, read by the training stream), or
            ``"multi_hot"``, a float32 vector of length K.
        tags_output_column: also store every clip's extracted tags (all of them, before the top-K cut) in
            this column (``None``: not stored; an existing column is left alone).
        caption_output_column: where generated captions are stored (with a captioner).
        batch_size: captions per extractor call (for the progress bar and LLM batching).
        progress: progress bars.
    """

    def __init__(
        self,
        extractor: ExtractorSpec = "default",
        *,
        captioner: Any = None,
        caption_column: str = "caption",
        tags_column: str | None = None,
        audio_column: str = "audio",
        label_column: str = "tag_labels",
        label_format: str = "class_label",
        tags_output_column: str | None = "tags",
        caption_output_column: str = "generated_caption",
        batch_size: int = 64,
        progress: bool = True,
        extractor_kwargs: Mapping | None = None,
        captioner_kwargs: Mapping | None = None,
    ):
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if tags_column is not None and captioner is not None:
            raise ValueError("give either tags_column (tags as they are) or a captioner, not both")
        self.extractor = (
            None if tags_column is not None else make_extractor(extractor, **(extractor_kwargs or {}))
        )
        if captioner is not None and not isinstance(captioner, AudioCaptioner):
            captioner = AudioCaptioner(captioner, **{"progress": progress, **(captioner_kwargs or {})})
        self.captioner = captioner
        self.caption_column = caption_column
        self.tags_column = tags_column
        self.audio_column = audio_column
        self.label_column = label_column
        self.label_format = label_format
        self.tags_output_column = tags_output_column
        self.caption_output_column = caption_output_column
        self.batch_size = batch_size
        self.progress = progress

    # ------------------------------------------------------------------ pass 1: tags

    def tag(self, data) -> TaggedClips:
        """Every clip's tags: from ``tags_column``, or captions (``caption_column`` or the captioner) through
        the extractor (fitted on all captions first)."""
        from tqdm.auto import tqdm

        _check_data(data)
        if self.tags_column is not None:
            values = _read_column(data, self.tags_column, what="tags")
            tags = [split_tags(v) for v in values]
            return _nonempty(TaggedClips(tags, None, {"tags": f"column {self.tags_column!r}"}))
        if self.captioner is not None:
            captions = self.captioner.caption(_iter_audio(data, self.audio_column), total=_length(data))
            source = {"captions": self.captioner.describe()}
            generated = True
        else:
            captions = [
                _caption_text(v, self.caption_column) for v in _read_column(data, self.caption_column)
            ]
            source = {"captions": f"column {self.caption_column!r}"}
            generated = False
        _nonempty(TaggedClips([[]] * len(captions)))
        extractor = self.extractor.fit(captions)
        tags: list[list[str]] = []
        starts = range(0, len(captions), self.batch_size)
        for start in tqdm(starts, desc="extracting tags", unit="batch", disable=not self.progress):
            batch = captions[start : start + self.batch_size]
            tags += [list(t) for t in extractor.extract_batch(batch)]
        source["extractor"] = extractor.describe()
        return TaggedClips(tags, captions, source, generated)

    # ------------------------------------------------------------------ pass 2: vocabulary and labels

    def build(self, data, k: int, tagged: TaggedClips | None = None) -> TagSystemResult:
        """The top-``k`` tag system of ``data`` and ``data`` labelled with it (untagged clips dropped)."""
        _check_k(k)
        tagged = tagged if tagged is not None else self.tag(data)
        df = tagged.document_frequency()
        if not df:
            raise ValueError(
                f"no clip got a tag (all {tagged.num_clips} tag lists are empty): check the captions "
                f"({tagged.source.get('captions', tagged.source.get('tags'))}) and the extractor"
            )
        tag_system = TagSystem.from_document_frequency(df, tagged.num_clips, k, extractor=tagged.source)
        return self.apply(data, tagged, tag_system)

    def sweep(self, data, ks: Iterable[int]) -> dict[int, TagSystemResult]:
        """One tag system per K, from a single tagging pass."""
        ks = list(dict.fromkeys(ks))
        if not ks:
            raise ValueError("give at least one K")
        for k in ks:
            _check_k(k)
        tagged = self.tag(data)
        return {k: self.build(data, k, tagged) for k in ks}

    def apply(self, data, tagged: TaggedClips, tag_system: TagSystem) -> TagSystemResult:
        """Label ``data`` (tagged as ``tagged``) with ``tag_system``; clips without a vocabulary tag go."""
        if len(tagged.tags) != _length(data, len(tagged.tags)):
            raise ValueError(f"{len(tagged.tags)} tag lists for a dataset of {_length(data)} clips")
        indices = [tag_system.indices(tags) for tags in tagged.tags]
        kept = [i for i, idx in enumerate(indices) if idx]
        if not kept:
            raise ValueError(f"no clip keeps a tag of the {len(tag_system)}-tag vocabulary")
        dataset = None
        if _is_dataset(data):
            dataset = self._label_dataset(data, tagged, tag_system, indices, kept)
        return TagSystemResult(tag_system, dataset, kept, _summary(tagged, tag_system, indices, kept))

    def _columns_to_add(self, data, tagged: TaggedClips, tag_system: TagSystem, indices):
        from datasets import ClassLabel, List, Value

        if self.label_format == "class_label":
            labels = indices
            feature = List(ClassLabel(names=list(tag_system.names)))
        else:
            labels = [tag_system.multi_hot([tag_system.names[i] for i in idx]).tolist() for idx in indices]
            feature = List(Value("float32"), length=len(tag_system))
        columns = {self.label_column: (labels, feature)}
        existing = set(_column_names(data) or ())
        if self.tags_output_column and self.tags_output_column not in existing:
            columns[self.tags_output_column] = (tagged.tags, List(Value("string")))
        if tagged.generated_captions and self.caption_output_column not in existing:
            columns[self.caption_output_column] = (tagged.captions, Value("string"))
        return columns

    def _label_dataset(self, data, tagged, tag_system, indices, kept):
        from datasets import Dataset, Features

        columns = self._columns_to_add(data, tagged, tag_system, indices)
        if self.label_column in (_column_names(data) or ()):
            logger.warning("replacing the dataset's %r column with the tag labels", self.label_column)
            data = data.remove_columns(self.label_column)
        if isinstance(data, Dataset):
            for name, (values, feature) in columns.items():
                data = data.add_column(name, values, feature=feature)
            return data.select(kept) if len(kept) < len(data) else data

        features = None
        if data.features is not None:
            features = Features({**data.features, **{name: f for name, (_, f) in columns.items()}})

        def add(example, index):
            return {**example, **{name: values[index] for name, (values, _) in columns.items()}}

        keep = set(kept)
        # The stream's position is the clip's index in the input: label first, then filter on it.
        labelled = data.map(add, with_indices=True, features=features)
        return labelled.filter(lambda _, index: index in keep, with_indices=True)


def build_tag_system(data, k: int | Sequence[int] = 800, **builder_kwargs):
    """:class:`TagSystemBuilder` in one call: a :class:`TagSystemResult` for one K, a ``{K: result}`` dict
    for a sequence of them (tagging once)."""
    builder = TagSystemBuilder(**builder_kwargs)
    if isinstance(k, Sequence) and not isinstance(k, str):
        return builder.sweep(data, k)
    _check_data(data)
    return builder.build(data, k)


# ---------------------------------------------------------------------------------------------------------
# reading the input
# ---------------------------------------------------------------------------------------------------------


def _is_dataset(data) -> bool:
    from datasets import Dataset, IterableDataset

    return isinstance(data, Dataset | IterableDataset)


def _check_data(data) -> None:
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(data, DatasetDict | IterableDatasetDict):
        raise ValueError(f"pick one split of the dataset (it has {sorted(data)}), e.g. data['train']")
    if isinstance(data, str):
        raise TypeError("expected a dataset or a list of captions, got one string")


def _column_names(data) -> list[str] | None:
    return getattr(data, "column_names", None)


def _length(data, default=None):
    try:
        return len(data)
    except TypeError:  # a stream
        return default


def _read_column(data, path: str, what: str = "captions") -> list:
    """The values of column ``path`` (``a.0.b`` walks into nested records) of every clip."""
    if _is_dataset(data):
        top, _, rest = path.partition(".")
        names = _column_names(data)
        if names is not None and top not in names:
            raise ValueError(f"the dataset has no {what} column {top!r}; its columns are {names}")
        if hasattr(data, "__len__"):
            values = list(data[top])
        else:
            values = [record[top] for record in data.select_columns([top])]
        return [_walk(v, rest, path) for v in values] if rest else values
    items = list(data)
    if items and all(isinstance(v, Mapping) for v in items):  # records
        return [_walk(v, path, path) for v in items]
    if what == "captions" and not all(v is None or isinstance(v, str) for v in items):
        raise ValueError("a list input must hold captions (strings) or records (dicts)")
    return items


def _iter_audio(data, column: str):
    """The audio values one clip at a time (a whole decoded column would not fit in memory)."""
    if not _is_dataset(data):
        # records hold their audio under `column`; anything else is an audio value itself
        yield from (v[column] if isinstance(v, Mapping) and column in v else v for v in data)
        return
    names = _column_names(data)
    if names is not None and column not in names:
        raise ValueError(f"the dataset has no audio column {column!r}; its columns are {names}")
    for record in data.select_columns([column]):
        yield record[column]


def _walk(value, path: str, full: str):
    for key in path.split(".") if path else ():
        try:
            value = (
                value[int(key)] if isinstance(value, Sequence) and not isinstance(value, str) else value[key]
            )
        except (KeyError, IndexError, ValueError, TypeError):
            raise ValueError(f"a record has no {full!r}") from None
    return value


def _caption_text(value, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return " ".join(value)  # several captions of one clip
    raise ValueError(f"column {column!r} holds {type(value).__name__} values, not caption text")


def _nonempty(tagged: TaggedClips) -> TaggedClips:
    if tagged.num_clips == 0:
        raise ValueError("the input has no clips")
    return tagged


def _stats(values) -> dict:
    values = list(values)
    if not values:
        return {"min": None, "median": None, "mean": None, "max": None}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 4),
        "max": max(values),
    }


def _top_tags(tag_system: TagSystem, n: int) -> list[dict]:
    # A tag system read from a bare label file has no df or scores: its tags are listed without them.
    names = tag_system.names[:n]
    df = tag_system.df[:n] if tag_system.df is not None else (None,) * len(names)
    scores = tag_system.scores[:n] if tag_system.scores is not None else (None,) * len(names)
    return [
        {"tag": t, "df": d, "score": None if s is None else round(s, 4)}
        for t, d, s in zip(names, df, scores, strict=True)
    ]


def _summary(tagged: TaggedClips, tag_system: TagSystem, indices, kept) -> dict:
    total = sum(len(t) for t in tagged.tags)
    covered = sum(len(i) for i in indices)
    return {
        "k": tag_system.k,
        "vocabulary_size": len(tag_system),
        "num_candidate_tags": tag_system.num_candidates,
        "num_clips": tagged.num_clips,
        "num_clips_without_tags": tagged.num_without_tags,
        "num_dropped": tagged.num_clips - len(kept),
        "num_kept": len(kept),
        "tags_per_clip": _stats(len(t) for t in tagged.tags),
        "labels_per_kept_clip": _stats(len(indices[i]) for i in kept),
        "vocabulary_df": _stats(tag_system.df or ()),
        "tag_occurrences_in_vocabulary": round(covered / total, 4) if total else 0.0,
        "top_tags": _top_tags(tag_system, 30),
        "source": tagged.source,
    }
