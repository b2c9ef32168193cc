"""Issue "Fit the ecosystem's habits": LoRA against full fine-tuning and a linear probe of the same
pre-trained encoder, on the embedded corpus, each seed a run of the recipe users run.

One encoder, pre-trained once by the library's main job (``recipes/pretrain_cat.py``: cat-small on the
corpus's 4-s clips, seed 0; ``--encoder`` takes another saved model instead), then for each seed:

- linear probe: ``recipes/probe.py --probe linear`` on the frozen encoder's cached features;
- full fine-tuning: ``recipes/finetune.py`` with the setting that fine-tunes CAT without rewriting its conv
  stem (lr 1e-2 for the head, layer decay 0.2, no mixup, 300 steps; docs/benchmarks.md);
- LoRA: the same run with ``--lora_r 8 --lora_alpha 16`` on the architecture's default targets and no layer
  decay (the adapters start as the identity, and the frozen stem cannot be rewritten);
- both again as LP-FT (``--lp_ft true``: the head starts as the logistic-regression probe of the frozen
  encoder) at lr 1e-3, since a random head trained for 3 epochs stays near the label prior;

beside two baselines: the same linear probe of the encoder's random initialisation, and the constant score
(every clip scored alike: each class's AP is its share of positive clips). Columns: test mAP, the trainable
parameters (counted on the model each arm trains), training throughput, peak resident memory and CPU time
of the run's process. A finished run is reused (kept in ``experiments/results/lora_table/``), so the sweep
resumes on a fresh checkout. Prints the table and writes it to ``<work_dir>/summary.md``.

    OMP_NUM_THREADS=1 python experiments/lora_table.py --seeds 0 1 2 --work_dir outputs/lora_table
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _runs import RESULTS, mean_std_cell, report, run_recipe

COMMON = ["--clip_seconds", "4", "--cpu", "true", "--num_decode_threads", "1"]
#: the training recipes' (recipes/probe.py has no progress bar to turn off)
QUIET = ["--disable_progress_bar", "true"]
FINETUNE = [
    "--learning_rate", "1e-2", "--mixup_prob", "0", "--max_steps", "300", "--warmup_steps", "30",
    "--eval_steps", "0", "--checkpointing_steps", "0", *QUIET,
]  # fmt: skip
LORA = ["--layer_decay", "1.0", "--lora_r", "8", "--lora_alpha", "16"]
#: LP-FT (the head starts as the probe fitted on the frozen encoder) at a 10x lower rate: a random head
#: trained for 3 epochs stays near the label prior (docs/benchmarks.md), hiding what the encoder's update adds
LP_FT = [*(("1e-3" if word == "1e-2" else word) for word in FINETUNE), "--lp_ft", "true"]
ARMS = {
    # The archived runs' probe: AdamW for 100 epochs on the raw pooled tokens, the recipe's defaults then
    # (stated, so that a rerun keeps the table's protocol now that the defaults standardise and use L-BFGS).
    "linear probe": (
        "probe",
        ["--probe", "linear", "--token_pooling", "8", "--optimizer", "adamw", "--standardize", "false"]
        + ["--center_positions", "false"],
    ),
    "full fine-tuning": ("finetune", [*FINETUNE, "--layer_decay", "0.2"]),
    "LoRA (r 8)": ("finetune", [*FINETUNE, *LORA]),
    "full fine-tuning, LP-FT": ("finetune", [*LP_FT, "--layer_decay", "0.2"]),
    "LoRA (r 8), LP-FT": ("finetune", [*LP_FT, *LORA]),
}
#: column -> digits shown
COLUMNS = {"test mAP": 3, "trainable parameters": 0, "train clips/s": 1, "peak memory (MB)": 0, "CPU s": 0}


def _archive(*parts: str) -> Path:
    return RESULTS.joinpath("lora_table", *parts[:-1], f"{parts[-1]}.json")


def _encoder(work_dir: Path, steps: int, given: str | None) -> str:
    """The main job's encoder (``recipes/pretrain_cat.py``, its defaults but the step count), or ``given``."""
    if given:
        return given
    output = work_dir / "pretrain_cat-small"
    args = [*COMMON, *QUIET, "--max_steps", str(steps), "--seed", "0", "--checkpointing_steps", "0"]
    # The archive keeps the results; the weights are needed whenever a new arm runs, so re-run if absent.
    archive = _archive(f"pretrain_cat-small_{steps}")
    if archive.exists() and not (output / "model.safetensors").exists():
        archive.unlink()
    run_recipe("pretrain_cat", output, args, archive=archive)
    return str(output)


