"""Distil a trained classifier (the teacher) into a small CP-Mobile student: ContrastASC's second stage.

The frozen teacher runs once over the training split; its logits and clip embeddings become dataset columns,
so the student's step never calls it (and teacher and student may run at different sample rates on the same
clip). The student trains with ``ce_weight * CE + kd_weight * KD(T) + crd_weight * CRD`` and the DCASE scene
augmentations, then is scored on the test split (closed-set accuracy, and accuracy on the devices unseen in
training when the dataset says which they are) and by few-shot open-set evaluation on held-out classes
(N-way 5-shot episodes, nearest prototype and logistic regression), beside its random initialisation.

On the embedded scene corpus, with a teacher fine-tuned on it first (recipes/finetune.py):

    accelerate launch recipes/finetune.py --dataset embedded-scenes \
        --problem_type single_label_classification --preset audiomae-tiny --max_length 112 \
        --output_dir outputs/scene-teacher
    accelerate launch recipes/distill.py --teacher outputs/scene-teacher

The student variants of the paper: ``--output_norm layer`` (LayerNorm in the output block), ``--crd_weight 0``
(CE + KD), ``--kd_weight 0 --crd_weight 0`` (CE only), ``--preset cp-mobile-6k`` ... ``cp-mobile-dcase23``.
The output directory holds the student (``AutoModelForAudioClassification.from_pretrained``), its feature
extractor and ``eval_results.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForAudioClassification, set_seed

import hf_audiorep
from hf_audiorep.data.arguments import EMBEDDED_SCENES, DataArguments, StreamFactory, load_sources
from hf_audiorep.data.embedded import load_embedded_scenes
from hf_audiorep.data.embedded.devices import device_impulse_responses
from hf_audiorep.data.sources import load_audio_source
from hf_audiorep.evaluation import evaluate_classifier, few_shot_encoder, model_cost
from hf_audiorep.hub import push_run
from hf_audiorep.hub_errors import check_model_source, run_recipe, start_processes
from hf_audiorep.objectives import (
    DEVICE_COLUMN,
    TEACHER_EMBEDDING_COLUMN,
    TEACHER_LOGITS_COLUMN,
    DistillationArguments,
    DistillationStep,
    FrozenTeacher,
    SceneAugmentationArguments,
    StudentWithDistillation,
    build_distillation_loss,
    precompute_teacher_embeddings,
)
from hf_audiorep.objectives.features import embedding_width
from hf_audiorep.registry import architecture_for
from hf_audiorep.training import TrainingArguments, TrainLoop
from hf_audiorep.training.argument_parser import RecipeArgumentParser
from hf_audiorep.training.checkpoint import write_json_atomic

logger = logging.getLogger("distill")

NORMS = ("batch", "layer")
UNSEEN = "unseen_device_test"


@dataclass
class StudentArguments:
    teacher: str = ""
    """the teacher: a saved audio classifier (directory or Hub id) trained on the same labels (required)"""
    preset: str = "cp-mobile-dcase24"
    """the student's architecture: cp-mobile-6k, -18k, -35k, -dcase24 (61,148 parameters), -77k, -dcase23"""
    output_norm: str = "batch"
    """norm of the student's output block: batch (CP-Mobile) or layer (ContrastASC)"""
    embedding_size: int | None = None
    """ContrastASC's layout: the output block emits a clip embedding of this width and a separate head
    classifies it; default: the reference layout (the output block emits the classes)"""
    teacher_batch_size: int = 32
    """clips per teacher forward when its outputs are computed"""
    few_shot_split: str = "heldout"
    """split of held-out classes for few-shot open-set evaluation; empty to skip"""
    few_shot_k_shot: int = 5
    """support clips per class in each episode"""
    few_shot_episodes: int = 100
    """episodes (each N-way over all held-out classes, 15 queries per class)"""

    def __post_init__(self):
        if not self.teacher:
            raise ValueError("--teacher is required: a saved audio classifier (directory or Hub id)")
        check_model_source(self.teacher, "--teacher")
        if self.output_norm not in NORMS:
            raise ValueError(f"--output_norm must be one of {NORMS}, got {self.output_norm!r}")
        if self.teacher_batch_size < 1:
            raise ValueError(f"--teacher_batch_size must be >= 1, got {self.teacher_batch_size}")


