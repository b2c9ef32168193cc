"""consistency_loss against the formula written out by hand: value, pairs, stop-gradient, stability."""

import itertools
import math

import pytest
import torch

from hf_audiorep.objectives import consistency_loss


def _kl_by_hand(target_logits, logits):
    """KL(Bernoulli(sigmoid(target)) || Bernoulli(sigmoid(logits))), averaged over every element."""
    p, q = torch.sigmoid(target_logits.double()), torch.sigmoid(logits.double())
    return (p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))).mean()


def _cr_by_hand(view_logits):
    pairs = list(itertools.combinations(range(len(view_logits)), 2))
    total = sum(
        0.5 * (_kl_by_hand(view_logits[a], view_logits[b]) + _kl_by_hand(view_logits[b], view_logits[a]))
        for a, b in pairs
    )
    return total / len(pairs)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_value_is_the_mean_symmetric_kl_over_view_pairs(k):
    torch.manual_seed(k)
    view_logits = torch.randn(k, 5, 7) * 2
    assert consistency_loss(view_logits).item() == pytest.approx(_cr_by_hand(view_logits).item(), rel=1e-5)


def test_two_views_of_one_class_on_one_clip():
    # p_a = sigmoid(0) = 1/2, p_b = sigmoid(log 3) = 3/4: each KL written with plain logarithms.
    view_logits = torch.tensor([0.0, math.log(3.0)]).view(2, 1, 1)
    kl_ab = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_ba = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert consistency_loss(view_logits).item() == pytest.approx((kl_ab + kl_ba) / 2, rel=1e-6)


def test_identical_views_give_zero_and_a_single_view_gives_a_zero_scalar():
    logits = torch.randn(1, 4, 3)
    assert consistency_loss(logits.expand(3, 4, 3)).item() == pytest.approx(0.0, abs=1e-7)
    single = consistency_loss(logits)
    assert single.shape == () and single.item() == 0.0


def test_gradient_treats_the_other_view_as_a_constant_target():
    torch.manual_seed(0)
    view_logits = torch.randn(3, 4, 5, requires_grad=True)
    consistency_loss(view_logits).backward()

    # By hand: the binary cross-entropy against the detached probabilities of every other view, whose
    # gradient equals the KL's (the entropy of a detached target is a constant).
    reference = view_logits.detach().clone().requires_grad_(True)
    k = len(reference)
    terms = []
    for a, b in itertools.permutations(range(k), 2):
        target = torch.sigmoid(reference[a]).detach()
        terms.append(torch.nn.functional.binary_cross_entropy_with_logits(reference[b], target))
    (sum(terms) / len(terms)).backward()
    torch.testing.assert_close(view_logits.grad, reference.grad, rtol=1e-5, atol=1e-7)


def test_large_logits_stay_finite_and_non_negative():
    view_logits = torch.tensor([[[40.0, -40.0, 0.0]], [[-40.0, 40.0, 0.0]]], requires_grad=True)
    loss = consistency_loss(view_logits)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(view_logits.grad).all()
    # Equal views at an extreme logit: 0, not a negative rounding residue.
    assert consistency_loss(torch.full((2, 1, 3), 30.0)).item() == pytest.approx(0.0, abs=1e-6)


def test_half_precision_logits_give_an_fp32_loss():
    view_logits = torch.randn(2, 3, 4)
    loss = consistency_loss(view_logits.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(_cr_by_hand(view_logits.bfloat16().float()).item(), rel=1e-4)


def test_input_that_is_not_views_batch_classes_is_refused():
    with pytest.raises(ValueError, match="views, batch, classes"):
        consistency_loss(torch.zeros(2, 3))
