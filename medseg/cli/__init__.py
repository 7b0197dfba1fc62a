"""The ``medseg`` command: one subcommand per library call, nothing more.

Each module of this package holds one subcommand family: an ``add_<name>`` function that
declares its arguments and a ``_run_<name>`` function that calls the library. Errors of the
``MedsegError`` family are printed as one readable line (exit code 2); anything else is a bug
and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medseg.errors import MedsegError
from medseg.cli import baseline, demo, fewshot, info, pipeline, sam2_train, segment

# --- subcommands are registered here, in the order `medseg --help` lists them --------------
_SUBCOMMANDS = [info.add_info, demo.add_demo_data, segment.add_segment, fewshot.add_fewshot, baseline.add_baseline,
                sam2_train.add_sam2, pipeline.add_run, pipeline.add_replay]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Segment CT and MRI volumes: SAM2 propagation, reference prompting, a Mask R-CNN baseline, batch evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.run(args)
    except MedsegError as error:
        print(f"medseg {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


