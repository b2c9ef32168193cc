"""The experiments' shared runner records what each run's own process used, and continues a run killed
part-way."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import _runs  # noqa: E402
from _runs import _run_measured, run_recipe  # noqa: E402

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


# A stand-in recipe: records its arguments as its results and its command line as a recipe does.
FAKE_RECIPE = """
import json, shlex, sys
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--output_dir") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "eval_results.json").write_text(json.dumps({"argv": sys.argv[1:]}))
command = shlex.join(["python", sys.argv[0], *sys.argv[1:]])
(out / "train_results.json").write_text(json.dumps({"training_command": command}))
"""


def test_a_run_killed_part_way_resumes_from_its_checkpoints(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "fake.py").write_text(FAKE_RECIPE)
    monkeypatch.setattr(_runs, "ROOT", tmp_path)
    fresh = run_recipe("fake", tmp_path / "fresh", ["--seed", "0"])
    assert fresh["argv"] == ["--seed", "0", "--output_dir", str(tmp_path / "fresh")]
    # A run that left a complete checkpoint and no results: the runner asks the recipe to continue it
    # (the loop refuses to start over on an earlier run's checkpoints), and accepts its recorded command.
    killed = tmp_path / "killed"
    (killed / "checkpoints" / "step_3").mkdir(parents=True)
    resumed = run_recipe("fake", killed, ["--seed", "0"])
    assert resumed["argv"][-2:] == ["--resume_from_checkpoint", "latest"]
    assert run_recipe("fake", killed, ["--seed", "0"]) == resumed  # finished: reused, not run again
    # The resume flag is not an argument of the run: another seed in that folder is still refused.
    with pytest.raises(RuntimeError, match="holds a run with other arguments"):
        run_recipe("fake", killed, ["--seed", "1"])
    recorded = json.loads((killed / "train_results.json").read_text())["training_command"]
    assert shlex.split(recorded)[-2:] == ["--resume_from_checkpoint", "latest"]
