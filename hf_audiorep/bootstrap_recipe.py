"""The bootstrap pre-training job that ``recipes/pretrain_cat.py`` and ``recipes/pretrain_bat.py`` run.

Both recipes pre-train an encoder by bootstrapping an EMA teacher (`hf_audiorep.objectives.bootstrap`) on the
same data, probe it the same way and save it the same way; they differ only in the model family, its default
preset and the options that belong to one family. A recipe declares those (a ``ModelArguments`` subclass
with its ``preset`` default and extra fields, a `BootstrapTrainingArguments` subclass with its
``output_dir``) and calls `run_bootstrap_pretraining`. Every field of the argument dataclasses carries a
docstring, which `RecipeArgumentParser` turns into its ``--help`` line.

Every field of a ``ModelArguments`` / `RRArguments` except the ones in `NOT_CONFIG_FIELDS` is a config field
of the same name: set on the command line it overrides the preset's (or the checkpoint's) value; left unset
(None) it keeps it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Literal

from transformers import set_seed

from . import registry
from .data.arguments import DataArguments, StreamFactory, load_sources
from .evaluation import ProbeArguments, build_linear_probe, probe_report, write_probe_results
from .hub import push_run
from .hub_errors import check_model_source, start_processes
from .modeling import AudioFbankFeatureExtractor
from .modeling._bootstrap_config import BootstrapViTConfig
from .modeling._config_checks import choices
from .objectives import BootstrapPretrainingStep, FrozenTeacher, build_ema_teacher
from .training import TrainingArguments, TrainLoop
from .training.argument_parser import RecipeArgumentParser

__all__ = [
    "NOT_CONFIG_FIELDS",
    "BootstrapDataArguments",
    "BootstrapModelArguments",
    "BootstrapTrainingArguments",
    "RRArguments",
    "config_overrides",
    "run_bootstrap_pretraining",
]

# The options' argparse choices are the config fields' own values.
DECODER_TYPES = choices(BootstrapViTConfig, "decoder_type")
DECODER_POSITIONS = choices(BootstrapViTConfig, "transformer_decoder_positions")
RR_LOSS_TYPES = choices(BootstrapViTConfig, "rr_loss_type")
CLS_RR_REDUCTIONS = choices(BootstrapViTConfig, "cls_rr_reduction")

#: argument fields that choose the model or the RR teacher rather than set a config field
NOT_CONFIG_FIELDS = frozenset(
    {"model_name_or_path", "preset", "rr_teacher", "rr_column", "trust_remote_code"}
)


@dataclass
class BootstrapModelArguments:
    """What every bootstrap recipe lets the command line set on the model; a recipe subclasses it to give
    ``preset`` its family's default and to add the family's own fields."""

    model_name_or_path: str | None = None
    """a pre-training checkpoint of this family to continue from; when unset a fresh model is built from
    --preset"""
    preset: str = ""
    """architecture preset for a fresh model"""
    max_length: int | None = None
    """frames the model sees (multiple of 16); default: enough for --clip_seconds, at most 1024"""
    mask_ratio: float | None = None
    """fraction of patches hidden from each student clone; default: the preset's (EAT, CAT, BAT: 0.8;
    cat-small: 0.6)"""
    clone_batch: int | None = None
    """independently masked student clones per clip (CAT: 4, EAT: 16)"""
    cls_loss_weight: float | None = None
    """weight of the CLS-to-global alignment loss (CAT: 1; the small presets: 0)"""
    decoder_type: Literal[DECODER_TYPES] | None = None
    """pre-training decoder: cnn (EAT's, CAT's default) | transformer (BAT's default)"""
    transformer_decoder_positions: Literal[DECODER_POSITIONS] | None = None
    """how the transformer decoder tells patches apart: sincos (MAE's fixed positions, the default) | conv (a
    depthwise conv over the patch grid, no absolute positions)"""
    ema_decay: float | None = None
    """teacher EMA decay at step 0 (EAT, CAT: 0.9998; the small presets' is shorter for CPU-length runs)"""
    ema_end_decay: float | None = None
    """teacher EMA decay reached after --ema_anneal_end_steps (EAT, CAT: 0.99999)"""
    ema_anneal_end_steps: int | None = None
    """optimizer steps of the linear decay ramp (EAT, CAT: 100000)"""

    def __post_init__(self):
        check_model_source(self.model_name_or_path, "--model_name_or_path")


@dataclass
class RRArguments:
    rr_teacher: str | None = None
    """frozen encoder for representation regularization (directory or Hub id): a ClapModel, a model of this
    library, or any AutoModel with a pooled output; embeddings are computed on the fly"""
    rr_column: str | None = None
    """dataset column with precomputed RR target embeddings (instead of --rr_teacher)"""
    rr_loss_weight: float | None = None
    """weight of the RR loss (CAT: 1.0)"""
    rr_layer: int | None = None
    """student layer whose CLS is projected: -1 = final (the reference's default), i = block i's FFN output"""
    rr_loss_type: Literal[RR_LOSS_TYPES] | None = None
    """mse (reference default) | cosine | l1"""
    cls_rr_reduction: Literal[CLS_RR_REDUCTIONS] | None = None
    """sum (fairseq parity: CLS and RR terms summed over student samples) | mean"""
    trust_remote_code: bool = False
    """allow remote code when loading --rr_teacher"""

    def __post_init__(self):
        check_model_source(self.rr_teacher, "--rr_teacher")


@dataclass
class BootstrapDataArguments(DataArguments):
    clip_seconds: float = 4.0
    """clip length; 4 s keeps the default CPU run to minutes (AudioSet: 10, with --max_length 1024)"""


@dataclass
class BootstrapTrainingArguments(TrainingArguments):
    """The shared loop's arguments: EAT/CAT's optimiser (AdamW 0.9/0.95, wd 0.05, clip 4), CPU-minute
    defaults."""

    max_steps: int = 600
    per_device_batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    adam_beta2: float = 0.95
    max_grad_norm: float | None = 4.0
    warmup_steps: int = 30
    eval_steps: int | None = 200
    eval_on_start: bool = True  # the initialisation's probe: the baseline every later one is read against
    checkpointing_steps: int | None = 200


def config_overrides(*arg_groups) -> dict:
    """Config fields the user set on the command line (None = keep the preset's / checkpoint's)."""
    values = {}
    for group in arg_groups:
        values.update({k: v for k, v in dataclasses.asdict(group).items() if k not in NOT_CONFIG_FIELDS})
    return {k: v for k, v in values.items() if v is not None}


def _rr_teacher(rr_args: RRArguments, device) -> FrozenTeacher | None:
    if rr_args.rr_teacher and rr_args.rr_column:
        raise ValueError("give --rr_teacher or --rr_column, not both")
    if not rr_args.rr_teacher:
        return None
    return FrozenTeacher.from_pretrained(
        rr_args.rr_teacher, device=device, trust_remote_code=rr_args.trust_remote_code
    )


def _frames(clip_seconds: float, frame_shift_ms: float = 10.0, patch_size: int = 16) -> int:
    """Frames of a clip of ``clip_seconds``, rounded up to whole patches (the model pads to them anyway)."""
    frames = math.ceil(clip_seconds * 1000 / frame_shift_ms)
    return -(-frames // patch_size) * patch_size


def _continued_model(model_class, path: str, overrides: dict):
    """The checkpoint at ``path`` with the command line's ``overrides``. An override that changes the
    architecture (another decoder, gate or width) leaves weights that do not fit: refused by name, where
    transformers would stop with a size-mismatch error or start the new parts at random without a word."""
    saved = model_class.config_class.from_pretrained(path)
    changed = {k: v for k, v in overrides.items() if hasattr(saved, k) and getattr(saved, k) != v}
    try:
        model, info = model_class.from_pretrained(path, **overrides, output_loading_info=True)
    except RuntimeError as err:
        if not changed:
            raise
        info, model = {"mismatched_keys": [str(err)]}, None
    misfit = any(info.get(key) for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    if changed and misfit:
        settings = ", ".join(f"--{k} {v} (the checkpoint's: {getattr(saved, k)})" for k, v in changed.items())
        raise ValueError(
            f"{path} cannot continue with {settings}: its weights do not fit that architecture. Continue "
            "with the checkpoint's own settings, or start a new run from a --preset to change them"
        )
    return model


def _model(model_class, model_args, rr_args, rr_dim: int | None, clip_seconds: float):
    overrides = config_overrides(model_args, rr_args)
    if model_args.model_name_or_path:
        model = _continued_model(model_class, model_args.model_name_or_path, overrides)
        feature_extractor = AudioFbankFeatureExtractor.from_pretrained(model_args.model_name_or_path)
        if rr_dim is not None and model.config.rr_embedding_dim != rr_dim:
            raise ValueError(
                f"the checkpoint's RR projector outputs {model.config.rr_embedding_dim} dims but the RR "
                f"targets have {rr_dim}"
            )
        return model, feature_extractor
    # Without RR targets the projector would get no gradient (and DDP would reject the unused parameter).
    overrides["rr_embedding_dim"] = rr_dim or 0
    family = registry.architecture_for(model_class.config_class.model_type)
    if model_args.preset not in family.presets:
        raise ValueError(
            f"--preset {model_args.preset!r} is not a {family.name.upper()} preset "
            f"({', '.join(family.presets)})"
        )
    if "max_length" not in overrides:
        # Short clips padded to 10.24 s would spend most of the compute on padding patches.
        preset_length = registry.config_from_preset(model_args.preset).max_length
        overrides["max_length"] = min(preset_length, _frames(clip_seconds))
    config = registry.config_from_preset(model_args.preset, **overrides)
    return model_class(config), AudioFbankFeatureExtractor(target_length=config.max_length)


def run_bootstrap_pretraining(
    argv: list[str] | None,
    model_class: type,
    model_arguments: type[BootstrapModelArguments],
    training_arguments: type[BootstrapTrainingArguments],
) -> dict:
    """Parse ``argv`` and pre-train a ``model_class`` (a ``*ForPreTraining`` bootstrap model): the stream, the
    EMA teacher, the optional RR teacher, the loop with its probe, the probe report, ``push_run``.

    Returns the loop's summary (``train_results.json``).
    """
    parser = RecipeArgumentParser(
        (model_arguments, RRArguments, ProbeArguments, BootstrapDataArguments, training_arguments)
    )
    model_args, rr_args, probe_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    family = registry.architecture_for(model_class.config_class.model_type).name
    logger = logging.getLogger(f"pretrain_{family}")
    # The process layout is needed before the loop exists, to shard the data once per rank.
    state = start_processes(cpu=train_args.cpu)
    sources = load_sources(data_args, roles=("train",))

    # Every model of these recipes reads 16 kHz unless a checkpoint's feature extractor says otherwise.
    sample_rate = AudioFbankFeatureExtractor().sampling_rate
    if model_args.model_name_or_path:
        sample_rate = AudioFbankFeatureExtractor.from_pretrained(model_args.model_name_or_path).sampling_rate
    stream = StreamFactory.for_process(sources, data_args, train_args, sample_rate, state)
    extra = (rr_args.rr_column,) if rr_args.rr_column else ()
    train_batches = stream("train", train=True, extra_columns=extra)

    rr_teacher = _rr_teacher(rr_args, state.device)
    rr_dim = rr_teacher.embedding_dim if rr_teacher is not None else None
    if rr_args.rr_column:
        rr_dim = train_batches.extra_dims[rr_args.rr_column]  # the projector's size follows the column
    set_seed(train_args.seed)  # the same initial weights on every rank and every rerun
    model, feature_extractor = _model(model_class, model_args, rr_args, rr_dim, data_args.clip_seconds)
    teacher = build_ema_teacher(model)
    step = BootstrapPretrainingStep(
        feature_extractor, teacher, rr_teacher=rr_teacher, rr_column=rr_args.rr_column
    )
    loop = TrainLoop(
        train_args,
        model,
        train_batches,
        step,
        feature_extractor=feature_extractor,
        extra_state={"ema_teacher": teacher},
        on_optimizer_step=[step.update_teacher],
    )
    probe = build_linear_probe(probe_args, data_args, train_args, feature_extractor.sampling_rate, state)
    if probe is not None:
        loop.eval_fn = lambda m: probe(m, feature_extractor)
    summary = loop.run()

    if probe is not None and loop.accelerator.is_main_process:
        results = write_probe_results(train_args.output_dir, probe_args, summary, loop.eval_history)
        print(probe_report(results, train_args.output_dir), flush=True)
    if loop.accelerator.is_main_process:
        logger.info("pre-trained model saved to %s", train_args.output_dir)
    push_run(train_args)  # with --push_to_hub: after eval_results.json, so the card carries the probe mAP
    loop.finish()
    return summary
