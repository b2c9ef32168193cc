"""Read Lhotse cut manifests (JSON lines, optionally gzipped) as a ``datasets.Dataset`` with local audio.

Auden's UTS data (``AudenAI/UTS``) is Lhotse ``MonoCut`` manifests: one cut per line, its caption and tags
in ``supervisions[0].custom`` (``caption``, ``audio_tag``, ``original_caption``), and its audio named by
``recording.sources`` -- whose ``source`` is often only the corpus the clip came from (``audioset``), or a
path on the machine the manifest was written on. Lhotse itself is not needed to read them: each line is
plain JSON (``MonoCut.to_dict``).

Columns of the dataset:

- ``id``: the cut id; ``duration``: the cut's seconds;
- ``audio``: the resolved local file (an ``Audio(decode=False)`` value, decoded by ``decode.decode_audio``);
- ``caption``: the ``caption`` field (several captions of one clip are joined with a space, as the tag
  builder joins them), when any cut has one;
- ``tags``: the ``audio_tag`` field, a list or a ';'-separated string, as a list of stripped, lowercased
  tags without empties, when any cut has one.

A field is read from the first supervision's ``custom`` dict, else from the supervision itself, else from
the cut's ``custom`` (Auden's data module reads the first supervision, ``custom`` first).

Where a cut's audio is found, in this order (the first file that exists wins):

1. the source itself, when it is a file (a ``file`` source; a relative path is relative to the working
   directory, as Lhotse reads it);
2. with ``audio_root``: ``audio_root/<source>`` for a relative source path; ``audio_root/<file name of the
   source>`` for a path or URL ending in an audio extension (a path from another machine);
3. with ``audio_root``: ``audio_root/<source>/<recording id>.<ext>`` when the source is a bare name such as
   ``audioset`` (one folder per source corpus), then ``audio_root/<recording id>.<ext>``, for every
   extension the decoder reads (``.flac``, ``.wav``, ``.mp3``, ``.ogg``, ``.opus``, ``.m4a`` first, in that
   order, when several files share the id).

The source read is the one holding the cut's channel. A cut whose audio is not found is dropped and counted
(one warning with examples); none found is an error naming the manifests and the root. The decoder reads
whole files, so a cut that is only part of its recording (``start`` > 0, or shorter than the recording), a
recording with transforms other than resampling (speed, volume, reverb), a cut without a recording, and
mixed or padding cuts are errors naming the cut: cut the audio into one file per cut first (Lhotse's
``CutSet.save_audios``) and read the manifest that writes. A cut that selects some channels of a
multi-channel file is kept, counted and warned about: the decoder averages every channel of the file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import datasets
from datasets import Audio, Dataset, Features, Value

from .decode import AUDIO_EXTENSIONS

logger = logging.getLogger(__name__)

#: Lhotse's cut classes, by the ``type`` their ``to_dict`` writes
CUT_TYPES = ("MonoCut", "MultiCut", "MixedCut", "PaddingCut")
#: the cut types that are one recording, which this reader turns into clips
_READABLE_TYPES = ("MonoCut", "MultiCut")
TAG_SEPARATOR = ";"
#: Lhotse rounds a cut's bounds to whole samples or feature frames: a cut this close to its recording's
#: bounds is the whole recording (less than one 10-ms frame of a 16-kHz front end either way)
WHOLE_RECORDING_TOLERANCE_S = 0.01
#: recording transforms the stream already does: it resamples every clip to the model's rate
_HARMLESS_TRANSFORMS = ("Resample",)
#: when files of several extensions share a recording id: lossless first, then the common lossy formats
_PREFERRED_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a")
_EXTENSION_ORDER = _PREFERRED_EXTENSIONS + tuple(
    e for e in AUDIO_EXTENSIONS if e not in _PREFERRED_EXTENSIONS
)
#: a cut line longer than this is not read when sniffing a file (UTS lines are a few kB)
_MAX_SNIFFED_LINE = 4 << 20
_SHOWN_EXAMPLES = 3


class UnsupportedCutError(ValueError):
    """A cut whose audio the decoder cannot produce: part of a recording, a transformed or mixed one."""


def _open_text(path: str | os.PathLike):
    """The manifest as text lines, gunzipped when it is gzip (by its magic bytes, not its name)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")


