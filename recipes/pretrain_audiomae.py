"""Pre-train an AudioMAE encoder as a masked autoencoder (Huang et al., 2022); labels are ignored.

Runs with no arguments on the embedded corpus (the tiny preset, 120 steps of 8 clips: about 9 minutes on
two busy CPU cores, reconstruction loss 1.7 -> 0.87) and ends with the validation reconstruction loss and a
linear-probe mAP of the frozen encoder on the corpus test split (`eval_results.json`):

    accelerate launch recipes/pretrain_audiomae.py

On AudioSet streamed from the Hub, at AudioMAE's size (ViT-B encoder, 512 x 8 decoder, 80 % masking):

    accelerate launch recipes/pretrain_audiomae.py --dataset agkphysics/AudioSet --dataset_config unbalanced \
        --streaming --preset audiomae-base --max_steps 130000 --per_device_batch_size 64 \
        --learning_rate 4e-4 --warmup_steps 12000 --mixed_precision bf16 --output_dir outputs/audiomae-pt \
        --probe_dataset agkphysics/AudioSet --probe_dataset_config balanced

The output directory holds an `AudioMAEForPreTraining` checkpoint and its `preprocessor_config.json`;
fine-tune it with `recipes/finetune.py --model_name_or_path <output_dir>` (the decoder is dropped and a
new head is added).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import set_seed

from hf_audiorep.data.arguments import DataArguments, StreamFactory, load_sources
from hf_audiorep.evaluation import ProbeArguments, build_linear_probe, probe_report, write_probe_results
from hf_audiorep.hub import push_run
from hf_audiorep.hub_errors import check_model_source, run_recipe, start_processes
from hf_audiorep.modeling import AudioFbankFeatureExtractor, AudioMAEConfig, AudioMAEForPreTraining
from hf_audiorep.objectives import MaskedAutoencoderStep, evaluate_reconstruction
from hf_audiorep.training import TrainingArguments, TrainLoop
from hf_audiorep.training.argument_parser import RecipeArgumentParser

logger = logging.getLogger("pretrain_audiomae")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = None
    """an AudioMAE checkpoint (directory or Hub id) to continue from; when unset a fresh model is built"""
    preset: str = "audiomae-tiny"
    """architecture preset for a fresh model: audiomae-tiny or audiomae-base"""
    max_length: int | None = None
    """frames the model sees (multiple of the patch size); default: the preset's (1024 = 10.24 s)"""
    mask_ratio: float = 0.8
    """fraction of patches hidden from the encoder (AudioMAE: 0.8)"""
    norm_pix_loss: bool = True
    """regress per-patch normalised log-mels (AudioMAE: True)"""

    def __post_init__(self):
        check_model_source(self.model_name_or_path, "--model_name_or_path")


@dataclass
class PretrainTrainingArguments(TrainingArguments):
    """The shared loop's arguments, with MAE's optimiser settings and defaults that run in CPU minutes."""

    output_dir: str = "outputs/pretrain-audiomae"
    max_steps: int = 120
    per_device_batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4  # AudioMAE AS-2M pre-training
    adam_beta2: float = 0.95  # MAE
    warmup_steps: int = 12
    eval_steps: int | None = None  # reconstruction loss and linear probe at the end only
    eval_on_start: bool = True  # the initialisation's probe: the baseline the final one is read against
    checkpointing_steps: int | None = 60


def _model(model_args: ModelArguments) -> tuple[AudioMAEForPreTraining, AudioFbankFeatureExtractor]:
    overrides = {"mask_ratio": model_args.mask_ratio, "norm_pix_loss": model_args.norm_pix_loss}
    if model_args.model_name_or_path:
        model = AudioMAEForPreTraining.from_pretrained(model_args.model_name_or_path, **overrides)
        feature_extractor = AudioFbankFeatureExtractor.from_pretrained(model_args.model_name_or_path)
        return model, feature_extractor
    if model_args.max_length:
        overrides["max_length"] = model_args.max_length
    config = AudioMAEConfig.from_preset(model_args.preset, **overrides)
    return AudioMAEForPreTraining(config), AudioFbankFeatureExtractor(target_length=config.max_length)


def main(argv: list[str] | None = None) -> dict:
    parser = RecipeArgumentParser((ModelArguments, ProbeArguments, DataArguments, PretrainTrainingArguments))
    model_args, probe_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # The process layout is needed before the loop exists, to shard the data once per rank.
    state = start_processes(cpu=train_args.cpu)
    sources = load_sources(data_args, roles=("train", "eval"))
    set_seed(train_args.seed)  # the same initial weights on every rank and every rerun
    model, feature_extractor = _model(model_args)

    stream = StreamFactory.for_process(sources, data_args, train_args, feature_extractor.sampling_rate, state)

    step = MaskedAutoencoderStep(feature_extractor)
    loop = TrainLoop(train_args, model, stream("train", True), step, feature_extractor=feature_extractor)
    probe = build_linear_probe(probe_args, data_args, train_args, feature_extractor.sampling_rate, state)

    def evaluate(model) -> dict:
        metrics = {}
        if "eval" in sources:
            metrics.update(
                evaluate_reconstruction(
                    model, stream("eval", False), feature_extractor, loop.accelerator, seed=train_args.seed
                )
            )
        if probe is not None:
            metrics.update(probe(model, feature_extractor))
        return metrics

    if "eval" in sources or probe is not None:
        loop.eval_fn = evaluate
    summary = loop.run()
    if probe is not None and loop.accelerator.is_main_process:
        results = write_probe_results(train_args.output_dir, probe_args, summary, loop.eval_history)
        print(probe_report(results, train_args.output_dir), flush=True)
    logger.info("pre-trained model saved to %s", train_args.output_dir)
    push_run(train_args)  # with --push_to_hub: after eval_results.json, so the card carries the probe mAP
    loop.finish()
    return summary


if __name__ == "__main__":
    run_recipe(main)  # an unreachable Hub: one line from rank 0 and exit status 2, not a traceback per rank
