"""Few-shot episodes and their scores: support and query never share a clip, the same seed draws the same
episodes, classes with too few clips are left out, the classifiers are perfect on separated clusters and at
chance on random labels, the interval is the t-interval of the episode accuracies, and an encoder's result
equals the evaluation of its embeddings computed clip by clip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from probing_utils import tiny_wav2vec2
from scipy import stats

from hf_audiorep import AudioMAEConfig, AudioMAEModel
from hf_audiorep.data.embedded import load_embedded_corpus
from hf_audiorep.evaluation import clip_labels, few_shot_encoder, few_shot_evaluate, sample_episodes
from hf_audiorep.modeling import AudioFbankFeatureExtractor


def _random_labels(rng, num_classes, low, high):
    counts = rng.integers(low, high + 1, size=num_classes)
    labels = np.repeat(np.arange(num_classes), counts)
    return rng.permutation(labels)


def _clusters(num_classes=8, per_class=25, dim=32, spread=0.05, seed=0):
    """Clip embeddings in tight clusters around random directions: every class far from the others."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_support_and_query_never_share_a_clip():
    rng = np.random.default_rng(0)
    for _ in range(60):  # random label sets and episode shapes, every edge included
        labels = _random_labels(rng, int(rng.integers(2, 9)), 1, 12)
        k_shot = int(rng.integers(1, 4))
        n_query = None if rng.random() < 0.3 else int(rng.integers(1, 5))
        counts = np.bincount(labels)
        eligible = int((counts >= k_shot + (n_query or 1)).sum())
        if eligible < 2:
            with pytest.raises(ValueError, match="n_way"):
                sample_episodes(labels, None, k_shot, n_query, 5, 0)
            continue
        n_way = None if rng.random() < 0.3 else int(rng.integers(2, eligible + 1))
        episodes = sample_episodes(labels, n_way, k_shot, n_query, 20, int(rng.integers(0, 1000)))
        for episode in episodes:
            ways = eligible if n_way is None else n_way
            support, query = episode.support, episode.query
            assert not set(support) & set(query)
            assert len(set(support)) == len(support) == ways * k_shot
            assert len(set(query)) == len(query)
            assert len(set(episode.classes)) == len(episode.classes) == ways
            # the positions given as labels point at each clip's true class
            assert np.array_equal(episode.classes[episode.support_labels], labels[support])
            assert np.array_equal(episode.classes[episode.query_labels], labels[query])
            for position, cls in enumerate(episode.classes):
                queries = int((episode.query_labels == position).sum())
                expected = counts[cls] - k_shot if n_query is None else n_query
                assert queries == expected


def test_episodes_depend_on_the_seed_alone_and_more_episodes_extend_them():
    labels = _random_labels(np.random.default_rng(1), 10, 8, 15)

    def draw(seed, count):
        return [
            (e.classes.tolist(), e.support.tolist(), e.query.tolist())
            for e in sample_episodes(labels, 5, 3, 4, count, seed)
        ]

    assert draw(7, 30) == draw(7, 30)
    assert draw(7, 30) != draw(8, 30)
    assert draw(7, 50)[:30] == draw(7, 30)


def test_classes_with_too_few_clips_are_left_out():
    labels = np.array(["a"] * 8 + ["b"] * 8 + ["c"] * 8 + ["d"] * 4 + ["e"] * 2)
    episodes = sample_episodes(labels, 3, 2, 3, 40, 0)  # needs 5 clips per class: d and e are out
    assert set(np.concatenate([e.classes for e in episodes])) == {"a", "b", "c"}
    with_all = sample_episodes(labels, None, 3, None, 10, 0)  # needs 4: d is back, e is not
    assert all(e.classes.tolist() == ["a", "b", "c", "d"] for e in with_all)

    embeddings = np.random.default_rng(0).normal(size=(len(labels), 4))
    result = few_shot_evaluate(embeddings, labels, n_way=3, k_shot=2, n_query=3, num_episodes=5)
    assert result.classes == ["a", "b", "c"] and result.excluded_classes == ["d", "e"]
    with pytest.raises(ValueError, match=r"n_way=4 needs 4 classes with at least 5 clips.*only 3 of the 5"):
        sample_episodes(labels, 4, 2, 3, 5, 0)
    with pytest.raises(ValueError, match="too few: d, e"):
        sample_episodes(labels, 4, 2, 3, 5, 0)


@pytest.mark.parametrize("method", ["prototype", "logistic"])
def test_separated_clusters_are_classified_perfectly(method):
    embeddings, labels = _clusters()
    result = few_shot_evaluate(
        embeddings, labels, n_way=5, k_shot=1, n_query=10, num_episodes=30, methods=[method]
    )
    score = result.scores[method]
    assert score.episode_accuracies == [1.0] * 30 and score.accuracy == 1.0 and score.std == 0.0
    assert list(result.scores) == [method] and result.chance_accuracy == pytest.approx(0.2)


