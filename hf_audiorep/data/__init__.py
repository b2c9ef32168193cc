"""Data: the embedded corpus, AudioSet and other sources, decoding, batching, augmentation."""

from .arguments import DataArguments, StreamFactory, load_sources
from .augment import (
    MixupOutput,
    device_impulse_response,
    freq_mixstyle,
    frequency_mask,
    mixup,
    random_erasing,
    roll_and_gain,
    spec_augment,
    time_roll,
)
from .decode import CorruptAudioError, crop_or_pad, decode_audio
from .embedded import EMBEDDED_ONTOLOGY, load_embedded_corpus, load_embedded_scenes
from .lhotse_cuts import is_lhotse_cut_manifest, load_lhotse_cuts
from .ontology import (
    AUDIOSET_ONTOLOGY,
    LabelGroup,
    LabelVocabulary,
    UnknownLabelError,
    labels_to_multi_hot,
)
from .semi_supervised import SemiSupervisedBatches, split_labeled
from .sources import AudioSource, label_frequencies, load_audio_source
from .stream import AudioStream
from .tags import (
    AudioCaptioner,
    KeywordTagExtractor,
    LLMTagExtractor,
    TagExtractor,
    TagSystem,
    TagSystemBuilder,
    build_tag_system,
    parse_generated_tags,
)

__all__ = [
    "AUDIOSET_ONTOLOGY",
    "EMBEDDED_ONTOLOGY",
    "AudioCaptioner",
    "AudioSource",
    "AudioStream",
    "CorruptAudioError",
    "DataArguments",
    "KeywordTagExtractor",
    "LLMTagExtractor",
    "LabelGroup",
    "LabelVocabulary",
    "MixupOutput",
    "SemiSupervisedBatches",
    "StreamFactory",
    "TagExtractor",
    "TagSystem",
    "TagSystemBuilder",
    "UnknownLabelError",
    "build_tag_system",
    "crop_or_pad",
    "decode_audio",
    "device_impulse_response",
    "freq_mixstyle",
    "frequency_mask",
    "is_lhotse_cut_manifest",
    "labels_to_multi_hot",
    "label_frequencies",
    "load_audio_source",
    "load_embedded_corpus",
    "load_embedded_scenes",
    "load_lhotse_cuts",
    "load_sources",
    "mixup",
    "parse_generated_tags",
    "random_erasing",
    "roll_and_gain",
    "spec_augment",
    "split_labeled",
    "time_roll",
]
