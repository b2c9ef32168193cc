"""Probe heads on a frozen encoder's per-layer token features, Convex Gated Probing and its comparisons.

Every head reads the same input, ``features`` ``(batch, layers, tokens, dim)`` and a ``(batch, tokens)``
token mask, and first normalises each token of each layer with a LayerNorm without affine parameters: the
layers of a transformer differ in scale by orders of magnitude, and a learned affine would let a head
re-weight the layers behind the gates' back. A head may then centre every token on the train split's mean
token at its position (`ProbeHead.set_position_means`, what ``train_probe(center_positions=True)`` sets):
the part of a token that every clip shares, mostly its position embedding, otherwise dominates the
prototypes' cosine similarities (measured in docs/benchmarks.md), so that a prototype matches a position
rather than a sound. The heads then differ in two independent choices, which is
what lets a comparison on identical inputs tell the gates' contribution from the prototype head's
(the heads with a linear classifier standardise its pooled input first: `PooledLinearHead`):

=================  ====================================  =====================================
head               layers                                classifier
=================  ====================================  =====================================
`LinearProbe`      the last one                          mean over tokens, linear
`AttentiveProbe`   the last one                          learned-query attention pooling, linear
`WeightedSumProbe` softmax-weighted sum (SUPERB)         mean over tokens, linear
`PrototypeProbe`   the last one                          prototypes (max over tokens)
`ConvexGatedProbe` convex gates over all of them (CGP)   prototypes (max over tokens)
=================  ====================================  =====================================

Convex Gated Probing (Ghaffari et al., BAT, 2026; the formula here is the library's proposal, the paper's
code not being public): gate logits ``a_l`` give layer weights ``w_l = sigmoid(a_l) / sum_k sigmoid(a_k)``,
non-negative and summing to 1, so the probed representation ``sum_l w_l H_l`` is a convex combination of the
layers and ``w`` says where the task's information lies. With ``gate_granularity="layer_class"`` each class
has its own combination. The prototype head (ProtoPNet-style, as in Bird-MAE's prototype probe) holds ``J``
prototypes per class, scores each by its cosine similarity to the best-matching token (the mean of the top
``k`` in training, so that more than one token gets a gradient) and combines the scores into class logits
with non-negative weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ...modeling._layers import masked_mean

__all__ = [
    "PROBES",
    "AttentiveProbe",
    "ConvexGatedProbe",
    "LinearProbe",
    "PooledLinearHead",
    "ProbeHead",
    "PrototypeHead",
    "PrototypeProbe",
    "WeightedSumProbe",
    "build_probe",
    "load_probe_head",
    "save_probe_head",
]

GATE_GRANULARITIES = ("layer", "layer_class")
_HEAD_WEIGHTS, _HEAD_CONFIG = "probe_head.safetensors", "probe_config.json"


class ProbeHead(nn.Module):
    """Base of the probe heads: ``forward(features, token_mask=None) -> (batch, num_labels)`` logits.

    Subclasses implement ``classify(features, token_mask)`` on the normalised features, and may expose
    ``layer_weights()`` (the learned weight of each layer) and ``project_()`` (a constraint restored after
    each optimizer step).
    """

    #: the name ``build_probe`` and ``recipes/probe.py --probe`` know the head by
    name: str = ""
    #: how the head reads the layers and classifies, for eval_results.json and the model card
    description: str = ""

    def __init__(self, num_layers: int, hidden_size: int, num_labels: int):
        super().__init__()
        for field, value in (
            ("num_layers", num_layers),
            ("hidden_size", hidden_size),
            ("num_labels", num_labels),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        self.num_layers, self.hidden_size, self.num_labels = num_layers, hidden_size, num_labels
        # (layers, tokens, dim) means subtracted from the normalised tokens, position by position; None: off
        self.register_buffer("position_means", None)

    def set_position_means(self, means: torch.Tensor | None) -> None:
        """Centre every token on ``means[layer, position]`` (``(layers, tokens, dim)``: the train split's mean
        normalised token at each position, `position_means`) before the head reads it; None turns it off.
        The head then reads features of exactly as many tokens as ``means`` (a cache's, or `ProbedEncoder`'s
        padded ones) and refuses others."""
        if means is not None:
            if means.ndim != 3 or means.shape[0] != self.num_layers or means.shape[2] != self.hidden_size:
                raise ValueError(
                    f"position means must be (layers, tokens, dim) = ({self.num_layers}, tokens, "
                    f"{self.hidden_size}), got {tuple(means.shape)}"
                )
            reference = next(self.parameters())  # every head has one: the buffer follows its device and dtype
            means = means.detach().to(device=reference.device, dtype=reference.dtype)
        self.position_means = means

    def options(self) -> dict:
        """The constructor's keyword arguments beyond the shapes (saved beside the weights)."""
        return {}

    def forward(self, features: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(*self.prepare(features, token_mask))

    def prepare(
        self, features: torch.Tensor, token_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The head's input checked, its tokens normalised (and centred when the head has position means),
        and the mask as booleans: what `classify` reads."""
        if (
            features.ndim != 4
            or features.shape[1] != self.num_layers
            or features.shape[3] != self.hidden_size
        ):
            raise ValueError(
                f"{type(self).__name__} expects features (batch, {self.num_layers}, tokens, "
                f"{self.hidden_size}), got {tuple(features.shape)}"
            )
        if token_mask is not None and token_mask.shape != (features.shape[0], features.shape[2]):
            raise ValueError(
                f"token_mask must be (batch, tokens) = {(features.shape[0], features.shape[2])}, "
                f"got {tuple(token_mask.shape)}"
            )
        features = F.layer_norm(features, (self.hidden_size,))
        if self.position_means is not None:
            self._check_positions(features.shape[2])
            features = features - self.position_means.to(features.dtype)
        return features, None if token_mask is None else token_mask.bool()

    def _check_positions(self, tokens: int) -> None:
        # Means of other positions than the input's would centre the wrong tokens without any error: most
        # often the features were pooled otherwise (token_pooling) than the train cache the means came from.
        expected = self.position_means.shape[1]
        if tokens != expected:
            raise ValueError(
                f"the head centres {expected} token positions but the features have {tokens} tokens: "
                "give it features of the encoder, layers and token_pooling it was trained on "
                "(probe_config.json records them), padded to its clip length"
            )

    def classify(self, features: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def layer_weights(self) -> torch.Tensor | None:
        """``(layers,)`` or ``(layers, num_labels)`` learned layer weights; None for single-layer heads."""
        return None

    def project_(self) -> None:
        """Restores the head's constraints after an optimizer step (nothing by default)."""

    def no_weight_decay(self) -> list[str]:
        """Parameters AdamW must not decay (see `hf_audiorep.training.build_param_groups`)."""
        return []


class PooledLinearHead(ProbeHead):
    """Base of the heads that pool the tokens into one vector per clip and classify it linearly.

    With ``standardize`` (the default) the pooled vector is standardised per dimension before the classifier,
    by a BatchNorm without affine parameters (batch statistics in training, running ones in evaluation), as
    MAE's linear probe does: what tells clips apart can be a small variation on a large shared part (a
    layer-normalised token's scale is 1; on BAT-small most of it is the same in every clip), and an AdamW
    linear head on such inputs ends far from its optimum in any affordable number of epochs
    (docs/benchmarks.md, "The linear probes were under-trained").
    """

    def __init__(self, num_layers: int, hidden_size: int, num_labels: int, standardize: bool = True):
        super().__init__(num_layers, hidden_size, num_labels)
        if not isinstance(standardize, bool):
            raise ValueError(f"standardize must be True or False, got {standardize!r}")
        self.standardize = standardize
        self.standardizer = nn.BatchNorm1d(hidden_size, affine=False, eps=1e-6) if standardize else None
        self.classifier = nn.Linear(hidden_size, num_labels)

    @property
    def description(self) -> str:
        standardised = ", standardised (BatchNorm without affine)" if self.standardize else ""
        return f"{self.pooled_description}{standardised}"

    #: what the head pools and classifies, for `description`
    pooled_description: str = ""

    def options(self) -> dict:
        return {"standardize": self.standardize}

    def pool(self, features: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """``(batch, dim)`` pooled vectors of the prepared features (`ProbeHead.prepare`)."""
        raise NotImplementedError

    def classify(self, features, token_mask):
        return self.classify_pooled(self.pool(features, token_mask))

    def classify_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Class logits of ``(batch, dim)`` pooled vectors."""
        norm = self.standardizer
        if norm is not None:
            if self.training and pooled.shape[0] == 1:  # one clip has no batch statistics: the running ones
                pooled = F.batch_norm(pooled, norm.running_mean, norm.running_var, eps=norm.eps)
            else:
                pooled = norm(pooled)
        return self.classifier(pooled)


class LinearProbe(PooledLinearHead):
    """Mean over the tokens of the last layer, then a linear classifier."""

    name = "linear"
    pooled_description = "linear probe on the mean-pooled last layer"

    def pool(self, features, token_mask):
        return masked_mean(features[:, -1], token_mask, dim=1)


class WeightedSumProbe(PooledLinearHead):
    """SUPERB's all-layer probe (s3prl's ``Featurizer``): a softmax-weighted sum of the layers, mean over
    tokens, then a linear classifier."""

    name = "weighted_sum"
    pooled_description = (
        "SUPERB weighted-sum probe (softmax layer weights, mean pooling, linear) over the layers"
    )

    def __init__(self, num_layers: int, hidden_size: int, num_labels: int, standardize: bool = True):
        super().__init__(num_layers, hidden_size, num_labels, standardize)
        self.layer_logits = nn.Parameter(torch.zeros(num_layers))  # equal weights at the start, as s3prl

    def layer_weights(self):
        return self.layer_logits.softmax(dim=0)

    def pool(self, features, token_mask):
        mixed = torch.einsum("bltd,l->btd", features, self.layer_weights())
        return masked_mean(mixed, token_mask, dim=1)

    def no_weight_decay(self):
        return ["layer_logits"]


class AttentiveProbe(PooledLinearHead):
    """A learned query attends over the tokens of the last layer (multi-head cross-attention, as the
    attentive probes of V-JEPA and Bird-MAE), then a linear classifier."""

    name = "attentive"
    pooled_description = "attentive probe (learned-query attention pooling, linear) on the last layer"

    def __init__(
        self, num_layers: int, hidden_size: int, num_labels: int, num_heads: int = 8, standardize: bool = True
    ):
        super().__init__(num_layers, hidden_size, num_labels, standardize)
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
        if hidden_size % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the encoder width {hidden_size}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.randn(1, 1, hidden_size) * 0.02)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, batch_first=True)

    def options(self):
        return {"num_heads": self.num_heads, **super().options()}

    def pool(self, features, token_mask):
        tokens = features[:, -1]
        query = self.query.expand(tokens.shape[0], -1, -1)
        padding = None if token_mask is None else ~token_mask
        pooled, _ = self.attention(query, tokens, tokens, key_padding_mask=padding, need_weights=False)
        return pooled[:, 0]

    def no_weight_decay(self):
        return ["query"]


class PrototypeHead(nn.Module):
    """``J`` prototypes per class, scored by cosine similarity to the tokens, and non-negative class weights.

    The score of prototype ``p_{c,j}`` is its highest cosine similarity over the real tokens in evaluation,
    and the mean of the ``topk`` highest in training (only the best token would otherwise learn). The logits
    are ``scores @ W^T + b`` with ``W >= 0``: ``W`` is kept non-negative by projection after each
    optimizer step (`project_`), not by a clamp in the forward pass, whose zero gradient at 0 would keep an
    unconnected prototype unconnected for ever. ``W`` starts at 1 between a prototype and its own class and
    at 0 elsewhere: ProtoPNet's -0.5 for the other classes, clamped to the non-negative range, so a
    prototype starts as evidence for its class only and a connection to another class grows only when the
    gradient asks for it.

    Args:
        hidden_size: token width.
        num_labels: classes ``C``.
        prototypes_per_class: ``J``.
        topk: tokens averaged per prototype score in training. 1 (the default) trains the score that
            evaluation uses; the CGP reference trains the top-3 mean, which probed worse than top-1 on every
            encoder measured here (docs/benchmarks.md, "Equal pre-training compute").
    """

    def __init__(self, hidden_size: int, num_labels: int, prototypes_per_class: int = 10, topk: int = 1):
        super().__init__()
        for field, value in (("prototypes_per_class", prototypes_per_class), ("topk", topk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        self.prototypes_per_class, self.topk = prototypes_per_class, topk
        count = num_labels * prototypes_per_class
        # Unit-norm directions: only the direction enters the cosine, and AdamW's steps are then a
        # comparable rotation whatever the width.
        self.prototypes = nn.Parameter(F.normalize(torch.randn(count, hidden_size), dim=-1))
        self.register_buffer(
            "prototype_class",
            torch.arange(num_labels).repeat_interleave(prototypes_per_class),
            persistent=False,
        )
        self.class_weights = nn.Parameter(F.one_hot(self.prototype_class, num_labels).T.float())
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def similarities(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(batch, tokens, dim)`` -> cosine similarity of every token to every prototype
        ``(batch, tokens, C * J)``, prototypes of class ``c`` at ``c * J ... c * J + J - 1``."""
        return F.normalize(tokens, dim=-1) @ F.normalize(self.prototypes, dim=-1).T

    def pool(self, similarities: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        """Best similarity over the real tokens (top-``k`` mean in training): ``(batch, C * J)``."""
        if token_mask is not None:
            similarities = similarities.masked_fill(~token_mask[..., None], float("-inf"))
        k = min(self.topk, similarities.shape[1]) if self.training else 1
        top = similarities.topk(k, dim=1).values
        real = top.isfinite()  # a clip with fewer than k real tokens averages the ones it has
        return top.masked_fill(~real, 0.0).sum(dim=1) / real.sum(dim=1).clamp(min=1)

    def classify(self, scores: torch.Tensor) -> torch.Tensor:
        return F.linear(scores, self.class_weights, self.bias)

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.pool(self.similarities(tokens), token_mask))

    @torch.no_grad()
    def project_(self) -> None:
        self.class_weights.clamp_(min=0.0)


class PrototypeProbe(ProbeHead):
    """The prototype head on the last layer alone: CGP without the gates."""

    name = "prototype"
    description = "prototype probe on the last layer"

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_labels: int,
        prototypes_per_class: int = 10,
        topk: int = 1,
    ):
        super().__init__(num_layers, hidden_size, num_labels)
        self.prototype_head = PrototypeHead(hidden_size, num_labels, prototypes_per_class, topk)

    def options(self):
        head = self.prototype_head
        return {"prototypes_per_class": head.prototypes_per_class, "topk": head.topk}

    def classify(self, features, token_mask):
        return self.prototype_head(features[:, -1], token_mask)

    def project_(self):
        self.prototype_head.project_()

    def no_weight_decay(self):
        return ["class_weights"]


class ConvexGatedProbe(PrototypeProbe):
    """Convex Gated Probing: convex sigmoid gates over every layer, then the prototype head.

    Args:
        num_layers, hidden_size, num_labels: the features' shape and the classes.
        gate_granularity: ``"layer"`` (one combination of the layers for every class) or ``"layer_class"``
            (one per class, each class's prototypes compared with its own combination).
        prototype_options: ``prototypes_per_class`` and ``topk`` of the prototype head (`PrototypeHead`).
    """

    name = "cgp"

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_labels: int,
        gate_granularity: str = "layer",
        **prototype_options,
    ):
        super().__init__(num_layers, hidden_size, num_labels, **prototype_options)
        if gate_granularity not in GATE_GRANULARITIES:
            raise ValueError(
                f"gate_granularity must be one of {GATE_GRANULARITIES}, got {gate_granularity!r}"
            )
        self.gate_granularity = gate_granularity
        shape = (num_layers,) if gate_granularity == "layer" else (num_layers, num_labels)
        self.gate_logits = nn.Parameter(torch.zeros(shape))  # sigmoid(0) everywhere: equal weights at first

    @property
    def description(self) -> str:
        per = "layer" if self.gate_granularity == "layer" else "layer and class"
        return f"convex gated probing (CGP: convex sigmoid gates per {per}, prototype head) over the layers"

    def options(self):
        return {**super().options(), "gate_granularity": self.gate_granularity}

    def layer_weights(self):
        gates = torch.sigmoid(self.gate_logits)
        return gates / gates.sum(dim=0, keepdim=True)

    def classify(self, features, token_mask):
        head, weights = self.prototype_head, self.layer_weights()
        if self.gate_granularity == "layer":
            return head(torch.einsum("bltd,l->btd", features, weights), token_mask)
        # Per class c the tokens are h_c = sum_l w_lc H_l. The cosine of h_c with a prototype p of class c
        # is sum_l w_lc (H_l . p) / |h_c|, and |h_c|^2 = w_c^T G w_c with G the tokens' layer Gram matrix:
        # no (batch, classes, tokens, dim) tensor is built.
        prototypes = F.normalize(head.prototypes, dim=-1)
        dots = torch.einsum("bltd,kd->bltk", features, prototypes)
        numerator = torch.einsum("bltk,lk->btk", dots, weights[:, head.prototype_class])
        gram = torch.einsum("bltd,bmtd->btlm", features, features)
        norms = torch.einsum("btlm,lc,mc->btc", gram, weights, weights).clamp(min=1e-12).sqrt()
        similarities = numerator / norms[..., head.prototype_class]
        return head.classify(head.pool(similarities, token_mask))

    def no_weight_decay(self):
        return ["class_weights", "gate_logits"]


