"""The UTS tag-system builder: scores, top-K, label files, extractors, answer parsing and the builder."""

import json
import math
from unittest import mock

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset

from hf_audiorep.data import LabelVocabulary
from hf_audiorep.data.tags import (
    AudioCaptioner,
    KeywordTagExtractor,
    LLMTagExtractor,
    TagSystem,
    TagSystemBuilder,
    build_tag_system,
    document_frequency,
    parse_generated_tags,
    rank_tags,
    score_tags,
    select_top_k,
    singularize,
    split_tags,
    tag_score,
)

# Five clips. df: dog 4, park 2, rain 2, bark 1, speech 1, wind 1 (N = 5).
CLIPS = [
    ["dog", "bark", "park"],
    ["dog", "park"],
    ["dog", "rain"],
    ["rain", "wind"],
    ["dog", "speech", "dog"],  # a tag twice in one clip counts once
]


# ------------------------------------------------------------------------------------------- scoring


def test_scores_and_top_k_match_the_hand_computed_example():
    df = document_frequency(CLIPS)
    assert df == {"dog": 4, "park": 2, "rain": 2, "bark": 1, "speech": 1, "wind": 1}
    scores = score_tags(df, num_clips=5)
    # s = df * ln((N + 1) / (df + 1)), by hand:
    assert scores["dog"] == pytest.approx(0.729286, abs=1e-6)  # 4 ln(6/5)
    assert scores["park"] == pytest.approx(1.386294, abs=1e-6)  # 2 ln(6/3)
    assert scores["rain"] == pytest.approx(1.386294, abs=1e-6)
    assert scores["bark"] == pytest.approx(1.098612, abs=1e-6)  # 1 ln(6/2)
    # the tag on most clips is the least discriminative: it comes last
    assert select_top_k(scores, 3) == ["park", "rain", "bark"]
    assert select_top_k(scores, 6) == ["park", "rain", "bark", "speech", "wind", "dog"]
    assert select_top_k(scores, 100) == select_top_k(scores, 6)  # fewer tags than K: all of them
    assert tag_score(5, 5) == 0.0  # on every clip: a filler, score 0

    system = TagSystem.from_tag_lists(CLIPS, k=4)
    assert system.names == ("park", "rain", "bark", "speech")
    assert system.df == (2, 2, 1, 1)
    assert system.scores[0] == pytest.approx(2 * math.log(2))
    assert (system.k, system.num_clips, system.num_candidates) == (4, 5, 6)


def test_ties_are_broken_by_the_tag_string_whatever_the_input_order():
    scores = {"wind": 1.0, "bark": 1.0, "speech": 1.0, "alarm": 0.5}
    assert rank_tags(scores) == ["bark", "speech", "wind", "alarm"]
    assert rank_tags(dict(reversed(list(scores.items())))) == ["bark", "speech", "wind", "alarm"]
    shuffled = [CLIPS[i] for i in (3, 1, 4, 0, 2)]
    assert TagSystem.from_tag_lists(shuffled, 5).names == TagSystem.from_tag_lists(CLIPS, 5).names


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "800"])
def test_k_must_be_a_positive_integer(k):
    with pytest.raises(ValueError, match="K"):
        select_top_k({"a": 1.0}, k)
    with pytest.raises(ValueError, match="K"):
        TagSystem.from_tag_lists(CLIPS, k)


def test_a_vocabulary_needs_some_tag():
    with pytest.raises(ValueError, match="empty"):
        TagSystem.from_tag_lists([[], []], 5)


# ------------------------------------------------------------------------------------------- labels


def test_multi_hot_and_indices_ignore_tags_outside_the_vocabulary():
    system = TagSystem.from_tag_lists(CLIPS, k=4)  # park, rain, bark, speech
    assert system.indices(["rain", "dog", "park", "rain"]) == [0, 1]
    np.testing.assert_array_equal(system.multi_hot(["speech", "dog"]), [0, 0, 0, 1])
    assert system.multi_hot([]).dtype == np.float32
    assert system.id2label == {0: "park", 1: "rain", 2: "bark", 3: "speech"}
    assert system.label2id["bark"] == 2
    assert isinstance(system.vocabulary, LabelVocabulary)


