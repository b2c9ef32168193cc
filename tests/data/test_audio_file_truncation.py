"""Truncated files: every format whose container declares its length is refused once read to the end, with
what the header declares and what the file holds; complete files of the same formats, and formats that
declare nothing, are read as they are. Files are cut the way a failed download cuts them: the first half of
a complete file's bytes."""

import io
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from hf_audiorep.data.audio_file import AudioFile, iter_windows, read_head
from hf_audiorep.data.decode import CorruptAudioError, decode_audio
from hf_audiorep.data.formats import describe_content

SECONDS, RATE = 4.0, 16000

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg command")


def _tone() -> np.ndarray:
    t = np.arange(int(SECONDS * RATE)) / RATE
    noise = 0.05 * np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + noise).astype(np.float32)


def _soundfile(**kwargs):
    def write(path):
        buffer = io.BytesIO()
        sf.write(buffer, _tone(), RATE, **kwargs)
        path.write_bytes(buffer.getvalue())

    return write


def _ffmpeg(*options: str):
    def write(path):
        source = path.with_suffix(".source.wav")
        sf.write(source, _tone(), RATE)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(source), *options, str(path)], check=True)
        source.unlink()

    return write


HOLDS = "declares 4.0 s but it holds {held} s"
OGG_CUT = "it breaks off inside its last Ogg page after {held} s"


def _format(name, write, phrase, ffmpeg=False):
    return pytest.param(name, write, phrase, id=name, marks=[needs_ffmpeg] if ffmpeg else [])


#: name, writer, the phrase a half-length copy's error must contain ({held}: the seconds it holds)
FORMATS = [
    _format("wav", _soundfile(format="WAV", subtype="PCM_16"), f"its WAV header {HOLDS}"),
    _format("aiff", _soundfile(format="AIFF"), f"its AIFF header {HOLDS}"),
    _format(
        "flac", _soundfile(format="FLAC"), "its FLAC header declares 4.0 s but only its first {held} s decode"
    ),
    _format("ogg", _soundfile(format="OGG", subtype="VORBIS"), OGG_CUT),
    _format("mp3", _soundfile(format="MP3"), f"its Xing header {HOLDS}"),
    _format("opus", _ffmpeg("-c:a", "libopus"), OGG_CUT, ffmpeg=True),
    _format("webm", _ffmpeg("-c:a", "libopus"), f"its WebM/Matroska header {HOLDS}", ffmpeg=True),
    _format("m4a", _ffmpeg("-c:a", "aac", "-movflags", "+faststart"), f"its MP4 header {HOLDS}", ffmpeg=True),
]


def _ffmpeg_seconds(path) -> float:
    """What the ffmpeg command decodes of ``path``: the audio a cut file really holds."""
    command = ["ffmpeg", "-v", "quiet", "-i", str(path), "-ac", "1", "-ar", str(RATE), "-f", "f32le", "-"]
    return len(subprocess.run(command, capture_output=True).stdout) / 4 / RATE


def _read_all(path) -> float:
    """Read ``path`` to its end as ``hf-audiorep tag`` does (window by window); the seconds read."""
    with AudioFile(path) as audio:
        for _ in iter_windows(audio, 16000, 1.0, 0.5):
            pass
        return audio.frames_read / audio.sample_rate


def _cut(path, tmp_path):
    data = path.read_bytes()
    cut = tmp_path / f"cut_{path.name}"
    cut.write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize(("name", "write", "phrase"), FORMATS)
def test_a_complete_file_is_read_to_its_end(name, write, phrase, tmp_path):
    path = tmp_path / f"clip.{name}"
    write(path)
    assert _read_all(path) == pytest.approx(SECONDS, abs=0.05)  # AAC keeps its priming samples
    assert len(decode_audio(path, RATE)) / RATE == pytest.approx(SECONDS, abs=0.05)
    assert len(decode_audio(path.read_bytes(), RATE)) / RATE == pytest.approx(SECONDS, abs=0.05)
    from hf_audiorep.data.formats import declared_length  # new with the check: imported here

    declared = declared_length(path)
    assert declared is None or not declared.cut


@pytest.mark.parametrize(("name", "write", "phrase"), FORMATS)
def test_a_truncated_file_is_refused_with_what_it_declares_and_holds(name, write, phrase, tmp_path, capfd):
    path = tmp_path / f"clip.{name}"
    write(path)
    cut = _cut(path, tmp_path)
    capfd.readouterr()
    # The file as the CLI reads it (windows, or its head), and as the datasets and the pipeline decode it
    # (decode_audio, from a path or from the bytes a datasets Audio value holds).
    readers = {
        str(cut): (_read_all, lambda p: read_head(p, 16000, 60.0), lambda p: decode_audio(p, 16000)),
        "the audio bytes": (lambda p: decode_audio(p.read_bytes(), 16000),),
    }
    for what, read in ((what, read) for what, reads in readers.items() for read in reads):
        with pytest.raises(CorruptAudioError) as info:
            read(cut)
        message = str(info.value)
        assert message.startswith(f"{what} is truncated"), message
        found = re.search(re.escape(phrase).replace(re.escape("{held}"), r"(\d+\.\d)"), message)
        assert found is not None, message
        # the seconds it names are those a decoder gets out of the cut file, not 0 and not the whole
        if shutil.which("ffmpeg"):
            assert float(found.group(1)) == pytest.approx(_ffmpeg_seconds(cut), abs=0.1), message
        assert 0.5 < float(found.group(1)) < 3.0, message
    # one line from the library, none from a decoder (libmpg123's "Xing stream size off by more than 1%")
    assert capfd.readouterr().err == ""


