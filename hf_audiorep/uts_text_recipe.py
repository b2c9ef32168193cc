"""The text objectives of ``recipes/pretrain_uts.py`` (UTS, part 2): autoregressive captioning (AR), parallel
decoding (PAR), audio-text contrastive learning and the multi-task objective ``L_MTC + λ (0.25 L_AR + 0.75
L_PAR)``, all on the Zipformer encoder, and what each is evaluated on beside the encoder's probes.

The recipe keeps what every objective shares (data, tag system, probes, loop); this module adds, per text
objective, the model (`ZipformerForConditionalGeneration` for the decoders, `ZipformerForAudioTextContrastive`
for contrastive), its tokenizer (the reference one when the Hub is reachable, else one trained on the corpus
captions and saved with the model), the training step, and the evaluation of the trained model on the test
split: captioning (BLEU, CIDEr-D), retrieval (R@1, R@10) and zero-shot tagging. Every field of
`UTSTextArguments` carries a docstring, which `RecipeArgumentParser` turns into its ``--help`` line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, BertConfig

from .data.text_tokenizers import DECODER_TOKENIZER, TEXT_ENCODER_TOKENIZER, load_or_train_tokenizer
from .evaluation.captioning import evaluate_captioning
from .evaluation.retrieval import embed_audio_text, retrieval_recall, zero_shot_tagging
from .modeling.configuration_zipformer import DECODER_PRESETS, TEXT_ENCODER_PRESETS
from .modeling.modeling_zipformer_caption import (
    ZipformerForConditionalGeneration,
    caption_decoder_config,
    init_decoder_from_bart,
)
from .modeling.modeling_zipformer_clap import ZipformerForAudioTextContrastive, init_text_encoder_from
from .modeling.processing_zipformer import ZipformerProcessor
from .objectives.audio_text import AudioTextContrastiveStep
from .objectives.captioning import CaptioningStep
from .registry import config_from_preset

__all__ = [
    "DECODER_OBJECTIVES",
    "TEXT_FIELDS",
    "TEXT_OBJECTIVES",
    "UTSTextArguments",
    "WithText",
    "batch_text",
    "build_text_model",
    "evaluate_text_model",
    "tags_text",
    "text_step",
    "text_tokenizer",
]

logger = logging.getLogger(__name__)

DECODER_OBJECTIVES = ("ar", "par", "multitask")
TEXT_OBJECTIVES = (*DECODER_OBJECTIVES, "contrastive")
TEXT_FIELDS = ("caption", "tags")
#: per sample, the probability of a parallel (all-mask, bidirectional) decoding pass; multi-task's 0.75 is the
#: paper's 0.25 L_AR + 0.75 L_PAR (architectures.md 5(b))
PARALLEL_DECODING_PROB = {"ar": 0.0, "par": 1.0, "multitask": 0.75}
#: the batch key the steps read the text from
TEXT_KEY = "text"


@dataclass
class UTSTextArguments:
    text_field: str = "caption"
    """text of the AR / PAR / contrastive objectives: caption (the clip's caption) or tags (its labels in
    vocabulary order, "tag_a, tag_d, tag_k")"""
    parallel_decoding_prob: float | None = None
    """per clip, the probability of a PAR pass (all-mask decoder input, bidirectional); default by objective:
    ar 0, par 1, multitask 0.75"""
    label_smoothing: float = 0.1
    """label smoothing of the decoder's cross-entropy (Auden: 0.1)"""
    multitask_weight: float = 1.0
    """λ of multi-task: L_MTC + λ L_caption (the paper does not give it)"""
    decoder_preset: str | None = None
    """caption decoder geometry: small | bart-base; default: small for zipformer-small, else bart-base"""
    text_frames_norm: str | None = None
    """none | batch: standardise the encoder frames the caption decoder or the contrastive audio projection
    reads (BatchNorm without affine parameters); default: batch for a contrastive model from scratch, else
    the config's (none)"""
    decoder_init: str | None = None
    """a BART checkpoint (facebook/bart-base, a folder) the decoder starts from; default: from scratch"""
    text_encoder_preset: str | None = None
    """contrastive text encoder geometry: small | bert-base; default: small for zipformer-small, else
    bert-base"""
    text_encoder_init: str | None = None
    """a BERT checkpoint (bert-base-uncased, a folder) the text encoder starts from; default: from scratch"""
    tokenizer: str | None = None
    """tokenizer (Hub id or folder; 'corpus': trained on the training captions); default: facebook/bart-base
    (decoder) or bert-base-uncased (text encoder), and when that is unreachable one of the same kind trained
    on the training captions"""
    tokenizer_vocab_size: int = 1000
    """tokens of a tokenizer trained on the captions (when the reference one is unreachable)"""
    max_text_length: int = 128
    """tokens of text kept per clip (Auden: 128)"""
    contrastive_temperature: float = 0.07
    """InfoNCE temperature (Auden: fixed 0.07); where a learned one starts"""
    learn_temperature: bool = False
    """learn the temperature (CLIP) instead of keeping it fixed"""
    text_pooling: str | None = None
    """cls | mean: the contrastive text embedding is the [CLS] state (Auden) or the mean over the tokens;
    default: mean for a text encoder trained from scratch, cls for a pre-trained one"""
    projection_dim: int | None = None
    """width of the shared audio-text space (Auden: 1024); default: the config's"""
    embed_reg_weight: float = 0.0
    """weight of Auden's embedding regulariser mean(|e|)/||e|| on both towers' embeddings"""
    caption_max_new_tokens: int = 64
    """longest caption generated at evaluation"""
    text_eval_clips: int | None = None
    """test clips captioned / retrieved at the end (default: all)"""

    def __post_init__(self):
        if self.text_field not in TEXT_FIELDS:
            raise ValueError(f"--text_field must be one of {TEXT_FIELDS}, got {self.text_field!r}")
        if self.text_pooling not in (None, "cls", "mean"):
            raise ValueError(f"--text_pooling must be cls or mean, got {self.text_pooling!r}")
        prob = self.parallel_decoding_prob
        if prob is not None and not 0.0 <= prob <= 1.0:
            raise ValueError(f"--parallel_decoding_prob must be in [0, 1], got {prob}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.multitask_weight < 0:
            raise ValueError(f"--multitask_weight must be >= 0, got {self.multitask_weight}")
        if self.contrastive_temperature <= 0:
            raise ValueError(
                f"--contrastive_temperature must be positive, got {self.contrastive_temperature}"
            )
        for name in ("tokenizer_vocab_size", "max_text_length", "caption_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"--projection_dim must be >= 1, got {self.projection_dim}")
        if self.embed_reg_weight < 0:
            raise ValueError(f"--embed_reg_weight must be >= 0, got {self.embed_reg_weight}")

    def parallel_prob(self, objective: str) -> float:
        if self.parallel_decoding_prob is not None:
            return self.parallel_decoding_prob
        return PARALLEL_DECODING_PROB[objective]


def tags_text(names: Sequence[str]) -> str:
    """The canonical tag sequence of a clip: its tags in vocabulary order, joined by ", "."""
    return ", ".join(names)


def batch_text(
    text_field: str, caption_column: str, label_names: Sequence[str]
) -> Callable[[dict], list[str]]:
    """``text_of(batch) -> [str, ...]``: each clip's caption (the batch's ``caption_column``), or its labels
    (the multi-hot ``labels``) as the canonical tag sequence."""
    if text_field == "caption":

        def captions(batch: dict) -> list[str]:
            if caption_column not in batch:
                raise KeyError(f"the batch has no {caption_column!r} column: give --caption_column")
            return [str(caption) for caption in batch[caption_column]]

        return captions

    names = list(label_names)

    def tags(batch: dict) -> list[str]:
        rows = torch.as_tensor(batch["labels"]) > 0.5
        return [tags_text([names[j] for j in row.nonzero().flatten().tolist()]) for row in rows]

    return tags


class WithText:
    """A training step given each clip's text: ``step(model, batch)`` with
    ``batch["text"] = text_of(batch)``."""

    def __init__(self, step, text_of: Callable[[dict], list[str]]):
        self.step, self.text_of = step, text_of

    def __call__(self, model, batch):
        return self.step(model, {**batch, TEXT_KEY: self.text_of(batch)})


def _preset(given: str | None, encoder_preset: str, presets: dict, small: str, full: str) -> str:
    preset = given or (small if encoder_preset == "zipformer-small" else full)
    if preset not in presets:
        raise ValueError(f"unknown text preset {preset!r}; available: {sorted(presets)}")
    return preset


def text_tokenizer(objective: str, args: UTSTextArguments, texts: Sequence[str]):
    """The objective's tokenizer: BART's for a decoder, BERT's for the contrastive text encoder (or
    ``--tokenizer``); when the Hub is unreachable, one of the same kind trained on ``texts``."""
    contrastive = objective == "contrastive"
    name = args.tokenizer or (TEXT_ENCODER_TOKENIZER if contrastive else DECODER_TOKENIZER)
    return load_or_train_tokenizer(
        name, texts, "wordpiece" if contrastive else "bpe", args.tokenizer_vocab_size
    )


RUN_TOKENIZER_DIR = "tokenizer"


def run_tokenizer(
    state, objective: str, args: UTSTextArguments, texts: Sequence[str], output_dir, resuming: bool
):
    """The run's tokenizer, the same on every rank and across a resume: `text_tokenizer`, got once by the main
    process and kept in ``output_dir/tokenizer``, which the other ranks (and a resumed run) read.

    Why: a tokenizer trained on the corpus is not reproducible for every kind (tokenizers' WordPiece trainer
    gives other ids on each run), so ranks that each trained one, or a resumed run that trained again, would
    read the texts with other ids than the model was trained on."""
    folder = Path(output_dir) / RUN_TOKENIZER_DIR
    if resuming and folder.is_dir():
        return AutoTokenizer.from_pretrained(folder)
    if state.is_main_process:
        text_tokenizer(objective, args, texts).save_pretrained(folder)
    state.wait_for_everyone()
    return AutoTokenizer.from_pretrained(folder)


def _decoder_config(args: UTSTextArguments, encoder_preset: str, tokenizer):
    preset = _preset(args.decoder_preset, encoder_preset, DECODER_PRESETS, "small", "bart-base")
    # Room for the longest target (its tokens and </s>).
    positions = max(DECODER_PRESETS[preset]["max_position_embeddings"], args.max_text_length)
    return caption_decoder_config(tokenizer, preset, max_position_embeddings=positions)


def _text_config(args: UTSTextArguments, encoder_preset: str, tokenizer) -> BertConfig:
    preset = _preset(args.text_encoder_preset, encoder_preset, TEXT_ENCODER_PRESETS, "small", "bert-base")
    fields = {
        **TEXT_ENCODER_PRESETS[preset],
        "vocab_size": len(tokenizer),
        "pad_token_id": tokenizer.pad_token_id,
    }
    fields["max_position_embeddings"] = max(fields.get("max_position_embeddings", 512), args.max_text_length)
    # A config, not a dict: the keyword arguments of from_pretrained are set as they are, not built into one.
    return BertConfig(**fields)


def _contrastive_start(args: UTSTextArguments, model_name_or_path: str | None) -> dict:
    """The contrastive model's pooling and frame norm: the options given, else what lets its towers learn.

    Two towers trained from scratch start collapsed (docs/benchmarks.md, "Why the contrastive model
    collapsed"): a random BERT gives every caption nearly the same [CLS] state, and a random Zipformer's
    frames share one large direction, so InfoNCE has no gradient to leave ln(batch) by. Mean pooling of the
    text and standardised audio frames give both towers spread from the first step; a pre-trained text tower
    (``--text_encoder_init``, or one in ``model_name_or_path``) keeps Auden's [CLS], a trained audio encoder
    its plain frames."""
    saved_text_tower = bool(model_name_or_path) and AutoConfig.from_pretrained(
        model_name_or_path
    ).to_dict().get("text_config")
    text_from_scratch = not args.text_encoder_init and not saved_text_tower
    fields = {"text_pooling": args.text_pooling or ("mean" if text_from_scratch else "cls")}
    if args.text_frames_norm is None and not model_name_or_path:
        fields["text_frames_norm"] = "batch"
    return fields


def build_text_model(
    objective: str,
    args: UTSTextArguments,
    tokenizer,
    *,
    preset: str,
    model_name_or_path: str | None,
    labels: dict,
):
    """The objective's model, fresh from ``preset`` or continuing from a saved Zipformer (its encoder and
    whatever else fits): a captioner (with the MTC head for multi-task) or the contrastive model, its text
    part sized to ``tokenizer`` and, on request, initialised from a BART / BERT checkpoint."""
    fields: dict = {}
    if objective == "contrastive":
        model_class = ZipformerForAudioTextContrastive
        fields["text_config"] = _text_config(args, preset, tokenizer)
        fields["contrastive_temperature"] = args.contrastive_temperature
        fields["learn_temperature"] = args.learn_temperature
        if args.projection_dim is not None:
            fields["projection_dim"] = args.projection_dim
        fields.update(_contrastive_start(args, model_name_or_path))
    else:
        model_class = ZipformerForConditionalGeneration
        fields["decoder_config"] = _decoder_config(args, preset, tokenizer)
        fields["tagging_head"] = objective == "multitask"
    if args.text_frames_norm is not None:
        fields["text_frames_norm"] = args.text_frames_norm
    if objective == "multitask":
        fields.update(labels)
    if model_name_or_path:
        config = AutoConfig.from_pretrained(model_name_or_path, **fields)
        model = model_class.from_pretrained(model_name_or_path, config=config, ignore_mismatched_sizes=True)
        if objective != "contrastive":
            # The checkpoint may be a tagger, with no generation settings; these are the new decoder's.
            model.generation_config = model.caption_generation_config()
    else:
        model = model_class(config_from_preset(preset, **fields))
    if objective == "contrastive" and args.text_encoder_init:
        init_text_encoder_from(model, args.text_encoder_init)
    if objective != "contrastive" and args.decoder_init:
        init_decoder_from_bart(model, args.decoder_init)
    return model


def text_step(objective: str, args: UTSTextArguments, feature_extractor, augmentation, tokenizer, text_of):
    """The objective's training step, given each clip's text by ``text_of(batch)``."""
    if objective == "contrastive":
        step = AudioTextContrastiveStep(
            feature_extractor,
            augmentation,
            tokenizer,
            text_column=TEXT_KEY,
            embed_reg_weight=args.embed_reg_weight,
            max_text_length=args.max_text_length,
        )
    else:
        step = CaptioningStep(
            feature_extractor,
            augmentation,
            tokenizer,
            parallel_decoding_prob=args.parallel_prob(objective),
            label_smoothing=args.label_smoothing,
            text_column=TEXT_KEY,
            tagging_weight=args.multitask_weight if objective == "multitask" else None,
            max_length=args.max_text_length,
        )
    return WithText(step, text_of)


def evaluate_text_model(
    objective: str,
    args: UTSTextArguments,
    model,
    feature_extractor,
    tokenizer,
    test_dataset,
    *,
    text_column: str,
    label_names: Sequence[str] | None,
    clip_seconds: float,
    progress: bool = True,
) -> dict:
    """What the trained text model does on the test split (``test_dataset`` with an audio column and each
    clip's text in ``text_column``): captioning (AR decoding for AR and multi-task, PAR decoding for PAR and
    multi-task) or retrieval and zero-shot tagging of ``label_names`` (the split's multi-hot labels)."""
    if args.text_eval_clips is not None:
        test_dataset = test_dataset.select(range(min(args.text_eval_clips, len(test_dataset))))
    results: dict = {}
    if objective == "contrastive":
        audio, text = embed_audio_text(
            model,
            feature_extractor,
            tokenizer,
            test_dataset,
            text_column=text_column,
            clip_seconds=clip_seconds,
            max_text_length=args.max_text_length,
        )
        results["retrieval"] = retrieval_recall(audio, text)
        if label_names:
            zero_shot = zero_shot_tagging(
                model, feature_extractor, tokenizer, test_dataset, label_names, clip_seconds=clip_seconds
            )
            results["zero_shot"] = {"mAP": zero_shot["zero_shot_mAP"], **zero_shot}
        return results
    processor = ZipformerProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    decodings = {"ar": (False,), "par": (True,), "multitask": (False, True)}[objective]
    for parallel in decodings:
        metrics, examples = evaluate_captioning(
            model,
            processor,
            test_dataset,
            caption_column=text_column,
            parallel=parallel,
            max_new_tokens=args.caption_max_new_tokens,
            clip_seconds=clip_seconds,
            progress=progress,
        )
        key = "captioning_parallel" if parallel else "captioning"
        results[key] = {**metrics, "examples": [{"reference": r, "prediction": p} for r, p in examples]}
    return results
