"""Pre-train a CAT encoder (multi-resolution stem + post-LN ViT) by bootstrapping an EMA teacher, with
optional representation regularization (RR) toward a frozen encoder; labels are ignored.

Runs with no arguments on the embedded corpus (the `cat-small` preset, 600 steps, minutes on a CPU), probes
the encoder (a linear probe on the corpus test split) at the initialisation and every 200 steps, and ends
with a table of the initialisation's probe beside the trained encoder's, a plot of the probe against the
step (`probe_curve.png`) and `eval_results.json`:

    accelerate launch recipes/pretrain_cat.py

With RR toward a frozen encoder (a CLAP model, any model of this library, or any AutoModel with a pooled
output; embeddings computed on the fly with its own feature extractor and sample rate):

    accelerate launch recipes/pretrain_cat.py --rr_teacher laion/clap-htsat-unfused
    accelerate launch recipes/pretrain_cat.py --rr_teacher outputs/finetune   # a fine-tuned hf_audiorep model

or from a precomputed column of the dataset (`--rr_column clap_embedding`).

At the reference scale (cat-base, AudioSet streamed from the Hub, 96 clips x 4 clones per GPU, bf16):

    accelerate launch --multi_gpu --num_processes 8 recipes/pretrain_cat.py --preset cat-base \
        --dataset agkphysics/AudioSet --dataset_config unbalanced --streaming \
        --rr_teacher laion/clap-htsat-unfused --per_device_batch_size 96 --learning_rate 5e-4 \
        --warmup_steps 53333 --max_steps 400000 --clip_seconds 10 --max_length 1024 --mixed_precision bf16 \
        --probe_dataset agkphysics/AudioSet --probe_dataset_config balanced --output_dir outputs/cat-base

The output directory holds the `CATForPreTraining` checkpoint (student encoder, decoder, RR projector), its
`preprocessor_config.json`, and `eval_results.json` with the final probe mAP. `AutoModel.from_pretrained`
on it gives the encoder; fine-tune with `recipes/finetune.py --model_name_or_path <output_dir>`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from accelerate import PartialState
from transformers import set_seed

import hf_audiorep
from hf_audiorep.data.arguments import DataArguments, StreamFactory, load_sources
from hf_audiorep.evaluation import ProbeArguments, build_linear_probe, probe_report, write_probe_results
from hf_audiorep.hub import push_run
from hf_audiorep.hub_errors import run_recipe
from hf_audiorep.modeling import AudioFbankFeatureExtractor, CATForPreTraining
from hf_audiorep.objectives import BootstrapPretrainingStep, FrozenTeacher, build_ema_teacher
from hf_audiorep.training import TrainingArguments, TrainLoop
from hf_audiorep.training.argument_parser import RecipeArgumentParser

logger = logging.getLogger("pretrain_cat")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = None
    """a CAT pre-training checkpoint to continue from; when unset a fresh model is built from --preset"""
    preset: str = "cat-small"
    """architecture preset for a fresh model: cat-small, cat-base, or eat-base (no stem, no RR)"""
    max_length: int | None = None
    """frames the model sees (multiple of 16); default: enough for --clip_seconds, at most 1024"""
    mask_ratio: float | None = None
    """fraction of patches hidden from each student clone (CAT: 0.8)"""
    clone_batch: int | None = None
    """independently masked student clones per clip (CAT: 4, EAT: 16)"""
    cls_loss_weight: float | None = None
    """weight of the CLS-to-global alignment loss (CAT: 1)"""
    ema_decay: float | None = None
    """teacher EMA decay at step 0 (CAT: 0.9998; the cat-small preset's is shorter for CPU-length runs)"""
    ema_end_decay: float | None = None
    """teacher EMA decay reached after --ema_anneal_end_steps (CAT: 0.99999)"""
    ema_anneal_end_steps: int | None = None
    """optimizer steps of the linear decay ramp (CAT: 100000)"""


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
    rr_loss_type: str | None = None
    """mse (reference default) | cosine | l1"""
    cls_rr_reduction: str | None = None
    """sum (fairseq parity: CLS and RR terms summed over student samples) | mean"""
    trust_remote_code: bool = False
    """allow remote code when loading --rr_teacher"""


@dataclass
class CATDataArguments(DataArguments):
    clip_seconds: float = 4.0
    """clip length; 4 s keeps the default CPU run to minutes (AudioSet: 10, with --max_length 1024)"""


@dataclass
class CATPretrainTrainingArguments(TrainingArguments):
    """The shared loop's arguments: CAT's optimiser (AdamW 0.9/0.95, wd 0.05, clip 4), CPU-minute defaults."""

    output_dir: str = "outputs/pretrain-cat"
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


_CONFIG_OVERRIDES = (
    "max_length",
    "mask_ratio",
    "clone_batch",
    "cls_loss_weight",
    "ema_decay",
    "ema_end_decay",
    "ema_anneal_end_steps",
    "rr_loss_weight",
    "rr_layer",
    "rr_loss_type",
    "cls_rr_reduction",
)


def _overrides(*arg_groups) -> dict:
    """Config fields the user set on the command line (None = keep the preset's / checkpoint's)."""
    values = {}
    for group in arg_groups:
        values.update({k: v for k, v in dataclasses.asdict(group).items() if k in _CONFIG_OVERRIDES})
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


def _model(
    model_args, rr_args, rr_dim: int | None, clip_seconds: float
) -> tuple[CATForPreTraining, AudioFbankFeatureExtractor]:
    overrides = _overrides(model_args, rr_args)
    if model_args.model_name_or_path:
        model = CATForPreTraining.from_pretrained(model_args.model_name_or_path, **overrides)
        feature_extractor = AudioFbankFeatureExtractor.from_pretrained(model_args.model_name_or_path)
        if rr_dim is not None and model.config.rr_embedding_dim != rr_dim:
            raise ValueError(
                f"the checkpoint's RR projector outputs {model.config.rr_embedding_dim} dims but the RR "
                f"targets have {rr_dim}"
            )
        return model, feature_extractor
    # Without RR targets the projector would get no gradient (and DDP would reject the unused parameter).
    overrides["rr_embedding_dim"] = rr_dim or 0
    if "max_length" not in overrides and model_args.preset in hf_audiorep.PRESETS:
        # Short clips padded to 10.24 s would spend most of the compute on padding patches.
        preset_length = hf_audiorep.config_from_preset(model_args.preset).max_length
        overrides["max_length"] = min(preset_length, _frames(clip_seconds))
    config = hf_audiorep.config_from_preset(model_args.preset, **overrides)
    if not isinstance(config, hf_audiorep.CATConfig):
        raise ValueError(
            f"--preset {model_args.preset!r} is not a CAT preset (cat-small, cat-base, eat-base)"
        )
    return CATForPreTraining(config), AudioFbankFeatureExtractor(target_length=config.max_length)


def main(argv: list[str] | None = None) -> dict:
    parser = RecipeArgumentParser(
        (ModelArguments, RRArguments, ProbeArguments, CATDataArguments, CATPretrainTrainingArguments)
    )
    model_args, rr_args, probe_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # The process layout is needed before the loop exists, to shard the data once per rank.
    state = PartialState(cpu=train_args.cpu)
    sources = load_sources(data_args, roles=("train",))

    # Every model of this recipe reads 16 kHz unless a checkpoint's feature extractor says otherwise.
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
    model, feature_extractor = _model(model_args, rr_args, rr_dim, data_args.clip_seconds)
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


if __name__ == "__main__":
    run_recipe(main)  # an unreachable Hub: one line from rank 0 and exit status 2, not a traceback per rank
