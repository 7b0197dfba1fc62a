"""Flake hunt: run tests N times, each in a fresh pytest process, and print pass/fail per test and run.

Run ``i`` (0-based) uses torch threads ``threads[i % len(threads)]`` (``MEDSEG_TEST_THREADS``, which
``tests/conftest.py`` applies before any test) and seed ``i`` (``MEDSEG_TEST_SEED``: tests that draw
random data or seed a model through the ``test_seed`` fixture draw other data each run). A test
that both passes and fails across the runs is flaky: its verdict depends on threads, seed or timing.

Usage::

    python benchmarks/flake_hunt.py                          # the slow tests (-m slow), 10 runs
    python benchmarks/flake_hunt.py --runs 4 -- tests/test_embedding_store.py -k store
    make flake-hunt N=10 ARGS="tests/test_embedding_store.py"   # through make (ARGS: pytest arguments)

Exit status 1 when any test failed in any run. Each run's JUnit XML and output are kept in
``--keep`` (default: a temporary folder, removed at the end).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = {"passed": ".", "failed": "F", "error": "E", "skipped": "s", "absent": "-"}


def outcomes(junit: Path) -> dict[str, str]:
    """``test id -> passed | failed | error | skipped`` from one pytest JUnit XML file."""
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("error", "failure", "skipped") if k in kinds), "passed")
        found[test] = "failed" if outcome == "failure" else outcome
    return found


def run_once(index: int, threads: int, pytest_args: list[str], folder: Path) -> dict[str, str]:
    junit, log = folder / f"run-{index}.xml", folder / f"run-{index}.log"
    env = {**os.environ, "MEDSEG_TEST_THREADS": str(threads), "MEDSEG_TEST_SEED": str(index)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *pytest_args]
    with open(log, "w", encoding="utf-8") as out:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    if not junit.is_file():  # pytest could not even collect: every test of the run counts as an error
        return {f"(run {index}: pytest exit {done.returncode}, see {log})": "error"}
    return outcomes(junit)


def table(runs: list[tuple[int, int, dict[str, str]]]) -> tuple[str, int]:
    """The pass/fail table (one row per test, one column per run) and how many tests failed at least once."""
    tests = sorted({test for _, _, found in runs for test in found})
    header = " ".join(f"t{threads}s{index}" for index, threads, _ in runs)
    width = max([len(t) for t in tests] + [4])
    lines = [f"{'test':<{width}}  {header}  fails  verdict"]
    failing = 0
    for test in tests:
        cells = [found.get(test, "absent") for _, _, found in runs]
        fails = sum(c in ("failed", "error") for c in cells)
        passes = cells.count("passed")
        verdict = "ok" if not fails else ("FLAKY" if passes else "FAILS")
        failing += bool(fails)
        row = " ".join(f"{MARK[c]:^{len(f't{th}s{i}')}}" for c, (i, th, _) in zip(cells, runs))
        lines.append(f"{test:<{width}}  {row}  {fails:>5}  {verdict}")
    return "\n".join(lines), failing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="how many fresh pytest processes (default 10)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads, cycled over the runs")
    parser.add_argument("--keep", help="folder for each run's JUnit XML and output (default: a temporary one)")
    parser.add_argument("pytest_args", nargs="*", help="pytest arguments after -- (default: -m slow)")
    args = parser.parse_args()
    if args.runs < 1 or min(args.threads) < 1:
        parser.error("--runs and --threads must be at least 1")
    pytest_args = args.pytest_args or ["-m", "slow"]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        runs = []
        for index in range(args.runs):
            threads = args.threads[index % len(args.threads)]
            found = run_once(index, threads, pytest_args, folder)
            failed = sum(o in ("failed", "error") for o in found.values())
            print(f"run {index + 1}/{args.runs} (threads {threads}, seed {index}): {len(found)} tests, {failed} failed",
                  flush=True)
            runs.append((index, threads, found))
        text, failing = table(runs)
    print(f"\npytest {' '.join(pytest_args)}: {args.runs} runs; column tTsS = torch threads T, seed S; "
          ". passed, F failed, E error, s skipped, - not run")
    print(text)
    print(f"\n{failing} test(s) failed at least once")
    sys.exit(1 if failing else 0)


if __name__ == "__main__":
    main()
