"""Fine-tune any encoder of hf_audiorep for audio tagging or classification.

Runs with no arguments on the embedded corpus (a tiny AudioMAE, a few CPU minutes):

    accelerate launch recipes/finetune.py

On AudioSet streamed from the Hub, starting from a saved model:

    accelerate launch recipes/finetune.py --dataset agkphysics/AudioSet --dataset_config balanced \
        --eval_split test --test_split test --streaming --model_name_or_path org/audiomae-base \
        --max_steps 30000 --per_device_batch_size 32 --learning_rate 1.25e-4 --layer_decay 0.75 \
        --mixed_precision bf16 --output_dir outputs/audiomae-as20k

LoRA on a saved model's encoder blocks, the head trained in full; the output is peft's adapter directory
(``--merge_lora``: a plain model with the adapters merged into its weights):

    accelerate launch recipes/finetune.py --model_name_or_path outputs/quickstart --lora_r 8 \
        --output_dir outputs/tagger-lora
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import gather_object
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModelForAudioClassification,
    set_seed,
)

import hf_audiorep
from hf_audiorep.data.arguments import DataArguments, StreamFactory, load_sources
from hf_audiorep.data.semi_supervised import SemiSupervisedBatches
from hf_audiorep.data.sources import check_one_label_per_clip
from hf_audiorep.evaluation import evaluate_classifier
from hf_audiorep.hub import push_run
from hf_audiorep.hub_errors import check_model_source, run_recipe, start_processes
from hf_audiorep.inference import model_clip_seconds
from hf_audiorep.modeling import AudioMAEConfig, CATConfig
from hf_audiorep.objectives import (
    AugmentationArguments,
    ClassifierWithProjection,
    ConsistencyArguments,
    ConsistencyClassificationStep,
    ContrastiveArguments,
    ProjectionHead,
    SupConClassificationStep,
    SupervisedClassificationStep,
    init_classifier_from_probe,
)
from hf_audiorep.objectives.features import embedding_width
from hf_audiorep.registry import feature_extractor_for
from hf_audiorep.training import TrainingArguments, TrainLoop
from hf_audiorep.training.argument_parser import RecipeArgumentParser
from hf_audiorep.training.checkpoint import write_json_atomic

logger = logging.getLogger("finetune")

# Architectures whose positions are fixed sin-cos computed from config.max_length (no learned table), so a
# pre-trained model of these takes another input length; a prefix of the grid is the shorter input's.
_RESIZABLE_INPUT = (AudioMAEConfig.model_type, CATConfig.model_type)


@dataclass
class ModelArguments:
    model_name_or_path: str | None = None
    """a saved model (directory or Hub id) to start from; when unset a fresh model is built from --preset"""
    preset: str = "audiomae-tiny"
    """architecture preset used when no checkpoint is given (e.g. audiomae-tiny, audiomae-base)"""
    problem_type: str = "multi_label_classification"
    """multi_label_classification (tagging, BCE) or single_label_classification (softmax, CE)"""
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "frames the model sees (a multiple of the patch size); default: the preset's (1024 = "
            "10.24 s), or the saved model's with --model_name_or_path (AudioMAE and CAT models take another)"
        },
    )
    trust_remote_code: bool = False
    """allow the repository's own modeling code when --model_name_or_path is an architecture this library
    does not know"""
    classifier_init_std: float | None = None
    """std of the new head (AudioMAE models); AudioMAE's recipe on a pre-trained encoder: 2e-5. Default: the
    config's (0.02; a near-zero head stalls training from scratch)"""
    classifier: str | None = None
    """the classification head: linear, or cosine (ContrastASC's scaled-cosine head, which its teacher is
    fine-tuned with); default: the preset's or the saved model's (linear)"""
    cosine_scale: float | None = None
    """scale of the cosine head's logits; default: the config's (56, ContrastASC's)"""
    config_overrides: str | None = None
    """comma-separated key=value pairs replacing fields of the model's config (the preset's or the saved
    model's), each typed as the field it replaces, e.g. AudioMAE without its AudioSet regularizers on a small
    dataset: mask_t_prob=0,mask_f_prob=0,drop_path_rate=0"""
    lp_ft: bool = False
    """LP-FT (Kumar et al., 2022): before fine-tuning, set the head to a logistic-regression probe fitted on
    the frozen encoder's embeddings of the train split (one encoder pass), so the first steps do not rewrite
    a pre-trained encoder to fit a random head"""

    def __post_init__(self):
        check_model_source(self.model_name_or_path, "--model_name_or_path")


