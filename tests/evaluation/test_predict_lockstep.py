"""Evaluation of a model whose parameters are sharded over the processes (FSDP, DeepSpeed ZeRO-3; issue 18):
every forward is a collective, so ranks whose evaluation shards differ in length run in lockstep, a rank
that is done running a stand-in. The real 2-process run is in tests/training/test_fsdp.py; here one process
plays a rank against a scripted other rank."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate.utils import DistributedType

from hf_audiorep.evaluation import collect_predictions, evaluate_classifier, predict


class _Recorder(torch.nn.Module):
    """A multi-label tagger whose logits are its input features; records every input it is run on."""

    def __init__(self, num_classes):
        super().__init__()
        self.config = SimpleNamespace(problem_type="multi_label_classification", num_labels=num_classes)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.inputs, self.modes = [], []

    def forward(self, input_values, attention_mask=None):
        self.inputs.append((input_values.clone(), attention_mask.clone()))
        self.modes.append(self.training)
        return SimpleNamespace(logits=input_values)


class _Features:
    """Features = the waveform; the mask says which samples are within each clip's length."""

    def batch_features(self, waveforms, lengths):
        mask = (torch.arange(waveforms.shape[1]) < lengths.unsqueeze(1)).long()
        return waveforms, mask


class _Accelerator:
    """Plays one rank of two; the other rank has ``other_batches`` batches of ``other_width`` samples.
    ``gather`` is the only collective an `accelerate.Accelerator` offers that this path may use."""

    def __init__(self, distributed_type, other_batches=0, other_width=0, num_processes=2, zero_stage=None):
        self.distributed_type, self.num_processes = distributed_type, num_processes
        self.state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=zero_stage))
        self.device, self.is_main_process = torch.device("cpu"), True
        self.other_batches, self.other_width = other_batches, other_width
        self.sent = []

    def gather(self, tensor):
        self.sent.append(tensor.tolist())
        round_ = len(self.sent) - 1
        theirs = [1, self.other_width] if round_ < self.other_batches else [0, 0]
        return torch.cat([tensor, torch.tensor([theirs], dtype=tensor.dtype)])


def _batches(sizes, width, num_classes):
    """Batches of the given sizes; clip i's waveform is i + 1 in its first `num_classes` samples."""
    out, start = [], 0
    for size in sizes:
        values = torch.arange(start + 1, start + size + 1, dtype=torch.float32)
        waveforms = values.unsqueeze(1).expand(size, width).clone()
        labels = (torch.arange(start, start + size).unsqueeze(1) + torch.arange(num_classes)) % 2
        out.append({"waveforms": waveforms, "lengths": torch.full((size,), width), "labels": labels.float()})
        start += size
    return out


def test_a_rank_with_fewer_batches_runs_stand_ins_until_every_rank_is_done():
    model = _Recorder(5).train()
    accelerator = _Accelerator(DistributedType.FSDP, other_batches=3, other_width=5)
    batches = _batches([2], width=5, num_classes=5)
    logits, targets = collect_predictions(model, batches, _Features(), accelerator=accelerator)
    # Round 1 its batch, rounds 2-3 stand-ins, round 4 everyone is done: 4 gathers, 3 forwards like the other.
    assert accelerator.sent == [[[1, 5]], [[0, 0]], [[0, 0]], [[0, 0]]]
    assert len(model.inputs) == 3
    for features, mask in model.inputs[1:]:  # one silent clip, as wide as the other rank's batches
        assert torch.equal(features, torch.zeros(1, 5))
        assert torch.equal(mask, torch.ones(1, 5, dtype=torch.long))
    assert model.modes == [False] * 3 and model.training  # stand-ins too in eval mode; mode restored
    # Only its own clips are returned.
    np.testing.assert_array_equal(logits, batches[0]["waveforms"].numpy())
    np.testing.assert_array_equal(targets, batches[0]["labels"].numpy())


def test_a_rank_without_any_batch_takes_the_stand_in_width_from_the_others():
    model = _Recorder(3)
    accelerator = _Accelerator(DistributedType.FSDP, other_batches=2, other_width=7)
    logits, targets = collect_predictions(model, [], _Features(), accelerator=accelerator)
    assert accelerator.sent == [[[0, 0]]] * 3
    assert [tuple(f.shape) for f, _ in model.inputs] == [(1, 7), (1, 7)]
    assert all(not f.any() for f, _ in model.inputs)
    assert logits.shape == targets.shape == (0, 3)


def test_the_rank_with_more_batches_runs_only_its_own():
    model = _Recorder(4)
    accelerator = _Accelerator(DistributedType.DEEPSPEED, other_batches=1, other_width=4, zero_stage=3)
    batches = _batches([2, 2, 1], width=4, num_classes=4)
    logits, _ = collect_predictions(model, batches, _Features(), accelerator=accelerator)
    assert accelerator.sent == [[[1, 4]], [[1, 4]], [[1, 4]], [[0, 0]]]
    assert len(model.inputs) == 3
    expected = torch.cat([b["waveforms"] for b in batches]).numpy()
    np.testing.assert_array_equal(logits, expected)


def test_a_sharded_evaluation_scores_every_ranks_clips_once(monkeypatch):
    from sklearn.metrics import average_precision_score

    theirs_logits = np.array([[0.3, -1.0, 2.0], [1.0, 0.5, -2.0]], np.float32)
    theirs_targets = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    monkeypatch.setattr(predict, "gather_object", lambda objects: [*objects, (theirs_logits, theirs_targets)])
    model = _Recorder(3).train()
    accelerator = _Accelerator(DistributedType.FSDP, other_batches=2, other_width=3)
    batches = _batches([1], width=3, num_classes=3)
    results = evaluate_classifier(model, batches, _Features(), accelerator)
    assert len(model.inputs) == 2 and model.training
    logits = np.concatenate([batches[0]["waveforms"].numpy(), theirs_logits])
    targets = np.concatenate([batches[0]["labels"].numpy(), theirs_targets])
    ap = [average_precision_score(targets[:, c], logits[:, c]) for c in range(3) if targets[:, c].any()]
    assert results["eval_num_clips"] == 3
    assert results["eval_mAP"] == pytest.approx(np.mean(ap))


@pytest.mark.parametrize(
    ("distributed_type", "num_processes", "zero_stage"),
    [
        (DistributedType.MULTI_GPU, 2, None),  # DDP: whole parameters on every rank
        (DistributedType.MULTI_CPU, 2, None),
        (DistributedType.DEEPSPEED, 2, 2),  # ZeRO-2 shards optimizer state and gradients only
        (DistributedType.FSDP, 1, None),  # one process: nothing to agree on
        (DistributedType.NO, 1, None),
    ],
)
def test_without_sharded_parameters_no_collective_runs_per_batch(
    distributed_type, num_processes, zero_stage, monkeypatch
):
    def no_collective(tensor):
        raise AssertionError("a collective per batch without sharded parameters")

    accelerator = _Accelerator(distributed_type, num_processes=num_processes, zero_stage=zero_stage)
    accelerator.gather = no_collective
    monkeypatch.setattr(predict, "gather_object", lambda objects: list(objects))  # the one final gather
    model = _Recorder(2)
    batches = _batches([2, 1], width=2, num_classes=2)
    logits, _ = collect_predictions(model, batches, _Features(), accelerator=accelerator)
    assert len(model.inputs) == 2
    np.testing.assert_array_equal(logits, torch.cat([b["waveforms"] for b in batches]).numpy())
    results = evaluate_classifier(model, batches, _Features(), accelerator)
    assert results["eval_num_clips"] == 3 and len(model.inputs) == 4
