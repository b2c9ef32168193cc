"""Tag scoring, top-K selection and the tag system's files.

UTS (arXiv 2603.25767) keeps the ``K`` tags of highest score

    s(t) = df(t) * log((N + 1) / (df(t) + 1))

over ``N`` clips, where ``df(t)`` is the number of clips whose tag set holds ``t``: frequent tags score
high, tags on nearly every clip (fillers) fall back toward zero. Ties are broken by the tag string, so a
vocabulary is a deterministic function of the tags.

A :class:`TagSystem` is the chosen vocabulary (a :class:`~hf_audiorep.data.ontology.LabelVocabulary`,
class ``i`` = the tag of rank ``i``) plus how it was made (K, N, each tag's df and score, the extractor).
It is saved as Auden's label file, ``{"0": "tag", "1": ...}`` (``label_<K>.json``), with the rest in a
sidecar ``label_<K>.meta.json``, and loads from a local file or folder or from a Hub repository.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..ontology import LabelVocabulary

SCORE_FORMULA = "df * log((N + 1) / (df + 1))"
META_SUFFIX = ".meta.json"
_FORMAT = "hf_audiorep.tag_system"
_LABEL_FILE = re.compile(r"^label_(.+)\.json$")


def document_frequency(tag_lists: Iterable[Iterable[str]]) -> Counter:
    """``df(t)``: in how many clips (tag lists) each tag occurs; a tag repeated within a clip counts once."""
    df: Counter = Counter()
    for tags in tag_lists:
        df.update(set(tags))
    return df


def tag_score(df: int, num_clips: int) -> float:
    """``df * log((N + 1) / (df + 1))``, the UTS score of a tag found in ``df`` of ``num_clips`` clips."""
    if not 0 <= df <= num_clips:
        raise ValueError(f"a tag's df must be in [0, N={num_clips}], got {df}")
    return df * math.log((num_clips + 1) / (df + 1))


def score_tags(df: Mapping[str, int], num_clips: int) -> dict[str, float]:
    """The score of every tag of a document-frequency table over ``num_clips`` clips."""
    return {tag: tag_score(int(count), num_clips) for tag, count in df.items()}


def rank_tags(scores: Mapping[str, float]) -> list[str]:
    """Tags by decreasing score; equal scores in string order (so the result never depends on dict order)."""
    return sorted(scores, key=lambda tag: (-scores[tag], tag))


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        raise ValueError(f"K (the vocabulary size) must be a positive integer, got {k!r}")
    return int(k)


def select_top_k(scores: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` best tags (fewer when there are fewer tags), best first."""
    return rank_tags(scores)[: _check_k(k)]


def label_file_name(k: int | str) -> str:
    """``label_<K>.json``, the name Auden gives the label file of a K-tag vocabulary."""
    return f"label_{k}.json"


def _meta_name(label_file: str) -> str:
    return (
        label_file[: -len(".json")] + META_SUFFIX
        if label_file.endswith(".json")
        else label_file + META_SUFFIX
    )


