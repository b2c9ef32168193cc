"""Command-line data options shared by every recipe, and the sources and streams they build."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .bucketing import check_bucketing_arguments
from .embedded import SCENE_CLASSES, load_embedded_corpus, load_embedded_scenes
from .semi_supervised import as_unlabeled, split_labeled
from .sources import AudioSource, SplitNotFoundError, labels_outside_vocabulary, load_audio_source
from .stream import AudioStream

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
#: the embedded acoustic-scene corpus (scene labels, recording devices; ContrastASC)
EMBEDDED_SCENES = "embedded-scenes"
ROLES = ("train", "eval", "test")
#: --eval_split's default: the 'validation' split when the dataset has one, else no periodic evaluation
AUTO_EVAL_SPLIT = "auto"
#: clip length when neither --clip_seconds nor a pre-trained model's window gives one
DEFAULT_CLIP_SECONDS = 10.0


@dataclass
class DataArguments:
    dataset: str = EMBEDDED
    """'embedded' (built-in event corpus), 'embedded-scenes' (built-in acoustic-scene corpus: 1-s clips at
    32 kHz, a 'scene' label, recording devices), a Hub id (agkphysics/AudioSet, confit/audioset-16khz-wds)
    or a path (a folder, a glob, or Lhotse cut manifests .jsonl.gz with --audio_root, where {split} in the
    path is replaced by the split's name)"""
    audio_root: str | None = None
    """Lhotse cut manifests (e.g. Auden's UTS, whose sources name a corpus, not a file): the folder their
    audio is found in, as <audio_root>/<source>, <audio_root>/<source>/<recording id>.<ext> or
    <audio_root>/<recording id>.<ext> (hf_audiorep/data/lhotse_cuts.py); cuts without audio are dropped"""
    dataset_config: str | None = None
    """Hub config (agkphysics/AudioSet: balanced, unbalanced, full;
    confit/audioset-16khz-wds: 20k, 500k, 2m)"""
    train_split: str = "train"
    """split trained on"""
    eval_split: str | None = field(
        default=AUTO_EVAL_SPLIT,
        metadata={
            "help": "split evaluated during training; 'auto' (default): 'validation' when the dataset has "
            "one, else no evaluation during training; 'none' to skip"
        },
    )
    test_split: str | None = "test"
    """split evaluated at the end; empty to skip"""
    label_column: str | None = None
    """column holding the labels (default: detected; e.g. 'scene' for scene classification on the corpus)"""
    label_names: str | None = None
    """the class names, comma-separated (e.g. dog,siren,bird), or a text file with one name per line: fixes
    the classes and their order, streamed or not (needed to stream string labels, whose classes cannot be
    read ahead); a clip whose label is not among them is skipped when streamed, an error otherwise.
    Default: the classes found in the train split"""
    streaming: bool = False
    """stream the dataset (Hub or local) instead of downloading or preparing it first"""
    clip_seconds: float | None = field(
        default=None,
        metadata={
            "help": "seconds per clip (longer clips are cropped, shorter ones padded; also the embedded "
            "corpus's clip length); default: the window of --model_name_or_path when fine-tuning a saved "
            f"model, else {DEFAULT_CLIP_SECONDS:g}"
        },
    )
    shuffle_buffer: int = 1000
    """records in the shuffle buffer of a streamed dataset"""
    max_duration: float | None = None
    """dynamic batches for training: clips keep their length (up to --clip_seconds) and are batched by
    duration, each batch padding to at most this many seconds (clips x longest) per process; the batch size
    then varies (--per_device_batch_size is ignored). Default: fixed batches of clips cropped or padded
    to --clip_seconds"""
    num_buckets: int = 30
    """with --max_duration: duration buckets, estimated from the first clips read"""
    bucket_buffer_duration: float | None = None
    """with --max_duration: seconds of decoded clips waiting in the buckets per process (memory: 64 kB per
    second at 16 kHz); default 2 x num_buckets x max_duration"""
    num_decode_threads: int = 4
    """threads decoding and resampling clips ahead of the training step"""
    corpus_seed: int = 0
    """embedded corpus only: the seed it is synthesised from (another seed, another corpus)"""
    num_train_clips: int | None = None
    """embedded corpus only: number of training clips (default: the corpus default)"""
    num_eval_clips: int | None = None
    """embedded corpus only: number of validation clips"""
    num_test_clips: int | None = None
    """embedded corpus only: number of test clips"""
    num_labeled_clips: int | None = None
    """keep labels for the first N training clips only (a small labelled set, as AS-20K is for AudioSet)"""
    unlabeled_dataset: str | None = None
    """semi-supervised: 'train_remainder' (training clips past --num_labeled_clips), a Hub id or a path;
    its labels are never used"""
    unlabeled_split: str = "train"
    """split of --unlabeled_dataset read as unlabelled audio"""

    def __post_init__(self):
        self.class_names()  # a bad --label_names fails here, before any data is read
        if self.max_duration == 0:
            self.max_duration = None  # None cannot be typed on the command line
        if self.max_duration is not None:
            check_bucketing_arguments(self.max_duration, self.num_buckets, self.bucket_buffer_duration)

    def class_names(self) -> tuple[str, ...] | None:
        """The classes --label_names names, in its order (None when it is not given)."""
        return parse_label_names(self.label_names)

    def resolve_clip_seconds(self, window_seconds: float | None = None) -> float:
        """Fills an unset ``clip_seconds``: ``window_seconds`` (the window of the pre-trained model a run
        starts from, whose clips it was trained on) or the dataset's default (10 s; the scene corpus's 1 s);
        an explicit value is kept."""
        if self.clip_seconds is None:
            self.clip_seconds = window_seconds or _clip_seconds(self)
        return self.clip_seconds


def parse_label_names(value: str | None) -> tuple[str, ...] | None:
    """--label_names as class names: the lines of the file it names, else its comma-separated parts.

    A file is how names that hold commas (such as AudioSet's) are given."""
    if value is None or not value.strip():
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            names = [line.strip() for line in f]
    else:
        names = [part.strip() for part in value.split(",")]
    names = [name for name in names if name]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"--label_names names {duplicates} more than once: name each class once")
    if not names:
        raise ValueError(f"--label_names {value!r} names no class (e.g. --label_names dog,siren,bird)")
    return tuple(names)


