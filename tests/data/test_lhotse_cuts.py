"""Lhotse cut manifests (Auden's UTS layout) read with a local audio root: the fields, where each cut's audio
is found, cuts without audio dropped and counted, the cuts the decoder cannot produce, splits, build-tags."""

import gzip
import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf

from hf_audiorep.cli import main as cli_main
from hf_audiorep.data.arguments import DataArguments, load_sources
from hf_audiorep.data.decode import decode_audio
from hf_audiorep.data.lhotse_cuts import UnsupportedCutError, is_lhotse_cut_manifest, load_lhotse_cuts
from hf_audiorep.data.sources import SplitNotFoundError, load_audio_source

SR = 16000


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def cut(
    cut_id,
    source,
    caption=None,
    tags=None,
    *,
    start=0.0,
    duration=1.0,
    recording_duration=1.0,
    where="custom",
    source_type="file",
    cut_type="MonoCut",
    transforms=None,
):
    """One line of a cut manifest as ``MonoCut.to_dict`` writes it (the UTS README's example)."""
    fields = {k: v for k, v in {"caption": caption, "audio_tag": tags}.items() if v is not None}
    supervision = {
        "id": cut_id,
        "recording_id": cut_id,
        "start": 0.0,
        "duration": duration,
        "channel": 0,
        **({"custom": fields} if where == "custom" else fields if where == "supervision" else {}),
    }
    recording = {
        "id": cut_id,
        "sources": [{"type": source_type, "channels": [0], "source": source}],
        "sampling_rate": SR,
        "num_samples": int(recording_duration * SR),
        "duration": recording_duration,
        "channel_ids": [0],
    }
    if transforms:
        recording["transforms"] = transforms
    record = {
        "id": cut_id,
        "start": start,
        "duration": duration,
        "channel": 0,
        "supervisions": [supervision],
        "recording": recording,
        "type": cut_type,
    }
    if where == "cut":
        record["custom"] = fields
    return record


def write_manifest(path, cuts):
    text = "".join(json.dumps(c) + "\n" for c in cuts)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
def corpus(tmp_path):
    """Six cuts, one per resolution rule, and one whose audio is nowhere: ``(manifest, root, expected)``
    with ``expected`` the file each found cut must resolve to."""
    root, elsewhere = tmp_path / "audio", tmp_path / "elsewhere"
    files = {
        "c1": root / "audioset" / "c1.wav",  # a bare corpus name: <root>/<source>/<id>.<ext>
        "c2": root / "c2.flac",  # <root>/<id>.<ext>
        "c3": root / "clips" / "c3.wav",  # a relative source path: <root>/<source>
        "c4": root / "take4.wav",  # a path from another machine: <root>/<file name> (not the recording id)
        "c6": elsewhere / "c6.wav",  # a file that exists: as it is
    }
    for k, path in enumerate(files.values()):
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, _tone(220.0 * (k + 1)), SR)
    cuts = [
        cut("c1", "audioset", "A dog barks in a park.", "  Dog ;bark;; Outdoor "),
        cut("c2", "freesound", ["Rain on a roof.", "Rain falls."], ["Rain", " ROOF "], where="supervision"),
        cut("c3", "clips/c3.wav", "A man speaks.", "speech;male", where="cut"),
        cut("c4", "/mnt/other/machine/take4.wav", "A guitar plays.", "music;guitar"),
        cut("c5", "audioset", "A bell rings.", "bell"),  # no audio anywhere
        cut("c6", str(files["c6"]), "A dog barks.", "dog;bark"),
    ]
    manifest = write_manifest(tmp_path / "cuts_train.jsonl", cuts)
    return manifest, root, {k: os.path.abspath(p) for k, p in files.items()}


