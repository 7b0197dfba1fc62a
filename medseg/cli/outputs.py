"""Options that the commands writing a label map share, defined once."""

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


def add_postprocess_option(parser: argparse.ArgumentParser) -> None:
    """``--postprocess none|objects`` (``medseg.objects``), for the commands that segment objects."""
    parser.add_argument(
        "--postprocess",
        choices=("none", "objects"),
        default="none",
        help="objects: each object as its prompted 3D component plus any other component at least a tenth of its "
        "size, specks dropped, each scored by the model (medseg.objects); none: the model's output as it is (default)",
    )


def postprocess(args: argparse.Namespace, labels, *, anchors=None, instances=None):
    """``(labels, instances)`` as ``--postprocess`` asks (``anchors``: the prompts marking each object), with a line
    on what was dropped."""
    if args.postprocess == "none":
        return labels, instances
    from medseg.objects import clean_objects

    objects = clean_objects(labels, instances=instances, prompts=anchors)
    dropped = [size for sizes in objects.dropped.values() for size in sizes]
    print(f"objects: {len(objects.instances.labels)} instance(s) kept; "
          f"{len(dropped)} component(s) of {sum(dropped)} voxels dropped")
    return objects.labels, objects.instances
