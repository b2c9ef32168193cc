"""The tag-system builder's values by hand on tiny datasets: labels per clip, the clips dropped and counted,
every summary field, the columns kept and added, the extractor's batches, the argument checks."""

import math

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset

from hf_audiorep.data import LabelVocabulary
from hf_audiorep.data.tags import AudioCaptioner, TagExtractor, TagSystem, TagSystemBuilder, build_tag_system


class WordTags(TagExtractor):
    """Every word of a caption is a tag; records what it was fitted on and the batches it was given."""

    def __init__(self):
        self.fitted: list[list[str]] = []
        self.batches: list[list[str]] = []

    def fit(self, captions):
        self.fitted.append(list(captions))
        return self

    def extract_batch(self, captions):
        self.batches.append(list(captions))
        return [caption.split() for caption in captions]


class RecordingCaptioner(AudioCaptioner):
    """Captions a 2-sample clip "dog" and any other "rain"; records the audio values and totals it got."""

    def __init__(self):
        super().__init__(lambda inputs, **_: [], progress=False)
        self.seen: list = []
        self.totals: list = []

    def caption(self, audio, total=None):
        audio = list(audio)
        self.seen += audio
        self.totals.append(total)
        return ["dog" if len(a["array"]) == 2 else "rain" for a in audio]


# Six clips. The tags column holds: dog, bark | (none) | rain, wind | (none) | dog | purr.
# df (N = 6): dog 2, the rest 1. Scores: dog 2 ln(7/3), the df-1 tags ln(7/2), which tie and go by name.
TAGS = ["dog;bark", "", "rain; wind", None, "dog", "purr"]


def _tags_data():
    return Dataset.from_dict({"clip_id": ["a", "b", "c", "d", "e", "f"], "tags": TAGS})


def test_every_summary_field_by_hand():
    result = TagSystemBuilder(tags_column="tags", progress=False).build(_tags_data(), k=3)
    dog, single = 2 * math.log(7 / 3), math.log(7 / 2)
    assert result.summary == {
        "k": 3,
        "vocabulary_size": 3,
        "num_candidate_tags": 5,  # dog, bark, rain, wind, purr
        "num_clips": 6,
        "num_clips_without_tags": 2,  # b, d
        "num_dropped": 3,  # b, d and c (rain, wind: none in the vocabulary)
        "num_kept": 3,
        "tags_per_clip": {"min": 0, "median": 1.0, "mean": 1.0, "max": 2},  # 2 0 2 0 1 1
        "labels_per_kept_clip": {"min": 1, "median": 1, "mean": 1.3333, "max": 2},  # 2 1 1
        "vocabulary_df": {"min": 1, "median": 1, "mean": 1.3333, "max": 2},  # 2 1 1
        "tag_occurrences_in_vocabulary": 0.6667,  # 4 of the 6 tag occurrences
        "top_tags": [
            {"tag": "dog", "df": 2, "score": round(dog, 4)},
            {"tag": "bark", "df": 1, "score": round(single, 4)},
            {"tag": "purr", "df": 1, "score": round(single, 4)},
        ],
        "source": {"tags": "column 'tags'"},
    }
    assert result.kept == [0, 4, 5]


def test_top_tags_lists_the_first_thirty_of_a_larger_vocabulary():
    # 40 clips, clip i tagged t00 ... ti: 40 candidate tags
    clips = [[f"t{j:02d}" for j in range(40) if j <= i] for i in range(40)]
    result = TagSystemBuilder(tags_column="tags", progress=False).build(
        Dataset.from_dict({"tags": clips}), 35
    )
    top = result.summary["top_tags"]
    assert len(result.tag_system) == 35 and len(top) == 30
    assert [t["tag"] for t in top] == list(result.tag_system.names[:30])
    assert [t["df"] for t in top] == list(result.tag_system.df[:30])


def test_the_columns_kept_and_added():
    builder = TagSystemBuilder(tags_column="tags", tags_output_column="all_tags", progress=False)
    result = builder.build(_tags_data(), k=3)
    assert result.dataset.column_names == ["clip_id", "tags", "tag_labels", "all_tags"]
    assert result.dataset["clip_id"] == ["a", "e", "f"]
    # every extracted tag, before the top-K cut
    assert result.dataset["all_tags"] == [["dog", "bark"], ["dog"], ["purr"]]
    # an existing column of that name is left alone
    kept = TagSystemBuilder(tags_column="tags", tags_output_column="tags", progress=False)
    assert kept.build(_tags_data(), k=3).dataset["tags"] == ["dog;bark", "dog", "purr"]
    none = TagSystemBuilder(tags_column="tags", tags_output_column=None, label_column="y", progress=False)
    assert none.build(_tags_data(), k=3).dataset.column_names == ["clip_id", "tags", "y"]


