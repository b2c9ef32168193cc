"""UTS's captioning objective (arXiv 2603.25767; Auden ``audio_caption``): a caption decoded from the audio,
autoregressively (AR) or all at once (PAR, CapPa's parallel decoding), with label-smoothed cross-entropy; and
the multi-task loss ``L_MTC + lambda * L_caption`` of a captioner that also tags.

AR rows read ``[<s>] + tokens`` and predict ``tokens + [</s>]`` under a causal mask. PAR rows read one
``<mask>`` per target token and attend in both directions, so nothing of the caption is in their input. The
paper's ``0.25 L_AR + 0.75 L_PAR`` is each sample drawn PAR with probability 0.75
(``parallel_decoding_prob``), as Auden's trainer does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .classification import AugmentationArguments, SupervisedClassificationStep

__all__ = ["CaptioningStep", "caption_decoder_inputs", "caption_loss"]

#: Auden's caption length limit, in tokens with </s>
MAX_CAPTION_TOKENS = 128


def caption_decoder_inputs(
    token_ids: list[list[int]],
    parallel: torch.Tensor,
    *,
    bos_token_id: int,
    eos_token_id: int,
    pad_token_id: int,
    mask_token_id: int,
    max_length: int,
) -> dict[str, torch.Tensor]:
    """The decoder's inputs and targets for captions given as token ids (no special tokens).

    Every row's target is its tokens then ``</s>``, at most ``max_length`` (a long caption loses its last
    tokens, never its ``</s>``, so the model still learns where captions end). An AR row reads
    ``[<s>] + tokens`` (the target shifted right); a PAR row (``parallel``) reads ``<mask>`` once per target
    token. Rows are padded to the batch's longest: ``pad_token_id`` in the input, 0 in
    ``decoder_attention_mask``, -100 in ``labels``.

    Returns ``decoder_input_ids``, ``decoder_attention_mask``, ``labels`` (``(batch, longest)``) and
    ``parallel`` (``(batch,)`` bool), on ``parallel``'s device.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1 (room for </s>), got {max_length}")
    parallel = torch.as_tensor(parallel, dtype=torch.bool)
    if parallel.shape != (len(token_ids),):
        raise ValueError(
            f"parallel must have one flag per caption ({len(token_ids)}), got {tuple(parallel.shape)}"
        )
    targets = [list(tokens)[: max_length - 1] + [eos_token_id] for tokens in token_ids]
    longest = max(map(len, targets), default=0)
    device = parallel.device
    inputs = torch.full((len(targets), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(targets), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(targets), longest), dtype=torch.long)
    for row, (target, is_parallel) in enumerate(zip(targets, parallel.tolist(), strict=True)):
        n = len(target)
        row_input = [mask_token_id] * n if is_parallel else [bos_token_id] + target[:-1]
        inputs[row, :n] = torch.tensor(row_input)
        labels[row, :n] = torch.tensor(target)
        mask[row, :n] = 1
    return {
        "decoder_input_ids": inputs.to(device),
        "decoder_attention_mask": mask.to(device),
        "labels": labels.to(device),
        "parallel": parallel,
    }


