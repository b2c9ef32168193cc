"""A tiny model, a synthetic AudioStream stand-in, and the 2-process run used by tests/test_training.py.

Run by the test as::

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
        --mixed_precision no --dynamo_backend no tests/scripts/ddp_train_script.py --output_dir DIR --cpu true

Each rank trains (a) 6 steps uninterrupted, (b) the same run "crashing" after the checkpoint at step 4,
and (c) a resume of (b) from "latest"; it writes ``DIR/rank<r>.json`` with its world size, distributed
type, the clip indices it trained on, the final parameters of (a) and (c), and the losses of (a) and (c).

The test module imports ``ToyConfig``, ``ToyModel``, ``SyntheticStream`` and ``classification_step`` from
this file, so both exercise the same objects.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import HfArgumentParser, PreTrainedConfig, PreTrainedModel


class ToyConfig(PreTrainedConfig):
    model_type = "audiorep-toy-test"

    def __init__(
        self, input_size=8, hidden_size=16, num_hidden_layers=2, num_classes=3, dropout=0.3, **kwargs
    ):
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_classes = num_classes
        self.dropout = dropout
        super().__init__(**kwargs)


class ToyBlock(nn.Module):
    def __init__(self, config: ToyConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden):
        return hidden + self.dropout(torch.tanh(self.dense(self.norm(hidden))))


class ToyModel(PreTrainedModel):
    """Embeddings -> ``num_hidden_layers`` residual blocks (``layers.<i>``) -> norm -> head, with dropout,
    so that exact resume depends on the restored RNG state."""

    config: ToyConfig
    config_class = ToyConfig
    base_model_prefix = "toy"
    main_input_name = "inputs"

    def __init__(self, config: ToyConfig):
        super().__init__(config)
        self.embeddings = nn.Linear(config.input_size, config.hidden_size)
        self.layers = nn.ModuleList(ToyBlock(config) for _ in range(config.num_hidden_layers))
        self.final_norm = nn.LayerNorm(config.hidden_size)
        self.head = nn.Linear(config.hidden_size, config.num_classes)
        self.post_init()

    def forward(self, inputs):
        hidden = self.embeddings(inputs)
        for layer in self.layers:
            hidden = layer(hidden)
        return self.head(self.final_norm(hidden))


class SyntheticStream:
    """The AudioStream contract over a fixed tensor dataset: a seeded permutation per epoch, sharded by
    rank, fixed-size batches, and a position that ``state_dict``/``load_state_dict`` carry."""

    def __init__(self, features, labels, batch_size, seed=0, rank=0, world_size=1):
        self.features, self.labels = features, labels
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch = 0
        self.examples_consumed = 0

    def _shard(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.features), generator=generator)[self.rank :: self.world_size]
        usable = len(order) // self.batch_size * self.batch_size  # equal batch counts on every rank
        return order[:usable]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.examples_consumed = 0

    def __iter__(self):
        order = self._shard()
        while self.examples_consumed < len(order):
            index = order[self.examples_consumed : self.examples_consumed + self.batch_size]
            self.examples_consumed += len(index)  # counted when handed out, as the loop saves after the step
            yield {"waveforms": self.features[index], "labels": self.labels[index], "index": index}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "examples_consumed": self.examples_consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.examples_consumed = int(state["epoch"]), int(state["examples_consumed"])


def synthetic_data(num_examples=48, input_size=8, num_classes=3, seed=123):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_examples, input_size, generator=generator)
    labels = torch.randint(0, num_classes, (num_examples,), generator=generator)
    return features, labels


def classification_step(record=None):
    """A ``step_fn``; ``record`` (a dict of lists) collects each call's loss and clip indices."""

    def step(model, batch):
        logits = model(batch["waveforms"])
        loss = F.cross_entropy(logits, batch["labels"])
        if record is not None:
            record.setdefault("losses", []).append(loss.item())
            record.setdefault("indices", []).extend(batch["index"].tolist())
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return loss, {"accuracy": accuracy}

    return step


class Crash(Exception):
    """Raised by ``crashing_step`` to simulate a job killed between two checkpoints."""


def crashing_step(step_fn, after_calls: int):
    calls = {"n": 0}

    def step(model, batch):
        if calls["n"] == after_calls:
            raise Crash(f"simulated crash after {after_calls} micro-steps")
        calls["n"] += 1
        return step_fn(model, batch)

    return step


def flat_parameters(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


@dataclass
class ScriptArguments:
    crash_after_steps: int = 4


def main(argv=None) -> None:
    from accelerate import PartialState
    from transformers import set_seed

    from hf_audiorep.training import TrainingArguments, TrainLoop

    parser = HfArgumentParser((TrainingArguments, ScriptArguments))
    base_args, script_args = parser.parse_args_into_dataclasses(args=argv)
    state = PartialState(cpu=base_args.cpu)
    features, labels = synthetic_data()
    base = Path(base_args.output_dir)

    def loop_for(output_dir, step_fn, resume=None):
        args = TrainingArguments(**{**base_args.to_dict(), "output_dir": str(output_dir)})
        args.resume_from_checkpoint = resume
        set_seed(0)
        model = ToyModel(ToyConfig())
        stream = SyntheticStream(
            features, labels, batch_size=4, seed=1, rank=state.process_index, world_size=state.num_processes
        )
        return TrainLoop(args, model, stream, step_fn)

    reference = {}
    loop_a = loop_for(base / "a", classification_step(reference))
    summary = loop_a.run()

    steps_per_call = base_args.gradient_accumulation_steps
    try:
        loop_for(
            base / "b", crashing_step(classification_step(), script_args.crash_after_steps * steps_per_call)
        ).run()
        raise AssertionError("the simulated crash did not happen")
    except Crash:
        pass
    resumed = {}
    loop_c = loop_for(base / "b", classification_step(resumed), resume="latest")
    summary_c = loop_c.run()

    accelerator = loop_c.accelerator
    result = {
        "rank": accelerator.process_index,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "summary_world_size": summary["world_size"],
        "resumed_from": summary_c["resumed_from_checkpoint"],
        "indices": reference["indices"],
        "losses_reference": reference["losses"],
        "losses_resumed": resumed["losses"],
        "params_reference": flat_parameters(loop_a.model),
        "params_resumed": flat_parameters(loop_c.model),
    }
    (base / f"rank{accelerator.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
