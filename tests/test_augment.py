import pytest
import torch

from hf_audiorep.data.augment import mixup, spec_augment


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
