"""Open an audio-tagging dataset from the Hub, a local folder or a ``datasets`` object.

Every source comes back as an ``AudioSource``: a ``datasets`` Dataset or IterableDataset whose
audio column is cast to ``Audio(decode=False)`` (so ``decode.decode_audio`` decodes it and a broken
clip can be skipped), plus its ``LabelVocabulary``, which names the classes and turns the label field
of a record into class indices.

Layouts understood:

- ``agkphysics/AudioSet`` (Hub, Parquet): ``video_id``, ``audio`` (FLAC, 48/44.1 kHz),
  ``labels`` (MIDs), ``human_labels``; configs ``balanced`` (splits train/test), ``unbalanced``
  (train/test) and ``full`` (bal_train/unbal_train/eval). Locally: ``<root>/data/<bal_train|
  unbal_train|eval>/*.parquet``.
- ``confit/audioset-16khz-wds`` (Hub, WebDataset, 16 kHz): configs ``20k``/``500k``/``2m``, files
  ``<config>/<train|test>/*.tar``. Each sample is ``<key>.wav`` (or ``.flac``) plus ``<key>.json``;
  public scripts that read these shards take the JSON as ``{"id": video id, "label": [display
  names], "label_id": [class indices]}``. The Hub card does not document the keys, so the vocabulary
  accepts names, MIDs or indices under any of the usual keys and prefers names (see
  ``LabelVocabulary.indices``); the audio column is whichever column is an ``Audio`` feature.
- Lhotse cut manifests (``.jsonl`` / ``.jsonl.gz``, e.g. Auden's UTS), whose audio is found under
  ``audio_root`` (see ``lhotse_cuts``): one manifest, or a glob of them, is the train split; a folder holds
  one manifest (or several) per split, named ``<anything>_<split>.jsonl.gz`` (``valid`` and ``dev`` also
  name the validation split); a ``{split}`` in the path is replaced by the split's name.
- local Parquet files or WebDataset ``.tar`` shards (a directory, optionally with split
  sub-directories as above, or a glob), and audio folders (folder-per-label, or a ``metadata.csv``
  with ``file_name`` and a labels column).
- a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk`` (``datasets.load_from_disk``):
  a DatasetDict's splits are the splits; a single Dataset is the 'train' split.
- a ``datasets.Dataset``/``IterableDataset`` (or a ``DatasetDict``, indexed by ``split``) passed
  directly, as the embedded corpus is; ``ClassLabel`` features give the vocabulary (the library's own
  table, ids and groups included, when the names are AudioSet's or the embedded corpus's).

Label strings give AudioSet's vocabulary only when they hold MIDs (``/m/...``); other strings, AudioSet
display names among them, give a vocabulary of the names found, sorted.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from datasets import Audio, ClassLabel, Dataset, DatasetDict, IterableDataset, IterableDatasetDict
from datasets.data_files import DataFilesDict, get_data_patterns
from datasets.packaged_modules.audiofolder.audiofolder import AudioFolder

from ..hub_errors import check_hub_reachable, translate_hub_errors
from .decode import AUDIO_EXTENSIONS
from .embedded import EMBEDDED_ONTOLOGY
from .lhotse_cuts import is_lhotse_cut_manifest, load_lhotse_cuts
from .ontology import AUDIOSET_ONTOLOGY, LabelVocabulary, is_mid

logger = logging.getLogger(__name__)

_AUDIO_KEYS = ("audio", "flac", "wav", "mp3", "ogg", "opus", "m4a")
_LABEL_COLUMNS = ("labels", "label", "json", "tags", "mids", "human_labels")
# How datasets says a split is missing: 'Unknown split "x"' (prepared data), 'Bad split: x' (streaming).
_MISSING_SPLIT = re.compile(r"^(Unknown split|Bad split)")
_CUT_MANIFEST_SUFFIXES = (".jsonl", ".jsonl.gz")
#: other names of a split in a folder of cut manifests (Lhotse recipes name the validation split 'dev')
_CUT_SPLIT_ALIASES = {"validation": ("valid", "dev"), "test": ("eval",)}
#: the split a manifest holds is the last part of its name after one of these
_CUT_SPLIT_SEPARATORS = ("_", "-", ".")
SPLIT_PLACEHOLDER = "{split}"


class SplitNotFoundError(ValueError):
    """The dataset has no split of the requested name (the message lists the splits it has)."""


class _AudioFolder(AudioFolder):
    """datasets' audiofolder (folder-per-label or metadata files, split folders), reading every extension
    the decoder opens: its own list lacks .oga, .m4a and .aac, whose files it skips without a word."""

    EXTENSIONS = list(AUDIO_EXTENSIONS)


# Part of the cache key: a cache prepared with another extension list holds other files.
_AUDIO_FOLDER_HASH = hashlib.sha256(" ".join(AUDIO_EXTENSIONS).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class _HubLayout:
    layout: str
    label_column: str
    default_config: str
    split_aliases: dict[str, dict[str, str]]  # config -> {requested split: split of that config}


HUB_LAYOUTS: dict[str, _HubLayout] = {
    "agkphysics/AudioSet": _HubLayout(
        "audioset-parquet",
        "labels",
        "balanced",
        {
            "balanced": {"bal_train": "train", "eval": "test", "validation": "test"},
            "unbalanced": {"unbal_train": "train", "eval": "test", "validation": "test"},
            "full": {"train": "bal_train", "test": "eval", "validation": "eval"},
        },
    ),
    "confit/audioset-16khz-wds": _HubLayout(
        "webdataset",
        "json",
        "20k",
        {config: {"eval": "test", "validation": "test"} for config in ("20k", "500k", "2m")},
    ),
}

# Local copies of the Hub layouts: which directory holds a split, per config.
_LOCAL_SPLIT_DIRS = {
    None: {"train": ("train", "bal_train"), "test": ("test", "eval"), "validation": ("validation", "eval")},
    "balanced": {"train": ("bal_train",), "test": ("eval",), "validation": ("eval",)},
    "unbalanced": {"train": ("unbal_train",), "test": ("eval",), "validation": ("eval",)},
}


@dataclass(frozen=True)
class AudioSource:
    """A dataset plus what the stream needs to turn its records into (waveform, multi-hot) pairs.

    ``vocabulary`` is the class table the targets index (AudioSet's, the embedded corpus's, or one built
    from the dataset's ``ClassLabel`` or label strings) and reads the ``label_column`` of a record.
    """

    dataset: Dataset | IterableDataset
    audio_column: str
    label_column: str | None
    vocabulary: LabelVocabulary
    layout: str

    @property
    def label_names(self) -> tuple[str, ...]:
        """The class names in class order: what a model config's ``id2label`` holds."""
        return self.vocabulary.names

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    def label_to_index(self, value) -> list[int]:
        """The sorted class indices of one record's label field (``vocabulary.indices``)."""
        return self.vocabulary.indices(value)

    @property
    def is_streaming(self) -> bool:
        return isinstance(self.dataset, IterableDataset)


def label_frequencies(source: AudioSource, max_records: int | None = None) -> np.ndarray:
    """The fraction of records that carry each class, ``(num_classes,)`` float64, read from the label
    column alone (no audio is decoded): the label prior a fresh multi-label head can start from
    (``objectives.classification.init_bias_from_prior``).

    A streamed source is read up to ``max_records`` records (required then: a stream may never end); a
    map-style one whole, or its first ``max_records``.
    """
    if source.label_column is None:
        raise ValueError("the source has no label column, so it has no label frequencies")
    dataset = source.dataset
    if source.is_streaming and max_records is None:
        raise ValueError("max_records is required for a streamed source (the stream may never end)")
    if max_records is not None:
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        dataset = (
            dataset.take(max_records)
            if source.is_streaming
            else dataset.select(range(min(max_records, len(dataset))))
        )
    counts, records = np.zeros(source.num_classes), 0
    for record in dataset.select_columns([source.label_column]):
        counts[source.label_to_index(record[source.label_column])] += 1
        records += 1
    if records == 0:
        raise ValueError("the source has no records, so it has no label frequencies")
    return counts / records


def load_audio_source(
    name_or_path,
    split: str = "train",
    *,
    streaming: bool = False,
    config_name: str | None = None,
    label_column: str | None = None,
    audio_column: str | None = None,
    data_files=None,
    label_names: Sequence[str] | LabelVocabulary | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    audio_root: str | os.PathLike | None = None,
) -> AudioSource:
    """Open ``name_or_path`` (Hub id, local path or glob, or a ``datasets`` object) as an ``AudioSource``.

    ``label_names`` (class names, or a whole ``LabelVocabulary`` such as another split's) fixes the
    vocabulary and class order, e.g. when the labels are free strings that are not AudioSet classes and
    the dataset cannot be scanned (streaming). ``config_name`` picks a Hub
    config (``balanced``, ``unbalanced``, ``full``; ``20k``, ``500k``, ``2m``) or, for a local copy,
    the matching sub-directory layout. ``audio_root`` is the folder a Lhotse cut manifest's audio is found
    in (``lhotse_cuts``); it is an error for any other dataset.
    """
    columns = {"audio_column": audio_column, "label_column": label_column, "label_names": label_names}
    if isinstance(name_or_path, DatasetDict | IterableDatasetDict):
        if split not in name_or_path:
            raise ValueError(f"split {split!r} not in the dataset; it has {sorted(name_or_path)}")
        name_or_path = name_or_path[split]
    if isinstance(name_or_path, Dataset | IterableDataset):
        return _make_source(name_or_path, "dataset", **columns)
    if not isinstance(name_or_path, str | os.PathLike):
        raise TypeError(
            f"expected a Hub id, a local path or a datasets object, got {type(name_or_path).__name__}"
        )

    name = os.fspath(name_or_path)
    common = {"streaming": streaming, "cache_dir": cache_dir}
    manifests = cut_manifests_for_split(name, split)
    if manifests is not None:
        # Map-style even when streaming is asked for: the manifest is read whole to resolve its audio.
        dataset = load_lhotse_cuts(manifests, audio_root, cache_dir=cache_dir)
        return _make_source(dataset, "lhotse-cuts", **columns)
    if audio_root is not None:
        raise ValueError(f"audio_root is read for Lhotse cut manifests only, and {name!r} is not one")
    if name in ("parquet", "webdataset", "audiofolder") and data_files is not None:
        dataset = datasets.load_dataset(name, data_files=data_files, split=split, **common)
        return _make_source(dataset, "audioset-parquet" if name == "parquet" else name, **columns)
    if glob.has_magic(name) or os.path.exists(name):
        return _load_local(name, split, config_name, columns, common)
    return _load_hub(name, split, config_name, data_files, revision, columns, common)


def _load_hub(name, split, config_name, data_files, revision, columns, common):
    # The real Hub path: only load_dataset with the repo id, so datasets handles auth, retries and
    # streaming. It is the same builder (parquet / webdataset) that the local layouts go through.
    hub = HUB_LAYOUTS.get(name)
    if hub is not None:
        if config_name is None and data_files is None:
            config_name = hub.default_config
            logger.info("%s: using config %r (pass config_name to choose another)", name, config_name)
        split = hub.split_aliases.get(config_name, {}).get(split, split)
    # One request without retries first: with no network, datasets would retry for minutes before failing.
    check_hub_reachable(name, revision=revision)
    # No network, offline mode, a bad token or a missing repo: one HubUnreachableError naming the repo.
    with translate_hub_errors(name):
        try:
            dataset = datasets.load_dataset(
                name, config_name, split=split, data_files=data_files, revision=revision, **common
            )
        except ValueError as err:
            if _MISSING_SPLIT.match(str(err)):
                raise SplitNotFoundError(f"{name}: {err}") from err
            raise
        if hub is None:  # may read the first records of a stream to find its label vocabulary
            return _make_source(dataset, _layout_of_features(dataset), **columns)
    label_column = columns["label_column"] or hub.label_column
    # Known AudioSet repositories: no need to read records to recognise the vocabulary.
    return _make_source(dataset, hub.layout, **{**columns, "label_column": label_column}, audioset=True)


def _load_local(path, split, config_name, columns, common):
    files = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else None
    if files is None and os.path.isfile(path):
        files = [path]
    if files is None:
        root = Path(path)
        if _is_saved_dataset(root):
            return _saved_dataset_source(root, split, common["streaming"], columns)
        kind = _local_kind(root)
        if kind == "audiofolder":
            dataset = _load_audio_folder(root, split, common, columns["label_names"])
            return _make_source(dataset, "audiofolder", **columns)
        files = _split_files(root, split, config_name, ".parquet" if kind == "parquet" else ".tar")
    if not files:
        raise ValueError(f"no files match {path!r}")
    exts = {Path(f).suffix for f in files}
    if any(f.endswith(_CUT_MANIFEST_SUFFIXES) for f in files):
        raise ValueError(
            f"{path!r}: JSON-lines files that are not Lhotse cut manifests (a cut's first line has "
            "'recording' and 'supervisions'); other datasets are Parquet or .tar files, or audio folders"
        )
    if exts == {".parquet"}:
        builder, layout = "parquet", "audioset-parquet"
    elif exts == {".tar"}:
        builder, layout = "webdataset", "webdataset"
    else:
        raise ValueError(f"{path!r}: expected only .parquet or only .tar files, found {sorted(exts)}")
    # One split named "train" holds exactly the files chosen above.
    dataset = datasets.load_dataset(builder, data_files={"train": files}, split="train", **common)
    return _make_source(dataset, layout, **columns)


def _is_cut_manifest_name(path: str) -> bool:
    return path.endswith(_CUT_MANIFEST_SUFFIXES)


def cut_manifests_for_split(path: str, split: str) -> list[str] | None:
    """The Lhotse cut manifests of ``split`` at ``path`` (a file, a glob, a folder, or a path with
    ``{split}``), or None when ``path`` holds no cut manifest (another kind of dataset).

    Raises ``SplitNotFoundError`` when it holds cut manifests but none of ``split``.
    """
    if SPLIT_PLACEHOLDER in path:
        siblings = _cut_manifest_files(path.replace(SPLIT_PLACEHOLDER, "*"))
        if not siblings:
            return None
        files = _cut_manifest_files(path.replace(SPLIT_PLACEHOLDER, split))
        if not files:
            raise SplitNotFoundError(
                f"no cut manifest of split {split!r} at {path.replace(SPLIT_PLACEHOLDER, split)} (the files "
                f"{path} names are {[os.path.basename(f) for f in siblings[:5]]})"
            )
        return files
    if os.path.isdir(path):
        return _folder_cut_manifests(Path(path), split)
    files = _cut_manifest_files(path)
    if not files:
        return None
    if split != "train":
        raise SplitNotFoundError(
            f"{path} is the train split only (one manifest or a glob of them): name the manifests of a "
            f"{split!r} split with {SPLIT_PLACEHOLDER} in the path, or put <name>_<split>.jsonl.gz files in "
            "a folder"
        )
    return files


def _cut_manifest_files(path: str) -> list[str]:
    """The cut manifests ``path`` (a file or a glob) names; an error when it mixes them with other files."""
    files = sorted(glob.glob(path, recursive=True)) if glob.has_magic(path) else [path]
    # Only JSON-lines names are opened: a glob of Parquet shards must not be read to tell.
    files = [f for f in files if os.path.isfile(f)]
    manifests = [f for f in files if _is_cut_manifest_name(f) and is_lhotse_cut_manifest(f)]
    if manifests and len(manifests) != len(files):
        others = [os.path.basename(f) for f in files if f not in manifests][:3]
        raise ValueError(
            f"{path!r} matches Lhotse cut manifests and other files ({others}): name only one kind"
        )
    return manifests


def _folder_cut_manifests(root: Path, split: str) -> list[str] | None:
    """The manifests of ``split`` directly in ``root``: those whose name ends with the split (or an alias,
    after '_', '-' or '.'); when no manifest names any split, all of them form the train split."""
    manifests = sorted(
        str(p) for p in root.iterdir() if _is_cut_manifest_name(p.name) and is_lhotse_cut_manifest(p)
    )
    if not manifests:
        return None
    names = (split, *_CUT_SPLIT_ALIASES.get(split, ()))
    found = [m for m in manifests if _names_split(m, names)]
    if found:
        return found
    known = ("train", "validation", "test", *(a for aliases in _CUT_SPLIT_ALIASES.values() for a in aliases))
    if split == "train" and not any(_names_split(m, known) for m in manifests):
        return manifests
    raise SplitNotFoundError(
        f"{root} has no cut manifest of split {split!r} (named <anything>_{split}.jsonl.gz); its manifests "
        f"are {[os.path.basename(m) for m in manifests[:8]]}"
    )


def _names_split(path: str, names) -> bool:
    """Whether a manifest's name ends with one of the split ``names``: ``uts_cuts_train.jsonl.gz``,
    ``cuts_train-clean-100.jsonl``."""
    stem = os.path.basename(path)
    for suffix in sorted(_CUT_MANIFEST_SUFFIXES, key=len, reverse=True):
        stem = stem.removesuffix(suffix)
    return any(stem == n or stem.endswith(tuple(sep + n for sep in _CUT_SPLIT_SEPARATORS)) for n in names)


def _load_audio_folder(root: Path, split: str, common: dict, label_names=None):
    """``split`` of an audio folder, as ``load_dataset("audiofolder", data_dir=root)`` reads it, with
    every file the decoder opens (see ``_AudioFolder``), its folder labels those of ``split`` alone (see
    ``_folder_labels_of_split``)."""
    base = root.resolve().as_posix()
    data_files = DataFilesDict.from_patterns(get_data_patterns(base), base_path=base)
    if split not in data_files:
        raise SplitNotFoundError(
            f"{root} has no {split!r} split; it has {sorted(map(str, data_files))} (splits are sub-folders "
            "such as train/, validation/ and test/; without them every file belongs to 'train')"
        )
    _log_skipped_files(root, split, data_files[split])
    builder = _AudioFolder(
        cache_dir=common["cache_dir"],
        data_files=data_files,
        dataset_name="audiofolder",
        hash=_AUDIO_FOLDER_HASH,
    )
    if common["streaming"]:
        dataset = builder.as_streaming_dataset(split=split)
    else:
        builder.download_and_prepare()
        dataset = builder.as_dataset(split=split)
    return _folder_labels_of_split(dataset, data_files[split], label_names)


#: the column datasets' audiofolder puts a clip's folder name in (a ClassLabel)
_FOLDER_LABEL = "label"


def _folder_labels_of_split(dataset, files, label_names):
    """``dataset`` with its folder-label ClassLabel holding the labels of this split's files only.

    datasets' audiofolder builds one ClassLabel from the label folders of every split, so a label found
    only under test/ would become a class of the train split (one the model never sees in training), and
    the check of other splits against the train split's classes could not see it missing. The labels of a
    split are the parent folders of its audio files (audiofolder's own rule), so a stream needs no reading.
    With ``label_names`` (another split's vocabulary, or --label_names) they come first, in their order,
    and the split's other labels after them, where ``labels_outside_vocabulary`` finds them.
    """
    feature = (dataset.features or {}).get(_FOLDER_LABEL)
    if not isinstance(feature, ClassLabel):
        return dataset  # labels from metadata.csv, or a single label folder: nothing was merged
    found = {Path(f).parent.name for f in files if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS}
    named = _named_vocabulary(label_names).names if label_names is not None else ()
    names = [*named, *sorted(found - set(named))]
    if names == feature.names:
        return dataset
    return _relabel(dataset, feature, ClassLabel(names=names))


def _relabel(dataset, old: ClassLabel, new: ClassLabel):
    """``dataset`` with its folder-label indices of ``old`` turned into indices of ``new`` (by name)."""
    index = {name: i for i, name in enumerate(new.names)}
    mapping = [index.get(name, -1) for name in old.names]  # -1: a label of another split, never stored here
    features = dataset.features.copy()
    features[_FOLDER_LABEL] = new
    if isinstance(dataset, IterableDataset):
        return dataset.map(
            lambda label: {_FOLDER_LABEL: mapping[label]}, input_columns=_FOLDER_LABEL, features=features
        )
    # Only the label column is read and rewritten: no audio is decoded.
    column = [mapping[label] for label in dataset[_FOLDER_LABEL]]
    return dataset.remove_columns(_FOLDER_LABEL).add_column(_FOLDER_LABEL, column, feature=new)


def _log_skipped_files(root: Path, split: str, files) -> None:
    """Says how many files of ``split`` are neither audio nor metadata, which the folder loader skips."""
    metadata = set(AudioFolder.METADATA_FILENAMES)
    skipped = [
        f
        for f in files
        if os.path.splitext(f)[1].lower() not in AUDIO_EXTENSIONS and Path(f).name not in metadata
    ]
    if skipped:
        examples = ", ".join(Path(f).name for f in skipped[:3])
        logger.warning(
            "%s: skipped %d file(s) of split %r that are not audio (e.g. %s); audio extensions read: %s",
            root,
            len(skipped),
            split,
            examples,
            " ".join(AUDIO_EXTENSIONS),
        )


def _is_saved_dataset(root: Path) -> bool:
    """Whether ``root`` is what ``DatasetDict.save_to_disk`` (an index of split folders) or
    ``Dataset.save_to_disk`` (Arrow files beside their state) wrote."""
    if (root / "dataset_dict.json").is_file():
        return True
    return (root / "state.json").is_file() and (root / "dataset_info.json").is_file()


def _saved_dataset_source(root: Path, split: str, streaming: bool, columns: dict) -> AudioSource:
    """``split`` of a folder written by ``save_to_disk``. The vocabulary is read from the files on disk
    before a stream is made of them: unlike a remote stream they can be scanned, so string labels need
    no --label_names."""
    source = _make_source(_load_saved_split(root, split), "saved-dataset", **columns)
    if not streaming:
        return source
    # The stream reads an IterableDataset; the Arrow files stay memory-mapped, nothing is copied.
    return dataclasses.replace(source, dataset=source.dataset.to_iterable_dataset())


def _load_saved_split(root: Path, split: str) -> Dataset:
    """A DatasetDict's splits are its splits; a single Dataset is the 'train' split, as an audio folder
    without split sub-folders is."""
    saved = datasets.load_from_disk(str(root))
    if isinstance(saved, DatasetDict):
        if split not in saved:
            raise SplitNotFoundError(
                f"{root} has no {split!r} split; it has {sorted(saved)} (the splits of the DatasetDict "
                "save_to_disk wrote there)"
            )
        return saved[split]
    if split != "train":
        raise SplitNotFoundError(
            f"{root} has no {split!r} split; it has ['train'] (it holds one Dataset, written by "
            "Dataset.save_to_disk, which is read as the train split)"
        )
    return saved


def _local_kind(root: Path) -> str:
    if not root.is_dir():
        raise ValueError(f"{root} is neither a directory nor a file")
    has_audio = False
    for _, _, filenames in os.walk(root):  # one walk, stopping at the first Parquet or tar file
        for filename in filenames:
            suffix = os.path.splitext(filename)[1].lower()
            if suffix == ".parquet":
                return "parquet"
            if suffix == ".tar":
                return "webdataset"
            has_audio = has_audio or suffix in AUDIO_EXTENSIONS
    if has_audio:
        return "audiofolder"
    raise ValueError(f"{root} holds no .parquet, .tar or audio files, and no dataset written by save_to_disk")


def _split_files(root: Path, split: str, config_name: str | None, ext: str) -> list[str]:
    """Files of ``split`` under ``root``, in the directory layouts of the Hub repositories."""
    names = _LOCAL_SPLIT_DIRS.get(config_name, _LOCAL_SPLIT_DIRS[None]).get(split, ()) or (split,)
    names = (split, *[n for n in names if n != split])
    parents = ([root / config_name] if config_name else []) + [root / "data", root]
    for parent in parents:
        for name in names:
            if (parent / name).is_dir():
                found = sorted(str(p) for p in (parent / name).rglob(f"*{ext}"))
                if found:
                    return found
            # What `Dataset.push_to_hub` writes: data/<split>-00000-of-00001.parquet (or <split>.parquet).
            found = sorted(str(p) for p in parent.glob(f"{name}-*{ext}"))
            found += [str(parent / f"{name}{ext}")] if (parent / f"{name}{ext}").is_file() else []
            if found:
                return found
    flat = sorted(str(p) for p in root.glob(f"*{ext}"))
    if flat:
        return flat  # no split directories: the files form one split
    dirs = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir())
    raise SplitNotFoundError(
        f"no {ext} files for split {split!r} under {root}; its sub-directories are {dirs}"
    )


