"""KD, CRD (memory banks, sampling, running Z, NCE), the in-batch variant and the combined loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_audiorep.objectives import (
    ContrastiveMemory,
    CRDEmbed,
    CRDLoss,
    DistillationLoss,
    InBatchCRDLoss,
    kd_loss,
    nce_loss,
)


def test_kd_at_unit_temperature_is_the_kl_of_the_softmaxes():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    expected = F.kl_div(F.log_softmax(s, -1), F.softmax(t, -1), reduction="sum") / len(s)
    torch.testing.assert_close(kd_loss(s, t, 1.0), expected)


def test_kd_temperature_softens_and_rescales():
    torch.manual_seed(1)
    s, t, T = torch.randn(5, 4), torch.randn(5, 4), 3.0
    p_t, log_p_s = F.softmax(t / T, -1), F.log_softmax(s / T, -1)
    expected = T**2 * (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
    torch.testing.assert_close(kd_loss(s, t, T), expected)


def test_crd_embed_is_a_two_layer_head_on_the_unit_sphere():
    embed = CRDEmbed(12, feat_dim=4)
    out = embed(torch.randn(3, 12))
    assert out.shape == (3, 4)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    assert isinstance(embed.norm, torch.nn.LayerNorm)


def test_memory_update_moves_only_the_batch_rows():
    torch.manual_seed(2)
    memory = ContrastiveMemory(feat_dim=4, n_data=6, num_negatives=3)
    before_s, before_t = memory.memory_student.clone(), memory.memory_teacher.clone()
    torch.testing.assert_close(before_s.norm(dim=-1), torch.ones(6))
    v_s, v_t = F.normalize(torch.randn(2, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1)
    idx = torch.tensor([1, 4])
    student_scores, _ = memory(v_s, v_t, idx)

    for bank, before, v in ((memory.memory_student, before_s, v_s), (memory.memory_teacher, before_t, v_t)):
        expected = F.normalize(0.5 * before[idx] + 0.5 * v, dim=-1)
        torch.testing.assert_close(bank[idx], expected)
        untouched = torch.tensor([0, 2, 3, 5])
        assert torch.equal(bank[untouched], before[untouched])
    # the positive is scored against the bank as it was before this batch's update
    expected_pos = (before_t[idx] * v_s).sum(-1) / 0.07 - memory.z_student.log()
    torch.testing.assert_close(student_scores[:, 0], expected_pos)


def test_eval_mode_leaves_banks_and_z_alone():
    memory = ContrastiveMemory(feat_dim=4, n_data=5, num_negatives=2)
    with pytest.raises(RuntimeError, match="Z"):
        memory.eval()(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]))
    memory.train()(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 1]))
    state = {k: v.clone() for k, v in memory.state_dict().items()}
    memory.eval()(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([2, 3]))
    for key, value in memory.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("n_data", [2, 3])
def test_negatives_never_include_the_positive(n_data):
    torch.manual_seed(3)
    memory = ContrastiveMemory(feat_dim=4, n_data=n_data, num_negatives=64)
    positives = torch.arange(n_data).repeat(200)
    negatives = memory.sample_negatives(positives)
    assert negatives.shape == (len(positives), 64)
    assert (negatives != positives[:, None]).all()
    assert negatives.min() >= 0 and negatives.max() < n_data
    for i in range(n_data):  # and every other clip is drawn
        assert set(negatives[positives == i].unique().tolist()) == set(range(n_data)) - {i}


def test_z_is_a_running_estimate_not_frozen_after_the_first_batch():
    torch.manual_seed(4)
    n_data, tau = 8, 0.07
    memory = ContrastiveMemory(feat_dim=4, n_data=n_data, num_negatives=3, temperature=tau, z_momentum=0.99)

    def batch_estimate(anchors, bank, sample):
        return torch.exp((bank[sample] * anchors[:, None]).sum(-1) / tau).mean() * n_data

    zs = []
    for step in range(2):
        v_s, v_t = F.normalize(torch.randn(2, 4), dim=-1), F.normalize(torch.randn(2, 4), dim=-1)
        idx, neg = torch.tensor([2 * step, 2 * step + 1]), torch.tensor([[5, 6, 7], [4, 6, 7]])
        sample = torch.cat([idx[:, None], neg], 1)
        batch_z = batch_estimate(v_s, memory.memory_teacher.clone(), sample)
        previous = memory.z_student.clone()
        memory(v_s, v_t, idx, neg)
        zs.append((previous, batch_z, memory.z_student.clone()))

    (_, first_batch, z1), (_, second_batch, z2) = zs
    torch.testing.assert_close(z1, first_batch)  # first batch: nothing to average with yet
    torch.testing.assert_close(z2, 0.99 * z1 + 0.01 * second_batch)
    assert z2 != z1 and abs(z2 - second_batch) < abs(z1 - second_batch)


def test_nce_loss_matches_the_crd_formula():
    torch.manual_seed(5)
    n_data, k = 50, 7
    probs = torch.rand(4, 1 + k) * 0.1
    c = k / n_data
    expected = -(
        torch.log(probs[:, 0] / (probs[:, 0] + c)).sum() + torch.log(c / (probs[:, 1:] + c)).sum()
    ) / len(probs)
    torch.testing.assert_close(nce_loss(probs.log(), n_data), expected)


def test_crd_gradients_reach_student_and_heads_not_teacher():
    torch.manual_seed(6)
    crd = CRDLoss(student_dim=6, teacher_dim=10, n_data=20, feat_dim=4, num_negatives=5)
    f_s, f_t = torch.randn(3, 6, requires_grad=True), torch.randn(3, 10, requires_grad=True)
    loss = crd(f_s, f_t, torch.tensor([0, 7, 19]))
    loss.backward()
    assert torch.isfinite(loss) and f_s.grad.abs().sum() > 0
    assert f_t.grad is None
    for head in (crd.embed_student, crd.embed_teacher):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_memory_state_dict_round_trip():
    torch.manual_seed(7)
    crd = CRDLoss(student_dim=6, teacher_dim=8, n_data=12, feat_dim=4, num_negatives=5)
    for _ in range(2):
        crd(torch.randn(3, 6), torch.randn(3, 8), torch.randint(0, 12, (3,)))
    state = crd.state_dict()
    assert {"memory.memory_student", "memory.memory_teacher", "memory.z_student", "memory.z_teacher"} <= set(
        state
    )

    torch.manual_seed(8)
    restored = CRDLoss(student_dim=6, teacher_dim=8, n_data=12, feat_dim=4, num_negatives=5)
    restored.load_state_dict(state)
    for key, value in crd.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    f_s, f_t, idx, neg = (
        torch.randn(2, 6),
        torch.randn(2, 8),
        torch.tensor([3, 4]),
        torch.tensor([[0] * 5, [1] * 5]),
    )
    torch.testing.assert_close(restored(f_s, f_t, idx, neg), crd(f_s, f_t, idx, neg))


def test_in_batch_crd_is_symmetric_info_nce_with_a_queue():
    torch.manual_seed(9)
    crd = InBatchCRDLoss(student_dim=6, teacher_dim=8, feat_dim=4, temperature=0.5, queue_size=5)
    f_s, f_t = torch.randn(3, 6), torch.randn(3, 8)
    s, t = crd.embed_student(f_s), crd.embed_teacher(f_t)
    target = torch.arange(3)
    expected = F.cross_entropy(s @ t.T / 0.5, target) + F.cross_entropy(t @ s.T / 0.5, target)
    torch.testing.assert_close(crd(f_s, f_t), expected)
    torch.testing.assert_close(crd.queue[:3], t.detach())

    # the queued teacher embeddings are extra negatives for the student anchor on the next batch
    g_s, g_t = torch.randn(3, 6), torch.randn(3, 8)
    s2, t2 = crd.embed_student(g_s), crd.embed_teacher(g_t)
    expected = F.cross_entropy(s2 @ torch.cat([t2, t]).T.detach() / 0.5, target)
    expected = expected + F.cross_entropy(t2 @ s2.T / 0.5, target)
    torch.testing.assert_close(crd(g_s, g_t), expected)
    # FIFO: the queue holds the five newest teacher embeddings
    assert int(crd.queue_filled) == 5
    oldest_first = crd.queue.roll(-int(crd.queue_pointer), 0)
    torch.testing.assert_close(oldest_first, torch.cat([t[1:], t2]).detach())


def test_distillation_without_kd_and_crd_is_cross_entropy():
    torch.manual_seed(10)
    logits = torch.randn(4, 5)
    hard = torch.tensor([0, 3, 1, 4])
    soft = torch.softmax(torch.randn(4, 5), -1)
    loss = DistillationLoss(ce_weight=1.0, kd_weight=0.0, crd_weight=0.0)
    torch.testing.assert_close(loss(logits, hard).loss, F.nll_loss(F.log_softmax(logits, -1), hard))
    out = loss(logits, soft)
    torch.testing.assert_close(out.loss, -(soft * F.log_softmax(logits, -1)).sum(-1).mean())
    assert out.kd == 0 and out.crd == 0


@pytest.mark.parametrize("in_batch", [False, True])
def test_distillation_loss_combines_the_parts(in_batch):
    torch.manual_seed(11)
    if in_batch:
        crd = InBatchCRDLoss(student_dim=6, teacher_dim=8, feat_dim=4)
    else:
        crd = CRDLoss(student_dim=6, teacher_dim=8, n_data=30, feat_dim=4, num_negatives=7)
    loss = DistillationLoss(crd, ce_weight=0.5, kd_weight=2.0, crd_weight=0.8, temperature=2.0)
    logits = torch.randn(4, 5, requires_grad=True)
    features = torch.randn(4, 6, requires_grad=True)
    t_logits, t_features = torch.randn(4, 5, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3])
    out = loss(logits, labels, t_logits, features, t_features, indices=torch.tensor([0, 5, 9, 29]))

    torch.testing.assert_close(out.ce, F.cross_entropy(logits, labels))
    torch.testing.assert_close(out.kd, kd_loss(logits, t_logits, 2.0))
    torch.testing.assert_close(out.loss, 0.5 * out.ce + 2.0 * out.kd + 0.8 * out.crd)
    assert out.crd > 0
    out.loss.backward()
    assert logits.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
    assert t_logits.grad is None and t_features.grad is None
    assert all(p.grad is not None for p in loss.parameters())


def test_distillation_arguments_are_checked():
    crd = InBatchCRDLoss(student_dim=6, teacher_dim=8, feat_dim=4)
    with pytest.raises(ValueError, match="kd_weight"):
        DistillationLoss(crd, kd_weight=-1.0)
    with pytest.raises(ValueError, match="ce_weight"):
        DistillationLoss(crd, ce_weight=math.nan)
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(crd, temperature=0.0)
    with pytest.raises(ValueError, match="crd"):
        DistillationLoss(None, crd_weight=0.8)
    with pytest.raises(ValueError, match="all 0"):
        DistillationLoss(None, ce_weight=0.0, kd_weight=0.0, crd_weight=0.0)
    with pytest.raises(ValueError, match="n_data"):
        ContrastiveMemory(feat_dim=4, n_data=1)
    with pytest.raises(ValueError, match="indices"):
        ContrastiveMemory(feat_dim=4, n_data=3)(torch.randn(2, 4), torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="momentum"):
        ContrastiveMemory(feat_dim=4, n_data=10, momentum=1.0)
    with_memory = DistillationLoss(CRDLoss(6, 8, n_data=10, feat_dim=4, num_negatives=2))
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match="teacher_logits"):
        with_memory(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="indices"):
        with_memory(logits, torch.tensor([0, 1]), torch.randn(2, 3), torch.randn(2, 6), torch.randn(2, 8))
    with pytest.raises(ValueError, match="labels"):
        with_memory(logits, torch.tensor([0, 1, 2]), torch.randn(2, 3))


def test_crd_loss_is_the_sum_of_its_two_nce_terms_with_its_own_settings():
    torch.manual_seed(0)
    crd = CRDLoss(
        6, 10, n_data=20, feat_dim=4, num_negatives=5, temperature=0.3, momentum=0.2, z_momentum=0.9
    )
    memory = crd.memory
    assert (memory.temperature, memory.momentum, memory.z_momentum) == (0.3, 0.2, 0.9)
    assert memory.num_negatives == 5 and memory.memory_student.shape == (20, 4)
    student, teacher = torch.randn(3, 6), torch.randn(3, 10)
    indices, negatives = torch.tensor([1, 4, 7]), torch.tensor([[0, 2, 3, 5, 6]] * 3)
    crd.eval()
    memory.z_student.fill_(5.0)
    memory.z_teacher.fill_(7.0)
    loss = crd(student, teacher, indices, negatives)
    s_scores, t_scores = memory(crd.embed_student(student), crd.embed_teacher(teacher), indices, negatives)
    torch.testing.assert_close(loss, nce_loss(s_scores, 20) + nce_loss(t_scores, 20))
    # the two terms differ, so a difference of them would not pass
    assert not torch.allclose(nce_loss(s_scores, 20), nce_loss(t_scores, 20))


def test_documented_defaults():
    crd = CRDLoss(6, 10, n_data=20)
    assert crd.memory.memory_student.shape[1] == 128 and crd.memory.num_negatives == 16384
    assert (crd.memory.temperature, crd.memory.momentum, crd.memory.z_momentum) == (0.07, 0.5, 0.99)
    loss = DistillationLoss(crd)
    assert (loss.ce_weight, loss.kd_weight, loss.crd_weight, loss.temperature) == (1.0, 1.0, 0.8, 4.0)
    in_batch = InBatchCRDLoss(6, 10)
    assert in_batch.temperature == 0.07 and in_batch.queue.shape[0] == 0


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0.0), "temperature"),
        (lambda: ContrastiveMemory(4, 10, temperature=-1.0), "temperature"),
        (lambda: ContrastiveMemory(4, 10, num_negatives=0), "num_negatives"),
        (lambda: ContrastiveMemory(4, 10, momentum=1.0), "momentum"),
        (lambda: ContrastiveMemory(4, 10, z_momentum=1.5), "z_momentum"),
        (lambda: InBatchCRDLoss(4, 4, temperature=0.0), "temperature"),
        (lambda: InBatchCRDLoss(4, 4, queue_size=-1), "queue_size"),
        (lambda: DistillationLoss(None, ce_weight=-1.0, crd_weight=0.0), "ce_weight"),
        (lambda: DistillationLoss(None, kd_weight=float("nan"), crd_weight=0.0), "kd_weight"),
        (lambda: DistillationLoss(None, crd_weight=-0.5), "crd_weight"),
        (lambda: DistillationLoss(None, ce_weight=0.0, kd_weight=0.0, crd_weight=0.0), "all 0"),
        (lambda: DistillationLoss(None, crd_weight=0.8), "crd must be"),
        (lambda: DistillationLoss(None, crd_weight=0.0, temperature=0.0), "temperature"),
    ],
)
def test_bad_settings_name_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_one_num_negative_is_enough_and_indices_must_be_one_per_clip():
    memory = ContrastiveMemory(4, 10, num_negatives=1)
    assert memory.sample_negatives(torch.tensor([3, 4])).shape == (2, 1)
    embed = F.normalize(torch.randn(2, 4), dim=-1)
    with pytest.raises(ValueError, match="indices must be"):
        memory(embed, embed, torch.tensor([[3], [4]]))
    with pytest.raises(ValueError, match="required when kd_weight"):
        DistillationLoss(None, crd_weight=0.0)(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="required when crd_weight"):
        DistillationLoss(InBatchCRDLoss(3, 3), kd_weight=0.0)(torch.zeros(2, 3), torch.tensor([0, 1]))