def is_lhotse_cut_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Lhotse cut manifest: its first line is a JSON object with ``recording`` and
    ``supervisions``, or with a Lhotse cut ``type`` (``MonoCut``...)."""
    if not os.path.isfile(path):
        return False
    try:
        with _open_text(path) as f:
            line = ""
            while not line.strip():
                line = f.readline(_MAX_SNIFFED_LINE)
                if not line:
                    return False
        first = json.loads(line)
    except (OSError, UnicodeDecodeError, EOFError, ValueError):  # binary, truncated gzip, not JSON
        return False
    if not isinstance(first, dict):
        return False
    return first.get("type") in CUT_TYPES or ("recording" in first and "supervisions" in first)


def split_tags(value) -> list[str]:
    """Tags of one clip: a list of tags or a ';'-separated string, stripped and lowercased, empties
    dropped, first occurrence kept."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    tags = (t.strip().lower() for item in items for t in str(item).split(TAG_SEPARATOR))
    return list(dict.fromkeys(t for t in tags if t))


def _caption(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):
        return " ".join(str(v) for v in value if v)
    return str(value)


@dataclass(frozen=True)
class _Cut:
    """What the reader needs of one manifest line."""

    id: str
    type: str
    recording: dict | None
    start: float
    duration: float
    channels: tuple[int, ...]
    caption: str | None
    tags: list[str] | None

    @classmethod
    def parse(cls, record: dict, caption_field: str, tag_field: str) -> _Cut:
        supervisions = record.get("supervisions") or []
        first = supervisions[0] if supervisions else {}
        caption, tags = (_field(record, first, name) for name in (caption_field, tag_field))
        channel = record.get("channel", 0)
        channels = tuple(channel) if isinstance(channel, list) else (channel,)
        return cls(
            id=str(record.get("id")),
            type=record.get("type", "MonoCut"),
            recording=record.get("recording"),
            start=float(record.get("start") or 0.0),
            duration=float(record.get("duration") or 0.0),
            channels=channels,
            caption=_caption(caption),
            tags=None if tags is None else split_tags(tags),
        )

    def unsupported(self) -> str | None:
        """Why the decoder cannot produce this cut's audio, or None."""
        if self.type not in _READABLE_TYPES:
            return f"is a {self.type}, not one recording"
        if not isinstance(self.recording, dict):
            return "has no recording (a features-only cut)"
        transforms = [t.get("name", "?") for t in self.recording.get("transforms") or []]
        changed = [name for name in transforms if name not in _HARMLESS_TRANSFORMS]
        if changed:
            return f"has recording transforms {changed}, which the decoder does not apply"
        total = _recording_duration(self.recording)
        end = self.start + self.duration
        if self.start > WHOLE_RECORDING_TOLERANCE_S or (
            total is not None and end < total - WHOLE_RECORDING_TOLERANCE_S
        ):
            whole = f"{total:g} s" if total is not None else "of unknown length"
            return f"is {self.start:g}-{end:g} s of a recording {whole}"
        return None


def _field(cut: dict, supervision: dict, name: str):
    for holder in (supervision.get("custom"), supervision, cut.get("custom")):
        if isinstance(holder, dict) and holder.get(name) is not None:
            return holder[name]
    return None


def _recording_duration(recording: dict) -> float | None:
    if recording.get("duration") is not None:
        return float(recording["duration"])
    if recording.get("num_samples") and recording.get("sampling_rate"):
        return recording["num_samples"] / recording["sampling_rate"]
    return None


def _source_of(recording: dict, channels: tuple[int, ...]) -> dict:
    """The recording source holding the cut's first channel (one file per channel is a Lhotse layout)."""
    sources = recording.get("sources") or [{}]
    for source in sources:
        if channels[0] in (source.get("channels") or []):
            return source
    return sources[0]


