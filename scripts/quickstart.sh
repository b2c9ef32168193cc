#!/usr/bin/env bash
# Installs hf_audiorep and runs the main job, CAT pre-training, on the embedded corpus (CPU, minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
export HF_HUB_DISABLE_TELEMETRY=1
# Every core for the one process: accelerate launch otherwise sets OMP_NUM_THREADS=1 unless --cpu is given,
# which halves the speed of a CPU run on two cores.
exec .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
  --dynamo_backend no --num_cpu_threads_per_process "$(nproc)" recipes/pretrain_cat.py \
  --output_dir outputs/quickstart "$@"
