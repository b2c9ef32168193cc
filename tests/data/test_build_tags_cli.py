"""``hf-audiorep build-tags``: the embedded corpus, JSON-lines manifests, a local LLM, and its errors."""

import json

import pytest

from hf_audiorep.cli import main
from hf_audiorep.data.tags import TagSystem

CAPTIONS = [
    "A dog barks in a quiet park.",
    "Rain falls on a tin roof at night.",
    "A man speaks slowly in a large hall.",
    "An acoustic guitar plays a fast tune in a large hall.",
    "A dog barks twice as rain falls.",
    "The sound of it.",  # no tag at all: dropped and counted
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read_json(path):
    return json.loads(path.read_text())


def test_build_tags_on_a_small_embedded_corpus(tmp_path, capsys):
    out = tmp_path / "tags"
    assert main(["build-tags", "--num_clips", "16", "--k", "5", "500", "--output_dir", str(out)]) == 0
    summary = read_json(out / "summary.json")
    assert summary["dataset"] == "embedded" and summary["k"] == [5, 500]
    small, large = summary["results"]["5"], summary["results"]["500"]
    assert small["vocabulary_size"] == 5 and small["num_clips"] == 16
    assert large["vocabulary_size"] == large["num_candidate_tags"] > 5  # fewer tags than K: all of them
    assert small["num_kept"] + small["num_dropped"] == 16
    labels = read_json(out / "label_5.json")
    assert sorted(labels, key=int) == ["0", "1", "2", "3", "4"]
    system = TagSystem.from_pretrained(out, k=5)
    assert list(system.names) == [labels[str(i)] for i in range(5)]
    assert system.num_clips == 16 and system.extractor["extractor"]["type"] == "KeywordTagExtractor"
    assert [t["tag"] for t in small["top_tags"]] == list(system.names)
    assert (out / "label_500.json").is_file() and (out / "label_500.meta.json").is_file()
    printed = capsys.readouterr().out
    assert "K=5: 5 tags" in printed and "summary.json" in printed


def test_build_tags_on_a_jsonl_manifest_with_captions(tmp_path):
    manifest = write_jsonl(tmp_path / "clips.jsonl", [{"id": i, "text": c} for i, c in enumerate(CAPTIONS)])
    out = tmp_path / "out"
    argv = ["build-tags", "--dataset", str(manifest), "--caption_column", "text", "--k", "4", "3"]
    assert main([*argv, "--min_term_df", "2", "--output_dir", str(out)]) == 0
    results = read_json(out / "summary.json")["results"]
    # df (N = 6): dog, bark, rain, fall, large hall 2 -> 2 ln(7/3) = 1.69; the df-1 tags ln(7/2) = 1.25
    assert read_json(out / "label_4.json") == {"0": "bark", "1": "dog", "2": "fall", "3": "large hall"}
    assert read_json(out / "label_3.json") == {"0": "bark", "1": "dog", "2": "fall"}
    assert results["4"]["num_clips"] == results["3"]["num_clips"] == 6
    assert results["4"]["num_clips_without_tags"] == 1  # "The sound of it."
    assert results["4"]["num_dropped"] == 1
    assert results["3"]["num_dropped"] == 3  # and the two large-hall clips, which keep no tag of the 3
    assert results["4"]["source"]["captions"] == "column 'text'"


def test_build_tags_with_tags_given_directly_in_a_nested_manifest(tmp_path):
    records = [
        {"id": "a", "supervisions": [{"audio_tag": "speech;male;indoor"}]},
        {"id": "b", "supervisions": [{"audio_tag": "music;guitar;indoor"}]},
        {"id": "c", "supervisions": [{"audio_tag": "speech;female"}]},
        {"id": "d", "supervisions": [{"audio_tag": ""}]},
    ]
    manifest = write_jsonl(tmp_path / "cuts.jsonl", records)
    out = tmp_path / "out"
    argv = ["build-tags", "--dataset", str(manifest), "--tags_column", "supervisions.0.audio_tag"]
    assert main([*argv, "--k", "2", "--output_dir", str(out)]) == 0
    assert read_json(out / "label_2.json") == {"0": "indoor", "1": "speech"}
    result = read_json(out / "summary.json")["results"]["2"]
    assert (result["num_clips"], result["num_clips_without_tags"], result["num_dropped"]) == (4, 1, 1)


def test_build_tags_with_a_local_text_generation_model(tmp_path):
    from test_tag_system import tiny_text_generation_pipeline

    pipe, _ = tiny_text_generation_pipeline()
    model_dir = tmp_path / "tiny-llm"
    pipe.model.save_pretrained(model_dir)
    pipe.tokenizer.save_pretrained(model_dir)
    manifest = write_jsonl(tmp_path / "clips.jsonl", [{"caption": c} for c in CAPTIONS])
    out = tmp_path / "out"
    argv = ["build-tags", "--dataset", str(manifest), "--extractor", str(model_dir), "--k", "3"]
    code = None
    try:
        code = main([*argv, "--max_new_tokens", "8", "--device", "cpu", "--output_dir", str(out)])
    except SystemExit as err:  # a random model may say nothing usable: then the error must say so
        assert "no clip got a tag" in str(err)
        return
    assert code == 0
    meta = read_json(out / "label_3.meta.json")
    assert meta["extractor"]["extractor"]["type"] == "LLMTagExtractor"
    assert meta["extractor"]["extractor"]["generate_kwargs"]["do_sample"] is False


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--caption_column", "description"], "no captions column 'description'"),
        (["--tags_column", "labels"], "no tags column 'labels'"),
        (["--dataset", "{empty}"], "no clips"),
        (["--dataset", "{silent}"], "no clip got a tag"),
        (["--dataset", "./missing/clips.jsonl"], "no such file or folder"),
    ],
)
def test_build_tags_errors_are_one_line(tmp_path, extra, message):
    manifest = write_jsonl(tmp_path / "clips.jsonl", [{"caption": c} for c in CAPTIONS])
    (tmp_path / "empty.jsonl").write_text("\n")
    write_jsonl(tmp_path / "silent.jsonl", [{"caption": "The sound of it."}, {"caption": ""}])
    extra = [e.format(empty=tmp_path / "empty.jsonl", silent=tmp_path / "silent.jsonl") for e in extra]
    argv = ["build-tags", "--dataset", str(manifest), *extra, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as err:
        main(argv)
    assert message in str(err.value) and str(err.value).startswith("hf-audiorep build-tags: error:")
    assert not (tmp_path / "out" / "summary.json").exists()


@pytest.mark.parametrize("k", ["0", "-5", "many"])
def test_build_tags_refuses_a_bad_k(tmp_path, capsys, k):
    with pytest.raises(SystemExit) as err:
        main(["build-tags", "--k", k, "--output_dir", str(tmp_path)])
    assert err.value.code == 2
    assert "--k" in capsys.readouterr().err


def test_build_tags_help_describes_every_option(capsys):
    with pytest.raises(SystemExit) as err:
        main(["build-tags", "--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    options = [
        "--dataset",
        "--split",
        "--caption_column",
        "--tags_column",
        "--audio_column",
        "--k",
        "--extractor",
        "--prompt",
        "--max_new_tokens",
        "--min_term_df",
        "--min_term_npmi",
        "--captioner",
        "--captioner_task",
        "--batch_size",
        "--device",
        "--num_clips",
        "--seed",
        "--output_dir",
        "--push_to_hub",
        "--private",
    ]
    for option in options:
        assert option in text
    assert text.count("\n  --") >= len(options)
