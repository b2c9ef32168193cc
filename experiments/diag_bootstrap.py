"""Why does CAT's (or BAT's) bootstrap lose information at CPU scale? Measure it, one candidate at a time.

Trains the pre-training model of a bootstrap preset (`CATForPreTraining` for the default ``cat-small``,
`BATForPreTraining` for ``bat-small``) on the embedded corpus with the library's own pieces --
`build_ema_teacher`, `BootstrapPretrainingStep.teacher_targets`, the model's losses, AdamW + warm-up +
cosine and gradient clipping as `recipes/pretrain_cat.py` sets them -- but on features computed once, so
one configuration takes minutes. Every ``--every`` steps it prints, on a fixed set of test clips:

- the linear-probe mAP of the student encoder's CLS and of the mean of its patch tokens (logistic
  regression fitted on ``--probe_train_clips`` training clips, scored on the test split);
- collapse measures of those two embeddings and of the teacher's targets: mean per-dimension std over
  clips, effective rank (exp of the entropy of the normalised singular values) and the share of the top
  principal component;
- the share of the targets' variance that depends on the patch position only (the same in every clip);
- the clip-level (CLS) target: its norm against the norm of a patch target, and its spread over clips;
- the patch and CLS losses and the gradient norm each alone puts on the encoder;
- whether the decoder uses the encoder at all: on the test clips with one fixed mask, the patch loss of the
  decoder given the encoder's output, given zeros in its place (what the decoder predicts from the mask and
  its own positions alone), and the loss of the best position-only prediction (each patch position's mean
  target over the clips) -- a decoder whose loss is that of the zeros has learned the targets' positional
  part without the encoder.

    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/diag_bootstrap.py --steps 200 --every 50
    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/diag_bootstrap.py --set cls_rr_reduction=mean
    OMP_NUM_THREADS=1 PYTHONPATH=. python experiments/diag_bootstrap.py --preset bat-small \
        --set decoder_type=transformer

Any field of the preset's config can be overridden with ``--set name=value`` (e.g. ``--set ema_decay=0.999``).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import time

import torch
from accelerate import PartialState
from transformers import get_cosine_schedule_with_warmup, set_seed

import hf_audiorep
from hf_audiorep.data.arguments import DataArguments, StreamFactory, load_sources
from hf_audiorep.evaluation.linear_probe import linear_probe
from hf_audiorep.modeling import AudioFbankFeatureExtractor, BATConfig, BATForPreTraining, CATForPreTraining
from hf_audiorep.modeling._bootstrap import compute_block_mask_2d
from hf_audiorep.modeling._layers import masked_mean
from hf_audiorep.objectives import BootstrapPretrainingStep, build_ema_teacher
from hf_audiorep.training import TrainingArguments


def _features(role: str, data: DataArguments, feature_extractor, limit: int | None):
    """``(input_values, labels)`` of the first ``limit`` clips of ``role`` (deterministic order)."""
    sources = load_sources(data, roles=("train", "test"))
    train = TrainingArguments(output_dir="/tmp/diag", per_device_batch_size=32, cpu=True)
    stream = StreamFactory.for_process(
        sources, data, train, feature_extractor.sampling_rate, PartialState(cpu=True)
    )
    inputs, labels = [], []
    for batch in stream(role, train=False, sharded=False):
        values, _ = feature_extractor.batch_features(batch["waveforms"].float(), batch["lengths"])
        inputs.append(values)
        labels.append(batch["labels"])
        if limit is not None and sum(len(x) for x in inputs) >= limit:
            break
    inputs, labels = torch.cat(inputs), torch.cat(labels)
    return (inputs[:limit], labels[:limit]) if limit else (inputs, labels)


def collapse(x: torch.Tensor) -> dict[str, float]:
    """Per-dimension std, effective rank and top-PC share of ``(N, D)`` embeddings."""
    x = x.double()
    centred = x - x.mean(0)
    singular = torch.linalg.svdvals(centred)
    energy = singular.pow(2)
    p = singular / singular.sum()
    return {
        "std": float(centred.std(0).mean()),
        "erank": float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())),
        "top_pc": float(energy[0] / energy.sum()),
    }


@torch.no_grad()
def embed(encoder, inputs: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """CLS and mean-of-patches embeddings of the frozen encoder."""
    was = encoder.training
    encoder.eval()
    cls, mean = [], []
    for i in range(0, len(inputs), batch):
        hidden = encoder(inputs[i : i + batch]).last_hidden_state
        cls.append(hidden[:, 0])
        mean.append(hidden[:, 1:].mean(1))
    encoder.train(was)
    return torch.cat(cls), torch.cat(mean)


def probe(encoder, train, test) -> dict[str, float]:
    results = {}
    train_cls, train_mean = embed(encoder, train[0])
    test_cls, test_mean = embed(encoder, test[0])
    for name, (a, b) in {"cls": (train_cls, test_cls), "mean": (train_mean, test_mean)}.items():
        results[f"probe_{name}"] = linear_probe(a.numpy(), train[1].numpy(), b.numpy(), test[1].numpy())[
            "probe_mAP"
        ]
        for key, value in collapse(b).items():
            results[f"{name}_{key}"] = value
    return results


@torch.no_grad()
def decoder_use(model, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Patch losses (the model's formula) on one fixed mask: the decoder given the encoder's output, given
    zeros instead, and the best prediction from the patch position alone."""
    config, was = model.config, model.training
    model.eval()
    grid_t, grid_f = model.grid_shape(inputs.shape[-2])
    generator = torch.Generator().manual_seed(1234)
    mask = compute_block_mask_2d(
        len(inputs), grid_t, grid_f, config.mask_ratio, config.mask_length, config.mask_prob_adjust, generator
    )
    encoded = model.base_model(inputs, mask=mask).last_hidden_state
    weights, scale = mask.float(), config.hidden_size**-0.5

    def loss(predictions: torch.Tensor) -> float:
        return float(masked_mean((predictions.float() - targets).pow(2).sum(-1) * scale, weights))

    row = {
        "decoder_loss": loss(model.decoder(encoded, mask, grid_t, None)),
        "decoder_loss_encoder_zeroed": loss(model.decoder(torch.zeros_like(encoded), mask, grid_t, None)),
        "position_only_loss": loss(targets.mean(0, keepdim=True).expand_as(targets)),
    }
    model.train(was)
    return row


