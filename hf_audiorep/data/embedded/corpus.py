"""The embedded corpus: every recipe's default data set, generated from a seed.

Nothing can be downloaded on a fresh machine, so the library ships a deterministic stand-in for
AudioSet: 10 s, 16 kHz multi-label clips that mix one to four synthesized sound events
(:mod:`~hf_audiorep.data.embedded.synth`) over an acoustic-scene background, each with a caption.

- :data:`EMBEDDED_ONTOLOGY` gives AudioSet-style class ids (``/hf/e/000``, clearly not real
  MIDs), display names, parent families, and the held-out classes; it and the scenes are read
  from the data files beside this module (:mod:`~hf_audiorep.data.embedded.tables`).
- :func:`load_embedded_corpus` returns a ``datasets.DatasetDict`` with ``train``, ``validation``
  and ``test`` splits (held-out classes never occur there; every other class has positives in
  ``test``) and a ``heldout`` split of single-event clips of the held-out classes, for few-shot
  and open-set evaluation. Audio is stored as 16-bit FLAC bytes in an ``Audio`` column, so it is
  decoded by exactly the code path that serves Hub datasets.
- Each clip also has *attributes* the event ontology does not name (:data:`ATTRIBUTE_TASKS`): how
  its speech and music sound (pitch register, speaking rate, voices; tempo, mode, instrument
  family, rhythm) and how it was recorded (room, distance, loudness, quality). They are rendered
  into the audio, stored in one ClassLabel column per task (for linear probes) and mentioned, each
  with some probability and in varied wording, in the caption, so that tags mined from captions
  cover what the event labels miss, noisily, as real captions do.

The corpus is cached on disk under a hash of its configuration and written atomically (a
temporary directory renamed into place), so a crash never leaves half a cache behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from . import recording
from .generation import (
    PARALLEL_MIN_CLIPS,
    CorpusSpec,
    bind_cache_path,
    check_generation_arguments,
    load_or_generate,
)
from .generation import flac_bytes as _flac_bytes
from .generation import generation_workers as _generation_workers  # noqa: F401 (benchmarks/bench_corpus.py)
from .synth import (
    SPEAKING_RATES,
    STYLED_RECIPES,
    TEMPI,
    MusicStyle,
    SpeechStyle,
    SynthesizedEvent,
    render_background,
    synthesize,
)
from .tables import (
    ATTRIBUTE_LEAD_INS,
    ATTRIBUTE_TASKS,
    CAPTION_WORDS,
    EMBEDDED_ONTOLOGY,
    NONE,
    SCENES,
    AttributeTask,
    CaptionPhrases,
    EmbeddedOntology,
    OneOf,
    Scene,
    SoundFamily,
    scene_weights,
)

__all__ = [
    "ATTRIBUTE_TASKS",
    "CORPUS_VERSION",
    "EMBEDDED_ONTOLOGY",
    "SCENES",
    "AttributeTask",
    "CaptionPhrases",
    "EmbeddedOntology",
    "MAX_EVENTS",
    "SPLITS",
    "OneOf",
    "Scene",
    "SoundFamily",
    "corpus_cache_path",
    "load_embedded_corpus",
]

# Bump whenever generation changes, so that old caches are not served for a new generator.
CORPUS_VERSION = 2

SPLITS = ("train", "validation", "test", "heldout")
MAX_EVENTS = 4
# Probabilities of 1, 2, 3 and 4 events in a clip of the main splits.
_EVENT_COUNT_PROBS = (0.3, 0.35, 0.22, 0.13)
# Event-to-background ratio (dB). Held-out clips are few-shot support/query examples, so their
# single event is kept clearly audible.
_SNR_DB = (-5.0, 20.0)
_HELDOUT_SNR_DB = (0.0, 20.0)
# Where in the SNR range a near or a far source's SNR is drawn (fractions of the range): a far
# source is fainter against the background, but the ranges overlap, so the level alone does not
# tell the distance (the direct-to-reverberant ratio and the lost highs do).
_DISTANCE_SNR_SPAN = {"near": (0.25, 1.0), "far": (0.0, 0.7)}

# (scenes, classes) event weights, the scene-by-class table behind every draw.
_SCENE_WEIGHTS = scene_weights(SCENES, EMBEDDED_ONTOLOGY)


# --------------------------------------------------------------------------------------------
# clips
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    label: int
    onset_s: float
    offset_s: float
    snr_db: float
    repetitions: int


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _class_schedule(classes: tuple[int, ...], num_clips: int, rng: np.random.Generator) -> list[list[int]]:
    """Anchor classes of each clip: the classes are dealt round-robin from shuffled decks, so every
    class is (nearly) equally frequent, and every class occurs in a split of at least
    ``len(classes) / MAX_EVENTS`` clips (each clip then holds several anchors)."""
    if num_clips == 0:
        return []
    decks = -(-num_clips // len(classes))
    order = np.concatenate([rng.permutation(classes) for _ in range(decks)])
    if num_clips >= len(classes):
        return [[int(c)] for c in order[:num_clips]]
    return [[int(c) for c in order[i : len(classes) : num_clips]] for i in range(num_clips)]


def _draw_scene(anchor: int, rng: np.random.Generator) -> int:
    # P(scene | class) is proportional to P(class | scene) with uniform scene priors.
    weights = _SCENE_WEIGHTS[:, anchor] / _SCENE_WEIGHTS.sum(axis=1)
    return int(rng.choice(len(SCENES), p=weights / weights.sum()))


def _draw_classes(anchors: list[int], scene: int, allowed: np.ndarray, rng: np.random.Generator) -> list[int]:
    count = max(len(anchors), int(rng.choice(np.arange(1, MAX_EVENTS + 1), p=_EVENT_COUNT_PROBS)))
    chosen = list(anchors)
    weights = _SCENE_WEIGHTS[scene] * allowed
    weights[chosen] = 0.0
    extra = min(count - len(chosen), int(np.count_nonzero(weights)))
    if extra > 0:
        picks = rng.choice(len(weights), size=extra, replace=False, p=weights / weights.sum())
        chosen += [int(c) for c in picks]
    return chosen


def _active_power(x: np.ndarray, sample_rate: int) -> float:
    """Mean power over the frames where the event is sounding (within 30 dB of its loudest 20 ms),
    so that the SNR of a sparse event (a few knocks) is about the knocks, not the silence between."""
    hop = max(1, sample_rate // 50)
    m = -(-x.size // hop) * hop
    frames = np.pad(x, (0, m - x.size)).reshape(-1, hop)
    power = np.mean(frames * frames, axis=1)
    active = power[power >= 1e-3 * power.max()]
    return float(active.mean()) if active.size else 0.0


# --------------------------------------------------------------------------------------------
# attributes
# --------------------------------------------------------------------------------------------


def _check_attribute_tables() -> None:
    """The render tables (in code) and the task tables (in ``attributes.json``) name the same classes."""
    expected = {
        "speech_pitch": ("low", "mid", "high"),
        "speech_rate": tuple(SPEAKING_RATES),
        "music_tempo": tuple(TEMPI),
        "music_mode": ("major", "minor"),
        "music_rhythm": ("steady", "syncopated"),
        "room": tuple(recording.ROOMS),
        "distance": tuple(recording.DISTANCES),
        "loudness": tuple(recording.LEVELS_DBFS),
        "quality": recording.QUALITIES,
    }
    for name, classes in expected.items():
        if name not in ATTRIBUTE_TASKS or ATTRIBUTE_TASKS[name].classes != classes:
            raise ValueError(f"attributes.json: task {name!r} must have the classes {classes}")
    for name in ("speech_voices", "music_instrument"):
        if name not in ATTRIBUTE_TASKS:
            raise ValueError(f"attributes.json: task {name!r} is missing")
    if set(_DISTANCE_SNR_SPAN) != set(recording.DISTANCES):
        raise ValueError("every distance class needs an SNR span")


_check_attribute_tables()


@dataclass(frozen=True)
class _Attributes:
    """A clip's attribute classes (task name -> class name, ``"none"`` where a task does not
    apply) and the styles its speech-like and musical events are rendered in."""

    values: dict[str, str]
    speech: SpeechStyle | None
    music: MusicStyle | None


def _draw_attributes(classes: list[int], rng: np.random.Generator) -> _Attributes:
    names = [EMBEDDED_ONTOLOGY.names[c] for c in classes]
    values = {}
    for task in ATTRIBUTE_TASKS.values():
        sources = [name for name in names if task.sources is None or name in task.sources]
        if not sources:
            values[task.name] = NONE
        elif task.name == "speech_voices" and len(sources) > 1:
            values[task.name] = "several"  # two speech events are two speakers
        elif task.families is not None:  # derived, not drawn: one family, or an ensemble of several
            values[task.name] = task.families[sources[0]] if len(sources) == 1 else "ensemble"
        else:
            values[task.name] = task.classes[int(rng.choice(len(task.classes), p=task.probabilities()))]
    speech = music = None
    if values["speech_rate"] != NONE:
        # Several voices in one event when it is the clip's only speaker (else each event is one).
        single = sum(name in ATTRIBUTE_TASKS["speech_voices"].sources for name in names) == 1
        voices = int(rng.integers(2, 4)) if values["speech_voices"] == "several" and single else 1
        # A whisper has no pitch: an unvoiced clip's register is never rendered.
        register = values["speech_pitch"] if values["speech_pitch"] != NONE else "mid"
        speech = SpeechStyle(register, values["speech_rate"], voices)
    if values["music_tempo"] != NONE:
        bpm = float(rng.uniform(*TEMPI[values["music_tempo"]]))
        music = MusicStyle(bpm, values["music_mode"], values["music_rhythm"])
    return _Attributes(values, speech, music)


def _style(recipe: str, attributes: _Attributes):
    kind = STYLED_RECIPES.get(recipe)
    if kind is SpeechStyle:
        return attributes.speech
    if kind is MusicStyle:
        return attributes.music
    return None


def _render_clip(
    classes: list[int],
    scene: int,
    attributes: _Attributes,
    snr_range,
    clip_seconds: float,
    sample_rate: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[_Event]]:
    """The clip's events over its scene's background, in its room, through its recording chain, at
    its level. The content (background, events, their placement and SNR draws), the room and the
    chain draw from separate generators spawned from ``rng``, so that clips that differ in one
    recording attribute have the same content."""
    content_rng, room_rng, chain_rng = rng.spawn(3)
    values = attributes.values
    n = int(round(clip_seconds * sample_rate))
    background = render_background(SCENES[scene].draw_background(content_rng), n, sample_rate, content_rng)
    sources = np.zeros(n, dtype=np.float32)
    span = _DISTANCE_SNR_SPAN[values["distance"]]
    events = []
    for label in classes:
        recipe = EMBEDDED_ONTOLOGY.recipes[label]
        event: SynthesizedEvent = synthesize(
            recipe, content_rng, sample_rate, clip_seconds, _style(recipe, attributes)
        )
        wave = event.waveform[:n]
        start = int(content_rng.integers(0, n - wave.size + 1))
        snr = float(snr_range[0] + (snr_range[1] - snr_range[0]) * content_rng.uniform(*span))
        power = _active_power(wave, sample_rate)
        if power > 0:  # the background has unit power
            sources[start : start + wave.size] += wave * np.float32(np.sqrt(10 ** (snr / 10) / power))
        events.append(_Event(label, start / sample_rate, (start + wave.size) / sample_rate, snr, event.units))
    room = recording.draw_room(values["room"], values["distance"], room_rng)
    mix = background + recording.place_in_room(sources, room, sample_rate, room_rng)
    mix = recording.degrade(mix, values["quality"], sample_rate, chain_rng)
    mix = recording.set_level(mix, float(chain_rng.uniform(*recording.LEVELS_DBFS[values["loudness"]])))
    return mix, sorted(events, key=lambda e: (e.onset_s, e.label))


# --------------------------------------------------------------------------------------------
# captions
# --------------------------------------------------------------------------------------------


def _clause(event: _Event, rng: np.random.Generator) -> str:
    phrases = EMBEDDED_ONTOLOGY.phrases[event.label]
    words = [_pick(rng, phrases.clauses)]
    if phrases.countable and event.repetitions > 1:
        words.append(CAPTION_WORDS.repetitions.get(event.repetitions, CAPTION_WORDS.many_repetitions))
    if event.snr_db >= 14:
        words.append(_pick(rng, CAPTION_WORDS.loud))
    elif event.snr_db <= 0:
        words.append(_pick(rng, CAPTION_WORDS.faint))
    return " ".join(words)


def _event_sentence(events: list[_Event], scene: Scene, clip_seconds: float, rng: np.random.Generator) -> str:
    place = _pick(rng, scene.places)
    if len(events) == 1 and rng.random() < 0.3:
        noun = _pick(rng, EMBEDDED_ONTOLOGY.phrases[events[0].label].nouns)
        return f"The sound of {noun} {place}."
    body = _clause(events[0], rng)
    for previous, event in zip(events[:-1], events[1:], strict=True):
        overlaps = event.onset_s < previous.offset_s
        body += _pick(rng, CAPTION_WORDS.overlap if overlaps else CAPTION_WORDS.after) + _clause(event, rng)
    if events[0].onset_s > 0.4 * clip_seconds and rng.random() < 0.5:
        body = "after a while, " + body
    text = f"{place}, {body}" if rng.random() < 0.5 else f"{body} {place}"
    return text[0].upper() + text[1:] + "."


def _attribute_sentences(values: dict[str, str], rng: np.random.Generator) -> list[str]:
    """One sentence per attribute group (speech, music, recording) that has an attribute mentioned:
    each applicable attribute is mentioned with its task's probability, in one of its phrases."""
    sentences = []
    for group, lead_ins in ATTRIBUTE_LEAD_INS.items():
        fragments = [
            _pick(rng, task.phrases[values[task.name]])
            for task in ATTRIBUTE_TASKS.values()
            if task.group == group and values[task.name] != NONE and rng.random() < task.mention
        ]
        if not fragments:
            continue
        fragments = [fragments[i] for i in rng.permutation(len(fragments))]
        text = fragments[-1]
        if len(fragments) > 1:
            text = ", ".join(fragments[:-1]) + _pick(rng, (" and ", ", and ")) + text
        text = _pick(rng, lead_ins) + text
        sentences.append(text[0].upper() + text[1:] + ".")
    return sentences