def _layout_of_features(dataset) -> str:
    features = dataset.features or {}
    return "webdataset" if "__key__" in features else "parquet"


def find_audio_column(dataset, audio_column: str | None) -> str:
    """``audio_column`` checked against the dataset, else the detected one (as `load_audio_source` does)."""
    features = dataset.features
    if audio_column is not None:
        if features is not None and audio_column not in features:
            raise ValueError(f"audio_column {audio_column!r} not in the dataset columns {list(features)}")
        return audio_column
    if features is None:
        raise ValueError("the dataset has unknown features: pass audio_column=")
    audio_like = [c for c, f in features.items() if isinstance(f, Audio)]
    for key in _AUDIO_KEYS:
        if key in audio_like or (not audio_like and key in features):
            return key
    if audio_like:
        return audio_like[0]
    raise ValueError(f"no audio column found among {list(features)}: pass audio_column=")


def _find_label_column(dataset, label_column: str | None) -> str | None:
    features = dataset.features
    if label_column is not None:
        if features is not None and label_column not in features:
            raise ValueError(f"label_column {label_column!r} not in the dataset columns {list(features)}")
        return label_column
    for key in _LABEL_COLUMNS:
        if features is not None and key in features:
            return key
    logger.warning("no label column found; clips get all-zero targets (pass label_column= to choose one)")
    return None


