"""The BEATs front end: `AudioFbankFeatureExtractor` with the settings of the reference's preprocess.

BEATs (microsoft/unilm ``beats/BEATs.py``) computes ``torchaudio.compliance.kaldi.fbank`` on the waveform in
int16 units (times 2^15) with torchaudio's defaults (povey window, 25 / 10 ms, pre-emphasis 0.97, no
dither, 20 Hz to Nyquist) and 128 mel bins, and normalises with its own statistics,
``(x - 15.41663) / (2 * 6.55582)``.
Only the defaults differ from the ViT front end, so this is a subclass, not a second fbank.
"""

import math

import torch

from .feature_extraction_fbank import AudioFbankFeatureExtractor

__all__ = ["BEATS_FBANK_MEAN", "BEATS_FBANK_STD", "BEATsFeatureExtractor"]

#: normalisation statistics of the reference's ``preprocess`` (its defaults ``fbank_mean`` / ``fbank_std``)
BEATS_FBANK_MEAN = 15.41663
BEATS_FBANK_STD = 6.55582

# What a frame of zero samples gives: Kaldi floors the mel energies at the float32 epsilon before the log. The
# reference pads a batch's waveforms with zeros, so its padded frames hold this value; padding with it keeps a
# padded batch's features those of the reference.
_SILENT_FRAME_LOG_MEL = math.log(torch.finfo(torch.float32).eps)


class BEATsFeatureExtractor(AudioFbankFeatureExtractor):
    r"""Kaldi fbank features for BEATs: 16 kHz, 128 bins, povey window, waveform in int16 units, BEATs'
    normalisation, variable length.

    ``target_length`` defaults to ``None`` (BEATs takes any length; a batch is padded to its longest clip) and
    padded frames hold the log-mel of silence (``log(float32 eps)`` before normalisation), what the reference
    computes for a zero-padded waveform. Every field of :class:`AudioFbankFeatureExtractor` can be overridden.
    """

    def __init__(
        self,
        sampling_rate: int = 16000,
        num_mel_bins: int = 128,
        target_length: int | None = None,
        mean: float = BEATS_FBANK_MEAN,
        std: float = BEATS_FBANK_STD,
        window_type: str = "povey",
        waveform_scale: float = 2.0**15,
        padding_value: float = _SILENT_FRAME_LOG_MEL,
        **kwargs,
    ):
        super().__init__(
            sampling_rate=sampling_rate,
            num_mel_bins=num_mel_bins,
            target_length=target_length,
            mean=mean,
            std=std,
            window_type=window_type,
            waveform_scale=waveform_scale,
            padding_value=padding_value,
            **kwargs,
        )
