"""A user's own datasets as the recipes open them: labels that happen to be AudioSet names, classes named
with --label_names, folders written by save_to_disk, mistyped splits of the built-in corpus, and a clip
with no samples."""

import numpy as np
import pytest
import soundfile as sf
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset

from hf_audiorep.data.arguments import DataArguments, load_sources, parse_label_names
from hf_audiorep.data.decode import CorruptAudioError, decode_audio
from hf_audiorep.data.ontology import AUDIOSET_ONTOLOGY
from hf_audiorep.data.sources import SplitNotFoundError, check_one_label_per_clip, load_audio_source
from hf_audiorep.data.stream import AudioStream

SR = 16000
CLIP = 0.25


def _tone(freq: float, seconds: float = CLIP) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _metadata_folder(root, splits: dict[str, list[str]]):
    """``root/<split>/`` with one clip per label string and a metadata.csv naming it."""
    for split, labels in splits.items():
        (root / split).mkdir(parents=True)
        rows = ["file_name,labels"]
        for k, label in enumerate(labels):
            sf.write(root / split / f"c{k}.wav", _tone(200.0 + 100 * k), SR)
            rows.append(f'c{k}.wav,"{label}"')
        (root / split / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def _label_folders(root, splits: dict[str, list[str]]):
    """``root/<split>/<label>/`` with two 0.5 s clips per label: the folder-per-label layout."""
    for split, labels in splits.items():
        for k, label in enumerate(labels):
            (root / split / label).mkdir(parents=True)
            for j in range(2):
                sf.write(root / split / label / f"{label}{j}.wav", _tone(200.0 + 100 * k, 0.5), SR)
    return root


def _rows(stream) -> list[list[int]]:
    return [sorted(row.nonzero()[:, 0].tolist()) for batch in stream for row in batch["labels"]]


# ---------------------------------------------------------- labels that happen to be AudioSet names


def test_audioset_display_names_in_a_user_folder_are_its_own_classes(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["Dog", "Cat;Speech", "Dog"], "test": ["Cat"]})
    sources = load_sources(DataArguments(dataset=str(root), eval_split="none"))
    assert sources["train"].label_names == ("Cat", "Dog", "Speech")
    assert sources["test"].label_names == ("Cat", "Dog", "Speech")
    assert sources["train"].label_to_index("Cat;Speech") == [0, 2]


def test_audioset_display_names_in_a_parquet_file_are_its_own_classes(tmp_path):
    audio = [{"array": _tone(300.0), "sampling_rate": SR}] * 3
    Dataset.from_dict({"audio": audio, "label": ["Dog", "Cat", "Speech"]}).to_parquet(tmp_path / "d.parquet")
    source = load_audio_source(str(tmp_path / "d.parquet"))
    assert source.label_names == ("Cat", "Dog", "Speech")


def test_bare_integer_labels_in_a_parquet_file_are_its_own_classes(tmp_path):
    # Once read as indices of AudioSet's 527 classes: Parquet files are anyone's, and AudioSet's label MIDs.
    audio = [{"array": _tone(300.0), "sampling_rate": SR}] * 3
    Dataset.from_dict({"audio": audio, "label": [[0], [2], [1, 2]]}).to_parquet(tmp_path / "d.parquet")
    source = load_audio_source(str(tmp_path / "d.parquet"))
    assert source.label_names == ("0", "1", "2")
    streamed = str(tmp_path / "d.parquet")
    with pytest.raises(
        ValueError, match="integer labels in 'label' without a ClassLabel feature.*--label_names"
    ):
        load_audio_source(streamed, streaming=True)


def test_mids_still_select_the_audioset_vocabulary(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["/m/09x0r", "/m/04rlf;Dog"]})
    source = load_audio_source(str(root), cache_dir=str(tmp_path / "cache"))
    assert source.label_names == AUDIOSET_ONTOLOGY.names


# ---------------------------------------------------------------------------- --label_names


def test_label_names_is_comma_separated_or_a_file(tmp_path):
    assert parse_label_names(" dog, siren ,bird ") == ("dog", "siren", "bird")
    listed = tmp_path / "classes.txt"
    listed.write_text("Male speech, man speaking\n\nMusic\n")
    assert parse_label_names(str(listed)) == ("Male speech, man speaking", "Music")
    assert parse_label_names(None) is None
    with pytest.raises(ValueError, match=r"--label_names names \['dog'\] more than once"):
        DataArguments(label_names="dog,bird,dog")


