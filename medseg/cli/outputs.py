"""Options that every command writing a label map shares, defined once."""

from __future__ import annotations

import argparse


def add_dicom_format(parser: argparse.ArgumentParser) -> None:
    """``--dicom-format seg|rtstruct``: which DICOM object ``--out x.dcm`` writes (``save_labels(format=...)``)."""
    parser.add_argument(
        "--dicom-format",
        choices=("seg", "rtstruct"),
        default=None,
        help="for --out FILE.dcm: seg (DICOM Segmentation, the default: voxels) or rtstruct (RT Structure Set: "
        "contours, what treatment-planning systems read)",
    )
