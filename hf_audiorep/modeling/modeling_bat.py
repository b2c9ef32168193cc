"""BAT: the Better Audio Transformer (arXiv 2602.16305), its classifier and its bootstrap pre-training.

The encoder is a ViT-B/16 with gated self-attention: a 16 x 16 conv patch embedding of a log-mel spectrogram,
fixed 2-D sin-cos positions on the patches, a learnable CLS token without position (EAT's), pre-LN blocks
whose attention output is gated by ``sigmoid(x W_g + b_g)`` before its projection (`Attention`'s ``gate``,
``config.attention_gate``) and a final LayerNorm. With ``attention_gate="none"`` the blocks are timm's plain
ViT blocks, weight for weight.

Pre-training (`BATForPreTraining`) is the library's bootstrap objective (`_bootstrap`, shared with CAT / EAT):
masked student clones under inverse block masks, an EMA teacher's instance-normalised FFN outputs as targets,
patch and CLS regression, with a transformer decoder in place of EAT's CNN decoder by default. Only the
released encoder's shape is known; the gate formula, the block layout and the whole pre-training recipe are
our choices, listed in `BATConfig`.

Only torch and transformers are imported here, so the file can ship as Hub remote code.
"""

import torch
from torch import nn

from ._bootstrap import (
    BootstrapClassifierMixin,
    BootstrapEncoderMixin,
    BootstrapForPreTrainingOutput,
    BootstrapModelOutput,
    BootstrapPreTrainedModel,
    BootstrapPreTrainingMixin,
    recorded_outputs,
)
from ._layers import PatchEmbed, PreLNBlock, drop_path_rates, without_stochastic_depth
from .configuration_bat import BATConfig

__all__ = [
    "BATForAudioClassification",
    "BATForPreTraining",
    "BATForPreTrainingOutput",
    "BATModel",
    "BATModelOutput",
    "BATPreTrainedModel",
]

BATModelOutput = BootstrapModelOutput
BATForPreTrainingOutput = BootstrapForPreTrainingOutput


class BATPreTrainedModel(BootstrapPreTrainedModel):
    config: BATConfig
    base_model_prefix = "bat"
    # Layer decay: patch embedding and CLS token sit below block 0; final norm, head and decoder above the
    # last block.
    embedding_param_prefixes = ("patch_embed.", "cls_token")
    _no_split_modules = ["PreLNBlock"]
    _can_record_outputs = recorded_outputs(PreLNBlock)


class BATModel(BootstrapEncoderMixin, BATPreTrainedModel):
    """The BAT encoder: patch embedding, gated pre-LN blocks, final LayerNorm.

    Its forward pass is `BootstrapEncoderMixin`'s (inputs, masks, outputs): hidden patches are dropped after
    the patch embedding, which does not mix patches, so nothing hidden leaks into the visible ones.
    ``last_hidden_state`` is the final norm of the last block's output; ``hidden_states`` are the blocks'
    outputs before it.

    bat-base has 92,341,248 parameters: patch embedding 197,376 + CLS 768 + 12 blocks x 7,678,464 (a ViT-B
    block's 7,087,872 + an element-wise gate's 590,592) + final norm 1,536.
    """

    def __init__(self, config: BATConfig):
        super().__init__(config)
        self.config = config
        self.patch_embed = PatchEmbed(config.patch_size, config.hidden_size, config.num_channels)
        self._add_cls_token_and_positions()
        self.pre_norm = None  # pre-LN blocks normalise their own inputs; the final norm closes the stream
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        rates = drop_path_rates(config.drop_path_rate, config.num_hidden_layers)
        self.blocks = nn.ModuleList(
            [PreLNBlock(config, drop_path=rate, gate=config.attention_gate) for rate in rates]
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> PatchEmbed:
        return self.patch_embed

    def _embed_patches(self, input_values: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        # Non-overlapping patches: hidden and padding patches cannot reach visible ones, so no `visible` gate.
        return self.patch_embed(input_values.to(self.patch_embed.proj.weight.dtype))


class BATForAudioClassification(BootstrapClassifierMixin, BATPreTrainedModel):
    """BAT encoder + ``fc_norm`` + dropout + linear head: CAT / EAT's fine-tuning head
    (`BootstrapClassifierMixin`: random patch-out with ``config.finetune_mask_ratio``, loss from
    ``config.problem_type``)."""

    def __init__(self, config: BATConfig):
        super().__init__(config)
        self.bat = BATModel(config)
        self._add_head()
        self.post_init()


class BATForPreTraining(BootstrapPreTrainingMixin, BATPreTrainedModel):
    """BAT bootstrap pre-training: student encoder, decoder (a transformer by default) and, when
    ``config.rr_embedding_dim > 0``, CAT's RR projector.

    ``forward(input_values, attention_mask=None, teacher_targets=None, rr_targets=None, mask=None)`` is
    `BootstrapPreTrainingMixin`'s: ``teacher_targets`` ``(B, N, H)`` from `make_teacher_targets` on an EMA
    copy of ``model.bat`` (required), ``mask`` ``(B * clone_batch, N)`` drawn with `compute_block_mask_2d`
    when None. Returns `BATForPreTrainingOutput`. Stochastic depth is off in the student.
    """

    def __init__(self, config: BATConfig):
        super().__init__(config)
        self.bat = without_stochastic_depth(BATModel(config))
        self._add_pretraining_heads()
        self.post_init()