def _trainable_parameters(encoder: str, arm: str, num_labels: int) -> int:
    """Counted on the model the arm trains: the classifier built from ``encoder`` (all of it for full
    fine-tuning; adapters and head under LoRA, as peft counts them), or the probe's linear head."""
    from transformers import AutoConfig, AutoModelForAudioClassification

    import hf_audiorep  # noqa: F401  (registers the library's models with the Auto classes)

    if arm == "linear probe":
        hidden = AutoConfig.from_pretrained(encoder).hidden_size
        return hidden * num_labels + num_labels
    model = AutoModelForAudioClassification.from_pretrained(encoder, num_labels=num_labels)
    if arm.startswith("LoRA"):
        from hf_audiorep.adapters import apply_lora

        return apply_lora(model, 8, 16.0).get_nb_trainable_parameters()[0]
    return sum(p.numel() for p in model.parameters())


def _test_targets() -> np.ndarray:
    """The corpus's test clips as multi-hot rows over its classes (those the recipes' heads predict)."""
    from hf_audiorep.data.embedded import load_embedded_corpus

    test = load_embedded_corpus(clip_seconds=4)["test"]
    targets = np.zeros((len(test), test.features["labels"].feature.num_classes))
    for row, labels in enumerate(test["labels"]):
        targets[row, labels] = 1
    return targets


def _run(work_dir: Path, encoder: str, arm: str, seed: int, name: str) -> dict:
    recipe, extra = ARMS[arm]
    source = ["--preset", "cat-small", "--max_length", "400"] if encoder == "random" else []
    source = source or ["--model_name_or_path", encoder]
    slug = arm.replace(" (r 8)", "").replace(",", "").replace(" ", "_")
    run = f"{name}_{slug}_s{seed}"
    args = [*source, *extra, *COMMON, "--seed", str(seed)]
    if recipe == "probe":
        args += ["--cache_dir", str(work_dir / "cache" / name)]
    return run_recipe(recipe, work_dir / run, args, archive=_archive(run))


def _row(results: dict, parameters: int) -> dict[str, float]:
    """The table's columns of one run; a probe has no training throughput (its head trains on the cache)."""
    row = {"test mAP": results["test_mAP"], "trainable parameters": parameters}
    if "train_results" in results:
        row["train clips/s"] = results["train_results"]["train_clips_per_second"]
    if "resources" in results:
        row["peak memory (MB)"] = results["resources"]["peak_rss_mb"]
        row["CPU s"] = results["resources"]["cpu_seconds"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="seeds of the probes and fine-tunings"
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="what to compare")
    parser.add_argument(
        "--pretrain_steps", type=int, default=600, help="steps of the main job's pre-training (its default)"
    )
    parser.add_argument("--encoder", help="a saved model to compare on instead of the main job's encoder")
    parser.add_argument("--work_dir", type=Path, default=Path("outputs/lora_table"), help="runs and summary")
    args = parser.parse_args()

    encoder = _encoder(args.work_dir, args.pretrain_steps, args.encoder)
    targets = _test_targets()
    num_labels = targets.shape[1]
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for arm in args.arms:
            results = _run(args.work_dir, encoder, arm, seed, "encoder")
            rows.setdefault(arm, []).append(_row(results, _trainable_parameters(encoder, arm, num_labels)))
        random = _run(args.work_dir, "random", "linear probe", seed, "random_init")
        rows.setdefault("linear probe, random initialisation", []).append(
            _row(random, _trainable_parameters(encoder, "linear probe", num_labels))
        )
    lines = ["| arm | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, values in rows.items():
        cells = [mean_std_cell([v[c] for v in values if c in v], d) for c, d in COLUMNS.items()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    from hf_audiorep.evaluation import chance_baseline

    constant = chance_baseline(targets, targets)["chance_mAP"]  # a constant score's AP is a class's rate
    lines.append(f"| constant score (trivial baseline) | {constant:.3f} | 0 | | | |")
    summary = "\n".join(lines)
    report(summary, args.work_dir)


if __name__ == "__main__":
    main()
