#!/usr/bin/env bash
# Mutation testing (mutmut) of the modules in scripts/mutation/targets.toml, each with only its own tests.
# Slow (minutes per module) and so not run in CI. Usage:
#   .venv/bin/pip install "mutmut==3.8.1"        # once; not a project dependency
#   bash scripts/mutation.sh                      # every target
#   bash scripts/mutation.sh metrics augment      # some targets (path, dotted or short name)
#   bash scripts/mutation.sh --list               # the targets and their test files
#   bash scripts/mutation.sh --survivors metrics  # after adding tests: only the mutants left alive
# Results: build/mutation/report.md (scores and the diff of every surviving mutant), results.json.
# See docs/testing.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! [ -x .venv/bin/mutmut ]; then
  echo 'mutmut is not installed: .venv/bin/pip install "mutmut==3.8.1"' >&2
  exit 1
fi
# The test suite's offline environment (scripts/test.sh), and one thread per mutant: torch is forked.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
HF_HOME="$(mktemp -d)"
export HF_HOME
trap 'rm -rf "$HF_HOME"' EXIT
exec nice -n "${MUTATION_NICE:-15}" .venv/bin/python scripts/mutation/run.py "$@"
