"""Data: the embedded corpus, AudioSet and other sources, decoding, batching, augmentation."""

from .augment import MixupOutput, mixup, spec_augment
from .corpus import EMBEDDED_ONTOLOGY, load_embedded_corpus
from .decode import CorruptAudioError, crop_or_pad, decode_audio
from .ontology import AUDIOSET_ONTOLOGY, LabelMapper, labels_to_multi_hot
from .sources import AudioSource, load_audio_source
from .stream import AudioStream

__all__ = [
    "AUDIOSET_ONTOLOGY",
    "EMBEDDED_ONTOLOGY",
    "AudioSource",
    "AudioStream",
    "CorruptAudioError",
    "LabelMapper",
    "MixupOutput",
    "crop_or_pad",
    "decode_audio",
    "labels_to_multi_hot",
    "load_audio_source",
    "load_embedded_corpus",
    "mixup",
    "spec_augment",
]
