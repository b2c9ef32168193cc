"""The UTS recipe's text objectives run as users run them (UTS part 2): AR and PAR captioning, audio-text
contrastive and multi-task pre-training of the Zipformer, each saved with its processor (the tokenizer trained
on the corpus captions, as tests are offline), evaluated on the test split, and usable as documented:
``AutoProcessor`` + ``AutoModelForSpeechSeq2Seq`` + ``generate``, ``hf-audiorep caption``, the tagger of a
multi-task checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from recipe_utils import as_argv, load_recipe
from transformers import AutoModel, AutoModelForAudioClassification, AutoModelForSpeechSeq2Seq, AutoProcessor

from hf_audiorep import cli
from hf_audiorep.data.embedded import load_embedded_corpus
from hf_audiorep.modeling import (
    ZipformerForAudioClassification,
    ZipformerForAudioTextContrastive,
    ZipformerForConditionalGeneration,
    ZipformerModel,
)
from hf_audiorep.uts_text_recipe import UTSTextArguments, batch_text

pytestmark = pytest.mark.slow

CORPUS = {"clip_seconds": 1.0, "num_train_clips": 32, "num_eval_clips": 0, "num_test_clips": 12}


def _args(output_dir, objective, **overrides) -> list[str]:
    options = {
        **CORPUS,
        "objective": objective,
        "max_steps": 2,
        "per_device_batch_size": 8,
        "warmup_steps": 1,
        "checkpointing_steps": 0,
        "num_decode_threads": 1,
        "vocabulary_size": 12,
        "tokenizer_vocab_size": 300,
        "caption_max_new_tokens": 8,
        "probe_tasks": "events",
        "output_dir": str(output_dir),
        "cpu": "true",
        "disable_progress_bar": "true",
    }
    options.update(overrides)
    return as_argv(options)


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("pretrain_uts")


@pytest.fixture(scope="module")
def runs(recipe, tmp_path_factory):
    """One tiny run per text objective: {objective: (output dir, eval_results)}."""
    done = {}
    for objective in ("ar", "par", "contrastive", "multitask"):
        output = tmp_path_factory.mktemp(f"uts-{objective}")
        recipe.main(_args(output, objective))
        done[objective] = output, json.loads((output / "eval_results.json").read_text())
    return done


@pytest.mark.parametrize("objective", ["ar", "par", "multitask"])
def test_a_captioner_is_saved_with_its_processor_and_generates_the_same_text_after_loading(runs, objective):
    output, results = runs[objective]
    processor = AutoProcessor.from_pretrained(output)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(output).eval()
    assert isinstance(model, ZipformerForConditionalGeneration)
    assert model.config.tagging_head == (objective == "multitask")
    # the offline tokenizer trained on the captions, saved with the model: its ids are the decoder's
    assert len(processor.tokenizer) == model.config.decoder_config.vocab_size <= 300
    assert processor.tokenizer.mask_token_id == model.config.decoder_config.mask_token_id
    corpus = load_embedded_corpus(num_train=0, num_validation=0, num_test=8, num_heldout=0, clip_seconds=1.0)
    audio = corpus["test"].select(range(2))
    inputs = processor(
        audio=[np.asarray(a["array"], dtype=np.float32) for a in audio["audio"]],
        sampling_rate=16000,
        return_tensors="pt",
    )
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=6)
        parallel = model.parallel_generate(inputs["input_values"], inputs["attention_mask"], max_new_tokens=6)
    assert ids.shape[0] == parallel.shape[0] == 2
    assert all(isinstance(t, str) for t in processor.batch_decode(ids, skip_special_tokens=True))
    assert isinstance(AutoModel.from_pretrained(output), ZipformerModel)  # the encoder alone


def test_each_decoder_objective_is_scored_by_the_decodings_it_trains(runs):
    expected = {
        "ar": {"captioning"},
        "par": {"captioning_parallel"},
        "multitask": {"captioning", "captioning_parallel"},
    }
    for objective, sections in expected.items():
        _, results = runs[objective]
        assert results["objective"] == objective and results["text_field"] == "caption"
        assert {k for k in results if k.startswith("captioning")} == sections
        for section in sections:
            metrics = results[section]
            assert set(metrics) >= {"bleu_1", "bleu_4", "cider", "examples"}
            assert 0.0 <= metrics["bleu_4"] <= 1.0 and metrics["cider"] >= 0.0
            # the references are the test clips' captions
            assert metrics["examples"][0]["reference"].endswith(".")
        assert "retrieval" not in results
        assert set(results["probes"]) >= {"events/probe_mAP"} and results["probes_at_initialisation"]


def test_the_contrastive_model_is_scored_on_retrieval_and_zero_shot_tagging(runs):
    output, results = runs["contrastive"]
    assert set(results["retrieval"]) == {
        "audio_to_text_R@1", "audio_to_text_R@10", "text_to_audio_R@1", "text_to_audio_R@10"
    }  # fmt: skip
    assert all(0.0 <= v <= 1.0 for v in results["retrieval"].values())
    assert results["zero_shot"]["num_clips"] == CORPUS["num_test_clips"]
    assert 0.0 < results["zero_shot"]["chance_mAP"] < 1.0
    model = ZipformerForAudioTextContrastive.from_pretrained(output)
    processor = AutoProcessor.from_pretrained(output)
    # BERT-like: the text tower's tokenizer frames texts with [CLS] ... [SEP]
    assert processor.tokenizer("a dog").input_ids[0] == processor.tokenizer.cls_token_id
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert not any(k.startswith("captioning") for k in results)
    # two towers from scratch: the defaults that let InfoNCE leave its collapsed start
    assert (model.config.text_pooling, model.config.text_frames_norm) == ("mean", "batch")


def test_a_multitask_checkpoint_is_also_a_tagger_over_the_mined_tags(runs):
    output, results = runs["multitask"]
    tagger = AutoModelForAudioClassification.from_pretrained(output)
    captioner = ZipformerForConditionalGeneration.from_pretrained(output)
    assert isinstance(tagger, ZipformerForAudioClassification)
    assert tagger.config.num_labels == results["num_labels"] == 12
    torch.testing.assert_close(tagger.classifier.weight, captioner.classifier.weight)


def test_hf_audiorep_caption_captions_a_file_with_the_recipes_output(runs, tmp_path, capsys):
    output, _ = runs["ar"]
    wav = tmp_path / "tone.wav"
    t = np.arange(16000) / 16000
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    assert cli.main(["caption", str(output), str(wav), "--json", "--max_new_tokens", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["file"] for line in lines] == [str(wav)] and isinstance(lines[0]["caption"], str)


def test_the_text_is_the_caption_or_the_canonical_tag_sequence():
    batch = {
        "caption": ["A dog barks.", "Rain falls."],
        "labels": torch.tensor([[1.0, 0, 1, 1], [0, 1, 0, 0]]),
    }
    assert batch_text("caption", "caption", ["x"] * 4)(batch) == ["A dog barks.", "Rain falls."]
    # the clip's tags in vocabulary order, joined by ", " (UTS's "tag_a, tag_d, tag_k")
    assert batch_text("tags", "caption", ["dog", "rain", "bark", "yard"])(batch) == [
        "dog, bark, yard",
        "rain",
    ]
    with pytest.raises(KeyError, match="transcript"):
        batch_text("caption", "transcript", [])(batch)


def test_the_tag_sequence_can_be_the_text(recipe, tmp_path):
    recipe.main(_args(tmp_path, "par", text_field="tags", probe_tasks="", max_steps=1))
    results = json.loads((tmp_path / "eval_results.json").read_text())
    assert results["text_field"] == "tags"
    reference = results["captioning_parallel"]["examples"][0]["reference"]
    vocabulary = json.loads(next(tmp_path.glob("label_12.json")).read_text())
    names = list(vocabulary.values()) if isinstance(vocabulary, dict) else list(vocabulary)
    tags = reference.split(", ")
    assert set(tags) <= set(names) and tags == sorted(tags, key=names.index)


def test_parallel_decoding_prob_defaults_follow_the_objective():
    args = UTSTextArguments()
    assert (args.parallel_prob("ar"), args.parallel_prob("par"), args.parallel_prob("multitask")) == (
        0.0,
        1.0,
        0.75,
    )
    assert UTSTextArguments(parallel_decoding_prob=0.3).parallel_prob("par") == 0.3


def test_a_captioner_run_resumes_exactly_with_its_tied_lm_head(recipe, tmp_path):
    # accelerate drops the LM head (tied to the token embedding) from a checkpoint: resuming must retie it.
    from safetensors.torch import load_file

    common = {"probe_tasks": "", "max_steps": 4, "checkpointing_steps": 2, "num_test_clips": 8}
    recipe.main(_args(tmp_path / "a", "ar", **common))
    step_2 = tmp_path / "a" / "checkpoints" / "step_2"
    recipe.main(_args(tmp_path / "b", "ar", resume_from_checkpoint=str(step_2), **common))
    whole, resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("a", "b"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)


def test_with_ontology_labels_the_tag_sequence_is_the_clips_event_names(recipe, tmp_path):
    from hf_audiorep.data.embedded import EMBEDDED_ONTOLOGY

    recipe.main(_args(tmp_path, "ar", labels="ontology", text_field="tags", probe_tasks="", max_steps=1))
    results = json.loads((tmp_path / "eval_results.json").read_text())
    reference = results["captioning"]["examples"][0]["reference"]
    names = list(EMBEDDED_ONTOLOGY.names)
    events = reference.split(", ")
    assert set(events) <= set(names) and events == sorted(events, key=names.index)


@pytest.mark.parametrize("objective", ["ar", "contrastive"])
def test_a_text_objective_continues_from_a_saved_tagger(recipe, tmp_path, objective):
    # --model_name_or_path: the saved encoder is the one the text objective starts from, so its probe at
    # initialisation is the tagger's final probe, number for number.
    recipe.main(_args(tmp_path / "tagger", "mtc", max_steps=1))
    tagger = json.loads((tmp_path / "tagger" / "eval_results.json").read_text())
    recipe.main(_args(tmp_path / "text", objective, max_steps=1, model_name_or_path=str(tmp_path / "tagger")))
    results = json.loads((tmp_path / "text" / "eval_results.json").read_text())
    assert results["probes_at_initialisation"]["events/probe_mAP"] == tagger["probes"]["events/probe_mAP"]
    assert results["objective"] == objective
    if objective == "contrastive":
        # a trained audio encoder keeps its plain frames; the new text tower, from scratch, is mean-pooled
        config = ZipformerForAudioTextContrastive.from_pretrained(tmp_path / "text").config
        assert (config.text_pooling, config.text_frames_norm) == ("mean", "none")


def test_contrastive_start_defaults_follow_what_is_pre_trained(tmp_path):
    from transformers import BertConfig

    from hf_audiorep.modeling import ZipformerConfig
    from hf_audiorep.uts_text_recipe import _contrastive_start

    ZipformerConfig.from_preset("zipformer-small").save_pretrained(tmp_path / "encoder")
    ZipformerConfig.from_preset("zipformer-small", text_config=BertConfig()).save_pretrained(
        tmp_path / "clap"
    )
    fresh = UTSTextArguments()
    assert _contrastive_start(fresh, None) == {"text_pooling": "mean", "text_frames_norm": "batch"}
    assert _contrastive_start(fresh, str(tmp_path / "encoder")) == {"text_pooling": "mean"}
    assert _contrastive_start(fresh, str(tmp_path / "clap")) == {"text_pooling": "cls"}
    assert _contrastive_start(UTSTextArguments(text_encoder_init="bert"), None) == {
        "text_pooling": "cls", "text_frames_norm": "batch"
    }  # fmt: skip
    given = UTSTextArguments(text_pooling="cls", text_frames_norm="none")
    assert _contrastive_start(given, None) == {"text_pooling": "cls"}  # the given norm is set by the caller


class _Rank:
    """A stand-in for accelerate's PartialState: which process this is, and its barriers."""

    def __init__(self, main: bool):
        self.is_main_process, self.barriers = main, 0

    def wait_for_everyone(self):
        self.barriers += 1


