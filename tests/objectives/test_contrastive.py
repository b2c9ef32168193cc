"""The mixup-aware supervised contrastive loss and its projection head."""

import math

import pytest
import torch
import torch.nn.functional as F
from step_utils import BINS, CLASSES, extractor, waveform_batch

from hf_audiorep.objectives import (
    AugmentationArguments,
    ClassifierWithProjection,
    ContrastiveArguments,
    ProjectionHead,
    SupConClassificationStep,
    mixup_supcon_loss,
)


def khosla_supcon(z: torch.Tensor, labels: list[int], temperature: float) -> torch.Tensor:
    """SupCon L_out (Khosla et al., Eq. 2) with one view per clip, written out term by term.

    Anchors without a positive are left out of the mean (the formula's 1/|P(i)| is undefined for them).
    """
    z = F.normalize(z, dim=-1)
    n = len(labels)
    per_anchor = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[a]) / temperature) for a in range(n) if a != i)
        terms = [math.log(math.exp(float(z[i] @ z[p]) / temperature) / denominator) for p in positives]
        per_anchor.append(-sum(terms) / len(positives))
    return torch.tensor(sum(per_anchor) / len(per_anchor))


def spec_mixup_supcon(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """The §6b formula with explicit loops over anchors and pairs."""
    z = F.normalize(z, dim=-1)
    n = len(y)
    per_anchor = []
    for i in range(n):
        weights = [float(y[i] @ y[j]) if j != i else 0.0 for j in range(n)]
        total = sum(weights)
        if total == 0:
            continue
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(n) if k != i)
        per_anchor.append(
            -sum(
                weights[j] / total * math.log(math.exp(float(z[i] @ z[j]) / temperature) / denominator)
                for j in range(n)
                if j != i
            )
        )
    return torch.tensor(sum(per_anchor) / len(per_anchor))


