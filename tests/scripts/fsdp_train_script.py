"""The 2-process FSDP run of tests/training/test_fsdp.py: a tiny AudioMAE classifier trained by TrainLoop.

Run by the test as::

    ACCELERATE_USE_CPU=true accelerate launch --config_file recipes/accelerate_configs/fsdp_vit.yaml \
        --num_processes 2 --mixed_precision no tests/scripts/fsdp_train_script.py --output_dir DIR \
        --cpu true ...

Each rank first checks the sharded model against an unsharded copy of rank 0's initial weights (which the
config's ``fsdp_cpu_ram_efficient_loading`` broadcasts, although every rank initialises its own): the
gradients gathered after one backward over both ranks' halves of a batch must equal the copy's over the
whole batch. It checks that an EMA teacher in ``extra_state`` and an ``export_fn`` are refused, then trains
(a) ``max_steps`` steps uninterrupted (and evaluates the trained, sharded model over evaluation shards of
unequal batch counts), (b) the same run "crashing" in the first micro-step of optimizer
step ``crash_after_steps + 1`` (inside a gradient accumulation), and (c) a resume of (b) from its latest
checkpoint in the same process
(which is what needs ``load_checkpoint``'s reset of accelerate's GradientState; a resume in a new job, as
after a real crash, was checked by hand to be exact too). It writes ``DIR/rank<r>.json``: distributed type,
local shard sizes, the checks, the evaluations (each rank's clips, logits and forward count, the gathered
metrics), the losses of (a) and (c) and, on rank 0, their full parameters gathered from the shards.

accelerate 1.15 only turns FSDP on for GPU-like distributed types: on CPU it silently trains with DDP
(``DistributedType.MULTI_CPU``). PyTorch's FSDP2 itself runs on CPU with gloo, so this script (never the
library) marks the shared process state as multi-GPU before the loop builds its ``Accelerator``; with
``--use_fsdp``/``fsdp_version: 2`` accelerate then prepares a real FSDP2 model, sharded over the 2 CPU
processes.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_train_script import Crash, SyntheticStream, crashing_step  # noqa: E402

#: a ViT of the library small enough for a CPU test: AudioMAE's pre-LN blocks (``PreLNBlock``, what the
#: FSDP config wraps), on 32 frames x 32 mel bins (a 4 x 4 grid of 8 x 8 patches)
TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 8,
    "num_mel_bins": 32,
    "max_length": 32,
    "num_labels": 3,
    "hidden_dropout_prob": 0.1,  # random draws, so exact resume needs the restored RNG state
    "drop_path_rate": 0.0,
}


def tiny_config():
    import hf_audiorep

    return hf_audiorep.config_from_preset("audiomae-tiny", **TINY)


def synthetic_spectrograms(num_examples=32, seed=123):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_examples, TINY["max_length"], TINY["num_mel_bins"], generator=generator)
    labels = torch.randint(0, TINY["num_labels"], (num_examples,), generator=generator)
    return features, labels


def classification_step(record=None):
    def step(model, batch):
        logits = model(input_values=batch["waveforms"]).logits
        loss = F.cross_entropy(logits, batch["labels"])
        if record is not None:
            record.setdefault("losses", []).append(loss.item())
        return loss, {}

    return step


def force_fsdp_on_cpu() -> None:
    """Let accelerate's FSDP branch run on CPU processes (see the module docstring)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType

    state = PartialState(cpu=True)
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU  # shared state: what AcceleratorState reads


def full_parameters(loop) -> dict[str, list[float]] | None:
    """The trained weights gathered from every rank's shards (collective); on the main process only."""
    state = loop.accelerator.get_state_dict(loop.prepared_model)
    if not loop.accelerator.is_main_process:
        return None
    return {k: v.float().reshape(-1).tolist() for k, v in sorted(state.items())}


def gradient_check(loop, reference, features, labels) -> dict:
    """One backward of the sharded model on this rank's half of a batch vs the unsharded ``reference`` on
    the whole batch (eval mode: no dropout or patch-out draws); the mean over ranks of the halves' mean
    losses is the whole batch's mean loss, so the gathered gradients must be the reference's."""
    accelerator = loop.accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    half = len(features) // world
    mine = slice(rank * half, (rank + 1) * half)
    model = loop.prepared_model
    model.eval()
    F.cross_entropy(model(input_values=features[mine]).logits, labels[mine]).backward()
    sharded = {n: p.grad.full_tensor() for n, p in model.named_parameters()}  # collective
    weights = {n: p.detach().full_tensor() for n, p in model.named_parameters()}
    reference.eval()
    F.cross_entropy(reference(input_values=features).logits, labels).backward()
    expected = dict(reference.named_parameters())
    return {
        "max_weight_difference": max((weights[n] - expected[n]).abs().max().item() for n in expected),
        "max_grad_difference": max((sharded[n] - expected[n].grad).abs().max().item() for n in expected),
        "max_reference_grad": max(expected[n].grad.abs().max().item() for n in expected),
        "names_match": sorted(sharded) == sorted(expected),
    }


class SpectrogramFeatures:
    """The tiny model's front end for the evaluation below: a "waveform" of 32 x 32 samples is the
    spectrogram itself (a stand-in clip of silence becomes a spectrogram of zeros)."""

    def batch_features(self, waveforms, lengths):
        return waveforms.reshape(len(waveforms), TINY["max_length"], TINY["num_mel_bins"]), None


