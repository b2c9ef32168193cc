"""The supervised step every classifier trains with (hf_audiorep/objectives/classification.py): what reaches
the model in training and in evaluation, each augmentation's switch and arguments, the loss, and the
arguments' checks. Values are checked against the feature extractor and torch's losses, called directly."""

import math

import pytest
import torch
import torch.nn.functional as F
from step_utils import BINS, CLASSES, FRAMES, StepModel, clean_features, extractor, waveform_batch

from hf_audiorep.data.augment import scaled_mask_widths
from hf_audiorep.objectives.classification import AugmentationArguments, SupervisedClassificationStep


def test_arguments_are_checked_naming_the_field():
    AugmentationArguments(mixup_prob=1.0, mixup_alpha=0.5, freq_mask=0, time_mask=0)  # edges are valid
    for field, value in [("mixup_prob", 1.5), ("mixup_prob", -0.1), ("mixup_alpha", 0.0)]:
        with pytest.raises(ValueError, match=f"^{field} must be .*got {value}"):
            AugmentationArguments(**{field: value})
    for field in ("freq_mask", "time_mask"):
        with pytest.raises(ValueError, match=f"^{field} must be >= 0, got -1"):
            AugmentationArguments(**{field: -1})


def test_mask_widths_follow_the_input_unless_given():
    assert AugmentationArguments().for_input(FRAMES, BINS).freq_mask == scaled_mask_widths(FRAMES, BINS)[0]
    given = AugmentationArguments(freq_mask=5, time_mask=7).for_input(FRAMES, BINS)
    assert (given.freq_mask, given.time_mask) == (5, 7)
    step = SupervisedClassificationStep(extractor(), AugmentationArguments())
    assert (step.aug.freq_mask, step.aug.time_mask) == scaled_mask_widths(FRAMES, BINS)
    # Masked cells hold what a zero log-mel becomes after normalisation (AudioMAE masks before it).
    fe = extractor()
    assert step.mask_value == pytest.approx((0.0 - fe.mean) / (fe.std_scale * fe.std))
    assert (
        SupervisedClassificationStep(extractor(do_normalize=False), AugmentationArguments()).mask_value == 0
    )


def test_evaluation_sees_the_clean_features_with_each_clips_frame_mask():
    fe, batch = extractor(), waveform_batch(short=4000)
    step = SupervisedClassificationStep(fe, AugmentationArguments(mixup_prob=1.0, freq_mask=8, time_mask=16))
    model = StepModel().eval()
    features, mask, labels = step.features(model, batch)
    clean, clean_mask = clean_features(fe, batch)
    torch.testing.assert_close(features, clean, rtol=0, atol=0)
    torch.testing.assert_close(mask, clean_mask, rtol=0, atol=0)
    assert mask[0].sum() < mask[1].sum(), "the short clip's padded frames are not masked"
    assert torch.equal(labels, batch["labels"])


def test_spec_augment_in_training_masks_with_the_mask_value_and_can_be_skipped():
    fe, batch = extractor(), waveform_batch()
    clean, _ = clean_features(fe, batch)
    for freq, time in [(8, 0), (0, 16), (8, 16)]:
        torch.manual_seed(0)
        step = SupervisedClassificationStep(
            fe, AugmentationArguments(mixup_prob=0, freq_mask=freq, time_mask=time)
        )
        features, _, labels = step.features(StepModel().train(), batch)
        changed = features != clean
        assert changed.any(), (freq, time)
        assert torch.all(features[changed] == step.mask_value)
        assert torch.equal(labels, batch["labels"])
        # Masks span whole frequency rows (freq) or time columns (time).
        rows, cols = changed.all(dim=1).any(), changed.all(dim=2).any()
        assert (rows, cols) == (freq > 0, time > 0)
        unmasked, _, _ = step.features(StepModel().train(), batch, augment_features=False)
        torch.testing.assert_close(unmasked, clean, rtol=0, atol=0)
    off = SupervisedClassificationStep(fe, AugmentationArguments(mixup_prob=0, freq_mask=0, time_mask=0))
    torch.testing.assert_close(off.features(StepModel().train(), batch)[0], clean, rtol=0, atol=0)