@dataclass(frozen=True)
class TagSystem:
    """A mined tag vocabulary and how it was made.

    Args:
        vocabulary: the tags as the library's label vocabulary; class ``i`` is the tag of rank ``i``.
        k: the K asked for (the vocabulary is smaller when fewer tags were found); ``None`` if unknown.
        num_clips: ``N``, the clips the tags were counted over.
        df, scores: per vocabulary tag, in class order (``None`` for a bare label file).
        num_candidates: distinct tags before the top-K cut.
        extractor: how the tags were obtained (the extractor's ``describe()``), free JSON.
    """

    vocabulary: LabelVocabulary
    k: int | None = None
    num_clips: int | None = None
    df: tuple[int, ...] | None = None
    scores: tuple[float, ...] | None = None
    num_candidates: int | None = None
    extractor: Mapping | None = field(default=None, compare=False)

    def __post_init__(self):
        n = len(self.vocabulary)
        for name in ("df", "scores"):
            values = getattr(self, name)
            if values is not None:
                values = tuple(values)
                if len(values) != n:
                    raise ValueError(f"{name} needs one value per tag: {len(values)} for {n} tags")
                object.__setattr__(self, name, values)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_document_frequency(
        cls, df: Mapping[str, int], num_clips: int, k: int, *, extractor: Mapping | None = None
    ) -> TagSystem:
        """The top-``k`` tags of a document-frequency table over ``num_clips`` clips."""
        k = _check_k(k)
        if num_clips <= 0:
            raise ValueError(f"the number of clips must be positive, got {num_clips}")
        df = {tag: int(count) for tag, count in df.items() if count > 0}
        if not df:
            raise ValueError("no tags to choose from: every clip's tag list is empty")
        scores = score_tags(df, num_clips)
        chosen = select_top_k(scores, k)
        return cls(
            LabelVocabulary.from_names(chosen),
            k=k,
            num_clips=num_clips,
            df=tuple(df[t] for t in chosen),
            scores=tuple(scores[t] for t in chosen),
            num_candidates=len(df),
            extractor=extractor,
        )

    @classmethod
    def from_tag_lists(
        cls, tag_lists: Sequence[Iterable[str]], k: int, *, extractor: Mapping | None = None
    ) -> TagSystem:
        """Score the tags of ``N = len(tag_lists)`` clips and keep the top ``k``."""
        return cls.from_document_frequency(
            document_frequency(tag_lists), len(tag_lists), k, extractor=extractor
        )

    # ------------------------------------------------------------------ use

    @property
    def names(self) -> tuple[str, ...]:
        return self.vocabulary.names

    def __len__(self) -> int:
        return len(self.vocabulary)

    @property
    def id2label(self) -> dict[int, str]:
        """For a model config: ``config.id2label = tag_system.id2label``."""
        return self.vocabulary.id2label

    @property
    def label2id(self) -> dict[str, int]:
        return self.vocabulary.label2id

    def indices(self, tags: Iterable[str]) -> list[int]:
        """Sorted class indices of the tags of one clip that are in the vocabulary (others are ignored:
        a clip's tags are usually a superset of the top K)."""
        lookup = self.vocabulary.name_to_index
        return sorted({lookup[t] for t in tags if t in lookup})

    def multi_hot(self, tags: Iterable[str]) -> np.ndarray:
        """Float32 ``(len(self),)`` target with 1 for every tag of ``tags`` in the vocabulary."""
        target = np.zeros(len(self), dtype=np.float32)
        target[self.indices(tags)] = 1.0
        return target

    # ------------------------------------------------------------------ files

    def label_file(self) -> dict[str, str]:
        """Auden's label-file mapping, id -> tag: ``{"0": "speech", "1": ...}``."""
        return {str(i): name for i, name in enumerate(self.names)}

    def metadata(self) -> dict:
        """What the sidecar holds: K, N, the score, the extractor and each tag's df and score."""
        tags = [{"id": i, "tag": name} for i, name in enumerate(self.names)]
        for name in ("df", "scores"):
            values = getattr(self, name)
            if values is not None:
                for entry, value in zip(tags, values, strict=True):
                    entry["df" if name == "df" else "score"] = value
        return {
            "format": _FORMAT,
            "format_version": 1,
            "k": self.k,
            "vocabulary_size": len(self),
            "num_clips": self.num_clips,
            "num_candidate_tags": self.num_candidates,
            "score": SCORE_FORMULA,
            "tie_break": "tag string, ascending",
            "extractor": dict(self.extractor) if self.extractor is not None else None,
            "tags": tags,
        }

    def default_filename(self) -> str:
        return label_file_name(self.k if self.k is not None else len(self))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the label file and its ``.meta.json`` sidecar. ``path`` is a ``.json`` file or a folder
        (which gets ``label_<K>.json``). Returns the label file's path."""
        path = Path(path)
        if path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / self.default_filename()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.label_file(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        meta = path.with_name(_meta_name(path.name))
        meta.write_text(json.dumps(self.metadata(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_config(cls, config) -> TagSystem:
        """The vocabulary a model was trained on, from its config's ``id2label`` (or that mapping itself)."""
        id2label = getattr(config, "id2label", config)
        if not isinstance(id2label, Mapping):
            raise ValueError(f"expected a config with an id2label mapping, got {type(config).__name__}")
        return cls(LabelVocabulary.from_names(_names_from_label_mapping(dict(id2label), "id2label")))

    @classmethod
    def from_label_file(
        cls, path: str | os.PathLike, *, meta_path: str | os.PathLike | None = None
    ) -> TagSystem:
        """Read a label file (and its sidecar, when there is one beside it or at ``meta_path``)."""
        path = Path(path)
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not a JSON label file: {err}") from None
        names = _names_from_label_mapping(mapping, path)
        meta_path = Path(meta_path) if meta_path is not None else path.with_name(_meta_name(path.name))
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else None
        return cls._from_parts(names, meta, path)

    @classmethod
    def _from_parts(cls, names: list[str], meta: Mapping | None, where) -> TagSystem:
        vocabulary = LabelVocabulary.from_names(names)
        if not meta:
            return cls(vocabulary)
        entries = meta.get("tags") or []
        if [e.get("tag") for e in entries] != names:
            raise ValueError(f"{where}: the sidecar's tags do not match the label file's (edited by hand?)")
        df = [e.get("df") for e in entries]
        scores = [e.get("score") for e in entries]
        return cls(
            vocabulary,
            k=meta.get("k"),
            num_clips=meta.get("num_clips"),
            df=tuple(df) if all(v is not None for v in df) else None,
            scores=tuple(scores) if all(v is not None for v in scores) else None,
            num_candidates=meta.get("num_candidate_tags"),
            extractor=meta.get("extractor"),
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        filename: str | None = None,
        *,
        k: int | str | None = None,
        repo_type: str = "model",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
    ) -> TagSystem:
        """Load a label file from a local file, a local folder (the layout of a Hub repository) or a Hub
        repository (``huggingface_hub.hf_hub_download``; a cached copy serves offline).

        ``filename`` (or ``k``, meaning ``label_<k>.json``) picks the file in a folder or repository; it
        may be left out when the folder holds a single label file.
        """
        if filename is None and k is not None:
            filename = label_file_name(k)
        local = Path(path_or_repo_id)
        if local.is_file():
            return cls.from_label_file(local)
        if local.is_dir():
            if filename is None:
                filename = _only_label_file(sorted(p.name for p in local.iterdir()), local)
            target = local / filename
            if not target.is_file():
                raise FileNotFoundError(f"{local} has no {filename}")
            return cls.from_label_file(target)
        return cls._from_hub(str(path_or_repo_id), filename, repo_type, revision, cache_dir, token)

    @classmethod
    def _from_hub(cls, repo_id, filename, repo_type, revision, cache_dir, token) -> TagSystem:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        from ...hub_errors import translate_hub_errors

        # "org/name" may be a Hub id; an absolute, relative or deeper path can only be a missing file.
        if repo_id.startswith((".", "/", "~")) or repo_id.count("/") > 1 or repo_id.endswith(".json"):
            raise FileNotFoundError(f"no such file or folder: {repo_id}")
        common = {"repo_type": repo_type, "revision": revision, "token": token}
        with translate_hub_errors(repo_id, repo_type=repo_type, hint="or pass a local label file"):
            if filename is None:
                files = HfApi(token=token).list_repo_files(repo_id, repo_type=repo_type, revision=revision)
                filename = _only_label_file(files, repo_id)
            path = hf_hub_download(repo_id, filename, cache_dir=cache_dir, **common)
        try:
            meta_path = hf_hub_download(repo_id, _meta_name(filename), cache_dir=cache_dir, **common)
        except (EntryNotFoundError, LocalEntryNotFoundError, OSError):
            meta_path = None  # a bare label file (Auden's own) has no sidecar
        return cls.from_label_file(path, meta_path=meta_path)

    def push_to_hub(
        self,
        repo_id: str,
        filename: str | None = None,
        *,
        repo_type: str = "model",
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        token: str | bool | None = None,
        api=None,
    ) -> list:
        """Upload the label file and its sidecar to ``repo_id`` (created if missing) with
        ``HfApi.upload_file``; returns the two commit infos. ``api`` replaces the ``HfApi()`` used."""
        from huggingface_hub import HfApi

        from ...hub_errors import translate_hub_errors

        api = api if api is not None else HfApi(token=token)
        filename = filename or self.default_filename()
        label_bytes = (json.dumps(self.label_file(), indent=2, ensure_ascii=False) + "\n").encode()
        meta_bytes = (json.dumps(self.metadata(), indent=2, ensure_ascii=False) + "\n").encode()
        message = commit_message or f"Add the {len(self)}-tag vocabulary {filename}"
        commits = []
        with translate_hub_errors(repo_id, repo_type=repo_type, upload=True):
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
            for name, content in ((filename, label_bytes), (_meta_name(filename), meta_bytes)):
                commits.append(
                    api.upload_file(
                        path_or_fileobj=content,
                        path_in_repo=name,
                        repo_id=repo_id,
                        repo_type=repo_type,
                        revision=revision,
                        commit_message=message,
                    )
                )
        return commits


def _names_from_label_mapping(mapping, where) -> list[str]:
    """The tags of an id -> tag label file, in id order (a plain JSON list is read as well)."""
    if isinstance(mapping, list):
        names = mapping
    elif isinstance(mapping, dict):
        try:
            ids = sorted(int(key) for key in mapping)
        except (TypeError, ValueError):
            raise ValueError(f'{where}: label-file keys must be class ids such as "0", "1"') from None
        if ids != list(range(len(ids))):
            raise ValueError(f"{where}: label-file ids must run 0..{len(ids) - 1} without gaps")
        by_id = {int(key): value for key, value in mapping.items()}
        names = [by_id[i] for i in ids]
    else:
        raise ValueError(f'{where}: a label file is a JSON object {{"0": "tag", ...}}')
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{where}: a label file needs at least one tag, each a non-empty string")
    return list(names)


def _only_label_file(names: Iterable[str], where) -> str:
    found = sorted(n for n in names if _LABEL_FILE.match(n) and not n.endswith(META_SUFFIX))
    if len(found) != 1:
        what = f"several label files ({', '.join(found)})" if found else "no label_<K>.json file"
        raise FileNotFoundError(f"{where} has {what}; pass filename= or k=")
    return found[0]
