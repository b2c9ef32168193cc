"""Say what a file is when it cannot be read as audio, and whether it holds all the audio it announces.

A decoder's own error ("File does not exist or is not a regular file (possibly a pipe?)", "System
error.") says nothing useful about a photo or a text file renamed ``.mp3``. The file's first bytes
do: ``filetype`` recognises images, documents, archives, video and audio by their signatures, and
text is told apart by decoding as UTF-8.

Decoders do not say when a file was cut short either: libsndfile shrinks a WAV's frame count to the bytes
present, and Vorbis, Opus, MP3 and WebM decoders stop quietly where the bytes stop. The container does
say, where it declares sizes: :func:`declared_length` reads what a file's header announces (WAV and AIFF
chunk sizes, FLAC's sample count, an MP3's Xing or VBRI header, MP4 boxes, the WebM/Matroska segment size,
Ogg page sizes) and compares it with the bytes the file holds, without decoding anything.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import filetype

#: enough bytes for every signature filetype checks (its own readers look at the first 8 KiB)
_HEAD_BYTES = 8192

_KIND_NAMES = {
    "image": "an image",
    "video": "a video",
    "application": "a document or archive",
    "font": "a font",
}


def _article(extension: str) -> str:
    # Said as letters ("an M4A", "an MP3", "an AAC") or as a word starting with a vowel ("an OGG").
    return "an" if extension[:1].lower() in "aeiou" or extension.lower().startswith("m") else "a"


def _is_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        # A multi-byte character cut at the end of the head is still text.
        if err.start < len(head) - 3:
            return False
        text = head[: err.start].decode("utf-8")
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * max(len(text), 1)


def describe_content(head: bytes) -> tuple[str, bool]:
    """``(description, is_audio)`` of a file from its first bytes: ``("a PNG image", False)``,
    ``("a FLAC file", True)``, ``("text", False)``, ``("data in no format recognised", False)``."""
    kind = filetype.guess(head) if head else None
    if kind is not None:
        top = kind.mime.split("/")[0]
        if top == "audio":
            return f"{_article(kind.extension)} {kind.extension.upper()} file", True
        if top == "video" and kind.extension in ("mp4", "webm", "mkv", "mov"):
            # Audio-only M4A and WebM carry the same container signatures as their video siblings.
            return f"an {kind.extension.upper()} container", True
        return f"{_KIND_NAMES.get(top, 'a file')} ({kind.extension.upper()}, {kind.mime})", False
    if _is_text(head):
        return "text", False
    return "data in no format recognised", False


def describe_file(path: str | os.PathLike) -> tuple[str, bool]:
    """:func:`describe_content` of the file at ``path``."""
    with open(path, "rb") as f:
        return describe_content(f.read(_HEAD_BYTES))


def undecodable_message(what: str, head: bytes, reason: str, declared: Declared | None = None) -> str:
    """The message for content the decoders rejected: not audio at all, a container with no audio stream,
    audio cut short, or audio that is damaged. ``declared`` is :func:`declared_length` of the whole file
    where the caller has it; from ``head`` alone only a missing audio stream can be told."""
    description, is_audio = describe_content(head)
    if not is_audio:
        return f"cannot decode {what}: not an audio file ({description})"
    whole = declared is not None
    if not whole:
        # Bytes past the head are unknown, so a box running past it says nothing about a cut.
        declared = declared_length(head)
    if declared is not None and not declared.has_audio:
        return f"cannot decode {what}: {description} with no audio stream"
    if whole and declared.cut:
        return truncation_message(what, declared, None)
    return f"cannot decode {what}: {description} that is truncated or damaged ({reason})"


@dataclass(frozen=True)
class Declared:
    """What a file's container announces about its audio, and whether the file holds all of it."""

    #: where the announcement is, for messages: "WAV header", "FLAC header", "last Ogg page", ...
    container: str
    #: the length the container declares; None where it declares none (Ogg) or it is in a missing part
    seconds: float | None
    #: the file ends before data its container announces (a chunk, box, page or segment runs past the end)
    cut: bool = False
    #: where sizes cannot show a cut (FLAC), decoding more than this short of ``seconds`` shows it
    slack: float | None = None
    #: False for a container whose tracks are all video (or other non-audio) streams
    has_audio: bool = True
    #: what else the cut took, said after the numbers
    note: str = ""