def test_an_existing_label_column_is_replaced():
    data = _tags_data().add_column("tag_labels", [7, 7, 7, 7, 7, 7])
    builder = TagSystemBuilder(tags_column="tags", progress=False)
    result = builder.build(data, k=3)
    assert result.dataset.column_names == ["clip_id", "tags", "tag_labels"]
    assert result.dataset["tag_labels"] == [[0, 1], [0], [2]]
    assert isinstance(result.dataset.features["tag_labels"].feature, ClassLabel)
    stream = builder.build(data.to_iterable_dataset(), k=3).dataset
    assert [r["tag_labels"] for r in stream] == [[0, 1], [0], [2]]
    assert [r["clip_id"] for r in stream] == ["a", "e", "f"]


def test_no_clip_dropped_keeps_the_dataset_whole():
    data = Dataset.from_dict({"tags": ["dog", "rain", "dog;rain"]})
    result = TagSystemBuilder(tags_column="tags", label_format="multi_hot", progress=False).build(data, 2)
    # df: dog 2, rain 2: a tie, by name
    assert result.kept == [0, 1, 2] and len(result.dataset) == 3
    assert result.dataset["tag_labels"] == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert result.summary["num_dropped"] == 0 and result.summary["tag_occurrences_in_vocabulary"] == 1.0


def test_captions_go_to_the_extractor_in_batches_of_batch_size():
    captions = ["dog bark", "rain", "dog", "wind rain", "purr"]
    extractor = WordTags()
    builder = TagSystemBuilder(extractor, batch_size=2, progress=False)
    tagged = builder.tag(Dataset.from_dict({"caption": captions}))
    assert extractor.fitted == [captions]  # fitted once on all captions, before extracting
    assert extractor.batches == [["dog bark", "rain"], ["dog", "wind rain"], ["purr"]]
    assert tagged.tags == [["dog", "bark"], ["rain"], ["dog"], ["wind", "rain"], ["purr"]]
    assert tagged.captions == captions and tagged.generated_captions is False
    assert tagged.source == {"captions": "column 'caption'", "extractor": {"type": "WordTags"}}
    one = WordTags()
    TagSystemBuilder(one, batch_size=1, progress=False).tag(captions)
    assert [len(b) for b in one.batches] == [1, 1, 1, 1, 1]
    whole = WordTags()
    TagSystemBuilder(whole, batch_size=5, progress=False).tag(captions)
    assert whole.batches == [captions]


@pytest.mark.parametrize("batch_size", [0, -1])
def test_batch_size_must_be_positive(batch_size):
    with pytest.raises(ValueError, match="batch_size must be positive"):
        TagSystemBuilder(batch_size=batch_size)


def test_argument_checks_name_the_argument():
    with pytest.raises(ValueError, match="label_format.*'dense'"):
        TagSystemBuilder(label_format="dense")
    with pytest.raises(ValueError, match="tags_column.*captioner"):
        TagSystemBuilder(tags_column="tags", captioner=RecordingCaptioner())
    # tags given directly: no extractor is built
    assert TagSystemBuilder(tags_column="tags").extractor is None
    with pytest.raises(ValueError, match="at least one K"):
        TagSystemBuilder(progress=False).sweep(["a dog barks"], [])
    with pytest.raises(TypeError, match="one string"):
        build_tag_system("a dog barks", k=3, progress=False)


