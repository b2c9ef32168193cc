"""Every ``ForAudioClassification`` model of the registry trains with ``transformers.Trainer`` on a
``datasets`` audio dataset, its own feature extractor as the preprocessing step, the way users already train
wav2vec2 or AST; and transformers' audio-classification example goes through with a model of ours.

transformers' ``examples/pytorch/audio-classification/run_audio_classification.py`` is not shipped by the
transformers wheel nor by its PyPI sdist (``pip download --no-binary :all: transformers==5.23.0`` holds
``src/`` and ``tests/`` only), so a test cannot obtain it without GitHub. ``run_example_sequence`` below
makes the script's library calls in the script's order instead; each step names the part of the script (as
of transformers 5.8, the ``main()`` that ``check_min_version("5.8.0")`` guards) it stands for. It takes the
script's defaults except where the README's command changes them (``--remove_unused_columns False``,
``--freeze_feature_encoder False``, see the README).

The same sequence runs twice: in this process (hf_audiorep imported, so a ``save_pretrained`` folder loads),
and in a process where hf_audiorep cannot be imported, on the folder ``hub.prepare_repo`` publishes, with
``trust_remote_code=True`` (the script's ``--trust_remote_code True``): what a user of a Hub checkpoint runs.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio, ClassLabel, Dataset, Features, load_dataset
from remote_code_utils import HIDE_LIBRARY, ROOT
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    Trainer,
    TrainingArguments,
)

from hf_audiorep.hub import prepare_repo
from hf_audiorep.registry import ARCHITECTURES, Architecture

#: a few thousand parameters whatever the family (CP-Mobile, a CNN, has no hidden_size: its smallest preset)
TINY = dict(hidden_size=32, num_attention_heads=2, max_length=64, num_mel_bins=32)
LABELS = ("dog", "bell", "rain")
SAMPLE_RATE = 16000


def _smallest_preset(architecture: Architecture) -> str:
    def size(name):
        config = architecture.config_class.from_preset(name)
        return getattr(config, "hidden_size", 0) * getattr(config, "num_hidden_layers", 1)

    return min(architecture.presets, key=size)


def tiny_config(architecture: Architecture, **overrides):
    fields = dict(TINY) if architecture.name != "cp_mobile" else {"num_mel_bins": TINY["num_mel_bins"]}
    return architecture.config_class.from_preset(_smallest_preset(architecture), **fields, **overrides)


def feature_extractor_for(architecture: Architecture, config):
    """The family's own front end with the config's mel bins; cut to ``max_length`` frames where the config
    has one (the ViTs' fixed grid), as recipes/finetune.py builds it."""
    kwargs = {"num_mel_bins": config.num_mel_bins}
    if getattr(config, "max_length", None) is not None:
        kwargs["target_length"] = config.max_length
    return architecture.feature_extractor(**kwargs)


def tones(num_clips: int, seed: int = 0, rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    """Noisy tones of different lengths (0.5 to 0.9 s), so a batch pads and the random crop cuts."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(num_clips):
        t = np.arange(int(rate * (0.5 + 0.1 * (i % 5)))) / rate
        wave = 0.3 * np.sin(2 * np.pi * (300 + 400 * (i % len(LABELS))) * t) + 0.05 * rng.standard_normal(
            t.size
        )
        clips.append(wave.astype(np.float32))
    return clips


def audio_dataset(num_clips: int = 4) -> Dataset:
    """An in-memory ``datasets`` audio dataset: an ``Audio`` column and a ``ClassLabel`` column."""
    features = Features({"audio": Audio(sampling_rate=SAMPLE_RATE), "label": ClassLabel(names=list(LABELS))})
    records = [{"array": clip, "sampling_rate": SAMPLE_RATE} for clip in tones(num_clips)]
    labels = [i % len(LABELS) for i in range(num_clips)]
    return Dataset.from_dict({"audio": records, "label": labels}, features=features)


def _decoded(audio) -> np.ndarray:
    # datasets 4+ decodes to a torchcodec AudioDecoder, which still answers ["array"].
    return np.asarray(audio["array"], dtype=np.float32)


#: config fields of the families' train-time randomness (dropouts, stochastic depth, SpecAugment-style and
#: Zipformer feature masking)
TRAINING_NOISE = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "drop_path_rate",
    "mask_t_prob",
    "mask_f_prob",
    "position_dropout_prob",
    "feature_mask_prob",
    "activation_dropout",
    "input_dropout",
    "layerdrop",
)

FAMILIES = pytest.mark.parametrize("architecture", ARCHITECTURES, ids=[a.name for a in ARCHITECTURES])


# ------------------------------------------------------------------------------------------------------------
# transformers.Trainer, the way the HF course trains an audio classifier
# ------------------------------------------------------------------------------------------------------------


@FAMILIES
def test_trainer_trains_saves_and_reloads_every_family(architecture, tmp_path):
    label_names = list(LABELS)
    config = tiny_config(
        architecture,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )
    feature_extractor = feature_extractor_for(architecture, config)
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}

    # As the HF course does: datasets resamples to the front end's rate (CP-Mobile's is 32 kHz) on decoding.
    dataset = audio_dataset(4).cast_column("audio", Audio(sampling_rate=feature_extractor.sampling_rate))

    def preprocess(batch):
        inputs = feature_extractor(
            [_decoded(audio) for audio in batch["audio"]], sampling_rate=feature_extractor.sampling_rate
        )
        inputs["labels"] = batch["label"]
        return inputs

    # The transform sees the Trainer's whole batch (datasets' __getitems__), so clips are padded together.
    dataset = dataset.with_transform(preprocess)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,  # the transform reads "audio", which no forward() argument names
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=feature_extractor)
    result = trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(float(loss)) for loss in losses)
    assert math.isfinite(result.training_loss)
    assert trainer.state.global_step == 2
    # Labels reached the loss as classes: the Trainer's loss is single-label cross-entropy.
    assert model.config.problem_type == "single_label_classification"

    changed = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    assert any(name.startswith("classifier") for name in changed), "the head did not train"
    base_prefix = model.base_model_prefix + "."
    assert any(name.startswith(base_prefix) for name in changed), "the encoder did not train"

    out = tmp_path / "saved"
    trainer.save_model(str(out))
    reloaded = AutoModelForAudioClassification.from_pretrained(out).eval()
    reloaded_extractor = AutoFeatureExtractor.from_pretrained(out)
    assert type(reloaded_extractor) is type(feature_extractor)
    assert reloaded_extractor.to_dict() == feature_extractor.to_dict()
    assert reloaded.config.id2label == dict(enumerate(label_names))

    rate = feature_extractor.sampling_rate
    clips = tones(3, seed=1, rate=rate)
    model.eval()
    with torch.no_grad():
        expected = model(**feature_extractor(clips, sampling_rate=rate, return_tensors="pt")).logits
        got = reloaded(**reloaded_extractor(clips, sampling_rate=rate, return_tensors="pt")).logits
    assert got.shape == (3, len(label_names))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@FAMILIES
def test_the_trainer_loss_is_the_cross_entropy_of_the_batch(architecture, tmp_path):
    """The first logged loss is cross-entropy (written out) of the starting model on the whole dataset, which
    is one batch: the Trainer feeds our features and labels to the model unchanged."""
    config = tiny_config(architecture, num_labels=len(LABELS))
    for field in TRAINING_NOISE:  # whichever the family has: the forward pass in train mode is deterministic
        if hasattr(config, field):
            setattr(config, field, 0.0)
    feature_extractor = feature_extractor_for(architecture, config)
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(config)
    rate = feature_extractor.sampling_rate
    dataset = audio_dataset(4).cast_column("audio", Audio(sampling_rate=rate))
    clips = [_decoded(audio) for audio in dataset["audio"]]
    labels = torch.tensor(dataset["label"])
    with torch.no_grad():
        logits = model.train()(**feature_extractor(clips, sampling_rate=rate, return_tensors="pt")).logits
    log_probs = logits - logits.logsumexp(dim=-1, keepdim=True)
    expected = -log_probs[torch.arange(len(labels)), labels].mean().item()

    dataset = dataset.with_transform(
        lambda batch: {
            **feature_extractor([_decoded(a) for a in batch["audio"]], sampling_rate=rate),
            "labels": batch["label"],
        }
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()
    logged = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert float(logged) == pytest.approx(expected, rel=1e-4, abs=1e-5)


# ------------------------------------------------------------------------------------------------------------
# transformers' examples/pytorch/audio-classification/run_audio_classification.py, call by call
# ------------------------------------------------------------------------------------------------------------


def run_example_sequence(
    model_dir, data_dir, output_dir, trust_remote_code, freeze_feature_encoder=False, max_length_seconds=0.5
):
    """The library calls of ``run_audio_classification.py``'s ``main()`` (transformers 5.8), in its order,
    with ``--dataset_name data_dir --max_length_seconds 0.5 --do_train --do_eval --max_steps 2
    --remove_unused_columns False`` and ``--trust_remote_code``, ``--freeze_feature_encoder`` as given.
    Self-contained (it runs again, by its source, in a process without hf_audiorep); returns the train and
    eval metrics the script writes, and the trained model."""
    import random

    import datasets
    import evaluate
    import numpy as np
    from transformers import (
        AutoConfig,
        AutoFeatureExtractor,
        AutoModelForAudioClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    training_args = TrainingArguments(
        output_dir=str(output_dir),
        do_train=True,
        do_eval=True,
        max_steps=2,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        remove_unused_columns=False,  # the README's command: the transforms read the raw "audio" column
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    set_seed(training_args.seed)  # "Set seed before initializing model."

    # raw_datasets["train"/"eval"] = load_dataset(dataset_name, config, split=..., trust_remote_code=...)
    raw_datasets = datasets.DatasetDict()
    for key, split in (("train", "train"), ("eval", "validation")):
        raw_datasets[key] = datasets.load_dataset(
            str(data_dir), None, split=split, token=None, trust_remote_code=trust_remote_code
        )
    assert "audio" in raw_datasets["train"].column_names and "label" in raw_datasets["train"].column_names

    # feature_extractor = AutoFeatureExtractor.from_pretrained(..., return_attention_mask=attention_mask)
    feature_extractor = AutoFeatureExtractor.from_pretrained(
        str(model_dir), return_attention_mask=True, revision="main", trust_remote_code=trust_remote_code
    )
    # raw_datasets.cast_column(audio, Audio(sampling_rate=feature_extractor.sampling_rate))
    raw_datasets = raw_datasets.cast_column(
        "audio", datasets.features.Audio(sampling_rate=feature_extractor.sampling_rate)
    )
    model_input_name = feature_extractor.model_input_names[0]

    def random_subsample(wav, max_length, sample_rate):  # the script's random crop, in its terms
        sample_length = int(round(sample_rate * max_length))
        if len(wav) <= sample_length:
            return wav
        offset = random.randint(0, len(wav) - sample_length - 1)
        return wav[offset : offset + sample_length]

    def train_transforms(batch):  # only model_input_names[0] and the labels reach the model
        wavs = [
            random_subsample(audio["array"], max_length_seconds, feature_extractor.sampling_rate)
            for audio in batch["audio"]
        ]
        inputs = feature_extractor(wavs, sampling_rate=feature_extractor.sampling_rate)
        return {model_input_name: inputs.get(model_input_name), "labels": list(batch["label"])}

    def val_transforms(batch):
        inputs = feature_extractor(
            [audio["array"] for audio in batch["audio"]], sampling_rate=feature_extractor.sampling_rate
        )
        return {model_input_name: inputs.get(model_input_name), "labels": list(batch["label"])}

    # label2id / id2label from the ClassLabel names, ids as strings
    labels = raw_datasets["train"].features["label"].names
    label2id = {label: str(i) for i, label in enumerate(labels)}
    id2label = {str(i): label for i, label in enumerate(labels)}

    metric = evaluate.load("accuracy", cache_dir=None)  # offline: ./accuracy/accuracy.py, see the README

    def compute_metrics(eval_pred):
        predictions = np.argmax(eval_pred.predictions, axis=1)
        return metric.compute(predictions=predictions, references=eval_pred.label_ids)

    config = AutoConfig.from_pretrained(
        str(model_dir),
        num_labels=len(labels),
        label2id=label2id,
        id2label=id2label,
        finetuning_task="audio-classification",
        revision="main",
        trust_remote_code=trust_remote_code,
    )
    model = AutoModelForAudioClassification.from_pretrained(
        str(model_dir),
        from_tf=False,
        config=config,
        revision="main",
        trust_remote_code=trust_remote_code,
        ignore_mismatched_sizes=False,
    )
    if freeze_feature_encoder:  # the script's default (True); the README's command passes False
        model.freeze_feature_encoder()

    raw_datasets["train"].set_transform(train_transforms, output_all_columns=False)
    raw_datasets["eval"].set_transform(val_transforms, output_all_columns=False)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=raw_datasets["train"],
        eval_dataset=raw_datasets["eval"],
        compute_metrics=compute_metrics,
        processing_class=feature_extractor,
    )
    train_result = trainer.train(resume_from_checkpoint=None)
    trainer.save_model()
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.create_model_card(
        finetuned_from=str(model_dir),
        tasks="audio-classification",
        dataset=str(data_dir),
        tags=["audio-classification"],
    )
    return train_result.metrics, metrics, model


#: A local ``accuracy`` metric (``evaluate.load("accuracy")`` reads ``./accuracy/accuracy.py`` before the
#: Hub): the script's metric, offline.
ACCURACY_METRIC = """
import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="fraction of predictions equal to their reference",
            citation="",
            inputs_description="predictions, references: class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references):
        hits = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": hits / len(references)}
"""


def write_audio_folder(root, clips_per_label=(3, 2), rate: int = 8000):
    """A dataset in the Hub's audiofolder layout, ``<split>/<label>/<clip>.wav``: ``load_dataset(root)`` makes
    an ``audio`` column and a ``label`` ClassLabel of the folder names. 8 kHz, so casting resamples."""
    for seed, (split, per_label) in enumerate(zip(("train", "validation"), clips_per_label, strict=True)):
        for label in LABELS:
            (root / split / label).mkdir(parents=True)
        for i, clip in enumerate(tones(per_label * len(LABELS), seed=seed, rate=rate)):
            label = LABELS[i % len(LABELS)]  # tones() gives clip i the tone of class i % 3
            soundfile.write(root / split / label / f"{label}_{i}.wav", clip, rate)
    return root


def save_pretrained_encoder(architecture: Architecture, out):
    """What a user points ``--model_name_or_path`` at: a pre-trained encoder (``AutoModel``) of ours and its
    front end, with no classification head yet."""
    config = tiny_config(architecture)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(out)
    feature_extractor_for(architecture, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def audio_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("example")
    (root / "accuracy").mkdir()
    (root / "accuracy" / "accuracy.py").write_text(ACCURACY_METRIC)
    write_audio_folder(root / "data")
    return root


def _check_run(output_dir, train_metrics, eval_metrics):
    assert math.isfinite(train_metrics["train_loss"])
    assert math.isfinite(eval_metrics["eval_loss"])
    # 2 validation clips per label: accuracy is a multiple of 1/6.
    hits = eval_metrics["eval_accuracy"] * 6
    assert hits == pytest.approx(round(hits)) and 0 <= round(hits) <= 6
    saved = json.loads((output_dir / "config.json").read_text())
    assert saved["id2label"] == {str(i): label for i, label in enumerate(sorted(LABELS))}
    assert (output_dir / "preprocessor_config.json").exists() and (output_dir / "README.md").exists()
    assert (
        json.loads((output_dir / "all_results.json").read_text())["eval_accuracy"]
        == eval_metrics["eval_accuracy"]
    )


@FAMILIES
def test_example_script_sequence_with_the_library_imported(architecture, audio_folder, tmp_path, monkeypatch):
    encoder_dir = save_pretrained_encoder(architecture, tmp_path / "encoder")
    monkeypatch.chdir(audio_folder)  # where the local accuracy metric is
    out = tmp_path / "run"
    train_metrics, eval_metrics, _ = run_example_sequence(encoder_dir, audio_folder / "data", out, False)
    _check_run(out, train_metrics, eval_metrics)
    # The fine-tuned folder loads as a classifier of the family, with the front end it was trained with ...
    model = AutoModelForAudioClassification.from_pretrained(out).eval()
    assert type(model) is architecture.heads[AutoModelForAudioClassification]
    feature_extractor = AutoFeatureExtractor.from_pretrained(out)
    assert type(feature_extractor) is architecture.feature_extractor
    # ... and the reported accuracy is that of its predictions on the validation clips, counted here by hand
    # (batches of 2 in order, as the Trainer evaluates; the script feeds model_input_names[0] alone).
    validation = load_dataset(str(audio_folder / "data"), split="validation")
    validation = validation.cast_column("audio", Audio(sampling_rate=feature_extractor.sampling_rate))
    clips = [_decoded(audio) for audio in validation["audio"]]
    predicted = []
    for start in range(0, len(clips), 2):
        inputs = feature_extractor(
            clips[start : start + 2], sampling_rate=feature_extractor.sampling_rate, return_tensors="pt"
        )
        with torch.no_grad():
            predicted += model(input_values=inputs["input_values"]).logits.argmax(-1).tolist()
    hits = sum(int(p == label) for p, label in zip(predicted, validation["label"], strict=True))
    assert eval_metrics["eval_accuracy"] == pytest.approx(hits / len(validation))


@pytest.mark.slow
def test_example_script_sequence_through_remote_code_without_the_library(audio_folder, tmp_path):
    """The script never imports hf_audiorep: with ``--trust_remote_code True`` it loads the folder that
    ``hub.prepare_repo`` publishes (auto_map + modeling code), for every family, in a process where
    hf_audiorep cannot be imported."""
    repos = []
    for architecture in ARCHITECTURES:
        encoder_dir = save_pretrained_encoder(architecture, tmp_path / architecture.name / "encoder")
        repos.append(
            prepare_repo(encoder_dir, tmp_path / architecture.name / "repo", repo_id=f"o/{architecture.name}")
        )
    script = textwrap.dedent(inspect.getsource(run_example_sequence)) + textwrap.dedent(
        """
        import json, os, sys
        os.chdir(sys.argv[2])
        data, results = sys.argv[3], {}
        for repo in sys.argv[4:]:
            out = repo + "-run"
            train, evaluation, _ = run_example_sequence(repo, data, out, True)
            results[repo] = [train, evaluation, type(__import__("transformers").AutoConfig.from_pretrained(
                out, trust_remote_code=True)).__module__]
        print("RESULTS" + json.dumps(results))
        """
    )
    args = [str(audio_folder), str(audio_folder / "data"), *map(str, repos)]
    # run_without_library's way (hf_audiorep hidden, offline, its own module cache), with room for six runs
    # on a loaded CI machine.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    done = subprocess.run(
        [sys.executable, "-c", HIDE_LIBRARY + script, str(ROOT), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS", 1)[1])
    for repo in repos:
        train_metrics, eval_metrics, config_module = results[str(repo)]
        _check_run(repo.parent / "repo-run", train_metrics, eval_metrics)
        assert not config_module.startswith("hf_audiorep")  # the config came from the repo's own code
