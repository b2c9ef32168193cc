"""The DCASE scene augmentations: Freq-MixStyle, device impulse responses, frequency masking, time roll."""

import numpy as np
import pytest
import torch

from hf_audiorep.data.augment import (
    device_impulse_response,
    freq_mixstyle,
    frequency_mask,
    roll_and_gain,
    time_roll,
)
from hf_audiorep.data.embedded.devices import device_impulse_responses


def _features_with_band_statistics(batch=6, frames=40, bins=12, seed=0):
    """(B, T, F) features whose per-bin means and standard deviations differ from clip to clip."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, 1, bins, generator=g) * 3
    std = torch.rand(batch, 1, bins, generator=g) * 2 + 0.5
    return mean + std * torch.randn(batch, frames, bins, generator=g)


def _band_statistics(x):
    return x.mean(dim=1), (x.var(dim=1) + 1e-6).sqrt()


# ---------------------------------------------------------------------------- Freq-MixStyle


def test_freq_mixstyle_with_p_zero_is_the_identity():
    features = _features_with_band_statistics()
    assert torch.equal(freq_mixstyle(features, p=0.0), features)


def test_freq_mixstyle_mixes_each_clips_band_statistics_with_another_clips():
    torch.manual_seed(0)
    features = _features_with_band_statistics()
    out = freq_mixstyle(features, p=1.0, alpha=0.3)
    assert out.shape == features.shape and out.dtype == features.dtype
    mean, std = _band_statistics(features)
    out_mean, out_std = _band_statistics(out)
    # The time pattern of each bin is kept: only its mean and scale change.
    torch.testing.assert_close(
        (out - out_mean[:, None]) / out_std[:, None], (features - mean[:, None]) / std[:, None]
    )
    mixed = 0
    for i in range(len(features)):
        fits = []
        for j in range(len(features)):
            # One weight per clip, shared by every bin's mean and standard deviation.
            a = torch.cat([mean[i] - mean[j], std[i] - std[j]])
            b = torch.cat([out_mean[i] - mean[j], out_std[i] - std[j]])
            lam = float((a @ b) / (a @ a)) if (a @ a) > 0 else 1.0
            if 0.0 <= lam <= 1.0 and torch.allclose(lam * a, b, atol=1e-3):
                fits.append((j, lam))
        assert fits, f"clip {i}: its statistics are no mix of its own and another clip's"
        mixed += any(j != i and lam < 0.99 for j, lam in fits)
    assert mixed >= 3


def test_freq_mixstyle_mixes_a_fraction_p_of_batches():
    torch.manual_seed(1)
    features = _features_with_band_statistics(batch=4)
    changed = [not torch.equal(freq_mixstyle(features, p=0.4), features) for _ in range(600)]
    assert np.mean(changed) == pytest.approx(0.4, abs=0.06)


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"p": 1.5}, "p must be"), ({"alpha": 0.0}, "alpha must be positive")]
)
def test_freq_mixstyle_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        freq_mixstyle(torch.zeros(2, 5, 4), **kwargs)
    with pytest.raises(ValueError, match=r"\(B, T, F\)"):
        freq_mixstyle(torch.zeros(5, 4))


# ---------------------------------------------------------------------------- device impulse responses


def test_dir_with_p_zero_is_the_identity():
    waveforms = torch.randn(5, 300)
    assert torch.equal(device_impulse_response(waveforms, torch.randn(3, 20), p=0.0), waveforms)


def test_dir_convolves_each_chosen_clip_with_one_response_of_the_bank():
    torch.manual_seed(2)
    waveforms = torch.randn(16, 400, dtype=torch.float64)
    irs = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 25)))
    out = device_impulse_response(waveforms, irs, p=1.0)
    used = set()
    for x, y in zip(waveforms.numpy(), out.numpy(), strict=True):
        matches = [
            k for k, h in enumerate(irs.numpy()) if np.allclose(np.convolve(x, h)[: x.size], y, atol=1e-8)
        ]
        assert len(matches) == 1
        used.add(matches[0])
    assert used == {0, 1, 2}


def test_dir_applies_to_a_fraction_p_of_the_eligible_clips_only():
    torch.manual_seed(3)
    waveforms = torch.randn(4000, 8)
    delay = torch.tensor([[0.0, 1.0]])  # a one-sample delay
    eligible = torch.arange(4000) % 2 == 0
    out = device_impulse_response(waveforms, delay, p=0.6, eligible=eligible)
    changed = ~torch.isclose(out, waveforms).all(dim=1)
    assert not changed[~eligible].any()
    assert changed[eligible].float().mean().item() == pytest.approx(0.6, abs=0.04)
    torch.testing.assert_close(out[changed][:, 1:], waveforms[changed][:, :-1])


def test_dir_keeps_padding_silent_and_takes_the_numpy_bank():
    torch.manual_seed(4)
    irs = device_impulse_responses(16000)  # numpy (N, K), straight from the corpus's devices
    waveforms = torch.randn(3, 2000)
    lengths = torch.tensor([2000, 1200, 500])
    waveforms[1, 1200:] = 0
    waveforms[2, 500:] = 0
    out = device_impulse_response(waveforms, irs, p=1.0, lengths=lengths)
    assert out.shape == waveforms.shape and out.dtype == torch.float32
    assert torch.all(out[1, 1200:] == 0) and torch.all(out[2, 500:] == 0)
    assert out[1, 1100:1200].abs().sum() > 0


def test_dir_rejects_bad_arguments():
    with pytest.raises(ValueError, match="irs"):
        device_impulse_response(torch.zeros(2, 10), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="p must be"):
        device_impulse_response(torch.zeros(2, 10), torch.zeros(1, 4), p=-0.1)
    with pytest.raises(ValueError, match="eligible"):
        device_impulse_response(
            torch.zeros(2, 10), torch.zeros(1, 4), eligible=torch.ones(3, dtype=torch.bool)
        )


# ---------------------------------------------------------------------------- frequency masking


def test_frequency_mask_masks_one_whole_band_narrower_than_max_width():
    torch.manual_seed(5)
    features = torch.rand(400, 30, 64) + 1.0  # never 0 before masking
    masked = frequency_mask(features, max_width=12) == 0
    # Whole bands: a masked bin is masked in every frame, and no frame is masked whole.
    assert (masked.any(dim=1) == masked.all(dim=1)).all()
    bands = masked.all(dim=1)
    widths = bands.sum(dim=1)
    assert widths.max() < 12 and widths.max() >= 9 and (widths == 0).any()
    for band, width in zip(bands, widths, strict=True):  # one contiguous band per clip
        if width:
            first = int(band.float().argmax())
            assert band[first : first + width].all()
    unmasked = ~masked
    assert torch.equal(features[unmasked], frequency_mask(features, max_width=0)[unmasked])


# ---------------------------------------------------------------------------- time roll


def test_time_roll_shifts_within_max_shift():
    torch.manual_seed(6)
    waveforms = torch.arange(50, dtype=torch.float32).repeat(500, 1)
    out = time_roll(waveforms, max_shift=4)
    shifts = (-out[:, 0]).long() % 50  # output sample 0 reads input sample -shift
    shifts = torch.where(shifts > 25, shifts - 50, shifts)
    assert set(shifts.tolist()) == set(range(-4, 5))
    for row, shift in zip(out, shifts, strict=True):
        assert torch.equal(row, torch.roll(waveforms[0], int(shift)))


def test_time_roll_wraps_within_the_length_and_roll_and_gain_builds_on_it():
    torch.manual_seed(7)
    waveforms = torch.arange(1, 21, dtype=torch.float32).repeat(8, 1)
    waveforms[:, 12:] = 0
    lengths = torch.full((8,), 12)
    out = time_roll(waveforms, lengths, max_shift=30)
    assert torch.all(out[:, 12:] == 0)
    assert all(sorted(row[:12].tolist()) == list(range(1, 13)) for row in out)
    torch.manual_seed(8)
    rolled = time_roll(waveforms, lengths)
    torch.manual_seed(8)
    gained = roll_and_gain(waveforms, lengths)
    ratio = gained[:, :12] / rolled[:, :12]
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))  # the same roll, times one gain a clip
    with pytest.raises(ValueError, match="max_shift"):
        time_roll(waveforms, max_shift=-1)


def test_scene_augmentations_keep_every_tensor_on_the_input_device():
    meta = torch.device("meta")
    waveforms, features = torch.zeros(4, 1000, device=meta), torch.zeros(4, 65, 256, device=meta)
    outputs = [
        device_impulse_response(
            waveforms, torch.zeros(3, 50), p=1.0, eligible=torch.ones(4, dtype=torch.bool)
        ),
        freq_mixstyle(features, p=1.0),
        frequency_mask(features),
        time_roll(waveforms, max_shift=4000),
        time_roll(waveforms, torch.full((4,), 1000)),
    ]
    assert [t.device for t in outputs] == [meta] * len(outputs)