#: clip length of the scene corpus when --clip_seconds is not given (DCASE's 1-s segments)
SCENE_CLIP_SECONDS = 1.0


def _clip_seconds(data: DataArguments) -> float:
    if data.clip_seconds is not None:
        return data.clip_seconds
    return SCENE_CLIP_SECONDS if data.dataset == EMBEDDED_SCENES else DEFAULT_CLIP_SECONDS


def _split_names(data: DataArguments, roles) -> dict[str, str]:
    eval_split = "validation" if data.eval_split == AUTO_EVAL_SPLIT else data.eval_split
    names = {"train": data.train_split, "eval": eval_split, "test": data.test_split}
    return {role: names[role] for role in roles if names[role] and names[role].lower() != "none"}


def _load(data: DataArguments, name: str, split: str, **kwargs) -> AudioSource:
    return load_audio_source(
        name,
        split=split,
        streaming=data.streaming,
        config_name=data.dataset_config,
        audio_root=data.audio_root,
        **{"label_column": data.label_column, **kwargs},
    )


def load_sources(data: DataArguments, roles=ROLES) -> dict[str, AudioSource]:
    """The sources of a run by role (train / eval / test, and 'unlabeled' for semi-supervised runs)."""
    splits = _split_names(data, roles)
    if data.dataset in (EMBEDDED, EMBEDDED_SCENES):
        sources = _embedded_sources(data, splits)
    else:
        sources = _dataset_sources(data, splits)
    if data.num_labeled_clips:
        sources["train"], remainder = split_labeled(sources["train"], data.num_labeled_clips)
        if data.unlabeled_dataset == "train_remainder":
            sources["unlabeled"] = as_unlabeled(remainder, sources["train"].vocabulary)
    if data.unlabeled_dataset == "train_remainder" and "unlabeled" not in sources:
        raise ValueError("--unlabeled_dataset train_remainder needs --num_labeled_clips")
    if data.unlabeled_dataset and data.unlabeled_dataset != "train_remainder":
        # Fixing the vocabulary keeps the loader from inspecting labels it will never read.
        unlabeled = _load(
            data,
            data.unlabeled_dataset,
            data.unlabeled_split,
            label_column=None,
            label_names=sources["train"].vocabulary,
        )
        sources["unlabeled"] = as_unlabeled(unlabeled, sources["train"].vocabulary)
    return sources


