"""Mutation testing of hf_audiorep with mutmut, one module at a time, each with only its own tests.

Run through ``scripts/mutation.sh``; see docs/testing.md. For each target of ``targets.toml`` this
builds a scratch project under ``build/mutation/<module>/`` (copies of ``hf_audiorep/``, ``tests/``,
``recipes/``, a ``pytest.ini`` without the suite's ``addopts`` and a generated ``setup.cfg`` holding the
``[mutmut]`` section), runs ``mutmut run`` there, and records per module the number of mutants, how many
the tests killed, how many survived, timed out or reached no test, and the score
``(killed + timeout) / (mutants - skipped)`` (mutmut's own definition: a mutant no test reaches counts
against the score). Results accumulate in ``build/mutation/results.json``; ``build/mutation/report.md``
lists them with every surviving mutant's diff.
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = Path(__file__).with_name("targets.toml")
BUILD = ROOT / "build" / "mutation"
RESULTS = BUILD / "results.json"
REPORT = BUILD / "report.md"

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), folded into the report's columns.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no_tests", 33: "no_tests", 34: "skipped"}
STATUS.update({36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"})
STATUS.update({37: "killed", -11: "segfault", -9: "segfault", None: "not_checked"})
COLUMNS = ("killed", "survived", "timeout", "no_tests", "suspicious", "segfault", "skipped", "not_checked")


def load_targets() -> tuple[dict, list[dict]]:
    data = tomllib.loads(TARGETS.read_text(encoding="utf-8"))
    return data.get("defaults", {}), data["target"]


def select(targets: list[dict], names: list[str]) -> list[dict]:
    """Targets named by path (``hf_audiorep/data/augment.py``), dotted or short name (``augment``)."""
    if not names:
        return targets
    chosen = []
    for name in names:
        key = name.removesuffix(".py").replace(".", "/")
        hits = [t for t in targets if t["module"].removesuffix(".py").endswith(key)]
        # A whole path component wins over a suffix: "_layers" is modeling/_layers.py, not also
        # modeling/_zipformer_layers.py.
        exact = [t for t in hits if ("/" + t["module"].removesuffix(".py")).endswith("/" + key)]
        hits = exact or hits
        if not hits:
            sys.exit(f"no target matches {name!r}; targets: {', '.join(t['module'] for t in targets)}")
        chosen += [t for t in hits if t not in chosen]
    return chosen


def slug(module: str) -> str:
    return module.removeprefix("hf_audiorep/").removesuffix(".py").replace("/", ".")


def snapshot(source: Path, destination: Path, attempts: int = 5) -> None:
    """Copy the package, re-reading any module caught empty while an editor was rewriting it."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(source, destination, ignore=ignore)
    for _ in range(attempts):
        empty = [
            p
            for p in destination.rglob("*.py")
            if p.stat().st_size == 0 and (source / p.relative_to(destination)).stat().st_size
        ]
        if not empty:
            return
        time.sleep(2)
        for p in empty:
            shutil.copy2(source / p.relative_to(destination), p)
    sys.exit(f"{source} keeps changing under the copy: {[str(p) for p in empty]}")


