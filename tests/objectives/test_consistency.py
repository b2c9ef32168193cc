"""Consistency regularization: the loss, its stop-gradient, the batched views, the semi-supervised path."""

import pytest
import torch
from recipe_utils import load_recipe

from hf_audiorep.data.semi_supervised import SemiSupervisedBatches
from hf_audiorep.modeling import AudioFbankFeatureExtractor, AudioMAEConfig, AudioMAEForAudioClassification
from hf_audiorep.objectives import (
    AugmentationArguments,
    ConsistencyArguments,
    ConsistencyClassificationStep,
    consistency_loss,
)


def _pairwise_bce_reference(logits):
    """The paper's form, pair by pair: 1/2 [BCE(sg p_a -> p_b) + BCE(sg p_b -> p_a)] minus the targets'
    entropy (a constant under stop-gradient), averaged over pairs."""
    k = logits.shape[0]
    p = torch.sigmoid(logits.double())
    total, pairs = 0.0, 0
    for a in range(k):
        for b in range(a + 1, k):

            def kl(t, q):
                return (t * (t / q).log() + (1 - t) * ((1 - t) / (1 - q)).log()).mean()

            total += 0.5 * (kl(p[a], p[b]) + kl(p[b], p[a]))
            pairs += 1
    return total / pairs


def test_consistency_loss_is_zero_for_identical_views_and_positive_otherwise():
    z = torch.randn(5, 7)
    assert consistency_loss(z.expand(4, 5, 7)).abs().item() < 1e-6
    views = torch.randn(4, 5, 7)
    value = consistency_loss(views)
    assert value.item() > 0
    torch.testing.assert_close(value.double(), _pairwise_bce_reference(views), atol=1e-6, rtol=1e-5)
    assert consistency_loss(torch.randn(1, 5, 7)).item() == 0.0  # a single view has no partner
    with pytest.raises(ValueError, match="views, batch, classes"):
        consistency_loss(torch.randn(5, 7))


def test_gradient_does_not_flow_through_the_stop_gradient_side():
    z = torch.randn(2, 3, 4, requires_grad=True)
    consistency_loss(z).backward()
    p = torch.sigmoid(z.detach())
    n = 3 * 4
    # d/dz_b KL(sg p_a || p_b) = (p_b - p_a) / n; a gradient through the target would add more terms.
    expected = torch.stack([(p[0] - p[1]), (p[1] - p[0])]) / (2 * n)
    torch.testing.assert_close(z.grad, expected, atol=1e-7, rtol=1e-5)


def _tiny_model():
    torch.manual_seed(0)
    config = AudioMAEConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_length=64,
        num_mel_bins=32,
        num_labels=5,
        problem_type="multi_label_classification",
        drop_path_rate=0.0,
    )
    model = AudioMAEForAudioClassification(config).train()
    torch.nn.init.normal_(model.classifier.weight, std=0.5)  # views must be able to disagree
    return model


def _batch(batch=3, seconds=0.64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = int(16000 * seconds)
    return {
        "waveforms": torch.randn(batch, n, generator=g) * 0.1,
        "lengths": torch.full((batch,), n),
        "labels": (torch.rand(batch, 5, generator=g) < 0.4).float(),
    }


def _step(**cr):
    fe = AudioFbankFeatureExtractor(num_mel_bins=32, target_length=64)
    aug = AugmentationArguments(mixup_prob=0.0, freq_mask=8, time_mask=16)
    return ConsistencyClassificationStep(fe, aug, ConsistencyArguments(consistency_regularization=True, **cr))


def test_all_views_go_through_one_batched_forward():
    model = _tiny_model()
    calls = []
    model.register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["input_values"].shape), with_kwargs=True
    )
    loss, logs = _step(num_views=4)(model, _batch(batch=3))
    assert calls == [torch.Size([12, 64, 32])]
    assert torch.isfinite(loss) and logs["loss_consistency"] > 0
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0


def test_zero_weight_is_the_plain_multi_view_baseline():
    model = _tiny_model()
    batch = _batch()
    torch.manual_seed(1)
    loss, logs = _step(num_views=2, consistency_weight=0.0)(model, batch)
    torch.testing.assert_close(loss, logs["loss_supervised"])


