"""BAT configuration: the Better Audio Transformer of "BAT: Better Audio Transformer Guided by Convex Gated
Probing" (Ghaffari, Rauch, Scholz, Devos; arXiv 2602.16305).

One config serves the encoder ([`BATModel`]), the classifier ([`BATForAudioClassification`]) and bootstrap
pre-training ([`BATForPreTraining`]). The fields BAT shares with CAT / EAT (patch grid, transformer,
classification, pre-training) are declared once, in `BootstrapViTConfig`; this module adds the attention gate
and restates BAT's own defaults.

What BAT's authors have published and what is our choice is listed in `BATConfig`'s docstring.
"""

from typing import Any, Literal

from ._bootstrap_config import BootstrapViTConfig
from ._config_checks import strict_config
from .configuration_cat import CAT_PRESETS

__all__ = ["BAT_PRESETS", "BATConfig"]


# What bat-small takes from cat-small: its size and its learning choices, with the reasons given there.
_FROM_CAT_SMALL = (
    "hidden_size",
    "decoder_dim",
    "decoder_layers",
    "decoder_groups",
    "num_hidden_layers",
    "num_attention_heads",
    "average_top_k_layers",
    "clone_batch",
    "ema_decay",
    "ema_end_decay",
    "ema_anneal_end_steps",
    "cls_loss_weight",
    "pooling",
)

BAT_PRESETS: dict[str, dict[str, Any]] = {
    # ViT-B/16 on 1024 x 128 log-mel (a 64 x 8 grid of 512 patches), 12 gated pre-LN blocks of width 768 with
    # 12 heads, as the public BAT checkpoint's card describes it (lrauch/BAT-vit-b16-pretrainedAS2M). With the
    # element-wise gate the encoder has 92,341,248 parameters: a plain ViT-B's 85,254,144 plus 12 x 590,592
    # for the gates. Pre-trained with a 6-block, 384-wide transformer decoder (our choice, see BATConfig).
    "bat-base": {},
    # Pre-trains in minutes on a 2-core CPU, with bat-base's input geometry: cat-small's size and learning
    # choices (1/4 width, 4 blocks, 2 clones, a teacher that follows within a few hundred steps) and, above
    # all, no CLS (utterance) term with mean pooling. At this scale the CLS term's target is nearly the same
    # vector for every clip, and its gradient collapsed cat-small's encoder below its random initialisation
    # within 50 steps (docs/benchmarks.md, "Why CAT's bootstrap did not learn"); BAT's loss is CAT's, so it
    # is avoided the same way.
    # The decoder is cat-small's CNN, not bat-base's transformer: at this scale the transformer decoder left
    # the encoder no better than its initialisation (linear probe, mean of patches, 2-s clips, 800 clips,
    # experiments/diag_bootstrap.py's protocol: 0.212 at init, 0.186 after 80 steps, 0.175 after 240, its
    # embedding's effective rank falling from 22 to about 4), where the CNN decoder gave 0.256 after 80 steps.
    # The collapse follows the decoder's absolute positions: without them (transformer_decoder_positions
    # "conv") the transformer decoder leaves the encoder above its initialisation, still a little below the
    # CNN's (docs/benchmarks.md, "A transformer decoder without absolute positions").
    # The transformer decoder's fields are sized for --decoder_type transformer all the same (bat-base's
    # 1/2 decoder-to-encoder width, 2 blocks). 1,977,600 encoder parameters, 2,097,984 with the CNN decoder.
    "bat-small": {
        **{field: CAT_PRESETS["cat-small"][field] for field in _FROM_CAT_SMALL},
        "decoder_type": "cnn",
        "transformer_decoder_dim": 96,
        "transformer_decoder_layers": 2,
        "transformer_decoder_heads": 3,
    },
}


@strict_config
class BATConfig(BootstrapViTConfig):
    r"""Configuration of [`BATModel`], [`BATForAudioClassification`] and [`BATForPreTraining`].

    The defaults build BAT-base (preset ``"bat-base"``); ``"bat-small"`` is a CPU-sized model with the same
    input geometry. Every field of [`BootstrapViTConfig`] applies (patch grid, transformer, classification,
    pre-training). BAT's own field:

        attention_gate (`str`, defaults to `"elementwise"`): the output gate of every encoder attention,
            ``o = SDPA(q, k, v) * sigmoid(x W_g + b_g)`` before the output projection, ``x`` the normalised
            block input: `"elementwise"` (one gate per channel, ``W_g``: hidden x hidden), `"headwise"` (one
            per head, hidden x heads) or `"none"` (a plain ViT-B block, weight for weight).

    and its default that differs from EAT's there:

        decoder_type (`str`, defaults to `"transformer"`): the "ViT decoder" BAT replaces EAT's CNN decoder
            with, 6 blocks of width 384 with 6 heads (`transformer_decoder_*`).

    Representation regularization (CAT's) is available and off (``rr_embedding_dim=0``).

    **What is known and what is our choice.** No BAT code is public. Known, from the card of the released
    encoder (lrauch/BAT-vit-b16-pretrainedAS2M): a ViT-B/16 (768 wide, 12 blocks, 12 heads, 16 x 16
    patches) with gated self-attention over ``(1, 1024, 128)`` log-mels, ``[CLS, 512 patches]`` outputs; from
    summaries of the paper: EAT's bootstrap pipeline reworked, with a ViT decoder in place of the CNN decoder.
    Our choices, each a default that can be changed here:

    - the gate formula: the "G1" variant of Qiu et al. 2025 ("Gated Attention for Large Language Models"),
      element-wise, computed from the normalised block input. The attribution to BAT is an assumption;
    - pre-LN blocks with a final LayerNorm (timm's ViT) rather than EAT's post-LN blocks, and a CLS token
      without position (EAT's), 2-D sin-cos patch positions;
    - the front end: the library's Kaldi fbank (`AudioFbankFeatureExtractor`, AST/EAT's normalisation), not
      BAT's "improved preprocessing", whose details are unknown;
    - the transformer decoder's size (6 x 384, 6 heads), ungated blocks, a learned mask token, and for
      ``"bat-small"`` EAT's CNN decoder instead, because the transformer decoder did not teach the small
      encoder anything on a CPU budget (measured; see `BAT_PRESETS`);
    - the gate's initialisation: as every Linear (normal(0, 0.02), zero bias), so each gate starts near 0.5;
    - every pre-training hyperparameter (EAT's: masking 0.8 in 5 x 5 inverse blocks, 16 clones, targets
      averaged over all 12 blocks, EMA 0.9998 -> 0.99999 over 100k updates, CLS loss weight 1).

    Weight parity with the released checkpoint is not tested: its files could not be read here.

    Example (a head-wise gated tagger for AudioSet, and the plain ViT-B it is compared with):

    ```python
    >>> from hf_audiorep import BATConfig, BATForAudioClassification
    >>> gated = BATConfig.from_preset("bat-base", attention_gate="headwise", num_labels=527)
    >>> plain = BATConfig.from_preset("bat-base", attention_gate="none", num_labels=527)
    >>> model = BATForAudioClassification(gated)
    ```
    """

    model_type = "audiorep-bat"
    _family = "BAT"
    _presets = BAT_PRESETS

    attention_gate: Literal["none", "headwise", "elementwise"] = "elementwise"
    decoder_type: Literal["cnn", "transformer"] = "transformer"
