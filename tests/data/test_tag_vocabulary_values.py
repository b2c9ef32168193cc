"""The tag vocabulary's values by hand: scores and their ties, K at its edges, the saved files' exact text,
the checks of a TagSystem and of label files, and the Hub calls (recorded, never made)."""

import json
import math
import re

import huggingface_hub
import numpy as np
import pytest
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, OfflineModeIsEnabled

from hf_audiorep.data import LabelVocabulary
from hf_audiorep.data.tags import (
    TagSystem,
    document_frequency,
    rank_tags,
    score_tags,
    select_top_k,
    tag_score,
)
from hf_audiorep.hub_errors import HubUnreachableError

# Four clips (N = 4). df: rain 3, wind 2, bird 1 (twice in its clip, counted once), dog 1.
CLIPS = [["rain", "wind"], ["rain", "dog"], ["wind", "rain"], ["bird", "bird"]]
# s = df ln(5 / (df + 1)): wind 2 ln(5/3) = 1.0217 > bird = dog = ln(5/2) = 0.9163 > rain 3 ln(5/4) = 0.6694
RANKED = ["wind", "bird", "dog", "rain"]
REPO = "someone/uts-tags"


def system_of(names, **kwargs):
    return TagSystem(LabelVocabulary.from_names(names), **kwargs)


# ------------------------------------------------------------------------------------------- scores


def test_document_frequency_counts_a_tag_once_per_clip():
    assert document_frequency(CLIPS) == {"rain": 3, "wind": 2, "dog": 1, "bird": 1}
    assert document_frequency([]) == {}


def test_scores_by_hand_and_their_tie_order():
    assert tag_score(1, 4) == pytest.approx(math.log(5 / 2), rel=1e-12)
    assert tag_score(2, 4) == pytest.approx(2 * math.log(5 / 3), rel=1e-12)
    assert tag_score(3, 4) == pytest.approx(3 * math.log(5 / 4), rel=1e-12)
    assert tag_score(0, 4) == 0.0 and tag_score(4, 4) == 0.0  # df at both ends of [0, N]
    scores = score_tags(document_frequency(CLIPS), 4)
    assert scores == pytest.approx(
        {
            "wind": 2 * math.log(5 / 3),
            "bird": math.log(5 / 2),
            "dog": math.log(5 / 2),
            "rain": 3 * math.log(5 / 4),
        },
        rel=1e-12,
    )
    assert score_tags({"x": np.int64(2)}, 4) == pytest.approx({"x": 2 * math.log(5 / 3)}, rel=1e-12)
    # decreasing score; the tie bird = dog goes by the string, whatever the dict order
    assert rank_tags(scores) == RANKED
    assert rank_tags(dict(reversed(list(scores.items())))) == RANKED
    assert rank_tags({"b": -1.0, "a": -2.0, "c": 3.0}) == ["c", "b", "a"]


@pytest.mark.parametrize("df", [-1, 5])
def test_a_df_outside_0_to_n_is_refused(df):
    with pytest.raises(ValueError, match=re.escape(f"a tag's df must be in [0, N=4], got {df}")):
        tag_score(df, 4)


def test_k_at_its_edges():
    scores = score_tags(document_frequency(CLIPS), 4)
    assert select_top_k(scores, 1) == ["wind"]
    assert select_top_k(scores, 4) == RANKED  # K = the number of tags
    assert select_top_k(scores, 5) == RANKED  # K > the number of tags: all of them
    assert select_top_k(scores, np.int64(2)) == ["wind", "bird"]
    system = TagSystem.from_document_frequency(document_frequency(CLIPS), 4, np.int64(1))
    assert system.k == 1 and type(system.k) is int


@pytest.mark.parametrize("k", [0, -1, 2.0, True, False, "3", None])
def test_a_k_other_than_a_positive_integer_is_refused_by_name(k):
    message = re.escape(f"K (the vocabulary size) must be a positive integer, got {k!r}")
    with pytest.raises(ValueError, match=message):
        select_top_k({"a": 1.0}, k)
    with pytest.raises(ValueError, match=message):
        TagSystem.from_document_frequency({"a": 1}, 4, k)


