"""``medseg info``: load a volume (and labels) and print geometry, metadata and intensity range."""

from __future__ import annotations

import argparse


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="load a volume and print its geometry, metadata and intensity range")
    p.add_argument("path", help="DICOM folder, DICOM file, NIfTI, NRRD or MHA")
    p.add_argument("--series-uid", help="pick this series when the DICOM folder holds several")
    p.add_argument("--pick-largest", action="store_true",
                   help="pick the series with the most slices when the folder holds several")
    p.add_argument("--labels", help="also load this label map and check that it lies on the volume's grid")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    import nibabel as nib
    import numpy as np

    from medseg.io import load_labels, load_volume
    from medseg.preprocess import choose_preset

    volume = load_volume(args.path, series_uid=args.series_uid, pick_largest=args.pick_largest)
    extent = tuple(round(n * s, 1) for n, s in zip(volume.shape, volume.spacing))
    print(f"{args.path}: {volume.modality} volume ({volume.metadata.get('format', '?')})")
    print(f"  shape (z, y, x): {volume.shape}   extent mm: {extent}")
    print(f"  spacing (z, y, x) mm: {tuple(round(s, 4) for s in volume.spacing)}")
    print(f"  origin (LPS mm): {tuple(round(o, 3) for o in volume.origin)}")
    print(f"  direction (columns = x, y, z axes, LPS): {np.round(volume.direction, 4).tolist()}")
    print(f"  orientation (nibabel axis codes of i, j, k): {''.join(nib.aff2axcodes(volume.affine))}")
    print(f"  intensity min / median / max: {volume.array.min():.1f} / {np.median(volume.array):.1f} / "
          f"{volume.array.max():.1f}")
    preset = choose_preset(volume)
    print(f"  intensity preset (unless given, or a trained model brings its own): {preset.name}: {preset.reason}")
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
