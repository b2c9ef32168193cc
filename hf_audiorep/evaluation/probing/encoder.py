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
- A CNN's hidden state is a feature map ``(batch, channels, freq, time)`` (CP-Mobile's): each (freq, time)
  position is a token of width ``channels``, ``freq * time`` tokens ordered time-major (every frequency of
  time step 0, then of step 1, ...), as the ViTs order their patches, so a shorter clip's tokens are a prefix
  of a longer one's and ``token_pooling = freq`` averages one time step. A position is padding when its time
  step is (the model's own output mask where it has one at that resolution, else a uniform stride).
- Layers are stacked, so the probed ones must share one shape; a CNN's stages differ in channels and
  resolution, so probe one stage's (`default_layers` picks the last one's).

The encoder is the frozen `~hf_audiorep.objectives.FrozenTeacher`'s: eval mode, no gradient, inputs
resampled to the feature extractor's rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...modeling._layers import SpectrogramModelMixin, frames_to_patch_mask
from ...objectives.teachers import FrozenTeacher, _frame_mask

__all__ = ["LayerFeatureEncoder", "group_tokens", "map_tokens"]


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


def map_tokens(hidden: torch.Tensor) -> torch.Tensor:
    """``(batch, tokens, dim)`` of a hidden state: a CNN's ``(batch, channels, freq, time)`` map as
    ``freq * time`` tokens of width ``channels``, time-major (see the module docstring); others unchanged."""
    if hidden.ndim != 4:
        return hidden
    batch, channels, freq, time = hidden.shape
    return hidden.permute(0, 3, 2, 1).reshape(batch, time * freq, channels)


def _shape_text(hidden: torch.Tensor) -> str:
    if hidden.ndim == 4:
        _, channels, freq, time = hidden.shape
        return f"width {channels} over {freq} x {time} (freq x time) positions"
    return f"width {hidden.shape[-1]} over {hidden.shape[1]} tokens"