def _caption(
    events: list[_Event], scene: Scene, values: dict[str, str], clip_seconds: float, rng: np.random.Generator
) -> str:
    """A sentence describing the events in temporal order, their overlap, prominence, repetitions
    and the scene, e.g. "In a quiet park, a dog barks twice while rain falls, then a bell rings.",
    then sentences on some of the clip's attributes, e.g. "The tempo is fast and the harmony is
    minor. It sounds like a large hall."."""
    return " ".join([_event_sentence(events, scene, clip_seconds, rng), *_attribute_sentences(values, rng)])


# --------------------------------------------------------------------------------------------
# splits, dataset, cache
# --------------------------------------------------------------------------------------------

_SPLIT_CODES = {split: code for code, split in enumerate(SPLITS)}
_CHUNK_CLIPS = 128
_PARALLEL_MIN_CLIPS = PARALLEL_MIN_CLIPS


@dataclass(frozen=True)
class _ClipPlan:
    """What a clip will hold, drawn before anything is rendered: its scene, event classes and
    attributes, and the generators that render its audio and write its caption."""

    scene: int
    classes: list[int]
    attributes: _Attributes
    render_rng: np.random.Generator
    caption_rng: np.random.Generator


def _clip_plans(split: str, num_clips: int, seed: int, start: int = 0, stop: int | None = None):
    """The plans of clips ``start`` to ``stop`` of a split of ``num_clips`` clips, cheap to draw
    without their audio."""
    code = _SPLIT_CODES[split]
    heldout = split == "heldout"
    classes = tuple(sorted(EMBEDDED_ONTOLOGY.heldout)) if heldout else EMBEDDED_ONTOLOGY.main_classes
    allowed = np.zeros(len(EMBEDDED_ONTOLOGY))
    allowed[list(classes)] = 1.0
    schedule_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code, 1 << 30)))
    schedule = _class_schedule(classes, num_clips, schedule_rng)
    for index in range(start, num_clips if stop is None else min(stop, num_clips)):
        anchors = schedule[index]
        # One generator per clip, keyed by (seed, split, index): a clip does not change when the
        # other splits' sizes do.
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code, index)))
        scene = _draw_scene(anchors[0], rng)
        chosen = anchors if heldout else _draw_classes(anchors, scene, allowed, rng)
        attributes = _draw_attributes(chosen, rng)
        yield index, _ClipPlan(scene, chosen, attributes, *rng.spawn(2))


