"""Lhotse cut manifests (hf_audiorep/data/lhotse_cuts.py) value by value: the paths tried for a cut's audio in
their order and the file that wins when several exist, the recording's length against the cut's bounds at
the rounding edges, the fields read from the supervisions, what is counted and said when audio is missing,
the sniffing of a manifest, the text encoding, and the fingerprint of the cached dataset."""

from __future__ import annotations

import builtins
import gzip
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from datasets import Audio, Features, List, Value

from hf_audiorep.data import lhotse_cuts
from hf_audiorep.data.lhotse_cuts import (
    WHOLE_RECORDING_TOLERANCE_S,
    UnsupportedCutError,
    _AudioResolver,
    _fingerprint,
    _scan,
    is_lhotse_cut_manifest,
    load_lhotse_cuts,
)

SR = 16000
LOGGER = "hf_audiorep.data.lhotse_cuts"
TOL = WHOLE_RECORDING_TOLERANCE_S


def _record(cut_id, source="corpus", *, recording_id=None, supervisions=(), **fields):
    """One cut line: a whole 1-s MonoCut of recording ``recording_id`` (the cut id by default), one file
    source on channel 0; ``fields`` replace the cut's own."""
    recording = {
        "id": recording_id or cut_id,
        "sources": [{"type": "file", "channels": [0], "source": source}],
        "sampling_rate": SR,
        "num_samples": SR,
        "duration": 1.0,
        "channel_ids": [0],
    }
    record = {
        "id": cut_id,
        "start": 0.0,
        "duration": 1.0,
        "channel": 0,
        "supervisions": list(supervisions),
        "recording": recording,
        "type": "MonoCut",
    }
    record.update(fields)
    return record


