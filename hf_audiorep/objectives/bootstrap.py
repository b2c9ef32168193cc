"""Bootstrap self-supervised pre-training with an EMA teacher (data2vec 2.0, EAT, CAT, BAT).

The student (a ``*ForPreTraining`` model such as `CATForPreTraining` or `BATForPreTraining`) encodes
several masked clones of each clip and regresses what an exponential moving average of its own encoder (the
teacher) says about the unmasked clip: the instance-normalised average of the teacher's top FFN outputs. CAT
adds representation regularization (RR): a projection of the student CLS is also pulled toward a *frozen*
encoder's clip embedding, computed on the fly (`FrozenTeacher.embed`) or read from a precomputed dataset
column.

The step owns the teacher; the loop checkpoints it (``extra_state``) and calls `update_teacher` after every
optimizer step (``on_optimizer_step``), so resume restores the exact teacher.
"""

from __future__ import annotations

import torch
from torch import nn

from ..modeling import frames_to_patch_mask
from ..modeling._bootstrap import make_teacher_targets
from ..training.ema import ModelEMA
from .features import waveform_features


def build_ema_teacher(
    model: nn.Module,
    decay: float | None = None,
    end_decay: float | None = None,
    anneal_end_steps: int | None = None,
) -> ModelEMA:
    """An fp32 EMA copy of ``model``'s encoder (``model.base_model``), with the config's decay ramp.

    ``decay`` rises linearly to ``end_decay`` over ``anneal_end_steps`` optimizer steps (EAT/CAT:
    0.9998 -> 0.99999 over 100k updates); arguments left at None take the model config's values.
    The whole encoder is averaged, multi-resolution stem included (CAT: ``ema_encoder_only=false``).
    """
    config = model.config
    decay = config.ema_decay if decay is None else decay
    end_decay = config.ema_end_decay if end_decay is None else end_decay
    steps = config.ema_anneal_end_steps if anneal_end_steps is None else anneal_end_steps
    return ModelEMA(
        model.base_model, decay=decay, end_decay=end_decay, ramp_steps=steps if end_decay != decay else 0
    )


class BootstrapPretrainingStep:
    """``step_fn(model, batch) -> (loss, logs)`` for EMA-teacher pre-training (CAT, EAT, BAT).

    Args:
        feature_extractor: turns the batch's waveforms into ``(input_values, attention_mask)`` on the
            device (``batch_features``).
        teacher: the `ModelEMA` of the student's encoder (see `build_ema_teacher`).
        rr_teacher: a frozen encoder with ``embed(waveforms, lengths, sample_rate) -> (B, D)``
            (`FrozenTeacher`) giving the RR targets on the fly; or
        rr_column: the name of a batch entry holding precomputed RR targets ``(B, D)``.
        sample_rate: rate of the batch's waveforms (what ``rr_teacher`` resamples from).

    Labels in the batch are never read. Pre-training uses no mixup or SpecAugment: masking is the
    augmentation (CAT/EAT configure none).
    """

    def __init__(
        self,
        feature_extractor,
        teacher: ModelEMA,
        rr_teacher=None,
        rr_column: str | None = None,
        sample_rate: int | None = None,
    ):
        if not hasattr(feature_extractor, "batch_features"):
            raise TypeError(
                "feature_extractor must have batch_features(waveforms, lengths), got "
                f"{type(feature_extractor).__name__}"
            )
        if not isinstance(teacher, ModelEMA):
            raise TypeError(
                f"teacher must be a ModelEMA of the student's encoder, got {type(teacher).__name__}"
            )
        if rr_teacher is not None and rr_column is not None:
            raise ValueError(
                "give the RR targets either as rr_teacher (on the fly) or as rr_column, not both"
            )
        if rr_teacher is not None and not hasattr(rr_teacher, "embed"):
            raise TypeError("rr_teacher must have embed(waveforms, lengths, sample_rate) -> (B, D)")
        self.feature_extractor = feature_extractor
        self.teacher = teacher
        self.rr_teacher = rr_teacher
        self.rr_column = rr_column
        self.sample_rate = sample_rate or feature_extractor.sampling_rate

    @property
    def uses_rr(self) -> bool:
        return self.rr_teacher is not None or self.rr_column is not None

    @torch.no_grad()
    def teacher_targets(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """The regression targets ``(B, patches, hidden)`` from the EMA teacher on the unmasked clips."""
        encoder = self.teacher.module
        first = next(encoder.parameters())
        if first.device != input_values.device:
            # The EMA is built on the host before the loop moves the student: follow it once.
            encoder.to(input_values.device)
        config = encoder.config
        outputs = encoder(input_values, attention_mask=attention_mask, output_ffn_states=True)
        patch_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Padding patches stay out of the instance-norm statistics of shorter clips.
            grid_f = config.num_mel_bins // config.patch_size
            patch_mask = frames_to_patch_mask(attention_mask, config.patch_size, grid_f)
        return make_teacher_targets(
            outputs.ffn_states,
            top_k=config.average_top_k_layers,
            instance_norm=config.instance_norm_targets,
            layer_norm=config.layer_norm_targets,
            patch_mask=patch_mask,
        )

    @torch.no_grad()
    def rr_targets(self, batch) -> torch.Tensor | None:
        if self.rr_teacher is not None:
            waveforms = batch["waveforms"].float()
            with torch.autocast(waveforms.device.type, enabled=False):
                return self.rr_teacher.embed(waveforms, batch["lengths"], self.sample_rate).float()
        if self.rr_column is not None:
            if self.rr_column not in batch:
                raise KeyError(
                    f"the batch has no {self.rr_column!r} entry with precomputed RR targets; build the "
                    "stream "
                    f"with extra_columns=({self.rr_column!r},) (batch keys: {sorted(batch)})"
                )
            return batch[self.rr_column].float()
        return None

    def __call__(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]:
        input_values, attention_mask = waveform_features(
            self.feature_extractor, batch["waveforms"], batch["lengths"]
        )
        targets = self.teacher_targets(input_values, attention_mask)
        outputs = model(
            input_values=input_values,
            attention_mask=attention_mask,
            teacher_targets=targets,
            rr_targets=self.rr_targets(batch),
        )
        logs = {"patch_loss": outputs.patch_loss.detach()}
        # A term of weight 0 (cat-small, bat-small) is left out of the log: its value, hundreds beside a patch
        # loss of a few units, read as the loss the run is stuck on.
        if getattr(model, "module", model).config.cls_loss_weight > 0:
            logs["cls_loss"] = outputs.cls_loss.detach()
        if outputs.rr_loss is not None:
            logs["rr_loss"] = outputs.rr_loss.detach()
        logs["ema_decay"] = self.teacher.current_decay
        return outputs.loss, logs

    def update_teacher(self, model: nn.Module, global_step: int) -> None:
        """``on_optimizer_step`` hook: move the teacher toward the student's encoder."""
        self.teacher.update(model.base_model)
