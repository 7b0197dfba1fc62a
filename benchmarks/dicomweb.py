"""A cohort read from a PACS (Orthanc over DICOMweb) against the same cohort read from files.

Starts a private Orthanc (``medseg.io.dicomweb.orthanc``, needs the Debian packages ``orthanc``
and ``orthanc-dicomweb``), stores the demo phantoms on it as DICOM series with DICOM SEG labels
(``medseg pacs demo``), and then:

* loads one case: from its files, from the server with an empty cache (cold), and again (warm);
* runs a pipeline on the test split from the files and from the server (cold cache, then warm),
  timing the runs (``run_pipeline(report=False)``) and comparing every number of metrics.json;
* pushes every result back as SEG and RTSTRUCT: dciodvfy on each object read back from the
  server, its voxels against the result's, and a second push (nothing may be stored again);
* times the one error a wrong password gives before any case runs.

Times are medians over ``--repeats``, as wall-clock seconds and as CPU seconds (this process
plus the Orthanc process): on a shared machine the wall clock mostly measures the other jobs,
the CPU seconds what the work costs. The default methods are the oracle self-check (the truth
as prediction: the run is mostly reading) and an untrained SAM2 on ``--sam2-cases`` test cases
(random weights: meaningless masks, but real numbers to compare).

Usage::

    python benchmarks/dicomweb.py [--repeats 3] [--cases 8] [--sam2-cases 1] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

USER, PASSWORD = "medseg-bench", "bench-password-not-shown"


class Clock:
    """Wall-clock seconds and CPU seconds (this process and the server's) of calls."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)

    def cpu(self) -> float:
        server = self.server.cpu_times()
        return time.process_time() + server.user + server.system

    def timed(self, fn, repeats: int) -> tuple[str, object]:
        """``"W s wall, C s CPU"`` (medians over ``repeats`` calls of ``fn``) and the last result."""
        walls, cpus, result = [], [], None
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), self.cpu()
            result = fn()
            walls.append(time.perf_counter() - wall)
            cpus.append(self.cpu() - cpu)
        return f"{statistics.median(walls):.2f} s wall, {statistics.median(cpus):.2f} s CPU", result


def numbers(out: Path) -> dict:
    data = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    return {key: data[key] for key in ("labels", "methods", "paired", "cases")}


def pipeline(path: Path, cohort: Path, methods: str, cases: list[str] | None) -> Path:
    subset = f"cases: {json.dumps(cases)}\n" if cases else ""
    path.write_text(f"name: {path.stem}\ncohort: {cohort}\nsplit: test\n{subset}methods:\n{methods}", encoding="utf-8")
    return path