def _write(path: Path, records) -> Path:
    """A manifest of UTF-8 JSON lines with non-ASCII text unescaped (escaped, every manifest is ASCII and its
    encoding goes untested)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _wav(path: Path) -> Path:
    """A 10-ms silent wav file (the reader stores the path; nothing decodes it here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(SR // 100, dtype=np.float32), SR)
    return path


def _placeholder(path: Path) -> Path:
    """A file the resolver only sees by name: a few bytes, whatever its extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0\0\0\0")
    return path


def _audio_paths(data) -> dict[str, str]:
    return {cut_id: audio["path"] for cut_id, audio in zip(data["id"], data["audio"], strict=True)}


# ------------------------------------------------------------------------------------ where audio is found


def test_the_candidate_paths_of_a_source_in_order(tmp_path):
    root = tmp_path / "audio"
    resolver = _AudioResolver(root)

    def candidates(source):
        return list(resolver.candidates(source))

    # a relative path: as given (from the working directory), under the root, then its file name under the
    # root; '#' is part of a file name, not a URL fragment
    assert candidates({"type": "file", "source": "clips/a#1.wav"}) == [
        Path("clips/a#1.wav"),
        root / "clips/a#1.wav",
        root / "a#1.wav",
    ]
    # a source without a type is a file
    assert candidates({"source": "clips/a.wav"}) == [
        Path("clips/a.wav"),
        root / "clips/a.wav",
        root / "a.wav",
    ]
    # an absolute path from another machine: as given, then its file name (never <root>/<absolute path>)
    assert candidates({"type": "file", "source": "/mnt/other/take4.WAV"}) == [
        Path("/mnt/other/take4.WAV"),
        root / "take4.WAV",
    ]
    # a bare corpus name has no audio extension: no file-name candidate (resolve looks the id up instead)
    assert candidates({"type": "file", "source": "audioset"}) == [Path("audioset"), root / "audioset"]
    # a URL is never opened: its path's file name under the root, the query and the folders dropped
    assert candidates({"type": "url", "source": "https://host/clips/a.wav?download=1"}) == [root / "a.wav"]
    assert candidates({"type": "url", "source": "clips/b.flac"}) == [root / "b.flac"]
    assert candidates({"type": "url", "source": "https://host/stream"}) == []
    # other source kinds, and a source that is not a non-empty string: nothing to try
    for source in (
        {"type": "memory", "source": "a.wav"},
        {"type": "command", "source": "sox a.wav -t wav -"},
        {"type": "file", "source": ""},
        {"type": "file", "source": None},
        {"type": "file", "source": 3},
        {"type": "file"},
    ):
        assert candidates(source) == [], source
    # without a root a file source is tried as given only, a URL not at all
    no_root = _AudioResolver(None)
    assert list(no_root.candidates({"type": "file", "source": "clips/a.wav"})) == [Path("clips/a.wav")]
    assert list(no_root.candidates({"type": "url", "source": "https://host/a.wav"})) == []


def test_the_listing_by_stem_keeps_audio_files_in_the_preferred_order(tmp_path):
    for name in (
        "r.m4a",
        "r.ogg",
        "r.aiff",
        "r.mp3",
        "r.WAV",
        "r.opus",
        "r.flac",
        "r.txt",
        "s.mp3",
        "notes.json",
    ):
        _placeholder(tmp_path / name)
    (tmp_path / "t.wav").mkdir()  # a folder named like audio is not a file
    resolver = _AudioResolver(tmp_path)
    # lossless first, then the common lossy formats, then the rest; the extension's case is ignored
    assert resolver._by_stem(tmp_path) == {
        "r": ["r.flac", "r.WAV", "r.mp3", "r.ogg", "r.opus", "r.m4a", "r.aiff"],
        "s": ["s.mp3"],
    }
    assert resolver._by_stem(tmp_path / "missing") == {}
    assert resolver._by_stem(tmp_path / "r.flac") == {}  # a file, not a folder


def test_which_file_wins_when_several_exist(tmp_path, caplog):
    root = tmp_path / "audio"
    files = {
        # a relative source path beats its file name and the recording id under the root
        "a": [root / "clips" / "a.wav", root / "a.wav"],
        # a path from another machine: its file name beats the recording id
        "b": [root / "b_take.wav", root / "b.flac"],
        # a bare corpus name: its folder beats the root, even against a preferred extension at the root
        "c": [root / "audioset" / "c.wav", root / "c.flac"],
        # the corpus name written as a folder ('/audioset/') is the same folder
        "d": [root / "audioset" / "d.wav"],
        # a relative folder path is no corpus name: the recording id is looked up at the root only
        "e": [root / "e.wav", root / "XC" / "birds" / "e.wav"],
        # a corpus folder whose name starts with X (xeno-canto) is found by its full name
        "f": [root / "XC" / "f.wav"],
        # no source at all: the recording id at the root
        "g": [root / "g.wav"],
        # two extensions at the root: wav before mp3
        "h": [root / "h.wav", root / "h.mp3"],
        # the lookup is by the recording's id, not the cut's
        "rec-j": [root / "rec-j.wav"],
    }
    for paths in files.values():
        for path in paths:
            _wav(path) if path.suffix == ".wav" else _placeholder(path)
    records = [
        _record("a", "clips/a.wav"),
        _record("b", "/mnt/other/machine/b_take.wav"),
        _record("c", "audioset"),
        _record("d", "/audioset/"),
        _record("e", "XC/birds"),
        _record("f", "XC"),
        _record("g", None),
        _record("h", "freesound"),
        _record("j-0", "freesound", recording_id="rec-j"),
    ]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = load_lhotse_cuts(_write(tmp_path / "cuts.jsonl", records), root)
    assert caplog.records == []
    assert _audio_paths(data) == {
        "a": str(root / "clips" / "a.wav"),
        "b": str(root / "b_take.wav"),
        "c": str(root / "audioset" / "c.wav"),
        "d": str(root / "audioset" / "d.wav"),
        "e": str(root / "e.wav"),
        "f": str(root / "XC" / "f.wav"),
        "g": str(root / "g.wav"),
        "h": str(root / "h.wav"),
        "j-0": str(root / "rec-j.wav"),
    }
    # the audio column holds paths, decoded later by decode.decode_audio
    assert data.features == Features(
        {"id": Value("string"), "duration": Value("float64"), "audio": Audio(decode=False)}
    )


def test_the_source_holding_the_cut_channel(tmp_path, caplog):
    for name in ("left", "right", "first", "second", "stereo"):
        _wav(tmp_path / f"{name}.wav")
    left, right = (
        {"type": "file", "channels": [0], "source": "left.wav"},
        {"type": "file", "channels": [1], "source": "right.wav"},
    )
    no_channel = _record("no-channel")  # a cut naming no channel reads channel 0
    del no_channel["channel"]
    no_channel["recording"]["sources"] = [right, left]
    multi = _record("multi", channel=[1], type="MultiCut")
    multi["recording"]["sources"] = [left, right]
    unheld = _record("unheld")  # no source holds channel 0: the first source
    unheld["recording"]["sources"] = [
        {"type": "file", "channels": [5], "source": "first.wav"},
        {"type": "file", "channels": [6], "source": "second.wav"},
    ]
    both = _record("both", "stereo.wav", channel=[0, 1], type="MultiCut")  # every channel: not a subset
    both["recording"]["sources"][0]["channels"] = [0, 1]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        data = load_lhotse_cuts(_write(tmp_path / "c.jsonl", [no_channel, multi, unheld, both]), tmp_path)
    assert _audio_paths(data) == {
        "no-channel": str(tmp_path / "left.wav"),
        "multi": str(tmp_path / "right.wav"),
        "unheld": str(tmp_path / "first.wav"),
        "both": str(tmp_path / "stereo.wav"),
    }
    assert caplog.records == []


# --------------------------------------------------------------------------- what is counted and said


def test_cuts_of_some_channels_are_counted_exactly(tmp_path, caplog):
    _wav(tmp_path / "st1.wav")
    _wav(tmp_path / "st2.wav")
    _wav(tmp_path / "mono.wav")
    listed = _record("listed", "st1.wav")
    listed["recording"]["sources"][0]["channels"] = [0, 1]
    by_recording = _record("by-recording", "st2.wav")  # the source names no channels: the recording's
    del by_recording["recording"]["sources"][0]["channels"]
    by_recording["recording"]["channel_ids"] = [0, 1]
    manifest = _write(tmp_path / "ch.jsonl", [listed, _record("mono", "mono.wav"), by_recording])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert load_lhotse_cuts(manifest, tmp_path)["id"] == ["listed", "mono", "by-recording"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{manifest}: 2 cuts select some channels of a multi-channel file; the decoder averages all of them"
    ]


def test_dropped_cuts_are_counted_with_three_examples(tmp_path, caplog):
    root = tmp_path / "audio"
    _wav(root / "audioset" / "rec-ok.wav")
    records = [_record("ok", "audioset", recording_id="rec-ok")] + [
        _record(f"m{i}", "audioset", recording_id=f"rec-m{i}") for i in range(1, 6)
    ]
    manifest = _write(tmp_path / "cuts.jsonl", records)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert load_lhotse_cuts(manifest, root)["id"] == ["ok"]
    examples = "; ".join(f"m{i} (recording 'rec-m{i}', source 'audioset')" for i in (1, 2, 3))
    assert [r.getMessage() for r in caplog.records] == [
        f"{manifest}: 5 of 6 cuts dropped, their audio not found with audio_root {root} (e.g. {examples})"
    ]


def test_no_audio_at_all_is_an_error_naming_the_manifests_the_root_and_the_lookup(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    first = _write(tmp_path / "a.jsonl", [_record("a", "audioset")])
    second = _write(tmp_path / "b.jsonl", [_record("b", "clips/b.wav")])
    examples = "a (recording 'a', source 'audioset'); b (recording 'b', source 'clips/b.wav')"
    lookup = (
        "files are looked up as <audio_root>/<source>, <audio_root>/<source file name>, "
        "<audio_root>/<source>/<recording id>.<ext> and <audio_root>/<recording id>.<ext>"
    )
    message = f"2 manifests ({first}, ...): no audio found for any of its 2 cuts with audio_root {root} "
    with pytest.raises(FileNotFoundError, match=re.escape(f"{message}(e.g. {examples}); {lookup}") + "$"):
        load_lhotse_cuts([first, second], root)
    hint = "pass audio_root (--audio_root), the folder holding the audio"
    message = f"{first}: no audio found for any of its 1 cuts with no audio_root "
    example = "a (recording 'a', source 'audioset')"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{message}(e.g. {example}); {hint}") + "$"):
        load_lhotse_cuts(first)


def test_the_manifests_given_are_checked_first(tmp_path):
    with pytest.raises(ValueError, match="^no Lhotse cut manifest given$"):
        load_lhotse_cuts([])
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError, match=re.escape(f"no such cut manifest: {missing}")):
        load_lhotse_cuts(missing)


# ------------------------------------------------------------------ the recording's length against the cut


def test_cuts_within_the_rounding_of_their_recording_are_read(tmp_path):
    for cut_id in ("exact", "late-start", "short", "longer", "by-samples"):
        _wav(tmp_path / f"{cut_id}.wav")
    by_samples = _record("by-samples")  # 16000 samples at 16 kHz: 1 s
    del by_samples["recording"]["duration"]
    records = [
        _record("exact"),
        _record("late-start", start=TOL, duration=1.0 - TOL),  # starts exactly at the tolerance
        _record("short", duration=1.0 - TOL),  # ends exactly at the tolerance before the recording's end
        _record("longer", duration=1.5),  # past the recording's end: the whole recording all the same
        by_samples,
    ]
    data = load_lhotse_cuts(_write(tmp_path / "w.jsonl", records), tmp_path)
    assert data["id"] == ["exact", "late-start", "short", "longer", "by-samples"]
    assert data["duration"] == [1.0, 1.0 - TOL, 1.0 - TOL, 1.5, 1.0]


def _recording_without(*keys, **values):
    recording = _record("x")["recording"]
    for key in keys:
        del recording[key]
    recording.update(values)
    return recording


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"start": math.nextafter(TOL, 1.0)}, "is 0.01-1.01 s of a recording 1 s"),
        ({"duration": math.nextafter(1.0 - TOL, 0.0)}, "is 0-0.99 s of a recording 1 s"),
        # the recording's length: its duration, else its samples over its rate, else unknown
        (
            {"recording": _recording_without("num_samples", "sampling_rate", duration=2.0)},
            "is 0-1 s of a recording 2 s",
        ),
        ({"recording": _recording_without("duration", num_samples=2 * SR)}, "is 0-1 s of a recording 2 s"),
        (
            {"start": 0.5, "recording": _recording_without("duration", "sampling_rate")},
            "is 0.5-1.5 s of a recording of unknown length",
        ),
        ({"recording": None}, "has no recording (a features-only cut)"),
        (
            {"recording": _recording_without(transforms=[{"kwargs": {"factor": 1.1}}])},
            "has recording transforms ['?'], which the decoder does not apply",
        ),
        ({"type": "PaddingCut"}, "is a PaddingCut, not one recording"),
    ],
)
def test_cuts_the_decoder_cannot_produce_and_why(tmp_path, fields, reason):
    _wav(tmp_path / "x.wav")
    manifest = _write(tmp_path / "p.jsonl", [_record("x", **fields)])
    advice = (
        "the decoder reads whole files, so write one audio file per cut first (Lhotse: CutSet.save_audios) "
        "and read that manifest"
    )
    expected = f"{manifest}, line 1: cut 'x' {reason}; {advice}"
    with pytest.raises(UnsupportedCutError, match="^" + re.escape(expected) + "$"):
        load_lhotse_cuts(manifest, tmp_path)


def test_a_cut_without_a_type_is_a_mono_cut(tmp_path):
    _wav(tmp_path / "x.wav")
    untyped = _record("x")
    del untyped["type"]
    assert load_lhotse_cuts(_write(tmp_path / "u.jsonl", [untyped]), tmp_path)["id"] == ["x"]


# ---------------------------------------------------------------------------- fields of the supervisions


def _supervision(custom=None, **fields):
    return {
        "id": "s",
        "start": 0.0,
        "duration": 1.0,
        "channel": 0,
        **fields,
        **({"custom": custom} if custom else {}),
    }


def test_caption_and_tags_from_the_supervisions(tmp_path):
    no_duration = _record("bare")
    del no_duration["duration"], no_duration["supervisions"]
    records = [
        no_duration,  # no supervisions, no custom: neither field, no duration (0 s)
        _record(
            "two",
            supervisions=[
                _supervision({"caption": "A dog barks.", "audio_tag": "Dog; bark;;"}),
                _supervision({"caption": "A cat.", "audio_tag": "cat"}),  # only the first is read
            ],
        ),
        _record("on-cut", custom={"caption": "From the cut."}, duration=2.5),  # no supervisions
        _record(
            "layers",
            supervisions=[_supervision({"caption": None}, caption="On the supervision.", audio_tag=["Rain"])],
            custom={"caption": "From the cut.", "audio_tag": "cut"},
        ),
        _record(
            "odd", supervisions=[_supervision({"caption": 42, "audio_tag": ["Rain", " ROOF ", "rain", ""]})]
        ),
        _record("joined", supervisions=[_supervision({"caption": ["Rain falls.", "", "On a roof."]})]),
        _record("last"),  # the last cut has neither: the columns stay
    ]
    data = load_lhotse_cuts(_write(tmp_path / "f.jsonl.gz", records), require_audio=False)
    assert data.features == Features(
        {
            "id": Value("string"),
            "duration": Value("float64"),
            "caption": Value("string"),
            "tags": List(Value("string")),
        }
    )
    assert data["id"] == ["bare", "two", "on-cut", "layers", "odd", "joined", "last"]
    assert data["duration"] == [0.0, 1.0, 2.5, 1.0, 1.0, 1.0, 1.0]
    assert data["caption"] == [
        None,
        "A dog barks.",
        "From the cut.",
        "On the supervision.",
        "42",
        "Rain falls. On a roof.",
        None,
    ]
    assert data["tags"] == [[], ["dog", "bark"], [], ["rain"], ["rain", "roof"], [], []]


def test_named_fields_are_read_and_the_default_ones_ignored(tmp_path):
    custom = {"summary": "A bell rings.", "caption": "ignored", "audio_tag": "ignored"}
    records = [_record("a", supervisions=[_supervision(custom)]), _record("b")]
    data = load_lhotse_cuts(
        _write(tmp_path / "n.jsonl", records),
        require_audio=False,
        caption_field="summary",
        tag_field="labels",
    )
    assert data.column_names == ["id", "duration", "caption"]  # no cut has 'labels': no tags column
    assert data["caption"] == ["A bell rings.", None]


# ----------------------------------------------------------------------------------- lines and encoding


def test_blank_lines_and_line_numbers(tmp_path):
    a, b = (json.dumps(_record(i)) for i in ("a", "b"))
    plain = tmp_path / "blank.jsonl"
    plain.write_text(f"{a}\n\n   \n{b}")  # blank lines inside, no newline at the end
    assert load_lhotse_cuts(plain, require_audio=False)["id"] == ["a", "b"]
    packed = tmp_path / "blank.jsonl.gz"
    packed.write_bytes(gzip.compress(f"\n{a}\n{b}\n\n".encode()))
    assert load_lhotse_cuts(packed, require_audio=False)["id"] == ["a", "b"]
    # line numbers count the blank lines
    bad = tmp_path / "bad.jsonl"
    bad.write_text(f"{a}\n\n{{not json\n")
    with pytest.raises(ValueError, match="^" + re.escape(f"{bad}, line 3: not JSON (Expecting")):
        load_lhotse_cuts(bad, require_audio=False)
    bad.write_text(f"{a}\n[1, 2]\n")
    with pytest.raises(ValueError, match="^" + re.escape(f"{bad}, line 2: not a cut (a JSON list)") + "$"):
        load_lhotse_cuts(bad, require_audio=False)


def test_manifests_are_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """On a machine whose locale is not UTF-8 (Windows' cp1252, a Latin-1 locale), a text file opened
    without an encoding is read in that locale's encoding: simulated by defaulting ``open`` and
    ``gzip.open`` to Latin-1, which turns UTF-8 captions into mojibake."""
    real_open, real_gzip_open = builtins.open, gzip.open

    def latin1_open(file, mode="r", *args, encoding=None, **kwargs):
        if "b" not in mode and encoding is None:
            encoding = "latin-1"
        return real_open(file, mode, *args, encoding=encoding, **kwargs)

    def latin1_gzip_open(filename, mode="rb", *args, encoding=None, **kwargs):
        if "t" in mode and encoding is None:
            encoding = "latin-1"
        return real_gzip_open(filename, mode, *args, encoding=encoding, **kwargs)

    caption = "Un café, 犬が吠える"
    record = _record("x", supervisions=[_supervision({"caption": caption})])
    manifests = [_write(tmp_path / name, [record]) for name in ("u.jsonl", "u.jsonl.gz")]
    monkeypatch.setattr(lhotse_cuts, "open", latin1_open, raising=False)
    monkeypatch.setattr(gzip, "open", latin1_gzip_open)
    for manifest in manifests:
        assert load_lhotse_cuts(manifest, require_audio=False)["caption"] == [caption]


# -------------------------------------------------------------------------------- sniffing a manifest


def test_what_is_sniffed_as_a_cut_manifest(tmp_path):
    cut_line = _record("x")
    untyped = {"recording": cut_line["recording"], "supervisions": []}  # older cuts write no type
    yes = {
        "cuts.jsonl": [cut_line],
        "untyped.jsonl": [untyped],
        "padding.jsonl": [{"id": "p", "type": "PaddingCut"}],
        "cuts.jsonl.gz": [cut_line],
        "gzip-named-plain.jsonl": [cut_line],  # gzip by its magic bytes, not its name
    }
    for name, records in yes.items():
        path = _write(tmp_path / name, records)
        if name == "gzip-named-plain.jsonl":
            path.write_bytes(gzip.compress(path.read_bytes()))
        assert is_lhotse_cut_manifest(path), name
    (tmp_path / "leading-blanks.jsonl").write_text("\n  \n" + json.dumps(cut_line) + "\n")
    assert is_lhotse_cut_manifest(tmp_path / "leading-blanks.jsonl")
    no = {
        "recording-only.jsonl": [{"recording": cut_line["recording"]}],
        "recordings.jsonl": [cut_line["recording"]],  # a Lhotse recording manifest
        "typed-other.jsonl": [{"type": "Recording", "recording": {}}],
        "list.jsonl": [[cut_line]],  # a JSON array holding a cut is not a cut line
        "string.jsonl": ["MonoCut"],
    }
    for name, records in no.items():
        assert not is_lhotse_cut_manifest(_write(tmp_path / name, records)), name
    (tmp_path / "folder.jsonl").mkdir()
    assert not is_lhotse_cut_manifest(tmp_path / "folder.jsonl")
    pq.write_table(pa.table({"recording": ["r"], "supervisions": ["s"]}), tmp_path / "cuts.parquet")
    assert not is_lhotse_cut_manifest(tmp_path / "cuts.parquet")
    (tmp_path / "truncated.jsonl.gz").write_bytes(gzip.compress(json.dumps(cut_line).encode())[:12])
    assert not is_lhotse_cut_manifest(tmp_path / "truncated.jsonl.gz")


# --------------------------------------------------------------------------------------- the fingerprint


def test_the_fingerprint_follows_the_manifest_the_root_and_the_options(tmp_path):
    roots = tmp_path / "one", tmp_path / "two"
    for root in roots:
        _wav(root / "x.wav")
    manifest = _write(
        tmp_path / "c.jsonl", [_record("x", supervisions=[_supervision({"caption": "A dog."})])]
    )

    def fingerprint(root, *options):
        return _fingerprint(
            [manifest], _scan([manifest], _AudioResolver(root), "caption", "audio_tag"), *options
        )

    first = fingerprint(roots[0], True)
    assert fingerprint(roots[0], True) == first  # the same inputs: the same cache
    assert fingerprint(roots[1], True) != first  # other audio files
    assert fingerprint(roots[0], False) != first  # other options
    _write(manifest, [_record("x", supervisions=[_supervision({"caption": "A cat."})])])
    assert fingerprint(roots[0], True) != first  # other bytes


def test_the_cached_dataset_is_rebuilt_when_its_inputs_change(tmp_path):
    roots = tmp_path / "one", tmp_path / "two"
    for root in roots:
        _wav(root / "x.wav")
    custom = {"caption": "A dog barks.", "summary": "Barking."}
    manifest = _write(tmp_path / "c.jsonl", [_record("x", supervisions=[_supervision(custom)])])
    cache = tmp_path / "cache"
    first = load_lhotse_cuts(manifest, roots[0], cache_dir=str(cache))
    assert first["caption"] == ["A dog barks."]
    assert all(Path(f["filename"]).is_relative_to(cache) for f in first.cache_files) and first.cache_files
    # the same inputs: the same Arrow file
    assert load_lhotse_cuts(manifest, roots[0], cache_dir=str(cache)).cache_files == first.cache_files
    other_root = load_lhotse_cuts(manifest, roots[1], cache_dir=str(cache))
    assert _audio_paths(other_root) == {"x": str(roots[1] / "x.wav")}
    other_field = load_lhotse_cuts(manifest, roots[0], caption_field="summary", cache_dir=str(cache))
    assert other_field["caption"] == ["Barking."]
    _write(manifest, [_record("x", supervisions=[_supervision({"caption": "A cat meows loudly."})])])
    assert load_lhotse_cuts(manifest, roots[0], cache_dir=str(cache))["caption"] == ["A cat meows loudly."]
