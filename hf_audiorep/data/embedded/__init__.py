"""The embedded corpus: every recipe's default data set, generated from a seed.

- :mod:`.synth`: procedural synthesis of sound events (one recipe per class) and scene backgrounds.
- :mod:`.tables`: the ontology, caption phrases and acoustic scenes, read from the CSV / JSON files
  beside these modules (the classes' ids, names, families, held-out flags and recipes in
  ``classes.csv`` and ``families.csv``; ``captions.json``; ``scenes.json``; ``vowels.csv``).
- :mod:`.recording`: how a clip was recorded (room, distance, recording chain, level).
- :mod:`.corpus`: clips, captions, splits; :func:`load_embedded_corpus`.
- :mod:`.devices`: simulated recording devices (frequency response, noise floor, compression) and
  the device impulse-response bank of DIR augmentation.
- :mod:`.scene_corpus`: one-second acoustic scenes through those devices, with held-out scenes;
  :func:`load_embedded_scenes`.
- :mod:`.generation`: the on-disk cache and parallel generation both corpora share.

:data:`ATTRIBUTE_TASKS` lists the attribute tasks (speech, music and recording attributes the event
ontology does not name), each a ClassLabel column of the corpus, for probes to iterate over::

    for task in ATTRIBUTE_TASKS.values():
        split = corpus["train"].filter(task.applies, input_columns=task.column)
        ...  # a probe with len(task.classes) outputs on split[task.column]
"""

from .corpus import CORPUS_VERSION, MAX_EVENTS, SPLITS, corpus_cache_path, load_embedded_corpus
from .devices import (
    AUGMENTATION_DEVICES,
    DEVICES,
    Device,
    apply_device,
    device_impulse_responses,
    seen_devices,
    unseen_devices,
)
from .scene_corpus import (
    HELDOUT_SCENES,
    SCENE_CLASSES,
    SCENE_CORPUS_SPLITS,
    SCENE_CORPUS_VERSION,
    SCENE_NAMES,
    load_embedded_scenes,
    scene_corpus_cache_path,
)
from .synth import (
    RECIPES,
    BackgroundParams,
    MusicStyle,
    SpeechStyle,
    SynthesizedEvent,
    render_background,
    synthesize,
)
from .tables import (
    ATTRIBUTE_TASKS,
    CAPTION_WORDS,
    EMBEDDED_ONTOLOGY,
    SCENES,
    AttributeTask,
    CaptionPhrases,
    CaptionWords,
    EmbeddedOntology,
    OneOf,
    Scene,
    SoundFamily,
)

__all__ = [
    "ATTRIBUTE_TASKS",
    "AUGMENTATION_DEVICES",
    "DEVICES",
    "HELDOUT_SCENES",
    "SCENE_CLASSES",
    "SCENE_CORPUS_SPLITS",
    "SCENE_CORPUS_VERSION",
    "SCENE_NAMES",
    "Device",
    "apply_device",
    "device_impulse_responses",
    "load_embedded_scenes",
    "scene_corpus_cache_path",
    "seen_devices",
    "unseen_devices",
    "CAPTION_WORDS",
    "CORPUS_VERSION",
    "EMBEDDED_ONTOLOGY",
    "MAX_EVENTS",
    "RECIPES",
    "SCENES",
    "SPLITS",
    "AttributeTask",
    "BackgroundParams",
    "CaptionPhrases",
    "CaptionWords",
    "EmbeddedOntology",
    "MusicStyle",
    "OneOf",
    "Scene",
    "SoundFamily",
    "SpeechStyle",
    "SynthesizedEvent",
    "corpus_cache_path",
    "load_embedded_corpus",
    "render_background",
    "synthesize",
]