def test_untagged_clips_are_dropped_and_counted():
    data = Dataset.from_dict(
        {
            "clip_id": ["a", "b", "c", "d", "e", "f"],
            "tags": ["dog;bark", "", "rain; wind", None, "dog", "purr"],
        }
    )
    builder = TagSystemBuilder(tags_column="tags", progress=False)
    result = builder.build(data, k=3)  # df: dog 2, others 1 -> scores: dog 2 ln(7/3), the rest ln(7/2)
    assert result.tag_system.names == ("dog", "bark", "purr")
    # b and d have no tag at all, c has tags but none of the vocabulary's
    assert result.kept == [0, 4, 5]
    assert result.summary["num_clips"] == 6
    assert result.summary["num_clips_without_tags"] == 2
    assert result.summary["num_dropped"] == 3
    assert result.summary["num_kept"] == 3
    assert result.dataset["clip_id"] == ["a", "e", "f"]
    assert result.dataset["tag_labels"] == [[0, 1], [0], [2]]
    feature = result.dataset.features["tag_labels"].feature
    assert isinstance(feature, ClassLabel) and feature.names == ["dog", "bark", "purr"]


def test_multi_hot_label_column():
    clips = [["dog", "park"], ["rain"], ["dog", "bark"], ["wind"]]
    data = Dataset.from_dict({"tags": clips})
    result = TagSystemBuilder(tags_column="tags", label_format="multi_hot", progress=False).build(data, k=3)
    # N = 4: dog 2 ln(5/3) = 1.02 beats the df-1 tags' ln(5/2) = 0.92, which tie and go by name
    assert result.tag_system.names == ("dog", "bark", "park")
    assert result.kept == [0, 2]
    assert result.dataset["tag_labels"] == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]
    assert result.dataset.features["tag_labels"].length == 3


# ------------------------------------------------------------------------------------------- files


def test_label_file_round_trip(tmp_path):
    system = TagSystem.from_tag_lists(CLIPS, k=4, extractor={"type": "test"})
    path = system.save(tmp_path)
    assert path.name == "label_4.json"
    assert json.loads(path.read_text()) == {"0": "park", "1": "rain", "2": "bark", "3": "speech"}
    meta = json.loads((tmp_path / "label_4.meta.json").read_text())
    assert (
        meta["num_clips"] == 5
        and meta["k"] == 4
        and meta["tags"][2]
        == {
            "id": 2,
            "tag": "bark",
            "df": 1,
            "score": pytest.approx(math.log(3)),
        }
    )
    loaded = TagSystem.from_pretrained(path)
    assert loaded == system
    assert loaded.extractor == {"type": "test"}
    assert TagSystem.from_pretrained(tmp_path) == system  # the folder's only label file

    # Auden's bare label file, without a sidecar
    bare = tmp_path / "auden" / "label_1.5k.json"
    bare.parent.mkdir()
    bare.write_text(json.dumps({"1": "music", "0": "speech"}))
    auden = TagSystem.from_pretrained(bare.parent, "label_1.5k.json")
    assert auden.names == ("speech", "music") and auden.df is None


