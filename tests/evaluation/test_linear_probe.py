"""Linear probe: separable synthetic embeddings score near 1, shuffled labels near chance; embeddings of a
tiny AudioMAE over a tiny AudioStream come back with the right shapes and the model's mode restored."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from datasets import Audio, ClassLabel, Dataset, Features, List

from hf_audiorep import AudioFbankFeatureExtractor, AudioMAEConfig, AudioMAEForAudioClassification
from hf_audiorep.data import AudioStream
from hf_audiorep.evaluation import (
    chance_baseline,
    extract_embeddings,
    linear_probe,
    linear_probe_encoder,
)
from hf_audiorep.evaluation.linear_probe import clip_input_statistics

# the module, which the package's function of the same name hides
linear_probe_module = importlib.import_module("hf_audiorep.evaluation.linear_probe")

SR = 16000


def _clusters(n: int, dim: int, classes: int, seed: int, multi_label: bool = True):
    """Embeddings = sum of the class centres of each clip's labels + noise: linearly separable per class."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).standard_normal((classes, dim)) * 2.0  # shared by train and test
    if multi_label:
        Y = (rng.random((n, classes)) < 0.15).astype(np.float32)
        Y[np.arange(n), rng.integers(0, classes, n)] = 1.0  # every clip has at least one class
    else:
        Y = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    X = Y @ centres + rng.standard_normal((n, dim))
    return X.astype(np.float32), Y


def test_probe_separates_clusters_and_not_shuffled_labels():
    train_X, train_Y = _clusters(400, 64, 10, seed=0)
    test_X, test_Y = _clusters(200, 64, 10, seed=1)
    result = linear_probe(train_X, train_Y, test_X, test_Y)
    assert result["probe_mAP"] > 0.95 and result["probe_mAUC"] > 0.95
    assert result["probe_num_clips"] == 200 and result["probe_num_train_clips"] == 400
    assert result["probe_num_classes"] == result["probe_num_classes_evaluated"] == 10

    shuffled = train_Y[np.random.default_rng(2).permutation(len(train_Y))]
    chance = linear_probe(train_X, shuffled, test_X, test_Y)
    prevalence = float(test_Y.mean())  # AP of a random ranking
    assert chance["probe_mAP"] < prevalence + 0.15
    assert abs(chance["probe_mAUC"] - 0.5) < 0.1


def test_single_label_probe_reports_accuracy():
    train_X, train_Y = _clusters(300, 32, 6, seed=0, multi_label=False)
    test_X, test_Y = _clusters(120, 32, 6, seed=1, multi_label=False)
    result = linear_probe(train_X, train_Y.argmax(1), test_X, test_Y, multi_label=False)
    assert result["probe_accuracy"] > 0.95 and result["probe_mAP"] > 0.95
    shuffled = train_Y[np.random.default_rng(3).permutation(len(train_Y))]
    assert linear_probe(train_X, shuffled, test_X, test_Y, multi_label=False)["probe_accuracy"] < 0.4


def test_a_class_absent_from_train_gets_a_constant_score():
    train_X, train_Y = _clusters(200, 16, 4, seed=0)
    test_X, test_Y = _clusters(100, 16, 4, seed=1)
    train_Y[:, 3] = 0  # never positive in train: no classifier can be fitted for it
    result = linear_probe(train_X, train_Y, test_X, test_Y)
    assert result["probe_num_classes_evaluated"] == 4
    # three near-perfect classes and one at chance
    assert 0.55 < result["probe_mAP"] < 0.95


def test_the_probe_is_fitted_on_train_and_scored_on_test():
    """The test clips' labels are the complement of what their embeddings say: a probe fitted on the train
    clips ranks them backwards (mAP far below chance), one fitted on the test clips themselves would rank
    them perfectly (the complement is just as separable)."""
    train_X, train_Y = _clusters(300, 32, 6, seed=0)
    test_X, test_Y = _clusters(150, 32, 6, seed=1)
    result = linear_probe(train_X, train_Y, test_X, 1.0 - test_Y)
    assert result["probe_num_train_clips"] == 300 and result["probe_num_clips"] == 150
    assert result["probe_mAP"] < 0.7 and result["probe_mAUC"] < 0.1, result


