"""Batch augmentations checked cell by cell: random erasing's rectangles, mixup's probabilities and
lengths, roll-and-gain's clamping and draws, SpecAugment's switches (hf_audiorep/data/augment.py)."""

import dataclasses

import pytest
import torch

from hf_audiorep.data.augment import mixup, random_erasing, roll_and_gain, spec_augment


def _rectangle(mask):
    """(rows, cols) of the one axis-aligned rectangle ``mask`` (T, F) covers, or None if it is not one."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if len(rows) == 0:
        return None
    box = torch.zeros_like(mask)
    box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = True
    return (len(rows), len(cols)) if torch.equal(box, mask) else None


def test_random_erasing_erases_one_rectangle_per_clip_within_the_area_range():
    torch.manual_seed(0)
    frames, bins = 40, 30
    features = torch.randn(64, frames, bins) + 10  # no cell is 0 before erasing
    out = random_erasing(features, prob=1.0, area=(0.05, 0.2), mask_value=0.0)
    erased = out == 0
    sizes = []
    for clip in range(len(out)):
        size = _rectangle(erased[clip])
        assert size is not None, f"clip {clip}: not one rectangle"
        sizes.append(size)
        assert torch.equal(out[clip][~erased[clip]], features[clip][~erased[clip]])
    # The target area is a uniform fraction in [0.05, 0.2] of 1200 cells; rounding the sides moves it.
    areas = torch.tensor([h * w for h, w in sizes], dtype=torch.float32) / (frames * bins)
    assert areas.min() >= 0.03 and areas.max() <= 0.26
    assert len(set(sizes)) > 10, "every clip got the same rectangle"
    # Aspect ratios on both sides of 1 (log-uniform in [-1.2, 1.2]).
    assert any(h > w for h, w in sizes) and any(h < w for h, w in sizes)


def test_random_erasing_rectangles_reach_every_edge_but_never_wrap():
    torch.manual_seed(1)
    features = torch.ones(400, 12, 10)
    erased = random_erasing(features, prob=1.0, area=(0.1, 0.3)) == 0
    rows, cols = erased.any(dim=2), erased.any(dim=1)
    assert rows[:, 0].any() and rows[:, -1].any() and cols[:, 0].any() and cols[:, -1].any()
    assert all(_rectangle(m) is not None for m in erased)


def test_random_erasing_a_tiny_area_still_erases_one_cell():
    torch.manual_seed(3)
    erased = random_erasing(torch.ones(200, 30, 4), prob=1.0, area=(0.002, 0.004)) == 0  # 0.24 to 0.48 cells
    sizes = [_rectangle(m) for m in erased]
    assert all(size is not None for size in sizes)
    assert (1, 1) in sizes and all(h <= 2 and w <= 2 for h, w in sizes)


def test_random_erasing_probability_value_and_arguments():
    torch.manual_seed(2)
    features = torch.ones(2000, 6, 5)
    out = random_erasing(features, prob=0.25, mask_value=-3.0)
    hit = (out == -3.0).flatten(1).any(dim=1).float().mean().item()
    assert hit == pytest.approx(0.25, abs=0.04)
    assert torch.isin(out, torch.tensor([1.0, -3.0])).all()
    assert torch.equal(random_erasing(features, prob=0.0), features)
    assert (random_erasing(features[:50], prob=1.0) == 0).flatten(1).any(dim=1).all()
    half = random_erasing(features[:4].half(), prob=1.0, mask_value=-3.0)
    assert half.dtype == torch.float16
    with pytest.raises(ValueError, match="prob"):
        random_erasing(features, prob=1.5)
    with pytest.raises(ValueError, match="B, T, F"):
        random_erasing(features[0])


def test_mixup_applies_with_probability_prob_and_keeps_unmixed_clips_whole():
    torch.manual_seed(0)
    batch = 4000
    waves = torch.randn(batch, 8)
    lengths = torch.randint(1, 9, (batch,))
    labels = torch.eye(4)[torch.randint(0, 4, (batch,))]
    out = mixup(waves, lengths, labels, alpha=10.0, prob=0.3)
    applied = out.lam < 1
    assert applied.float().mean().item() == pytest.approx(0.3, abs=0.03)
    # Beta(10, 10): mean 1/2, variance 1/84.
    assert out.lam[applied].mean().item() == pytest.approx(0.5, abs=0.01)
    assert out.lam[applied].var().item() == pytest.approx(1 / 84, rel=0.15)
    kept = ~applied
    assert torch.equal(out.waveforms[kept], waves[kept]) and torch.equal(out.labels[kept], labels[kept])
    assert torch.equal(out.lengths[kept], lengths[kept])
    partner = torch.roll(torch.arange(batch), 1)
    assert torch.equal(out.lengths[applied], torch.maximum(lengths, lengths[partner])[applied])
    torch.testing.assert_close(
        out.labels, out.lam[:, None] * labels + (1 - out.lam[:, None]) * labels[partner]
    )


def test_mixup_alpha_sets_the_spread_of_lam():
    torch.manual_seed(0)
    waves, lengths, labels = torch.randn(3000, 4), torch.full((3000,), 4), torch.rand(3000, 2)
    wide = mixup(waves, lengths, labels, alpha=0.5, prob=1.0).lam
    # Beta(0.5, 0.5): variance 1/8, most weight near 0 and 1.
    assert wide.var().item() == pytest.approx(1 / 8, rel=0.1)


def test_mixup_defaults_mix_half_the_clips_with_beta_ten_ten():
    torch.manual_seed(3)
    waves, lengths, labels = torch.randn(8000, 2), torch.full((8000,), 2), torch.rand(8000, 2)
    lam = mixup(waves, lengths, labels).lam
    applied = lam < 1
    assert applied.float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert lam[applied].var().item() == pytest.approx(1 / 84, rel=0.05)  # Beta(11, 11) would give 1/92


def test_mixup_edges_and_arguments():
    waves, lengths, labels = torch.randn(1, 10), torch.full((1,), 10), torch.rand(1, 3)
    single = mixup(waves, lengths, labels, prob=1.0)  # no partner for a batch of one
    assert single.waveforms is waves and torch.equal(single.lam, torch.ones(1))
    assert single.lengths is lengths and single.labels is labels
    pair = mixup(torch.randn(2, 10), torch.tensor([10, 4]), torch.eye(2), prob=1.0)  # two clips do mix
    assert (pair.lam < 1).all() and pair.lengths.tolist() == [10, 10]
    waves, lengths, labels = torch.randn(3, 10).bfloat16(), torch.full((3,), 10), torch.rand(3, 3)
    assert mixup(waves, lengths, labels, prob=1.0).waveforms.dtype == torch.bfloat16
    assert (mixup(waves, lengths, labels, prob=1.0).lam < 1).all()
    with pytest.raises(ValueError, match="alpha"):
        mixup(waves, lengths, labels, alpha=0.0)
    with pytest.raises(ValueError, match="prob"):
        mixup(waves, lengths, labels, prob=-0.1)
    with pytest.raises(ValueError, match="labels"):
        mixup(waves, lengths, labels[:2])
    with pytest.raises(ValueError, match="labels"):
        mixup(waves, lengths, labels[:, 0])


def test_roll_and_gain_draws_uniform_shifts_and_gains_around_one():
    torch.manual_seed(0)
    clips, n = 3000, 10
    waveforms = torch.arange(1, n + 1, dtype=torch.float32).repeat(clips, 1)
    out = roll_and_gain(waveforms, torch.full((clips,), n))
    gain = out.sum(dim=1) / waveforms[0].sum()
    assert gain.min() >= 0.5 and gain.max() <= 1.5
    assert gain.mean().item() == pytest.approx(1.0, abs=0.01)
    assert gain.var().item() == pytest.approx(1 / 84, rel=0.15)  # Beta(10, 10) + 0.5
    shifts = torch.round(out[:, 0] / gain).long()  # sample 0 of the output is input (0 - shift) mod n
    counts = torch.bincount((1 - shifts) % n, minlength=n)
    assert (counts > clips / n * 0.7).all(), counts


def test_roll_and_gain_clamps_lengths_and_keeps_the_dtype():
    torch.manual_seed(0)
    waveforms = torch.arange(1, 7, dtype=torch.float64).repeat(2, 1)
    out = roll_and_gain(waveforms, torch.tensor([0, 99]), gain_alpha=1e6)  # gain ~ 1 exactly
    assert out.dtype == torch.float64
    # Length 0 is read as 1 (nothing to rotate), a length past the end as the whole clip.
    torch.testing.assert_close(out[0], waveforms[0], rtol=1e-3, atol=1e-3)
    rotated = out[1].round()
    assert sorted(rotated.tolist()) == waveforms[1].tolist()
    shift = int((1 - rotated[0].item()) % 6)
    assert torch.equal(rotated, torch.roll(waveforms[1], shift))


def test_spec_augment_switches_and_widths():
    torch.manual_seed(0)
    features = torch.randn(16, 20, 8) + 5
    assert torch.equal(spec_augment(features, freq_mask_param=0, time_mask_param=0), features)
    assert torch.equal(spec_augment(features, num_freq_masks=0, num_time_masks=0), features)
    only_freq = spec_augment(features, freq_mask_param=4, time_mask_param=0) == 0
    assert only_freq.any()
    assert not only_freq.all(dim=2).any()  # no frame is masked whole...
    assert (only_freq.any(dim=1) == only_freq.all(dim=1)).all()  # ...and masked bins span every frame
    # Parameters above the size are clamped, and two masks cover more than one on average.
    wide = spec_augment(features.repeat(4, 1, 1), freq_mask_param=500, time_mask_param=0) == 0
    assert wide.any()
    assert not wide.flatten(1).all(dim=1).any(), "a mask clamped to the 8 bins never covers all of them"
    one = (spec_augment(features.repeat(50, 1, 1), 3, 0, num_freq_masks=1) == 0).float().mean()
    two = (spec_augment(features.repeat(50, 1, 1), 3, 0, num_freq_masks=2) == 0).float().mean()
    assert two > one * 1.4
    time_only = spec_augment(features, freq_mask_param=0, time_mask_param=5, mask_value=-1.0) == -1.0
    assert time_only.any() and (time_only.any(dim=2) == time_only.all(dim=2)).all()
    assert spec_augment(features.half(), 2, 2).dtype == torch.float16
    # The defaults (48 bins, 192 frames) mask with 0.
    default = spec_augment(features)
    assert (default == 0).any() and torch.isin(default, torch.cat([features.flatten(), torch.zeros(1)])).all()


def test_mask_widths_of_tiny_inputs_and_bad_sizes():
    from hf_audiorep.data.augment import scaled_mask_widths

    assert scaled_mask_widths(1, 1) == (1, 1)  # never narrower than one bin / frame
    assert scaled_mask_widths(10, 2) == (1, 2)  # 48 * 2 / 128 rounds to 1; 192 * 10 / 1024 to 2
    with pytest.raises(ValueError, match="positive"):
        scaled_mask_widths(100, 0)


def test_random_erasing_sides_and_positions_are_exact():
    # A fixed area and aspect 1 give a square of side round(sqrt(area * T * F)); its corner is uniform over
    # every position where it fits.
    torch.manual_seed(4)
    frames, bins = 12, 10
    erased = random_erasing(torch.ones(3000, frames, bins), prob=1.0, area=(0.3, 0.3), log_aspect=(0, 0)) == 0
    side = round((0.3 * frames * bins) ** 0.5)  # 6
    assert all(_rectangle(m) == (side, side) for m in erased[:200])
    tops = erased.any(dim=2).float().argmax(dim=1)
    lefts = erased.any(dim=1).float().argmax(dim=1)
    for starts, room in ((tops, frames - side + 1), (lefts, bins - side + 1)):
        counts = torch.bincount(starts, minlength=room)
        assert len(counts) == room and (counts > len(starts) / room * 0.8).all(), counts


def test_random_erasing_defaults():
    # prob 0.25, area 2 % to 1/3, aspect 0.3 to 3.3 (torchvision's RandomErasing defaults).
    torch.manual_seed(5)
    out = random_erasing(torch.ones(2000, 20, 20))
    hit = (out == 0).flatten(1).any(dim=1)
    assert hit.float().mean().item() == pytest.approx(0.25, abs=0.04)
    areas = (out[hit] == 0).flatten(1).float().mean(dim=1)
    assert areas.min() >= 0.01 and areas.max() <= 0.4 and areas.mean().item() == pytest.approx(0.18, abs=0.03)


def test_roll_and_gain_never_rotates_a_one_sample_clip_and_takes_any_positive_alpha():
    torch.manual_seed(6)
    # Samples past the length are non-zero here, so reading one of them would show.
    waveforms = torch.tensor([[5.0, 7.0, 9.0, 11.0]]).repeat(64, 1)
    out = roll_and_gain(waveforms, torch.ones(64, dtype=torch.long))
    torch.testing.assert_close(out / out[:, :1], waveforms / 5.0)
    gains = roll_and_gain(torch.ones(4000, 3), torch.full((4000,), 3), gain_alpha=0.5)[:, 0]
    assert gains.var().item() == pytest.approx(1 / 8, rel=0.1)  # Beta(0.5, 0.5): variance 1/8
    bf16 = roll_and_gain(torch.ones(2, 8, dtype=torch.bfloat16), torch.full((2,), 8))
    assert bf16.dtype == torch.bfloat16


def test_augmentations_keep_every_tensor_on_the_input_device():
    # On the meta device a tensor made on the CPU by mistake (a dropped `device=`) cannot mix with the
    # inputs: the CPU suite catches what would otherwise show only on an accelerator.
    meta = torch.device("meta")
    waveforms, lengths = torch.zeros(4, 1000, device=meta), torch.full((4,), 1000, device=meta)
    labels = torch.zeros(4, 5, device=meta)
    features = torch.zeros(4, 100, 64, device=meta)
    mixed = [
        mixup(waveforms, lengths, labels, prob=1.0),
        mixup(waveforms[:1], lengths[:1], labels[:1]),
        mixup(waveforms, lengths, labels, prob=0.0),
    ]
    outputs = [
        *(getattr(out, field.name) for out in mixed for field in dataclasses.fields(out)),
        roll_and_gain(waveforms, lengths),
        roll_and_gain(waveforms, torch.full((4,), 1000)),  # lengths as a loader yields them, on the host
        spec_augment(features),
        random_erasing(features, prob=1.0),
    ]
    assert [t.device for t in outputs] == [meta] * len(outputs)