class LayerFeatureEncoder(FrozenTeacher):
    """A frozen encoder whose probes read its hidden states (see the module docstring).

    Args:
        model: the encoder (a head of this library or of transformers is set aside: its ``base_model`` runs).
        feature_extractor: the model's own feature extractor.
        kind: ``"hf_audiorep"`` (the library's models and front ends) or ``"auto"`` (any other
            ``AutoModel`` with an ``AutoFeatureExtractor``); `from_pretrained` picks it.
        layers: indices into ``hidden_states``, of one shape; None for all of them (`default_layers` gives
            a choice that stacks).
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

    def _all_hidden_states(self, outputs) -> tuple | list:
        hidden_states = getattr(outputs, "hidden_states", None)
        if not isinstance(hidden_states, tuple | list) or not hidden_states:
            raise TypeError(
                f"{type(self.model).__name__} returned no hidden_states with output_hidden_states=True; "
                "probing needs an encoder that returns them"
            )
        return hidden_states

    def _select(self, outputs) -> list[torch.Tensor]:
        """The probed hidden states, as they came (``num_hidden_states`` is set from their count)."""
        hidden_states = self._all_hidden_states(outputs)
        count = len(hidden_states)
        bad = [i for i in self.requested_layers or () if not -count <= i < count]
        if bad:
            raise ValueError(
                f"layers {bad} are out of range: {type(self.model).__name__} returns {count} hidden states"
            )
        self.num_hidden_states = count
        return [hidden_states[i] for i in self.layer_indices]

    def _stack(self, chosen: list[torch.Tensor]) -> torch.Tensor:
        """``(batch, layers, tokens, dim)`` float32 of the chosen hidden states, CNN maps as tokens."""
        for index, hidden in zip(self.layer_indices, chosen, strict=True):
            if hidden.ndim not in (3, 4):
                raise ValueError(
                    f"hidden state {index} of {type(self.model).__name__} has shape {tuple(hidden.shape)}: "
                    "probing reads (batch, tokens, dim) or a CNN's (batch, channels, freq, time) map"
                )
        if len({tuple(hidden.shape) for hidden in chosen}) != 1:
            raise ValueError(self._mixed_shapes_message(chosen))
        return torch.stack([map_tokens(hidden) for hidden in chosen], dim=1).float()

    def _mixed_shapes_message(self, chosen: list[torch.Tensor]) -> str:
        """Which probed layers have which shape, and how to pick layers that stack."""
        groups: dict[str, list[int]] = {}
        for index, hidden in zip(self.layer_indices, chosen, strict=True):
            groups.setdefault(_shape_text(hidden), []).append(index)
        shapes = "; ".join(f"hidden states {indices}: {shape}" for shape, indices in groups.items())
        return (
            f"the probed hidden states of {type(self.model).__name__} differ in shape, so they cannot be "
            f"stacked ({shapes}); probe layers of one shape, e.g. the last one alone (layers=[-1], "
            "--layers -1 in recipes/probe.py) or the indices of one group above"
        )

    def _token_mask(self, attention_mask, hidden: torch.Tensor, outputs, tokens: int) -> torch.Tensor:
        """``(batch, tokens)`` True on the tokens of ``hidden`` (one probed hidden state) that carry audio."""
        if hidden.ndim == 4:
            return self._map_token_mask(attention_mask, hidden, outputs)
        device = self.device
        batch = hidden.shape[0]
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

    def _map_token_mask(self, attention_mask, feature_map: torch.Tensor, outputs) -> torch.Tensor:
        """The token mask of a CNN map: each time step's mask, repeated over its frequencies (time-major)."""
        batch, _, freq, time = feature_map.shape
        steps = getattr(outputs, "attention_mask", None)
        if steps is None or steps.shape[-1] != time:
            # No mask from the model at this map's resolution: bring the frame mask down as a uniform stride.
            if attention_mask is None:
                steps = torch.ones(batch, time, dtype=torch.bool, device=self.device)
            else:
                steps = _frame_mask(attention_mask.to(self.device), time, self.model)
        return steps.to(self.device).bool().repeat_interleave(freq, dim=1)

    def _run(self, waveforms: torch.Tensor, lengths: torch.Tensor, sample_rate: int):
        """The model's outputs on a padded batch, hidden states included; the frame (or sample) mask of its
        inputs; the device the caller's tensors are on."""
        waveforms, lengths, out_device = self._prepare(waveforms, lengths, sample_rate)
        self.model.eval()
        if self.kind == "hf_audiorep":
            inputs = self._library_inputs(waveforms, lengths)
            attention_mask = inputs["attention_mask"]
        else:
            inputs, attention_mask = self._auto_inputs(self.model, waveforms, lengths)
        return self.model(**inputs, output_hidden_states=True), attention_mask, out_device

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
        outputs, attention_mask, out_device = self._run(waveforms, lengths, sample_rate)
        chosen = self._select(outputs)
        features = self._stack(chosen)
        mask = self._token_mask(attention_mask, chosen[0], outputs, features.shape[2])
        features, mask = group_tokens(features, mask, self.token_pooling)
        return features.to(out_device), mask.to(out_device)

    @torch.no_grad()
    def default_layers(self, num_samples: int, sample_rate: int) -> list[int] | None:
        """The layers to probe when none are chosen: ``None`` (all of them) when every hidden state has one
        shape; otherwise the last one and those just before it of its shape (a CNN's last stage, whose
        blocks share channels and resolution). One forward of a noise clip of ``num_samples`` samples."""
        noise = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
        outputs, _, _ = self._run(noise.to(self.device), torch.tensor([num_samples]), sample_rate)
        shapes = [tuple(hidden.shape) for hidden in self._all_hidden_states(outputs)]
        if len(set(shapes)) == 1:
            return None
        first = len(shapes) - 1
        while first > 0 and shapes[first - 1] == shapes[-1]:
            first -= 1
        return list(range(first, len(shapes)))

    def feature_shape(self, num_samples: int, sample_rate: int) -> tuple[int, int, int]:
        """``(layers, tokens, dim)`` of one clip of ``num_samples`` samples (one forward of a noise clip)."""
        noise = 0.1 * torch.randn(1, num_samples, generator=torch.Generator().manual_seed(0))
        features, _ = self.layer_features(noise.to(self.device), torch.tensor([num_samples]), sample_rate)
        return tuple(features.shape[1:])
