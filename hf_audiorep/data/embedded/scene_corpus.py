"""The embedded acoustic-scene corpus: TAU Urban Acoustic Scenes in miniature, generated from a seed.

ContrastASC (acoustic scene classification across recording devices, with few-shot open-set
evaluation on scene classes never trained on) needs what the event corpus does not have: one scene
label per short clip, several recording devices, some never heard in training, and held-out scenes.

- Scenes: the ten of ``scenes.json`` (shared with the event corpus) and those of ``extra_scenes.json``
  (used only here), which also lists the held-out scenes and the room each scene is heard in. A clip is
  its scene's background plus zero to three events drawn from the scene's event weights, the events
  placed in the scene's room, at a random level, through one device (:mod:`.devices`).
- :data:`SCENE_CLASSES` (closed set: ``train``, ``validation``, ``test``) and :data:`HELDOUT_SCENES`
  (only ``heldout``) are disjoint; the ``scene`` ClassLabel lists the closed set first, so its labels
  in the closed-set splits are exactly ``0..len(SCENE_CLASSES) - 1``.
- Devices: ``train`` and ``validation`` hear only the seen devices (``train`` mostly the reference
  device A, as TAU's training set); ``test`` and ``heldout`` hear every device, equally often, and the
  ``seen_device`` column tells the unseen ones apart.

The corpus is cached on disk like the event corpus (:mod:`.generation`), under
``$HF_HOME/hf_audiorep/scenes`` by default.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import recording
from .corpus import _active_power
from .devices import DEVICES, Device, apply_device, seen_devices
from .generation import CorpusSpec, bind_cache_path, check_generation_arguments, flac_bytes, load_or_generate
from .synth import render_background, synthesize
from .tables import EMBEDDED_ONTOLOGY, SCENES, Scene, _background, scene_weights

__all__ = [
    "HELDOUT_SCENES",
    "SCENE_CLASSES",
    "SCENE_CORPUS_SPLITS",
    "SCENE_CORPUS_VERSION",
    "SCENE_NAMES",
    "load_embedded_scenes",
    "scene_corpus_cache_path",
]

# Bump whenever generation, extra_scenes.json or the device table changes.
SCENE_CORPUS_VERSION = 1

SCENE_CORPUS_SPLITS = ("train", "validation", "test", "heldout")
# Probabilities of 0, 1, 2 and 3 events in a clip: a one-second DCASE segment is mostly ambience.
_EVENT_COUNT_PROBS = (0.25, 0.4, 0.25, 0.1)
_SNR_DB = (-6.0, 12.0)
# RMS level (dBFS) of the scene at the microphone, before the device.
_LEVEL_DBFS = (-38.0, -22.0)
# How many times more often the reference device records a training clip than each other device
# (TAU's training set is mostly device A, the imbalance DIR augmentation makes up for).
_REFERENCE_WEIGHT = 3
_REFERENCE_DEVICE = "A"


def _load_scene_table() -> tuple[tuple[Scene, ...], tuple[str, ...], dict[str, str]]:
    table = json.loads((Path(__file__).parent / "extra_scenes.json").read_text(encoding="utf-8"))
    extra = tuple(
        Scene(
            s["name"],
            tuple(s["places"]),
            tuple(s["weights"].items()),
            _background(s["name"], s["background"]),
        )
        for s in table["scenes"]
    )
    scenes = SCENES + extra
    names = [s.name for s in scenes]
    if len(set(names)) != len(names):
        raise ValueError(
            f"extra_scenes.json: scene names must differ from each other and from scenes.json: {names}"
        )
    heldout = tuple(table["heldout"])
    if not set(heldout) <= set(names) or len(set(heldout)) != len(heldout):
        raise ValueError(f"extra_scenes.json: heldout must name distinct known scenes, got {heldout}")
    rooms = dict(table["rooms"])
    if set(rooms) != set(names) or not set(rooms.values()) <= set(recording.ROOMS):
        raise ValueError(f"extra_scenes.json: rooms must give every scene one of {tuple(recording.ROOMS)}")
    closed = tuple(s for s in scenes if s.name not in heldout)
    return closed + tuple(s for s in scenes if s.name in heldout), heldout, rooms


_SCENES, HELDOUT_SCENES, _ROOMS = _load_scene_table()
SCENE_NAMES: tuple[str, ...] = tuple(s.name for s in _SCENES)
"""Every scene, in the order of the ``scene`` ClassLabel: the closed set, then the held-out scenes."""
SCENE_CLASSES: tuple[str, ...] = SCENE_NAMES[: len(SCENE_NAMES) - len(HELDOUT_SCENES)]
"""The closed-set scenes (labels ``0..len(SCENE_CLASSES) - 1``)."""
_WEIGHTS = scene_weights(_SCENES, EMBEDDED_ONTOLOGY)
_DEVICE_NAMES = tuple(d.name for d in DEVICES)


def _split_scenes(split: str) -> tuple[int, ...]:
    first_heldout = len(SCENE_CLASSES)
    return (
        tuple(range(first_heldout, len(SCENE_NAMES))) if split == "heldout" else tuple(range(first_heldout))
    )


def _split_devices(split: str) -> tuple[Device, ...]:
    """A deck of the split's devices: each occurs in it as often as it should in the split."""
    if split in ("test", "heldout"):
        return DEVICES
    seen = seen_devices()
    if split == "validation":
        return seen
    return tuple(d for d in seen for _ in range(_REFERENCE_WEIGHT if d.name == _REFERENCE_DEVICE else 1))