def _split_rows(split: str, num_clips: int, config: dict, start: int = 0, stop: int | None = None):
    """Columns of clips ``start`` to ``stop`` of a split of ``num_clips`` clips."""
    seed, clip_seconds, sample_rate = config["seed"], config["clip_seconds"], config["sample_rate"]
    snr_range = _HELDOUT_SNR_DB if split == "heldout" else _SNR_DB
    columns = ("clip_id", "audio", "labels", "label_names", "caption", "scene", "events")
    rows: dict[str, list] = {key: [] for key in columns + tuple(ATTRIBUTE_TASKS)}
    for index, plan in _clip_plans(split, num_clips, seed, start, stop):
        scene, attributes = plan.scene, plan.attributes
        waveform, events = _render_clip(
            plan.classes, scene, attributes, snr_range, clip_seconds, sample_rate, plan.render_rng
        )
        clip_id = f"{split}_{index:05d}"
        labels = sorted({e.label for e in events})
        rows["clip_id"].append(clip_id)
        rows["audio"].append({"bytes": _flac_bytes(waveform, sample_rate), "path": f"{clip_id}.flac"})
        rows["labels"].append(labels)
        rows["label_names"].append([EMBEDDED_ONTOLOGY.names[i] for i in labels])
        caption = _caption(events, SCENES[scene], attributes.values, clip_seconds, plan.caption_rng)
        rows["caption"].append(caption)
        rows["scene"].append(SCENES[scene].name)
        rows["events"].append(
            [
                {
                    "label": e.label,
                    "onset_s": e.onset_s,
                    "offset_s": e.offset_s,
                    "snr_db": e.snr_db,
                    "repetitions": e.repetitions,
                }
                for e in events
            ]
        )
        for task in ATTRIBUTE_TASKS.values():
            rows[task.column].append(task.names.index(attributes.values[task.name]))
    return rows