def test_standardisation_uses_train_statistics_only():
    """Shifting every test embedding by one constant vector adds one constant to each class's test scores
    when the features are standardised with train statistics, so the ranking and the mAP stay exactly the
    same; statistics taken over train and test together would move with the shift and change the probe."""
    train_X, train_Y = _clusters(200, 32, 6, seed=0)
    test_X, test_Y = _clusters(200, 32, 6, seed=1)
    test_X += np.random.default_rng(4).standard_normal(test_X.shape) * 4.0  # noisy: mAP well below 1
    reference = linear_probe(train_X, train_Y, test_X, test_Y)
    assert 0.3 < reference["probe_mAP"] < 0.95
    shift = np.random.default_rng(5).standard_normal(32).astype(np.float32) * 20.0
    shifted = linear_probe(train_X, train_Y, test_X + shift, test_Y)
    assert shifted["probe_mAP"] == pytest.approx(reference["probe_mAP"], abs=1e-9)
    assert shifted["probe_mAUC"] == pytest.approx(reference["probe_mAUC"], abs=1e-9)


def test_probe_at_the_recipe_size():
    """1,600 clips x 768 features x 36 classes (the embedded corpus at ViT-B width); its time is measured
    in docs/benchmarks.md, not asserted here."""
    train_X, train_Y = _clusters(1600, 768, 36, seed=0)
    test_X, test_Y = _clusters(400, 768, 36, seed=1)
    result = linear_probe(train_X, train_Y, test_X, test_Y)
    assert result["probe_mAP"] > 0.9 and result["probe_num_classes_evaluated"] == 36


def test_probe_input_errors():
    X, Y = _clusters(20, 4, 3, seed=0)
    with pytest.raises(ValueError, match="train_X has 20 clips but train_Y has 19"):
        linear_probe(X, Y[:19], X, Y)
    with pytest.raises(ValueError, match="train_X has 8 features but test_X has 4"):
        linear_probe(np.concatenate([X, X], 1), Y, X, Y)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(np.full_like(X, np.nan), Y, X, Y)
    with pytest.raises(ValueError, match="multi-hot"):
        linear_probe(X, Y.argmax(1), X, Y)
    with pytest.raises(ValueError, match="C must be positive"):
        linear_probe(X, Y, X, Y, C=0.0)


# ---------------------------------------------------------------------------- on a real encoder


def _tones(swap_labels: bool = False, labels: list[list[int]] | None = None, noise: float = 0.0) -> Dataset:
    """10 half-second clips alternating a 200 Hz ("low") and a 3 kHz ("high") tone; ``swap_labels`` names
    each tone with the other's label, ``labels`` gives each clip's labels instead; ``noise``: the standard
    deviation of white noise added (a pure tone's filterbank frames are all alike)."""
    n = 10
    names = ["low", "high"]
    features = Features({"audio": Audio(sampling_rate=SR), "labels": List(ClassLabel(names=names))})
    t = np.arange(int(0.5 * SR)) / SR
    audio = [
        {
            "array": (
                0.4 * np.sin(2 * np.pi * (200.0 if i % 2 == 0 else 3000.0) * t)
                + noise * np.random.default_rng(i).standard_normal(len(t))
            ).astype(np.float32),
            "sampling_rate": SR,
        }
        for i in range(n)
    ]
    labels = labels or [[(i + swap_labels) % 2] for i in range(n)]
    return Dataset.from_dict({"audio": audio, "labels": labels}, features=features)


@pytest.fixture(scope="module")
def tones() -> Dataset:
    return _tones()


def _stream(dataset: Dataset, batch_size: int) -> AudioStream:
    return AudioStream(dataset, batch_size=batch_size, sample_rate=SR, clip_seconds=0.5, train=False)


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    config = AudioMAEConfig.from_preset("audiomae-tiny", max_length=64, num_labels=2)
    return AudioMAEForAudioClassification(config), AudioFbankFeatureExtractor(target_length=64)