@dataclass
class LoraArguments:
    lora_r: int = 0
    """rank of LoRA adapters on the encoder's blocks, the head trained in full and every other weight frozen
    (needs --model_name_or_path); 0 fine-tunes every weight"""
    lora_alpha: float = 16.0
    """LoRA scale: the adapters' update is multiplied by lora_alpha / lora_r"""
    lora_dropout: float = 0.0
    """dropout on the input of the LoRA adapters"""
    lora_target_modules: str | None = None
    """comma-separated layers of each block to adapt (e.g. attn.qkv,attn.proj); default: the architecture's
    lora_target_modules in hf_audiorep.registry"""
    merge_lora: bool = False
    """save the model with the adapters merged into its weights (a plain model) instead of the adapter"""

    def __post_init__(self):
        if self.lora_r < 0:
            raise ValueError(f"--lora_r must be >= 0 (0 turns LoRA off), got {self.lora_r}")
        if not self.lora_r and (self.merge_lora or self.lora_target_modules):
            raise ValueError("--merge_lora and --lora_target_modules need --lora_r > 0 (LoRA is off)")

    @property
    def target_modules(self) -> list[str] | None:
        """--lora_target_modules as a list; None for the architecture's default."""
        if self.lora_target_modules is None:
            return None
        return [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]


@dataclass
class FinetuneTrainingArguments(TrainingArguments):
    """The shared loop's arguments, with defaults that fine-tune the tiny preset on the corpus in minutes."""

    output_dir: str = "outputs/finetune"
    max_steps: int = 600
    per_device_batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 60
    eval_steps: int | None = 200
    checkpointing_steps: int | None = 200


def _pretrained_feature_extractor(model_args: ModelArguments):
    """The saved model's feature extractor, with --max_length applied where the architecture allows it."""
    feature_extractor = AutoFeatureExtractor.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    if model_args.max_length:
        _check_max_length(model_args)
        feature_extractor.target_length = model_args.max_length
    return feature_extractor


def _check_max_length(model_args: ModelArguments) -> None:
    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    if config.model_type not in _RESIZABLE_INPUT:
        raise ValueError(
            f"--max_length cannot be changed for a pre-trained {config.model_type!r} model: only "
            f"{' and '.join(_RESIZABLE_INPUT)} models compute their positions from max_length. Omit "
            "--max_length to keep the saved model's input length"
        )
    length, patch = model_args.max_length, config.patch_size
    if length <= 0 or length % patch:
        raise ValueError(f"--max_length must be a positive multiple of the patch size {patch}, got {length}")


def _with_overrides(config, overrides: str | None):
    """``config`` with --config_overrides applied by transformers' ``update_from_string`` (unknown fields
    refused, each value typed as the field it replaces), then rebuilt so the class checks the fields
    together as it checks a preset's."""
    if not overrides:
        return config
    pairs = [item.split("=") for item in overrides.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise ValueError(
            "--config_overrides takes comma-separated key=value pairs, e.g. "
            f"drop_path_rate=0,mask_t_prob=0; got {overrides!r}"
        )
    try:
        config.update_from_string(",".join(f"{key.strip()}={value.strip()}" for key, value in pairs))
        return type(config).from_dict(config.to_dict())
    except (ValueError, TypeError) as err:
        raise ValueError(f"--config_overrides {overrides!r}: {err}") from None


def _model(model_args: ModelArguments, label_names: list[str], feature_extractor=None):
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    head = {
        name: value
        for name in ("classifier_init_std", "classifier", "cosine_scale")
        if (value := getattr(model_args, name)) is not None
    }
    if model_args.model_name_or_path:
        if feature_extractor is None:
            feature_extractor = _pretrained_feature_extractor(model_args)
        length = {"max_length": model_args.max_length} if model_args.max_length else {}
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            problem_type=model_args.problem_type,
            trust_remote_code=model_args.trust_remote_code,
            **length,
            **head,
        )
        model = AutoModelForAudioClassification.from_pretrained(
            model_args.model_name_or_path,
            config=_with_overrides(config, model_args.config_overrides),
            ignore_mismatched_sizes=True,  # a new label set replaces the checkpoint's head
            trust_remote_code=model_args.trust_remote_code,
        )
        return model, feature_extractor
    overrides = {"max_length": model_args.max_length} if model_args.max_length else {}
    config = hf_audiorep.config_from_preset(
        model_args.preset,
        **overrides,
        num_labels=len(label_names),
        id2label=id2label,
        label2id=label2id,
        problem_type=model_args.problem_type,
        **head,
    )
    config = _with_overrides(config, model_args.config_overrides)
    model = AutoModelForAudioClassification.from_config(config)
    return model, feature_extractor_for(config)


