"""The ``medseg`` command: one subcommand per library call, nothing more.

Each module of this package holds one subcommand family: an ``add_<name>`` function that
declares its arguments (values checked at parse time by ``medseg.cli.values``) and a
``_run_<name>`` function that calls the library.

The error boundary (``main``): a ``MedsegError`` (the user's input, files, paths, devices)
or an ``OSError`` (a path the system refuses) is printed as one line, exit code 2; a bad
option is argparse's one line, exit code 2; anything else is a bug: its traceback and a line
asking to report it, exit code 1. ``--debug`` or ``MEDSEG_DEBUG=1`` shows the traceback of
every error. ``medseg run`` exits with 3 when it finished but some cases failed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from medseg.errors import MedsegError, user_message
from medseg.cli import baseline, cache, demo, fewshot, info, pacs, pipeline, sam2_train, segment

# --- subcommands are registered here, in the order `medseg --help` lists them --------------
_SUBCOMMANDS = [info.add_info, demo.add_demo_data, segment.add_segment, fewshot.add_fewshot, baseline.add_baseline,
                sam2_train.add_sam2, pipeline.add_run, pipeline.add_replay, cache.add_precompute, cache.add_cache,
                pacs.add_pacs]


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): ``medseg segment: error: argument --point: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="medseg",
        description="Segment CT and MRI volumes: SAM2 propagation, reference prompting, a Mask R-CNN baseline, batch "
                    "evaluation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error (also: MEDSEG_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


REPORT_BUG = "this is a bug in medseg: please report it with the traceback above to the medseg maintainers"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # argparse has printed its one-line error (exit 2) or the help (exit 0)
        return exit.code if isinstance(exit.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    # dicomweb_client logs a line per request at INFO
    logging.getLogger("dicomweb_client").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    debug = args.debug or os.environ.get("MEDSEG_DEBUG", "") not in ("", "0")
    try:
        code = args.run(args)
    except (MedsegError, OSError) as error:
        if debug:
            traceback.print_exc()
        print(f"medseg {args.command}: error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug: the traceback is what a report needs
        traceback.print_exc()
        print(f"medseg {args.command}: {REPORT_BUG}", file=sys.stderr)
        return 1
    return code or 0