def _deal(deck: tuple, count: int, rng: np.random.Generator) -> list:
    """``count`` items dealt from shuffled copies of ``deck``: every item equally often (give or take
    one deck), and a longer split starts with the same items."""
    decks = -(-count // len(deck)) if count else 0
    order = np.concatenate([rng.permutation(len(deck)) for _ in range(decks)]) if decks else []
    return [deck[int(i)] for i in order[:count]]


_SPLIT_CODES = {split: code for code, split in enumerate(SCENE_CORPUS_SPLITS)}
_CHUNK_CLIPS = 128


@dataclass(frozen=True)
class _ScenePlan:
    scene: int
    device: Device
    rng: np.random.Generator


def _plans(split: str, num_clips: int, seed: int, start: int, stop: int | None):
    code = _SPLIT_CODES[split]
    # The schedules draw from generators of their own, so that a clip depends on (seed, split, index).
    schedule = [
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code, (1 << 30) + k))) for k in (0, 1)
    ]
    scenes = _deal(_split_scenes(split), num_clips, schedule[0])
    devices = _deal(_split_devices(split), num_clips, schedule[1])
    for index in range(start, num_clips if stop is None else min(stop, num_clips)):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(code, index)))
        yield index, _ScenePlan(scenes[index], devices[index], rng)


def _render_scene(
    scene: int, device: Device, clip_seconds: float, sample_rate: int, rng: np.random.Generator
):
    """The clip's audio and event classes. The content (background, events, room, level) and the
    device draw from separate generators, so the same content can be heard through each device."""
    content_rng, device_rng = rng.spawn(2)
    n = int(round(clip_seconds * sample_rate))
    background = render_background(_SCENES[scene].draw_background(content_rng), n, sample_rate, content_rng)
    weights = _WEIGHTS[scene]
    count = int(content_rng.choice(len(_EVENT_COUNT_PROBS), p=_EVENT_COUNT_PROBS))
    labels = content_rng.choice(len(weights), size=count, replace=False, p=weights / weights.sum())
    sources = np.zeros(n, dtype=np.float32)
    for label in labels:
        wave = synthesize(EMBEDDED_ONTOLOGY.recipes[label], content_rng, sample_rate, clip_seconds).waveform[
            :n
        ]
        start = int(content_rng.integers(0, n - wave.size + 1))
        snr = float(content_rng.uniform(*_SNR_DB))
        power = _active_power(wave, sample_rate)
        if power > 0:  # the background has unit power
            sources[start : start + wave.size] += wave * np.float32(np.sqrt(10 ** (snr / 10) / power))
    distance = tuple(recording.DISTANCES)[int(content_rng.integers(len(recording.DISTANCES)))]
    room = recording.draw_room(_ROOMS[SCENE_NAMES[scene]], distance, content_rng)
    mix = background + recording.place_in_room(sources, room, sample_rate, content_rng)
    mix = recording.set_level(mix, float(content_rng.uniform(*_LEVEL_DBFS)))
    return apply_device(mix, sample_rate, device, device_rng), sorted(int(c) for c in labels)


def _caption(scene: Scene, labels: list[int], rng: np.random.Generator) -> str:
    place = scene.places[int(rng.integers(len(scene.places)))]
    nouns = [EMBEDDED_ONTOLOGY.phrases[c].nouns for c in labels]
    nouns = [options[int(rng.integers(len(options)))] for options in nouns]
    if not nouns:
        return f"Ambient sound {place}."
    listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]
    return f"Ambient sound {place}, with {listed}."


def _scene_rows(split: str, num_clips: int, config: dict, start: int = 0, stop: int | None = None):
    """Columns of clips ``start`` to ``stop`` of a split of ``num_clips`` clips."""
    seed, clip_seconds, sample_rate = config["seed"], config["clip_seconds"], config["sample_rate"]
    columns = ("clip_id", "audio", "scene", "device", "seen_device", "events", "caption", "index")
    rows: dict[str, list] = {key: [] for key in columns}
    for index, plan in _plans(split, num_clips, seed, start, stop):
        render_rng, caption_rng = plan.rng.spawn(2)
        waveform, labels = _render_scene(plan.scene, plan.device, clip_seconds, sample_rate, render_rng)
        clip_id = f"{split}_{index:05d}"
        rows["clip_id"].append(clip_id)
        rows["audio"].append({"bytes": flac_bytes(waveform, sample_rate), "path": f"{clip_id}.flac"})
        rows["scene"].append(plan.scene)
        rows["device"].append(_DEVICE_NAMES.index(plan.device.name))
        rows["seen_device"].append(plan.device.seen)
        rows["events"].append(labels)
        rows["caption"].append(_caption(_SCENES[plan.scene], labels, caption_rng))
        rows["index"].append(index)
    return rows