def test_from_document_frequency_by_hand():
    system = TagSystem.from_document_frequency(
        {"rain": 3, "wind": 2, "bird": 1, "dog": 1, "never": 0}, 4, 3, extractor={"type": "hand"}
    )
    assert system.names == ("wind", "bird", "dog")
    assert system.df == (2, 1, 1)
    assert system.scores == pytest.approx((2 * math.log(5 / 3), math.log(5 / 2), math.log(5 / 2)), rel=1e-12)
    # a tag counted on no clip is no candidate
    assert (system.k, system.num_clips, system.num_candidates) == (3, 4, 4)
    assert system.extractor == {"type": "hand"}
    assert system == TagSystem.from_tag_lists(CLIPS, 3)
    # one clip, one tag seen once: a vocabulary of one, score 1 ln(2/2) = 0
    single = TagSystem.from_document_frequency({"dog": 1}, 1, 1)
    assert (single.names, single.df, single.scores, single.num_candidates) == (("dog",), (1,), (0.0,), 1)


@pytest.mark.parametrize("num_clips", [0, -2])
def test_the_number_of_clips_must_be_positive(num_clips):
    with pytest.raises(ValueError, match=f"the number of clips must be positive, got {num_clips}"):
        TagSystem.from_document_frequency({"a": 1}, num_clips, 2)


def test_no_tag_with_a_positive_count_is_refused():
    with pytest.raises(ValueError, match="^no tags to choose from: every clip's tag list is empty$"):
        TagSystem.from_document_frequency({"a": 0}, 3, 2)


# ------------------------------------------------------------------------------------------- TagSystem


def test_post_init_stores_df_and_scores_as_tuples():
    system = system_of(["a", "b"], df=[2, 1], scores=iter([0.5, 0.25]))
    assert system.df == (2, 1) and system.scores == (0.5, 0.25)
    assert type(system.df) is tuple and type(system.scores) is tuple
    assert system_of(["a"]).df is None and system_of(["a"]).scores is None


@pytest.mark.parametrize("name, given", [("df", 1), ("df", 3), ("scores", 1), ("scores", 3)])
def test_post_init_wants_one_value_per_tag(name, given):
    with pytest.raises(ValueError, match=f"^{name} needs one value per tag: {given} for 2 tags$"):
        system_of(["a", "b"], **{name: [1] * given})


def test_metadata_fields():
    system = TagSystem.from_tag_lists(CLIPS, 2, extractor={"type": "hand", "n": 1})
    assert system.metadata() == {
        "format": "hf_audiorep.tag_system",
        "format_version": 1,
        "k": 2,
        "vocabulary_size": 2,
        "num_clips": 4,
        "num_candidate_tags": 4,
        "score": "df * log((N + 1) / (df + 1))",
        "tie_break": "tag string, ascending",
        "extractor": {"type": "hand", "n": 1},
        "tags": [
            {"id": 0, "tag": "wind", "df": 2, "score": system.scores[0]},
            {"id": 1, "tag": "bird", "df": 1, "score": system.scores[1]},
        ],
    }
    bare = system_of(["x", "y"]).metadata()
    assert bare["tags"] == [{"id": 0, "tag": "x"}, {"id": 1, "tag": "y"}]
    assert (bare["k"], bare["vocabulary_size"], bare["num_clips"], bare["extractor"]) == (None, 2, None, None)
    scores_only = system_of(["x"], scores=[0.5]).metadata()["tags"]
    assert scores_only == [{"id": 0, "tag": "x", "score": 0.5}]


# ------------------------------------------------------------------------------------------- files

LABEL_TEXT = '{\n  "0": "café",\n  "1": "dog"\n}\n'


def test_the_saved_files_exact_text_and_name(tmp_path):
    system = system_of(["café", "dog"], k=7, num_clips=3, df=[2, 1], scores=[0.5, 0.25], num_candidates=5)
    path = system.save(tmp_path / "run")
    assert path == tmp_path / "run" / "label_7.json"  # named by K, not by the vocabulary's size
    assert path.read_bytes() == LABEL_TEXT.encode("utf-8")  # two-space indent, UTF-8 unescaped, a newline
    meta_text = (tmp_path / "run" / "label_7.meta.json").read_text(encoding="utf-8")
    assert meta_text == json.dumps(system.metadata(), indent=2, ensure_ascii=False) + "\n"
    assert '\n  "format_version": 1,\n' in meta_text and '"tag": "café"' in meta_text
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["label_7.json", "label_7.meta.json"]
    # without K, the vocabulary's size names the file
    assert system_of(["a", "b", "c"]).save(tmp_path / "bare").name == "label_3.json"