class _AudioResolver:
    """Finds the local file of a cut's recording (the rules of the module docstring). Folder listings
    are cached, so looking a recording id up under every extension costs no file-system call."""

    def __init__(self, audio_root: str | os.PathLike | None):
        self.root = Path(audio_root) if audio_root is not None else None
        self._listings: dict[Path, dict[str, list[str]]] = {}

    def _by_stem(self, folder: Path) -> dict[str, list[str]]:
        if folder not in self._listings:
            listing: dict[str, list[str]] = {}
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        stem, ext = os.path.splitext(entry.name)
                        if ext.lower() in AUDIO_EXTENSIONS and entry.is_file():
                            listing.setdefault(stem, []).append(entry.name)
            except (FileNotFoundError, NotADirectoryError):
                pass
            for names in listing.values():
                names.sort(key=lambda n: _EXTENSION_ORDER.index(os.path.splitext(n)[1].lower()))
            self._listings[folder] = listing
        return self._listings[folder]

    def candidates(self, source: dict) -> Iterator[Path]:
        """The paths to try for a source, before the recording-id lookup."""
        kind, value = source.get("type", "file"), source.get("source")
        if not isinstance(value, str) or not value:
            return
        if kind == "file":
            yield Path(value)
        if self.root is None or kind not in ("file", "url"):
            return
        path = urlparse(value).path if kind == "url" else value
        if kind == "file" and not os.path.isabs(path):
            yield self.root / path
        if os.path.splitext(path)[1].lower() in AUDIO_EXTENSIONS:
            yield self.root / os.path.basename(path)

    def resolve(self, recording: dict, channels: tuple[int, ...]) -> str | None:
        source = _source_of(recording, channels)
        for path in self.candidates(source):
            if path.is_file():
                return os.path.abspath(path)
        if self.root is None:
            return None
        recording_id = str(recording.get("id"))
        folders = [self.root]
        name = source.get("source")
        if isinstance(name, str) and name and not os.path.splitext(name)[1] and "/" not in name.strip("/"):
            folders.insert(0, self.root / name.strip("/"))  # a bare corpus name: one folder per corpus
        for folder in folders:
            found = self._by_stem(folder).get(recording_id)
            if found:
                return os.path.abspath(folder / found[0])
        return None

    def describe(self) -> str:
        return "no audio_root" if self.root is None else f"audio_root {self.root}"


def _lines(manifests: Sequence[str]) -> Iterator[tuple[str, int, dict]]:
    for manifest in manifests:
        with _open_text(manifest) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{manifest}, line {number}: not JSON ({err})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{manifest}, line {number}: not a cut (a JSON {type(record).__name__})")
                yield manifest, number, record


@dataclass
class _Scan:
    """Pass 1 over the manifests: each cut's resolved audio (None: not found), what the columns hold."""

    paths: list[str | None]
    num_cuts: int = 0
    has_caption: bool = False
    has_tags: bool = False
    missing: int = 0
    missing_examples: tuple[str, ...] = ()
    channel_subsets: int = 0


def _channels_of(recording: dict, source: dict) -> int:
    return len(source.get("channels") or recording.get("channel_ids") or [0])


def _scan(manifests, resolver: _AudioResolver | None, caption_field: str, tag_field: str) -> _Scan:
    scan = _Scan(paths=[])
    missing_examples: list[str] = []
    for manifest, number, record in _lines(manifests):
        cut = _Cut.parse(record, caption_field, tag_field)
        scan.num_cuts += 1
        scan.has_caption |= cut.caption is not None
        scan.has_tags |= cut.tags is not None
        if resolver is None:
            continue
        reason = cut.unsupported()
        if reason is not None:
            raise UnsupportedCutError(
                f"{manifest}, line {number}: cut {cut.id!r} {reason}; the decoder reads whole files, so "
                "write one audio file per cut first (Lhotse: CutSet.save_audios) and read that manifest"
            )
        path = resolver.resolve(cut.recording, cut.channels)
        scan.paths.append(path)
        if path is None:
            scan.missing += 1
            if len(missing_examples) < _SHOWN_EXAMPLES:
                source = _source_of(cut.recording, cut.channels).get("source")
                missing_examples.append(
                    f"{cut.id} (recording {cut.recording.get('id')!r}, source {source!r})"
                )
        elif _channels_of(cut.recording, _source_of(cut.recording, cut.channels)) > len(cut.channels):
            scan.channel_subsets += 1
    scan.missing_examples = tuple(missing_examples)
    return scan


def _fingerprint(manifests, scan: _Scan, *parts) -> str:
    """What the dataset is made of: the manifests' contents (size, mtime), each cut's resolved audio and the
    reader's options; the same fingerprint reuses the Arrow file ``datasets`` cached."""
    digest = hashlib.sha256(b"lhotse-cuts/1")
    for manifest in manifests:
        stat = os.stat(manifest)
        digest.update(json.dumps([os.path.abspath(manifest), stat.st_size, stat.st_mtime_ns]).encode())
    digest.update(json.dumps([scan.paths, scan.has_caption, scan.has_tags, *parts]).encode())
    return digest.hexdigest()[:32]