def evaluation_batches(num_clips: int, rank: int, world_size: int, batch_size: int = 2) -> list[dict]:
    """Clip ``i`` of ``num_clips`` goes to rank ``i % world_size``, in batches of ``batch_size``: with 5
    clips rank 0 has 2 batches and rank 1 one; with 1 clip rank 1 has none."""
    features, labels = synthetic_spectrograms(num_clips, seed=7)
    targets = F.one_hot(labels, TINY["num_labels"]).float()
    mine = torch.arange(rank, num_clips, world_size)
    return [
        {
            "waveforms": features[i].reshape(len(i), -1),
            "lengths": torch.full((len(i),), features[0].numel()),
            "labels": targets[i],
            "clips": i,
        }
        for i in mine.split(batch_size)
        if len(i)
    ]


def sharded_evaluations(loop, clip_counts=(5, 1)) -> dict:
    """``evaluate_classifier`` and ``collect_predictions`` of the sharded model over shards of unequal batch
    counts (every forward is a collective: without lockstep the rank with more batches waits forever)."""
    from hf_audiorep.evaluation import collect_predictions, evaluate_classifier

    accelerator = loop.accelerator
    forwards = []
    hook = loop.model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    found = {}
    for num_clips in clip_counts:
        batches = evaluation_batches(num_clips, accelerator.process_index, accelerator.num_processes)
        before = len(forwards)
        metrics = evaluate_classifier(loop.model, batches, SpectrogramFeatures(), accelerator)
        logits, _ = collect_predictions(
            loop.model, batches, SpectrogramFeatures(), accelerator.device, accelerator
        )
        found[str(num_clips)] = {
            "metrics": metrics,
            "clips": [c for b in batches for c in b["clips"].tolist()],
            "logits": logits.tolist(),
            "forwards": len(forwards) - before,
        }
    hook.remove()
    return found


def refusals(make_loop) -> dict:
    """What the loop says to an EMA teacher and to an export_fn under FSDP."""
    found = {}
    try:
        make_loop(ema=True)
        found["ema"] = None
    except NotImplementedError as err:
        found["ema"] = str(err)
    loop = make_loop()
    loop.export_fn = lambda model: model
    try:
        loop.run()
        found["export_fn"] = None
    except NotImplementedError as err:
        found["export_fn"] = str(err)
    return found


@dataclass
class ScriptArguments:
    crash_after_steps: int = 2


def main(argv=None) -> None:
    from transformers import AutoModelForAudioClassification, set_seed

    from hf_audiorep.training import TrainingArguments, TrainLoop

    parser = HfArgumentParser((TrainingArguments, ScriptArguments))
    base_args, script_args = parser.parse_args_into_dataclasses(args=argv)
    force_fsdp_on_cpu()
    features, labels = synthetic_spectrograms()
    base = Path(base_args.output_dir)

    from accelerate import PartialState

    from hf_audiorep.training import ModelEMA

    state = PartialState()
    base.mkdir(parents=True, exist_ok=True)
    (base / f"pid{state.process_index}").write_text(str(os.getpid()))  # for the test to kill it after a hang

    def loop_for(output_dir, step_fn, resume=None, init_seed=0, ema=False):
        args = TrainingArguments(**{**base_args.to_dict(), "output_dir": str(output_dir)})
        args.resume_from_checkpoint = resume
        set_seed(init_seed)
        model = AutoModelForAudioClassification.from_config(tiny_config())
        stream = SyntheticStream(
            features, labels, batch_size=2, seed=1, rank=state.process_index, world_size=state.num_processes
        )
        extra_state = {"teacher": ModelEMA(model.audiomae)} if ema else None
        return TrainLoop(args, model, stream, step_fn, extra_state=extra_state)

    rank = state.process_index
    set_seed(0)
    reference_model = AutoModelForAudioClassification.from_config(tiny_config())
    # Every rank but 0 starts from other weights: the broadcast from rank 0 must replace them.
    loop_g = loop_for(base / "g", classification_step(), init_seed=1000 * rank)
    check = gradient_check(loop_g, copy.deepcopy(reference_model), features[:4], labels[:4])
    refused = refusals(lambda ema=False: loop_for(base / "r", classification_step(), ema=ema))

    reference = {}
    loop_a = loop_for(base / "a", classification_step(reference))
    loop_a.run()
    accelerator = loop_a.accelerator
    result = {
        "rank": rank,
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "fsdp_version": accelerator.state.fsdp_plugin.fsdp_version,
        "prepared_model_class": type(loop_a.prepared_model).__name__,
        "shard_numels": {n: p.to_local().numel() for n, p in loop_a.prepared_model.named_parameters()},
        "gradient_check": check,
        "refused": refused,
        "losses_reference": reference["losses"],
        "params_reference": full_parameters(loop_a),
        "evaluations": sharded_evaluations(loop_a),
    }
    try:
        # The crash comes in the first micro-step of the next optimizer step: inside an accumulation.
        calls = script_args.crash_after_steps * base_args.gradient_accumulation_steps
        loop_for(base / "b", crashing_step(classification_step(), calls)).run()
        raise AssertionError("the simulated crash did not happen")
    except Crash:
        pass
    resumed = {}
    loop_c = loop_for(base / "b", classification_step(resumed), resume="latest")
    summary = loop_c.run()
    result.update(
        resumed_from=summary["resumed_from_checkpoint"],
        losses_resumed=resumed["losses"],
        params_resumed=full_parameters(loop_c),
    )
    (base / f"rank{rank}.json").write_text(json.dumps(result))
    loop_c.finish()


if __name__ == "__main__":
    main(sys.argv[1:])
