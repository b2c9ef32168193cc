"""The embedded corpus: every recipe's default data set, generated from a seed.

- :mod:`.synth`: procedural synthesis of sound events (one recipe per class) and scene backgrounds.
- :mod:`.tables`: the ontology, caption phrases and acoustic scenes, read from the CSV / JSON files
  beside these modules (the classes' ids, names, families, held-out flags and recipes in
  ``classes.csv`` and ``families.csv``; ``captions.json``; ``scenes.json``; ``vowels.csv``).
- :mod:`.corpus`: clips, captions, splits and the on-disk cache; :func:`load_embedded_corpus`.
"""

from .corpus import CORPUS_VERSION, MAX_EVENTS, SPLITS, corpus_cache_path, load_embedded_corpus
from .synth import RECIPES, BackgroundParams, SynthesizedEvent, render_background, synthesize
from .tables import (
    CAPTION_WORDS,
    EMBEDDED_ONTOLOGY,
    SCENES,
    CaptionPhrases,
    CaptionWords,
    EmbeddedOntology,
    OneOf,
    Scene,
    SoundFamily,
)

__all__ = [
    "CAPTION_WORDS",
    "CORPUS_VERSION",
    "EMBEDDED_ONTOLOGY",
    "MAX_EVENTS",
    "RECIPES",
    "SCENES",
    "SPLITS",
    "BackgroundParams",
    "CaptionPhrases",
    "CaptionWords",
    "EmbeddedOntology",
    "OneOf",
    "Scene",
    "SoundFamily",
    "SynthesizedEvent",
    "corpus_cache_path",
    "load_embedded_corpus",
    "render_background",
    "synthesize",
]
