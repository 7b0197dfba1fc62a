"""Read volumes and label maps with exact geometry, and write label maps that line up.

Inputs: a DICOM series folder (one or several series), a single DICOM file (multi-frame or
one slice), NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and MetaImage
(``.mha``, ``.mhd``). Outputs (``save_labels``): NIfTI, NRRD, MetaImage, and DICOM SEG when
the image came from DICOM.

Every reader returns voxels as ``(z, y, x)`` with a ``Geometry`` in the LPS convention of
SimpleITK (see ``medseg.geometry``); CT is in HU. Input files are only ever opened for
reading, and outputs are written to a temporary file that replaces the target in one step.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.io import dicom, itk, nifti, seg
from medseg.io.dicom import DicomSeries, list_dicom_series
from medseg.io.files import format_of, output_suffix
from medseg.volume import LabelVolume, Volume

logger = logging.getLogger(__name__)

__all__ = ["DicomSeries", "list_dicom_series", "load_labels", "load_volume", "read_geometry", "save_labels"]

_LABEL_WRITERS = {
    ".nii": partial(nifti.write_nifti, labels=True),
    ".nii.gz": partial(nifti.write_nifti, labels=True),
    ".nrrd": itk.write_itk_labels,
    ".mha": itk.write_itk_labels,
}


def load_volume(path: str | os.PathLike, series_uid: str | None = None, *, pick_largest: bool = False) -> Volume:
    """Load a 3D image as a ``Volume`` (float32, ``(z, y, x)``, CT in HU).

    Parameters
    ----------
    path
        DICOM folder or file, NIfTI, NRRD or MetaImage.
    series_uid
        For a DICOM folder holding several series: the SeriesInstanceUID to load.
    pick_largest
        For a DICOM folder holding several series and no ``series_uid``: load the series with
        the most slices instead of raising ``InputError`` with the list of series.

    Raises
    ------
    InputError
        Missing, unreadable, non-3D or non-finite input, or an ambiguous DICOM folder.
    GeometryError
        A DICOM series whose slices do not form one regular grid (missing slice, mixed
        orientations, duplicate positions).
    """
    path = Path(path)
    kind = format_of(path)
    if series_uid is not None and kind not in ("dicom-dir", "dicom"):
        raise InputError(f"{path}: series_uid applies to DICOM input only; this is a {kind} file")
    if kind == "nifti":
        array, geometry = nifti.read_nifti(path)
        volume = Volume(array, geometry, "OT", {"format": "nifti"})
    elif kind == "itk":
        array, geometry = itk.read_itk(path)
        volume = Volume(array, geometry, "OT", {"format": path.suffix.lower().lstrip(".")})
    else:
        array, geometry, metadata, files = dicom.read_dicom(path, series_uid, pick_largest=pick_largest)
        volume = Volume(array, geometry, str(metadata.get("Modality", "OT")), metadata, source_files=files)
    _check_finite(volume.array, path)
    logger.debug("loaded %s: %s volume, shape %s, spacing %s", path, volume.modality, volume.shape, volume.spacing)
    return volume


def read_geometry(path: str | os.PathLike, series_uid: str | None = None, *, pick_largest: bool = False) -> Geometry:
    """The geometry ``load_volume`` would give, from the file headers alone (fast: no voxels)."""
    path = Path(path)
    kind = format_of(path)
    if kind == "nifti":
        return nifti.read_nifti_geometry(path)
    if kind == "itk":
        return itk.read_itk_geometry(path)
    return dicom.read_dicom_geometry(path, series_uid, pick_largest=pick_largest)


def load_labels(path: str | os.PathLike, like: Volume | Geometry) -> LabelVolume:
    """Load a label map that must lie on the voxel grid of ``like`` (a Volume or its Geometry).

    NIfTI, NRRD and MetaImage files must have ``like``'s shape and affine; a DICOM SEG's frames
    must fall on ``like``'s voxels (its segment numbers become the label values).

    Raises
    ------
    GeometryError
        The file's shape, spacing, origin or direction differ from ``like``'s (the message names
        the file and each difference).
    InputError
        Unreadable file, or voxel values that are not non-negative integers.
    """
    path = Path(path)
    kind = format_of(path)
    grid = like.geometry if isinstance(like, Volume) else like
    names: dict[int, str] = {}
    if kind == "nifti":
        array, geometry = nifti.read_nifti(path)
    elif kind == "itk":
        array, geometry = itk.read_itk(path)
    elif kind == "dicom":
        (array, names), geometry = seg.read_seg(path, grid), grid
    else:
        raise InputError(f"{path}: a folder; give the label file (NIfTI, NRRD, MetaImage or DICOM SEG)")
    if not grid.same_grid(geometry):
        raise GeometryError(
            f"{path}: label map does not lie on its image's voxel grid: {grid.describe_difference(geometry)} "
            "(label vs image); give the label file that was drawn on this image, or resample it onto the image first"
        )
    return LabelVolume(_integer_labels(array, path), grid, label_names=names)


def save_labels(labels: LabelVolume, like: Volume, path: str | os.PathLike) -> Path:
    """Write ``labels`` on ``like``'s geometry; the format follows the suffix of ``path``.

    ``.nii`` / ``.nii.gz`` (sform = qform = ``like.affine``), ``.nrrd`` or ``.mha``: voxels in the
    smallest integer type that holds them. ``.dcm``: a DICOM SEG referencing the DICOM files
    ``like`` was read from (label value = segment number, names from ``labels.label_names``).
    The file appears complete or not at all (written beside the target, then renamed).

    Returns the path written.
    """
    path = Path(path)
    if not labels.geometry.same_grid(like.geometry):
        raise GeometryError(
            f"cannot save labels to {path}: they are not on the image's grid ({like.geometry.describe_difference(labels.geometry)})"
        )
    suffix = output_suffix(path)
    if suffix == ".dcm":
        seg.write_seg(labels, like, path)
        return path
    writer = _LABEL_WRITERS.get(suffix)
    if writer is None:
        raise InputError(f"{path}: cannot write labels as {suffix or 'a file without suffix'}; use one of {sorted([*_LABEL_WRITERS, '.dcm'])}")
    writer(_smallest_label_dtype(labels.array, path), like.geometry, path)
    logger.info("wrote labels %s to %s", labels.labels, path)
    return path


def _check_finite(array: np.ndarray, path: Path) -> None:
    bad = np.count_nonzero(~np.isfinite(array))
    if bad:
        raise InputError(
            f"{path}: {bad} of {array.size} voxels are NaN or infinite; medseg needs finite intensities. "
            "Replace them first (e.g. with the image minimum) if they mark background"
        )


def _integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: a label map holds integer values only; this file has fractional or NaN values")
    if array.size and array.min() < 0:
        raise InputError(f"{path}: label values must be >= 0 (0 = background); found {array.min()}")
    return array.astype(np.int32)


def _smallest_label_dtype(array: np.ndarray, path: Path) -> np.ndarray:
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0:
        raise InputError(f"cannot save labels to {path}: label values must be >= 0, found {low}")
    for dtype in (np.uint8, np.uint16, np.int32):
        if high <= np.iinfo(dtype).max:
            return array.astype(dtype)
    raise InputError(f"cannot save labels to {path}: label value {high} does not fit a 32-bit integer")