def declared_length(source: str | os.PathLike | bytes) -> Declared | None:
    """What the container of ``source`` (a path, or a whole file's bytes) declares about its audio, checked
    against the bytes it holds. None for a format this does not parse (or that declares nothing to check)
    and for a header it cannot make sense of: the decoder then has the last word."""
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            return _declared(io.BytesIO(source), len(source))
        with open(source, "rb") as f:
            return _declared(f, os.fstat(f.fileno()).st_size)
    except Exception:  # noqa: BLE001 - a header misread here must not stop a decoder that can read the file
        return None


def truncation_message(
    what: str, declared: Declared | None, held: float | None, reason: str | None = None
) -> str | None:
    """Why ``what`` is truncated, given what its container declares and the ``held`` seconds that decoded
    (None: nothing could be); ``reason`` is the decoder's error where decoding stopped on one. None when
    the file holds all it declares."""
    if declared is None:
        return None
    short = declared.slack is not None and declared.seconds is not None and held is not None
    if not declared.cut and not (short and held < declared.seconds - declared.slack):
        return None
    if declared.cut:
        reason = None  # the decoder's error where the bytes stop is the cut, said once in our words
    verb = "is truncated or damaged" if reason else "is truncated"
    why = f" ({reason})" if reason else ""
    if held is None and declared.seconds is not None:
        body = f"its {declared.container} declares {_seconds(declared.seconds)} s but nothing can be decoded"
    elif held is None:
        body = f"it breaks off inside its {declared.container}{declared.note}, so nothing can be decoded"
    elif declared.seconds is None:
        body = f"it breaks off inside its {declared.container} after {_seconds(held)} s{declared.note}"
    else:
        said, got = _seconds_pair(declared.seconds, held)
        holds = f"only its first {got} s decode" if reason else f"it holds {got} s"
        body = f"its {declared.container} declares {said} s but {holds}{declared.note}"
    return f"{what} {verb}: {body}{why}"


def _seconds(value: float, decimals: int = 1) -> str:
    return f"{value:.{decimals}f}"


def _seconds_pair(declared: float, held: float) -> tuple[str, str]:
    # One decimal unless that makes a short file look whole ("declares 3.0 s but holds 3.0 s").
    for decimals in (1, 2, 3):
        said, got = _seconds(declared, decimals), _seconds(held, decimals)
        if said != got:
            break
    return said, got


#: a cut smaller than this is left alone: no model hears it, and it would print as "3.000 s of 3.000 s"
_MIN_CUT_SECONDS = 0.001
#: MP3 writers' Xing/VBRI byte counts are loose; libmpg123 itself only warns past 1 %
_MP3_BYTES_FUZZ = 0.01


def _declared(f: BinaryIO, size: int) -> Declared | None:
    head = f.read(16)
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return _wav(f, size, head[:4])
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return _aiff(f, size)
    if head[:4] == b"OggS":
        return _ogg(f, size)
    if head[4:8] == b"ftyp":
        return _mp4(f, size)
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return _matroska(f, size)
    start = _id3v2_size(head)  # FLAC and MP3 may start with an ID3v2 tag
    f.seek(start)
    if f.read(4) == b"fLaC":
        return _flac(f)
    return _mp3(f, size, start)


def _by_bytes(container: str, seconds: float, declared_bytes: int, present_bytes: int) -> Declared | None:
    """A container that declares ``declared_bytes`` of audio lasting ``seconds``, of which the file holds
    ``present_bytes``."""
    if seconds <= 0 or declared_bytes <= 0:
        return None
    missing = declared_bytes - present_bytes
    return Declared(container, seconds, cut=missing > declared_bytes * _MIN_CUT_SECONDS / seconds)


def _chunks(f: BinaryIO, start: int, size: int, big_endian: bool):
    """``(id, size, data offset)`` of the RIFF/IFF chunks from ``start`` on, while a chunk header fits."""
    layout = ">4sI" if big_endian else "<4sI"
    at = start
    while at + 8 <= size:
        f.seek(at)
        chunk_id, chunk_size = struct.unpack(layout, f.read(8))
        yield chunk_id, chunk_size, at + 8
        at += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned


