"""``medseg demo-data``: write the demo cohort (phantoms) and the real MNI152 cohorts."""

from __future__ import annotations

import argparse


def add_demo_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo-data",
        help="write the synthetic demo cohort (8 phantoms by default: 4 train, 4 test) and the real MNI152 cohorts "
        "(from nilearn) with their manifests",
    )
    p.add_argument("directory", nargs="?", default="data_manifests",
                   help="where the manifests go (default: data_manifests)")
    p.add_argument("--cases", type=int, default=8,
                   help="number of phantom cases (default 8; the last half are the test split)")
    p.set_defaults(run=_run_demo_data)


def _run_demo_data(args: argparse.Namespace) -> None:
    from medseg.datasets import write_mni152_hemisphere_cohort, write_real_cohort
    from medseg.errors import ConfigError, InputError
    from medseg.phantom import write_demo_cohort

    if args.cases < 2:
        raise ConfigError(f"--cases must be at least 2 (one train, one test case), got {args.cases}")
    print(f"demo cohort: {write_demo_cohort(args.directory, n_cases=args.cases)}")
    try:
        print(f"real cohort: {write_real_cohort(args.directory)}")
        print(f"real cohort, hemispheres (train left, test right): {write_mni152_hemisphere_cohort(args.directory)}")
    except InputError as error:
        print(f"real cohort skipped: {error} (install nilearn, e.g. pip install 'medseg[data]', to get it)")