PROBES: dict[str, type[ProbeHead]] = {
    cls.name: cls for cls in (LinearProbe, WeightedSumProbe, AttentiveProbe, PrototypeProbe, ConvexGatedProbe)
}


def build_probe(name: str, num_layers: int, hidden_size: int, num_labels: int, **options) -> ProbeHead:
    """The head ``name`` (a key of `PROBES`) for features of ``num_layers`` x ``hidden_size``; ``options``
    are its own keyword arguments (those another head takes are refused)."""
    if name not in PROBES:
        raise ValueError(f"unknown probe {name!r}; expected one of {sorted(PROBES)}")
    return PROBES[name](num_layers, hidden_size, num_labels, **options)


def save_probe_head(head: ProbeHead, directory: str | Path, **extra) -> Path:
    """Writes the head's weights (``probe_head.safetensors``) and what rebuilds it (``probe_config.json``,
    with ``extra`` fields such as the probed layers) into ``directory``; returns the config's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "probe": head.name,
        "num_layers": head.num_layers,
        "hidden_size": head.hidden_size,
        "num_labels": head.num_labels,
        "options": head.options(),
        "center_positions": head.position_means is not None,
        **extra,
    }
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, directory / _HEAD_WEIGHTS
    )
    path = directory / _HEAD_CONFIG
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_probe_head(directory: str | Path) -> tuple[ProbeHead, dict]:
    """The head `save_probe_head` wrote to ``directory``, and its config."""
    directory = Path(directory)
    config = json.loads((directory / _HEAD_CONFIG).read_text())
    if config["probe"] in PROBES and issubclass(PROBES[config["probe"]], PooledLinearHead):
        config["options"].setdefault("standardize", False)  # saved before the option, when none standardised
    head = build_probe(
        config["probe"],
        config["num_layers"],
        config["hidden_size"],
        config["num_labels"],
        **config["options"],
    )
    state = load_file(directory / _HEAD_WEIGHTS)
    if "position_means" in state:  # a buffer only once set: give it its shape before the strict load
        head.set_position_means(state["position_means"])
    head.load_state_dict(state)
    return head.eval(), config
