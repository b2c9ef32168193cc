"""Pre-train a CAT encoder (multi-resolution stem + post-LN ViT) by bootstrapping an EMA teacher, with
optional representation regularization (RR) toward a frozen encoder; labels are ignored.

Runs with no arguments on the embedded corpus (the `cat-small` preset, 1,200 steps, minutes on a CPU), probes
the encoder (a linear probe on the corpus test split) at the initialisation and every 400 steps, and ends
with a table of the initialisation's probe beside the trained encoder's, a plot of the probe against the
step (`probe_curve.png`) and `eval_results.json`:

    accelerate launch recipes/pretrain_cat.py

With RR toward a frozen encoder (a CLAP model, any model of this library, or any AutoModel with a pooled
output; embeddings computed on the fly with its own feature extractor and sample rate):

    accelerate launch recipes/pretrain_cat.py --rr_teacher laion/clap-htsat-unfused
    accelerate launch recipes/pretrain_cat.py --rr_teacher outputs/finetune   # a fine-tuned hf_audiorep model

or from a precomputed column of the dataset (`--rr_column clap_embedding`).

At the reference scale (cat-base, AudioSet streamed from the Hub, 96 clips x 4 clones per GPU, bf16):

    accelerate launch --multi_gpu --num_processes 8 recipes/pretrain_cat.py --preset cat-base \
        --dataset agkphysics/AudioSet --dataset_config unbalanced --streaming \
        --rr_teacher laion/clap-htsat-unfused --per_device_batch_size 96 --learning_rate 5e-4 \
        --warmup_steps 53333 --max_steps 400000 --clip_seconds 10 --max_length 1024 --mixed_precision bf16 \
        --probe_dataset agkphysics/AudioSet --probe_dataset_config balanced --output_dir outputs/cat-base

The output directory holds the `CATForPreTraining` checkpoint (student encoder, decoder, RR projector), its
`preprocessor_config.json`, and `eval_results.json` with the final probe mAP. `AutoModel.from_pretrained`
on it gives the encoder; fine-tune with `recipes/finetune.py --model_name_or_path <output_dir>`.

The job itself is `hf_audiorep.bootstrap_recipe`, shared with `recipes/pretrain_bat.py`; this script names
the model family, its default preset and output directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from hf_audiorep.bootstrap_recipe import (
    BootstrapModelArguments,
    BootstrapTrainingArguments,
    run_bootstrap_pretraining,
)
from hf_audiorep.hub_errors import run_recipe
from hf_audiorep.modeling import CATForPreTraining

# The step the job runs, reachable from the recipe module (tests patch its __call__ through it).
from hf_audiorep.objectives import BootstrapPretrainingStep  # noqa: F401


@dataclass
class ModelArguments(BootstrapModelArguments):
    preset: str = "cat-small"
    """architecture preset for a fresh model: cat-small, cat-base, or eat-base (no stem, no RR)"""


@dataclass
class CATPretrainTrainingArguments(BootstrapTrainingArguments):
    output_dir: str = "outputs/pretrain-cat"
    # The main job: long enough for cat-small's mean-pooled embedding to pass a linear model of its input's
    # statistics on the corpus, short enough for minutes on two cores; four probes keep the curve and leave
    # the time to training (docs/benchmarks.md, "More steps and less masking for the main job").
    max_steps: int = 1200
    eval_steps: int | None = 400


def main(argv: list[str] | None = None) -> dict:
    return run_bootstrap_pretraining(argv, CATForPreTraining, ModelArguments, CATPretrainTrainingArguments)


if __name__ == "__main__":
    run_recipe(main)  # an unreachable Hub: one line from rank 0 and exit status 2, not a traceback per rank
