"""The shared half of the front-end family: everything an audio feature extractor does around its spectrogram.

`BaseAudioFeatureExtractor` takes what users pass (numpy arrays, tensors, lists of floats, ``datasets`` audio
records, one clip or a batch of any lengths, integer PCM or floats), checks the sampling rate, and builds one
zero-padded ``(B, S)`` float32 batch on the requested device. After the subclass's spectrogram it crops or
pads the frames to ``target_length``, builds the frame mask, and normalises. Subclasses supply only:

* ``_spectrogram(waveforms, lengths, generator)`` -- raw ``(B, num_frames(S), F)`` features of the batch;
* their frame geometry -- ``num_frames``, ``min_samples`` and ``_samples_for_frames`` (for cropping);
* ``_normalize_(features)`` -- in-place normalisation (a no-op by default).

The members are `AudioFbankFeatureExtractor` and `ZipformerFbankFeatureExtractor`
(``feature_extraction_fbank.py``, Kaldi fbank) and `LogMelFeatureExtractor`
(``feature_extraction_log_mel.py``, STFT log-mel). This module imports only torch, numpy and transformers
so that it ships unchanged as Hub remote code next to them.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor
from transformers.feature_extraction_utils import BatchFeature
from transformers.utils import logging

# ----------------------------------------------------------------------------------------------------
# Helpers shared by the front ends
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameGeometry:
    """The frame geometry every front end's validated settings share (frozen, so the settings hash as the key
    of a constants cache); each front end subclasses it with its own mel and window fields."""

    sample_rate: float
    num_mel_bins: int
    win_length: int
    hop_length: int
    n_fft: int

    @property
    def num_spectrum_bins(self) -> int:
        return self.n_fft // 2 + 1


def is_finite_number(value: Any) -> bool:
    """A real, finite, non-boolean number (what every numeric extractor setting must be)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


#: the largest sample magnitude taken as audio. Float audio lies within +-1 and integer PCM written as floats
#: within +-2**31; far beyond that a spectrogram's power overflows float32 (from about 1e17) and every score
#: of the clip becomes NaN, so such a clip is refused with what is wrong with it.
MAX_SAMPLE_MAGNITUDE = 1e10


def sample_range_problem(peak: float) -> str | None:
    """What is wrong with samples whose largest magnitude is ``peak`` (NaN when any sample is NaN), as the
    end of a sentence about the clip; None when nothing is."""
    if not math.isfinite(peak):
        return "contains NaN or infinite samples"
    if peak > MAX_SAMPLE_MAGNITUDE:
        return (
            f"has samples of magnitude {peak:.3g}, far outside audio's range (+-1 for float audio, +-2**31 "
            "for integer PCM): it is damaged or not audio"
        )
    return None


def integer_to_unit_scale(dtype: np.dtype | torch.dtype) -> tuple[float, float] | None:
    """(offset, scale) mapping integer PCM to [-1, 1), or None for floating-point dtypes.

    Signed integers are divided by 2 ** (bits - 1) (32768 for int16), the convention of soundfile,
    torchaudio and librosa, so that a file read as int16 and as float gives the same features. Unsigned
    integers (8-bit WAV) are centred on their midpoint first.
    """
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return None
        if dtype.is_complex or dtype == torch.bool:
            raise TypeError(f"Audio must be real-valued samples, got a tensor of dtype {dtype}.")
        info = torch.iinfo(dtype)
    else:
        dtype = np.dtype(dtype)
        if dtype.kind == "f":
            return None
        if dtype.kind not in "iu":
            raise TypeError(f"Audio must be real-valued samples, got an array of dtype {dtype}.")
        info = np.iinfo(dtype)
    half_range = (int(info.max) - int(info.min) + 1) // 2
    return float(int(info.min) + half_range), float(half_range)