def test_mixup_in_training_uses_the_given_probability_and_alpha():
    fe, batch = extractor(), waveform_batch()
    # alpha 1e6 puts lam at 0.5, prob 1 mixes every clip with its neighbour (the batch rolled by one).
    step = SupervisedClassificationStep(
        fe, AugmentationArguments(mixup_prob=1.0, mixup_alpha=1e6, freq_mask=0, time_mask=0)
    )
    features, _, labels = step.features(StepModel().train(), batch)
    expected = (batch["labels"] + batch["labels"].roll(1, dims=0)) / 2
    torch.testing.assert_close(labels, expected, rtol=0, atol=1e-3)
    mixed = {
        "waveforms": (batch["waveforms"] + batch["waveforms"].roll(1, dims=0)) / 2,
        "lengths": batch["lengths"],
    }
    torch.testing.assert_close(features, clean_features(fe, mixed)[0], rtol=0, atol=1e-2)
    none = SupervisedClassificationStep(fe, AugmentationArguments(mixup_prob=0, freq_mask=0, time_mask=0))
    assert torch.equal(none.features(StepModel().train(), batch)[2], batch["labels"])


def test_loss_is_bce_for_tags_and_cross_entropy_for_one_class_in_float32():
    fe, batch = extractor(), waveform_batch()
    args = AugmentationArguments(mixup_prob=0, freq_mask=0, time_mask=0)
    logits = torch.randn(8, CLASSES, dtype=torch.bfloat16)
    soft = torch.softmax(torch.randn(8, CLASSES), dim=1)
    tagging = SupervisedClassificationStep(fe, args)
    assert tagging.loss(logits, soft).dtype == torch.float32
    torch.testing.assert_close(
        tagging.loss(logits, soft), F.binary_cross_entropy_with_logits(logits.float(), soft)
    )
    single = SupervisedClassificationStep(fe, args, single_label=True)
    torch.testing.assert_close(single.loss(logits, soft), F.cross_entropy(logits.float(), soft))
    # The whole step: the model's logits on the step's features, scored by that loss.
    model = StepModel().train()
    loss, logs = tagging(model, batch)
    features, mask = model.seen[-1]
    assert logs == {} and torch.equal(mask, clean_features(fe, batch)[1])
    torch.testing.assert_close(
        loss, F.binary_cross_entropy_with_logits(model.head(features.mean(1)), batch["labels"])
    )


def test_a_fresh_head_starts_at_the_label_prior():
    import io

    import numpy as np
    import soundfile
    from datasets import Audio, ClassLabel, Dataset, Features, List

    from hf_audiorep.data import label_frequencies, load_audio_source
    from hf_audiorep.modeling import ZipformerConfig, ZipformerForAudioClassification
    from hf_audiorep.objectives import init_bias_from_prior

    names = ["dog", "bell", "rain"]
    labels = [["dog"], ["dog", "bell"], [], ["dog"]]
    features = Features({"audio": Audio(sampling_rate=16000), "labels": List(ClassLabel(names=names))})
    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(160), 16000, format="WAV")
    audio = [{"bytes": buffer.getvalue(), "path": None}] * 4
    dataset = Dataset.from_dict(
        {"audio": audio, "labels": [[names.index(n) for n in x] for x in labels]}, features
    )
    source = load_audio_source(dataset, label_column="labels")
    frequencies = label_frequencies(source)
    assert frequencies.tolist() == [0.75, 0.25, 0.0]
    assert label_frequencies(source, max_records=2).tolist() == [1.0, 0.5, 0.0]

    config = ZipformerConfig.from_preset(
        "zipformer-small", num_labels=3, problem_type="multi_label_classification"
    )
    model = ZipformerForAudioClassification(config)
    init_bias_from_prior(model, frequencies)
    # sigmoid(bias) is the prior, with a never-seen label clamped to a finite floor
    probabilities = torch.sigmoid(model.classifier.bias.double())
    torch.testing.assert_close(
        probabilities[:2], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert 0 < probabilities[2] < 1.01e-4
    with pytest.raises(ValueError, match="one value per label"):
        init_bias_from_prior(model, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        init_bias_from_prior(model, [0.5, 1.5, 0.1])
    with pytest.raises(ValueError, match="max_records"):
        label_frequencies(source, max_records=0)


def test_prior_only_bce_is_the_loss_of_predicting_the_frequencies():
    from hf_audiorep.objectives import prior_only_bce

    multi_hot = torch.tensor([[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 1, 1], [1, 0, 0, 1]], dtype=torch.float64)
    frequencies = multi_hot.mean(0)  # 1, 0, 0.5, 0.5: labels on every clip or none cost nothing
    expected = F.binary_cross_entropy(frequencies.expand_as(multi_hot), multi_hot).item()
    assert prior_only_bce(frequencies.numpy()) == pytest.approx(expected, rel=1e-12)
    assert prior_only_bce([0.5, 0.5]) == pytest.approx(math.log(2), rel=1e-12)
    for bad in ([], [0.5, 1.5], [[0.5]]):
        with pytest.raises(ValueError, match="fractions of clips"):
            prior_only_bce(bad)
