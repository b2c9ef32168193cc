"""Running the ``hf-audiorep`` command as a user does: a fresh Python, offline."""

import os
import subprocess
import sys


def hf_audiorep_cli(*args, timeout=300, stdin=None) -> subprocess.CompletedProcess:
    """``python -m hf_audiorep.cli ARGS`` with the Hub offline; stdout and stderr captured as text. ``stdin``:
    a file whose bytes are piped in (none by default, never the terminal pytest runs in)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(stdin, "rb") if stdin is not None else open(os.devnull, "rb") as source:
        return subprocess.run(
            [sys.executable, "-m", "hf_audiorep.cli", *map(str, args)],
            stdin=source,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