def test_streaming_string_labels_without_label_names_names_the_option(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["dog", "siren", "bird"]})
    with pytest.raises(ValueError, match=r"--label_names \(e\.g\. --label_names dog,siren,bird"):
        load_sources(DataArguments(dataset=str(root), streaming=True, eval_split="none", test_split="none"))


@pytest.mark.parametrize("streaming", [True, False])
def test_label_names_fix_the_classes_and_their_order(tmp_path, streaming):
    root = _metadata_folder(
        tmp_path / "data", {"train": ["dog", "siren", "bird", "dog;bird"], "test": ["bird", "siren"]}
    )
    data = DataArguments(
        dataset=str(root), streaming=streaming, label_names="siren,dog,bird", eval_split="none"
    )
    sources = load_sources(data)
    assert all(source.is_streaming == streaming for source in sources.values())
    assert sources["train"].label_names == sources["test"].label_names == ("siren", "dog", "bird")
    stream = AudioStream(sources["train"], batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    assert _rows(stream) == [[1], [0], [2], [1, 2]]


def test_label_names_missing_a_label_skips_its_clips_when_streamed(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["dog", "cow", "bird"]})
    data = DataArguments(
        dataset=str(root), streaming=True, label_names="dog,bird", eval_split="none", test_split="none"
    )
    source = load_sources(data)["train"]
    stream = AudioStream(source, batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    assert _rows(stream) == [[0], [1]]
    assert stream.stats["skipped"] == 1 and "cow" in stream.stats["errors"][0]


def test_label_names_missing_a_label_is_an_error_naming_it(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["dog", "cow", "bird"]})
    data = DataArguments(dataset=str(root), label_names="dog,bird", eval_split="none", test_split="none")
    with pytest.raises(ValueError, match=r"train split 'train' .* --label_names does not name: cow"):
        load_sources(data)


def test_label_names_from_a_file(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["b", "a"]})
    listed = tmp_path / "classes.txt"
    listed.write_text("b\na\n")
    data = DataArguments(dataset=str(root), label_names=str(listed), eval_split="none", test_split="none")
    assert load_sources(data)["train"].label_names == ("b", "a")


# ------------------------------------------------------------- a label folder in one split only


def test_a_test_label_missing_from_train_is_an_error_naming_it(tmp_path):
    # audiofolder builds one ClassLabel from every split's folders: chirp became a class never trained on.
    root = _label_folders(tmp_path / "data", {"train": ["click", "noise", "tone"], "test": ["chirp", "tone"]})
    data = DataArguments(dataset=str(root), eval_split="none", test_split="none")
    assert load_sources(data)["train"].label_names == ("click", "noise", "tone")
    data = DataArguments(dataset=str(root), eval_split="none")
    with pytest.raises(ValueError, match=r"test split 'test' .* train split 'train' does not: chirp\."):
        load_sources(data)


def test_label_names_missing_a_test_label_names_the_test_split(tmp_path):
    root = _label_folders(tmp_path / "data", {"train": ["click", "noise", "tone"], "test": ["chirp", "tone"]})
    data = DataArguments(dataset=str(root), label_names="click,noise,tone", eval_split="none")
    with pytest.raises(ValueError, match=r"the test split 'test' .* --label_names does not name: chirp\."):
        load_sources(data)