def _wav(f: BinaryIO, size: int, magic: bytes) -> Declared | None:
    big_endian = magic == b"RIFX"
    uint = ">I" if big_endian else "<I"
    rate = byte_rate = frames = ds64_data = None
    for chunk_id, chunk_size, at in _chunks(f, 12, size, big_endian):
        f.seek(at)
        if chunk_id == b"ds64":  # RF64 keeps the 64-bit sizes here
            ds64_data = struct.unpack("<QQ", f.read(16))[1]
        elif chunk_id == b"fmt ":
            fmt = f.read(12)
            rate, byte_rate = struct.unpack(uint, fmt[4:8])[0], struct.unpack(uint, fmt[8:12])[0]
        elif chunk_id == b"fact":  # the sample count of a compressed (ADPCM, ...) stream
            frames = struct.unpack(uint, f.read(4))[0]
        elif chunk_id == b"data":
            if magic in (b"RF64", b"BW64") and chunk_size == 0xFFFFFFFF:
                chunk_size = ds64_data
            # A writer that cannot seek back (a pipe) leaves the size 0 or 0xFFFFFFFF: no length declared.
            if not byte_rate or not chunk_size or chunk_size == 0xFFFFFFFF:
                return None
            if frames and rate and frames != 0xFFFFFFFF:
                seconds = frames / rate  # a compressed stream's byte rate is only nominal
            else:
                seconds = chunk_size / byte_rate
            return _by_bytes("WAV header", seconds, chunk_size, size - at)
    return None


def _extended(raw: bytes) -> float:
    """An IEEE 754 80-bit extended float, as AIFF stores its sampling rate."""
    exponent = ((raw[0] & 0x7F) << 8) | raw[1]
    mantissa = int.from_bytes(raw[2:10], "big")
    return (-1 if raw[0] & 0x80 else 1) * mantissa * 2.0 ** (exponent - 16383 - 63)


def _aiff(f: BinaryIO, size: int) -> Declared | None:
    seconds, sound = None, None
    for chunk_id, chunk_size, at in _chunks(f, 12, size, big_endian=True):
        f.seek(at)
        if chunk_id == b"COMM":
            comm = f.read(18)
            frames, rate = struct.unpack(">I", comm[2:6])[0], _extended(comm[8:18])
            seconds = frames / rate if rate > 0 else None
        elif chunk_id == b"SSND":
            offset = struct.unpack(">I", f.read(4))[0]
            start = at + 8 + offset  # the sound data follows its offset and block-size fields
            sound = (chunk_size - 8 - offset, size - start)
    if sound is None:
        return None
    if seconds is None:  # COMM after a sound chunk that runs past the end
        return Declared("AIFF sound data", None, cut=True) if sound[1] < sound[0] else None
    return _by_bytes("AIFF header", seconds, *sound)


def _flac(f: BinaryIO) -> Declared | None:
    block_type = f.read(4)[0] & 0x7F
    if block_type != 0:  # STREAMINFO must come first
        return None
    packed = int.from_bytes(f.read(34)[10:18], "big")
    rate, total = packed >> 44, packed & ((1 << 36) - 1)
    if not rate or not total:  # 0 samples: the encoder did not know the length
        return None
    # FLAC's sizes do not show a cut (frames carry no byte counts ahead), but its decoders yield exactly the
    # declared samples, so any shortfall is one.
    return Declared("FLAC header", total / rate, slack=_MIN_CUT_SECONDS)


def _ogg(f: BinaryIO, size: int) -> Declared | None:
    # The last page starts in the file's last 64 KiB (a page is at most 65,307 bytes). An Ogg stream does
    # not declare its length, but every page declares its own size: a last page that runs past the end is a
    # cut. A stream that stops at a page boundary (a stream rip) is left alone.
    tail_start = max(0, size - 65536 - 512)
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(b"OggS")
    while at >= 0 and tail[at + 4 : at + 5] not in (b"\x00", b""):  # version 0, or cut right after "OggS"
        at = tail.rfind(b"OggS", 0, at)
    if at < 0:
        return None
    segments = tail[at + 26] if at + 26 < len(tail) else None
    table = tail[at + 27 : at + 27 + (segments or 0)]
    cut = segments is None or len(table) < segments or at + 27 + segments + sum(table) > len(tail)
    return Declared("last Ogg page", None, cut=True) if cut else None


def _boxes(f: BinaryIO, start: int, end: int):
    """``(type, payload start, box end)`` of the MP4 boxes between ``start`` and ``end``; a box may end
    past ``end`` (the caller's sign of a cut)."""
    at = start
    while at + 8 <= end:
        f.seek(at)
        box_size, box_type = struct.unpack(">I4s", f.read(8))
        header = 8
        if box_size == 1:
            box_size, header = struct.unpack(">Q", f.read(8))[0], 16
        elif box_size == 0:  # runs to the end of the file
            box_size = end - at
        if box_size < header:
            raise ValueError(f"an MP4 box of {box_size} bytes")
        yield box_type, at + header, at + box_size
        at += box_size