def test_save_to_new_nested_folders_and_again(tmp_path):
    system = system_of(["a", "b"], k=2)
    folder = tmp_path / "a" / "b"
    assert system.save(folder) == folder / "label_2.json"
    assert system.save(folder) == folder / "label_2.json"  # the folder exists already
    named = tmp_path / "c" / "d" / "tags.json"
    assert system.save(named) == named and named.is_file()
    assert (tmp_path / "c" / "d" / "tags.meta.json").is_file()
    assert system.save(named) == named  # its folder exists already
    beside = tmp_path / "mine.json"  # in a folder that exists
    assert system.save(beside) == beside and beside.is_file()
    assert TagSystem.from_pretrained(beside) == system


def test_round_trips_keep_the_id_order(tmp_path):
    system = TagSystem.from_tag_lists(CLIPS, 4, extractor={"type": "hand"})
    path = system.save(tmp_path / "repo")
    for source in (path, tmp_path / "repo", str(tmp_path / "repo")):
        loaded = TagSystem.from_pretrained(source)
        assert loaded == system and loaded.extractor == {"type": "hand"}
        assert loaded.id2label == {0: "wind", 1: "bird", 2: "dog", 3: "rain"}
    assert TagSystem.from_pretrained(tmp_path / "repo", k=4) == system
    assert TagSystem.from_pretrained(tmp_path / "repo", "label_4.json", k=9) == system  # filename wins


def test_a_label_file_not_named_json_and_a_sidecar_elsewhere(tmp_path):
    system = system_of(["a", "b"], k=2, num_clips=3, df=[1, 1], scores=[0.4, 0.4], num_candidates=2)
    label = tmp_path / "labels"
    label.write_text(json.dumps(system.label_file()))
    (tmp_path / "labels.meta.json").write_text(json.dumps(system.metadata()))  # name + ".meta.json"
    assert TagSystem.from_label_file(label) == system
    elsewhere = tmp_path / "meta" / "sidecar.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps({**system.metadata(), "num_clips": 99}))
    assert TagSystem.from_label_file(label, meta_path=elsewhere).num_clips == 99


def test_label_files_with_ids_out_of_order_or_as_a_list(tmp_path):
    path = tmp_path / "label_3.json"
    path.write_text(json.dumps({"2": "c", "0": "a", "1": "b"}))
    assert TagSystem.from_label_file(path).names == ("a", "b", "c")
    path.write_text(json.dumps(["speech", "music"]))
    loaded = TagSystem.from_label_file(path)
    assert loaded.names == ("speech", "music") and loaded.df is None and loaded.k is None
    assert TagSystem.from_config({2: "c", 0: "a", 1: "b"}).id2label == {0: "a", 1: "b", 2: "c"}


def test_a_sidecar_missing_some_values_keeps_the_others(tmp_path):
    path = tmp_path / "label_2.json"
    path.write_text(json.dumps({"0": "a", "1": "b"}))
    meta = {
        "k": 2,
        "tags": [{"id": 0, "tag": "a", "score": 0.5}, {"id": 1, "tag": "b", "df": 1, "score": 0.25}],
    }
    (tmp_path / "label_2.meta.json").write_text(json.dumps(meta))
    loaded = TagSystem.from_label_file(path)
    assert loaded.df is None and loaded.scores == (0.5, 0.25) and loaded.k == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ({"0": "a", "2": "b"}, "label-file ids must run 0..1 without gaps"),
        ({"1": "a", "2": "b", "3": "c"}, "label-file ids must run 0..2 without gaps"),
        ({"zero": "a"}, 'label-file keys must be class ids such as "0", "1"'),
        ("a tag", 'a label file is a JSON object {"0": "tag", ...}'),
        (7, 'a label file is a JSON object {"0": "tag", ...}'),
        ({}, "a label file needs at least one tag, each a non-empty string"),
        ([], "a label file needs at least one tag, each a non-empty string"),
        ({"0": 5}, "a label file needs at least one tag, each a non-empty string"),
        (["a", ""], "a label file needs at least one tag, each a non-empty string"),
    ],
)
def test_bad_label_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "label_1.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"^{re.escape(f'{path}: {message}')}$"):
        TagSystem.from_label_file(path)


