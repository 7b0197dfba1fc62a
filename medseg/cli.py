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
    p = sub.add_parser("info", help="load a volume and print its geometry, metadata and intensity range")
    p.add_argument("path", help="DICOM folder, DICOM file, NIfTI, NRRD or MHA")
    p.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    p.add_argument("--pick-largest", action="store_true", help="pick the series with the most slices when the folder holds several")
    p.add_argument("--labels", help="also load this label map and check that it lies on the volume's grid")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    import nibabel as nib
    import numpy as np

    from medseg.io import load_labels, load_volume

    volume = load_volume(args.path, series_uid=args.series_uid, pick_largest=args.pick_largest)
    extent = tuple(round(n * s, 1) for n, s in zip(volume.shape, volume.spacing))
    print(f"{args.path}: {volume.modality} volume ({volume.metadata.get('format', '?')})")
    print(f"  shape (z, y, x): {volume.shape}   extent mm: {extent}")
    print(f"  spacing (z, y, x) mm: {tuple(round(s, 4) for s in volume.spacing)}")
    print(f"  origin (LPS mm): {tuple(round(o, 3) for o in volume.origin)}")
    print(f"  direction (columns = x, y, z axes, LPS): {np.round(volume.direction, 4).tolist()}")
    print(f"  orientation (nibabel axis codes of i, j, k): {''.join(nib.aff2axcodes(volume.affine))}")
    print(f"  intensity min / median / max: {volume.array.min():.1f} / {np.median(volume.array):.1f} / {volume.array.max():.1f}")
    for key, value in sorted(volume.metadata.items()):
        if key != "format":
            print(f"  {key}: {value}")
    if args.labels:
        labels = load_labels(args.labels, volume)
        counts = {value: int(np.count_nonzero(labels.array == value)) for value in labels.labels}
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        print(f"{args.labels}: on the volume's grid; {len(counts)} label value(s)")
        for value, count in counts.items():
            print(f"  label {value}: {count} voxels, {count * voxel_ml:.2f} ml")


# --- medseg demo-data --------------------------------------------------------------------
def _add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write the synthetic demo cohort and the real MNI152 cohort (from nilearn) with their manifests",
    )
    p.add_argument("directory", nargs="?", default="data_manifests", help="where the manifests go (default: data_manifests)")
    p.add_argument("--cases", type=int, default=6, help="number of phantom cases (default 6; the last 2 are the test split)")
    p.set_defaults(run=_run_demo_data)


def _run_demo_data(args: argparse.Namespace) -> None:
    from medseg.datasets import write_real_cohort
    from medseg.errors import ConfigError, InputError
    from medseg.phantom import write_demo_cohort

    if args.cases < 3:
        raise ConfigError(f"--cases must be at least 3 (2 of them are the test split), got {args.cases}")
    print(f"demo cohort: {write_demo_cohort(args.directory, n_cases=args.cases)}")
    try:
        print(f"real cohort: {write_real_cohort(args.directory)}")
    except InputError as error:
        print(f"real cohort skipped: {error} (install nilearn, e.g. pip install 'medseg[data]', to get it)")


# --- subcommands are registered here, in the order `medseg --help` lists them --------------
_SUBCOMMANDS = [_add_info, _add_demo_data]


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
