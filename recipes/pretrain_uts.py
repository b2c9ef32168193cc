"""Pre-train a Zipformer with multi-label classification (MTC) on a unified tag system mined from captions
(UTS), or on the dataset's ontology labels, and probe what it learned in and out of domain.

Runs with no arguments on the embedded corpus (the `zipformer-small` preset, minutes on a CPU): mines a
K-tag vocabulary from the corpus captions (captions -> tags -> df * log((N+1)/(df+1)) -> top K), trains the
encoder to tag every clip with it, and linear-probes the frozen encoder at its initialisation and at the
end on event tagging (the ontology labels, in domain) and on every attribute task of the corpus (speech,
music and recording attributes the ontology does not name):

    accelerate launch recipes/pretrain_uts.py                          # MTC on 100 mined tags
    accelerate launch recipes/pretrain_uts.py --labels ontology        # the AudioSet-like baseline
    accelerate launch recipes/pretrain_uts.py --vocabulary_size 50 --seed 1
    accelerate launch recipes/pretrain_uts.py --optimizer scaled_adam --lr_scheduler eden \
        --learning_rate 0.045 --max_grad_norm 0                        # Zipformer's ScaledAdam + Eden

The optimizer is AdamW (2e-3, cosine, gradient norm clipped at 1) by default. On a dataset with audio and a
caption (or tags) column, e.g. a local folder of Parquet files, with dynamic batches of at most 600 s of
audio per GPU:

    accelerate launch --multi_gpu recipes/pretrain_uts.py --dataset data/uts --caption_column caption \
        --preset zipformer-m --vocabulary_size 1500 --max_duration 600 --max_steps 300000 \
        --probe_tasks '' --output_dir outputs/uts-zipformer-m

Auden's UTS manifests (Lhotse cuts, `AudenAI/UTS`) carry captions and tags but not the audio, which comes
from the source corpora: `--audio_root` is the folder it is found in (as <audio_root>/<source>/<recording
id>.wav, <audio_root>/<recording id>.flac, ...: hf_audiorep/data/lhotse_cuts.py); cuts whose audio is not
there are dropped and counted. One manifest is the train split (so `--test_split ''`; `{split}` in the path
names one manifest per split); mine the tags from the captions, or train on the manifest's own tags:

    accelerate launch --multi_gpu recipes/pretrain_uts.py --dataset cuts_train.jsonl.gz \
        --audio_root /data/audio --caption_column caption --test_split '' --preset zipformer-m \
        --vocabulary_size 1500 --max_duration 600 --probe_tasks '' --output_dir outputs/uts-zipformer-m
    accelerate launch recipes/pretrain_uts.py --dataset cuts_train.jsonl.gz --audio_root /data/audio \
        --tags_column tags --test_split '' --vocabulary_size 2000 --probe_tasks ''

The output directory holds the `ZipformerForAudioClassification` checkpoint (its `config.id2label` is the
tag vocabulary), the vocabulary as a standalone label file (`label_<K>.json`, Auden's format, with a
`.meta.json` sidecar of document frequencies and scores), its `preprocessor_config.json`, and
`eval_results.json` with the probes at initialisation and at the end. `AutoModel.from_pretrained` on it
gives the encoder.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from transformers import AutoModelForAudioClassification, set_seed

import hf_audiorep
from hf_audiorep.data.arguments import EMBEDDED, DataArguments, StreamFactory, load_sources
from hf_audiorep.data.embedded import load_embedded_corpus
from hf_audiorep.data.sources import label_frequencies, load_audio_source
from hf_audiorep.data.tags import TagSystem, TagSystemBuilder
from hf_audiorep.evaluation import corpus_probe_tasks, evaluate_classifier, probe_tasks
from hf_audiorep.evaluation.linear_probe import parse_C
from hf_audiorep.hub import push_run
from hf_audiorep.hub_errors import check_model_source, run_recipe, start_processes
from hf_audiorep.modeling import ZipformerConfig, ZipformerFbankFeatureExtractor
from hf_audiorep.modeling._config_checks import choices
from hf_audiorep.modeling.processing_zipformer import ZipformerProcessor
from hf_audiorep.objectives import (
    AugmentationArguments,
    SupervisedClassificationStep,
    init_bias_from_prior,
    prior_only_bce,
)
from hf_audiorep.training import TrainingArguments, TrainLoop
from hf_audiorep.training.argument_parser import RecipeArgumentParser
from hf_audiorep.training.checkpoint import write_json_atomic
from hf_audiorep.training.optim import LR_SCHEDULERS, OPTIMIZERS
from hf_audiorep.uts_text_recipe import (
    TEXT_OBJECTIVES,
    UTSTextArguments,
    batch_text,
    build_text_model,
    evaluate_text_model,
    run_tokenizer,
    tags_text,
    text_step,
)

logger = logging.getLogger("pretrain_uts")
CLASSIFIER_NORMS = choices(ZipformerConfig, "classifier_norm")  # the option's argparse choices

OBJECTIVES = ("mtc", *TEXT_OBJECTIVES)
LABEL_SYSTEMS = ("tags", "ontology")
#: the label column the mined tags are written to (the corpus's own `labels` are the ontology's)
TAG_LABEL_COLUMN = "tag_labels"
#: records of a streamed train split read for the label prior (and the captions of an offline tokenizer)
PRIOR_RECORDS = 10_000
#: the test split's column of each clip's text (caption or tags) for the text objectives' evaluation
TEXT_COLUMN = "uts_text"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = None
    """a saved Zipformer (directory or Hub id) to continue from; when unset a fresh one from --preset"""
    preset: str = "zipformer-small"
    """architecture preset of a fresh model: zipformer-small (CPU minutes) or zipformer-m (Auden's UTS)"""
    prior_bias_init: bool = True
    """start a fresh model's head at the label prior (its bias at each label's log-odds in the training
    split); without it the first hundreds of steps only fit the label frequencies (docs/benchmarks.md)"""
    classifier_norm: Literal[CLASSIFIER_NORMS] | None = None
    """the head's input: none (Auden's head) | batch (frames standardised over the batch before the
    classifier, which learns faster from scratch: docs/benchmarks.md); default: the preset's / checkpoint's"""

    def __post_init__(self):
        check_model_source(self.model_name_or_path, "--model_name_or_path")


@dataclass
class UTSArguments:
    objective: str = "mtc"
    """mtc: multi-label tagging with BCE on the label system (per-frame logits averaged over valid frames);
    ar: captioning, teacher-forced; par: parallel decoding (all-mask decoder input, bidirectional);
    contrastive: symmetric InfoNCE against a text encoder; multitask: mtc + λ (0.25 ar + 0.75 par)"""
    labels: str = "tags"
    """tags: a vocabulary mined from the captions (UTS); ontology: the dataset's own labels (the baseline)"""
    vocabulary_size: int = 100
    """K, the tags kept by score df * log((N+1)/(df+1)); clips left without a kept tag are dropped"""
    caption_column: str = "caption"
    """column of captions the tags are mined from"""
    tags_column: str | None = None
    """column of tags given per clip (a list or a ';'-separated string): no extraction"""
    tag_extractor: str = "default"
    """default (offline keyword extractor), or a text-generation model id / path prompted for tags"""
    vocabulary_file: str | None = None
    """a saved label file (label_<K>.json, a folder or a Hub id) to label the clips with instead of mining
    a vocabulary; tags are still extracted from the captions"""

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.labels not in LABEL_SYSTEMS:
            raise ValueError(f"--labels must be one of {LABEL_SYSTEMS}, got {self.labels!r}")
        if self.vocabulary_size < 1:
            raise ValueError(f"--vocabulary_size must be >= 1, got {self.vocabulary_size}")


@dataclass
class UTSProbeArguments:
    probe_tasks: str | None = "all"
    """comma-separated probe tasks of the embedded corpus run at the initialisation and the end (events,
    speech_pitch, ...; 'all'; '' to skip): linear probes of the frozen encoder on its train/test splits"""
    probe_train_clips: int | None = None
    """clips of the corpus train split the probes are fitted on (default: all)"""
    probe_C: str = "auto"
    """the probes' inverse L2 strength (logistic regression's C), or 'auto' (default): chosen per task by
    3-fold cross-validation on its train clips, so that the initialisation and the trained encoder, which
    want different penalties, compare fairly"""

    def __post_init__(self):
        self.probe_C = parse_C(self.probe_C, "--probe_C")

    def task_names(self) -> list[str] | None:
        if self.probe_tasks == "all":
            return None
        return [name.strip() for name in self.probe_tasks.split(",") if name.strip()]


@dataclass
class UTSAugmentationArguments(AugmentationArguments):
    mixup_prob: float = 0.0
    """probability that a clip is mixed with another; UTS trains without mixup (lhotse SpecAugment only)"""


@dataclass
class UTSTrainingArguments(TrainingArguments):
    """The shared loop's arguments, with defaults that train zipformer-small on the corpus in minutes."""

    output_dir: str = "outputs/pretrain-uts"
    max_steps: int = 300
    per_device_batch_size: int = 16
    # AdamW, not Zipformer's own ScaledAdam + Eden: on the corpus (zipformer-small, 900 steps, tags K=100,
    # 3 seeds; docs/benchmarks.md) AdamW's encoders probed as well in domain and better out of domain, and
    # its training loss ended lower. ScaledAdam: --optimizer scaled_adam --lr_scheduler eden
    # --learning_rate 0.045 --max_grad_norm 0.
    optimizer: Literal[OPTIMIZERS] = "adamw"
    """adamw | scaled_adam (Zipformer's; it clips by itself: give it --max_grad_norm 0)"""
    lr_scheduler: Literal[LR_SCHEDULERS] = "cosine"
    """cosine | linear | constant | eden (Zipformer's, for scaled_adam, with --eden_lr_batches 7500)"""
    learning_rate: float = 2e-3
    """peak learning rate (AdamW: 2e-3; ScaledAdam + Eden: Auden's 0.045)"""
    max_grad_norm: float | None = 1.0
    """clip the global gradient norm (0: off; ScaledAdam clips relative to recent norms itself)"""
    weight_decay: float = 0.01
    warmup_steps: int = 30
    eval_steps: int | None = None
    checkpointing_steps: int | None = 100


def _tag_system(uts_args: UTSArguments, source, is_main: bool):
    """The run's tag system and the train source relabelled with it (untagged clips dropped)."""
    builder = TagSystemBuilder(
        uts_args.tag_extractor,
        caption_column=uts_args.caption_column,
        tags_column=uts_args.tags_column,
        label_column=TAG_LABEL_COLUMN,
        progress=is_main,
    )
    if uts_args.vocabulary_file:
        result = builder.apply(
            source.dataset, builder.tag(source.dataset), TagSystem.from_pretrained(uts_args.vocabulary_file)
        )
    else:
        result = builder.build(source.dataset, uts_args.vocabulary_size)
    summary = result.summary
    logger.info("tag system: %s", json.dumps(summary, default=str)[:2000])
    return result.tag_system, load_audio_source(result.dataset, label_column=TAG_LABEL_COLUMN), summary


def _labels(label_names, id2label, model_args: ModelArguments) -> dict:
    """The config fields of the run's label system (the MTC head's outputs)."""
    id2label = id2label or dict(enumerate(label_names))
    labels = {
        "num_labels": len(id2label),
        "id2label": id2label,
        "label2id": {name: i for i, name in id2label.items()},
        "problem_type": "multi_label_classification",
    }
    if model_args.classifier_norm is not None:
        labels["classifier_norm"] = model_args.classifier_norm
    return labels


def _model(model_args: ModelArguments, labels: dict):
    if model_args.model_name_or_path:
        return AutoModelForAudioClassification.from_pretrained(
            model_args.model_name_or_path, ignore_mismatched_sizes=True, **labels
        )
    return AutoModelForAudioClassification.from_config(
        hf_audiorep.config_from_preset(model_args.preset, **labels)
    )


def _probe(probe_args: UTSProbeArguments, data_args: DataArguments, sources):
    """``evaluate(model, feature_extractor)``: the corpus probes, or None when --probe_tasks is empty.

    On the embedded corpus the probes use the run's own train and test splits (their ontology labels and
    attribute columns, whatever labels the run trains on); on another dataset, the corpus at its default
    size."""
    if not probe_args.probe_tasks:
        return None
    tasks = corpus_probe_tasks(probe_args.task_names())
    if data_args.dataset == EMBEDDED and "test" in sources:
        splits = {role: sources[role].dataset for role in ("train", "test")}
    else:
        corpus = load_embedded_corpus(
            seed=data_args.corpus_seed, clip_seconds=data_args.resolve_clip_seconds()
        )
        splits = {"train": corpus["train"], "test": corpus["test"]}

    def evaluate(model, feature_extractor) -> dict:
        return probe_tasks(
            model.base_model,
            feature_extractor,
            splits,
            tasks,
            clip_seconds=data_args.resolve_clip_seconds(),
            train_clips=probe_args.probe_train_clips,
            C=probe_args.probe_C,
        )

    return evaluate


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def _report(initial: dict, final: dict) -> str:
    """Per task: the trivial baseline, the probe at initialisation, the probe of the trained encoder."""
    rows = ["| task | metric | chance | initialisation | trained |", "|---|---|---:|---:|---:|"]
    for key in final:
        task, metric = key.split("/", 1)
        if metric in ("probe_mAP", "probe_accuracy"):
            name = metric.removeprefix("probe_")
            values = (final.get(f"{task}/chance_{name}"), initial.get(key), final[key])
            rows.append(f"| {task} | {name} | " + " | ".join(_number(v) for v in values) + " |")
    return "\n".join(rows)


def _training_texts(source, caption_column: str, label_names) -> list[str]:
    """What a tokenizer trained offline learns its vocabulary from: the train split's captions (the first
    records of a stream) and the label names."""
    texts = list(label_names)
    if caption_column in (source.dataset.column_names or ()):
        records = source.dataset.select_columns([caption_column])
        texts += [r[caption_column] for r in itertools.islice(records, PRIOR_RECORDS)]
    return texts


def _text_test_split(uts_args, text_args, test_source, tag_system):
    """The test split with each clip's text in a ``uts_text`` column (its caption, or its tags in the run's
    vocabulary), or None when there is none to evaluate on."""
    if test_source is None or test_source.is_streaming:  # the text metrics read a map-style split
        return None
    dataset = test_source.dataset
    if text_args.text_field == "caption":
        if uts_args.caption_column not in dataset.column_names:
            logger.info(
                "the test split has no %r column: no captioning or retrieval evaluation",
                uts_args.caption_column,
            )
            return None
        texts = dataset[uts_args.caption_column]
    elif tag_system is None:  # ontology labels: the clip's own, in the ontology's order
        names = test_source.label_names
        texts = [tags_text([names[i] for i in sorted(ids)]) for ids in dataset[test_source.label_column]]
    else:  # the test clips tagged as the training clips were, in the run's vocabulary order
        builder = TagSystemBuilder(
            uts_args.tag_extractor, caption_column=uts_args.caption_column, tags_column=uts_args.tags_column
        )
        texts = [
            tags_text([n for n in tag_system.names if n in set(tags)]) for tags in builder.tag(dataset).tags
        ]
    return dataset.add_column(TEXT_COLUMN, [str(t) for t in texts])


def main(argv: list[str] | None = None) -> dict:
    parser = RecipeArgumentParser(
        (ModelArguments, UTSArguments, UTSTextArguments, UTSProbeArguments, DataArguments,
         UTSAugmentationArguments, UTSTrainingArguments)
    )  # fmt: skip
    model_args, uts_args, text_args, probe_args, data_args, aug_args, train_args = (
        parser.parse_args_into_dataclasses(args=argv)
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state = start_processes(cpu=train_args.cpu)
    objective = uts_args.objective
    text_objective = objective in TEXT_OBJECTIVES
    # Mined tags discard the eval and test splits (their labels are not tags), so a local dataset's are not
    # even read: their free-string labels would otherwise have to be the train split's.
    only_train = uts_args.labels == "tags" and data_args.dataset != EMBEDDED
    sources = load_sources(data_args, ("train",) if only_train else ("train", "eval", "test"))
    probe = _probe(probe_args, data_args, sources)  # before the train split is relabelled with tags
    test_source = sources.get("test")
    tag_summary = None
    if uts_args.labels == "tags":
        tag_system, sources["train"], tag_summary = _tag_system(
            uts_args, sources["train"], state.is_main_process
        )
        # Periodic and final evaluation read the ontology labels: the tag task has no held-out labels.
        sources = {"train": sources["train"]}
        label_names, id2label = tag_system.names, tag_system.id2label
    else:
        tag_system = None
        label_names, id2label = sources["train"].label_names, None
    feature_extractor = ZipformerFbankFeatureExtractor()
    tokenizer = None
    if text_objective:
        # Trained on the captions when the reference tokenizer is unreachable: once, for all ranks and resume.
        tokenizer = run_tokenizer(
            state,
            objective,
            text_args,
            _training_texts(sources["train"], uts_args.caption_column, label_names),
            train_args.output_dir,
            resuming=bool(train_args.resume_from_checkpoint),
        )
    set_seed(train_args.seed)  # the same initial weights on every rank and every rerun
    labels = _labels(label_names, id2label, model_args)
    if text_objective:
        model = build_text_model(
            objective,
            text_args,
            tokenizer,
            preset=model_args.preset,
            model_name_or_path=model_args.model_name_or_path,
            labels=labels,
        )
    else:
        model = _model(model_args, labels)
    # A stream may never end: its label prior is read from its first records.
    prior_records = PRIOR_RECORDS if sources["train"].is_streaming else None
    frequencies = label_frequencies(sources["train"], max_records=prior_records)
    has_tag_head = objective in ("mtc", "multitask")
    if has_tag_head and model_args.prior_bias_init and not model_args.model_name_or_path:
        init_bias_from_prior(model, frequencies)
    stream = StreamFactory.for_process(sources, data_args, train_args, feature_extractor.sampling_rate, state)
    if text_objective:
        step = text_step(
            objective,
            text_args,
            feature_extractor,
            aug_args,
            tokenizer,
            batch_text(text_args.text_field, uts_args.caption_column, label_names),
        )
        extra_columns = (uts_args.caption_column,) if text_args.text_field == "caption" else ()
    else:
        step, extra_columns = SupervisedClassificationStep(feature_extractor, aug_args), ()
    loop = TrainLoop(
        train_args,
        model,
        stream("train", train=True, extra_columns=extra_columns),
        step,
        feature_extractor=feature_extractor,
    )
    if "eval" in sources and not text_objective:
        loop.eval_fn = lambda m: evaluate_classifier(
            m, stream("eval", False), feature_extractor, loop.accelerator
        )
    initial = probe(loop.model, feature_extractor) if probe is not None else {}
    summary = loop.run()

    results: dict = {
        "objective": objective,
        "labels": uts_args.labels,
        "num_labels": len(label_names),
        # what the training loss is read against: a run that ends here learned the label frequencies only
        "label_prior_bce": prior_only_bce(frequencies),
    }
    if text_objective:
        results["text_field"] = text_args.text_field
    if tag_summary is not None:
        results["tag_system"] = tag_summary
    if "test" in sources and not text_objective:
        results.update(
            evaluate_classifier(
                loop.model, stream("test", False), feature_extractor, loop.accelerator, "test_"
            )
        )
    if text_objective and loop.accelerator.is_main_process:
        test_split = _text_test_split(uts_args, text_args, test_source, tag_system)
        if test_split is not None:
            results.update(
                evaluate_text_model(
                    objective,
                    text_args,
                    loop.accelerator.unwrap_model(loop.model),
                    feature_extractor,
                    tokenizer,
                    test_split,
                    text_column=TEXT_COLUMN,
                    label_names=test_source.label_names,
                    clip_seconds=data_args.resolve_clip_seconds(),
                    progress=not train_args.disable_progress_bar,
                )
            )
    if probe is not None:
        final = probe(loop.model, feature_extractor)
        results.update({"probes": final, "probes_at_initialisation": initial})
        summary.update(final)
        if loop.accelerator.is_main_process:
            print(_report(initial, final), flush=True)
    if loop.accelerator.is_main_process:
        if tag_system is not None:
            tag_system.save(train_args.output_dir)
        if tokenizer is not None:
            # With the model: AutoProcessor gives its fbank front end and the tokenizer it was trained with.
            ZipformerProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(
                train_args.output_dir
            )
        write_json_atomic(Path(train_args.output_dir, "eval_results.json"), results)
    push_run(train_args)  # after eval_results.json is written
    loop.finish()
    return summary


if __name__ == "__main__":
    run_recipe(main)  # an unreachable Hub: one line from rank 0 and exit status 2, not a traceback per rank
