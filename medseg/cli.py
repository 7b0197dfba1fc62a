"""The ``medseg`` command: one subcommand per library call, nothing more.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a
``_run_<name>`` function that calls the library; errors of the ``MedsegError`` family are
printed as one readable line (exit code 2), anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys

from medseg.errors import MedsegError


# --- medseg info -------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a volume and print its geometry and intensity range")
    p.add_argument("path", help="DICOM folder, DICOM file, NIfTI, NRRD or MHA")
    p.add_argument("--series-uid", help="pick this series when the folder holds several")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    import numpy as np

    from medseg.io import load_volume

    volume = load_volume(args.path, series_uid=args.series_uid)
    print(f"{args.path}: {volume.modality} volume, shape (z, y, x) {volume.shape}")
    print(f"  spacing (z, y, x) mm: {tuple(round(s, 4) for s in volume.spacing)}")
    print(f"  origin (LPS mm): {tuple(round(o, 3) for o in volume.origin)}")
    print(f"  direction: {np.round(volume.direction, 4).tolist()}")
    print(f"  intensity min / median / max: {volume.array.min():.1f} / {np.median(volume.array):.1f} / {volume.array.max():.1f}")


# --- subcommands are registered here, in the order `medseg --help` lists them --------------
_SUBCOMMANDS = [_add_info]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medseg", description=__doc__.splitlines()[0])
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


if __name__ == "__main__":
    sys.exit(main())
