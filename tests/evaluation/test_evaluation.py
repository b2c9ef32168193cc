import evaluate
import numpy as np
import pytest
import torch

from hf_audiorep.evaluation import MAP_METRIC_PATH, accuracy, mean_average_precision


def _ap_by_hand(scores, targets):
    """Average precision from its definition: mean precision at the rank of each positive."""
    order = np.argsort(-scores, kind="stable")
    hits = targets[order]
    precision_at_k = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision_at_k * hits).sum() / hits.sum())


def test_map_matches_definition_and_skips_classes_without_positives():
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 6)) < 0.3).astype(int)
    targets[:, 4] = 0  # a class absent from the evaluation set: excluded, not scored as 0
    scores = rng.random((50, 6))
    result = mean_average_precision(scores, targets)
    expected = np.mean([_ap_by_hand(scores[:, c], targets[:, c]) for c in (0, 1, 2, 3, 5)])
    assert result.mAP == pytest.approx(expected, abs=1e-9)
    assert result.num_classes_evaluated == 5
    assert result.per_class_ap[4] is None
    assert result.num_clips == 50


def test_map_perfect_and_torch_inputs():
    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=torch.float32)
    result = mean_average_precision(targets * 5 - 1, targets)
    assert result.mAP == pytest.approx(1.0)
    assert result.mAUC == pytest.approx(1.0)


def test_map_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(np.full((3, 2), np.nan), np.ones((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        mean_average_precision(np.zeros(3), np.zeros(3))


def test_evaluate_metric_module_loads_offline_and_agrees():
    rng = np.random.default_rng(1)
    targets = (rng.random((40, 8)) < 0.25).astype(int)
    targets[0] = 1
    scores = rng.normal(size=(40, 8))
    metric = evaluate.load(MAP_METRIC_PATH)
    out = metric.compute(predictions=scores.tolist(), references=targets.tolist())
    assert out["mAP"] == pytest.approx(mean_average_precision(scores, targets).mAP, abs=1e-6)
    assert out["num_clips"] == 40


def test_accuracy():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="labels"):
        accuracy(logits, [0, 1])


class _Classifier(torch.nn.Module):
    """Returns fixed logits, one row per clip in order, for a given number of classes."""

    def __init__(self, logits, labels=None):
        super().__init__()
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.position = 0
        names = labels or [f"c{i}" for i in range(self.logits.shape[1])]
        self.config = type("Config", (), {})()
        self.config.problem_type = "single_label_classification"
        self.config.num_labels = len(names)
        self.config.id2label = dict(enumerate(names))
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_values, attention_mask=None):
        batch = len(input_values)
        out = self.logits[self.position : self.position + batch]
        self.position += batch
        return type("Output", (), {"logits": out})()


class _Features:
    def batch_features(self, waveforms, lengths):
        return waveforms.unsqueeze(-1), torch.ones_like(waveforms, dtype=torch.long)


def _batches(class_indices, num_classes, batch_size=2):
    targets = torch.nn.functional.one_hot(torch.as_tensor(class_indices), num_classes).float()
    return [
        {"waveforms": torch.zeros(len(t), 4), "lengths": torch.full((len(t),), 4), "labels": t}
        for t in targets.split(batch_size)
    ]


def test_classification_scores_f1_recall_and_never_predicted():
    from sklearn.metrics import f1_score

    from hf_audiorep.evaluation.metrics import classification_scores

    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0])  # class 2 never predicted; class 3 has no clip
    logits = np.eye(4)[predicted]
    scores = classification_scores(logits, labels)
    assert scores.accuracy == pytest.approx(3 / 6)
    assert scores.macro_f1 == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert scores.per_class_recall == [pytest.approx(0.5), pytest.approx(2 / 3), 0.0, None]
    assert scores.never_predicted == [2]
    assert scores.as_dict("test_", ["a", "b", "c", "d"])["test_never_predicted"] == ["c"]
    with pytest.raises(ValueError, match="labels"):
        classification_scores(logits, labels[:3])


def test_evaluate_classifier_single_label_reports_f1_recall_and_warns(caplog):
    from hf_audiorep.evaluation import evaluate_classifier

    labels = [0, 0, 1, 1, 2, 2]
    logits = np.eye(3)[[0, 0, 1, 0, 1, 1]]  # "dog" (class 2) is never predicted
    model = _Classifier(logits, ["bird", "cat", "dog"])
    with caplog.at_level("WARNING", logger="hf_audiorep.evaluation.predict"):
        results = evaluate_classifier(model, _batches(labels, 3), _Features(), prefix="test_")
    assert results["test_accuracy"] == pytest.approx(3 / 6) and results["test_num_clips"] == 6
    assert 0 < results["test_macro_f1"] < 1
    assert results["test_per_class_recall"] == {"bird": 1.0, "cat": 0.5, "dog": 0.0}
    assert results["test_never_predicted"] == ["dog"]
    assert "never predicted 1 of the classes that have clips: dog" in caplog.text


def test_targets_narrower_than_the_logits_are_an_error_not_a_score():
    from hf_audiorep.evaluation import evaluate_classifier

    # The model knows 3 classes; the split was read with a vocabulary of its own 2 labels.
    model = _Classifier(np.eye(3)[[0, 1, 1, 0]])
    message = (
        "^the model outputs 3 classes but the evaluation targets have 2: the evaluation split was read with "
        r"another label vocabulary than the model's \(load every split with the train split's label_names\)$"
    )
    with pytest.raises(ValueError, match=message):
        evaluate_classifier(model, _batches([0, 1, 1, 0], 2, batch_size=3), _Features())