def test_loading_from_a_hub_layout_folder_and_the_hub_cache(tmp_path, monkeypatch):
    systems = {k: TagSystem.from_tag_lists(CLIPS, k=k) for k in (2, 4)}
    repo = tmp_path / "repo"  # the files of a Hub repository, as a local folder
    for system in systems.values():
        system.save(repo)
    (repo / "README.md").write_text("# tags\n")
    with pytest.raises(FileNotFoundError, match="several label files"):
        TagSystem.from_pretrained(repo)
    assert TagSystem.from_pretrained(repo, k=2) == systems[2]
    assert TagSystem.from_pretrained(repo, "label_4.json") == systems[4]

    # The same repository as hf_hub_download leaves it in its cache: read offline by repo id.
    import huggingface_hub

    commit = "0123456789abcdef0123456789abcdef01234567"
    cached = tmp_path / "cache" / "models--someone--uts-tags"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text(commit)
    snapshot = cached / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("label_4.json", "label_4.meta.json"):
        (snapshot / name).write_bytes((repo / name).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = TagSystem.from_pretrained("someone/uts-tags", k=4, cache_dir=tmp_path / "cache")
    assert loaded == systems[4] and loaded.df == systems[4].df

    with pytest.raises(FileNotFoundError):
        TagSystem.from_pretrained(tmp_path / "missing" / "label_4.json")


def test_the_vocabulary_travels_in_a_model_config(tmp_path):
    from transformers import PretrainedConfig

    system = TagSystem.from_tag_lists(CLIPS, k=4)
    PretrainedConfig(id2label=system.id2label, label2id=system.label2id).save_pretrained(tmp_path)
    config = PretrainedConfig.from_pretrained(tmp_path)
    assert TagSystem.from_config(config).vocabulary == system.vocabulary
    assert TagSystem.from_config({"1": "music", "0": "speech"}).names == ("speech", "music")


def test_push_to_hub_uploads_the_label_file_and_its_sidecar():
    system = TagSystem.from_tag_lists(CLIPS, k=3)
    api = mock.MagicMock()
    system.push_to_hub("someone/uts-tags", api=api, private=True)
    api.create_repo.assert_called_once_with(
        "someone/uts-tags", repo_type="model", private=True, exist_ok=True
    )
    uploads = {c.kwargs["path_in_repo"]: c.kwargs for c in api.upload_file.call_args_list}
    assert sorted(uploads) == ["label_3.json", "label_3.meta.json"]
    assert json.loads(uploads["label_3.json"]["path_or_fileobj"]) == system.label_file()
    assert uploads["label_3.json"]["repo_id"] == "someone/uts-tags"
    assert json.loads(uploads["label_3.meta.json"]["path_or_fileobj"])["num_clips"] == 5


def test_bad_label_files_are_refused(tmp_path):
    for content, match in [
        ({"0": "a", "2": "b"}, "without gaps"),
        ({"zero": "a"}, "class ids"),
        ({"0": ""}, "non-empty"),
        ("not json", "JSON"),
    ]:
        path = tmp_path / "label_1.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(ValueError, match=match):
            TagSystem.from_pretrained(path)


# -------------------------------------------------------------------------------------- default extractor

CAPTIONS = [
    "A low pitched male voice speaks slowly in a large hall.",
    "An acoustic guitar plays a fast tune while a low pitched voice hums.",
    "Someone strums an acoustic guitar in a large hall, and the recording is noisy.",
    "Two dogs bark loudly in the park; a low pitched engine idles.",
    "The sound of an acoustic guitar and rain falling on the roof.",
    "The sound of a loud engine.",
]


def test_the_default_extractor_on_hand_written_captions():
    extractor = KeywordTagExtractor(min_term_df=2).fit(CAPTIONS)
    assert sorted(extractor.terms.values()) == ["acoustic guitar", "large hall", "low-pitched"]
    expected = [
        # a multi-word term; a compound adjective hyphenated; stop words ("a", "in") gone
        ["low-pitched", "male", "voice", "speak", "slowly", "large hall"],
        ["acoustic guitar", "play", "fast", "tune", "low-pitched", "voice", "hum"],
        # "someone", "and", "the", "is" are stop words, "recording" caption filler
        ["strum", "acoustic guitar", "large hall", "noisy"],
        # plural -> singular; "two" is a count, not a tag; "loudly" -> "loud" (another caption says "loud")
        ["dog", "bark", "loud", "park", "low-pitched", "engine", "idle"],
        # "the sound of" is caption filler
        ["acoustic guitar", "rain", "falling", "roof"],
        ["loud", "engine"],
    ]
    assert extractor.extract_batch(CAPTIONS) == expected
    assert extractor("ACOUSTIC GUITARS!") == ["acoustic guitar"]  # case, plural, punctuation
    # deterministic: a second extractor fitted the same way agrees
    assert KeywordTagExtractor(min_term_df=2).fit(CAPTIONS).extract_batch(CAPTIONS) == expected


def test_the_default_extractor_without_fitting_and_its_options():
    unfitted = KeywordTagExtractor()
    assert unfitted("Dogs are barking; a dog barks.") == ["dog", "bark"]
    assert unfitted("A high-quality recording of wind chimes.") == ["high-quality", "wind", "chime"]
    assert unfitted("") == [] and unfitted("The sound of it.") == []
    assert unfitted("A crackling fire.") == ["crackling", "fire"]  # "fire" is on scikit-learn's stop list
    parts = KeywordTagExtractor(min_term_df=2, keep_term_parts=True).fit(CAPTIONS)
    assert parts(CAPTIONS[4]) == ["acoustic guitar", "acoustic", "guitar", "rain", "falling", "roof"]
    assert KeywordTagExtractor(max_tags=2)(CAPTIONS[0]) == ["low", "pitched"]
    assert KeywordTagExtractor(extra_stop_words=["hall"])(CAPTIONS[0])[-1] == "large"
    # a clause ("a dog barks") is no term, however often it occurs
    clauses = KeywordTagExtractor(min_term_df=2).fit(["A dog barks.", "A dog barks twice.", "The dog barks."])
    assert clauses.terms == {}


def test_singularize_and_split_tags():
    assert [singularize(w) for w in ("dogs", "glasses", "children", "bus", "bass", "hand-claps", "news")] == [
        "dog",
        "glass",
        "child",
        "bus",
        "bass",
        "hand-clap",
        "news",
    ]
    assert split_tags("Speech; Male ;  music;;") == ["speech", "male", "music"]
    assert split_tags("speech, music") == ["speech", "music"]
    assert split_tags(["Dog", "dog", " rain "]) == ["dog", "rain"]
    assert split_tags(None) == []


# ------------------------------------------------------------------------------------------- LLM answers

PROMPT = "Tag this.\n\nDescription: a dog barks\nTags:"


@pytest.mark.parametrize(
    "output, expected",
    [
        ("dog, bark, park", ["dog", "bark", "park"]),
        ("1. Dog\n2. Barking\n3) Park.", ["dog", "barking", "park"]),
        ("- dogs\n- birds\n* rain\n• wind", ["dog", "bird", "rain", "wind"]),
        ('["Dog", "bark", "outdoor"]', ["dog", "bark", "outdoor"]),
        ('```json\n{"tags": ["rain", "thunder"]}\n```', ["rain", "thunder"]),
        ('Sure! Here are the tags: "dog"; "bark"; "park".', ["dog", "bark", "park"]),
        (PROMPT + " speech, male, indoor", ["speech", "male", "indoor"]),
        (PROMPT, []),  # the prompt echoed, nothing after it
        ([{"generated_text": "Rain, WIND, thunder!"}], ["rain", "wind", "thunder"]),
        (
            [
                {
                    "generated_text": [
                        {"role": "user", "content": PROMPT},
                        {"role": "assistant", "content": "Speech, Male"},
                    ]
                }
            ],
            ["speech", "male"],
        ),
        ({"role": "assistant", "content": [{"type": "text", "text": "music; guitar"}]}, ["music", "guitar"]),
        ("dog, Dog, dogs, DOG.", ["dog"]),
        (
            "acoustic guitar, low pitched, a vacuum cleaner",
            ["acoustic guitar", "low pitched", "vacuum cleaner"],
        ),
        ("Scene: park\nSources: dog\nEvents: barking", ["park", "dog", "barking"]),
        ("The clip contains a dog barking loudly", ["contain", "dog", "barking", "loudly"]),
        ("'speech' | 'music' | 'noise'", ["speech", "music", "noise"]),
        ("", []),
        ("   \n\n", []),
        (None, []),
        (42, []),
        ([], []),
        ("!!! ??? 123 ... --", []),
        ("dog dog dog dog dog dog dog", ["dog"]),
        (
            "tag0, alpha, bravo, charlie, delta, echo, foxtrot, golf, hotel, india, juliet, kilo, lima",
            "alpha bravo charlie delta echo foxtrot golf hotel india juliet".split(),  # at most 10, no digits
        ),
    ],
)
def test_parse_generated_tags(output, expected):
    assert parse_generated_tags(output, prompt=PROMPT) == expected


def test_parse_generated_tags_options():
    assert parse_generated_tags("rain, wind, thunder", max_tags=2) == ["rain", "wind"]
    assert parse_generated_tags("rain, wind, thunder", max_tags=None) == ["rain", "wind", "thunder"]
    assert parse_generated_tags("Dogs, Cats", normalize=False) == ["dogs", "cats"]
    assert parse_generated_tags("very long multi word answer here", max_words=10) == [
        "very long multi word answer here"
    ]


# ------------------------------------------------------------------------------------------- LLM extractor


def tiny_text_generation_pipeline(seed: int = 0):
    """A random 1-layer GPT-2 with a word-level tokenizer built here: nothing is downloaded."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, pipeline

    words = "dog bark rain park bird wind speech music guitar loud quiet indoor the a tags".split()
    words += ["1.", "-", ",", ";", ":", ".", "[", "]", '"']
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=256,
        n_embd=16,
        n_layer=1,
        n_head=2,
        initializer_range=0.5,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    return pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu"), set(words)


def test_the_builder_with_a_tiny_random_text_generation_pipeline():
    pipe, words = tiny_text_generation_pipeline()
    captions = [
        "A dog barks in the park.",
        "Rain and wind outside.",
        "Speech and music indoors.",
        "A bird sings.",
        "A loud guitar.",
    ]
    data = Dataset.from_dict({"caption": captions, "clip_id": list("abcde")})
    extractor = LLMTagExtractor(pipe, batch_size=2, max_new_tokens=10)
    assert extractor.generate_kwargs["do_sample"] is False  # greedy by default
    raw = extractor.generate(captions)
    assert len(raw) == len(captions)
    tags = extractor.extract_batch(captions)
    assert len(tags) == len(captions)
    assert all(
        t in words or t.split()[-1] in words for clip in tags for t in clip
    )  # garbage parsed, no crash
    assert extractor.extract_batch(captions) == tags  # deterministic
    builder = TagSystemBuilder(extractor, progress=False)
    if not any(tags):
        with pytest.raises(ValueError, match="no clip got a tag"):
            builder.build(data, k=3)
        return
    result = builder.build(data, k=3)
    assert result.summary["num_clips"] == 5
    assert result.summary["num_dropped"] == 5 - len(result.kept)
    assert result.dataset.num_rows == len(result.kept)
    assert all(labels for labels in result.dataset["tag_labels"])
    assert result.dataset["tags"] == [tags[i] for i in result.kept]
    assert result.tag_system.extractor["extractor"]["type"] == "LLMTagExtractor"
    assert result.tag_system.extractor["captions"] == "column 'caption'"


def test_the_llm_extractor_with_a_chat_pipeline():
    calls = []

    def chat_pipeline(inputs, **kwargs):
        calls.append((inputs, kwargs))
        return [
            [{"generated_text": [*messages, {"role": "assistant", "content": "Dog, Park"}]}]
            for messages in inputs
        ]

    extractor = LLMTagExtractor(
        chat_pipeline, use_chat_template=True, system_prompt="You tag audio.", batch_size=3
    )
    assert extractor(["a dog in a park"] * 4) == [["dog", "park"]] * 4
    assert [len(inputs) for inputs, _ in calls] == [3, 1]
    first = calls[0][0][0]
    assert (
        first[0] == {"role": "system", "content": "You tag audio."}
        and "a dog in a park" in first[1]["content"]
    )
    assert calls[0][1]["do_sample"] is False and calls[0][1]["return_full_text"] is False
    with pytest.raises(ValueError, match="caption"):
        LLMTagExtractor(chat_pipeline, prompt="no placeholder")


# ------------------------------------------------------------------------------------------- builder


def test_the_builder_on_captions_a_stream_and_a_sweep():
    captions = CAPTIONS * 2
    results = build_tag_system(captions, k=[3, 50], progress=False)
    assert sorted(results) == [3, 50]
    assert len(results[3].tag_system) == 3 and results[3].dataset is None
    assert results[50].summary["vocabulary_size"] == results[50].summary["num_candidate_tags"] < 50
    assert results[3].summary["num_dropped"] == len(captions) - len(results[3].kept)

    data = Dataset.from_dict({"caption": captions, "n": list(range(len(captions)))})
    eager = build_tag_system(data, k=3, progress=False)
    stream = build_tag_system(data.to_iterable_dataset(), k=3, progress=False)
    assert isinstance(stream.dataset, IterableDataset)
    assert stream.tag_system == eager.tag_system and stream.kept == eager.kept
    rows = list(stream.dataset)
    assert [r["n"] for r in rows] == eager.dataset["n"]
    assert [r["tag_labels"] for r in rows] == eager.dataset["tag_labels"]


def test_nested_columns_and_records():
    records = [{"id": i, "supervisions": [{"caption": c}]} for i, c in enumerate(CAPTIONS)]
    from_records = build_tag_system(records, k=5, caption_column="supervisions.0.caption", progress=False)
    assert from_records.tag_system == build_tag_system(CAPTIONS, k=5, progress=False).tag_system


def test_the_captioner_runs_a_pipeline_on_the_audio_in_batches():
    calls = []

    def asr(inputs, **kwargs):
        calls.append(len(inputs))
        return [{"text": f"A dog barks {round(len(x['raw']) / x['sampling_rate'])} times."} for x in inputs]

    audio = [
        {"array": np.zeros(16000 * s, dtype=np.float32), "sampling_rate": 16000} for s in (1, 2, 3, 1, 2)
    ]
    data = Dataset.from_dict({"audio": audio})
    captioner = AudioCaptioner(asr, batch_size=2, progress=False)
    assert captioner.caption(data["audio"]) == [f"A dog barks {s} times." for s in (1, 2, 3, 1, 2)]
    assert calls == [2, 2, 1]
    result = TagSystemBuilder(captioner=captioner, progress=False).build(data, k=2)
    assert result.dataset["generated_caption"][0] == "A dog barks 1 times."
    assert result.tag_system.extractor["captions"]["type"] == "AudioCaptioner"
    assert set(result.tag_system.names) == {"dog", "bark"}


def test_clear_errors_for_bad_input():
    data = Dataset.from_dict({"text": ["a dog barks"]})
    with pytest.raises(ValueError, match="no captions column 'caption'.*'text'"):
        build_tag_system(data, k=5, progress=False)
    with pytest.raises(ValueError, match="no tags column 'labels'"):
        build_tag_system(data, k=5, tags_column="labels", progress=False)
    with pytest.raises(ValueError, match="no clips"):
        build_tag_system([], k=5, progress=False)
    with pytest.raises(ValueError, match="no clips"):
        build_tag_system(Dataset.from_dict({"caption": []}), k=5, progress=False)
    with pytest.raises(ValueError, match="no clip got a tag"):
        build_tag_system(["", "The sound of it.", None], k=5, progress=False)
    with pytest.raises(ValueError, match="K"):
        build_tag_system(["a dog barks"], k=0, progress=False)
    with pytest.raises(ValueError, match="K"):
        build_tag_system(["a dog barks"], k=[800, -1], progress=False)
    with pytest.raises(ValueError, match="pick one split"):
        build_tag_system(DatasetDict({"train": data}), k=5, caption_column="text", progress=False)
    with pytest.raises(ValueError, match="no audio column 'audio'"):
        build_tag_system(data, k=5, captioner=lambda inputs, **_: [], progress=False)
    with pytest.raises(ValueError, match="label_format"):
        TagSystemBuilder(label_format="dense")