@dataclass
class DistillDataArguments(DataArguments):
    dataset: str = EMBEDDED_SCENES
    """'embedded-scenes' (built-in acoustic-scene corpus), 'embedded', a Hub id or a path"""


@dataclass
class DistillTrainingArguments(TrainingArguments):
    """CP-JKU's DCASE student settings, shortened to CPU minutes (Adam-style, warmup, cosine)."""

    output_dir: str = "outputs/distill"
    max_steps: int = 600
    per_device_batch_size: int = 32
    learning_rate: float = 5e-3
    warmup_steps: int = 60
    weight_decay: float = 1e-4
    eval_steps: int | None = 200
    checkpointing_steps: int | None = 200


def _teacher_columns(teacher: FrozenTeacher, source, args: DistillationArguments, batch_size: int):
    """The train source with the teacher's embeddings (and logits, for KD) as columns."""
    if args.kd_weight > 0:  # an embedding-only teacher (CRD alone) has no labels to match
        names = tuple(teacher.classifier.config.id2label[i] for i in range(teacher.num_labels))
        if names != tuple(source.label_names):
            raise ValueError(
                f"the teacher's {len(names)} labels {names[:5]}... are not the dataset's "
                f"{len(source.label_names)} {tuple(source.label_names)[:5]}...: KD needs one label order"
            )
    dataset = precompute_teacher_embeddings(
        source.dataset,
        teacher,
        column=TEACHER_EMBEDDING_COLUMN,
        logits_column=TEACHER_LOGITS_COLUMN if args.kd_weight > 0 else None,
        batch_size=batch_size,
    )
    return load_audio_source(dataset, label_column=source.label_column, label_names=source.vocabulary)


def _dir_device_ids(aug_args: SceneAugmentationArguments, source) -> tuple[int, ...] | None:
    """The ids of --dir_devices in the training split's ``device`` ClassLabel (None: every clip)."""
    names = [n.strip() for n in aug_args.dir_devices.split(",") if n.strip()]
    if not names or aug_args.dir_prob == 0:
        return None
    feature = (source.dataset.features or {}).get(DEVICE_COLUMN)
    known = list(getattr(feature, "names", None) or [])
    if not known:
        raise ValueError(f"--dir_devices {aug_args.dir_devices!r}: the training split has no device labels")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--dir_devices names unknown devices {unknown}; the dataset's are {known}")
    return tuple(known.index(n) for n in names)


def _student(student_args: StudentArguments, label_names):
    id2label = dict(enumerate(label_names))
    config = hf_audiorep.config_from_preset(
        student_args.preset,
        num_labels=len(label_names),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
        problem_type="single_label_classification",
        output_norm=student_args.output_norm,
        embedding_size=student_args.embedding_size,
    )
    model = AutoModelForAudioClassification.from_config(config)
    return model, architecture_for(config.model_type).feature_extractor()


def _few_shot_dataset(student_args: StudentArguments, data_args: DataArguments):
    if data_args.dataset == EMBEDDED_SCENES:
        return load_embedded_scenes(seed=data_args.corpus_seed, clip_seconds=data_args.clip_seconds)[
            student_args.few_shot_split
        ]
    return load_audio_source(data_args.dataset, split=student_args.few_shot_split).dataset