def _class_label_of(feature) -> ClassLabel | None:
    if isinstance(feature, ClassLabel):
        return feature
    inner = getattr(feature, "feature", None)  # List(ClassLabel) / Sequence(ClassLabel)
    return inner if isinstance(inner, ClassLabel) else None


def _sample_label_values(dataset, column: str, limit: int = 64) -> list:
    if isinstance(dataset, Dataset):
        return list(dataset[column])  # reads only that column: no audio is touched
    return [record[column] for record in dataset.select_columns([column]).take(limit)]


def _string_tokens(values) -> list[str] | None:
    """Every string label in ``values`` (split as AudioSet's vocabulary splits them), or None if any is not
    a string."""
    tokens: list[str] = []
    stack = list(values)
    while stack:
        value = stack.pop()
        if value is None:
            continue
        if isinstance(value, str):
            tokens.extend(AUDIOSET_ONTOLOGY.split_labels(value))
        elif isinstance(value, list | tuple):
            stack.extend(value)
        else:
            return None
    return tokens


def _named_vocabulary(names: Sequence[str] | LabelVocabulary) -> LabelVocabulary:
    """``names`` as a vocabulary: the library's own table when they are its names (so its ids, such as
    AudioSet's MIDs, resolve too), else a flat one."""
    if isinstance(names, LabelVocabulary):
        return names
    names = tuple(names)
    for known in (AUDIOSET_ONTOLOGY, EMBEDDED_ONTOLOGY):
        if names == known.names:
            return known
    return LabelVocabulary.from_names(names)