def caption_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy with label smoothing ``label_smoothing`` (Auden: 0.1), the mean over the tokens whose
    label is not -100. ``logits`` ``(batch, tokens, vocab)``, ``labels`` ``(batch, tokens)``."""
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        labels.flatten(),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


class CaptioningStep:
    """``step_fn(model, batch) -> (loss, logs)`` for `ZipformerForConditionalGeneration`.

    ``batch``: ``waveforms`` / ``lengths`` (the classification step's features and SpecAugment), the
    captions as strings in ``batch[text_column]`` and, for multi-task training, the multi-hot ``labels``.
    With ``tagging_weight`` lambda the loss is ``BCE(tag_logits, labels) + lambda * caption_loss`` (MTC
    mean-reduced, as the tagger's). Logs ``caption_loss``, ``mtc_loss`` (multi-task), and ``ar_loss`` /
    ``par_loss`` (the smoothed cross-entropy of each kind's rows, when the batch has them).

    Mixup is refused: a mix of two clips has no one caption to decode.
    """

    def __init__(
        self,
        feature_extractor,
        augmentation: AugmentationArguments,
        tokenizer,
        *,
        parallel_decoding_prob: float = 0.0,
        label_smoothing: float = 0.1,
        text_column: str = "text",
        tagging_weight: float | None = None,
        max_length: int | None = None,
    ):
        if augmentation.mixup_prob > 0:
            raise ValueError(
                f"captioning cannot use mixup (mixup_prob={augmentation.mixup_prob}): a mixed clip has no "
                "caption; set mixup_prob=0"
            )
        if not 0.0 <= parallel_decoding_prob <= 1.0:
            raise ValueError(f"parallel_decoding_prob must be in [0, 1], got {parallel_decoding_prob}")
        if tagging_weight is not None and tagging_weight < 0:
            raise ValueError(f"tagging_weight must be >= 0, got {tagging_weight}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "mask_token_id"):
            if getattr(tokenizer, name) is None:
                raise ValueError(
                    f"the tokenizer has no {name.removesuffix('_id')}: captioning needs <s>, </s>, "
                    "<pad> and <mask>"
                )
        self.front_end = SupervisedClassificationStep(feature_extractor, augmentation)
        self.tokenizer = tokenizer
        self.parallel_decoding_prob = parallel_decoding_prob
        self.label_smoothing = label_smoothing
        self.text_column = text_column
        self.tagging_weight = tagging_weight
        self.max_length = max_length

    def _check_model(self, model) -> int:
        """The caption length limit; the tokenizer's ids must be the decoder's."""
        decoder_config = model.config.decoder_config
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(decoder_config, name) != getattr(self.tokenizer, name):
                raise ValueError(
                    f"the tokenizer's {name} ({getattr(self.tokenizer, name)}) is not the decoder's "
                    f"({getattr(decoder_config, name)}): build decoder_config from the tokenizer"
                )
        if self.tagging_weight is not None and not model.config.tagging_head:
            raise ValueError("tagging_weight needs a model with config.tagging_head=True (the MTC head)")
        limit = min(MAX_CAPTION_TOKENS, decoder_config.max_position_embeddings)
        return limit if self.max_length is None else min(self.max_length, limit)

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        max_length = self._check_model(model)
        # Tags are only needed by the multi-task loss; the features step passes them through untouched.
        features, mask, tags = self.front_end.features(model, {**batch, "labels": batch.get("labels")})
        texts = batch[self.text_column]
        if isinstance(texts, str):
            raise TypeError(f"batch[{self.text_column!r}] must be a list of captions, not one string")
        token_ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        parallel = torch.rand(len(token_ids), device=features.device) < self.parallel_decoding_prob
        decoder_inputs = caption_decoder_inputs(
            token_ids,
            parallel,
            bos_token_id=self.tokenizer.bos_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            mask_token_id=self.tokenizer.mask_token_id,
            max_length=max_length,
        )
        labels = decoder_inputs.pop("labels")
        outputs = model(input_values=features, attention_mask=mask, **decoder_inputs)
        loss = caption_loss(outputs.logits, labels, self.label_smoothing)
        logs = {"caption_loss": loss.item()}
        with torch.no_grad():
            for name, rows in (("ar_loss", ~parallel), ("par_loss", parallel)):
                if rows.any():
                    logs[name] = caption_loss(outputs.logits[rows], labels[rows], self.label_smoothing).item()
        if self.tagging_weight is not None:
            if tags is None:
                raise ValueError("multi-task captioning needs the clips' multi-hot tags in batch['labels']")
            mtc = F.binary_cross_entropy_with_logits(outputs.tag_logits.float(), tags.float())
            logs["mtc_loss"] = mtc.item()
            loss = mtc + self.tagging_weight * loss
        return loss, logs