def _scene_rows_job(job: tuple) -> dict[str, list]:
    return _scene_rows(*job)


def _features(sample_rate: int):
    from datasets import Audio, ClassLabel, Features, List, Value

    return Features(
        {
            "clip_id": Value("string"),
            "audio": Audio(sampling_rate=sample_rate),
            "scene": ClassLabel(names=list(SCENE_NAMES)),
            "device": ClassLabel(names=list(_DEVICE_NAMES)),
            "seen_device": Value("bool"),
            "events": List(ClassLabel(names=list(EMBEDDED_ONTOLOGY.names))),
            "caption": Value("string"),
            "index": Value("int64"),
        }
    )


def _config(seed, num_train, num_validation, num_test, num_heldout, clip_seconds, sample_rate) -> dict:
    return {
        "corpus": "scenes",
        "version": SCENE_CORPUS_VERSION,
        "seed": int(seed),
        "num_train": int(num_train),
        "num_validation": int(num_validation),
        "num_test": int(num_test),
        "num_heldout": int(num_heldout),
        "clip_seconds": float(clip_seconds),
        "sample_rate": int(sample_rate),
    }


def _spec(config: dict) -> CorpusSpec:
    description = (
        "Embedded hf_audiorep acoustic-scene corpus: procedural scenes recorded through simulated devices, "
        f"with held-out scenes. Generator version {SCENE_CORPUS_VERSION}; configuration {json.dumps(config)}."
    )
    return CorpusSpec(
        title="the embedded scene corpus",
        cache_name="scenes",
        splits=SCENE_CORPUS_SPLITS,
        features=_features(config["sample_rate"]),
        description=description,
        rows_job=_scene_rows_job,
        chunk_clips=_CHUNK_CLIPS,
    )


def load_embedded_scenes(
    seed: int = 0,
    num_train: int = 880,
    num_validation: int = 110,
    num_test: int = 360,
    num_heldout: int = 240,
    clip_seconds: float = 1.0,
    sample_rate: int = 32000,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
):
    """Generates (or loads from cache) the embedded acoustic-scene corpus.

    Args:
        seed: everything is a deterministic function of it (and of the other arguments); a clip depends
            on ``(seed, split, index)`` and its split's scene and device schedules, so growing a split
            keeps its first clips and the other splits.
        num_train, num_validation, num_test: clips of the closed-set splits (each 0, or at least one per
            closed-set scene; scenes are dealt evenly).
        num_heldout: clips of the held-out scenes (0, or at least one per held-out scene), through
            every device, for few-shot open-set evaluation.
        clip_seconds, sample_rate: clip length (DCASE segments are 1 s) and rate (the CP-Mobile
            student's 32 kHz; a 16 kHz teacher resamples), 16-bit FLAC.
        cache_dir: cache root; default ``$HF_HOME/hf_audiorep/scenes``, else
            ``${XDG_CACHE_HOME:-~/.cache}/hf_audiorep/scenes`` (:func:`scene_corpus_cache_path`).
        num_proc: worker processes that render clips (default: one per CPU, at most 8, for corpora of
            512 clips or more; 1 below). The corpus does not depend on it.

    Returns:
        ``datasets.DatasetDict`` with splits ``train``, ``validation``, ``test``, ``heldout`` and
        columns ``clip_id``, ``audio`` (``Audio(sampling_rate)``), ``scene`` (``ClassLabel`` over
        :data:`SCENE_NAMES`), ``device`` (``ClassLabel`` over the names of
        :data:`~hf_audiorep.data.embedded.devices.DEVICES`), ``seen_device`` (whether the device
        records training clips), ``events`` (list of ``ClassLabel`` over the event ontology),
        ``caption`` and ``index`` (the row's index in its split, for memory banks such as CRD's).
    """
    counts = {
        "num_train": num_train,
        "num_validation": num_validation,
        "num_test": num_test,
        "num_heldout": num_heldout,
    }
    check_generation_arguments(seed, counts, clip_seconds, sample_rate)
    for name, value in counts.items():
        scenes = len(HELDOUT_SCENES) if name == "num_heldout" else len(SCENE_CLASSES)
        if 0 < value < scenes:
            raise ValueError(
                f"{name}={value} is too small for each of its {scenes} scenes: use 0 or at least {scenes}"
            )
    config = _config(seed, num_train, num_validation, num_test, num_heldout, clip_seconds, sample_rate)
    return load_or_generate(_spec(config), config, cache_dir, num_proc)


scene_corpus_cache_path = bind_cache_path(
    load_embedded_scenes,
    _config,
    "scenes",
    """Directory where :func:`load_embedded_scenes` caches the corpus of this configuration (takes the
    loader's arguments and defaults, without ``num_proc``).""",
)