def _rows(manifests, paths, caption_field, tag_field, with_audio, with_caption, with_tags):
    for position, (_, _, record) in enumerate(_lines(manifests)):
        path = paths[position] if with_audio else None
        if with_audio and path is None:
            continue
        cut = _Cut.parse(record, caption_field, tag_field)
        row = {"id": cut.id, "duration": cut.duration}
        if with_audio:
            row["audio"] = path
        if with_caption:
            row["caption"] = cut.caption
        if with_tags:
            row["tags"] = cut.tags or []
        yield row


def load_lhotse_cuts(
    manifests: str | os.PathLike | Sequence[str | os.PathLike],
    audio_root: str | os.PathLike | None = None,
    *,
    require_audio: bool = True,
    caption_field: str = "caption",
    tag_field: str = "audio_tag",
    cache_dir: str | None = None,
) -> Dataset:
    """The cuts of ``manifests`` (one path or several, ``.jsonl`` or ``.jsonl.gz``) as a Dataset with the
    columns and the audio resolution of the module docstring.

    ``require_audio=False`` reads the text alone (tag mining from captions needs no audio): every cut is
    kept and there is no ``audio`` column, so no ``audio_root`` is needed. ``caption_field`` and
    ``tag_field`` name the supervision fields read into ``caption`` and ``tags``.
    """
    if isinstance(manifests, str | os.PathLike):
        manifests = [manifests]
    manifests = [os.fspath(m) for m in manifests]
    if not manifests:
        raise ValueError("no Lhotse cut manifest given")
    for manifest in manifests:
        if not os.path.isfile(manifest):
            raise FileNotFoundError(f"no such cut manifest: {manifest}")
    named = manifests[0] if len(manifests) == 1 else f"{len(manifests)} manifests ({manifests[0]}, ...)"
    if audio_root is not None and not os.path.isdir(audio_root):
        raise NotADirectoryError(f"audio_root {audio_root} is not a folder")
    resolver = _AudioResolver(audio_root) if require_audio else None
    scan = _scan(manifests, resolver, caption_field, tag_field)
    if scan.num_cuts == 0:
        raise ValueError(f"{named} holds no cuts")
    if require_audio:
        _report_audio(scan, named, resolver)
    with_caption, with_tags = scan.has_caption, scan.has_tags
    features = {"id": Value("string"), "duration": Value("float64")}
    if require_audio:
        features["audio"] = Audio(decode=False)
    if with_caption:
        features["caption"] = Value("string")
    if with_tags:
        features["tags"] = datasets.List(Value("string"))
    options = [require_audio, caption_field, tag_field]
    return Dataset.from_generator(
        _rows,
        features=Features(features),
        gen_kwargs={
            # tuples: datasets would shard over (and so require equal lengths of) every list it is given
            "manifests": tuple(manifests),
            "paths": tuple(scan.paths),
            "caption_field": caption_field,
            "tag_field": tag_field,
            "with_audio": require_audio,
            "with_caption": with_caption,
            "with_tags": with_tags,
        },
        cache_dir=cache_dir,
        fingerprint=_fingerprint(manifests, scan, *options),
    )


def _report_audio(scan: _Scan, named: str, resolver: _AudioResolver) -> None:
    examples = "; ".join(scan.missing_examples)
    if scan.missing == scan.num_cuts:
        hint = (
            "pass audio_root (--audio_root), the folder holding the audio"
            if resolver.root is None
            else "files are looked up as <audio_root>/<source>, <audio_root>/<source file name>, "
            "<audio_root>/<source>/<recording id>.<ext> and <audio_root>/<recording id>.<ext>"
        )
        raise FileNotFoundError(
            f"{named}: no audio found for any of its {scan.num_cuts} cuts with {resolver.describe()} "
            f"(e.g. {examples}); {hint}"
        )
    if scan.missing:
        logger.warning(
            "%s: %d of %d cuts dropped, their audio not found with %s (e.g. %s)",
            named,
            scan.missing,
            scan.num_cuts,
            resolver.describe(),
            examples,
        )
    if scan.channel_subsets:
        logger.warning(
            "%s: %d cuts select some channels of a multi-channel file; the decoder averages all of them",
            named,
            scan.channel_subsets,
        )