def _features(sample_rate: int):
    from datasets import Audio, ClassLabel, Features, List, Value

    classes = ClassLabel(names=list(EMBEDDED_ONTOLOGY.names))
    return Features(
        {
            "clip_id": Value("string"),
            "audio": Audio(sampling_rate=sample_rate),
            "labels": List(classes),
            "label_names": List(Value("string")),
            "caption": Value("string"),
            "scene": Value("string"),
            "events": List(
                {
                    "label": classes,
                    "onset_s": Value("float32"),
                    "offset_s": Value("float32"),
                    "snr_db": Value("float32"),
                    "repetitions": Value("int32"),
                }
            ),
            **{task.column: ClassLabel(names=list(task.names)) for task in ATTRIBUTE_TASKS.values()},
        }
    )


def _split_rows_job(job: tuple) -> dict[str, list]:
    return _split_rows(*job)


def _spec(config: dict) -> CorpusSpec:
    # Built per load, so that the module's chunk size (which tests shrink) is read when it is used.
    description = (
        "Embedded hf_audiorep corpus: procedurally synthesized multi-label sound events over acoustic-scene "
        f"backgrounds, with captions. Generator version {CORPUS_VERSION}; configuration {json.dumps(config)}."
    )
    return CorpusSpec(
        title="the embedded corpus",
        cache_name="corpus",
        splits=SPLITS,
        features=_features(config["sample_rate"]),
        description=description,
        rows_job=_split_rows_job,
        chunk_clips=_CHUNK_CLIPS,
        parallel_min_clips=_PARALLEL_MIN_CLIPS,
    )