def _embedded_sources(data: DataArguments, splits: dict[str, str]) -> dict[str, AudioSource]:
    if data.class_names() is not None:
        # Its ClassLabel columns store class indices, which named classes in another order would misread.
        raise ValueError(
            f"--label_names is for datasets given by --dataset; the built-in corpus {data.dataset!r} has "
            "its own classes: leave --label_names out"
        )
    kwargs = {"seed": data.corpus_seed, "clip_seconds": _clip_seconds(data)}
    sizes = (
        ("num_train", data.num_train_clips),
        ("num_validation", data.num_eval_clips),
        ("num_test", data.num_test_clips),
    )
    kwargs.update({key: value for key, value in sizes if value is not None})
    if data.dataset == EMBEDDED_SCENES:
        corpus = load_embedded_scenes(**kwargs)
        label_column = data.label_column or "scene"
        if label_column == "scene":
            corpus = _closed_set_scenes(corpus)
    else:
        corpus = load_embedded_corpus(**kwargs)
        label_column = data.label_column
    _check_embedded_splits(data, corpus, splits)
    if data.eval_split == AUTO_EVAL_SPLIT and "eval" in splits and len(corpus[splits["eval"]]) == 0:
        logger.info("the corpus has no validation clips (--num_eval_clips 0): no evaluation during training")
        del splits["eval"]
    return {
        role: load_audio_source(corpus[split], label_column=label_column) for role, split in splits.items()
    }


def _check_embedded_splits(data: DataArguments, corpus, splits: dict[str, str]) -> None:
    """A split the built-in corpus lacks is a mistyped option: say which, and the splits there are."""
    for role, split in splits.items():
        if split not in corpus:
            skip = "" if role == "train" else f"; --{role}_split none skips it"
            raise SplitNotFoundError(
                f"--{role}_split {split!r}: the built-in corpus {data.dataset!r} has no such split; it has "
                f"{sorted(corpus)}. --{role}_split names another split{skip}"
            )


def _closed_set_scenes(corpus):
    """The scene corpus with its closed-set splits labelled over the closed-set scenes only: a classifier
    must not get outputs for the held-out scenes, which it never sees in training (those are for few-shot
    evaluation). The closed set comes first in the full ClassLabel, so the stored indices stay valid."""
    from datasets import ClassLabel

    closed = ClassLabel(names=list(SCENE_CLASSES))
    return {
        name: split if name == "heldout" else split.cast_column("scene", closed)
        for name, split in corpus.items()
    }


def _dataset_sources(data: DataArguments, splits: dict[str, str]) -> dict[str, AudioSource]:
    """The splits of a Hub or local dataset, all with the train split's label vocabulary.

    Each split would otherwise build its own from the labels it contains, and a test split lacking a
    class would be scored against shifted columns.
    """
    named = data.class_names()
    sources = {}
    if "train" in splits:
        sources["train"] = _load(data, data.dataset, splits["train"], label_names=named)
        if named is not None:
            _check_vocabulary(data, "train", splits["train"], sources["train"])
    vocabulary = sources["train"].vocabulary if sources else named
    for role, split in splits.items():
        if role == "train":
            continue
        try:
            source = _load(data, data.dataset, split, label_names=vocabulary)
        except SplitNotFoundError as err:
            if role != "eval" or data.eval_split != AUTO_EVAL_SPLIT:
                hint = f"--{role}_split names another split; --{role}_split none skips it"
                raise SplitNotFoundError(f"{err}. {hint}") from err
            logger.info(
                "%s has no %r split: no evaluation during training (--eval_split names another split; "
                "--eval_split none skips it)",
                data.dataset,
                split,
            )
            continue
        if vocabulary is not None:
            _check_vocabulary(data, role, split, source)
        sources[role] = source
    return sources


