"""The CR training step value by value (hf_audiorep/objectives/consistency.py): the views the model sees,
each view augmentation's switch and arguments, the loss recomputed from the model's own outputs, the
evaluation path and the arguments' checks."""

import pytest
import torch
import torch.nn.functional as F
from step_utils import StepModel, clean_features, extractor, waveform_batch

from hf_audiorep.objectives.classification import AugmentationArguments
from hf_audiorep.objectives.consistency import ConsistencyArguments, ConsistencyClassificationStep
from hf_audiorep.objectives.losses import consistency_loss

NO_AUG = AugmentationArguments(mixup_prob=0, freq_mask=0, time_mask=0)


def _step(aug=NO_AUG, **cr):
    arguments = ConsistencyArguments(consistency_regularization=True, **{"random_erasing_prob": 0.0, **cr})
    return ConsistencyClassificationStep(extractor(), aug, arguments)


def test_arguments_are_checked_naming_the_field():
    ConsistencyArguments(num_views=1)  # one view is the plain baseline
    ConsistencyArguments(consistency_regularization=True, consistency_weight=0, num_views=1)
    ConsistencyArguments(random_erasing_prob=0.0), ConsistencyArguments(random_erasing_prob=1.0)
    for fields, message in [
        ({"num_views": 0}, "^num_views must be >= 1, got 0"),
        ({"random_erasing_prob": 1.5}, r"^random_erasing_prob must be in \[0, 1\], got 1.5"),
        (
            {"consistency_regularization": True, "consistency_weight": 0.5, "num_views": 1},
            "needs num_views >= 2",
        ),
    ]:
        with pytest.raises(ValueError, match=message):
            ConsistencyArguments(**fields)
    with pytest.raises(ValueError, match="multi-label tagging"):
        ConsistencyClassificationStep(extractor(), NO_AUG, ConsistencyArguments(), single_label=True)


def test_loss_is_the_supervised_bce_plus_lambda_times_cr_on_the_models_own_outputs():
    batch = waveform_batch(batch=4, short=4000)
    for weight in (0.5, 2.0):
        # Erasing makes the views differ, so that the CR term is not zero.
        step, model = (
            _step(consistency_weight=weight, num_views=3, random_erasing_prob=1.0),
            StepModel().train(),
        )
        torch.manual_seed(0)
        loss, logs = step(model, batch)
        views, view_mask = model.seen[-1]
        features, mask = clean_features(step.feature_extractor, batch)
        assert views.shape[0] == 3 * 4
        torch.testing.assert_close(view_mask, mask.repeat(3, 1), rtol=0, atol=0)
        logits = model.head(views.mean(1)).view(3, 4, -1)
        supervised = F.binary_cross_entropy_with_logits(logits, batch["labels"].expand(3, -1, -1))
        cr = consistency_loss(logits)
        assert cr > 0
        torch.testing.assert_close(loss, supervised + weight * cr)
        torch.testing.assert_close(logs["loss_supervised"], supervised)
        torch.testing.assert_close(logs["loss_consistency"], cr)
    # Weight 0: the multi-view baseline, no CR term at all.
    loss, logs = _step(consistency_weight=0.0, num_views=2)(StepModel().train(), batch)
    assert logs["loss_consistency"] == 0 and loss == logs["loss_supervised"]


def test_each_view_is_masked_on_its_own_with_the_mask_value():
    batch = waveform_batch(batch=6)
    clean, _ = clean_features(extractor(), batch)
    for freq, time, erase in [(8, 0, 0.0), (0, 16, 0.0), (0, 0, 1.0)]:
        aug = AugmentationArguments(mixup_prob=0, freq_mask=freq, time_mask=time)
        step, model = _step(aug, num_views=2, random_erasing_prob=erase), StepModel().train()
        torch.manual_seed(1)
        step(model, batch)
        views = model.seen[-1][0]
        changed = views != clean.repeat(2, 1, 1)
        assert torch.all(views[changed] == step.mask_value) and step.mask_value != 0
        per_view = changed.flatten(1).any(dim=1)
        if erase:  # probability 1: every view has its rectangle
            assert per_view.all()
        else:
            assert per_view.any()
            assert (changed.all(dim=1).any(), changed.all(dim=2).any()) == (freq > 0, time > 0)
        assert not torch.equal(changed[:6], changed[6:]), "both views got the same masks"
    untouched = _step(num_views=2)
    model = StepModel().train()
    untouched(model, batch)
    torch.testing.assert_close(model.seen[-1][0], clean.repeat(2, 1, 1), rtol=0, atol=0)


def test_evaluation_is_the_plain_supervised_step():
    batch = waveform_batch(batch=4)
    step, model = _step(AugmentationArguments(freq_mask=8, time_mask=16), num_views=3), StepModel().eval()
    loss, logs = step(model, batch)
    features, mask = model.seen[-1]
    clean, clean_mask = clean_features(step.feature_extractor, batch)
    torch.testing.assert_close(features, clean, rtol=0, atol=0)
    torch.testing.assert_close(mask, clean_mask, rtol=0, atol=0)
    assert logs == {}
    torch.testing.assert_close(
        loss, F.binary_cross_entropy_with_logits(model.head(clean.mean(1)), batch["labels"])
    )


def test_unlabelled_clips_enter_with_their_own_frame_masks():
    labelled, unlabelled = waveform_batch(batch=2), waveform_batch(batch=2, short=3000)
    batch = {
        **labelled,
        "unlabeled_waveforms": unlabelled["waveforms"],
        "unlabeled_lengths": unlabelled["lengths"],
    }
    model = StepModel().train()
    _step(num_views=2)(model, batch)
    _, view_mask = model.seen[-1]
    expected = torch.cat(
        [clean_features(extractor(), labelled)[1], clean_features(extractor(), unlabelled)[1]]
    )
    torch.testing.assert_close(view_mask, expected.repeat(2, 1), rtol=0, atol=0)


def test_views_share_no_mask():
    # SpecAugment runs on each view only: a mask drawn once per clip would hide the same rows in every view.
    batch = waveform_batch(batch=6)
    clean, _ = clean_features(extractor(), batch)
    step = _step(AugmentationArguments(mixup_prob=0, freq_mask=8, time_mask=0), num_views=6)
    model = StepModel().train()
    torch.manual_seed(2)
    step(model, batch)
    masked_rows = (model.seen[-1][0] != clean.repeat(6, 1, 1)).all(dim=1).view(6, 6, -1)  # (view, clip, bin)
    assert masked_rows.any()
    assert not masked_rows.all(dim=0).any(), "a frequency row is masked in every view of a clip"
