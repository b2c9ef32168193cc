"""Frozen teachers: a pre-trained audio model that serves clip embeddings or class logits to a student.

Objectives that learn from a fixed model share one wrapper, `FrozenTeacher`, which turns a padded waveform
batch (at the student's rate) into the teacher's outputs with the teacher's own front end and rate:

- ``embed``: one embedding per clip. CAT's Representation Regularization (RR) regresses a projection of
  the student's CLS token onto it (a 512-d CLAP audio embedding in the paper), online inside the step or
  written once into a dataset column by `precompute_teacher_embeddings`, which
  `AudioStream(extra_columns=...)` then serves per batch.
- ``logits``: the class logits of a teacher with a classification head, the targets of knowledge
  distillation (e.g. CP-Mobile / ContrastASC students of a large tagger).

Three kinds of teacher are understood:

- ``"clap"``: a transformers ``ClapModel`` / ``ClapAudioModelWithProjection``; the embedding is the
  L2-normalised audio projection (``get_audio_features``), as LAION-CLAP's ``get_audio_embedding`` gives.
- ``"hf_audiorep"``: any model of this library (``config.model_type`` ``"audiorep-*"``); the embedding is
  the base encoder's ``pooler_output``; a ``*ForAudioClassification`` model also gives logits.
- ``"auto"``: any other ``AutoModel`` with an ``AutoFeatureExtractor``; the embedding is ``pooler_output``
  or, when the model has none, the masked mean over time of ``last_hidden_state``; an audio-classification
  model (``AutoModelForAudioClassification``, e.g. an AST fine-tuned on AudioSet) also gives logits.

CLAP has no classification head, so a CLAP teacher serves embeddings only.

The teacher is deliberately not an ``nn.Module``: it must never be registered as a sub-module of the
student, where it would land in the student's state dict, its optimizer groups and DDP's gradient buckets.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torchaudio
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["TEACHER_KINDS", "FrozenTeacher", "clap_input_features", "precompute_teacher_embeddings"]

TEACHER_KINDS = ("clap", "hf_audiorep", "auto")
_CLAP_MODEL_TYPES = ("clap", "clap_audio_model")
_LIBRARY_PREFIX = "audiorep-"
# transformers' naming convention for audio classifiers (Wav2Vec2 and HuBERT use the second).
_HEAD_SUFFIXES = ("ForAudioClassification", "ForSequenceClassification")
# The log-mel floor and dB reference of transformers' ClapFeatureExtractor (spectrogram(), power_to_db()).
_CLAP_MEL_FLOOR = 1e-10
_CLAP_DB_MIN = 1e-10


def _model_type(model) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "") or "")


def _has_classification_head(model: nn.Module) -> bool:
    """Whether ``model`` is an audio classifier (encoder + head), whose outputs carry ``logits``."""
    from transformers import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING

    config = getattr(model, "config", None)
    if config is None:
        return False
    try:
        head_cls = MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING[type(config)]
    except KeyError:
        # Remote-code classifiers are not in the mapping; they follow the naming convention.
        return type(model).__name__.endswith(_HEAD_SUFFIXES)
    return isinstance(model, head_cls)


def _checkpoint_has_head(config) -> bool:
    """Whether a checkpoint's config names an audio classifier that AutoModelForAudioClassification loads."""
    from transformers import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING

    architectures = getattr(config, "architectures", None) or ()
    if not any(str(name).endswith(_HEAD_SUFFIXES) for name in architectures):
        return False
    auto_map = getattr(config, "auto_map", None) or {}
    remote_head = "AutoModelForAudioClassification" in auto_map
    return remote_head or type(config) in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING


def _fp32_region(device: torch.device):
    # Spectrograms and resampling stay out of autocast: a bf16 log-mel loses the quiet bands.
    return torch.autocast(device.type, enabled=False)


# ----------------------------------------------------------------------------------------------------
# CLAP front-end on the device
# ----------------------------------------------------------------------------------------------------