@pytest.mark.parametrize("method", ["prototype", "logistic"])
def test_random_labels_score_chance(method):
    embeddings, labels = _clusters()
    shuffled = np.random.default_rng(1).permutation(labels)  # the clusters no longer match the classes
    result = few_shot_evaluate(
        embeddings, shuffled, n_way=4, k_shot=5, n_query=10, num_episodes=100, methods=[method]
    )
    score = result.scores[method]
    assert abs(score.accuracy - 0.25) < 0.04
    assert abs(score.accuracy - 0.25) < 3 * score.ci95


def test_prototypes_compare_directions_not_distances():
    # Class 0 holds a long and a short vector of one direction, class 1 points elsewhere. When the long
    # one is class 0's support, its query (the short one) is closer to class 1 in Euclidean distance but
    # nearer class 0 in angle; a cosine classifier gets every episode right.
    embeddings = np.array([[10.0, 0.0], [2.0, 0.1], [1.0, 1.0], [1.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    result = few_shot_evaluate(
        embeddings, labels, n_way=2, k_shot=1, n_query=1, num_episodes=20, methods=["prototype"]
    )
    assert result.scores["prototype"].episode_accuracies == [1.0] * 20
    # scaling each clip leaves every prediction unchanged
    scale = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(labels), 1))
    scaled = few_shot_evaluate(
        embeddings * scale, labels, n_way=2, k_shot=1, n_query=1, num_episodes=20, methods=["prototype"]
    )
    assert scaled.scores == result.scores


def test_episode_accuracy_is_the_mean_over_classes():
    # All clips alike: every query goes to the episode's first class. Plain accuracy would be the share of
    # that class's queries (10 of 12 or 2 of 12); macro accuracy is 1/2 in every episode.
    labels = np.array([0] * 11 + [1] * 3)
    result = few_shot_evaluate(
        np.ones((14, 3)), labels, n_way=2, k_shot=1, n_query=None, num_episodes=10, methods=["prototype"]
    )
    assert result.scores["prototype"].episode_accuracies == [0.5] * 10 and result.n_query is None


def test_the_interval_is_a_t_interval_and_shrinks_with_more_episodes():
    embeddings, labels = _clusters(spread=2.0)  # overlapping clusters: accuracy varies between episodes
    widths = []
    for count in (10, 40, 160):
        score = few_shot_evaluate(
            embeddings, labels, n_way=5, k_shot=1, n_query=5, num_episodes=count, methods=["prototype"]
        ).scores["prototype"]
        values = np.asarray(score.episode_accuracies)
        low, high = stats.t.interval(0.95, count - 1, loc=values.mean(), scale=stats.sem(values))
        assert score.ci95 == pytest.approx((high - low) / 2)
        assert score.accuracy == pytest.approx(values.mean()) and score.std == pytest.approx(
            values.std(ddof=1)
        )
        widths.append(score.ci95)
    assert widths[0] > widths[1] > widths[2] > 0
    single = few_shot_evaluate(embeddings, labels, num_episodes=1, methods=["prototype"]).scores["prototype"]
    assert single.ci95 is None and single.std == 0.0


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"n_way": 1}, "n_way"),
        ({"n_way": 2.5}, "n_way"),
        ({"k_shot": 0}, "k_shot"),
        ({"k_shot": True}, "k_shot"),
        ({"n_query": 0}, "n_query"),
        ({"num_episodes": 0}, "num_episodes"),
        ({"seed": -1}, "seed"),
        ({"methods": ["knn"]}, "methods"),
        ({"methods": "prototype"}, "methods"),
        ({"methods": []}, "methods"),
        ({"C": 0.0}, "C"),
    ],
)
def test_invalid_arguments_name_the_argument(arguments, name):
    embeddings, labels = _clusters()
    with pytest.raises(ValueError, match=rf"^{name} must"):
        few_shot_evaluate(embeddings, labels, **arguments)


