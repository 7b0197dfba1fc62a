"""``medseg run`` and ``medseg replay``: batch pipelines and the replay of one logged case."""

from __future__ import annotations

import argparse
import sys

from medseg.cli import values

EXIT_CASES_FAILED = 3  # the run finished but some case runs failed


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a batch pipeline (pipelines/*.yaml) over a cohort and write a report")
    p.add_argument("pipeline", type=values.existing_path, help="pipeline YAML, e.g. pipelines/demo.yaml")
    p.add_argument("--out", required=True, help="results folder (re-running into it resumes)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="where cases run (default: local)")
    p.add_argument("--workers", type=values.positive_int, default=None,
                   help="worker processes (local, default 1) or Ray actors (default: as many as the cluster fits), one "
                        "model each")
    p.add_argument("--case-timeout", type=values.seconds, default=None, metavar="SECONDS",
                   help="stop a case (and its worker) after this long; it is retried or recorded as failed")
    p.add_argument("--retries", type=values.non_negative_int, default=0,
                   help="tries again after a worker died, a timeout or an error that is not the input's fault "
                        "(default 0)")
    p.add_argument("--address", help="Ray cluster address (e.g. auto or ray://head:10001); default: start Ray locally")
    p.add_argument("--cpus-per-case", type=float, default=1, help="Ray CPUs requested per case (default 1)")
    p.add_argument("--gpus-per-case", type=float, default=0, help="Ray GPUs requested per case (default 0)")
    p.add_argument("--push", choices=["seg", "rtstruct"], default=None,
                   help="store each finished case on the PACS its image came from, as DICOM SEG or RTSTRUCT "
                        "(STOW-RS, once)")
    p.add_argument("--push-to", type=values.dicomweb_server, default=None, metavar="URL",
                   help="the DICOMweb server to store results on (e.g. dicomweb://127.0.0.1:8042/dicom-web)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from medseg.cli.progress import tqdm_progress
    from medseg.pipeline import LocalExecutor, RayExecutor, load_pipeline, run_pipeline
    from medseg.volume import UNTRAINED_BANNER

    config = _with_push(load_pipeline(args.pipeline), args.push, args.push_to)
    faults = {"case_timeout": args.case_timeout, "retries": args.retries}
    if args.executor == "ray":
        executor = RayExecutor(address=args.address, num_cpus=args.cpus_per_case, num_gpus=args.gpus_per_case,
                               workers=args.workers, **faults)
    else:
        executor = LocalExecutor(workers=args.workers or 1, **faults)
    with tqdm_progress(config.name, "case", disable=args.no_progress) as progress:
        summary = run_pipeline(config, args.out, executor=executor, progress=progress)
    for method, counts in summary.counts.items():
        print(f"{method}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already done")
    if summary.pushed:
        stored = [r for r in summary.pushed if r["status"] == "stored"]
        earlier = sum(bool(r["already"] or r.get("unchanged")) for r in stored)
        failed = len(summary.pushed) - len(stored)
        print(f"pushed: {len(stored) - earlier} stored, {earlier} already there, {failed} failed")
    print(f"report: {summary.report or 'not written (see below)'}")
    if summary.untrained:
        print(f"{UNTRAINED_BANNER} Methods: {', '.join(summary.untrained)}.", file=sys.stderr)
    if summary.failures:
        print(f"{summary.failed} case run(s) failed (see the Failures section of the report):", file=sys.stderr)
        for method, case, message in summary.failures:
            print(f"  {method} / {case}: {message}", file=sys.stderr)
        return EXIT_CASES_FAILED
    return 0


def _with_push(config, push: str | None, push_to: str | None):
    """The pipeline with ``--push`` / ``--push-to`` over its ``push:`` settings."""
    import dataclasses

    from medseg.pipeline.config import PushSettings

    if push is None and push_to is None:
        return config
    settings = config.push or PushSettings()
    return dataclasses.replace(config, push=dataclasses.replace(settings, format=push or settings.format,
                                                                server=push_to or settings.server))


def add_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="re-run one case of a results folder from its log and compare the labels")
    p.add_argument("case_dir", type=values.existing_path, help="RESULTS/<method>/<case>")
    p.add_argument("--out", help="where the replayed case goes (default: <case_dir>/replay)")
    p.set_defaults(run=_run_replay)


def _run_replay(args: argparse.Namespace) -> None:
    from medseg.errors import MedsegError
    from medseg.pipeline import replay_case

    result = replay_case(args.case_dir, out=args.out)
    if not result.identical:
        raise MedsegError(
            f"replay differs from the recorded labels in {result.differing_voxels} of {result.total_voxels} voxels "
            f"(replayed labels in {result.replay_dir})"
        )
    print(f"reproduced: identical labels ({result.total_voxels} voxels); replay in {result.replay_dir}")
