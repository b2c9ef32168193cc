#!/usr/bin/env bash
# Installs hf_audiorep and runs the main job, CAT pre-training, on the embedded corpus (CPU, minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install.sh
export HF_HUB_DISABLE_TELEMETRY=1
exec .venv/bin/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
  --dynamo_backend no recipes/pretrain_cat.py --output_dir outputs/quickstart "$@"
