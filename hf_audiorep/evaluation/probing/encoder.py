"""A frozen encoder seen as a stack of per-layer token features: what every probe of this package reads.

`LayerFeatureEncoder` runs any encoder that returns ``hidden_states`` (every model of this library, and
transformers' audio encoders such as ``ASTModel`` or ``Wav2Vec2Model``) on a padded waveform batch, with the
encoder's own feature extractor, and returns the selected hidden states as one ``(batch, layers, tokens,
dim)`` tensor with a ``(batch, tokens)`` mask of the tokens that carry audio.

Conventions:

- ``hidden_states[0]`` is the embedding output (patch embeddings + positions for the ViTs, the projected
  convolutional features for wav2vec2) and ``hidden_states[i]`` the output of block ``i``; ``layers`` are
  indices into that tuple (negative ones count from the end), all of them by default.
- Every token is treated alike: a CLS (or distillation) token is one more token for mean pooling, attention
  and the prototypes' max over tokens. A probe that wants the CLS token alone is a different protocol.
- Token mask: the library's spectrogram ViTs map the frame mask to their patch grid (a patch is padding when
  all its frames are); wav2vec2-style encoders know their exact convolutional arithmetic; other encoders get
  fixed-length inputs from their feature extractor (AST) and every token counts.
- ``token_pooling = k`` averages groups of ``k`` consecutive tokens (over real tokens only): the cache shrinks
  ``k`` times, at the price of the prototypes' token resolution.

The encoder is the frozen `~hf_audiorep.objectives.FrozenTeacher`'s: eval mode, no gradient, inputs
resampled to the feature extractor's rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...modeling._layers import SpectrogramModelMixin, frames_to_patch_mask
from ...objectives.teachers import FrozenTeacher, _frame_mask

__all__ = ["LayerFeatureEncoder", "group_tokens"]


def group_tokens(
    features: torch.Tensor, token_mask: torch.Tensor, group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of each run of ``group`` consecutive real tokens.

    Args:
        features: ``(batch, layers, tokens, dim)``.
        token_mask: ``(batch, tokens)`` bool, True on real tokens.
        group: tokens per group; the last group takes what is left.

    Returns:
        ``(batch, layers, ceil(tokens / group), dim)`` and the ``(batch, groups)`` mask of groups holding at
        least one real token (an all-padding group is 0).
    """
    if group == 1:
        return features, token_mask
    batch, layers, tokens, dim = features.shape
    groups = -(-tokens // group)
    pad = groups * group - tokens
    weights = torch.nn.functional.pad(token_mask, (0, pad)).to(features.dtype)
    features = torch.nn.functional.pad(features, (0, 0, 0, pad))
    weights = weights.view(batch, 1, groups, group, 1)
    sums = (features.view(batch, layers, groups, group, dim) * weights).sum(dim=3)
    counts = weights.sum(dim=3)
    return sums / counts.clamp(min=1.0), counts[:, 0, :, 0] > 0


class LayerFeatureEncoder(FrozenTeacher):
    """A frozen encoder whose probes read its hidden states (see the module docstring).

    Args:
        model: the encoder (a head of this library or of transformers is set aside: its ``base_model`` runs).
        feature_extractor: the model's own feature extractor.
        kind: ``"hf_audiorep"`` (the library's models and front ends) or ``"auto"`` (any other
            ``AutoModel`` with an ``AutoFeatureExtractor``); `from_pretrained` picks it.
        layers: indices into ``hidden_states``; None for all of them.
        token_pooling: tokens averaged into one (1 keeps every token).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        feature_extractor,
        kind: str,
        layers: Sequence[int] | None = None,
        token_pooling: int = 1,
    ):
        if kind == "clap":
            raise TypeError("CLAP models are not probed layer by layer; use an audio encoder")
        super().__init__(model, feature_extractor, kind)
        self.num_hidden_states: int | None = None
        self.select(layers, token_pooling)

    def select(self, layers: Sequence[int] | None = None, token_pooling: int = 1) -> LayerFeatureEncoder:
        """Sets which hidden states are probed and how many tokens are averaged into one; returns self."""
        if isinstance(token_pooling, bool) or not isinstance(token_pooling, int) or token_pooling < 1:
            raise ValueError(f"token_pooling must be a positive integer, got {token_pooling!r}")
        if layers is not None and not len(layers):
            raise ValueError("layers must name at least one hidden state (or be None for all of them)")
        self.requested_layers = None if layers is None else [int(i) for i in layers]
        self.token_pooling = token_pooling
        return self

    @classmethod
    def from_pretrained(cls, name_or_path, device=None, torch_dtype=None, **kwargs) -> LayerFeatureEncoder:
        """The encoder of a saved model (directory or Hub id) with its feature extractor; ``layers`` and
        ``token_pooling`` are taken from ``kwargs``, the rest goes to ``FrozenTeacher.from_pretrained``."""
        layers, pooling = kwargs.pop("layers", None), kwargs.pop("token_pooling", 1)
        encoder = super().from_pretrained(name_or_path, device=device, torch_dtype=torch_dtype, **kwargs)
        return encoder.select(layers, pooling)

    @property
    def layer_indices(self) -> list[int]:
        """The probed indices into ``hidden_states``, non-negative; known after the first forward."""
        if self.num_hidden_states is None:
            raise RuntimeError("the encoder has not run yet: call layer_features or feature_shape first")
        count = self.num_hidden_states
        if self.requested_layers is None:
            return list(range(count))
        return [i % count for i in self.requested_layers]

    @property
    def layer_names(self) -> list[str]:
        """``embeddings`` for ``hidden_states[0]``, ``layer i`` for the output of block ``i``."""
        return ["embeddings" if i == 0 else f"layer {i}" for i in self.layer_indices]

    def _select(self, hidden_states) -> torch.Tensor:
        if not isinstance(hidden_states, tuple | list) or not hidden_states:
            raise TypeError(
                f"{type(self.model).__name__} returned no hidden_states with output_hidden_states=True; "
                "probing needs an encoder that returns them"
            )
        count = len(hidden_states)
        bad = [i for i in self.requested_layers or () if not -count <= i < count]
        if bad:
            raise ValueError(
                f"layers {bad} are out of range: {type(self.model).__name__} returns {count} hidden states"
            )
        self.num_hidden_states = count
        chosen = [hidden_states[i] for i in self.layer_indices]
        shapes = {tuple(h.shape) for h in chosen}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(
                f"the probed hidden states must share one (batch, tokens, dim) shape, got {sorted(shapes)}; "
                "choose layers of one width"
            )
        return torch.stack(chosen, dim=1).float()

    def _token_mask(self, attention_mask: torch.Tensor | None, batch: int, tokens: int) -> torch.Tensor:
        device = self.device
        full = torch.ones(batch, tokens, dtype=torch.bool, device=device)
        if attention_mask is None:
            return full
        attention_mask = attention_mask.to(device)
        if isinstance(self.model, SpectrogramModelMixin):
            _, grid_f = self.model.grid_shape(attention_mask.shape[1])
            patches = frames_to_patch_mask(attention_mask, self.model.config.patch_size, grid_f).bool()
            leading = tokens - patches.shape[1]  # CLS (and any other token placed before the patches)
            if leading < 0:
                return full
            return torch.cat([full[:, :leading], patches], dim=1)
        return _frame_mask(attention_mask, tokens, self.model)

    @torch.no_grad()
    def layer_features(
        self, waveforms: torch.Tensor, lengths: torch.Tensor, sample_rate: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The probed hidden states of a padded batch.

        Args:
            waveforms: ``(B, S)`` float at ``sample_rate``; samples past each clip's length are padding.
            lengths: ``(B,)`` real samples per clip.
            sample_rate: rate of ``waveforms`` (resampled to the feature extractor's when it differs).

        Returns:
            ``features`` ``(B, layers, tokens, dim)`` float32 and ``token_mask`` ``(B, tokens)`` bool, on
            ``waveforms``' device, after ``token_pooling``.
        """
        waveforms, lengths, out_device = self._prepare(waveforms, lengths, sample_rate)
        self.model.eval()
        if self.kind == "hf_audiorep":
            inputs = self._library_inputs(waveforms, lengths)
            attention_mask = inputs["attention_mask"]
        else:
            inputs, attention_mask = self._auto_inputs(self.model, waveforms, lengths)
        outputs = self.model(**inputs, output_hidden_states=True)
        features = self._select(getattr(outputs, "hidden_states", None))
        mask = self._token_mask(attention_mask, features.shape[0], features.shape[2])
        features, mask = group_tokens(features, mask, self.token_pooling)
        return features.to(out_device), mask.to(out_device)

    def feature_shape(self, num_samples: int, sample_rate: int) -> tuple[int, int, int]:
        """``(layers, tokens, dim)`` of one clip of ``num_samples`` samples (one forward of a noise clip)."""
        noise = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
        features, _ = self.layer_features(noise.to(self.device), torch.tensor([num_samples]), sample_rate)
        return tuple(features.shape[1:])
