"""Command-line data options shared by every recipe, and the sources and streams they build."""

from __future__ import annotations

from dataclasses import dataclass

from .corpus import load_embedded_corpus
from .semi_supervised import as_unlabeled, split_labeled
from .sources import AudioSource, load_audio_source
from .stream import AudioStream

EMBEDDED = "embedded"
ROLES = ("train", "eval", "test")


@dataclass
class DataArguments:
    dataset: str = EMBEDDED
    """'embedded' (built-in corpus), a Hub id (agkphysics/AudioSet, confit/audioset-16khz-wds) or a path"""
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str | None = "validation"
    """split evaluated during training; empty to skip"""
    test_split: str | None = "test"
    """split evaluated at the end; empty to skip"""
    label_column: str | None = None
    """column holding the labels (default: detected; e.g. 'scene' for scene classification on the corpus)"""
    streaming: bool = False
    clip_seconds: float = 10.0
    shuffle_buffer: int = 1000
    num_decode_threads: int = 4
    corpus_seed: int = 0
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


def _split_names(data: DataArguments, roles) -> dict[str, str]:
    names = {"train": data.train_split, "eval": data.eval_split, "test": data.test_split}
    return {role: names[role] for role in roles if names[role] and names[role].lower() != "none"}


def _load(data: DataArguments, name: str, split: str, **kwargs) -> AudioSource:
    return load_audio_source(
        name,
        split=split,
        streaming=data.streaming,
        config_name=data.dataset_config,
        **{"label_column": data.label_column, **kwargs},
    )


def load_sources(data: DataArguments, roles=ROLES) -> dict[str, AudioSource]:
    """The sources of a run by role (train / eval / test, and 'unlabeled' for semi-supervised runs)."""
    splits = _split_names(data, roles)
    if data.dataset == EMBEDDED:
        kwargs = {"seed": data.corpus_seed, "clip_seconds": data.clip_seconds}
        sizes = (
            ("num_train", data.num_train_clips),
            ("num_validation", data.num_eval_clips),
            ("num_test", data.num_test_clips),
        )
        kwargs.update({key: value for key, value in sizes if value is not None})
        corpus = load_embedded_corpus(**kwargs)
        sources = {
            role: load_audio_source(corpus[split], label_column=data.label_column)
            for role, split in splits.items()
        }
    else:
        sources = {role: _load(data, data.dataset, split) for role, split in splits.items()}
    if data.num_labeled_clips:
        sources["train"], remainder = split_labeled(sources["train"], data.num_labeled_clips)
        if data.unlabeled_dataset == "train_remainder":
            sources["unlabeled"] = as_unlabeled(remainder, sources["train"].label_names)
    if data.unlabeled_dataset == "train_remainder" and "unlabeled" not in sources:
        raise ValueError("--unlabeled_dataset train_remainder needs --num_labeled_clips")
    if data.unlabeled_dataset and data.unlabeled_dataset != "train_remainder":
        # Fixing the vocabulary keeps the loader from inspecting labels it will never read.
        unlabeled = _load(
            data,
            data.unlabeled_dataset,
            data.unlabeled_split,
            label_column=None,
            label_names=sources["train"].label_names,
        )
        sources["unlabeled"] = as_unlabeled(unlabeled, sources["train"].label_names)
    return sources


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
        sharded: bool = True,
    ) -> AudioStream:
        """This process's stream of ``role``; ``sharded=False`` gives every process the whole split
        (e.g. for a probe that each process fits identically); ``extra_columns`` are passed through
        as ``(B, D)`` tensors (e.g. precomputed teacher embeddings)."""
        extra = {"extra_columns": tuple(extra_columns)} if extra_columns else {}
        return AudioStream(
            self.sources[role],
            batch_size=batch_size or self.batch_size,
            sample_rate=self.sample_rate,
            clip_seconds=self.data.clip_seconds,
            train=train,
            seed=self.seed,
            rank=self.rank if sharded else 0,
            world_size=self.world_size if sharded else 1,
            shuffle_buffer=self.data.shuffle_buffer,
            num_decode_threads=self.data.num_decode_threads,
            **extra,
        )
