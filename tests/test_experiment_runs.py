"""The experiments' shared runner records what each run's own process used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from _runs import _run_measured  # noqa: E402

ALLOCATE = (
    "import time; block = bytearray({mb} * 1024 * 1024); block[::4096] = b'x' * len(block[::4096]); {tail}"
)


def _measure(tmp_path: Path, mb: int, tail: str = "time.sleep(1)") -> dict:
    # The memory is held for a second: the runner reads the high-water mark every POLL_SECONDS.
    record = tmp_path / f"run_{mb}" / "resources.json"
    _run_measured([sys.executable, "-c", ALLOCATE.format(mb=mb, tail=tail)], {}, record)
    return json.loads(record.read_text())


def test_peak_memory_and_cpu_are_the_runs_own(tmp_path):
    big = _measure(tmp_path, 300)
    # A smaller run after a bigger one reports its own peak (RUSAGE_CHILDREN would repeat the larger), and
    # neither counts this test process's memory (ru_maxrss would: it keeps the forking process's peak).
    small = _measure(tmp_path, 20)
    assert 300 <= big["peak_rss_mb"] < 400
    assert 20 <= small["peak_rss_mb"] < 100
    busy = _measure(tmp_path, 1, "t = time.process_time()\nwhile time.process_time() - t < 0.5: pass")
    assert 0.5 <= busy["cpu_seconds"] < 5


def test_a_failed_run_raises_and_records_nothing(tmp_path):
    record = tmp_path / "failed" / "resources.json"
    with pytest.raises(subprocess.CalledProcessError) as raised:
        _run_measured([sys.executable, "-c", "raise SystemExit(3)"], {}, record)
    assert raised.value.returncode == 3
    assert not record.exists()
