"""UTS tag systems: captions -> tags -> ``df * log((N+1)/(df+1))`` -> top-K vocabulary -> multi-hot labels.

- :mod:`.vocabulary`: scores, top-K, :class:`TagSystem` (the vocabulary, its label file, Hub I/O).
- :mod:`.extract`: tag extractors (offline :class:`KeywordTagExtractor`, :class:`LLMTagExtractor`) and
  the parser of model answers.
- :mod:`.caption`: :class:`AudioCaptioner`, any audio-to-text pipeline.
- :mod:`.builder`: :class:`TagSystemBuilder` / :func:`build_tag_system` over a dataset.
"""

from .builder import TaggedClips, TagSystemBuilder, TagSystemResult, build_tag_system
from .caption import AudioCaptioner
from .extract import (
    DEFAULT_TAG_PROMPT,
    KeywordTagExtractor,
    LLMTagExtractor,
    TagExtractor,
    generated_text,
    make_extractor,
    parse_generated_tags,
    singularize,
    split_tags,
)
from .vocabulary import (
    TagSystem,
    document_frequency,
    label_file_name,
    rank_tags,
    score_tags,
    select_top_k,
    tag_score,
)

__all__ = [
    "DEFAULT_TAG_PROMPT",
    "AudioCaptioner",
    "KeywordTagExtractor",
    "LLMTagExtractor",
    "TagExtractor",
    "TagSystem",
    "TagSystemBuilder",
    "TagSystemResult",
    "TaggedClips",
    "build_tag_system",
    "document_frequency",
    "generated_text",
    "label_file_name",
    "make_extractor",
    "parse_generated_tags",
    "rank_tags",
    "score_tags",
    "select_top_k",
    "singularize",
    "split_tags",
    "tag_score",
]