def main(argv: list[str] | None = None) -> dict:
    parser = RecipeArgumentParser(
        (StudentArguments, DistillationArguments, SceneAugmentationArguments, DistillDataArguments,
         DistillTrainingArguments)
    )  # fmt: skip
    student_args, distill_args, aug_args, data_args, train_args = parser.parse_args_into_dataclasses(
        args=argv
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    state = start_processes(cpu=train_args.cpu)
    data_args.resolve_clip_seconds()
    sources = load_sources(data_args)
    teacher = FrozenTeacher.from_pretrained(student_args.teacher, device=state.device)
    if teacher.classifier is None and distill_args.kd_weight > 0:
        raise ValueError(f"--teacher {student_args.teacher} has no classification head: KD needs its logits")
    with state.main_process_first():  # rank 0 computes the columns, the others read its cache
        sources["train"] = _teacher_columns(
            teacher, sources["train"], distill_args, student_args.teacher_batch_size
        )
    set_seed(train_args.seed)
    student, feature_extractor = _student(student_args, sources["train"].label_names)
    loss = build_distillation_loss(
        distill_args, embedding_width(student.config), teacher.embedding_dim, len(sources["train"].dataset)
    )
    model = StudentWithDistillation(student, loss)

    _unseen_device_source(sources)
    stream = StreamFactory.for_process(sources, data_args, train_args, feature_extractor.sampling_rate, state)
    columns = (TEACHER_EMBEDDING_COLUMN,) + ((TEACHER_LOGITS_COLUMN,) if distill_args.kd_weight > 0 else ())
    irs = (
        device_impulse_responses(feature_extractor.sampling_rate)
        if data_args.dataset == EMBEDDED_SCENES
        else None
    )
    dir_devices = _dir_device_ids(aug_args, sources["train"]) if irs is not None else None
    if dir_devices is not None:
        columns += (DEVICE_COLUMN,)
    train_batches = stream("train", train=True, extra_columns=columns, return_index=True)
    step = DistillationStep(feature_extractor, aug_args, irs, dir_devices)
    loop = TrainLoop(train_args, model, train_batches, step, feature_extractor=feature_extractor)
    loop.export_fn = lambda m: m.student
    if "eval" in sources:
        loop.eval_fn = lambda m: evaluate_classifier(
            m.student, stream("eval", False), feature_extractor, loop.accelerator
        )
    few_shot = None
    if student_args.few_shot_split:
        heldout = _few_shot_dataset(student_args, data_args)

        def few_shot(encoder) -> dict:
            result = few_shot_encoder(
                encoder,
                feature_extractor,
                heldout,
                label_column=data_args.label_column or "scene",
                n_way=None,
                k_shot=student_args.few_shot_k_shot,
                num_episodes=student_args.few_shot_episodes,
                seed=train_args.seed,
            )
            return result.to_dict()

    results: dict = {"cost": _cost(student, feature_extractor, data_args.clip_seconds)}
    if few_shot is not None:
        results["few_shot_at_initialisation"] = few_shot(student)
    summary = loop.run()
    results.update(_test(student, sources, stream, feature_extractor, loop.accelerator))
    if few_shot is not None:
        results["few_shot"] = few_shot(student)
    summary.update({k: v for k, v in results.items() if isinstance(v, int | float)})
    if loop.accelerator.is_main_process:
        write_json_atomic(Path(train_args.output_dir, "eval_results.json"), results)
        logger.info("results: %s", json.dumps(results, default=str)[:3000])
    push_run(train_args)
    loop.finish()
    return summary


def _cost(student, feature_extractor, clip_seconds: float) -> dict:
    cost = model_cost(student, feature_extractor, seconds=clip_seconds)
    return {key: cost[key] for key in ("parameters", "macs", "seconds")}


def _unseen_device_source(sources) -> None:
    """Adds the test clips of devices never heard in training as a role of their own, when the test split
    says which they are (the scene corpus's ``seen_device`` column)."""
    test = sources.get("test")
    if test is None or "seen_device" not in test.dataset.column_names:
        return
    unseen = test.dataset.filter(lambda seen: not seen, input_columns="seen_device")
    sources[UNSEEN] = load_audio_source(unseen, label_column=test.label_column, label_names=test.vocabulary)


def _test(student, sources, stream, feature_extractor, accelerator) -> dict:
    """Closed-set accuracy on the test split, and on its clips from unseen devices."""
    results = {}
    for role, prefix in (("test", "test_"), (UNSEEN, "unseen_device_")):
        if role in sources:
            batches = stream(role, False)
            results.update(evaluate_classifier(student, batches, feature_extractor, accelerator, prefix))
    return results


if __name__ == "__main__":
    run_recipe(main)