def grad_norm(model, loss: torch.Tensor) -> float:
    params = [p for p in model.base_model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum(g.pow(2).sum() for g in grads if g is not None)))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cat-small")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--every", type=int, default=50, help="measure every N steps (and at step 0)")
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=30, help="warm-up steps")
    parser.add_argument("--clip_seconds", type=float, default=4.0)
    parser.add_argument("--train_clips", type=int, default=None, help="pre-training clips (default: all)")
    parser.add_argument("--probe_train_clips", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], help="CATConfig override name=value")
    parser.add_argument("--json", default=None, help="write the measurements to this file")
    args = parser.parse_args()

    overrides = {"rr_embedding_dim": 0, "max_length": math.ceil(args.clip_seconds * 100 / 16) * 16}
    for item in args.set:
        name, value = item.split("=", 1)
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    config = hf_audiorep.config_from_preset(args.preset, **overrides)
    feature_extractor = AudioFbankFeatureExtractor(target_length=config.max_length)
    data = DataArguments(clip_seconds=args.clip_seconds, num_decode_threads=2)
    start = time.perf_counter()
    train = _features("train", data, feature_extractor, args.train_clips)
    probe_train = (train[0][: args.probe_train_clips], train[1][: args.probe_train_clips])
    test = _features("test", data, feature_extractor, None)
    print(f"features: {len(train[0])} train, {len(test[0])} test clips ({time.perf_counter() - start:.0f} s)")

    set_seed(args.seed)
    model = (BATForPreTraining if isinstance(config, BATConfig) else CATForPreTraining)(config)
    teacher = build_ema_teacher(model)
    step = BootstrapPretrainingStep(feature_extractor, teacher)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "token" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, args.warmup, args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    history = []

    def measure(global_step: int, logs: dict) -> None:
        row = {"step": global_step, **logs, **probe(model.base_model, probe_train, test)}
        targets = step.teacher_targets(test[0][:64], None)
        row.update(decoder_use(model, test[0][:64], targets))
        row.update({f"target_{k}": v for k, v in collapse(targets.reshape(-1, targets.shape[-1])).items()})
        # Positional collapse: the share of the targets' variance that is the same in every clip (a function
        # of the patch position only), which instance normalisation over time does not prevent.
        centred = targets - targets.mean((0, 1), keepdim=True)
        row["target_position_share"] = float(
            centred.mean(0).pow(2).sum() * len(targets) / centred.pow(2).sum()
        )
        clip_targets = targets.mean(1)
        row["clip_target_norm"] = float(clip_targets.norm(dim=-1).mean())
        row["patch_target_norm"] = float(targets.norm(dim=-1).mean())
        row.update({f"clip_target_{k}": v for k, v in collapse(clip_targets).items()})
        history.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)

    measure(0, {})
    model.train()
    logs: dict[str, float] = {}
    for global_step in range(1, args.steps + 1):
        index = torch.randint(len(train[0]), (args.batch,), generator=generator)
        inputs = train[0][index]
        targets = step.teacher_targets(inputs, None)
        outputs = model(input_values=inputs, teacher_targets=targets)
        if global_step % args.every == 0:
            logs = {
                "patch_loss": float(outputs.patch_loss),
                "cls_loss": float(outputs.cls_loss),
                "grad_patch": grad_norm(model, outputs.patch_loss),
                "grad_cls": grad_norm(model, config.cls_loss_weight * outputs.cls_loss),
            }
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 4.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        teacher.update(model.base_model)
        if global_step % args.every == 0:
            measure(global_step, {**logs, "seconds": time.perf_counter() - start})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "config": overrides, "history": history}, handle, indent=1)


if __name__ == "__main__":
    main()
