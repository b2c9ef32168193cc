"""The linear probe head fitted to its optimum (`fit_linear_head`, ``train_probe(optimizer="lbfgs")``)."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from probing_utils import ArrayCache
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hf_audiorep.evaluation.linear_probe import C_GRID, fit_linear_classifier, select_C
from hf_audiorep.evaluation.metrics import mean_average_precision
from hf_audiorep.evaluation.probing import (
    OPTIMIZERS,
    build_probe,
    fit_linear_head,
    position_means,
    position_share,
    predict,
    train_probe,
)
from hf_audiorep.evaluation.probing.train import AUTO_CENTRING_SHARE

L, T, D, C = 3, 6, 8, 4


def _cache(clips: int = 60, seed: int = 0, single_label: bool = False) -> ArrayCache:
    """Padded clips whose classes show as directions in the last layer, on a large shared offset (what an
    AdamW head on unstandardised vectors fits slowly), with garbage in the padded tokens."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((clips, L, T, D)) + 5.0 * rng.standard_normal(D)
    if single_label:
        labels = np.eye(C, dtype=np.float32)[rng.integers(C, size=clips)]
    else:
        labels = (rng.random((clips, C)) < 0.4).astype(np.float32)
    directions = rng.standard_normal((C, D))
    features[:, -1] += 0.7 * np.einsum("nc,cd->nd", labels, directions)[:, None]
    mask = np.ones((clips, T), dtype=bool)
    mask[::3, T // 2 :] = False
    features[~mask[:, None, :].repeat(L, axis=1)] = 50.0
    return ArrayCache(features.astype(np.float16), mask, labels)


def _pooled(cache: ArrayCache) -> np.ndarray:
    """By hand: each clip's last layer, layer-normalised, averaged over its real tokens."""
    tokens = F.layer_norm(torch.from_numpy(cache.features[:, -1]).float(), (D,)).double().numpy()
    mask = cache.token_mask[..., None]
    return (tokens * mask).sum(axis=1) / mask.sum(axis=1)


def _sklearn_logits(cache: ArrayCache, single_label: bool, C_: float) -> np.ndarray:
    """scikit-learn's logistic regression (its defaults: L-BFGS, tol 1e-4) on the standardised pooled vectors,
    fitted directly."""
    X = StandardScaler().fit_transform(_pooled(cache))
    if single_label:
        model = LogisticRegression(C=C_, max_iter=1000).fit(X, cache.labels.argmax(axis=1))
        return model.decision_function(X)
    columns = []
    for c in range(C):
        model = LogisticRegression(C=C_, max_iter=1000).fit(X, cache.labels[:, c])
        columns.append(model.decision_function(X))
    return np.stack(columns, axis=1)


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("single_label", [False, True])
@pytest.mark.parametrize("C_", [1.0, 0.05])
def test_the_fitted_head_gives_scikit_learns_logistic_regression(standardize, single_label, C_):
    cache = _cache(single_label=single_label)
    head = build_probe("linear", L, D, C, standardize=standardize)
    fit = fit_linear_head(head, cache, C=C_, multi_label=not single_label, batch_size=7)
    assert fit["C"] == C_ and fit["C_scores"] is None
    logits, _ = predict(head, cache)
    expected = _sklearn_logits(cache, single_label, C_)
    if single_label:  # a multinomial model's logits are defined up to a per-clip constant
        logits, expected = logits - logits.mean(1, keepdims=True), expected - expected.mean(1, keepdims=True)
    np.testing.assert_allclose(logits, expected, atol=2e-3, rtol=2e-3)
    assert not head.training


def test_a_standardising_head_keeps_the_pooled_statistics_as_its_running_ones():
    cache = _cache()
    head = build_probe("linear", L, D, C)
    fit_linear_head(head, cache, batch_size=16)
    pooled = _pooled(cache)
    norm = head.standardizer
    np.testing.assert_allclose(norm.running_mean.numpy(), pooled.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.running_var.numpy(), pooled.var(axis=0), rtol=1e-4, atol=1e-7)


def test_the_fit_is_the_optimum_the_adamw_head_only_approaches():
    """Regularised loss of the fitted head against AdamW's after 100 epochs of the same objective's data:
    the L-BFGS head is at or below it (it is the optimum), and training loss is reported."""
    cache = _cache(clips=96)
    fitted = build_probe("linear", L, D, C)
    run = train_probe(fitted, cache, optimizer="lbfgs", C=1e6)  # next to no penalty: the loss alone
    torch.manual_seed(0)
    adamw = build_probe("linear", L, D, C)
    train_probe(adamw, cache, epochs=100, batch_size=32, learning_rate=1e-2, weight_decay=0.0)
    labels = torch.from_numpy(cache.labels)

    def loss(head):
        return F.binary_cross_entropy_with_logits(torch.from_numpy(predict(head, cache)[0]), labels).item()

    assert run["history"] == [{"epoch": 1, "loss": pytest.approx(loss(fitted), rel=1e-4)}]
    assert run["steps"] == 0 and run["seconds"] >= 0.0 and run["C"] == 1e6 and run["C_scores"] is None
    assert loss(fitted) < loss(adamw)


def test_the_fit_reads_the_centred_tokens_when_the_head_centres():
    cache = _cache()
    means = position_means(cache)
    centred, plain = build_probe("linear", L, D, C), build_probe("linear", L, D, C)
    centred.set_position_means(means * 3.0 + 1.0)  # a centring that changes the pooled vectors
    fit_linear_head(centred, cache)
    fit_linear_head(plain, cache)
    assert not torch.allclose(centred.standardizer.running_mean, plain.standardizer.running_mean)
    # through train_probe: centring is decided first, then the fit reads the centred tokens
    run = train_probe(build_probe("linear", L, D, C), cache, optimizer="lbfgs", center_positions=True)
    assert run["centred"] is True


def test_train_probe_passes_its_arguments_to_the_fit_and_reports_it(caplog):
    """``train_probe(optimizer="lbfgs")``: C=1 unless told, the labels' kind passed on, the run's report (its
    keys, a wall time inside the call's, the position share and the centring decision, logged)."""
    cache = _cache()
    default, explicit = build_probe("linear", L, D, C), build_probe("linear", L, D, C)
    run = train_probe(default, cache, optimizer="lbfgs")
    fit_linear_head(explicit, cache, C=1.0)
    assert run["C"] == 1.0
    torch.testing.assert_close(default.classifier.weight, explicit.classifier.weight)

    single = _cache(single_label=True)
    head = build_probe("linear", L, D, C, standardize=False)
    train_probe(head, single, optimizer="lbfgs", multi_label=False, C=0.05)
    logits, expected = predict(head, single)[0], _sklearn_logits(single, True, 0.05)
    np.testing.assert_allclose(
        logits - logits.mean(1, keepdims=True),
        expected - expected.mean(1, keepdims=True),
        atol=2e-3,
        rtol=2e-3,
    )

    caplog.set_level("INFO", logger="hf_audiorep.evaluation.probing.train")
    started = time.perf_counter()
    run = train_probe(build_probe("linear", L, D, C), cache, optimizer="lbfgs", center_positions="auto")
    elapsed = time.perf_counter() - started
    assert set(run) == {"history", "steps", "seconds", "centred", "position_share", "C", "C_scores"}
    assert 0.0 <= run["seconds"] <= elapsed
    share = position_share(cache)
    assert run["position_share"] == pytest.approx(share) and run["centred"] is (share > AUTO_CENTRING_SHARE)
    decision = "on" if run["centred"] else "off"
    assert (
        f"the positions' means hold {share:.2f} of the tokens' variance: centring {decision}"
        in caplog.messages
    )


def test_fit_linear_head_defaults_and_its_cross_validation_of_single_label_classes(caplog):
    """C=1 unless told; with C unset, the folds of seed 0 unless told, the labels' kind passed to the
    cross-validation, and the choice logged with every C's score."""
    cache = _cache()
    default, explicit = build_probe("linear", L, D, C), build_probe("linear", L, D, C)
    assert fit_linear_head(default, cache)["C"] == 1.0
    fit_linear_head(explicit, cache, C=1.0)
    torch.testing.assert_close(default.classifier.weight, explicit.classifier.weight)

    single = _cache(clips=90, single_label=True)
    caplog.set_level("INFO", logger="hf_audiorep.evaluation.probing.train")
    fit = fit_linear_head(build_probe("linear", L, D, C), single, C=None, multi_label=False)
    best, scores = select_C(_pooled(single), single.labels, multi_label=False, seed=0)
    # near-unpenalised fits (C=1000) differ in the third digit with the pooling's rounding
    assert fit["C"] == best and fit["C_scores"] == pytest.approx(scores, rel=1e-2)
    multi = select_C(_pooled(single), single.labels, multi_label=True, seed=0)[1]
    assert fit["C_scores"] != pytest.approx(multi, rel=1e-2)
    assert f"C={best:g} chosen by cross-validation (held-out mAP per C: {fit['C_scores']})" in caplog.messages


@pytest.mark.parametrize("probe", ["weighted_sum", "attentive", "prototype", "cgp"])
def test_lbfgs_is_refused_for_every_head_but_the_linear_one(probe):
    with pytest.raises(ValueError, match=f"optimizer='lbfgs' fits the linear head only.*the {probe} head"):
        train_probe(build_probe(probe, L, D, C), _cache(clips=8), optimizer="lbfgs")


def test_unknown_optimizers_and_bad_C_are_refused():
    assert OPTIMIZERS == ("adamw", "lbfgs")
    with pytest.raises(ValueError, match=r"optimizer must be one of \('adamw', 'lbfgs'\), got 'sgd'"):
        train_probe(build_probe("linear", L, D, C), _cache(clips=8), optimizer="sgd")
    with pytest.raises(ValueError, match=r"C must be positive or None \(chosen by cross-validation\), got 0"):
        train_probe(build_probe("linear", L, D, C), _cache(clips=8), optimizer="lbfgs", C=0)


# ------------------------------------------------------------------------- C by cross-validation


def _by_hand(X, Y, C_, folds, seed):
    """The documented folds, scikit-learn fitted directly on each (standardised with the fold's own train
    statistics), mAP of each held-out fold averaged."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(X)), folds)
    scores = []
    for k, part in enumerate(parts):
        fit = np.concatenate([p for j, p in enumerate(parts) if j != k])
        scaler = StandardScaler().fit(X[fit])
        logits = np.zeros((len(part), Y.shape[1]))
        for c in range(Y.shape[1]):
            model = LogisticRegression(C=C_, max_iter=1000).fit(scaler.transform(X[fit]), Y[fit, c])
            logits[:, c] = model.decision_function(scaler.transform(X[part]))
        scores.append(mean_average_precision(logits, Y[part]).mAP)
    return float(np.mean(scores))


def test_select_C_scores_each_C_on_held_out_folds_of_the_train_clips():
    cache = _cache(clips=90)
    X, Y = _pooled(cache), cache.labels
    best, scores = select_C(X, Y, grid=(0.01, 1.0, 100.0), folds=3, seed=4)
    assert list(scores) == [0.01, 1.0, 100.0]
    for C_, score in scores.items():
        assert score == pytest.approx(_by_hand(X, Y, C_, folds=3, seed=4), abs=2e-3)
    assert best == max(scores, key=scores.get)
    # another seed draws other folds
    assert select_C(X, Y, grid=(0.01, 1.0, 100.0), folds=3, seed=5)[1] != scores


def test_select_C_follows_the_data_and_breaks_ties_toward_the_stronger_penalty():
    rng = np.random.default_rng(0)
    # Few clips and many noise dimensions: a weak penalty over-fits, so a small C wins.
    noisy = rng.standard_normal((60, 40))
    labels = (rng.random((60, 3)) < 0.5).astype(np.float32)
    noisy[:, 0] += 0.8 * labels[:, 0]
    assert select_C(noisy, labels, grid=(0.001, 1000.0))[0] == 0.001
    # Classes apart by a wide margin: every C ranks every held-out clip right (mAP 1), so the tie goes to the
    # smaller C.
    signs = rng.choice([-1.0, 1.0], size=(120, 2))
    clean = signs * (1.0 + rng.random((120, 2)))
    classes = (signs > 0).astype(np.float32)
    best, scores = select_C(clean, classes, grid=(1000.0, 0.5))
    assert scores[0.5] == scores[1000.0] == 1.0 and best == 0.5


def test_select_C_works_for_single_label_classes_as_indices_or_one_hot():
    cache = _cache(clips=60, single_label=True)
    X, one_hot = _pooled(cache), cache.labels
    indices = one_hot.argmax(axis=1)
    assert select_C(X, one_hot, multi_label=False) == select_C(X, indices, multi_label=False)
    best, scores = select_C(X, one_hot, multi_label=False)
    assert list(scores) == list(C_GRID) and best in C_GRID


def _by_hand_single_label(X, y, C_, folds, seed, log_probabilities=True):
    """The documented folds, scikit-learn's multinomial model fitted directly on each; each held-out fold
    scored by its log-probabilities (what `linear_probe` scores test clips by) or by its raw logits."""
    parts = np.array_split(np.random.default_rng(seed).permutation(len(X)), folds)
    scores = []
    for k, part in enumerate(parts):
        fit = np.concatenate([p for j, p in enumerate(parts) if j != k])
        scaler = StandardScaler().fit(X[fit])
        model = LogisticRegression(C=C_, max_iter=1000).fit(scaler.transform(X[fit]), y[fit])
        held_out = scaler.transform(X[part])
        score = model.predict_log_proba(held_out) if log_probabilities else model.decision_function(held_out)
        scores.append(mean_average_precision(score, np.eye(y.max() + 1)[y[part]]).mAP)
    return float(np.mean(scores))


def test_select_C_scores_single_label_folds_by_their_log_probabilities():
    """A multinomial model's logits are shifted per clip by what the softmax ignores, so a class's raw logit
    ranks clips otherwise than its probability. Clips of three classes that differ by how large they are
    (loudness-like) make the two rankings differ: the folds are scored as the test clips are."""
    rng = np.random.default_rng(3)
    y = rng.integers(3, size=150)
    X = rng.standard_normal((150, 6)) + (1.0 + y)[:, None] * rng.standard_normal(6)
    grid = (0.01, 1.0, 100.0)
    best, scores = select_C(X, y, multi_label=False, grid=grid, folds=3, seed=1)
    for C_, score in scores.items():
        assert score == pytest.approx(_by_hand_single_label(X, y, C_, 3, 1), abs=2e-3)
        assert abs(score - _by_hand_single_label(X, y, C_, 3, 1, log_probabilities=False)) > 0.01
    assert best == max(scores, key=scores.get)


def test_select_C_defaults_folds_without_positives_and_the_smallest_sets():
    cache = _cache(clips=60)
    X, Y = _pooled(cache), cache.labels
    assert select_C(X, Y) == select_C(X, Y, seed=0) != select_C(X, Y, seed=1)
    assert select_C(X, Y, folds=2)[1] == pytest.approx({C_: _by_hand(X, Y, C_, 2, 0) for C_ in C_GRID})
    # leave-one-out on 6 clips, 2 of them without a positive: their folds have no mAP and are left out
    Y6 = Y[:6].copy()
    Y6[[1, 4]] = 0.0
    kept = [k for k in range(6) if Y6[k].any()]
    order = np.random.default_rng(0).permutation(6)
    for C_, score in select_C(X[:6], Y6, grid=(0.1, 10.0), folds=6)[1].items():
        expected = []
        for clip in order:
            if Y6[clip].any():
                weight, bias = fit_linear_classifier(np.delete(X[:6], clip, 0), np.delete(Y6, clip, 0), C=C_)
                expected.append(
                    mean_average_precision(X[clip : clip + 1] @ weight.T + bias, Y6[clip : clip + 1]).mAP
                )
        assert len(expected) == len(kept) and score == pytest.approx(np.mean(expected))
    with pytest.raises(
        ValueError, match="no held-out fold of the 3 train clips has a positive example: C cannot"
    ):
        select_C(X[:3], np.zeros((3, C), np.float32), folds=3)
    with pytest.raises(ValueError, match=r"train_X must be a non-empty \(clips, features\) array"):
        select_C(X[:0], Y[:0])


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"grid": ()}, "the C grid must hold positive values"),
        ({"grid": (1.0, 0.0)}, "the C grid must hold positive values"),
        ({"folds": 1}, "folds must be an integer >= 2, got 1"),
        ({"folds": 2.0}, "folds must be an integer >= 2, got 2.0"),
        ({"folds": 61}, "61-fold cross-validation needs at least 61 clips, got 60"),
    ],
)
def test_select_C_arguments_are_checked(arguments, match):
    cache = _cache(clips=60)
    with pytest.raises(ValueError, match=match):
        select_C(_pooled(cache), cache.labels, **arguments)


def test_an_unset_C_is_chosen_by_cross_validation_and_then_fitted_on_every_clip():
    cache = _cache(clips=90)
    head = build_probe("linear", L, D, C)
    run = train_probe(head, cache, optimizer="lbfgs", C=None, seed=2)
    best, scores = select_C(_pooled(cache), cache.labels, seed=2)
    assert run["C"] == best and run["C_scores"] == pytest.approx(scores)
    fixed = build_probe("linear", L, D, C)
    fit_linear_head(fixed, cache, C=best)
    torch.testing.assert_close(head.classifier.weight, fixed.classifier.weight)
    weight, _ = fit_linear_classifier(_pooled(cache), cache.labels, C=best)  # the fit on all the clips
    np.testing.assert_allclose(
        (head.classifier.weight / (head.standardizer.running_var + head.standardizer.eps).sqrt()).detach(),
        weight,
        rtol=1e-4,
        atol=1e-5,
    )