def test_semi_supervised_never_reads_labels_of_unlabelled_clips():
    class Stream:
        def __init__(self, batches):
            self.batches, self.epoch = batches, 0

        def set_epoch(self, e):
            self.epoch = e

        def __iter__(self):
            return iter(self.batches)

        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass

    labeled = [_batch(seed=1)]
    unlabeled_a = [_batch(batch=2, seed=2)]
    unlabeled_b = [{**unlabeled_a[0], "labels": torch.full((2, 5), float("nan"))}]  # garbage labels
    batch_a = next(iter(SemiSupervisedBatches(Stream(labeled), Stream(unlabeled_a))))
    batch_b = next(iter(SemiSupervisedBatches(Stream(labeled), Stream(unlabeled_b))))
    assert set(batch_a) == {"waveforms", "lengths", "labels", "unlabeled_waveforms", "unlabeled_lengths"}
    model = _tiny_model()
    step = _step(num_views=2)
    torch.manual_seed(3)
    loss_a, logs_a = step(model, batch_a)
    torch.manual_seed(3)
    loss_b, _ = step(model, batch_b)
    assert torch.isfinite(loss_b)
    torch.testing.assert_close(loss_a, loss_b)
    # the unlabelled clips do enter the consistency term
    torch.manual_seed(3)
    _, logs_labeled_only = step(model, labeled[0])
    assert logs_a["loss_consistency"] != logs_labeled_only["loss_consistency"]


def test_bad_consistency_arguments():
    with pytest.raises(ValueError, match="num_views"):
        ConsistencyArguments(consistency_regularization=True, num_views=1)
    with pytest.raises(ValueError, match="consistency_weight"):
        ConsistencyArguments(consistency_weight=-1)
    with pytest.raises(ValueError, match="unlabeled_ratio"):
        ConsistencyArguments(unlabeled_ratio=-0.5)


def test_recipe_semi_supervised_consistency_run(tmp_path):
    recipe = load_recipe("finetune")
    summary = recipe.main(
        [
            "--preset",
            "audiomae-tiny",
            "--max_length",
            "112",
            "--clip_seconds",
            "1.0",
            "--num_train_clips",
            "40",
            "--num_eval_clips",
            "8",
            "--num_test_clips",
            "40",
            "--num_labeled_clips",
            "16",
            "--unlabeled_dataset",
            "train_remainder",
            "--unlabeled_ratio",
            "1.0",
            "--consistency_regularization",
            "true",
            "--num_views",
            "3",
            "--per_device_batch_size",
            "4",
            "--max_steps",
            "5",
            "--warmup_steps",
            "1",
            "--eval_steps",
            "0",
            "--checkpointing_steps",
            "0",
            "--cpu",
            "true",
            "--num_decode_threads",
            "1",
            "--output_dir",
            str(tmp_path / "cr"),
        ]
    )
    assert summary["global_step"] == 5
    assert 0 < summary["test_mAP"] <= 1


def test_unlabelled_dataset_without_any_label_column(tmp_path):
    """Any audio the loader reads can be the unlabelled set, labelled in another vocabulary or not at all."""
    import io

    import datasets
    import numpy as np
    import soundfile as sf

    from hf_audiorep.data import AudioStream, DataArguments, load_sources

    def flac(seed):
        buf = io.BytesIO()
        sf.write(buf, np.random.default_rng(seed).normal(scale=0.1, size=8000), 16000, format="FLAC")
        return {"bytes": buf.getvalue(), "path": f"{seed}.flac"}

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    audio_only = datasets.Dataset.from_dict(
        {"audio": [flac(i) for i in range(6)]}, features=datasets.Features({"audio": datasets.Audio()})
    )
    audio_only.to_parquet(str(folder / "train.parquet"))
    data = DataArguments(
        num_train_clips=16,
        num_eval_clips=0,
        num_test_clips=0,
        eval_split="",
        test_split="",
        num_labeled_clips=8,
        unlabeled_dataset=str(folder),
        clip_seconds=1.0,
    )
    sources = load_sources(data)
    assert sources["unlabeled"].label_column is None
    assert sources["unlabeled"].label_names == sources["train"].label_names
    batch = next(iter(AudioStream(sources["unlabeled"], batch_size=3, clip_seconds=0.5, train=True)))
    assert batch["waveforms"].shape == (3, 8000) and not batch["labels"].any()