def test_the_manifest_is_recognised_by_its_first_line(tmp_path, corpus):
    manifest, _, _ = corpus
    assert is_lhotse_cut_manifest(manifest)
    assert is_lhotse_cut_manifest(write_manifest(tmp_path / "a.jsonl.gz", [cut("x", "s")]))
    assert is_lhotse_cut_manifest(write_manifest(tmp_path / "typed.jsonl", [{"id": "x", "type": "MonoCut"}]))
    assert not is_lhotse_cut_manifest(write_manifest(tmp_path / "clips.jsonl", [{"caption": "a dog"}]))
    # supervisions alone (build-tags' nested manifests) are not a cut manifest
    assert not is_lhotse_cut_manifest(write_manifest(tmp_path / "n.jsonl", [{"supervisions": []}]))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "noise.jsonl").write_bytes(bytes(range(256)) * 4)
    assert not is_lhotse_cut_manifest(tmp_path / "empty.jsonl")
    assert not is_lhotse_cut_manifest(tmp_path / "noise.jsonl")
    assert not is_lhotse_cut_manifest(tmp_path / "missing.jsonl")


def test_fields_and_audio_of_every_cut_missing_audio_dropped_and_counted(corpus, caplog):
    manifest, root, expected = corpus
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.lhotse_cuts"):
        data = load_lhotse_cuts(manifest, root)
    assert data["id"] == ["c1", "c2", "c3", "c4", "c6"]
    assert [a["path"] for a in data["audio"]] == [expected[i] for i in data["id"]]
    assert data["tags"] == [
        ["dog", "bark", "outdoor"],
        ["rain", "roof"],
        ["speech", "male"],
        ["music", "guitar"],
        ["dog", "bark"],
    ]
    assert data["caption"][:2] == ["A dog barks in a park.", "Rain on a roof. Rain falls."]
    assert data["duration"] == [1.0] * 5
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "1 of 6 cuts dropped" in warnings[0] and "c5" in warnings[0]
    # the stream decodes the resolved files: c2 is the second tone written
    assert np.allclose(decode_audio(data[1]["audio"], SR), _tone(440.0), atol=1e-3)


def test_a_gzipped_manifest_and_several_manifests(tmp_path, corpus):
    manifest, root, _ = corpus
    cuts = [json.loads(line) for line in manifest.read_text().splitlines()]
    gz = write_manifest(tmp_path / "more.jsonl.gz", cuts[:2])
    assert load_lhotse_cuts(gz, root)["id"] == ["c1", "c2"]
    assert load_lhotse_cuts([manifest, gz], root)["id"] == ["c1", "c2", "c3", "c4", "c6", "c1", "c2"]