def _check_lora(lora_args: LoraArguments, model_args: ModelArguments, train_args) -> None:
    if not lora_args.lora_r:
        return
    if not model_args.model_name_or_path:
        raise ValueError(
            "--lora_r needs --model_name_or_path: LoRA adapts a saved model, and an adapter on a fresh "
            "model's random weights could never be loaded again"
        )
    if train_args.push_to_hub and not lora_args.merge_lora:
        raise ValueError("--push_to_hub publishes a full model: with --lora_r, add --merge_lora")


def _with_lora(model, lora_args: LoraArguments, model_args: ModelArguments):
    """``model`` wrapped in LoRA adapters (the head trained in full), with its parameter counts logged."""
    from hf_audiorep.adapters import apply_lora  # peft is the `train` extra: only LoRA runs import it

    model = apply_lora(
        model, lora_args.lora_r, lora_args.lora_alpha, lora_args.lora_dropout, lora_args.target_modules
    )
    trainable, total = model.get_nb_trainable_parameters()
    targets = ",".join(sorted(model.peft_config["default"].target_modules))
    logger.info(
        "LoRA r=%d alpha=%g on %s: %d of %d parameters trainable (%.2f%%)",
        lora_args.lora_r,
        lora_args.lora_alpha,
        targets,
        trainable,
        total,
        100 * trainable / total,
    )
    if not lora_args.merge_lora:
        _warn_if_base_labels_differ(model.config, model_args)
    return model


def _warn_if_base_labels_differ(config, model_args: ModelArguments) -> None:
    # The adapter holds the head's weights, not its label names: the base loaded as saved has its own.
    base = AutoConfig.from_pretrained(
        model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
    )
    if dict(base.id2label) != dict(config.id2label):
        logger.warning(
            "the adapter's head has the run's %d labels, not the %d of %s: load that base with "
            "from_pretrained(..., id2label=..., label2id=..., problem_type=%r) before "
            "PeftModel.from_pretrained, or pass --merge_lora for a model that carries them",
            config.num_labels,
            base.num_labels,
            model_args.model_name_or_path,
            config.problem_type,
        )


def _resolve_clip_seconds(data_args: DataArguments, saved_extractor, model_name: str | None) -> None:
    # A saved model was trained on clips of its window: longer clips would be generated (the corpus) or
    # decoded and then cropped away by the feature extractor.
    explicit = data_args.clip_seconds is not None
    window = model_clip_seconds(saved_extractor) if saved_extractor is not None else None
    seconds = data_args.resolve_clip_seconds(window)
    if window is not None and not explicit:
        logger.info("clips of %g s: the window of %s (--clip_seconds sets another)", seconds, model_name)


def _log_augmentation(aug_args: AugmentationArguments, feature_extractor) -> None:
    frames = feature_extractor.target_length or 1024
    resolved = aug_args.for_input(frames, feature_extractor.num_mel_bins)
    logger.info(
        "SpecAugment masks up to %d of %d frames and %d of %d mel bins",
        resolved.time_mask,
        frames,
        resolved.freq_mask,
        feature_extractor.num_mel_bins,
    )


def _classifier_of(model):
    """The classifier a run trains (inside the training-only wrapper of a contrastive run)."""
    return model.model if isinstance(model, ClassifierWithProjection) else model


