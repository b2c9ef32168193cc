"""Say what a file is when it cannot be read as audio, so the message names the problem.

A decoder's own error ("File does not exist or is not a regular file (possibly a pipe?)", "System
error.") says nothing useful about a photo or a text file renamed ``.mp3``. The file's first bytes
do: ``filetype`` recognises images, documents, archives, video and audio by their signatures, and
text is told apart by decoding as UTF-8.
"""

from __future__ import annotations

import os

import filetype

#: enough bytes for every signature filetype checks (its own readers look at the first 8 KiB)
_HEAD_BYTES = 8192

_KIND_NAMES = {
    "image": "an image",
    "video": "a video",
    "application": "a document or archive",
    "font": "a font",
}


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
            return f"a {kind.extension.upper()} file", True
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


def undecodable_message(what: str, head: bytes, reason: str) -> str:
    """The message for content the decoders rejected: not audio at all, or audio that is damaged."""
    description, is_audio = describe_content(head)
    if is_audio:
        return f"cannot decode {what}: {description} that is truncated or damaged ({reason})"
    return f"cannot decode {what}: not an audio file ({description})"