def test_a_preferred_extension_and_the_source_holding_the_channel(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    sf.write(root / "r.wav", _tone(300.0), SR)
    sf.write(root / "r.flac", _tone(600.0), SR)
    assert load_lhotse_cuts(write_manifest(tmp_path / "a.jsonl", [cut("r", "x")]), root)[0]["audio"][
        "path"
    ].endswith("r.flac")
    # one file per channel (a Lhotse layout): channel 1's cut reads channel 1's file
    for name in ("left.wav", "right.wav"):
        sf.write(root / name, _tone(300.0), SR)
    two = cut("r", "left.wav")
    two["channel"] = 1
    two["recording"]["sources"] = [
        {"type": "file", "channels": [0], "source": "left.wav"},
        {"type": "file", "channels": [1], "source": "right.wav"},
    ]
    data = load_lhotse_cuts(write_manifest(tmp_path / "b.jsonl", [two]), root)
    assert data[0]["audio"]["path"].endswith("right.wav")


def test_a_channel_of_a_stereo_file_is_kept_and_counted(tmp_path, caplog):
    sf.write(tmp_path / "st.wav", np.stack([_tone(300.0), _tone(600.0)], axis=1), SR)
    stereo = cut("st", str(tmp_path / "st.wav"))
    stereo["recording"]["sources"][0]["channels"] = [0, 1]
    with caplog.at_level(logging.WARNING, logger="hf_audiorep.data.lhotse_cuts"):
        data = load_lhotse_cuts(write_manifest(tmp_path / "s.jsonl", [stereo]))
    assert data["id"] == ["st"]
    assert "1 cuts select some channels of a multi-channel file" in caplog.text


def test_no_audio_found_is_an_error_naming_the_manifest_and_root(tmp_path, corpus):
    manifest, root, _ = corpus
    empty = tmp_path / "empty-root"
    empty.mkdir()
    cuts = [json.loads(line) for line in manifest.read_text().splitlines()]
    no_file = write_manifest(tmp_path / "no_file.jsonl", cuts[:5])  # c6's source is a file that exists
    with pytest.raises(FileNotFoundError, match=f"{no_file}: no audio found for any of its 5 cuts.*{empty}"):
        load_lhotse_cuts(no_file, empty)
    # without a root, only c6 (an existing file) is found; a manifest of corpus names says to pass one
    assert load_lhotse_cuts(manifest)["id"] == ["c6"]
    names_only = write_manifest(tmp_path / "names.jsonl", [cut("c1", "audioset"), cut("c2", "freesound")])
    with pytest.raises(FileNotFoundError, match=r"no audio_root .*pass audio_root \(--audio_root\)"):
        load_lhotse_cuts(names_only)
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        load_lhotse_cuts(manifest, tmp_path / "nowhere")
    (tmp_path / "blank.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no cuts"):
        load_lhotse_cuts(tmp_path / "blank.jsonl", root)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"start": 0.5, "duration": 0.5}, "is 0.5-1 s of a recording 1 s"),
        ({"duration": 0.5}, "is 0-0.5 s of a recording 1 s"),
        (
            {"transforms": [{"name": "Speed", "kwargs": {"factor": 1.1}}]},
            r"has recording transforms \['Speed'\]",
        ),
        ({"cut_type": "MixedCut"}, "is a MixedCut"),
    ],
)
def test_cuts_the_decoder_cannot_produce_are_errors_naming_them(tmp_path, changes, message):
    sf.write(tmp_path / "p.wav", _tone(300.0), SR)
    manifest = write_manifest(tmp_path / "p.jsonl", [cut("whole", "p.wav"), cut("part", "p.wav", **changes)])
    with pytest.raises(UnsupportedCutError, match=f"p.jsonl, line 2: cut 'part' {message}.*save_audios"):
        load_lhotse_cuts(manifest, tmp_path)
    # without audio (captions only) the same cut is read
    assert load_lhotse_cuts(manifest, require_audio=False)["id"] == ["whole", "part"]


def test_a_whole_cut_within_rounding_and_a_resampled_recording_are_read(tmp_path):
    sf.write(tmp_path / "p.wav", _tone(300.0), SR)
    cuts = [
        cut("rounded", "p.wav", duration=0.995),
        cut(
            "resampled", "p.wav", transforms=[{"name": "Resample", "kwargs": {"source_sampling_rate": 8000}}]
        ),
    ]
    assert load_lhotse_cuts(write_manifest(tmp_path / "p.jsonl", cuts), tmp_path)["id"] == [
        "rounded",
        "resampled",
    ]


def test_text_only_keeps_every_cut_without_an_audio_column(corpus):
    manifest, _, _ = corpus
    data = load_lhotse_cuts(manifest, require_audio=False)
    assert data["id"] == ["c1", "c2", "c3", "c4", "c5", "c6"] and "audio" not in data.column_names
    assert data["tags"][4] == ["bell"]


def test_columns_absent_from_every_cut_are_left_out(tmp_path):
    sf.write(tmp_path / "p.wav", _tone(300.0), SR)
    data = load_lhotse_cuts(write_manifest(tmp_path / "p.jsonl", [cut("a", "p.wav", tags="x;y")]), tmp_path)
    assert data.column_names == ["id", "duration", "audio", "tags"]


def test_a_source_of_the_manifest_its_tags_the_label_column(corpus):
    manifest, root, _ = corpus
    source = load_audio_source(str(manifest), audio_root=root)
    assert source.layout == "lhotse-cuts" and source.audio_column == "audio" and source.label_column == "tags"
    assert set(source.label_names) == {
        "dog",
        "bark",
        "outdoor",
        "rain",
        "roof",
        "speech",
        "male",
        "music",
        "guitar",
    }
    assert source.label_to_index(["dog", "bark"]) == sorted(
        [source.label_names.index("dog"), source.label_names.index("bark")]
    )
    with pytest.raises(ValueError, match="audio_root is read for Lhotse cut manifests only"):
        load_audio_source(str(root), audio_root=root)


