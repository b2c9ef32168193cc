#!/usr/bin/env bash
# Installs everything hf_audiorep needs into ./.venv from the exact pins, apt packages included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive

# System packages, installed only when missing (the checks take milliseconds):
# - FFmpeg shared libraries: torchcodec (and so datasets.Audio) cannot load without them;
# - headless Chromium and its WebDriver: tests/test_space_browser.py drives the Space in a real browser.
missing=()
# grep without -q reads all of ldconfig's output: an early exit would SIGPIPE it and, under pipefail, fail.
ldconfig -p | grep 'libavcodec\.so\.' >/dev/null || missing+=(ffmpeg)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# torch and torchaudio are pinned together: a torchaudio that does not match torch breaks
# transformers' audio imports (see README, "Installation").
.venv/bin/pip install -q -r requirements-ci.txt
.venv/bin/pip install -q --no-deps -e .
.venv/bin/python -c "import torch, torchaudio, torchcodec, transformers, hf_audiorep; \
print('installed: torch', torch.__version__, '| torchaudio', torchaudio.__version__, \
'| torchcodec', torchcodec.__version__, '| transformers', transformers.__version__, \
'| hf_audiorep', hf_audiorep.__version__)"