@pytest.mark.parametrize("labels", [[0, 1, 0, 2, 1, 2, 0, 1], [0, 1, 0, 3, 1, 2, 2, 0]])
def test_one_hot_labels_give_supcon(labels):
    torch.manual_seed(0)
    z = torch.randn(len(labels), 16)
    ids = torch.tensor(labels)
    expected = khosla_supcon(z, labels, temperature=0.1)
    torch.testing.assert_close(
        mixup_supcon_loss(z, F.one_hot(ids).float(), 0.1), expected, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(mixup_supcon_loss(z, ids, 0.1), expected, rtol=1e-5, atol=1e-5)


def test_mixed_labels_follow_the_formula():
    torch.manual_seed(1)
    classes, lam = torch.randint(0, 6, (10,)), torch.rand(10, 1)
    y = lam * F.one_hot(classes, 6) + (1 - lam) * F.one_hot(classes.roll(1), 6)
    z = torch.randn(10, 8)
    torch.testing.assert_close(
        mixup_supcon_loss(z, y, 0.2), spec_mixup_supcon(z, y, 0.2), rtol=1e-5, atol=1e-5
    )


def test_disjoint_pairs_only_repel():
    # Clip 2 shares no label mass with any clip, so its pair weights are zero: it is dropped as an anchor
    # and enters the other anchors' terms as a negative only. Its gradient is then exactly the push
    # of the softmax denominators, (I - z z^T) Σ_i p_i2 z_i / (τ N), with no pull toward anyone.
    torch.manual_seed(2)
    tau = 0.5
    y = torch.tensor([[0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    z = F.normalize(torch.randn(4, 5), dim=-1).requires_grad_(True)
    mixup_supcon_loss(z, y, tau).backward()

    zd = z.detach()
    anchors = [0, 1, 3]
    push = torch.zeros(5)
    for i in anchors:
        logits = torch.stack([zd[i] @ zd[k] / tau for k in range(4) if k != i])
        p_i2 = logits.softmax(0)[[k for k in range(4) if k != i].index(2)]
        push += p_i2 * zd[i] / (tau * len(anchors))
    tangent = torch.eye(5) - torch.outer(zd[2], zd[2])
    torch.testing.assert_close(z.grad[2], tangent @ push, rtol=1e-5, atol=1e-6)


def test_every_anchor_dropped_gives_a_differentiable_zero():
    z = torch.randn(3, 4, requires_grad=True)
    loss = mixup_supcon_loss(z, torch.eye(3), 0.1)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_arguments_are_checked():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="temperature"):
        mixup_supcon_loss(z, torch.eye(4), temperature=0.0)
    with pytest.raises(ValueError, match="soft_labels"):
        mixup_supcon_loss(z, torch.eye(3), 0.1)
    with pytest.raises(ValueError, match="soft_labels"):
        mixup_supcon_loss(z, -torch.eye(4), 0.1)
    with pytest.raises(ValueError, match="hidden_dim"):
        ProjectionHead(8, 4, hidden_dim=0)


def test_the_loss_reads_labels_as_ids_integer_or_float_vectors_and_its_errors_say_what_is_wrong():
    z = torch.randn(4, 8)
    ids = torch.tensor([0, 1, 0, 2])
    expected = mixup_supcon_loss(z, F.one_hot(ids, 3).float(), 0.1)
    torch.testing.assert_close(mixup_supcon_loss(z, ids, 0.1), expected)  # (B,) class ids
    torch.testing.assert_close(mixup_supcon_loss(z, F.one_hot(ids, 3), 0.1), expected)  # (B, C) integers
    with pytest.raises(ValueError, match=r"^embeddings must be \(batch, dim\), got \(4, 8, 1\)$"):
        mixup_supcon_loss(z.unsqueeze(-1), ids, 0.1)
    with pytest.raises(
        ValueError, match=r"^soft_labels must be \(batch, classes\) with batch 4, got \(3, 4\)$"
    ):
        mixup_supcon_loss(z, torch.eye(3, 4), 0.1)
    with pytest.raises(ValueError, match=r"^soft_labels must be non-negative \(mixed label vectors\)$"):
        mixup_supcon_loss(z, -torch.eye(4), 0.1)


def test_projection_head_widths_are_checked_by_name_and_one_is_a_width():
    for name, kwargs in (
        ("in_dim", {"in_dim": 0}),
        ("out_dim", {"out_dim": -1}),
        ("hidden_dim", {"hidden_dim": 2.0}),
    ):
        widths = {"in_dim": 8, "out_dim": 4, **kwargs}
        with pytest.raises(ValueError, match=f"^{name} must be a positive int, got {kwargs[name]!r}$"):
            ProjectionHead(**widths)
    assert ProjectionHead(1, 1)(torch.randn(2, 1)).shape == (2, 1)


def test_projection_head_shapes_and_layer_norm():
    head = ProjectionHead(12, 4, hidden_dim=6)
    assert head(torch.randn(3, 12)).shape == (3, 4)
    assert isinstance(ProjectionHead(12, 4, layer_norm=True).norm, torch.nn.LayerNorm)
    assert head.fc1.out_features == 6 and ProjectionHead(12, 4).fc1.out_features == 12


class _PooledModel(torch.nn.Module):
    """A classifier whose ``base_model`` returns a ``pooler_output``, the way the library's models do."""

    def __init__(self):
        super().__init__()
        self.base_model = _MeanPool()
        self.head = torch.nn.Linear(BINS, CLASSES)

    def forward(self, input_values, attention_mask=None):
        pooled = self.base_model(input_values, attention_mask).pooler_output
        return type("Output", (), {"logits": self.head(pooled)})()


class _MeanPool(torch.nn.Module):
    """The mean over the valid frames (all frames without a mask), as the library's encoders pool."""

    def forward(self, input_values, attention_mask=None):
        if attention_mask is None:
            return type("Output", (), {"pooler_output": input_values.mean(1)})()
        weights = attention_mask.unsqueeze(-1).to(input_values.dtype)
        pooled = (input_values * weights).sum(1) / weights.sum(1)
        return type("Output", (), {"pooler_output": pooled})()


@pytest.mark.parametrize("single_label", [False, True])
def test_supcon_step_adds_the_weighted_contrastive_term_on_the_projected_embedding(single_label):
    torch.manual_seed(0)
    model = ClassifierWithProjection(_PooledModel(), ProjectionHead(BINS, 8)).eval()
    batch = waveform_batch(short=4000)  # clip 0 padded: the embedding pools its valid frames only
    batch["waveforms"] = batch["waveforms"] * torch.arange(1, 9).unsqueeze(1)  # clips of 8 loudnesses
    batch["labels"] = F.one_hot(torch.arange(8) % 2, 4).float()
    no_aug = AugmentationArguments(mixup_prob=0.0, freq_mask=0, time_mask=0)
    step = SupConClassificationStep(
        extractor(), no_aug, weight=0.25, temperature=0.2, single_label=single_label
    )
    loss, logs = step(model, batch)
    features, mask = extractor().batch_features(batch["waveforms"], batch["lengths"])
    assert not mask[0].all() and mask[1:].all()
    pooled = model.model.base_model(features, mask).pooler_output
    logits = model.model.head(pooled)
    if single_label:
        ce = F.cross_entropy(logits, batch["labels"])
    else:
        ce = F.binary_cross_entropy_with_logits(logits, batch["labels"])
    supcon = mixup_supcon_loss(model.projection(pooled), batch["labels"], 0.2)
    torch.testing.assert_close(logs["ce"], ce)
    torch.testing.assert_close(logs["supcon"], supcon)
    torch.testing.assert_close(loss, ce + 0.25 * supcon)
    # the clips are told apart: another temperature, or the padding pooled in, gives another loss
    assert abs(mixup_supcon_loss(model.projection(pooled), batch["labels"], 0.1) - supcon) > 1e-3
    assert abs(mixup_supcon_loss(model.projection(features.mean(1)), batch["labels"], 0.2) - supcon) > 1e-4
    # the wrapper is the classifier to every caller but the step, keyword arguments included
    assert torch.equal(model(features).logits, model.model(features).logits)
    wrapped = model(input_values=features, attention_mask=mask).logits
    assert torch.equal(wrapped, model.model(features, mask).logits) and torch.equal(wrapped, logits)


def test_contrastive_arguments_are_checked():
    for field, value in (("supcon_weight", -0.1), ("supcon_temperature", 0.0), ("projection_dim", 0)):
        with pytest.raises(ValueError, match=field):
            ContrastiveArguments(**{field: value})


def test_documented_defaults_of_the_head_and_the_loss():
    assert isinstance(ProjectionHead(8, 4).norm, torch.nn.Identity)
    assert isinstance(ProjectionHead(8, 4, layer_norm=True).norm, torch.nn.LayerNorm)
    z, y = torch.randn(6, 4), F.one_hot(torch.arange(6) % 2, 2).float()
    torch.testing.assert_close(mixup_supcon_loss(z, y), mixup_supcon_loss(z, y, temperature=0.1))
    assert ContrastiveArguments().supcon_weight == 0.0 and ContrastiveArguments().projection_dim == 128
    ContrastiveArguments(projection_dim=1)  # a width of one is allowed