def test_a_sidecar_for_other_tags_is_refused_naming_the_file(tmp_path):
    path = system_of(["a", "b"], k=2).save(tmp_path)
    path.write_text(json.dumps({"0": "b", "1": "a"}))
    message = f"{path}: the sidecar's tags do not match the label file's (edited by hand?)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TagSystem.from_label_file(path)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="^expected a config with an id2label mapping, got int$"):
        TagSystem.from_config(42)
    with pytest.raises(ValueError, match=r"^id2label: label-file ids must run 0\.\.1 without gaps$"):
        TagSystem.from_config({0: "a", 2: "b"})


def test_folders_with_no_or_several_label_files(tmp_path):
    (tmp_path / "README.md").write_text("# tags\n")
    (tmp_path / "label_5.meta.json").write_text("{}")  # a sidecar is no label file
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'{tmp_path} has no label_<K>.json file')}; "):
        TagSystem.from_pretrained(tmp_path)
    for k in (4, 2):
        system_of([f"t{i}" for i in range(k)], k=k).save(tmp_path)
    several = f"{tmp_path} has several label files (label_2.json, label_4.json); pass filename= or k="
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(several)}$"):
        TagSystem.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(f'{tmp_path} has no label_9.json')}$"):
        TagSystem.from_pretrained(tmp_path, k=9)


# ------------------------------------------------------------------------------------------- the Hub


class HubRecorder:
    """Stands in for huggingface_hub's download functions and HfApi, recording every call."""

    def __init__(self, files: dict, listing=(), fail=None):
        self.files = files  # repository file name -> local path (or an exception to raise)
        self.listing = list(listing)
        self.fail = fail  # raised by every call when set
        self.calls = []

    def hf_hub_download(self, *args, **kwargs):
        self.calls.append(("hf_hub_download", args, kwargs))
        if self.fail is not None:
            raise self.fail
        found = self.files.get(args[1])
        if found is None:
            raise EntryNotFoundError(f"{args[1]} is not in the repository")
        if isinstance(found, BaseException):
            raise found
        return str(found)

    def api_class(self):
        recorder = self

        class Api:
            def __init__(self, **kwargs):
                recorder.calls.append(("HfApi", (), kwargs))

            def list_repo_files(self, repo_id, **kwargs):
                recorder.calls.append(("list_repo_files", (repo_id,), kwargs))
                return recorder.listing

            def create_repo(self, *args, **kwargs):
                recorder.calls.append(("create_repo", args, kwargs))
                if recorder.fail is not None:
                    raise recorder.fail

            def upload_file(self, **kwargs):
                recorder.calls.append(("upload_file", (), kwargs))
                return f"commit {len(recorder.calls)}"

        return Api

    def install(self, monkeypatch):
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", self.hf_hub_download)
        monkeypatch.setattr(huggingface_hub, "HfApi", self.api_class())
        return self


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """A system saved as a Hub repository would serve it: label file and sidecar in different cache
    folders (blobs), so that the sidecar is found only through its own download."""
    monkeypatch.chdir(tmp_path)  # "someone/uts-tags" is no local folder
    system = TagSystem.from_tag_lists(CLIPS, 3, extractor={"type": "hand"})
    label = system.save(tmp_path / "blobs" / "one" / "x.json")
    meta = tmp_path / "blobs" / "two" / "y.json"
    meta.parent.mkdir(parents=True)
    (tmp_path / "blobs" / "one" / "x.meta.json").rename(meta)
    return system, {"label_3.json": label, "label_3.meta.json": meta}


def test_from_the_hub_every_argument_reaches_the_download(saved, monkeypatch, tmp_path):
    system, files = saved
    hub = HubRecorder(files).install(monkeypatch)
    loaded = TagSystem.from_pretrained(
        REPO, k=3, repo_type="dataset", revision="v1", cache_dir=tmp_path / "c", token="tok"
    )
    assert loaded == system and loaded.extractor == {"type": "hand"}
    common = {"cache_dir": tmp_path / "c", "repo_type": "dataset", "revision": "v1", "token": "tok"}
    assert hub.calls == [
        ("hf_hub_download", (REPO, "label_3.json"), common),
        ("hf_hub_download", (REPO, "label_3.meta.json"), common),
    ]


