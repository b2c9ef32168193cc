"""Pre-train an AudioMAE encoder as a masked autoencoder (Huang et al., 2022); labels are ignored.

Runs with no arguments on the embedded corpus (the tiny preset, 120 steps of 8 clips: about 9 minutes on
two busy CPU cores, reconstruction loss 1.7 -> 0.87):

    accelerate launch recipes/pretrain_audiomae.py

On AudioSet streamed from the Hub, at AudioMAE's size (ViT-B encoder, 512 x 8 decoder, 80 % masking):

    accelerate launch recipes/pretrain_audiomae.py --dataset agkphysics/AudioSet --dataset_config unbalanced \
        --streaming --preset audiomae-base --max_steps 130000 --per_device_batch_size 64 \
        --learning_rate 4e-4 --warmup_steps 12000 --mixed_precision bf16 --output_dir outputs/audiomae-pt

The output directory holds an `AudioMAEForPreTraining` checkpoint and its `preprocessor_config.json`;
fine-tune it with `recipes/finetune.py --model_name_or_path <output_dir>` (the decoder is dropped and a
new head is added).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from accelerate import PartialState
from transformers import HfArgumentParser, set_seed

from hf_audiorep.data import AudioStream, load_audio_source, load_embedded_corpus
from hf_audiorep.modeling import AudioFbankFeatureExtractor, AudioMAEConfig, AudioMAEForPreTraining
from hf_audiorep.training import MaskedAutoencoderStep, TrainingArguments, TrainLoop, evaluate_reconstruction

logger = logging.getLogger("pretrain_audiomae")
EMBEDDED = "embedded"


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


@dataclass
class DataArguments:
    dataset: str = EMBEDDED
    """'embedded' (built-in corpus), a Hub id (agkphysics/AudioSet, confit/audioset-16khz-wds) or a path"""
    dataset_config: str | None = None
    train_split: str = "train"
    eval_split: str | None = "validation"
    """split on which the reconstruction loss is reported; empty or None to skip"""
    streaming: bool = False
    clip_seconds: float = 10.0
    shuffle_buffer: int = 1000
    num_decode_threads: int = 4
    corpus_seed: int = 0
    num_train_clips: int | None = None
    """embedded corpus only: number of training clips (default: the corpus default)"""
    num_eval_clips: int | None = None
    """embedded corpus only: number of validation clips"""
    num_test_clips: int | None = None
    """embedded corpus only: test clips (unused here; match the fine-tuning run to share its cached corpus)"""


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
    eval_steps: int | None = None  # the reconstruction loss on the validation split at the end only
    checkpointing_steps: int | None = 60


def _sources(data: DataArguments) -> dict[str, object]:
    splits = {"train": data.train_split, "eval": data.eval_split}
    splits = {role: split for role, split in splits.items() if split and split.lower() != "none"}
    if data.dataset == EMBEDDED:
        kwargs = {"seed": data.corpus_seed, "clip_seconds": data.clip_seconds}
        for key, value in (("num_train", data.num_train_clips), ("num_validation", data.num_eval_clips),
                           ("num_test", data.num_test_clips)):
            if value is not None:
                kwargs[key] = value
        corpus = load_embedded_corpus(**kwargs)
        return {role: load_audio_source(corpus[split]) for role, split in splits.items()}
    return {
        role: load_audio_source(data.dataset, split=split, streaming=data.streaming,
                                config_name=data.dataset_config)
        for role, split in splits.items()
    }


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
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainTrainingArguments))
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # The process layout is needed before the loop exists, to shard the data once per rank.
    state = PartialState(cpu=train_args.cpu)
    sources = _sources(data_args)
    set_seed(train_args.seed)  # the same initial weights on every rank and every rerun
    model, feature_extractor = _model(model_args)

    def stream(role: str, train: bool) -> AudioStream:
        return AudioStream(
            sources[role],
            batch_size=train_args.per_device_batch_size,
            sample_rate=feature_extractor.sampling_rate,
            clip_seconds=data_args.clip_seconds,
            train=train,
            seed=train_args.seed,
            rank=state.process_index,
            world_size=state.num_processes,
            shuffle_buffer=data_args.shuffle_buffer,
            num_decode_threads=data_args.num_decode_threads,
        )

    step = MaskedAutoencoderStep(feature_extractor)
    loop = TrainLoop(train_args, model, stream("train", True), step, feature_extractor=feature_extractor)
    if "eval" in sources:
        loop.eval_fn = lambda m: evaluate_reconstruction(
            m, stream("eval", False), feature_extractor, loop.accelerator, seed=train_args.seed
        )
    summary = loop.run()
    logger.info("pre-trained model saved to %s", train_args.output_dir)
    return summary


if __name__ == "__main__":
    main()