def test_the_run_tokenizer_is_trained_once_for_every_rank_and_a_resume(tmp_path, monkeypatch):
    from hf_audiorep import uts_text_recipe
    from hf_audiorep.uts_text_recipe import run_tokenizer

    texts = [f"a dog barks {i} times while rain falls on the roof of house {i % 7}" for i in range(40)]
    args = UTSTextArguments(tokenizer="corpus", tokenizer_vocab_size=120)
    main_rank = _Rank(main=True)
    main = run_tokenizer(main_rank, "contrastive", args, texts, tmp_path, resuming=False)
    assert main_rank.barriers == 1 and (tmp_path / "tokenizer" / "tokenizer.json").exists()

    # Every other reader takes the main process's ids; none trains its own (WordPiece training is not
    # reproducible: another rank, or a resumed run, would get other ids for the same words).
    def trained_again(*args):
        raise AssertionError("a second tokenizer was trained")

    monkeypatch.setattr(uts_text_recipe, "text_tokenizer", trained_again)
    other_rank = _Rank(main=False)
    other = run_tokenizer(other_rank, "contrastive", args, texts, tmp_path, resuming=False)
    assert other_rank.barriers == 1 and other.get_vocab() == main.get_vocab()
    resumed = run_tokenizer(_Rank(main=True), "contrastive", args, texts, tmp_path, resuming=True)
    assert resumed.get_vocab() == main.get_vocab()
    # A new run in the same folder (not a resume) trains its own.
    with pytest.raises(AssertionError, match="trained"):
        run_tokenizer(_Rank(main=True), "contrastive", args, texts, tmp_path, resuming=False)