def main(argv: list[str] | None = None) -> dict:
    parser = RecipeArgumentParser(
        (
            ModelArguments,
            DataArguments,
            AugmentationArguments,
            ConsistencyArguments,
            ContrastiveArguments,
            LoraArguments,
            FinetuneTrainingArguments,
        )
    )
    model_args, data_args, aug_args, cr_args, con_args, lora_args, train_args = (
        parser.parse_args_into_dataclasses(args=argv)
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if model_args.problem_type not in ("multi_label_classification", "single_label_classification"):
        raise ValueError(
            f"--problem_type must be multi_label or single_label classification, got "
            f"{model_args.problem_type!r}"
        )
    _check_lora(lora_args, model_args, train_args)
    if con_args.supcon_weight > 0 and (cr_args.consistency_regularization or lora_args.lora_r):
        raise ValueError("--supcon_weight cannot be combined with --consistency_regularization or --lora_r")
    # The process layout is needed before the loop exists, to shard the data once per rank.
    state = start_processes(cpu=train_args.cpu)
    saved_extractor = _pretrained_feature_extractor(model_args) if model_args.model_name_or_path else None
    _resolve_clip_seconds(data_args, saved_extractor, model_args.model_name_or_path)
    sources = load_sources(data_args)
    if model_args.problem_type == "single_label_classification":
        for source in sources.values():
            if source is not None:
                check_one_label_per_clip(source)  # multi-hot targets would pass the softmax unnoticed
    label_names = list(sources["train"].label_names)
    set_seed(train_args.seed)  # the same initial weights on every rank and every rerun
    model, feature_extractor = _model(model_args, label_names, saved_extractor)
    stream = StreamFactory.for_process(sources, data_args, train_args, feature_extractor.sampling_rate, state)
    single_label = model_args.problem_type == "single_label_classification"
    if model_args.lp_ft:  # before any wrapper (LoRA, projection): the head of the plain classifier
        clips = init_classifier_from_probe(
            model, stream("train", False), feature_extractor, not single_label, gather_object
        )
        logger.info("LP-FT: the head starts as a logistic-regression probe fitted on %d train clips", clips)
    if lora_args.lora_r:
        model = _with_lora(model, lora_args, model_args)
    _log_augmentation(aug_args, feature_extractor)

    train_batches = stream("train", train=True)
    if cr_args.consistency_regularization:
        step = ConsistencyClassificationStep(feature_extractor, aug_args, cr_args, single_label)
        if cr_args.unlabeled_ratio > 0:
            if "unlabeled" not in sources:
                raise ValueError("--unlabeled_ratio > 0 needs --unlabeled_dataset")
            unlabeled_batch = max(1, round(cr_args.unlabeled_ratio * train_args.per_device_batch_size))
            train_batches = SemiSupervisedBatches(train_batches, stream("unlabeled", True, unlabeled_batch))
    elif con_args.supcon_weight > 0:
        # ContrastASC's teacher: CE + a mixup-aware supervised contrastive loss on a training-only projection.
        projection = ProjectionHead(embedding_width(model.config), con_args.projection_dim)
        model = ClassifierWithProjection(model, projection)
        step = SupConClassificationStep(
            feature_extractor, aug_args, con_args.supcon_weight, con_args.supcon_temperature, single_label
        )
    else:
        step = SupervisedClassificationStep(feature_extractor, aug_args, single_label=single_label)
    loop = TrainLoop(train_args, model, train_batches, step, feature_extractor=feature_extractor)
    classifier = _classifier_of
    if lora_args.merge_lora:
        from hf_audiorep.adapters import merged_model

        loop.export_fn = merged_model
    elif con_args.supcon_weight > 0:
        loop.export_fn = classifier
    if "eval" in sources:
        loop.eval_fn = lambda m: evaluate_classifier(
            classifier(m), stream("eval", False), feature_extractor, loop.accelerator
        )
    summary = loop.run()

    if "test" in sources:
        test = evaluate_classifier(
            classifier(loop.model), stream("test", False), feature_extractor, loop.accelerator, "test_"
        )
        summary.update(test)
        if loop.accelerator.is_main_process:
            dataset_name = data_args.dataset + (
                f"/{data_args.dataset_config}" if data_args.dataset_config else ""
            )
            results = {**test, "dataset": dataset_name, "split": data_args.test_split}
            write_json_atomic(Path(train_args.output_dir, "eval_results.json"), results)
            logger.info("test: %s", json.dumps(test))
    push_run(train_args)  # after eval_results.json is written, so the card carries the test mAP
    loop.finish()
    return summary


if __name__ == "__main__":
    run_recipe(main)  # an unreachable Hub: one line from rank 0 and exit status 2, not a traceback per rank