def test_extract_embeddings_from_a_stream(tiny_encoder, tones):
    model, extractor = tiny_encoder
    model.train()
    X, Y = extract_embeddings(model, _stream(tones, 4), extractor)
    assert X.shape == (10, 192) and X.dtype == np.float32 and np.isfinite(X).all()
    assert Y.shape == (10, 2) and (Y.argmax(1) == np.arange(10) % 2).all()
    assert model.training  # restored
    # the head is bypassed: these are the base encoder's pooled embeddings
    batch = next(iter(_stream(tones, 4)))
    model.eval()
    with torch.no_grad():
        features, mask = extractor.batch_features(batch["waveforms"], batch["lengths"])
        expected = model.audiomae(input_values=features, attention_mask=mask).pooler_output
    np.testing.assert_allclose(X[:4], expected.numpy(), rtol=1e-5, atol=1e-5)

    X2, _ = extract_embeddings(model, _stream(tones, 4), extractor, max_batches=1)
    assert X2.shape == (4, 192) and not model.training  # eval mode restored too


def test_linear_probe_encoder_end_to_end(tiny_encoder, tones):
    model, extractor = tiny_encoder
    result = linear_probe_encoder(model, _stream(tones, 4), _stream(tones, 5), extractor)
    assert result["probe_num_train_clips"] == result["probe_num_clips"] == 10
    # a 200 Hz and a 3 kHz tone are separable even through a randomly initialised encoder
    assert result["probe_mAP"] > 0.9
    with pytest.raises(TypeError, match="batch_features"):
        extract_embeddings(model, _stream(tones, 4), object())


def test_linear_probe_encoder_fits_the_train_batches_and_scores_the_test_batches(tiny_encoder, tones):
    """Test clips labelled the other way round: fitted on the train batches, the probe gets every test clip
    wrong; fitted on the test batches it would score 1."""
    model, extractor = tiny_encoder
    train, test = list(_stream(tones, 4)), list(_stream(_tones(swap_labels=True), 4))  # re-iterable
    result = linear_probe_encoder(model, train, test, extractor)
    assert result["probe_mAP"] < 0.6, result


def test_recipe_probe_reads_the_train_split_to_fit_and_the_test_split_to_score(tiny_encoder, monkeypatch):
    """`build_linear_probe` (the pre-training recipes' evaluation) on the embedded corpus: the probe is fitted
    on the first --probe_train_clips of --probe_train_split and scored on the whole --probe_test_split."""
    import importlib
    from types import SimpleNamespace

    from hf_audiorep.data import load_embedded_corpus
    from hf_audiorep.data.arguments import DataArguments
    from hf_audiorep.evaluation import ProbeArguments, build_linear_probe

    probe_module = importlib.import_module("hf_audiorep.evaluation.linear_probe")
    seen, real_probe = {}, probe_module.linear_probe

    def recording_probe(train_X, train_Y, test_X, test_Y, **kwargs):
        seen.update(train_Y=np.asarray(train_Y), test_Y=np.asarray(test_Y))
        return real_probe(train_X, train_Y, test_X, test_Y, **kwargs)

    monkeypatch.setattr(probe_module, "linear_probe", recording_probe)
    sizes = dict(num_train_clips=16, num_eval_clips=0, num_test_clips=8)
    data = DataArguments(clip_seconds=0.64, num_decode_threads=1, **sizes)
    process = SimpleNamespace(process_index=0, num_processes=1)
    evaluate = build_linear_probe(
        ProbeArguments(probe_train_clips=12),
        data,
        SimpleNamespace(per_device_batch_size=4, seed=0),
        SR,
        process,
    )
    model, extractor = tiny_encoder
    result = evaluate(model, extractor)

    corpus = load_embedded_corpus(num_train=16, num_validation=0, num_test=8, clip_seconds=0.64)

    def multi_hot(split, n=None):
        rows = corpus[split]["labels"][:n]
        out = np.zeros((len(rows), seen["train_Y"].shape[1]), dtype=np.float32)
        for i, labels in enumerate(rows):
            out[i, labels] = 1.0
        return out

    np.testing.assert_array_equal(seen["train_Y"], multi_hot("train", 12), err_msg="not fitted on train")
    np.testing.assert_array_equal(seen["test_Y"], multi_hot("test"), err_msg="not scored on test")
    assert result["probe_num_train_clips"] == 12 and result["probe_num_clips"] == 8