def _mp4_duration(f: BinaryIO, at: int, version_1: tuple[int, int], version_0: tuple[int, int]) -> int | None:
    """A duration field of a full box whose payload starts at ``at``: its offset and width depend on the
    box's version (64-bit times in version 1). None where it is unset (0 or all ones)."""
    f.seek(at)
    header = f.read(40)
    offset, width = version_1 if header[0] == 1 else version_0
    value = int.from_bytes(header[offset : offset + width], "big")
    return value if 0 < value < 2 ** (8 * width) - 1 else None


def _mp4_audio(f: BinaryIO, start: int, end: int) -> tuple[float | None, bool]:
    """The first audio track's declared seconds in a ``moov`` box, and whether it has an audio track."""
    movie_scale = None
    for box_type, box_start, box_end in _boxes(f, start, end):
        if box_type == b"mvhd":
            movie_scale = _mp4_duration(f, box_start, (20, 4), (12, 4))
        if box_type != b"trak":
            continue
        handler, track, media, media_scale = None, None, None, None
        for kind, kind_start, kind_end in _boxes(f, box_start, box_end):
            if kind == b"tkhd":  # the length played, after the edit list trims the encoder's priming
                track = _mp4_duration(f, kind_start, (28, 8), (20, 4))
            if kind != b"mdia":
                continue
            for leaf, leaf_start, _ in _boxes(f, kind_start, kind_end):
                f.seek(leaf_start)
                if leaf == b"hdlr":
                    handler = f.read(12)[8:12]
                elif leaf == b"mdhd":
                    media_scale = _mp4_duration(f, leaf_start, (20, 4), (12, 4))
                    media = _mp4_duration(f, leaf_start, (24, 8), (16, 4))
        if handler != b"soun":
            continue
        if track and movie_scale:
            return track / movie_scale, True
        return (media / media_scale if media and media_scale else None), True
    return None, False


def _mp4(f: BinaryIO, size: int) -> Declared | None:
    cut, moov = False, None
    for box_type, start, end in _boxes(f, 0, size):
        if end > size:
            cut = True
            break
        if box_type == b"moov":
            moov = _mp4_audio(f, start, end)
    if moov is None:
        # ffmpeg writes the index (moov) after the media data: a cut file has none, and nothing decodes.
        note = ", before the index of its samples (the moov box)"
        return Declared("MP4 container", None, cut=True, note=note) if cut else None
    seconds, has_audio = moov
    if seconds is None:
        return Declared("MP4 container", None, cut=cut, has_audio=has_audio)
    return Declared("MP4 header", seconds, cut=cut, has_audio=has_audio)


def _ebml(f: BinaryIO) -> tuple[int, int | None]:
    """The next EBML element's ``(id, size)``; size None where it is unknown (a live stream's)."""
    first = f.read(1)[0]
    length = 8 - first.bit_length() + 1
    if length > 4:
        raise ValueError("not an EBML element ID")
    element_id = int.from_bytes(bytes([first]) + f.read(length - 1), "big")
    first = f.read(1)[0]
    length = 8 - first.bit_length() + 1
    if length > 8:
        raise ValueError("not an EBML size")
    value = int.from_bytes(bytes([first & (0xFF >> length)]) + f.read(length - 1), "big")
    return element_id, None if value == (1 << (7 * length)) - 1 else value


_SEGMENT, _INFO, _CLUSTER, _TIMESCALE, _DURATION = 0x18538067, 0x1549A966, 0x1F43B675, 0x2AD7B1, 0x4489


def _matroska(f: BinaryIO, size: int) -> Declared | None:
    f.seek(0)
    _, header_size = _ebml(f)
    f.seek(header_size, os.SEEK_CUR)
    element_id, segment_size = _ebml(f)
    if element_id != _SEGMENT or segment_size is None:  # a live recording's segment has no size
        return None
    start = f.tell()
    cut = start + segment_size > size
    scale, duration = 1_000_000, None
    at = start
    while at < min(size, start + segment_size) and duration is None:
        f.seek(at)
        element_id, element_size = _ebml(f)
        if element_size is None or element_id == _CLUSTER:
            break
        body = f.tell()
        if element_id == _INFO:
            while f.tell() < body + element_size:
                child, child_size = _ebml(f)
                if child_size is None:
                    break
                value = f.read(child_size)
                if child == _TIMESCALE:
                    scale = int.from_bytes(value, "big")
                elif child == _DURATION:
                    duration = struct.unpack(">f" if child_size == 4 else ">d", value)[0]
        at = body + element_size
    if duration is None:
        return Declared("WebM/Matroska segment", None, cut=True) if cut else None
    return Declared("WebM/Matroska header", duration * scale / 1e9, cut=cut)