def test_a_sweep_tags_once_and_labels_the_dataset_for_every_k():
    extractor = WordTags()
    data = Dataset.from_dict({"caption": ["dog bark", "rain", "dog", "wind rain", "purr"]})
    results = TagSystemBuilder(extractor, progress=False).sweep(data, [2, 4, 2])
    assert list(results) == [2, 4]  # duplicates once, in the order given
    assert len(extractor.fitted) == 1 and len(extractor.batches) == 1
    # df: dog 2, rain 2, bark 1, purr 1, wind 1 (N = 5): 2 ln(6/3) beats ln(6/2); ties go by name
    assert results[2].tag_system.names == ("dog", "rain")
    assert results[2].kept == [0, 1, 2, 3] and results[2].dataset["tag_labels"] == [[0], [1], [0], [1]]
    assert results[4].tag_system.names == ("dog", "rain", "bark", "purr")
    assert results[4].kept == [0, 1, 2, 3, 4]
    assert results[4].dataset["tag_labels"] == [[0, 2], [1], [0], [1], [3]]


def test_build_tag_system_defaults_to_k_800_and_checks_the_split_first():
    result = build_tag_system(_tags_data(), tags_column="tags", progress=False)
    assert result.tag_system.k == 800 and result.summary["k"] == 800
    # a whole DatasetDict is the first thing wrong, before K
    data = DatasetDict({"train": _tags_data()})
    with pytest.raises(ValueError, match="pick one split.*'train'"):
        build_tag_system(data, k=0, tags_column="tags", progress=False)


def test_apply_checks_the_tag_lists_against_the_dataset():
    builder = TagSystemBuilder(tags_column="tags", progress=False)
    tagged = builder.tag(_tags_data())
    system = TagSystem.from_tag_lists(tagged.tags, 3)
    with pytest.raises(ValueError, match="6 tag lists for a dataset of 5 clips"):
        builder.apply(_tags_data().select(range(5)), tagged, system)
    other = TagSystem.from_tag_lists([["cat"], ["owl"]], 2)
    with pytest.raises(ValueError, match="no clip keeps a tag of the 2-tag vocabulary"):
        builder.apply(_tags_data(), tagged, other)
    # a list of captions is labelled too, without a dataset
    assert builder.apply(list(range(6)), tagged, system).dataset is None


def test_no_tag_at_all_names_the_source():
    with pytest.raises(ValueError, match=r"all 2 tag lists are empty.*column 'tags'"):
        TagSystemBuilder(tags_column="tags", progress=False).build(Dataset.from_dict({"tags": ["", None]}), 3)
    with pytest.raises(ValueError, match=r"all 2 tag lists are empty.*column 'caption'"):
        TagSystemBuilder(WordTags(), progress=False).build(Dataset.from_dict({"caption": ["", ""]}), 3)


def test_captions_that_are_lists_are_joined_and_other_values_refused():
    extractor = WordTags()
    data = Dataset.from_dict({"caption": [["a dog", "barking"], ["rain"], None]})
    tagged = TagSystemBuilder(extractor, progress=False).tag(data)
    assert tagged.captions == ["a dog barking", "rain", ""]
    with pytest.raises(ValueError, match="column 'caption' holds int values, not caption text"):
        TagSystemBuilder(WordTags(), progress=False).tag(Dataset.from_dict({"caption": [1, 2]}))
    with pytest.raises(ValueError, match="column 'caption' holds list values"):
        TagSystemBuilder(WordTags(), progress=False).tag([{"caption": [1, 2]}])
    with pytest.raises(ValueError, match="a list input must hold captions"):
        TagSystemBuilder(WordTags(), progress=False).tag([1, 2])
    with pytest.raises(ValueError, match="a record has no 'meta.caption'"):
        TagSystemBuilder(WordTags(), caption_column="meta.caption", progress=False).tag([{"meta": {}}])


def test_the_captioner_gets_the_audio_of_records_and_plain_audio_values():
    two, three = np.zeros(2, dtype=np.float32), np.zeros(3, dtype=np.float32)
    captioner = RecordingCaptioner()
    records = [{"id": 0, "audio": {"array": two, "sampling_rate": 16000}}]
    plain = {"array": three, "sampling_rate": 16000}  # an audio value itself, not a record holding one
    tagged = TagSystemBuilder(WordTags(), captioner=captioner, progress=False).tag(records + [plain])
    assert [len(a["array"]) for a in captioner.seen] == [2, 3]
    assert captioner.totals == [2]
    assert tagged.captions == ["dog", "rain"] and tagged.generated_captions is True
    assert tagged.source["captions"]["type"] == "RecordingCaptioner"