def _validate(seed, counts: dict[str, object], clip_seconds, sample_rate) -> None:
    check_generation_arguments(seed, counts, clip_seconds, sample_rate)
    minimum = -(-len(EMBEDDED_ONTOLOGY.main_classes) // MAX_EVENTS)
    for name, value in counts.items():
        if name != "num_heldout" and 0 < value < minimum:
            raise ValueError(
                f"{name}={value} is too small for every one of the {len(EMBEDDED_ONTOLOGY.main_classes)} "
                f"classes to occur in the split (at most {MAX_EVENTS} events per clip): "
                f"use 0 or at least {minimum}"
            )


def _config(seed, num_train, num_validation, num_test, num_heldout, clip_seconds, sample_rate) -> dict:
    return {
        "version": CORPUS_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_validation": int(num_validation),
        "num_test": int(num_test),
        "num_heldout": int(num_heldout),
        "clip_seconds": float(clip_seconds),
        "sample_rate": int(sample_rate),
    }


def load_embedded_corpus(
    seed: int = 0,
    num_train: int = 1600,
    num_validation: int = 200,
    num_test: int = 400,
    num_heldout: int = 240,
    clip_seconds: float = 10.0,
    sample_rate: int = 16000,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
):
    """Generates (or loads from cache) the embedded corpus.

    Args:
        seed: everything is a deterministic function of it (and of the other arguments). A clip
            depends on ``(seed, split, index)`` and its split's class schedule, so growing one split
            keeps the others (and keeps a split's first clips once it holds every class).
        num_train, num_validation, num_test: clips of the main splits (each 0 or >= 8, so that every
            non-held-out class has a positive in every non-empty split).
        num_heldout: single-event clips of the held-out classes (``EMBEDDED_ONTOLOGY.heldout``),
            dealt evenly over those classes.
        clip_seconds, sample_rate: clip length and rate (16-bit FLAC).
        cache_dir: cache root; default ``$HF_HOME/hf_audiorep/corpus``, else
            ``${XDG_CACHE_HOME:-~/.cache}/hf_audiorep/corpus``. Each configuration lives in a
            sub-directory named by a hash of it (:func:`corpus_cache_path`), written atomically.
        num_proc: worker processes that render clips (default: one per CPU, at most 8, for corpora of
            512 clips or more; 1 below). The corpus does not depend on it.

    Returns:
        ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test``, ``heldout`` and
        columns ``clip_id``, ``audio`` (``Audio(sampling_rate)``), ``labels`` (list of
        ``ClassLabel`` over ``EMBEDDED_ONTOLOGY.names``), ``label_names``, ``caption``, ``scene``,
        ``events`` (list of ``{label, onset_s, offset_s, snr_db, repetitions}``; ``snr_db`` is the
        event's level against the background at the source, before the room) and one ``ClassLabel``
        column per attribute task (:data:`ATTRIBUTE_TASKS`: ``speech_pitch``, ..., ``quality``).
    """
    counts = {
        "num_train": num_train,
        "num_validation": num_validation,
        "num_test": num_test,
        "num_heldout": num_heldout,
    }
    _validate(seed, counts, clip_seconds, sample_rate)
    config = _config(seed, num_train, num_validation, num_test, num_heldout, clip_seconds, sample_rate)
    return load_or_generate(_spec(config), config, cache_dir, num_proc)


corpus_cache_path = bind_cache_path(
    load_embedded_corpus,
    _config,
    "corpus",
    """Directory where :func:`load_embedded_corpus` caches the corpus of this configuration.

    Takes the loader's arguments, with its defaults (its signature is the loader's, without ``num_proc``:
    the corpus does not depend on it), so the two cannot drift apart.
    """,
)