def _check_vocabulary(data: DataArguments, role: str, split: str, source: AudioSource) -> None:
    try:
        unknown = labels_outside_vocabulary(source)
    except ValueError as err:
        raise ValueError(f"the {role} split {split!r} of {data.dataset}: {err}") from err
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        if data.class_names() is not None:
            raise ValueError(
                f"the {role} split {split!r} of {data.dataset} has labels that --label_names does not name: "
                f"{shown}. Add them to --label_names, or remove their clips from {split!r}"
            )
        raise ValueError(
            f"the {role} split {split!r} of {data.dataset} has labels that the train split "
            f"{data.train_split!r} does not: {shown}. The model learns the train split's "
            f"{source.num_classes} classes only: add clips of these labels to {data.train_split!r}, or "
            f"remove them from {split!r}"
        )


class StreamFactory:
    """Builds this process's ``AudioStream`` for a role, with the run's data and process settings."""

    def __init__(
        self,
        sources: dict[str, AudioSource],
        data: DataArguments,
        *,
        batch_size: int,
        sample_rate: int,
        seed: int,
        rank: int,
        world_size: int,
    ):
        self.sources, self.data = sources, data
        self.batch_size, self.sample_rate, self.seed = batch_size, sample_rate, seed
        self.rank, self.world_size = rank, world_size

    @classmethod
    def for_process(
        cls, sources, data: DataArguments, training_args, sample_rate: int, state
    ) -> StreamFactory:
        """The factory of this process (``state``: accelerate's ``PartialState``) in a recipe run."""
        return cls(
            sources,
            data,
            batch_size=training_args.per_device_batch_size,
            sample_rate=sample_rate,
            seed=training_args.seed,
            rank=state.process_index,
            world_size=state.num_processes,
        )

    def __call__(
        self,
        role: str,
        train: bool,
        batch_size: int | None = None,
        *,
        extra_columns: tuple[str, ...] = (),
        ragged_columns: tuple[str, ...] = (),
        collate_fn: Callable[[list[dict[str, Any]]], Mapping[str, Any]] | None = None,
        return_index: bool = False,
        sharded: bool = True,
    ) -> AudioStream:
        """This process's stream of ``role``; ``sharded=False`` gives every process the whole split
        (e.g. for a probe that each process fits identically). ``extra_columns``, ``ragged_columns``,
        ``collate_fn`` and ``return_index`` put more of each record in the batch (captions, token ids,
        precomputed teacher embeddings, dataset indices): see ``AudioStream``.

        With ``--max_duration``, training streams (``train=True``) have dynamic batches by duration, with
        at most ``batch_size`` clips when it is given; evaluation streams keep fixed batches, in order."""
        dynamic = {}
        if train and self.data.max_duration is not None:
            dynamic = {
                "max_duration": self.data.max_duration,
                "num_buckets": self.data.num_buckets,
                "bucket_buffer_duration": self.data.bucket_buffer_duration,
            }
        return AudioStream(
            self.sources[role],
            batch_size=batch_size if dynamic else batch_size or self.batch_size,
            sample_rate=self.sample_rate,
            clip_seconds=_clip_seconds(self.data),
            train=train,
            seed=self.seed,
            rank=self.rank if sharded else 0,
            world_size=self.world_size if sharded else 1,
            shuffle_buffer=self.data.shuffle_buffer,
            num_decode_threads=self.data.num_decode_threads,
            extra_columns=extra_columns,
            ragged_columns=ragged_columns,
            collate_fn=collate_fn,
            return_index=return_index,
            **dynamic,
        )