def test_generated_captions_are_stored_unless_the_column_exists():
    audio = [{"array": np.zeros(n, dtype=np.float32), "sampling_rate": 16000} for n in (2, 3, 2)]
    data = Dataset.from_dict({"audio": audio, "generated_caption": ["x", "y", "z"]})
    builder = TagSystemBuilder(WordTags(), captioner=RecordingCaptioner(), progress=False)
    result = builder.build(data, k=2)
    assert result.dataset["generated_caption"] == ["x", "y", "z"]  # left alone
    builder = TagSystemBuilder(
        WordTags(), captioner=RecordingCaptioner(), caption_output_column="said", progress=False
    )
    result = builder.build(data.remove_columns("generated_caption"), k=2)
    assert result.dataset["said"] == ["dog", "rain", "dog"]
    assert result.dataset.features["said"].dtype == "string"


def test_a_stream_without_length_reads_its_column():
    data = Dataset.from_dict({"caption": ["dog bark", "rain", "dog"]}).to_iterable_dataset()
    assert isinstance(data, IterableDataset)
    tagged = TagSystemBuilder(WordTags(), progress=False).tag(data)
    assert tagged.tags == [["dog", "bark"], ["rain"], ["dog"]]


def test_a_bare_label_file_vocabulary_labels_a_dataset():
    # A label file without its sidecar (e.g. one written by another toolkit) has no df and no scores; the
    # summary listed its top tags by slicing them and raised TypeError.
    builder = TagSystemBuilder(tags_column="tags", progress=False)
    system = TagSystem(LabelVocabulary.from_names(["purr", "dog"]))  # no df, no scores
    result = builder.apply(_tags_data(), builder.tag(_tags_data()), system)
    assert result.dataset["tag_labels"] == [[1], [1], [0]]
    assert result.summary["vocabulary_df"] == {"min": None, "median": None, "mean": None, "max": None}
    assert result.summary["top_tags"] == [
        {"tag": "purr", "df": None, "score": None},
        {"tag": "dog", "df": None, "score": None},
    ]


def test_tag_and_sweep_check_the_input_themselves():
    builder = TagSystemBuilder(WordTags(), progress=False)
    data = DatasetDict({"train": Dataset.from_dict({"caption": ["dog"]})})
    with pytest.raises(ValueError, match="pick one split"):
        builder.tag(data)
    with pytest.raises(ValueError, match="pick one split"):
        builder.sweep(data, [2])
    with pytest.raises(TypeError, match="one string"):
        builder.tag("a dog barks")


def test_a_missing_nested_field_of_a_dataset_column_is_named():
    data = Dataset.from_dict({"meta": [{"text": "dog"}, {"text": "rain"}]})
    tagged = TagSystemBuilder(WordTags(), caption_column="meta.text", progress=False).tag(data)
    assert tagged.captions == ["dog", "rain"]
    with pytest.raises(ValueError, match="a record has no 'meta.caption'"):
        TagSystemBuilder(WordTags(), caption_column="meta.caption", progress=False).tag(data)


def test_the_default_batch_is_64_captions():
    extractor = WordTags()
    TagSystemBuilder(extractor, progress=False).tag([f"clip{i}" for i in range(65)])
    assert [len(b) for b in extractor.batches] == [64, 1]


def test_extractor_and_captioner_kwargs_reach_what_they_build():
    def generator(inputs, **_):
        return [[{"generated_text": "dog"}] for _ in inputs]

    def asr(inputs, **_):
        return [{"text": "a dog"} for _ in inputs]

    builder = TagSystemBuilder(
        generator,
        extractor_kwargs={"prompt": "Tags: {caption}", "max_tags": 3},
        captioner=asr,
        captioner_kwargs={"batch_size": 2},
        progress=False,
    )
    assert (builder.extractor.pipeline, builder.extractor.prompt, builder.extractor.max_tags) == (
        generator,
        "Tags: {caption}",
        3,
    )
    assert (builder.captioner.pipeline, builder.captioner.batch_size) == (asr, 2)
    assert builder.captioner.progress is False  # the builder's progress, unless captioner_kwargs say


def test_a_labelled_stream_keeps_the_label_feature():
    data = _tags_data().to_iterable_dataset()
    stream = TagSystemBuilder(tags_column="tags", progress=False).build(data, k=3).dataset
    feature = stream.features["tag_labels"].feature
    assert isinstance(feature, ClassLabel) and feature.names == ["dog", "bark", "purr"]
    assert stream.features["clip_id"].dtype == "string"