def _vocabulary(dataset, layout: str, label_column: str | None, label_names, audioset_hint: bool):
    """The ``LabelVocabulary`` of the label column of ``dataset``."""
    if label_names is not None:
        return _named_vocabulary(label_names)
    if label_column is None:
        if layout == "dataset":
            raise ValueError("cannot tell the classes of a dataset without a label column: pass label_names=")
        return AUDIOSET_ONTOLOGY
    class_label = _class_label_of((dataset.features or {}).get(label_column))
    if class_label is not None:
        return _named_vocabulary(class_label.names)
    if audioset_hint:
        return AUDIOSET_ONTOLOGY
    values = _sample_label_values(dataset, label_column)
    if any(isinstance(v, dict) for v in values):
        return AUDIOSET_ONTOLOGY  # WebDataset JSON sidecars of the AudioSet layouts
    tokens = _string_tokens(values)
    if tokens is None:  # integer indices without a ClassLabel feature
        if layout == "webdataset":
            # AudioSet's WebDataset index its table; a Parquet file with bare integers is anyone's (AudioSet's
            # own Parquet labels with MIDs, and a Hub AudioSet repo is recognised by audioset_hint).
            return AUDIOSET_ONTOLOGY
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                f"integer labels in {label_column!r} without a ClassLabel feature, and a stream cannot be "
                f"scanned for its classes: {_NAME_THE_CLASSES}"
            )
        flat = [int(i) for v in values if v is not None for i in (v if isinstance(v, list | tuple) else [v])]
        return LabelVocabulary.from_names(str(i) for i in range(max(flat, default=-1) + 1))
    if not tokens:
        # No clip carries a label (a split read for its audio or text, as retrieval reads captions): there
        # are no classes to find, and AudioSet's table, the default before any label is seen, stays.
        return AUDIOSET_ONTOLOGY
    if any(is_mid(t) for t in tokens):
        return _audioset_by_mids(tokens, label_column)
    # Display names alone are not a hint: a user's own 'Dog', 'Cat' and 'Speech' are three classes, not
    # AudioSet's 527 (AudioSet's own layouts label with MIDs, or are recognised by audioset_hint).
    if isinstance(dataset, IterableDataset):
        raise ValueError(
            f"the labels in {label_column!r} are free strings (e.g. {tokens[:3]}) and a stream cannot be "
            f"scanned for its classes: {_NAME_THE_CLASSES}"
        )
    return LabelVocabulary.from_names(sorted(set(tokens)))


