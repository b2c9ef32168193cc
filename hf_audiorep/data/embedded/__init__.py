"""The embedded corpus: every recipe's default data set, generated from a seed.

- :mod:`.synth`: procedural synthesis of sound events (one recipe per class) and scene backgrounds.
- :mod:`.tables`: the ontology, caption phrases and acoustic scenes, read from the CSV / JSON files
  beside these modules (the classes' ids, names, families, held-out flags and recipes in
  ``classes.csv`` and ``families.csv``; ``captions.json``; ``scenes.json``; ``vowels.csv``).
- :mod:`.recording`: how a clip was recorded (room, distance, recording chain, level).
- :mod:`.corpus`: clips, captions, splits and the on-disk cache; :func:`load_embedded_corpus`.

:data:`ATTRIBUTE_TASKS` lists the attribute tasks (speech, music and recording attributes the event
ontology does not name), each a ClassLabel column of the corpus, for probes to iterate over::

    for task in ATTRIBUTE_TASKS.values():
        split = corpus["train"].filter(task.applies, input_columns=task.column)
        ...  # a probe with len(task.classes) outputs on split[task.column]
"""

from .corpus import CORPUS_VERSION, MAX_EVENTS, SPLITS, corpus_cache_path, load_embedded_corpus
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