def clap_input_features(
    feature_extractor, waveforms: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ClapFeatureExtractor``'s ``input_features`` computed with torch, where ``waveforms`` live.

    The extractor itself takes a list of numpy arrays and runs a per-frame numpy STFT on the host (about
    0.15 s per 10 s clip on a busy 2-core CPU, so seconds per training batch, plus the copies to and from
    the accelerator); this reproduces its output for clips no longer than ``max_length_s`` with one
    batched ``torch.stft`` wherever the batch lives (on that CPU it is already 1.2-1.4x faster, and agrees
    to 1e-5 dB). It computes in float64, like the extractor, because the dB scale keeps bands 100 dB below
    the peak, where float32 FFT round-off of the loud bins would otherwise show.

    Two deliberate differences make the result deterministic, which a regression target must be:

    - clips longer than ``max_length_s`` are cropped from their start (the extractor picks a random
      crop, or random fusion crops);
    - ``is_longer`` is the true per-clip flag (always False after the crop); the extractor in
      ``"fusion"`` mode flags one random clip of an all-short batch, which changes that clip's embedding
      in a fused model.

    Args:
        feature_extractor: a ``ClapFeatureExtractor`` (its rate, hop, FFT size, padding and mel banks).
        waveforms: ``(B, S)`` float, already at ``feature_extractor.sampling_rate``.
        lengths: ``(B,)`` real samples per clip, each >= 1.

    Returns:
        ``input_features`` ``(B, C, frames, feature_size)`` float32 (``C`` = 4 in ``"fusion"`` truncation,
        else 1) and ``is_longer`` ``(B, 1)`` bool.
    """
    truncation = getattr(feature_extractor, "truncation", None)
    if truncation not in ("fusion", "rand_trunc"):
        raise ValueError(
            f"unsupported ClapFeatureExtractor truncation {truncation!r}; expected 'fusion' or 'rand_trunc'"
        )
    device = waveforms.device
    max_samples = int(feature_extractor.nb_max_samples)
    batch, width = waveforms.shape
    lengths = lengths.to(device=device, dtype=torch.int64).clamp(1, min(width, max_samples))
    with torch.no_grad(), _fp32_region(device):
        # Per-clip padding to exactly max_samples, as the extractor does clip by clip: "repeatpad" tiles
        # the clip a whole number of times and zero-pads the rest, "repeat" tiles it to the end, "pad" only
        # zero-pads. One gather does it for the whole batch.
        position = torch.arange(max_samples, device=device).unsqueeze(0)
        span = lengths.unsqueeze(1)
        if feature_extractor.padding == "repeatpad":
            keep = position < (max_samples // span) * span
        elif feature_extractor.padding == "repeat":
            keep = torch.ones_like(position, dtype=torch.bool).expand(batch, -1)
        else:
            keep = position < span
        source = (position % span).clamp(max=width - 1)
        clips = torch.gather(waveforms.to(torch.float64), 1, source) * keep

        n_fft, hop = int(feature_extractor.fft_window_size), int(feature_extractor.hop_length)
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64, device=device)
        spectrum = torch.stft(
            clips, n_fft, hop_length=hop, window=window, center=True, pad_mode="reflect", return_complex=True
        )
        power = spectrum.abs().square().transpose(1, 2)  # (B, frames, freq)
        # "fusion" extractors use the HTK (torchaudio-default) banks, the others librosa's Slaney banks.
        banks = (
            feature_extractor.mel_filters if truncation == "fusion" else feature_extractor.mel_filters_slaney
        )
        banks = torch.as_tensor(np.asarray(banks), dtype=torch.float64, device=device)
        mel = (power @ banks).clamp(min=_CLAP_MEL_FLOOR)
        log_mel = (10.0 * torch.log10(mel.clamp(min=_CLAP_DB_MIN))).to(torch.float32).unsqueeze(1)
    if truncation == "fusion":
        # A short clip's four "fusion" views are copies of its one mel spectrogram.
        log_mel = log_mel.expand(-1, 4, -1, -1).contiguous()
    is_longer = torch.zeros(batch, 1, dtype=torch.bool, device=device)
    return log_mel, is_longer


# ----------------------------------------------------------------------------------------------------
# The teacher
# ----------------------------------------------------------------------------------------------------


class FrozenTeacher:
    """A frozen audio model that maps waveform batches to one embedding per clip (``embed``, e.g. the RR
    target ``e_n``) or, when it has a classification head, to class logits (``logits``, for distillation).

    Args:
        model: the model (see the module docstring for the kinds). Embeddings come from its base model
            (a classification or pre-training head of this library or of transformers is set aside);
            logits from the whole model when it is an audio classifier.
        feature_extractor: the model's own feature extractor.
        kind: ``"clap"``, ``"hf_audiorep"`` or ``"auto"``.

    Attributes:
        model: the encoder ``embed`` runs.
        classifier: the whole classifier ``logits`` runs, or None when the model has no head.
        embedding_dim: width of the embeddings ``embed`` returns.
        num_labels: width of the logits ``logits`` returns, or None without a head.
        sampling_rate: the rate the teacher's feature extractor expects; inputs are resampled to it.
        kind: as given.

    The model is put in eval mode with every parameter frozen, and both methods run under ``no_grad``,
    so a loss on their outputs back-propagates into the student only.

    Example:
        >>> teacher = FrozenTeacher.from_pretrained("laion/clap-htsat-unfused", device="cuda")
        >>> targets = teacher.embed(batch["waveforms"], batch["lengths"], sample_rate=16000)  # (B, 512)
        >>> tagger = FrozenTeacher.from_pretrained("MIT/ast-finetuned-audioset-10-10-0.4593")
        >>> soft = tagger.logits(batch["waveforms"], batch["lengths"], sample_rate=16000)  # (B, 527)
    """

    def __init__(self, model: nn.Module, feature_extractor, kind: str):
        if kind not in TEACHER_KINDS:
            raise ValueError(f"kind must be one of {TEACHER_KINDS}, got {kind!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if feature_extractor is None:
            raise TypeError("a feature_extractor is required (the model's own AutoFeatureExtractor)")
        rate = getattr(feature_extractor, "sampling_rate", None)
        if not isinstance(rate, int | np.integer) or rate <= 0:
            raise TypeError(f"{type(feature_extractor).__name__} has no usable sampling_rate ({rate!r})")
        classifier = None
        if kind == "clap":
            model = self._check_clap(model, feature_extractor)
        else:
            if _has_classification_head(model):
                classifier = model
            # Embeddings are the encoder's: a head passed in is set aside here (``base_model`` is the model
            # itself when it has no head).
            model = getattr(model, "base_model", model)
        if kind == "hf_audiorep":
            if not _model_type(model).startswith(_LIBRARY_PREFIX):
                raise TypeError(
                    f"kind='hf_audiorep' needs a model of this library (model_type 'audiorep-*'), "
                    f"got {type(model).__name__} with model_type {_model_type(model)!r}"
                )
            if not callable(getattr(feature_extractor, "batch_features", None)):
                raise TypeError(
                    f"kind='hf_audiorep' needs a feature extractor with batch_features(waveforms, "
                    f"lengths), got {type(feature_extractor).__name__}"
                )
        self.model = model.eval().requires_grad_(False)
        self.classifier = classifier.eval().requires_grad_(False) if classifier is not None else None
        self.num_labels = int(classifier.config.num_labels) if classifier is not None else None
        self.feature_extractor = feature_extractor
        self.kind = kind
        self.sampling_rate = int(rate)
        if kind == "clap":
            self.embedding_dim = int(model.config.projection_dim)
        elif kind == "hf_audiorep":
            self.embedding_dim = int(model.config.hidden_size)
        else:
            # Arbitrary models document no pooled width; one short probe also rejects an unusable
            # model now rather than at the first training step.
            self.embedding_dim = int(self._probe().shape[-1])

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> FrozenTeacher:
        """Load a teacher from a Hub id or a local directory, picking the kind from its config.

        ``model_type`` ``clap`` / ``clap_audio_model`` gives a CLAP teacher, ``audiorep-*`` one of this
        library's models, anything else ``AutoModel`` + ``AutoFeatureExtractor``. A checkpoint of an audio
        classifier (``config.architectures``) is loaded with its head, so the teacher also gives logits.
        ``torch_dtype`` is the weights' dtype (outputs are always returned in float32); ``kwargs`` go to
        every ``from_pretrained`` (``revision``, ``cache_dir``, ``trust_remote_code``, ...).
        """
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoModelForAudioClassification

        import hf_audiorep  # noqa: F401 - registers this library's configs and models with the Auto classes

        name = os.fspath(name_or_path)
        try:
            config = AutoConfig.from_pretrained(name, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"{name!r} is not a model directory or a Hub model id with a config.json: {err}"
            ) from err
        model_type = str(getattr(config, "model_type", ""))
        load = {**kwargs}
        if torch_dtype is not None:
            load["dtype"] = torch_dtype
        if model_type in _CLAP_MODEL_TYPES:
            from transformers import ClapAudioModelWithProjection, ClapModel

            kind = "clap"
            model_cls = ClapModel if model_type == "clap" else ClapAudioModelWithProjection
            model = model_cls.from_pretrained(name, **load)
        else:
            kind = "hf_audiorep" if model_type.startswith(_LIBRARY_PREFIX) else "auto"
            auto_cls = AutoModelForAudioClassification if _checkpoint_has_head(config) else AutoModel
            try:
                model = auto_cls.from_pretrained(name, **load)
            except ValueError as err:  # AutoModel's "Unrecognized configuration class"
                raise TypeError(
                    f"{name!r} (model_type {model_type!r}) has no AutoModel; a teacher must be a "
                    f"CLAP model, a model of this library or an AutoModel audio encoder"
                ) from err
        try:
            feature_extractor = AutoFeatureExtractor.from_pretrained(name, **kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(
                f"{name!r} has no usable feature extractor (preprocessor_config.json), so it is "
                f"not an audio model a teacher can run: {err}"
            ) from err
        if device is not None:
            model = model.to(device)
        return cls(model, feature_extractor, kind)

    @staticmethod
    def _check_clap(model, feature_extractor):
        from transformers import ClapAudioModelWithProjection, ClapFeatureExtractor, ClapModel

        if not isinstance(model, ClapModel | ClapAudioModelWithProjection):
            raise TypeError(
                f"kind='clap' needs a ClapModel or ClapAudioModelWithProjection, got {type(model).__name__}"
            )
        if not isinstance(feature_extractor, ClapFeatureExtractor):
            raise TypeError(
                f"kind='clap' needs a ClapFeatureExtractor, got {type(feature_extractor).__name__}"
            )
        return model

    # ---------------------------------------------------------------------------------- device

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype, which the model's float inputs are cast to."""
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device) -> FrozenTeacher:
        # The encoder is a sub-module of the classifier: moving the classifier moves both.
        (self.model if self.classifier is None else self.classifier).to(device)
        return self

    # ---------------------------------------------------------------------------------- outputs

    def __call__(self, waveforms: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
        return self.embed(waveforms, lengths, sample_rate)

    @torch.no_grad()
    def embed(self, waveforms: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """One embedding per clip of a padded batch: ``(B, embedding_dim)`` float32 on ``waveforms``' device.

        Args:
            waveforms: ``(B, S)`` float tensor at ``sample_rate``; samples past each clip's length are
                padding and never reach the model.
            lengths: ``(B,)`` integer count of real samples per clip, in ``[1, S]``.
            sample_rate: rate of ``waveforms``; resampled (``torchaudio.functional.resample``, on the
                teacher's device) to ``sampling_rate`` when it differs.
        """
        waveforms, lengths, out_device = self._prepare(waveforms, lengths, sample_rate)
        self.model.eval()  # cheap, and a teacher that was switched to train mode would use dropout
        embed = {"clap": self._embed_clap, "hf_audiorep": self._embed_hf_audiorep, "auto": self._embed_auto}
        embeddings = embed[self.kind](waveforms, lengths)
        return embeddings.float().to(out_device)

    @torch.no_grad()
    def logits(self, waveforms: torch.Tensor, lengths: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """The classifier's logits per clip of a padded batch: ``(B, num_labels)`` float32 on ``waveforms``'
        device, before any sigmoid or softmax (a distillation loss picks its own temperature).

        Arguments as for :meth:`embed`. Raises TypeError when the teacher has no classification head.
        """
        if self.classifier is None:
            raise TypeError(
                f"{self!r} has no classification head, so it serves embeddings only; logits need a teacher "
                "built from an audio classifier (a *ForAudioClassification model, or a checkpoint whose "
                "config.architectures names one)"
            )
        waveforms, lengths, out_device = self._prepare(waveforms, lengths, sample_rate)
        self.classifier.eval()
        if self.kind == "hf_audiorep":
            inputs = self._library_inputs(waveforms, lengths)
        else:
            inputs, _ = self._auto_inputs(self.classifier, waveforms, lengths)
        logits = getattr(self.classifier(**inputs), "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise TypeError(
                f"{type(self.classifier).__name__} returned no (batch, num_labels) logits, got {got}"
            )
        return logits.float().to(out_device)

    def _prepare(self, waveforms, lengths, sample_rate) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
        """Checked float32 waveforms and lengths on the teacher's device, at the teacher's rate, and the
        device the outputs go back to (the caller's)."""
        waveforms, lengths, sample_rate = self._check_batch(waveforms, lengths, sample_rate)
        out_device = waveforms.device
        device = self.device
        waveforms, lengths = waveforms.to(device), lengths.to(device)
        with _fp32_region(device):
            waveforms = waveforms.float()
            if sample_rate != self.sampling_rate:
                waveforms = torchaudio.functional.resample(waveforms, sample_rate, self.sampling_rate)
                # ceil: the resampler keeps a partial last sample period, so a clip's samples keep theirs.
                scaled = torch.div(
                    lengths * self.sampling_rate + sample_rate - 1, sample_rate, rounding_mode="floor"
                )
                lengths = scaled.clamp(1, waveforms.shape[1])
        return waveforms, lengths, out_device

    @staticmethod
    def _check_batch(waveforms, lengths, sample_rate) -> tuple[torch.Tensor, torch.Tensor, int]:
        if not isinstance(waveforms, torch.Tensor):
            raise TypeError(f"waveforms must be a torch.Tensor, got {type(waveforms).__name__}")
        if waveforms.ndim != 2 or not waveforms.is_floating_point():
            raise ValueError(
                f"waveforms must be a (batch, samples) float tensor, got shape "
                f"{tuple(waveforms.shape)} of dtype {waveforms.dtype}"
            )
        lengths = torch.as_tensor(lengths)
        if (
            lengths.shape != (waveforms.shape[0],)
            or lengths.is_floating_point()
            or lengths.dtype == torch.bool
        ):
            raise ValueError(
                f"lengths must hold one integer sample count per clip, shape "
                f"({waveforms.shape[0]},), got {tuple(lengths.shape)} of dtype {lengths.dtype}"
            )
        # B integers: the sync is negligible next to the teacher's forward.
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > waveforms.shape[1]:
            raise ValueError(
                f"lengths must lie in [1, {waveforms.shape[1]}] (the batch width), got "
                f"values in [{low}, {high}]"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        return waveforms, lengths.to(torch.int64), int(sample_rate)

    def _embed_clap(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from transformers import ClapModel

        features, is_longer = clap_input_features(self.feature_extractor, waveforms, lengths)
        features = features.to(self.dtype)
        if isinstance(self.model, ClapModel):
            # transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the normalised
            # projection (4.x returned that tensor directly); accept both.
            out = self.model.get_audio_features(input_features=features, is_longer=is_longer)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        # ClapAudioModelWithProjection leaves its projection unnormalised; normalise it like
        # get_audio_features, so both classes of the same checkpoint give the same targets.
        out = self.model(input_features=features, is_longer=is_longer)
        return nn.functional.normalize(out.audio_embeds, dim=-1)

    def _library_inputs(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        with _fp32_region(waveforms.device):
            input_values, attention_mask = self.feature_extractor.batch_features(waveforms, lengths)
        return {"input_values": input_values.to(self.dtype), "attention_mask": attention_mask}

    def _embed_hf_audiorep(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = self.model(**self._library_inputs(waveforms, lengths))
        return _pooled(out, None, self.model)

    def _auto_inputs(
        self, module: nn.Module, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[dict, Any]:
        """``module``'s keyword inputs from the generic extractor, and the extractor's attention mask."""
        # Generic extractors take numpy clips on the host; each clip is cut to its real length first, so
        # the extractor's own padding (and its attention mask, when it makes one) covers the rest.
        clips = [w[:n].cpu().numpy() for w, n in zip(waveforms, lengths.tolist(), strict=True)]
        inputs = self.feature_extractor(clips, **self._extractor_kwargs())
        accepted = inspect.signature(module.forward).parameters
        model_inputs = {
            k: v.to(waveforms.device)
            for k, v in inputs.items()
            if k in accepted and isinstance(v, torch.Tensor)
        }
        if not model_inputs:
            raise TypeError(
                f"{type(self.feature_extractor).__name__} returned {sorted(inputs)}, none of which "
                f"{type(module).__name__}.forward accepts"
            )
        main = getattr(module, "main_input_name", None)
        if main in model_inputs and model_inputs[main].is_floating_point():
            model_inputs[main] = model_inputs[main].to(self.dtype)
        return model_inputs, inputs.get("attention_mask")

    def _embed_auto(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        model_inputs, attention_mask = self._auto_inputs(self.model, waveforms, lengths)
        out = self.model(**model_inputs)
        return _pooled(out, attention_mask, self.model)

    def _extractor_kwargs(self) -> dict:
        parameters = inspect.signature(self.feature_extractor.__call__).parameters
        kwargs = {"sampling_rate": self.sampling_rate, "return_tensors": "pt"}
        # Extractors that do not pad by default (wav2vec2-style) need it for a batch of unequal clips;
        # those that pad to a fixed length (AST, Whisper) keep their own default.
        if "padding" in parameters and parameters["padding"].default is False:
            kwargs["padding"] = True
        if "return_attention_mask" in parameters:
            kwargs["return_attention_mask"] = True
        return kwargs

    def _probe(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        noise = 0.1 * torch.randn(1, self.sampling_rate, generator=generator)  # 1 s
        return self.embed(noise.to(self.device), torch.tensor([self.sampling_rate]), self.sampling_rate)

    def __repr__(self) -> str:
        name = getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__
        return (
            f"{type(self).__name__}(kind={self.kind!r}, model={name!r}, embedding_dim={self.embedding_dim}, "
            f"num_labels={self.num_labels}, sampling_rate={self.sampling_rate})"
        )


def _pooled(outputs, attention_mask: torch.Tensor | None, model) -> torch.Tensor:
    """``pooler_output``, else the mean over time of ``last_hidden_state`` restricted to real frames."""
    pooled = getattr(outputs, "pooler_output", None)
    if isinstance(pooled, torch.Tensor) and pooled.ndim == 2:
        return pooled
    hidden = getattr(outputs, "last_hidden_state", None)
    if not isinstance(hidden, torch.Tensor) or hidden.ndim != 3:
        raise TypeError(
            f"{type(model).__name__} returned {type(outputs).__name__} with neither a (batch, dim) "
            "pooler_output nor a (batch, time, dim) last_hidden_state; a teacher needs one of them"
        )
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = _frame_mask(attention_mask.to(hidden.device), hidden.shape[1], model)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def _frame_mask(attention_mask: torch.Tensor, frames: int, model) -> torch.Tensor:
    """The input-level attention mask brought to the model's output frame rate."""
    if attention_mask.shape[1] == frames:
        return attention_mask.bool()
    reduce: Callable | None = getattr(model, "_get_feature_vector_attention_mask", None)
    if reduce is not None:  # wav2vec2-family models know their exact conv arithmetic
        return reduce(frames, attention_mask).bool()
    # Otherwise assume a uniform stride: keep the share of output frames the real input covers.
    real = torch.ceil(attention_mask.sum(dim=1).double() * frames / attention_mask.shape[1]).long()
    return torch.arange(frames, device=attention_mask.device).unsqueeze(0) < real.unsqueeze(1)


# ----------------------------------------------------------------------------------------------------
# Precomputed targets
# ----------------------------------------------------------------------------------------------------


def precompute_teacher_embeddings(
    dataset,
    teacher: FrozenTeacher,
    column: str = "rr_embedding",
    batch_size: int = 16,
    sample_rate: int | None = None,
    audio_column: str | None = None,
    overwrite: bool = False,
    logits_column: str | None = None,
):
    """Add the teacher's embedding of every clip to ``dataset`` as a column of float32 lists (and, with
    ``logits_column``, its class logits as another), so that a student's step reads them from the batch and
    never calls the teacher (knowledge distillation's targets, CRD's teacher features).

    Args:
        dataset: a ``datasets.Dataset`` (or ``IterableDataset``, mapped lazily) with an audio column.
        teacher: the frozen encoder; it runs on its own device.
        column: name of the new column; ``AudioStream(extra_columns=(column,))`` serves it per batch.
        batch_size: clips per teacher forward.
        sample_rate: rate the clips are decoded at before the teacher resamples them (default: the
            teacher's own rate, so nothing is resampled twice).
        audio_column: the audio column (default: detected as ``load_audio_source`` does).
        overwrite: replace an existing ``column`` (or ``logits_column``) instead of raising.
        logits_column: also add the teacher's logits (``FrozenTeacher.logits``; the teacher needs a
            classification head) under this name.

    Clips are decoded with the library's decoder (``data.decode.decode_audio``) and embedded whole.
    A clip that cannot be decoded gets an all-NaN embedding and a warning; the stream counts such a record
    as corrupt and skips it. The progress bar is ``datasets``' own.

    Returns:
        the dataset with the new column, its audio column unchanged.
    """
    from datasets import Dataset, IterableDataset, List, Value

    from ..data.decode import CorruptAudioError, decode_audio
    from ..data.sources import find_audio_column

    if not isinstance(dataset, Dataset | IterableDataset):
        raise TypeError(
            f"dataset must be a datasets.Dataset or IterableDataset, got {type(dataset).__name__}"
        )
    if not isinstance(teacher, FrozenTeacher):
        raise TypeError(f"teacher must be a FrozenTeacher, got {type(teacher).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    sample_rate = teacher.sampling_rate if sample_rate is None else sample_rate
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    features = dataset.features
    audio_column = find_audio_column(dataset, audio_column)
    if logits_column is not None and teacher.classifier is None:
        raise TypeError(f"logits_column needs a teacher with a classification head; {teacher!r} has none")
    if logits_column == column:
        raise ValueError(f"column and logits_column must differ, both are {column!r}")
    for name in (column, logits_column):
        if features is not None and name in features and not overwrite:
            raise ValueError(f"the dataset already has a column {name!r}; pass overwrite=True to replace it")

    from datasets import Audio

    original = features[audio_column] if features is not None else None
    if isinstance(original, Audio) and original.decode:
        # Raw bytes in, so the library's decoder (soundfile, mono, band-limited resampling) does the work.
        dataset = dataset.cast_column(audio_column, Audio(decode=False))
    failures = [0]

    def embed_batch(audio: list) -> dict:
        waves = []
        for value in audio:
            try:
                waves.append(decode_audio(value, sample_rate))
            except CorruptAudioError:
                waves.append(None)
        good = [w for w in waves if w is not None]
        outputs = {
            name: np.full((len(waves), width), np.nan, dtype=np.float32) for name, width in widths.items()
        }
        if good:
            longest = max(len(w) for w in good)
            batch = torch.zeros(len(good), longest)
            for row, wave in enumerate(good):
                batch[row, : len(wave)] = torch.from_numpy(wave)
            batch = batch.to(teacher.device)
            lengths = torch.tensor([len(w) for w in good], dtype=torch.int64)
            rows = [i for i, w in enumerate(waves) if w is not None]
            outputs[column][rows] = teacher.embed(batch, lengths, sample_rate).cpu().numpy()
            if logits_column is not None:
                outputs[logits_column][rows] = teacher.logits(batch, lengths, sample_rate).cpu().numpy()
        failed = len(waves) - len(good)
        if failed:
            failures[0] += failed
            logger.warning(
                "%d clip(s) could not be decoded; their %r is NaN (%d so far)", failed, column, failures[0]
            )
        return {name: list(values) for name, values in outputs.items()}

    widths = {column: teacher.embedding_dim}
    if logits_column is not None:
        widths[logits_column] = teacher.num_labels
    new_features = None
    if features is not None:
        new_features = dataset.features.copy()
        for name, width in widths.items():
            new_features[name] = List(Value("float32"), length=width)
    kwargs: dict[str, Any] = {
        "batched": True,
        "batch_size": batch_size,
        "input_columns": [audio_column],
        "features": new_features,
    }
    if isinstance(dataset, Dataset):
        from datasets.fingerprint import Hasher

        # Hashing the closure would pickle the teacher's weights; the fingerprint names what the column
        # depends on instead (a weight checksum tells two teachers of the same name apart).
        name = getattr(teacher.model.config, "_name_or_path", "") or type(teacher.model).__name__
        weights = (teacher.classifier or teacher.model).parameters()  # the classifier holds the encoder too
        checksum = float(sum(p.detach().double().sum() for p in weights))
        fingerprint = Hasher.hash(
            (dataset._fingerprint, name, checksum, teacher.kind, column, logits_column, sample_rate)
        )
        kwargs.update(new_fingerprint=fingerprint, desc=f"teacher embeddings -> {column!r}")
    dataset = dataset.map(embed_batch, **kwargs)
    if isinstance(original, Audio) and original.decode:
        dataset = dataset.cast_column(audio_column, original)
    return dataset