def _id3v2_size(head: bytes) -> int:
    if head[:3] != b"ID3" or len(head) < 10:
        return 0
    size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]  # 7 bits a byte
    return 10 + size + (10 if head[5] & 0x10 else 0)  # and a footer when the flag says so


def _trailing_tags(f: BinaryIO, size: int) -> int:
    """Bytes of ID3v1 and APEv2 tags at the end of an MP3, which its Xing byte count leaves out."""
    tags = 0
    if size >= 128:
        f.seek(size - 128)
        if f.read(3) == b"TAG":
            tags = 128
    if size - tags >= 32:
        f.seek(size - tags - 32)
        footer = f.read(32)
        if footer[:8] == b"APETAGEX":
            tag_size, flags = struct.unpack("<I4xI", footer[12:24])
            tags += tag_size + (32 if flags & 0x80000000 else 0)
    return tags


#: sampling rates by MPEG version bits (0: 2.5, 2: 2, 3: 1) and rate index
_MPEG_RATES = {0: (11025, 12000, 8000), 2: (22050, 24000, 16000), 3: (44100, 48000, 32000)}


def _mp3(f: BinaryIO, size: int, start: int) -> Declared | None:
    f.seek(start)
    head = f.read(4096)
    at = next((i for i in range(len(head) - 3) if head[i] == 0xFF and _mpeg(head[i:])), None)
    if at is None:
        return None
    version, layer, rate, mono = _mpeg(head[at:])
    per_frame = 384 if layer == 3 else 1152 if layer == 2 or version == 3 else 576
    side = (17 if mono else 32) if version == 3 else (9 if mono else 17)
    frame = head[at:]
    xing = 4 + side
    frames = declared_bytes = trimmed = None
    if frame[xing : xing + 4] in (b"Xing", b"Info"):
        container = "Xing header"
        flags = struct.unpack(">I", frame[xing + 4 : xing + 8])[0]
        field = xing + 8
        if flags & 1:
            frames = struct.unpack(">I", frame[field : field + 4])[0]
            field += 4
        if flags & 2:
            declared_bytes = struct.unpack(">I", frame[field : field + 4])[0]
            field += 4
        # The LAME tag after the table of contents and quality holds the encoder's delay and padding, which
        # the frame count includes and a gapless decoder drops.
        lame = field + (100 if flags & 4 else 0) + (4 if flags & 8 else 0)
        if frames and frame[lame : lame + 4] in (b"LAME", b"Lavc", b"Lavf") and len(frame) >= lame + 24:
            gaps = int.from_bytes(frame[lame + 21 : lame + 24], "big")
            trimmed = frames * per_frame - (gaps >> 12) - (gaps & 0xFFF)
    elif frame[36:40] == b"VBRI":
        container = "VBRI header"
        declared_bytes, frames = struct.unpack(">II", frame[46:54])
    else:
        return None  # a stream without a Xing or VBRI header declares no length
    seconds = (trimmed if trimmed and trimmed > 0 else frames * per_frame) / rate if frames else None
    if not declared_bytes:
        return Declared(container, seconds) if seconds else None
    present = size - start - at - _trailing_tags(f, size)
    cut = declared_bytes - present > _MP3_BYTES_FUZZ * declared_bytes
    if seconds is None:
        return Declared("MP3 stream", None, cut=True) if cut else None
    return Declared(container, seconds, cut=cut)


def _mpeg(header: bytes) -> tuple[int, int, int, bool] | None:
    """``(version bits, layer bits, sampling rate, mono)`` of an MPEG audio frame header, None if invalid."""
    if len(header) < 4:
        return None
    word = int.from_bytes(header[:4], "big")
    version, layer = (word >> 19) & 3, (word >> 17) & 3
    bitrate, rate_index = (word >> 12) & 15, (word >> 10) & 3
    if word >> 21 != 0x7FF or version == 1 or layer == 0 or bitrate in (0, 15) or rate_index == 3:
        return None
    return version, layer, _MPEG_RATES[version][rate_index], (word >> 6) & 3 == 3