#: how a user fixes the classes of data whose classes cannot be read from it
_NAME_THE_CLASSES = (
    "name them with --label_names (e.g. --label_names dog,siren,bird, or a text file with one name per "
    "line; label_names= in Python)"
)


def _audioset_by_mids(tokens: list[str], label_column: str) -> LabelVocabulary:
    """AudioSet's table for labels that hold MIDs, which name AudioSet classes unambiguously; the other
    labels beside them must then be AudioSet's too."""
    unknown = AUDIOSET_ONTOLOGY.unknown_labels(tokens)
    if unknown:
        shown = sorted(unknown)[:5]
        raise ValueError(f"labels {shown} in {label_column!r} are not AudioSet MIDs or class names")
    return AUDIOSET_ONTOLOGY


def labels_outside_vocabulary(source: AudioSource) -> list[str]:
    """The labels in ``source`` that its vocabulary does not hold, sorted.

    For a split opened with another split's vocabulary: a label the model was not trained on would
    otherwise be skipped clip by clip, or (as indices of a different ClassLabel) scored as another class.
    A stream cannot be scanned, so for one only its ClassLabel names are checked; its stream skips and
    counts a clip with an unknown label.
    """
    if source.label_column is None:
        return []
    class_label = _class_label_of((source.dataset.features or {}).get(source.label_column))
    if class_label is not None:
        return _class_label_outside(tuple(class_label.names), source.label_names)
    if source.is_streaming:
        return []
    unknown: set[str] = set()
    for value in _sample_label_values(source.dataset, source.label_column):
        unknown |= source.vocabulary.unknown_labels(value)
    return sorted(unknown)