# ---------------------------------------------------------------------------- the trivial baselines


def test_input_statistics_are_each_bins_mean_and_std_over_the_real_frames_only():
    torch.manual_seed(0)
    values = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    values[0, 3:] = 100.0  # padding frames: must not reach the statistics
    statistics = clip_input_statistics(values, mask)
    assert statistics.shape == (3, 8) and statistics.dtype == torch.float32
    for row, frames in enumerate([3, 5]):
        real = values[row, :frames]
        torch.testing.assert_close(statistics[row, :4], real.mean(dim=0))
        torch.testing.assert_close(statistics[row, 4:], real.std(dim=0, unbiased=False))
    assert torch.equal(statistics[2], torch.zeros(8)), "a clip without a real frame gets zeros"


def test_the_baselines_come_from_the_same_clips_and_leave_the_encoders_probe_as_it_was(
    tiny_encoder, monkeypatch
):
    """``baselines=True``: the encoder's probe is what it is without them; the constant score's mAP is the
    test clips' mean class rate; the input-statistics probe is the same probe fitted on each clip's log-mel
    mean and std, computed here by hand from the feature extractor."""
    model, extractor = tiny_encoder
    # Test clips with two labels or none, so the test split's mean class rate (0.7, 0.5 -> 0.6) differs from
    # the train split's (0.5) and from 0.5.
    test_labels = [[0, 1], [0], [1], [0, 1], [], [0], [1], [0], [0], [0, 1]]
    train = list(_stream(_tones(noise=0.05), 4))
    test = list(_stream(_tones(labels=test_labels, noise=0.05), 4))
    plain = linear_probe_encoder(model, train, test, extractor)

    fitted = []
    real_probe = linear_probe_module.linear_probe

    def recording_probe(train_X, train_Y, test_X, test_Y, **kwargs):
        fitted.append((np.asarray(train_X), np.asarray(test_X), kwargs))
        return real_probe(train_X, train_Y, test_X, test_Y, **kwargs)

    monkeypatch.setattr(linear_probe_module, "linear_probe", recording_probe)
    result = linear_probe_encoder(model, train, test, extractor, C=0.5, baselines=True)
    plain_at_C = linear_probe_encoder(model, train, test, extractor, C=0.5)
    assert {key: result[key] for key in plain_at_C} == plain_at_C and plain_at_C != plain

    assert result["probe_mAP_chance"] == pytest.approx(0.6)
    assert (
        result["probe_mAP_chance"]
        == chance_baseline(
            np.eye(2)[[0, 1]],
            np.array([[1 if c in labels else 0 for c in range(2)] for labels in test_labels]),
        )["chance_mAP"]
    )

    def by_hand(batches):
        rows = []
        for batch in batches:
            features, mask = extractor.batch_features(batch["waveforms"], batch["lengths"])
            for clip, frames in zip(features, mask.sum(dim=1).tolist(), strict=True):
                real = clip[:frames]
                rows.append(torch.cat([real.mean(dim=0), real.std(dim=0, unbiased=False)]).numpy())
        return np.stack(rows)

    (_, _, embedding_options), (statistics_train, statistics_test, statistics_options) = fitted[:2]
    assert statistics_train.shape == (10, 2 * extractor.feature_size)
    assert statistics_train[:, extractor.feature_size :].mean() > 0.01, "frames that vary"
    np.testing.assert_allclose(statistics_train, by_hand(train), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(statistics_test, by_hand(test), rtol=1e-5, atol=1e-5)
    assert statistics_options == embedding_options and statistics_options["C"] == 0.5
    expected = real_probe(statistics_train, np.concatenate([b["labels"] for b in train]), statistics_test,
                          np.concatenate([b["labels"] for b in test]), C=0.5)["probe_mAP"]  # fmt: skip
    assert result["probe_mAP_input_statistics"] == pytest.approx(expected)
    assert "probe_mAP_chance" not in plain, "without baselines=True there are none"