def _split_manifests(folder, root, names):
    folder.mkdir(exist_ok=True)
    for name, ids in names.items():
        write_manifest(folder / name, [cut(i, "audioset", "A dog barks.", "dog") for i in ids])


@pytest.fixture
def split_root(tmp_path):
    root = tmp_path / "audio" / "audioset"
    root.mkdir(parents=True)
    for i in ("a", "b", "c", "d"):
        sf.write(root / f"{i}.wav", _tone(300.0), SR)
    return tmp_path / "audio"


def test_one_manifest_is_the_train_split(corpus):
    manifest, root, _ = corpus
    with pytest.raises(SplitNotFoundError, match="is the train split only"):
        load_audio_source(str(manifest), split="test", audio_root=root)
    data = DataArguments(dataset=str(manifest), audio_root=str(root), test_split="", eval_split="none")
    assert set(load_sources(data)) == {"train"}
    # the default eval split ('auto') is skipped when missing; an asked-for test split is an error with a hint
    assert set(load_sources(DataArguments(dataset=str(manifest), audio_root=str(root), test_split=""))) == {
        "train"
    }
    with pytest.raises(SplitNotFoundError, match="--test_split none skips it"):
        load_sources(DataArguments(dataset=str(manifest), audio_root=str(root)))


def test_a_folder_and_a_split_placeholder_give_one_manifest_per_split(tmp_path, split_root):
    folder = tmp_path / "uts"
    _split_manifests(
        folder, split_root, {"uts_train.jsonl.gz": "abc", "uts_dev.jsonl": "d", "notes.jsonl": ""}
    )
    (folder / "notes.jsonl").write_text('{"note": "not a cut"}\n')
    sources = load_sources(DataArguments(dataset=str(folder), audio_root=str(split_root), test_split=""))
    assert sources["train"].dataset["id"] == ["a", "b", "c"]
    assert sources["eval"].dataset["id"] == ["d"]  # 'dev' names the validation split
    with pytest.raises(SplitNotFoundError, match="no cut manifest of split 'test'"):
        load_audio_source(str(folder), split="test", audio_root=split_root)
    template = str(folder / "uts_{split}.jsonl.gz")
    assert load_audio_source(template, audio_root=split_root).dataset["id"] == ["a", "b", "c"]
    with pytest.raises(SplitNotFoundError, match="no cut manifest of split 'test'"):
        load_audio_source(template, split="test", audio_root=split_root)
    # manifests that name no split are all the train split
    flat = tmp_path / "flat"
    _split_manifests(flat, split_root, {"part1.jsonl": "ab", "part2.jsonl": "c"})
    assert load_audio_source(str(flat), audio_root=split_root).dataset["id"] == ["a", "b", "c"]
    glob = str(flat / "part*.jsonl")
    assert load_audio_source(glob, audio_root=split_root).dataset["id"] == ["a", "b", "c"]


def test_build_tags_reads_captions_without_audio_and_drops_nothing(tmp_path, corpus):
    manifest, root, _ = corpus
    out = tmp_path / "out"
    argv = ["build-tags", "--dataset", str(manifest), "--tags_column", "tags", "--k", "2"]
    assert cli_main([*argv, "--output_dir", str(out)]) == 0
    result = json.loads((out / "summary.json").read_text())["results"]["2"]
    assert result["num_clips"] == 6  # c5, whose audio is missing, too
    assert json.loads((out / "label_2.json").read_text()) == {"0": "bark", "1": "dog"}
    with pytest.raises(SystemExit, match="--audio_root is read for Lhotse cut manifests only"):
        cli_main(["build-tags", "--dataset", str(root), "--audio_root", str(root), "--output_dir", str(out)])


def test_a_captioner_reads_the_manifest_with_its_audio(corpus):
    from hf_audiorep.cli import _load_local_or_hub

    manifest, root, _ = corpus
    data = _load_local_or_hub(str(manifest), "train", audio_column="audio", audio_root=str(root))
    assert data["id"] == ["c1", "c2", "c3", "c4", "c6"] and "audio" in data.column_names
