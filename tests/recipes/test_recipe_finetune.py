"""End to end: the fine-tuning recipe on a tiny embedded corpus, then every way users load the result."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from recipe_utils import load_recipe, tiny_finetune_args
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification, pipeline

import hf_audiorep
from hf_audiorep import cli
from hf_audiorep.data.embedded import SCENE_CLASSES
from hf_audiorep.modeling import AudioFbankFeatureExtractor
from hf_audiorep.modeling._heads import CosineClassifier
from hf_audiorep.objectives import AugmentationArguments, SupervisedClassificationStep

TINY = tiny_finetune_args()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    recipe = load_recipe("finetune")
    summary = recipe.main(
        TINY
        + ["--output_dir", str(out), "--max_steps", "6", "--eval_steps", "3", "--checkpointing_steps", "3"]
    )
    return out, summary, recipe


def test_recipe_trains_evaluates_and_saves(trained):
    out, summary, _ = trained
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    results = json.loads((out / "eval_results.json").read_text())
    assert 0.0 < results["test_mAP"] <= 1.0
    assert results["test_num_clips"] == 48 and results["dataset"] == "embedded"
    assert "eval_mAP" in summary
    config = json.loads((out / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert len(config["id2label"]) == results["test_num_classes_evaluated"] or len(config["id2label"]) >= 30


def test_recipe_resumes_from_latest_checkpoint(trained, tmp_path):
    out, _, recipe = trained
    summary = recipe.main(
        TINY
        + [
            "--output_dir",
            str(out),
            "--max_steps",
            "8",
            "--eval_steps",
            "100",
            "--checkpointing_steps",
            "3",
            "--resume_from_checkpoint",
            "latest",
        ]
    )
    train_results = json.loads((out / "train_results.json").read_text())
    assert train_results["global_step"] == 8
    assert summary["global_step"] == 8


def _eval_mode_scores(out: Path, split: str):
    """The mAP of the saved model, in eval mode, on ``split`` of the corpus the tiny run used, computed here
    with the model's own forward rather than with the library's evaluation."""
    from hf_audiorep.data import AudioStream, load_embedded_corpus
    from hf_audiorep.data.sources import load_audio_source
    from hf_audiorep.evaluation import mean_average_precision

    model = AutoModelForAudioClassification.from_pretrained(out).eval()
    fe = AutoFeatureExtractor.from_pretrained(out)
    corpus = load_embedded_corpus(num_train=48, num_validation=16, num_test=48, clip_seconds=2.0)
    source = load_audio_source(corpus[split])
    stream = AudioStream(source, batch_size=8, sample_rate=16000, clip_seconds=2.0, train=False)
    logits, targets = [], []
    with torch.no_grad():
        for batch in stream:
            features, mask = fe.batch_features(batch["waveforms"], batch["lengths"])
            logits.append(model(input_values=features, attention_mask=mask).logits)
            targets.append(batch["labels"])
    return mean_average_precision(torch.cat(logits), torch.cat(targets))


def test_eval_and_test_metrics_are_the_eval_mode_model_on_their_own_splits(trained):
    """The periodic evaluation reads the validation split (16 clips) and the final test metric the test
    split (48 clips), both with the model in eval mode (no patch-out, no dropout): each equals the saved
    model's mAP on its split computed independently here."""
    out, _, _ = trained
    train_results = json.loads((out / "train_results.json").read_text())  # the last periodic evaluation
    test_results = json.loads((out / "eval_results.json").read_text())
    expected_eval, expected_test = _eval_mode_scores(out, "validation"), _eval_mode_scores(out, "test")
    assert train_results["eval_num_clips"] == expected_eval.num_clips == 16, "eval read another split"
    assert train_results["eval_mAP"] == pytest.approx(expected_eval.mAP, abs=1e-6)
    assert test_results["test_num_clips"] == expected_test.num_clips == 48
    assert test_results["test_mAP"] == pytest.approx(expected_test.mAP, abs=1e-6), (
        "the test mAP is not the eval-mode model's on the test split"
    )