def prepare(target: dict, defaults: dict, workdir: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """A fresh scratch project for one target; returns the test paths kept (missing files are skipped)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for name in ("hf_audiorep", "tests", "recipes"):  # copies, not links: others may be editing them
        snapshot(ROOT / name, workdir / name)

    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "pytest.ini", encoding="utf-8")
    ini.remove_option("pytest", "addopts")  # -ra --durations=15 on every mutant is only noise
    with open(workdir / "pytest.ini", "w", encoding="utf-8") as f:
        ini.write(f)

    tests = [t for t in target["tests"] if (ROOT / t.split("::")[0]).exists() and t not in skip]
    for missing in sorted(set(target["tests"]) - set(tests)):
        print(f"    (leaving out {missing}: {'left out' if missing in skip else 'no such file'})")
    pytest_args = list(defaults.get("pytest_args", []))
    for node in target.get("deselect", []):
        pytest_args += ["--deselect", node]
    cfg = configparser.ConfigParser(interpolation=None)
    cfg["mutmut"] = {
        "source_paths": "\nhf_audiorep",
        "only_mutate": "\n" + target["module"],
        "also_copy": "\npytest.ini\nrecipes/",
        "pytest_add_cli_args": "\n" + "\n".join(pytest_args),
        "pytest_add_cli_args_test_selection": "\n" + "\n".join(tests),
        # torch is not fork-safe once it has run: fork every mutant from a server that only collected.
        "process_isolation": "forkserver",
        "use_git_change_detection": "false",
        "timeout_multiplier": str(defaults.get("timeout_multiplier", 10.0)),
    }
    with open(workdir / "setup.cfg", "w", encoding="utf-8") as f:
        cfg.write(f)
    return tests


def statuses(workdir: Path, module: str) -> dict[str, str]:
    """Status of every mutant of ``module`` in a finished run, read from mutmut's meta file."""
    meta = json.loads((workdir / "mutants" / (module + ".meta")).read_text(encoding="utf-8"))
    return {name: STATUS.get(code, "suspicious") for name, code in meta["exit_code_by_key"].items()}


def summarise(status_by_name: dict[str, str], workdir: Path, module: str) -> dict:
    """Counts, score, and the diff of every mutant not killed (through mutmut's own code)."""
    counts = dict.fromkeys(COLUMNS, 0)
    for status in status_by_name.values():
        counts[status] += 1
    survivors = [
        {"name": name, "status": status}
        for name, status in status_by_name.items()
        if status in ("survived", "no_tests", "suspicious", "segfault", "not_checked")
    ]
    total = sum(counts.values())
    tested = total - counts["skipped"]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        from mutmut.configuration import reset_config
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        reset_config()
        for s in survivors:
            try:
                s["diff"] = get_diff_for_mutant(s["name"], path=module)
            except Exception as e:  # a report without one diff is still a report
                s["diff"] = f"(no diff: {e!r})"
    finally:
        os.chdir(cwd)
    return {
        "mutants": total,
        **counts,
        "score": round(100 * (counts["killed"] + counts["timeout"]) / tested, 1) if tested else None,
        "survivors": survivors,
    }


def run_target(
    target: dict,
    defaults: dict,
    max_children: int,
    previous: dict | None = None,
    exclude: tuple[str, ...] = (),
) -> dict:
    """One mutmut run; with ``previous`` (a full run's result) only the mutants it left alive are run again.

    Tests only ever get added between the two runs, so a mutant killed before is still killed, and only the
    test files added since need to run: the rerun takes minutes where the full run took many.
    """
    module = target["module"]
    workdir = BUILD / slug(module)
    rerun = [s["name"] for s in previous["survivors"]] if previous else []
    digest = hashlib.sha1((ROOT / module).read_bytes()).hexdigest()
    if rerun and previous.get("module_sha1", digest) != digest:
        # mutmut numbers a function's mutants in order: after an edit the old names point at other mutants.
        print(
            f"== {module}: changed since the run of {previous['date']}, so its survivors' names no longer "
            "name the same mutants; run it again without --survivors"
        )
        return previous
    print(
        f"== {module}"
        + (f" (again: the {len(rerun)} mutants not killed on {previous['date']})" if rerun else "")
    )
    # A rerun needs only the test files added or changed since: the others already failed to kill these.
    skip = set(exclude)
    if rerun:
        since = previous.get("finished_at", 0)
        skip |= {t for t in previous["tests"] if (ROOT / t.split("::")[0]).stat().st_mtime < since}
    tests = prepare(target, defaults, workdir, skip=tuple(skip))
    if rerun and not tests:
        print("   no test file added since the last full run: nothing to rerun")
        return previous
    mutmut = Path(sys.executable).with_name("mutmut")
    start = time.monotonic()
    with open(workdir / "mutmut.log", "w", encoding="utf-8") as log:
        proc = subprocess.run(
            [str(mutmut), "run", "--max-children", str(max_children), *rerun],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
    wall = time.monotonic() - start
    if proc.returncode != 0:
        tail = (workdir / "mutmut.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        print(tail)
        print(f"   mutmut failed (exit {proc.returncode}); full log: {workdir / 'mutmut.log'}")
        return {"module": module, "error": f"mutmut exit {proc.returncode}", "tests": tests}
    # mutmut prints its rate over the mutant phase (with a fork server it records no per-mutant durations).
    log_text = (workdir / "mutmut.log").read_text(encoding="utf-8", errors="replace")
    rate = re.findall(r"([0-9.]+) mutations/second", log_text)
    status_by_name = statuses(workdir, module)
    if rerun:
        # Killed in the full run stay killed; the rerun decides the others.
        # A mutant the new tests do not reach keeps its old status ("survived" stays "survived").
        before = {s["name"]: s["status"] for s in previous["survivors"]}
        gone = [n for n in rerun if n not in status_by_name]
        if gone:
            print(f"   {len(gone)} survivors no longer exist (the module changed): rerun without --survivors")
            return previous
        fresh = {n: before[n] if status_by_name[n] == "no_tests" else status_by_name[n] for n in rerun}
        status_by_name = dict.fromkeys(status_by_name, "killed") | fresh
        killed_before = previous["killed"] + previous["timeout"]
        assert sum(s in ("killed", "timeout") for s in status_by_name.values()) >= killed_before
    result = {
        "module": module,
        "tests": tests,
        "date": dt.date.today().isoformat(),
        "wall_seconds": round(wall),
        "finished_at": time.time(),
        "module_sha1": digest,
        **summarise(status_by_name, workdir, module),
        "seconds_per_mutant": round(1 / float(rate[-1]), 1) if rate and float(rate[-1]) else None,
    }
    if rerun:
        result["rerun_of"] = len(rerun)
        result["tests"] = sorted(set(previous["tests"]) | set(tests))
        result["before"] = previous.get("before") or {
            k: previous[k] for k in ("date", "tests", "mutants", "killed", "timeout", "score")
        }
    print(
        f"   {result['mutants']} mutants: {result['killed']} killed, {result['survived']} survived, "
        f"{result['timeout']} timeout, {result['no_tests']} no tests -> score {result['score']}% "
        f"({result['wall_seconds']} s, {result['seconds_per_mutant']} s per mutant)"
    )
    return result


def write_report(results: dict) -> None:
    lines = [
        "# Mutation testing report (mutmut)",
        "",
        "Score = (killed + timeout) / (mutants - skipped); a mutant no selected test reaches counts as not",
        "killed. Generated by `scripts/mutation.sh`.",
        "",
        "| module | date | mutants | killed | survived | timeout | no tests | score | before new tests "
        "| s / mutant | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for module in sorted(results):
        r = results[module]
        if "error" in r:
            lines.append(f"| `{module}` | | {r['error']} | | | | | | | | |")
            continue
        before = f"{r['before']['score']}% ({r['before']['date']})" if "before" in r else ""
        lines.append(
            f"| `{module}` | {r['date']} | {r['mutants']} | {r['killed']} | {r['survived']} | {r['timeout']} "
            f"| {r['no_tests']} | {r['score']}% | {before} | {r['seconds_per_mutant']} "
            f"| {r['wall_seconds']} |"
        )
    for module in sorted(results):
        survivors = results[module].get("survivors", [])
        if not survivors:
            continue
        lines += ["", f"## {module}: {len(survivors)} not killed", ""]
        for s in survivors:
            diff = s.get("diff", "").rstrip()
            lines += [f"### {s['name']} ({s['status']})", "", "```diff", diff, "```", ""]
    REPORT.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _store(module: str, result: dict) -> dict:
    """Merge one module's result into results.json under a lock: runs of other modules may be writing."""
    with open(BUILD / ".results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
        results[module] = result
        tmp = RESULTS.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
        os.replace(tmp, RESULTS)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="targets to run (path, dotted or short name); default all")
    parser.add_argument("--list", action="store_true", help="list the targets and their tests, run nothing")
    parser.add_argument("--report-only", action="store_true", help="rewrite report.md from results.json")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument(
        "--exclude-tests",
        nargs="+",
        default=[],
        metavar="PATH",
        help="leave these test files of targets.toml out (to measure the score before a new test file)",
    )
    parser.add_argument(
        "--survivors",
        action="store_true",
        help="run again only the mutants the last run of each module left alive, with only the test files "
        "added or changed since (after adding tests)",
    )
    args = parser.parse_args()

    defaults, targets = load_targets()
    chosen = select(targets, args.modules)
    if args.list:
        for t in chosen:
            print(t["module"], "<-", " ".join(t["tests"]))
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    if not args.report_only:
        for target in chosen:
            previous = results.get(target["module"]) if args.survivors else None
            if previous is not None and "error" in previous:
                previous = None
            exclude = tuple(args.exclude_tests)
            result = run_target(target, defaults, args.max_children, previous, exclude)
            results = _store(target["module"], result)
    write_report(results)
    print(f"report: {REPORT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