def test_from_the_hub_the_only_label_file_is_found_by_listing(saved, monkeypatch):
    system, files = saved
    hub = HubRecorder(files, listing=["README.md", "label_3.json", "label_3.meta.json"]).install(monkeypatch)
    assert TagSystem.from_pretrained(REPO, revision="v2", token="tok") == system
    assert hub.calls[:2] == [
        ("HfApi", (), {"token": "tok"}),
        ("list_repo_files", (REPO,), {"repo_type": "model", "revision": "v2"}),
    ]
    assert [c[1][1] for c in hub.calls[2:]] == ["label_3.json", "label_3.meta.json"]

    hub.listing = ["README.md"]
    message = f"{REPO} has no label_<K>.json file; pass filename= or k="
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}$"):
        TagSystem.from_pretrained(REPO)


@pytest.mark.parametrize(
    "missing", [EntryNotFoundError("gone"), LocalEntryNotFoundError("gone"), OSError("x")]
)
def test_from_the_hub_a_bare_label_file_has_no_sidecar(saved, monkeypatch, missing):
    system, files = saved
    HubRecorder({**files, "label_3.meta.json": missing}).install(monkeypatch)
    loaded = TagSystem.from_pretrained(REPO, "label_3.json")
    assert loaded.names == system.names and loaded.df is None and loaded.k is None


@pytest.mark.parametrize("path", ["./tags", "/tmp/none/tags", "/tags", "~/tags", "a/b/c", "someone/x.json"])
def test_a_missing_path_is_no_hub_id(saved, monkeypatch, path):
    hub = HubRecorder(saved[1]).install(monkeypatch)
    with pytest.raises(FileNotFoundError, match=f"^no such file or folder: {re.escape(path)}$"):
        TagSystem.from_pretrained(path, k=3)
    assert hub.calls == []


def test_from_the_hub_offline_is_one_clear_line(saved, monkeypatch):
    HubRecorder(saved[1], fail=OfflineModeIsEnabled("offline")).install(monkeypatch)
    with pytest.raises(HubUnreachableError) as caught:
        TagSystem.from_pretrained(REPO, k=3)
    assert str(caught.value) == (
        f"cannot reach the Hugging Face Hub for model {REPO}: offline mode is on (HF_HUB_OFFLINE or "
        "HF_DATASETS_OFFLINE) and no copy is cached; unset it, with a network, to download; "
        "or pass a local label file"
    )
    assert caught.value.repo_id == REPO


def test_push_to_hub_passes_every_argument(monkeypatch):
    system = system_of(["café", "dog"], k=7)
    hub = HubRecorder({})
    api = hub.api_class()()
    hub.calls.clear()
    commits = system.push_to_hub(REPO, api=api, repo_type="dataset", private=False, revision="v3")
    assert commits == ["commit 2", "commit 3"]
    message = "Add the 2-tag vocabulary label_7.json"
    meta_text = json.dumps(system.metadata(), indent=2, ensure_ascii=False) + "\n"
    upload = {"repo_id": REPO, "repo_type": "dataset", "revision": "v3", "commit_message": message}
    assert hub.calls == [
        ("create_repo", (REPO,), {"repo_type": "dataset", "private": False, "exist_ok": True}),
        (
            "upload_file",
            (),
            {"path_or_fileobj": LABEL_TEXT.encode(), "path_in_repo": "label_7.json", **upload},
        ),
        (
            "upload_file",
            (),
            {"path_or_fileobj": meta_text.encode(), "path_in_repo": "label_7.meta.json", **upload},
        ),
    ]


def test_push_to_hub_with_its_own_api_a_file_name_and_a_message(monkeypatch):
    hub = HubRecorder({}).install(monkeypatch)
    system_of(["a"]).push_to_hub(REPO, "tags", token="tok", commit_message="mine")
    assert hub.calls[0] == ("HfApi", (), {"token": "tok"})
    uploads = [c[2] for c in hub.calls if c[0] == "upload_file"]
    assert [(u["path_in_repo"], u["commit_message"], u["repo_type"]) for u in uploads] == [
        ("tags", "mine", "model"),
        ("tags.meta.json", "mine", "model"),
    ]


def test_push_to_hub_offline_is_one_clear_line(monkeypatch):
    HubRecorder({}, fail=OfflineModeIsEnabled("offline")).install(monkeypatch)
    with pytest.raises(HubUnreachableError) as caught:
        system_of(["a"]).push_to_hub(REPO)
    assert str(caught.value) == (
        f"cannot upload model {REPO}: offline mode is on (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE to "
        "publish, with a network and the token (`hf auth login` or HF_TOKEN)"
    )
    assert caught.value.repo_id == REPO
