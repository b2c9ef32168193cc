import pytest
import torch

from hf_audiorep.data.augment import mixup, roll_and_gain, spec_augment


def test_mixup_mixes_waveforms_and_labels_with_the_same_weights():
    torch.manual_seed(0)
    waves = torch.randn(6, 100)
    lengths = torch.tensor([100, 50, 100, 80, 100, 30])
    labels = torch.eye(6)
    out = mixup(waves, lengths, labels, alpha=10.0, prob=1.0)
    partner = torch.roll(torch.arange(6), 1)
    lam = out.lam
    assert ((lam > 0) & (lam < 1)).all()
    torch.testing.assert_close(out.waveforms, lam[:, None] * waves + (1 - lam[:, None]) * waves[partner])
    torch.testing.assert_close(out.labels.sum(1), torch.ones(6))
    torch.testing.assert_close(out.labels[torch.arange(6), torch.arange(6)], lam)
    assert torch.equal(out.lengths, torch.maximum(lengths, lengths[partner]))


def test_mixup_prob_zero_is_identity_and_bad_args_raise():
    waves, lengths, labels = torch.randn(4, 10), torch.full((4,), 10), torch.rand(4, 3)
    out = mixup(waves, lengths, labels, prob=0.0)
    assert out.waveforms is waves and torch.equal(out.lam, torch.ones(4))
    with pytest.raises(ValueError, match="prob"):
        mixup(waves, lengths, labels, prob=1.5)
    with pytest.raises(ValueError, match="waveforms"):
        mixup(waves[0], lengths, labels)


def test_spec_augment_masks_independent_bands_per_clip():
    torch.manual_seed(0)
    feats = torch.randn(8, 64, 32)
    out = spec_augment(feats, freq_mask_param=10, time_mask_param=20, mask_value=7.0)
    assert out.shape == feats.shape
    masked = out == 7.0
    # a time mask covers whole frames, a frequency mask whole bins
    full_frames = masked.all(dim=2).sum(dim=1)
    full_bins = masked.all(dim=1).sum(dim=1)
    assert (full_frames < 20).all() and (full_bins < 10).all()
    assert masked.any()
    patterns = {tuple(m.flatten().tolist()) for m in masked}
    assert len(patterns) > 1, "every clip got the same mask"
    unmasked = ~masked
    assert torch.equal(out[unmasked], feats[unmasked])
    with pytest.raises(ValueError, match="B, T, F"):
        spec_augment(feats[0])


def test_roll_and_gain_rotates_within_the_real_samples_and_scales():
    torch.manual_seed(0)
    waveforms = torch.zeros(3, 12)
    lengths = torch.tensor([12, 7, 1])
    for i, n in enumerate(lengths.tolist()):
        waveforms[i, :n] = torch.arange(1, n + 1, dtype=torch.float32)
    out = roll_and_gain(waveforms, lengths)
    assert out.shape == waveforms.shape
    for i, n in enumerate(lengths.tolist()):
        real = out[i, :n]
        gain = real.abs().sum() / waveforms[i, :n].sum()
        assert 0.5 <= gain <= 1.5
        # The real samples are a rotation of the clip, scaled by one gain; the padding stays silent.
        shift = int(torch.argmin((real / gain - 1).abs()))
        torch.testing.assert_close(real / gain, torch.roll(waveforms[i, :n], shift), rtol=1e-5, atol=1e-5)
        assert torch.equal(out[i, n:], torch.zeros(12 - n))
    # Each clip draws its own shift and gain: copies of one clip come out different.
    copies = roll_and_gain(waveforms[:1].repeat(8, 1), lengths[:1].repeat(8))
    assert len({tuple(row.tolist()) for row in copies}) == 8
    with pytest.raises(ValueError, match="lengths"):
        roll_and_gain(waveforms, lengths[:2])
    with pytest.raises(ValueError, match="gain_alpha"):
        roll_and_gain(waveforms, lengths, gain_alpha=0)


def test_step_rolls_training_clips_only_when_asked():
    from torch import nn

    from hf_audiorep.objectives import AugmentationArguments, SupervisedClassificationStep

    class PassThrough:  # the batch's waveforms come back as one-bin "features"
        mean, std, std_scale, do_normalize = 0.0, 1.0, 2.0, True

        def batch_features(self, waveforms, lengths):
            return waveforms.unsqueeze(-1), torch.ones_like(waveforms, dtype=torch.long)

    batch = {"waveforms": torch.randn(4, 50), "lengths": torch.full((4,), 50), "labels": torch.zeros(4, 3)}
    model = nn.Linear(1, 1)
    no_mix = dict(mixup_prob=0.0, freq_mask=0, time_mask=0)
    plain = SupervisedClassificationStep(PassThrough(), AugmentationArguments(**no_mix))
    rolled = SupervisedClassificationStep(PassThrough(), AugmentationArguments(**no_mix, roll_mag_aug=True))
    assert torch.equal(plain.features(model.train(), batch)[0][..., 0], batch["waveforms"])
    assert not torch.allclose(rolled.features(model.train(), batch)[0][..., 0], batch["waveforms"])
    assert torch.equal(rolled.features(model.eval(), batch)[0][..., 0], batch["waveforms"]), "eval: no roll"


def test_mask_widths_scale_with_the_input():
    from hf_audiorep.data.augment import scaled_mask_widths

    assert scaled_mask_widths(1024, 128) == (48, 192)  # AudioMAE's AS-20K widths on 10.24-s clips
    assert scaled_mask_widths(208, 128) == (48, 39)  # a 2-s clip: 39 frames, not all 208
    assert scaled_mask_widths(400, 64) == (24, 75)
    with pytest.raises(ValueError, match="positive"):
        scaled_mask_widths(0, 128)