def _class_label_outside(names: tuple[str, ...], vocabulary: tuple[str, ...]) -> list[str]:
    unknown = sorted(set(names) - set(vocabulary))
    if not unknown and names != vocabulary[: len(names)]:
        # The stored integers index `names`; read as indices of `vocabulary` they would name other classes.
        raise ValueError(
            f"the split's ClassLabel orders its classes {list(names)[:5]}... unlike the vocabulary "
            f"{list(vocabulary)[:5]}...: its class indices would be read as other classes"
        )
    return unknown


def _make_source(dataset, layout, audio_column, label_column, label_names, audioset=False) -> AudioSource:
    audio_column = find_audio_column(dataset, audio_column)
    label_column = _find_label_column(dataset, label_column)
    vocabulary = _vocabulary(dataset, layout, label_column, label_names, audioset)
    feature = (dataset.features or {}).get(audio_column)
    if isinstance(feature, Audio) and feature.decode:
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    return AudioSource(dataset, audio_column, label_column, vocabulary, layout)


def check_one_label_per_clip(source: AudioSource) -> None:
    """Raises when a clip of ``source`` carries more than one label: what single-label classification
    (softmax cross-entropy, accuracy) needs, and a multi-label dataset would otherwise pass as multi-hot
    targets that the loss and the metrics misread. Reads the label column alone; a stream cannot be
    scanned ahead, so one is not checked."""
    if source.label_column is None or source.is_streaming:
        return
    for row, value in enumerate(_sample_label_values(source.dataset, source.label_column)):
        labels = source.label_to_index(value)
        if len(labels) > 1:
            names = [source.label_names[i] for i in labels]
            raise ValueError(
                f"clip {_clip_name(source, row)} carries {len(labels)} labels {names}, and "
                "single_label_classification takes one per clip: keep the default "
                "multi_label_classification for several labels per clip"
            )


def _clip_name(source: AudioSource, row: int) -> str:
    """Row ``row`` of ``source`` as a user finds it: its file when the audio column records one."""
    audio = source.dataset[row][source.audio_column]
    path = audio.get("path") if isinstance(audio, dict) else None
    return f"{row} ({os.path.basename(path)})" if path else str(row)
