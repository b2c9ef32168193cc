#!/usr/bin/env bash
# Runs the test suite offline with fresh caches: no Hub traffic, no telemetry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
HF_HOME="$(mktemp -d)"
export HF_HOME
trap 'rm -rf "$HF_HOME"' EXIT
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
