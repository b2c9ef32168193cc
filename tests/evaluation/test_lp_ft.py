"""LP-FT: the head of a classifier starts as the logistic-regression probe of its frozen encoder.

`fit_linear_classifier` is checked against scikit-learn called directly on standardised features; the head
initialisation against the model's own logits and the embeddings computed independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from test_linear_probe import _clusters, _stream, _tones

from hf_audiorep import (
    AudioFbankFeatureExtractor,
    AudioMAEConfig,
    AudioMAEForAudioClassification,
    ZipformerConfig,
    ZipformerForAudioClassification,
)
from hf_audiorep.evaluation.linear_probe import fit_linear_classifier
from hf_audiorep.objectives import init_classifier_from_probe


def _standardised(X):
    return (X - X.mean(0)) / X.std(0)


def test_multi_label_head_reproduces_each_class_probe_on_raw_features():
    X, Y = _clusters(120, 16, 4, seed=0)
    Y[:, 3] = 0.0  # a class with no positive in train
    X = X * np.linspace(0.5, 3.0, 16) + 5.0  # far from standardised, so folding the scaler matters
    weight, bias = fit_linear_classifier(X, Y, C=0.5)
    assert weight.shape == (4, 16) and bias.shape == (4,) and weight.dtype == np.float32
    logits = X.astype(np.float64) @ weight.T + bias
    for c in range(3):
        expected = LogisticRegression(C=0.5, max_iter=1000).fit(_standardised(X), Y[:, c] > 0.5)
        np.testing.assert_allclose(logits[:, c], expected.decision_function(_standardised(X)), atol=2e-3)
    assert not weight[3].any() and bias[3] == pytest.approx(np.log(0.5 / 120.5))


def test_single_label_head_reproduces_the_multinomial_probe_and_ranks_unseen_classes_last():
    X, Y = _clusters(90, 8, 3, seed=1, multi_label=False)
    Y = np.concatenate([Y, np.zeros((90, 1), np.float32)], axis=1)  # a fourth class no train clip has
    weight, bias = fit_linear_classifier(X, Y, multi_label=False)
    logits = X.astype(np.float64) @ weight.T + bias
    expected = LogisticRegression(max_iter=1000).fit(_standardised(X), Y.argmax(1))
    np.testing.assert_allclose(logits[:, :3], expected.decision_function(_standardised(X)), atol=2e-3)
    assert not weight[3].any() and bias[3] == pytest.approx(logits[:, :3].min() - np.log(91), abs=1e-4)
    assert (logits.argmax(1) == expected.predict(_standardised(X))).all()


def test_two_seen_classes_give_the_binary_models_log_odds_as_the_difference_of_their_logits():
    """scikit-learn fits two classes as one binary model (one row of weights): both classes must get their
    half of it, not the same row (which ties every clip)."""
    X, Y = _clusters(80, 6, 2, seed=4, multi_label=False)
    Y = np.concatenate([Y, np.zeros((80, 1), np.float32)], axis=1)  # a third class no train clip has
    weight, bias = fit_linear_classifier(X, Y, multi_label=False, C=0.5)
    logits = X.astype(np.float64) @ weight.T + bias
    expected = LogisticRegression(C=0.5, max_iter=1000).fit(_standardised(X), Y.argmax(1))
    decision = expected.decision_function(_standardised(X))
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], decision, atol=2e-3)
    np.testing.assert_allclose(logits[:, 0] + logits[:, 1], 0.0, atol=1e-4)  # centred, as a multinomial's
    assert (logits.argmax(1) == expected.predict(_standardised(X))).all() and len(set(decision > 0)) == 2
    assert not weight[2].any() and bias[2] < logits[:, :2].min()
    # the same through class indices; one class seen: nothing to fit, a zero weight
    index_weight, index_bias = fit_linear_classifier(X, Y.argmax(1), multi_label=False, C=0.5)
    np.testing.assert_array_equal(index_weight, weight[:2])
    np.testing.assert_array_equal(index_bias, bias[:2])
    weight, bias = fit_linear_classifier(X, np.eye(3)[np.zeros(80, int)], multi_label=False)
    assert not weight.any() and bias[0] > bias[1] == bias[2]


def test_fit_linear_classifier_edge_classes_reach_their_documented_values(caplog):
    X, Y = _clusters(60, 6, 4, seed=2)
    Y[:, 1] = 0.0
    Y[5, 1] = 1.0  # one positive: still fitted
    Y[:, 2] = 1.0  # positive everywhere: the smoothed log-odds, no weight
    weight, bias = fit_linear_classifier(X, Y)
    assert weight[1].any() and not weight[2].any() and bias[2] == pytest.approx(np.log(60.5 / 0.5))
    # max_iter reaches every fit, binary and multinomial; each unconverged one is counted in the warning
    with caplog.at_level("WARNING", logger="hf_audiorep.evaluation.linear_probe"):
        fit_linear_classifier(X, Y, max_iter=1)
        fit_linear_classifier(X, Y.argmax(1), multi_label=False, max_iter=1)
    assert caplog.messages == [
        f"{n} of the probe's logistic regressions did not converge in max_iter=1 iterations" for n in (3, 1)
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_audiorep.evaluation.linear_probe"):
        fit_linear_classifier(X, Y)
    assert "did not converge" not in caplog.text


def test_fit_linear_classifier_input_errors():
    X, Y = _clusters(20, 4, 2, seed=0)
    with pytest.raises(ValueError, match="C must be positive"):
        fit_linear_classifier(X, Y, C=0)
    for max_iter in (0, True, 2.5):
        with pytest.raises(ValueError, match=f"max_iter must be a positive integer, got {max_iter!r}"):
            fit_linear_classifier(X, Y, max_iter=max_iter)
    with pytest.raises(ValueError, match="train_X contains NaN or infinite values"):
        fit_linear_classifier(np.full_like(X, np.nan), Y)
    with pytest.raises(
        ValueError, match=r"train_Y must be \(clips, classes\) multi-hot for multi_label=True"
    ):
        fit_linear_classifier(X, Y.argmax(1))


@pytest.fixture()
def tiny_classifier():
    torch.manual_seed(0)
    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=64, num_labels=2)
    return AudioMAEForAudioClassification(config), AudioFbankFeatureExtractor(target_length=64)


def test_the_head_becomes_the_probe_and_the_encoder_is_untouched(tiny_classifier):
    model, extractor = tiny_classifier
    tones = _tones()
    encoder_before = {k: v.clone() for k, v in model.audiomae.state_dict().items()}
    assert init_classifier_from_probe(model, _stream(tones, 4), extractor) == 10
    for name, value in model.audiomae.state_dict().items():
        torch.testing.assert_close(value, encoder_before[name], rtol=0, atol=0)

    model.eval()
    batch = next(iter(_stream(tones, 10)))
    features, mask = extractor.batch_features(batch["waveforms"], batch["lengths"])
    with torch.no_grad():
        pooled = model.audiomae(input_values=features, attention_mask=mask).pooler_output.numpy()
        logits = model(input_values=features, attention_mask=mask).logits.numpy()
    Y = batch["labels"].numpy()
    for c in range(2):
        probe = LogisticRegression(max_iter=1000).fit(_standardised(pooled), Y[:, c] > 0.5)
        np.testing.assert_allclose(logits[:, c], probe.decision_function(_standardised(pooled)), atol=5e-3)
    assert ((logits[:, 1] > logits[:, 0]) == (Y[:, 1] > 0.5)).all()  # low and high tones told apart


def test_every_process_fits_on_every_clip_through_gather(tiny_classifier):
    model, extractor = tiny_classifier
    calls = []

    def gather(items):  # two processes, each with the same shard
        calls.append(items)
        return items + items

    assert init_classifier_from_probe(model, _stream(_tones(), 4), extractor, gather=gather) == 20
    assert len(calls) == 1 and calls[0][0][0].shape == (10, 192)


def test_heads_that_are_not_a_linear_layer_on_the_pooled_embedding_are_refused(tiny_classifier):
    model, extractor = tiny_classifier
    config = ZipformerConfig.from_preset("zipformer-small", num_labels=2, classifier_norm="batch")
    with pytest.raises(ValueError, match="LP-FT needs a linear classifier.*behind classifier_norm"):
        init_classifier_from_probe(ZipformerForAudioClassification(config), [], extractor)
    model.classifier = torch.nn.Sequential(torch.nn.Linear(192, 2))
    with pytest.raises(ValueError, match="classifier is Sequential"):
        init_classifier_from_probe(model, _stream(_tones(), 4), extractor)


def test_labels_of_another_width_than_the_head_are_refused():
    torch.manual_seed(0)
    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=64, num_labels=3)
    model = AudioMAEForAudioClassification(config)
    with pytest.raises(ValueError, match="2 classes x 192 features but the classifier is \\(3, 192\\)"):
        init_classifier_from_probe(model, _stream(_tones(), 4), AudioFbankFeatureExtractor(target_length=64))