def test_invalid_data_is_refused():
    embeddings, labels = _clusters()
    with pytest.raises(ValueError, match="one row per label"):
        few_shot_evaluate(embeddings[:-1], labels)
    with pytest.raises(ValueError, match="labels must be a non-empty"):
        few_shot_evaluate(embeddings[:0], labels[:0])
    broken = embeddings.copy()
    broken[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        few_shot_evaluate(broken, labels)


def test_the_result_is_plain_json():
    embeddings, labels = _clusters()
    names = np.array([f"class {i}" for i in range(8)])[labels]
    result = few_shot_evaluate(embeddings, names, n_way=3, k_shot=2, n_query=4, num_episodes=12, seed=3)
    record = json.loads(json.dumps(result.to_dict()))
    assert record["n_way"] == 3 and record["k_shot"] == 2 and record["n_query"] == 4
    assert record["num_episodes"] == 12 and record["seed"] == 3 and record["num_clips"] == len(labels)
    assert record["classes"] == [f"class {i}" for i in range(8)]
    assert set(record["scores"]) == {"prototype", "logistic"}
    assert len(record["scores"]["logistic"]["episode_accuracies"]) == 12
    table = result.format_table()
    assert "3-way 2-shot" in table and "prototype" in table and "logistic" in table


def test_clip_labels_take_one_label_per_clip():
    names = ["dog", "rain", "bell"]
    features = Features({"clip_id": Value("string"), "labels": List(ClassLabel(names=names))})
    data = Dataset.from_dict(
        {"clip_id": ["a", "b", "c"], "labels": [[2], [0], [2]], "scene": ["park", "street", "park"]},
        features=Features({**features, "scene": Value("string")}),
    )
    assert clip_labels(data, "labels") == ["bell", "dog", "bell"]
    assert clip_labels(data, "scene") == ["park", "street", "park"]
    with pytest.raises(ValueError, match=r"label_column 'scenes' is not a column.*'scene'"):
        clip_labels(data, "scenes")
    mixed = Dataset.from_dict({"clip_id": ["a", "b"], "labels": [[1], [0, 2]]}, features=features)
    with pytest.raises(ValueError, match=r"clip 'b' has 2 labels in 'labels' \(\['dog', 'bell'\]\)"):
        clip_labels(mixed, "labels")
    empty = Dataset.from_dict({"clip_id": ["a"], "labels": [[]]}, features=features)
    with pytest.raises(ValueError, match="clip 'a' has 0 labels"):
        clip_labels(empty, "labels")


# ----------------------------------------------------------------------------------------------------
# An encoder on the embedded corpus's held-out classes
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def heldout():
    corpus = load_embedded_corpus(num_train=0, num_validation=0, num_test=0, num_heldout=30, clip_seconds=1.0)
    return corpus["heldout"]


def _one_clip_at_a_time(model, fe, dataset):
    """Every clip's pooled embedding, computed alone with the feature extractor's own call: the
    independent path."""
    rows = []
    for audio in dataset["audio"]:
        inputs = fe(audio["array"], sampling_rate=audio["sampling_rate"], return_tensors="pt")
        with torch.no_grad():
            rows.append(model(**inputs).pooler_output[0].numpy())
    return np.stack(rows)


def test_an_encoder_is_scored_on_its_own_embeddings(heldout):
    torch.manual_seed(0)
    model = AudioMAEModel(AudioMAEConfig.from_preset("audiomae-tiny", max_length=112))
    fe = AudioFbankFeatureExtractor(target_length=112)
    model.train()
    options = {"n_way": 3, "k_shot": 2, "n_query": 2, "num_episodes": 15, "seed": 4}
    result = few_shot_encoder(model, fe, heldout, label_column="labels", batch_size=4, **options)

    # a model still in training gets its mode and its trainable parameters back
    assert model.training and all(p.requires_grad for p in model.parameters())

    model.eval()
    expected = few_shot_evaluate(
        _one_clip_at_a_time(model, fe, heldout), clip_labels(heldout, "labels"), **options
    )
    assert result.classes == expected.classes and len(result.classes) == 6  # the six held-out classes
    for method in ("prototype", "logistic"):
        assert result.scores[method].episode_accuracies == pytest.approx(
            expected.scores[method].episode_accuracies
        )


def test_a_transformers_encoder_without_a_pooler_is_scored(heldout):
    model, feature_extractor = tiny_wav2vec2()
    result = few_shot_encoder(
        model,
        feature_extractor,
        heldout,
        label_column="labels",
        n_way=None,
        k_shot=1,
        n_query=None,
        num_episodes=8,
    )
    assert result.n_way == 6 and result.num_clips == len(heldout) and result.n_query is None
    assert all(0.0 <= s.accuracy <= 1.0 for s in result.scores.values())


def test_an_encoder_refuses_a_bad_label_column_before_embedding(heldout):
    model = AudioMAEModel(AudioMAEConfig.from_preset("audiomae-tiny", max_length=112))
    fe = AudioFbankFeatureExtractor(target_length=112)
    with pytest.raises(ValueError, match="label_column 'label' is not a column"):
        few_shot_encoder(model, fe, heldout, label_column="label")
    with pytest.raises(ValueError, match="n_way=7 needs 7 classes"):
        few_shot_encoder(model, fe, heldout, label_column="labels", n_way=7, k_shot=1, n_query=1)
