"""Running a script in a fresh Python where hf_audiorep cannot be imported: what a Hub user without the
library gets from ``trust_remote_code=True``."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Hides hf_audiorep from the process (an import hook, and the checkout and editable install off sys.path);
#: the script that follows reads its own arguments from ``sys.argv[2:]``.
HIDE_LIBRARY = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_audiorep" or name.startswith("hf_audiorep."):
                raise ImportError(f"hf_audiorep is hidden in this process: {name}")
            return None

    root = sys.argv[1]
    sys.meta_path.insert(0, _Blocker())
    sys.path[:] = [p for p in sys.path if p not in ("", ".", root) and "editable" not in p]
    try:
        import hf_audiorep  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_audiorep is still importable")
    """
)


def run_without_library(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (dedented) with hf_audiorep hidden, offline, with its own remote-code module cache under
    ``cwd``; ``args`` are its ``sys.argv[2:]``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "modules"))
    return subprocess.run(
        [sys.executable, "-c", HIDE_LIBRARY + textwrap.dedent(script), str(ROOT), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