@needs_ffmpeg
def test_an_mp4_cut_before_its_index_says_nothing_can_be_decoded(tmp_path):
    path = tmp_path / "clip.m4a"
    _ffmpeg("-c:a", "aac")(path)  # ffmpeg writes the index (moov) after the samples
    cut = _cut(path, tmp_path)
    expected = r"is truncated: it breaks off inside its MP4 container, before the index of its samples"
    with pytest.raises(CorruptAudioError, match=expected):
        AudioFile(cut)


def test_only_the_part_that_is_read_must_be_there(tmp_path):
    path = tmp_path / "clip.wav"
    _soundfile(format="WAV")(path)
    cut = _cut(path, tmp_path)
    waveform, _ = read_head(cut, 16000, 1.0)  # the Space's head of a long upload
    assert len(waveform) == 16000
    with AudioFile(cut) as audio:
        assert sum(len(w) for _, w in iter_windows(audio, 16000, 1.0, 1.0, max_seconds=1.5)) > 0


def test_a_header_without_its_samples_is_truncated_not_empty(tmp_path):
    path = tmp_path / "clip.wav"
    _soundfile(format="WAV")(path)
    header_only = tmp_path / "header.wav"
    header_only.write_bytes(path.read_bytes()[:44])
    with pytest.raises(CorruptAudioError, match=r"its WAV header declares 4\.0 s but it holds 0\.0 s"):
        read_head(header_only, 16000, 60.0)


def test_a_flac_cut_deep_in_says_where_the_good_audio_ends(tmp_path):
    # The FLAC decoder fails a whole block at the cut; the samples before it still count.
    buffer = io.BytesIO()
    sf.write(buffer, np.tile(_tone(), 5), RATE, format="FLAC")
    cut = tmp_path / "cut.flac"
    cut.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(CorruptAudioError) as info:
        _read_all(cut)
    found = re.search(r"declares 20\.0 s but only its first (\d+\.\d) s decode", str(info.value))
    assert found is not None, str(info.value)
    assert 9.0 < float(found.group(1)) < 11.0


def test_a_short_difference_is_shown_with_the_digits_that_tell_it(tmp_path):
    path = tmp_path / "clip.wav"
    _soundfile(format="WAV", subtype="PCM_16")(path)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(path.read_bytes()[: -2 * 320])  # 20 ms short
    with pytest.raises(CorruptAudioError, match=r"declares 4\.00 s but it holds 3\.98 s"):
        _read_all(cut)


@needs_ffmpeg
@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("pipe.wav", ["-f", "wav"]),  # written to a pipe: sizes left at 0xFFFFFFFF
        ("noxing.mp3", ["-c:a", "libmp3lame", "-q:a", "4", "-write_xing", "0"]),  # VBR, no length header
        ("tags.mp3", ["-c:a", "libmp3lame", "-write_id3v1", "1", "-metadata", "title=t"]),
    ],
)
def test_files_that_declare_no_length_or_carry_tags_are_read_whole(name, options, tmp_path):
    path = tmp_path / name
    if name == "pipe.wav":
        source = tmp_path / "source.wav"
        sf.write(source, _tone(), RATE)
        with open(path, "wb") as out:
            subprocess.run(
                ["ffmpeg", "-v", "error", "-i", str(source), *options, "-"], stdout=out, check=True
            )
    else:
        _ffmpeg(*options)(path)
    # libsndfile stopped a Xing-less VBR MP3 at a length guessed from its first frame (0.5 s of 4), for the
    # CLI's reader and for decode_audio (datasets' bytes, the pipeline's paths) alike
    assert _read_all(path) == pytest.approx(SECONDS, abs=0.15)
    for source in (path, path.read_bytes()):
        assert len(decode_audio(source, RATE)) / RATE == pytest.approx(SECONDS, abs=0.15)


@needs_ffmpeg
def test_a_video_without_sound_says_it_has_no_audio_stream(tmp_path):
    path = tmp_path / "video.mp4"
    lavfi = ["-f", "lavfi", "-i", "testsrc=size=64x64:rate=10", "-t", "1", "-c:v", "mpeg4"]
    subprocess.run(["ffmpeg", "-v", "error", "-y", *lavfi, str(path)], check=True)
    expected = r"an MP4 container with no audio stream$"
    with pytest.raises(CorruptAudioError, match=f"^cannot decode {re.escape(str(path))}: {expected}"):
        AudioFile(path)
    with pytest.raises(CorruptAudioError, match=expected):
        decode_audio(path.read_bytes(), 16000)  # the index sits in the first bytes of a small file


def test_an_audio_format_is_named_with_its_article():
    assert describe_content(b"ID3\x04\x00\x00\x00\x00\x00\x00" + b"\x00" * 64)[0] == "an MP3 file"