def test_the_never_predicted_warning_names_the_split_and_the_classes_and_only_when_one_is_missed(caplog):
    from hf_audiorep.evaluation import evaluate_classifier

    labels = [0, 0, 1, 1, 2, 2]
    cases = [
        ("test_", [0] * 6, ["test: the model never predicted 2 of the classes that have clips: cat, dog"]),
        (
            "",
            [0, 0, 1, 0, 1, 1],
            ["evaluation: the model never predicted 1 of the classes that have clips: dog"],
        ),
        ("eval_", [0, 0, 1, 1, 2, 2], []),  # every class predicted: no warning
    ]
    for prefix, predicted, messages in cases:
        caplog.clear()
        model = _Classifier(np.eye(3)[predicted], ["bird", "cat", "dog"])
        with caplog.at_level("WARNING", logger="hf_audiorep.evaluation.predict"):
            evaluate_classifier(model, _batches(labels, 3), _Features(), prefix=prefix)
        assert [r.getMessage() for r in caplog.records] == messages, prefix


class _PatchOutTagger(torch.nn.Module):
    """A multi-label tagger whose logits are its input in eval mode; in training mode a stand-in for
    patch-out and dropout turns them upside down (what matters is only that they differ)."""

    def __init__(self, num_classes):
        super().__init__()
        self.config = type("Config", (), {"problem_type": "multi_label_classification"})()
        self.config.num_labels = num_classes
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_values, attention_mask=None):
        logits = input_values.squeeze(-1)
        return type("Output", (), {"logits": -logits if self.training else logits})()


def test_predictions_are_collected_in_eval_mode_and_the_mode_is_restored():
    """The recipes score the test split with the model straight out of training (in training mode); the
    predictions must be those of the eval-mode model, and the model must go back to training mode."""
    from hf_audiorep.evaluation import collect_predictions, evaluate_classifier

    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 1]]).float()
    logits = targets * 4 - 2 + 0.1 * torch.arange(6).unsqueeze(1)  # ranks every positive first
    batches = _tagging_batches(logits, targets, batch_size=4)
    model = _PatchOutTagger(3).train()
    collected, _ = collect_predictions(model, batches, _Features())
    assert model.training
    np.testing.assert_array_equal(collected, logits.numpy(), err_msg="predictions made in training mode")
    results = evaluate_classifier(model, batches, _Features(), prefix="test_")
    assert results["test_mAP"] == pytest.approx(1.0), "the test metric was computed in training mode"
    assert model.training


class _Accelerator:
    """The attributes of an `accelerate.Accelerator` that `evaluate_classifier` reads."""

    def __init__(self, num_processes):
        self.num_processes, self.device, self.is_main_process = num_processes, torch.device("cpu"), True
        self.distributed_type = "MULTI_CPU"  # DDP: whole parameters on every rank, no lockstep


def _tagging_batches(logits, targets, batch_size=2):
    """Batches whose waveforms are the logits `_PatchOutTagger` returns in eval mode."""
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    return [
        {"waveforms": w, "lengths": torch.full((len(w),), logits.shape[1]), "labels": t}
        for w, t in zip(logits.split(batch_size), targets.split(batch_size), strict=True)
    ]


def test_every_ranks_clips_are_scored_once_in_a_multi_process_evaluation(monkeypatch):
    from hf_audiorep.evaluation import evaluate_classifier, predict
    from hf_audiorep.evaluation.metrics import mean_average_precision

    mine_t = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
    mine = mine_t * 2 - 1  # this rank ranks its clips right
    theirs_t = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    theirs = np.array([[0.2, -1, 3], [2, 0.5, -2], [-1, 2, 0.1]], np.float32)  # the other rank's, worse
    gathered = []

    def gather_object(objects):
        gathered.append(objects)
        return [*objects, (theirs, theirs_t)]

    monkeypatch.setattr(predict, "gather_object", gather_object)
    model = _PatchOutTagger(3)
    results = evaluate_classifier(model, _tagging_batches(mine, mine_t), _Features(), _Accelerator(2))
    expected = mean_average_precision(np.concatenate([mine, theirs]), np.concatenate([mine_t, theirs_t]))
    assert results == expected.as_dict("eval_") and results["eval_num_clips"] == 5
    assert len(gathered) == 1
    # One process: nothing to gather.
    results = evaluate_classifier(model, _tagging_batches(mine, mine_t), _Features(), _Accelerator(1))
    assert len(gathered) == 1 and results["eval_num_clips"] == 2 and results["eval_mAP"] == pytest.approx(1.0)


def test_one_clip_is_scored_and_no_clip_is_an_error():
    from hf_audiorep.evaluation import evaluate_classifier

    targets = np.array([[1, 0, 1]], np.float32)
    results = evaluate_classifier(_PatchOutTagger(3), _tagging_batches(targets - 0.5, targets), _Features())
    assert results["eval_num_clips"] == 1 and results["eval_mAP"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="^the evaluation stream produced no clips$"):
        evaluate_classifier(_PatchOutTagger(3), [], _Features())