def float32_region(device: torch.device):
    """Autocast off: under it the mel projection would run in half precision, and quiet frames need fp32."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def reflect_pad(
    waveforms: torch.Tensor,
    lengths: torch.Tensor | None,
    left: int,
    width: int,
    tail: int,
    include_edge: bool,
) -> torch.Tensor:
    """Mirror each clip at both of its own ends: ``(B, S)`` -> ``(B, width)``, clip b shifted by ``left``.

    Front ends whose frames straddle the clip edges (Kaldi's ``snip_edges=False``,
    ``torch.stft(center=True)``) pad by reflection. In a zero-padded batch a short clip must be reflected at
    *its* end, not at the batch's, or its last frames would see the zeros of the padding; ``lengths`` (B,)
    gives each clip's end (``None``: every clip fills ``S``) and ``tail`` how many samples past its end a
    clip's frames can read. ``include_edge`` picks Kaldi's symmetric reflection ``[2, 1, 0, 0, 1, 2]`` over
    numpy/torch "reflect" ``[2, 1, 0, 1, 2]``. Samples no frame of a clip reads (past its tail, or mirrors
    of clips shorter than the padding) are left arbitrary: callers mask those frames.
    """
    batch, samples = waveforms.shape
    device = waveforms.device
    shift = 1 if include_edge else 0
    ragged = lengths is not None and tail > 0
    # Mirrored at the batch's edges first, with one index row for all clips: index arithmetic over a
    # (B, width) grid cost as much as the STFT's input copy (a 13 % slower log-mel batch when profiled).
    columns = width + tail if ragged else width  # room for the last clip's own tail, dropped at the end
    index = torch.arange(columns, device=device, dtype=torch.int64) - left
    index = torch.where(index < 0, -index - shift, index)
    index = torch.where(index >= samples, 2 * samples - 2 + shift - index, index).clamp_(0, samples - 1)
    out = torch.index_select(waveforms, 1, index)
    if not ragged:
        return out
    # Then each shorter clip's tail, mirrored at its own end: (B, tail) samples.
    ends = lengths.to(device=device, dtype=torch.int64).clamp(1, samples).unsqueeze(1)
    offsets = torch.arange(tail, device=device, dtype=torch.int64)
    source = (ends - 2 + shift - offsets).clamp_(min=0)
    target = (ends + left + offsets).clamp_(min=0)
    out.scatter_(1, target, torch.gather(waveforms, 1, source))
    return out[:, :width]


def _clip_description(index: int | None) -> str:
    return "the audio" if index is None else f"clip {index}"


# ----------------------------------------------------------------------------------------------------
# The base class
# ----------------------------------------------------------------------------------------------------


class BaseAudioFeatureExtractor(SequenceFeatureExtractor):
    r"""Input handling, batching, masking and padding shared by hf_audiorep's feature extractors.

    Not used on its own: a subclass supplies the spectrogram and its frame geometry (see the module
    docstring). What every member shares:

    * ``__call__`` accepts a clip (1-D numpy array, tensor, list of floats, or a ``datasets`` audio record)
      or a batch of them of any lengths, or a 2-D ``(batch, samples)`` array; integer PCM is scaled to
      [-1, 1); the sampling rate must equal ``sampling_rate`` (nothing is resampled); features are computed
      on ``device`` (default: where the input tensor is).
    * ``batch_features(waveforms, lengths)`` is the same computation for a padded batch already on the
      accelerator (the training-step path).
    * Output: ``input_values`` ``(B, T, feature_size)`` float32 and ``attention_mask`` ``(B, T)`` int64 (1 on
      frames computed from the clip's own samples), ``T = target_length`` or, when that is ``None``, the
      frames of the longest clip. Padded frames hold ``padding_value`` (in raw feature units: they are
      normalised with the rest, the AST order).

    Args:
        feature_size: features per frame (mel bins).
        sampling_rate: rate (Hz) the audio must already be at.
        target_length: frames per clip after cropping or padding; ``None`` pads to the longest clip.
        padding_value: raw feature value of padded frames, before normalisation.
        return_attention_mask: whether ``__call__`` returns the frame mask by default.
        waveform_scale: factor applied to the [-1, 1] waveform before the spectrogram.
    """

    model_input_names = ["input_values", "attention_mask"]

    def __init__(
        self,
        feature_size: int,
        sampling_rate: int,
        target_length: int | None,
        padding_value: float,
        return_attention_mask: bool = True,
        waveform_scale: float = 1.0,
        **kwargs,
    ):
        if (
            isinstance(sampling_rate, bool)
            or not isinstance(sampling_rate, numbers.Integral)
            or sampling_rate <= 0
        ):
            raise ValueError(
                f"`sampling_rate` must be a positive integer number of Hz, got {sampling_rate!r}."
            )
        if target_length is not None and (
            isinstance(target_length, bool)
            or not isinstance(target_length, numbers.Integral)
            or target_length <= 0
        ):
            raise ValueError(f"`target_length` must be a positive integer or None, got {target_length!r}.")
        if not is_finite_number(waveform_scale) or waveform_scale <= 0:
            raise ValueError(f"`waveform_scale` must be a positive finite number, got {waveform_scale!r}.")
        if not is_finite_number(padding_value):
            raise ValueError(f"`padding_value` must be a finite number, got {padding_value!r}.")
        super().__init__(
            feature_size=int(feature_size),
            sampling_rate=int(sampling_rate),
            padding_value=float(padding_value),
            return_attention_mask=bool(return_attention_mask),
            **kwargs,
        )
        # Plain Python scalars only, so that to_dict() is JSON-serialisable whatever was passed in.
        self.target_length = None if target_length is None else int(target_length)
        self.waveform_scale = float(waveform_scale)

    # -- what a subclass supplies ------------------------------------------------------------------------

    @property
    def min_samples(self) -> int:
        """Fewest samples a clip may have (one analysis frame); shorter clips are an error in ``__call__``."""
        raise NotImplementedError

    def _min_samples_reason(self) -> str:
        """What ``min_samples`` is, for the error message, e.g. "one 25 ms frame at 16000 Hz"."""
        raise NotImplementedError

    def num_frames(self, num_samples: int) -> int:
        """Frames the spectrogram yields for ``num_samples`` samples, before cropping or padding."""
        raise NotImplementedError

    def frame_times(self, num_frames: int) -> np.ndarray:
        """Seconds from the clip's start to the centre of each of its first ``num_frames`` frames: where a
        frame-level output (a timestamp embedding, a frame score) sits in the audio."""
        raise NotImplementedError

    def _frames_of(self, lengths: torch.Tensor) -> torch.Tensor:
        """``num_frames`` of each clip (``lengths`` (B,) int64 on any device), 0 below ``min_samples``."""
        raise NotImplementedError

    def _samples_for_frames(self, frames: int) -> int:
        """Fewest samples whose first ``frames`` frames equal those of any longer clip (the crop point)."""
        raise NotImplementedError

    def _spectrogram(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Raw ``(B, num_frames(S), feature_size)`` float32 features of a ``(B, S)`` float32 batch.

        Row b's first ``num_frames(lengths[b])`` frames must be those of its first ``lengths[b]`` samples
        alone (``None``: each row fills ``S``); later frames are masked and overwritten by the caller.
        """
        raise NotImplementedError

    def _normalize_(self, features: torch.Tensor) -> None:
        """Normalise ``features`` in place (padding included); the default leaves them raw."""

    def spectrogram(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw ``(frames, feature_size)`` features of one whole mono clip at ``sampling_rate``: no crop to
        ``target_length``, no padding, no normalisation. The picture of a clip (the Space draws it), made
        by the same front end as the model input."""
        clip = self._as_unit_float_tensor(waveform, "the clip", torch.device("cpu"))
        if clip.ndim != 1:
            raise ValueError(f"expected a mono 1-D waveform, got shape {tuple(clip.shape)}")
        self._check_length(clip.shape[0], "the clip")
        with torch.no_grad():
            return self._spectrogram(clip[None], None, None)[0]

    # -- shared geometry ---------------------------------------------------------------------------------

    @property
    def max_samples(self) -> int | None:
        """Samples that make ``target_length`` frames; anything beyond is cropped before the spectrogram."""
        if self.target_length is None:
            return None
        return self._samples_for_frames(self.target_length)

    # -- the in-step path --------------------------------------------------------------------------------

    def batch_features(
        self,
        waveforms: torch.Tensor,
        lengths: torch.Tensor | Sequence[int] | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of a padded waveform batch, computed where the batch lives (the training-step path).

        Args:
            waveforms: ``(B, S)`` tensor at ``sampling_rate``; floating point in [-1, 1] (integer PCM is
                scaled like in ``__call__``).
            lengths: real samples per clip, ``(B,)``; samples beyond a clip's length are padding and yield no
                frames. ``None`` means every clip fills all ``S`` samples. Checked against ``S`` when given on
                the host; on an accelerator they are only clamped, to avoid a device sync.
            generator: random generator for dithering, where the front end dithers.

        Returns:
            ``input_values`` ``(B, T, feature_size)`` float32 and ``attention_mask`` ``(B, T)`` int64 on the
            waveforms' device, with ``T = target_length`` (or the frames of ``S`` samples if it is ``None``).
            A clip shorter than one frame gets an all-zero mask rather than an error, so one bad record cannot
            stop a training run.
        """
        if not isinstance(waveforms, torch.Tensor):
            raise TypeError(f"`waveforms` must be a torch.Tensor, got {type(waveforms).__name__}.")
        if waveforms.ndim != 2:
            raise ValueError(
                f"`waveforms` must be a (batch, samples) tensor, got shape {tuple(waveforms.shape)}; use "
                "`__call__` for single clips and downmix multi-channel audio to mono first."
            )
        batch, length = waveforms.shape
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.shape != (batch,) or lengths.is_floating_point() or lengths.is_complex():
                raise ValueError(
                    f"`lengths` must hold one integer sample count per clip, shape ({batch},), got "
                    f"{tuple(lengths.shape)} of dtype {lengths.dtype}."
                )
            # int64 before the range check: against a narrow dtype `length` wraps (40000 becomes -25536 for
            # int16 lengths), and valid lengths were refused.
            lengths = lengths.to(torch.int64)
            if lengths.device.type == "cpu" and bool(((lengths < 0) | (lengths > length)).any()):
                raise ValueError(
                    f"`lengths` must lie in [0, {length}] (the padded batch width), got {lengths.tolist()}."
                )
            lengths = lengths.to(device=waveforms.device, dtype=torch.int64).clamp(0, length)
        with torch.no_grad():
            return self._features(self._to_unit_float(waveforms), lengths, generator)

    def _to_unit_float(self, waveforms: torch.Tensor) -> torch.Tensor:
        integer_scale = integer_to_unit_scale(waveforms.dtype)
        waveforms = waveforms.to(torch.float32)
        if integer_scale is not None:
            offset, scale = integer_scale
            waveforms = (waveforms - offset) / scale
        return waveforms * self.waveform_scale if self.waveform_scale != 1.0 else waveforms

    def _features(
        self, waveforms: torch.Tensor, lengths: torch.Tensor | None, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectrogram -> pad/crop -> mask -> normalise a (B, S) float32 batch; ``lengths`` (B,) or None."""
        batch, length = waveforms.shape
        device = waveforms.device
        keep = self.max_samples
        if keep is not None and length > keep:
            # Frames past target_length would be thrown away: do not compute them (360,000 for 1 hour).
            waveforms = waveforms[:, :keep]
            length = keep
            if lengths is not None:
                lengths = lengths.clamp(max=keep)
        computed = self.num_frames(length) if length >= self.min_samples else 0
        out_frames = self.target_length if self.target_length is not None else computed
        # Everything below works in place on the spectrogram's output: on a CPU each fresh (B, T, F) tensor
        # costs page faults and a memory pass, about a quarter of the Kaldi extractor's time when profiled.
        if computed == 0:
            features = torch.full(
                (batch, out_frames, self.feature_size), self.padding_value, device=device, dtype=torch.float32
            )
        else:
            features = self._spectrogram(waveforms, lengths, generator)
            if computed > out_frames:
                # Front ends that pad the clip edges crop a little past target_length (see
                # `_samples_for_frames`) so that the frames kept never see the reflection.
                features = features[:, :out_frames]
            elif computed < out_frames:
                padded = features.new_empty(batch, out_frames, self.feature_size)
                padded[:, :computed] = features
                padded[:, computed:] = self.padding_value
                features = padded
        frame_index = torch.arange(out_frames, device=device)
        if lengths is None:
            attention_mask = (frame_index < computed).expand(batch, out_frames)
        else:
            attention_mask = frame_index.unsqueeze(0) < self._frames_of(lengths).unsqueeze(1)
            # Frames that overlap a clip's zero-padded tail are not that clip's audio: treat them as padding.
            features.masked_fill_(~attention_mask.unsqueeze(-1), self.padding_value)
        self._normalize_(features)
        return features, attention_mask.to(torch.int64)

    # -- the user-facing path ----------------------------------------------------------------------------

    def __call__(
        self,
        raw_audio: Any,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        device: str | torch.device | None = None,
        return_attention_mask: bool | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Featurise one clip or a batch of mono clips.

        Args:
            raw_audio: a clip -- 1-D numpy array, 1-D torch tensor, list of floats, or a ``datasets`` audio
                record ``{"array": ..., "sampling_rate": ...}`` -- or a batch: a list of clips (any lengths),
                or a 2-D ``(batch, samples)`` numpy array / tensor. A 2-D array is always a batch, never
                channels.
                Integer PCM is scaled to [-1, 1) by ``2 ** (bits - 1)`` (int16 / 32768).
            sampling_rate: rate of ``raw_audio``; must equal ``self.sampling_rate`` (nothing is resampled).
            return_tensors: ``"pt"`` (torch, on ``device``), ``"np"``, or ``None`` (a list of numpy arrays per
                clip, like transformers' extractors).
            device: where to compute (default: the input tensor's device, else CPU).
            return_attention_mask: overrides ``self.return_attention_mask``.
            generator: (keyword) random generator for dithering, where the front end dithers.

        Returns:
            ``BatchFeature`` with ``input_values`` ``(B, T, feature_size)`` and, unless disabled,
            ``attention_mask`` ``(B, T)`` int64 (1 on real frames); ``T`` is ``target_length`` or, when that
            is ``None``, the frames of the longest clip.
        """
        # Logged under the concrete extractor's module, where users look for (and filter) its messages.
        logger = logging.get_logger(type(self).__module__)
        generator = kwargs.pop("generator", None)
        if kwargs:
            logger.warning_once(
                f"{type(self).__name__}.__call__ ignores the arguments {sorted(kwargs)} (padding and "
                "cropping are set by `target_length`)."
            )
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"`return_tensors` must be 'pt', 'np' or None, got {return_tensors!r}.")
        if sampling_rate is not None:
            self._check_rate(sampling_rate, None)
        clips, has_rate = self._split_clips(raw_audio, sampling_rate)
        if sampling_rate is None and not has_rate:  # warned on every call, like transformers' extractors
            logger.warning(
                "It is strongly recommended to pass the `sampling_rate` argument to "
                f"`{type(self).__name__}()`: this extractor expects {self.sampling_rate} Hz audio and "
                "cannot check that yours is."
            )
        if device is None:  # compute where the input already is
            tensors = [clips] if not isinstance(clips, list) else clips
            first = next((clip for clip in tensors if isinstance(clip, torch.Tensor)), None)
            device = first.device if first is not None else torch.device("cpu")
        waveforms, lengths = self._collate(clips, torch.device(device))
        with torch.no_grad():
            input_values, attention_mask = self._features(waveforms, lengths, generator)

        if return_attention_mask is None:
            return_attention_mask = self.return_attention_mask
        data = {"input_values": input_values}
        if return_attention_mask:
            data["attention_mask"] = attention_mask
        if return_tensors == "pt":
            return BatchFeature(data)
        data = {key: value.cpu().numpy() for key, value in data.items()}
        if return_tensors is None:
            data = {key: list(value) for key, value in data.items()}
        return BatchFeature(data)

    def _check_rate(self, rate: Any, index: int | None) -> None:
        if rate != self.sampling_rate:
            raise ValueError(
                f"{_clip_description(index).capitalize()} was sampled at {rate} Hz but this feature "
                f"extractor expects {self.sampling_rate} Hz; resample first, e.g. with "
                "torchaudio.functional.resample or "
                f"datasets' cast_column(..., Audio(sampling_rate={self.sampling_rate}))."
            )

    def _split_clips(
        self, raw_audio: Any, sampling_rate: int | None
    ) -> tuple[list | np.ndarray | torch.Tensor, bool]:
        """The input as a list of clips or a 2-D batch (not yet validated), and whether it carried rates."""
        if isinstance(raw_audio, (np.ndarray, torch.Tensor)):
            if raw_audio.ndim == 1:
                return [raw_audio], False
            if raw_audio.ndim == 2:
                return raw_audio, False
            raise ValueError(
                f"Expected a 1-D clip or a 2-D (batch, samples) batch of mono audio, got an array of shape "
                f"{tuple(raw_audio.shape)}."
            )
        if self._is_record(raw_audio):
            return [self._record_samples(raw_audio, sampling_rate, None)], True
        if isinstance(raw_audio, (list, tuple)):
            if len(raw_audio) == 0:
                raise ValueError("Got an empty list: pass at least one clip.")
            if all(isinstance(x, numbers.Real) for x in raw_audio):  # one clip as a list of samples
                return [np.asarray(raw_audio, dtype=np.float32)], False
            clips, has_rate = [], False
            for index, item in enumerate(raw_audio):
                if self._is_record(item):
                    clips.append(self._record_samples(item, sampling_rate, index))
                    has_rate = True
                elif isinstance(item, (np.ndarray, torch.Tensor)):
                    clips.append(item)
                elif isinstance(item, (list, tuple)):
                    try:
                        clips.append(np.asarray(item, dtype=np.float32))
                    except (TypeError, ValueError) as err:
                        raise TypeError(f"Clip {index} is not a sequence of numbers ({err}).") from None
                else:
                    raise TypeError(
                        f"Clip {index} has unsupported type {type(item).__name__}; expected a numpy "
                        "array, a torch tensor, a list of floats or a {'array', 'sampling_rate'} record."
                    )
            return clips, has_rate
        raise TypeError(
            f"Unsupported audio input of type {type(raw_audio).__name__}; expected a numpy array, a "
            "torch tensor, a list of floats, a {'array', 'sampling_rate'} record, or a list of those."
        )

    @staticmethod
    def _is_record(item: Any) -> bool:
        # datasets >= 4 decodes Audio columns to a torchcodec decoder that answers ["array"] and
        # ["sampling_rate"] like the older dict records; duck-typed so torchcodec need not be imported.
        return isinstance(item, Mapping) or hasattr(item, "get_all_samples")

    def _record_samples(self, record: Any, sampling_rate: int | None, index: int | None) -> Any:
        try:
            samples, rate = record["array"], record["sampling_rate"]
        except (KeyError, TypeError):
            raise ValueError(
                f"{_clip_description(index).capitalize()} is a mapping without the 'array' and "
                "'sampling_rate' keys of a datasets audio record."
            ) from None
        if sampling_rate is not None and rate != sampling_rate:
            raise ValueError(
                f"`sampling_rate`={sampling_rate} disagrees with the {rate} Hz recorded in "
                f"{_clip_description(index)}."
            )
        self._check_rate(rate, index)
        if not isinstance(samples, (np.ndarray, torch.Tensor)):
            try:
                samples = np.asarray(samples, dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise TypeError(
                    f"The 'array' of {_clip_description(index)} is not a sequence of numbers ({err})."
                ) from None
        return samples

    def _collate(
        self, clips: list | np.ndarray | torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate the clips, crop them to what target_length needs, and pad them into one (B, S) batch.

        ``clips`` is a list of 1-D clips or a 2-D (batch, samples) array; the latter stays a zero-copy view
        on CPU, so a batch costs no more than the samples that are kept.
        """
        keep = self.max_samples
        if not isinstance(clips, list):  # a 2-D (batch, samples) array or tensor
            batch, length = clips.shape
            self._check_length(length, "the audio" if batch == 1 else "every clip", hint=batch > length)
            waveforms = self._as_unit_float_tensor(clips[:, :keep], "the audio", device)
            lengths = torch.full((batch,), waveforms.shape[1], device=device, dtype=torch.int64)
        else:
            prepared = []
            for index, clip in enumerate(clips):
                where = _clip_description(index if len(clips) > 1 else None)
                if clip.ndim == 2:
                    raise ValueError(
                        f"{where.capitalize()} is 2-D {tuple(clip.shape)}: multi-channel audio is ambiguous "
                        "here. Downmix to mono first, e.g. `x.mean(axis=0)` for (channels, samples) or "
                        "`x.mean(axis=1)` for (samples, channels) as soundfile returns it."
                    )
                if clip.ndim != 1:
                    raise ValueError(
                        f"{where.capitalize()} must be a 1-D array of samples, got shape {tuple(clip.shape)}."
                    )
                self._check_length(clip.shape[0], where)
                # Crop before any copy or conversion: a 1-hour clip costs only the samples that are kept.
                prepared.append(self._as_unit_float_tensor(clip[:keep], where, device))
            sizes = [clip.shape[0] for clip in prepared]
            if len(set(sizes)) == 1:
                waveforms = torch.stack(prepared)
            else:
                waveforms = torch.zeros(len(prepared), max(sizes), device=device, dtype=torch.float32)
                for row, clip in enumerate(prepared):
                    waveforms[row, : clip.shape[0]] = clip
            lengths = torch.tensor(sizes, device=device, dtype=torch.int64)
        self._check_sample_range(waveforms, several=waveforms.shape[0] > 1)
        return waveforms, lengths

    def _check_length(self, num_samples: int, where: str, hint: bool = False) -> None:
        if num_samples >= self.min_samples:
            return
        message = (
            f"{where.capitalize()} has {num_samples} samples but at least {self.min_samples} "
            f"({self._min_samples_reason()}) are needed."
        )
        if hint:
            message += (
                " A 2-D input is read as (batch, samples); if yours is (samples, channels) audio, downmix it "
                "to mono first."
            )
        raise ValueError(message)

    def _as_unit_float_tensor(
        self, clip: np.ndarray | torch.Tensor, where: str, device: torch.device
    ) -> torch.Tensor:
        if isinstance(clip, np.ndarray):
            if clip.dtype.kind not in "fiu":
                raise TypeError(
                    f"{where.capitalize()} must hold real-valued samples, got dtype {clip.dtype}."
                )
            if not clip.dtype.isnative or any(stride < 0 for stride in clip.strides):
                clip = np.ascontiguousarray(clip, dtype=clip.dtype.newbyteorder("="))
            elif not clip.flags.writeable:
                # Read-only arrays (np.frombuffer, memory maps, ffmpeg pipes) would make torch warn on every
                # call; one copy of one clip is cheaper than the noise.
                clip = clip.copy()
            clip = torch.from_numpy(clip)  # a view, strides and all: no copy on CPU
        if clip.dtype == torch.float64 and clip.numel():
            # Past float32's range the cast makes inf, and the error would then misname the user's samples;
            # NaN and inf are named after the cast, as for any dtype.
            for row, peak in enumerate(clip.abs().amax(dim=-1).reshape(-1).tolist()):
                if math.isfinite(peak) and peak > MAX_SAMPLE_MAGNITUDE:
                    if clip.ndim > 1:  # a (batch, samples) array: name the row
                        where = _clip_description(row if clip.shape[0] > 1 else None)
                    raise ValueError(f"{where.capitalize()} {sample_range_problem(peak)}.")
        return self._to_unit_float(clip.to(device))

    @staticmethod
    def _check_sample_range(waveforms: torch.Tensor, several: bool) -> None:
        # One reduction over the batch: a row's peak magnitude is NaN when it holds a NaN, inf for an inf,
        # and beyond MAX_SAMPLE_MAGNITUDE for samples whose spectrogram would overflow.
        peaks = waveforms.abs().amax(dim=1)
        for row in torch.nonzero(~(peaks <= MAX_SAMPLE_MAGNITUDE)).flatten().tolist():
            where = _clip_description(row if several else None)
            raise ValueError(f"{where.capitalize()} {sample_range_problem(float(peaks[row]))}.")