@pytest.mark.parametrize("streaming", [True, False])
def test_folder_splits_keep_the_train_classes_and_their_indices(tmp_path, streaming):
    # The test split lacks noise and has its labels at other places of its own folder list.
    root = _label_folders(tmp_path / "data", {"train": ["click", "noise", "tone"], "test": ["tone", "click"]})
    sources = load_sources(DataArguments(dataset=str(root), streaming=streaming, eval_split="none"))
    assert sources["train"].label_names == sources["test"].label_names == ("click", "noise", "tone")
    stream = AudioStream(sources["test"], batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    assert sorted(_rows(stream)) == [[0], [0], [2], [2]]


def test_a_streamed_folder_split_has_the_classes_of_its_own_folders(tmp_path):
    # The labels of a stream's split come from its file list: no clip is read to find them.
    root = _label_folders(tmp_path / "data", {"train": ["click", "tone"], "test": ["chirp", "tone"]})
    data = DataArguments(dataset=str(root), streaming=True, eval_split="none", test_split="none")
    source = load_sources(data)["train"]
    assert source.label_names == ("click", "tone")
    stream = AudioStream(source, batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    assert sorted(_rows(stream)) == [[0], [0], [1], [1]]


# ------------------------------------------------------------------ single-label classification


def test_several_labels_per_clip_are_refused_for_single_label_classification(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["tone", "tone;noise", "noise"]})
    source = load_audio_source(str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(
        ValueError, match=r"clip 1 \(c1\.wav\) carries 2 labels .*keep the default multi_label_classification"
    ):
        check_one_label_per_clip(source)
    single = _label_folders(tmp_path / "folders", {"train": ["click", "tone"]})
    check_one_label_per_clip(load_audio_source(str(single), cache_dir=str(tmp_path / "cache")))


# ---------------------------------------------------------------------------- save_to_disk


def _saved_split(labels: list[str]) -> Dataset:
    audio = [{"array": _tone(200.0 + 100 * k), "sampling_rate": SR} for k in range(len(labels))]
    return Dataset.from_dict({"audio": audio, "category": labels})


@pytest.mark.parametrize("streaming", [True, False])
def test_a_saved_dataset_dict_gives_its_splits(tmp_path, streaming):
    root = tmp_path / "saved"
    DatasetDict(train=_saved_split(["dog", "bird", "dog"]), test=_saved_split(["bird"])).save_to_disk(root)
    data = DataArguments(dataset=str(root), label_column="category", streaming=streaming)
    sources = load_sources(data)
    assert sorted(sources) == ["test", "train"]  # no validation split: no evaluation during training
    assert sources["train"].label_names == ("bird", "dog")
    assert isinstance(sources["train"].dataset, IterableDataset if streaming else Dataset)
    stream = AudioStream(sources["train"], batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    assert _rows(stream) == [[1], [0], [1]]
    with pytest.raises(SplitNotFoundError, match=r"no 'holdout' split; it has \['test', 'train'\]"):
        load_sources(DataArguments(dataset=str(root), label_column="category", test_split="holdout"))


def test_a_saved_dataset_is_the_train_split(tmp_path):
    root = tmp_path / "saved"
    dataset = _saved_split(["dog", "bird"]).cast_column("category", ClassLabel(names=["dog", "bird"]))
    dataset.save_to_disk(root)
    source = load_audio_source(str(root), label_column="category")
    assert source.layout == "saved-dataset" and source.label_names == ("dog", "bird")
    stream = AudioStream(source, batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    assert _rows(stream) == [[0], [1]]
    with pytest.raises(SplitNotFoundError, match=r"no 'test' split; it has \['train'\]"):
        load_audio_source(str(root), split="test", label_column="category")


# ---------------------------------------------------------------------- the built-in corpus's splits


def test_an_unknown_split_of_the_built_in_corpus_lists_its_splits():
    data = DataArguments(
        eval_split="nosuchsplit", num_train_clips=0, num_eval_clips=0, num_test_clips=0, clip_seconds=0.5
    )
    with pytest.raises(
        SplitNotFoundError,
        match=r"--eval_split 'nosuchsplit': .* no such split; it has \['heldout', 'test', 'train', "
        r"'validation'\].*--eval_split none skips it",
    ):
        load_sources(data)


# ------------------------------------------------------------------------- a clip with no samples


def test_a_file_with_no_samples_is_named(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    record = {"bytes": path.read_bytes(), "path": "x.wav"}  # as datasets stores a file's bytes and name
    for value in (str(path), {"bytes": None, "path": str(path)}, record):
        name = value if isinstance(value, str) else value["path"]
        with pytest.raises(CorruptAudioError, match=f"^{name} has no samples$"):
            decode_audio(value, SR)
    with pytest.raises(CorruptAudioError, match="^the clip has no samples$"):
        decode_audio(path.read_bytes(), SR)


def test_a_stream_names_the_file_with_no_samples(tmp_path):
    root = _metadata_folder(tmp_path / "data", {"train": ["dog", "bird"]})
    sf.write(root / "train" / "c1.wav", np.zeros(0, dtype=np.float32), SR)
    source = load_audio_source(str(root), cache_dir=str(tmp_path / "cache"))
    stream = AudioStream(source, batch_size=4, sample_rate=SR, clip_seconds=CLIP, train=False)
    assert _rows(stream) == [[1]]
    assert stream.stats["errors"][0].endswith("c1.wav has no samples")