def fresh_cache(root: Path, name: str) -> Path:
    home = root / name
    shutil.rmtree(home, ignore_errors=True)
    os.environ["MEDSEG_HOME"] = str(home)
    return home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", type=int, default=8, help="demo phantoms (the last half are the test split)")
    parser.add_argument("--sam2-cases", type=int, default=1, help="test cases the untrained SAM2 runs on (0: none)")
    parser.add_argument("--quick", action="store_true", help="small phantoms, one repeat, no SAM2")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.sam2_cases = 1, 0

    from medseg.errors import ServerError
    from medseg.io import load_labels, load_volume
    from medseg.io.dicomweb import local_object
    from medseg.io.dicomweb.orthanc import LocalOrthanc
    from medseg.pacs_demo import write_pacs_demo
    from medseg.pipeline import load_pipeline, run_pipeline, write_report
    from medseg.pipeline.config import PushSettings

    os.environ.update(MEDSEG_DICOMWEB_USER=USER, MEDSEG_DICOMWEB_PASSWORD=PASSWORD, MEDSEG_EMBEDDINGS="off")
    with tempfile.TemporaryDirectory(prefix="medseg-dicomweb-bench-") as tmp, \
            LocalOrthanc(Path(tmp) / "orthanc", users={USER: PASSWORD}) as server:
        root = Path(tmp)
        fresh_cache(root, "home-setup")
        shape = (8, 48, 48) if args.quick else (32, 128, 128)
        started = time.perf_counter()
        files, on_pacs = write_pacs_demo(root / "cohort", server.url, n_cases=args.cases, shape=shape)
        print(f"Orthanc {server.url}; {args.cases} phantoms {shape} stored in {time.perf_counter() - started:.1f} s")
        test = json.loads(on_pacs.read_text(encoding="utf-8"))["cases"][args.cases - args.cases // 2:]

        # --- one case: files, cold cache, warm cache -----------------------------------------------
        clock = Clock(server.process.pid)
        image_file = root / "cohort" / json.loads(files.read_text(encoding="utf-8"))["cases"][-1]["image"]
        t_file, from_file = clock.timed(lambda: load_volume(image_file), args.repeats)

        def cold_load():
            fresh_cache(root, f"home-load-{time.monotonic_ns()}")
            return load_volume(test[-1]["image"])

        t_cold, _ = clock.timed(cold_load, args.repeats)
        t_warm, from_server = clock.timed(lambda: load_volume(test[-1]["image"]), args.repeats)
        same = from_server.array.tobytes() == from_file.array.tobytes() and from_server.spacing == from_file.spacing \
            and from_server.origin == from_file.origin and np.array_equal(from_server.direction, from_file.direction)
        print(f"\nload_volume, one {shape} case (median of {args.repeats}):")
        print(f"  files {t_file}\n  server, cold cache {t_cold}\n  server, warm cache {t_warm}")
        print(f"  voxels and geometry identical: {same}")

        # --- pipeline runs --------------------------------------------------------------------------
        runs = [("oracle", "  check: {type: oracle}\n", None)]
        if args.sam2_cases:
            subset = [c["id"] for c in test[:args.sam2_cases]]
            runs.append(("sam2-untrained", "  sam2: {type: sam2, model: untrained}\n", subset))
        for name, methods, cases in runs:
            config_files = load_pipeline(pipeline(root / f"{name}-files.yaml", files, methods, cases))
            config_pacs = load_pipeline(pipeline(root / f"{name}-pacs.yaml", on_pacs, methods, cases))
            out = root / "out"
            unique = lambda kind: out / f"{name}-{kind}-{time.monotonic_ns()}"  # noqa: E731

            def cold_run():
                fresh_cache(root, f"home-{name}-{time.monotonic_ns()}")
                return run_pipeline(config_pacs, unique("cold"), report=False)

            t_files, _ = clock.timed(lambda: run_pipeline(config_files, unique("files"), report=False), args.repeats)
            t_cold, _ = clock.timed(cold_run, args.repeats)
            t_warm, _ = clock.timed(lambda: run_pipeline(config_pacs, unique("warm"), report=False), args.repeats)
            compared = [next(out.glob(f"{name}-{kind}-*")) for kind in ("files", "cold", "warm")]
            for folder in compared:
                write_report(folder)
            identical = numbers(compared[0]) == numbers(compared[1]) == numbers(compared[2])
            n = len(cases) if cases else len(test)
            print(f"\nmedseg run, {name} on {n} test case(s) of {args.cases} (median of {args.repeats}, "
                  "report not timed):")
            print(f"  files {t_files}\n  server, cold cache {t_cold}\n  server, warm cache {t_warm}")
            print(f"  metrics.json numbers identical (files, server cold, server warm): {identical}")

        # --- push: SEG and RTSTRUCT, dciodvfy, read back, no duplicates -------------------------------
        config = load_pipeline(pipeline(root / "push.yaml", on_pacs, "  check: {type: oracle}\n", None))
        for fmt in ("seg", "rtstruct"):
            pushing = dataclasses.replace(config, push=PushSettings(format=fmt))
            out = root / "out" / f"push-{fmt}"
            t_push, summary = clock.timed(lambda: run_pipeline(pushing, out, report=False), 1)
            again = run_pipeline(pushing, out, report=False)
            errors, equal = 0, 0
            for record in summary.pushed:
                path = local_object(record["address"])
                check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
                errors += sum(line.startswith("Error") for line in (check.stdout + check.stderr).splitlines())
                case = next(c for c in test if c["id"] == record["case"])
                volume = load_volume(case["image"])
                equal += np.array_equal(load_labels(path, volume).array,
                                        load_labels(out / "check" / case["id"] / "labels.nii.gz", volume).array)
            stored = sum(r["status"] == "stored" and not r["already"] for r in summary.pushed)
            stored_again = sum(r["status"] == "stored" and not (r["already"] or r.get("unchanged"))
                               for r in again.pushed)
            print(f"\npush {fmt.upper()}: {stored} stored in a run of {t_push}; dciodvfy errors {errors}; "
                  f"read back equal {equal} / {len(summary.pushed)}; stored by a second run: {stored_again}")

        # --- a wrong password -------------------------------------------------------------------------
        os.environ["MEDSEG_DICOMWEB_PASSWORD"] = "wrong"
        started = time.perf_counter()
        try:
            run_pipeline(config, root / "out" / "wrong-password", report=False)
            print("\nwrong password: NOT refused")
        except ServerError as error:
            print(f"\nwrong password: refused after {time.perf_counter() - started:.2f} s, before any case "
                  f"(results folder made: {(root / 'out' / 'wrong-password').exists()}):\n  {error}")


if __name__ == "__main__":
    main()
