"""Running the ``hf-audiorep`` command as a user does: a fresh Python, offline."""

import os
import subprocess
import sys


def hf_audiorep_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    """``python -m hf_audiorep.cli ARGS`` with the Hub offline; stdout and stderr captured as text."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hf_audiorep.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
