"""Pre-train a BAT encoder (ViT with gated attention) by bootstrapping an EMA teacher; labels are ignored.
bat-base pre-trains with a transformer decoder, bat-small with EAT's CNN decoder (the transformer decoder
with its sin-cos positions collapsed the small encoder on a CPU budget; without them, ``conv``, it learns,
a little below the CNN; see `BAT_PRESETS`).

Runs with no arguments on the embedded corpus (the `bat-small` preset, 600 steps, minutes on a CPU), probes
the encoder (a linear probe on the corpus test split) at the initialisation and every 200 steps, and ends
with a table of the initialisation's probe beside the trained encoder's, a plot of the probe against the
step (`probe_curve.png`) and `eval_results.json`:

    accelerate launch recipes/pretrain_bat.py
    accelerate launch recipes/pretrain_bat.py --attention_gate none       # the ungated ViT, for comparison
    accelerate launch recipes/pretrain_bat.py --decoder_type transformer  # bat-base's decoder, small
    accelerate launch recipes/pretrain_bat.py --decoder_type transformer \
        --transformer_decoder_positions conv   # the transformer decoder without absolute positions

At the scale of the released BAT encoder (bat-base, AudioSet streamed from the Hub, 402,610 updates). BAT's
batch, learning rate and schedule are not published: these are our choice, after EAT's configuration:

    accelerate launch --multi_gpu --num_processes 4 recipes/pretrain_bat.py --preset bat-base \
        --dataset agkphysics/AudioSet --dataset_config unbalanced --streaming \
        --per_device_batch_size 12 --learning_rate 5e-4 --warmup_steps 53333 --max_steps 402610 \
        --clip_seconds 10 --max_length 1024 --mixed_precision bf16 \
        --probe_dataset agkphysics/AudioSet --probe_dataset_config balanced --output_dir outputs/bat-base

The output directory holds the `BATForPreTraining` checkpoint (student encoder and decoder), its
`preprocessor_config.json`, and `eval_results.json` with the final probe mAP. `AutoModel.from_pretrained`
on it gives the encoder; fine-tune with `recipes/finetune.py --model_name_or_path <output_dir>`. Every option
of `recipes/pretrain_cat.py` applies (the job is `hf_audiorep.bootstrap_recipe`), RR included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hf_audiorep.bootstrap_recipe import (
    BootstrapModelArguments,
    BootstrapTrainingArguments,
    run_bootstrap_pretraining,
)
from hf_audiorep.hub_errors import run_recipe
from hf_audiorep.modeling import BATConfig, BATForPreTraining
from hf_audiorep.modeling._config_checks import choices

ATTENTION_GATES = choices(BATConfig, "attention_gate")


@dataclass
class ModelArguments(BootstrapModelArguments):
    preset: str = "bat-small"
    """architecture preset for a fresh model: bat-small or bat-base"""
    attention_gate: Literal[ATTENTION_GATES] | None = None
    """output gate of every encoder attention: elementwise (BAT's default) | headwise | none (a plain ViT)"""


@dataclass
class BATPretrainTrainingArguments(BootstrapTrainingArguments):
    output_dir: str = "outputs/pretrain-bat"


def main(argv: list[str] | None = None) -> dict:
    return run_bootstrap_pretraining(argv, BATForPreTraining, ModelArguments, BATPretrainTrainingArguments)


if __name__ == "__main__":
    run_recipe(main)  # an unreachable Hub: one line from rank 0 and exit status 2, not a traceback per rank