def test_auto_classes_and_pipeline_load_the_saved_model(trained):
    out, _, _ = trained
    model = AutoModelForAudioClassification.from_pretrained(out).eval()
    assert isinstance(model, hf_audiorep.AudioMAEForAudioClassification)
    encoder = AutoModel.from_pretrained(out).eval()
    fe = AutoFeatureExtractor.from_pretrained(out)
    assert isinstance(fe, hf_audiorep.AudioFbankFeatureExtractor) and fe.target_length == 208
    wave = np.random.default_rng(0).normal(scale=0.1, size=32000).astype(np.float32)
    inputs = fe(wave, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        pooled = encoder(**inputs).pooler_output
        logits = model(**inputs).logits
    assert pooled.shape == (1, model.config.hidden_size)
    tagger = pipeline("audio-classification", model=str(out), function_to_apply="sigmoid")
    preds = tagger(wave, top_k=5)
    assert len(preds) == 5
    expected = torch.sigmoid(logits[0]).sort(descending=True).values[:5]
    np.testing.assert_allclose([p["score"] for p in preds], expected.numpy(), atol=1e-5)
    # Without function_to_apply, transformers >= 5.23 picks sigmoid from the multi-label problem_type.
    assert sum(p["score"] for p in tagger(wave, top_k=None)) != pytest.approx(1.0, abs=1e-3)


def test_pipeline_and_feature_extractor_bad_input(trained):
    out, _, _ = trained
    tagger = pipeline("audio-classification", model=str(out), function_to_apply="sigmoid")
    fe = tagger.feature_extractor
    rng = np.random.default_rng(1)
    # int16 PCM is scaled to [-1, 1] and gives the same answer as the float clip
    wave = rng.normal(scale=0.1, size=16000).astype(np.float32)
    pcm = np.round(wave * 32767).astype(np.int16)
    np.testing.assert_allclose(
        [p["score"] for p in tagger(pcm)], [p["score"] for p in tagger(wave)], atol=2e-3
    )
    # another sampling rate given as a dict is resampled by the pipeline
    assert (
        len(tagger({"array": rng.normal(size=44100).astype(np.float32), "sampling_rate": 44100}, top_k=5))
        == 5
    )
    with pytest.raises(ValueError, match="single channel"):
        tagger(rng.normal(size=(2, 16000)).astype(np.float32))
    with pytest.raises(ValueError, match="(?i)empty|samples"):
        tagger(np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="(?i)nan"):
        tagger(np.full(16000, np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="8000"):
        fe(wave, sampling_rate=8000)
    hour = np.zeros(16000 * 3600, dtype=np.float32)
    assert fe(hour, sampling_rate=16000, return_tensors="pt")["input_values"].shape == (1, 208, 128)


def test_cli_tag_and_info(trained, tmp_path, capsys):
    out, _, _ = trained
    wav = tmp_path / "clip.wav"
    t = np.arange(16000 * 5) / 16000
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    stereo = tmp_path / "stereo48k.flac"
    sf.write(stereo, np.stack([np.sin(2 * np.pi * 300 * t[:48000])] * 2, axis=1) * 0.2, 48000)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really audio")
    status = cli.main(
        ["tag", str(wav), str(stereo), str(broken), "--model", str(out), "--top_k", "3", "--json"]
    )
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [Path(r["file"]).name for r in lines] == ["clip.wav", "stereo48k.flac"]
    assert all(len(r["labels"]) == 3 and 0 < r["labels"][0]["score"] < 1 for r in lines)
    assert "broken.wav" in captured.err and status == 1
    assert cli.main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model_type"] == "audiorep-audiomae" and info["parameters"] > 0


def _two_class_folder(root):
    """train/ and test/ folders of 1-s tones, one sub-folder per label."""
    t = np.arange(16000) / 16000
    for split in ("train", "test"):
        for label, freq in (("low", 300.0), ("high", 2000.0)):
            (root / split / label).mkdir(parents=True)
            for k in range(2):
                sf.write(root / split / label / f"{k}.wav", (0.3 * np.sin(2 * np.pi * freq * t)), 16000)
    return root


def _finetune_saved_model(recipe, saved, tmp_path, monkeypatch, *extra):
    """Fine-tunes ``saved`` for one step on a tiny folder; returns the clip lengths its streams used."""
    from hf_audiorep.data import arguments

    clip_seconds, real_stream = [], arguments.AudioStream

    def recording_stream(*args, **kwargs):
        clip_seconds.append(kwargs["clip_seconds"])
        return real_stream(*args, **kwargs)

    monkeypatch.setattr(arguments, "AudioStream", recording_stream)
    out = tmp_path / "tuned"
    options = ["--model_name_or_path", str(saved), "--dataset", str(_two_class_folder(tmp_path / "data"))]
    options += ["--max_steps", "1", "--per_device_batch_size", "4", "--num_decode_threads", "1"]
    recipe.main(options + ["--cpu", "true", "--output_dir", str(out), *extra])
    return out, clip_seconds


def test_finetuning_a_saved_model_uses_its_window(trained, tmp_path, monkeypatch):
    saved, _, recipe = trained  # a 208-frame model: a 2.08-s window
    out, clip_seconds = _finetune_saved_model(recipe, saved, tmp_path, monkeypatch)
    assert clip_seconds and all(c == pytest.approx(2.08) for c in clip_seconds)
    assert AutoFeatureExtractor.from_pretrained(out).target_length == 208


def test_max_length_resizes_a_saved_model(trained, tmp_path, monkeypatch):
    saved, _, recipe = trained
    out, clip_seconds = _finetune_saved_model(recipe, saved, tmp_path, monkeypatch, "--max_length", "128")
    assert clip_seconds and all(c == pytest.approx(1.28) for c in clip_seconds)
    assert AutoFeatureExtractor.from_pretrained(out).target_length == 128
    assert json.loads((out / "config.json").read_text())["max_length"] == 128


def test_max_length_errors_for_a_saved_model(trained, tmp_path, monkeypatch):
    saved, _, recipe = trained
    with pytest.raises(ValueError, match="positive multiple of the patch size 16, got 100"):
        _finetune_saved_model(recipe, saved, tmp_path / "a", monkeypatch, "--max_length", "100")
    # An architecture with learned positions cannot take another length.
    monkeypatch.setattr(recipe, "_RESIZABLE_INPUT", ())
    with pytest.raises(ValueError, match="cannot be changed for a pre-trained 'audiorep-audiomae' model"):
        _finetune_saved_model(recipe, saved, tmp_path / "b", monkeypatch, "--max_length", "128")


def test_spec_augment_defaults_scale_to_the_input_and_explicit_values_stay():
    default = AugmentationArguments()
    assert (default.for_input(208, 128).time_mask, default.for_input(208, 128).freq_mask) == (39, 48)
    assert default.for_input(1024, 128).time_mask == 192
    explicit = AugmentationArguments(time_mask=150, freq_mask=0)
    assert (explicit.for_input(208, 128).time_mask, explicit.for_input(208, 128).freq_mask) == (150, 0)
    with pytest.raises(ValueError, match="time_mask must be >= 0"):
        AugmentationArguments(time_mask=-1)
    # The shared training step applies it, so every recipe and experiment gets widths sized to its input.
    step = SupervisedClassificationStep(AudioFbankFeatureExtractor(target_length=208), default)
    assert (step.aug.time_mask, step.aug.freq_mask) == (39, 48)


@pytest.mark.parametrize(
    "recipe", ["finetune", "pretrain_audiomae", "pretrain_cat", "distill", "pretrain_uts"]
)
def test_every_recipe_option_has_help(recipe, capsys):
    """`recipes/<name>.py --help` documents every option (HfArgumentParser alone showed only a few)."""
    module = load_recipe(recipe)
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    blocks = text.split("\n  --")[1:]
    assert len(blocks) > 40

    def is_syntax(word):  # option names, metavars (PRESET, [CPU]) and separators: not help text
        word = word.strip(",[]")
        return not word or word.startswith("-") or word.replace("_", "").isupper()

    undocumented = [b.split()[0] for b in blocks if all(is_syntax(w) for w in ("--" + b).split())]
    assert not undocumented, undocumented


def test_supervised_contrastive_teacher_saves_only_the_classifier(tmp_path, caplog):
    # ContrastASC's stage 1 on the scene corpus: CE + 0.25 x mixup-aware SupCon on a training-only projection
    out = tmp_path / "teacher"
    recipe = load_recipe("finetune")
    args = [
        "--dataset", "embedded-scenes", "--problem_type", "single_label_classification",
        "--preset", "audiomae-tiny", "--max_length", "112", "--num_train_clips", "22",
        "--num_eval_clips", "0", "--num_test_clips", "11", "--max_steps", "2", "--per_device_batch_size", "8",
        "--warmup_steps", "1", "--eval_steps", "0", "--checkpointing_steps", "0", "--num_decode_threads", "1",
        "--logging_steps", "1", "--supcon_weight", "0.25", "--output_dir", str(out), "--cpu", "true",
    ]  # fmt: skip
    with caplog.at_level("INFO"):
        recipe.main(args)
    assert '"supcon"' in caplog.text  # the contrastive term was trained and logged
    model = AutoModelForAudioClassification.from_pretrained(out)
    assert model.config.problem_type == "single_label_classification"
    assert list(model.config.id2label.values()) == list(SCENE_CLASSES)  # no output for a held-out scene
    assert not any("projection" in key for key in model.state_dict())
    assert json.loads((out / "eval_results.json").read_text())["test_num_clips"] == 11
    with pytest.raises(ValueError, match="cannot be combined"):
        recipe.main([*args, "--consistency_regularization", "true"])


def test_lp_ft_starts_the_head_from_the_probe_of_the_train_split(trained, tmp_path, monkeypatch, caplog):
    saved, _, recipe = trained
    with caplog.at_level("INFO"):
        out, _ = _finetune_saved_model(
            recipe,
            saved,
            tmp_path,
            monkeypatch,
            "--lp_ft",
            "true",
            "--learning_rate",
            "1e-9",
            "--min_learning_rate",
            "0",
        )
    assert "probe fitted on 4 train clips" in caplog.text  # the train folder's 2 low + 2 high tones
    model = AutoModelForAudioClassification.from_pretrained(out).eval()
    extractor = AutoFeatureExtractor.from_pretrained(out)
    t = np.arange(16000) / 16000
    tones = [0.3 * np.sin(2 * np.pi * f * t) for f in (300.0, 2000.0)]
    inputs = extractor(tones, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    low, high = model.config.label2id["low"], model.config.label2id["high"]
    # A fitted probe separates the two tones with a margin a fresh head (std 0.02) never has.
    assert logits[0, low] - logits[0, high] > 1 and logits[1, high] - logits[1, low] > 1, logits


def test_a_saved_model_is_fine_tuned_with_a_cosine_head(trained, tmp_path, monkeypatch):
    # ContrastASC fine-tunes its teacher with a scaled-cosine head: --classifier cosine on any family.
    saved, _, recipe = trained
    out, _ = _finetune_saved_model(
        recipe, saved, tmp_path, monkeypatch, "--classifier", "cosine", "--cosine_scale", "30"
    )
    model = AutoModelForAudioClassification.from_pretrained(out)
    assert isinstance(model.classifier, CosineClassifier) and model.classifier.scale == 30.0
    assert json.loads((out / "config.json").read_text())["classifier"] == "cosine"
    with pytest.raises(ValueError, match="classifier"):
        _finetune_saved_model(recipe, saved, tmp_path / "bad", monkeypatch, "--classifier", "arcface")


def test_config_overrides_replace_fields_of_a_saved_model_and_keep_its_weights(
    trained, tmp_path, monkeypatch
):
    # AudioMAE's AudioSet regularizers off on a small dataset, the saved encoder's weights still loaded
    saved, _, recipe = trained
    assert json.loads((saved / "config.json").read_text())["mask_t_prob"] == 0.2
    overrides = "mask_t_prob=0, mask_f_prob = 0.05,drop_path_rate=0,"  # spaces and a trailing comma
    out, _ = _finetune_saved_model(
        recipe,
        saved,
        tmp_path,
        monkeypatch,
        "--config_overrides",
        overrides,
        "--learning_rate",
        "1e-12",
        "--min_learning_rate",
        "0",
    )
    config = json.loads((out / "config.json").read_text())
    assert (config["mask_t_prob"], config["mask_f_prob"], config["drop_path_rate"]) == (0.0, 0.05, 0.0)
    assert config["id2label"] == {"0": "high", "1": "low"}  # the new labels, as without overrides
    before, after = AutoModel.from_pretrained(saved), AutoModel.from_pretrained(out)
    for name, weight in before.state_dict().items():
        torch.testing.assert_close(after.state_dict()[name], weight, rtol=0, atol=1e-6, msg=name)


def test_config_overrides_replace_fields_of_a_preset(tmp_path):
    out = tmp_path / "model"
    recipe = load_recipe("finetune")
    options = [
        "--max_steps",
        "1",
        "--eval_steps",
        "0",
        "--checkpointing_steps",
        "0",
        "--output_dir",
        str(out),
    ]
    recipe.main(TINY + options + ["--config_overrides", "drop_path_rate=0.3,num_hidden_layers=1"])
    config = json.loads((out / "config.json").read_text())
    assert (config["drop_path_rate"], config["num_hidden_layers"]) == (0.3, 1)
    assert len(AutoModel.from_pretrained(out).blocks) == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            "mask_t_prob",
            "takes comma-separated key=value pairs, e.g. drop_path_rate=0,mask_t_prob=0; got 'mask",
        ),
        ("mask_t_prob=0=1", "takes comma-separated key=value pairs"),
        ("=0", "takes comma-separated key=value pairs"),
        (",", "takes comma-separated key=value pairs"),
        ("voice=1", r"--config_overrides 'voice=1': key voice isn't in the original config dict"),
        ("mask_t_prob=1.5", r"must be in \[0, 1\), got 1.5"),
        ("num_hidden_layers=two", "invalid literal for int"),
        ("qkv_bias=maybe", "can't derive true or false from maybe"),
    ],
)
def test_config_overrides_errors_name_the_problem(overrides, message, tmp_path):
    recipe = load_recipe("finetune")
    with pytest.raises(ValueError, match=message):
        recipe.main(TINY + ["--output_dir", str(tmp_path / "out"), "--config_overrides", overrides])
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_single_label_training_on_clips_with_several_labels_is_refused_before_training(tmp_path):
    # The embedded corpus is multi-label: softmax cross-entropy on its multi-hot targets would train and
    # report an accuracy that means nothing.
    recipe = load_recipe("finetune")
    args = tiny_finetune_args(
        problem_type="single_label_classification", max_steps=2, output_dir=str(tmp_path / "out")
    )
    with pytest.raises(ValueError, match=r"single_label_classification takes one per clip: keep the default"):
        recipe.main(args)
    assert not (tmp_path / "out" / "model.safetensors").exists()
