"""Read volumes and label maps with exact geometry, and write label maps that line up.

Inputs: a DICOM series folder (one or several series), a single DICOM file (multi-frame or
one slice), a series on a PACS by its DICOMweb address (``dicomweb://host:port/dicom-web/
studies/<uid>/series/<uid>``: fetched into a verified local cache, then read as a folder,
see ``medseg.io.dicomweb``), NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``) and MetaImage
(``.mha``, ``.mhd``); label maps also as DICOM SEG or RT Structure Set (RTSTRUCT). Outputs
(``save_labels``): NIfTI, NRRD, MetaImage, and DICOM SEG or RTSTRUCT when the image came
from DICOM.

Every reader returns voxels as ``(z, y, x)`` with a ``Geometry`` in the LPS convention of
SimpleITK (see ``medseg.geometry``); CT is in HU. Input files are only ever opened for
reading, and outputs are written to a temporary file that replaces the target in one step.
"""

from __future__ import annotations

import logging
import os
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.outputs import check_output
from medseg.io import dicom, itk, nifti, rtstruct, seg
from medseg.io.dicom import DicomSeries, list_dicom_series
from medseg.io.dicomweb.url import DicomwebRef, is_dicomweb_url, parse_dicomweb_url
from medseg.io.files import format_of, label_file_kind, label_file_names, output_suffix
from medseg.roi_names import RoiMapping
from medseg.io.rtstruct_write import write_rtstruct
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)

__all__ = [
    "DicomSeries", "RoiMapping", "label_file_kind", "label_file_names", "list_dicom_series", "load_labels",
    "load_volume", "read_geometry", "save_labels",
]

_LABEL_WRITERS = {
    ".nii": partial(nifti.write_nifti, labels=True),
    ".nii.gz": partial(nifti.write_nifti, labels=True),
    ".nrrd": itk.write_itk_labels,
    ".mha": itk.write_itk_labels,
}


def load_volume(path: str | os.PathLike | DicomwebRef, series_uid: str | None = None, *,
                pick_largest: bool = False) -> Volume:
    """Load a 3D image as a ``Volume`` (float32, ``(z, y, x)``, CT in HU).

    Parameters
    ----------
    path
        DICOM folder or file, NIfTI, NRRD or MetaImage, or the DICOMweb address of a series
        (its metadata then holds the address as ``"dicomweb"``, where results can go back).
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
    address, path = _local(path, "series")
    kind = format_of(path)
    if series_uid is not None and kind not in ("dicom-dir", "dicom"):
        raise InputError(f"{path}: series_uid applies to DICOM input only; this is a {kind} file")
    if kind == "nifti":
        array, geometry = nifti.read_nifti(path)
        volume = Volume(array, geometry, "OT", {"format": "nifti"}, source_files=(path,))
    elif kind == "itk":
        array, geometry = itk.read_itk(path)
        volume = Volume(array, geometry, "OT", {"format": path.suffix.lower().lstrip(".")}, source_files=(path,))
    else:
        array, geometry, metadata, files = dicom.read_dicom(path, series_uid, pick_largest=pick_largest)
        metadata = {**metadata, "dicomweb": address} if address else metadata
        volume = Volume(array, geometry, str(metadata.get("Modality", "OT")), metadata, source_files=files)
    _check_finite(volume.array, path)
    log.debug("loaded %s: %s volume, shape %s, spacing %s", path, volume.modality, volume.shape, volume.spacing)
    return volume


def read_geometry(path: str | os.PathLike | DicomwebRef, series_uid: str | None = None, *,
                  pick_largest: bool = False) -> Geometry:
    """The geometry ``load_volume`` would give, from the file headers alone (fast: no voxels)."""
    path = _local(path, "series")[1]
    kind = format_of(path)
    if kind == "nifti":
        return nifti.read_nifti_geometry(path)
    if kind == "itk":
        return itk.read_itk_geometry(path)
    return dicom.read_dicom_geometry(path, series_uid, pick_largest=pick_largest)


def load_labels(path: str | os.PathLike | DicomwebRef, like: Volume | Geometry, *,
                roi_names: RoiMapping | None = None) -> LabelVolume:
    """Load a label map that must lie on the voxel grid of ``like`` (a Volume or its Geometry).

    ``path``: a file, or the DICOMweb address of a SEG or RTSTRUCT (an instance, or a series
    holding one object).

    NIfTI, NRRD and MetaImage files must have ``like``'s shape and affine. A DICOM SEG's
    frames must fall on ``like``'s voxels (segment numbers become label values). An RT
    Structure Set's contours are filled on ``like``'s grid (``medseg.io.rtstruct``); with a
    ``Volume`` read from DICOM it must reference that series (frame of reference and SOP
    instances), with a bare ``Geometry`` only the placement is checked. Its ROIs become
    labels 1, 2, ... in file order (ROIs without area, such as points, are left out).

    ``roi_names`` (SEG and RTSTRUCT only) maps segment / ROI names to label values; names it
    does not match are left out, and a name matching several values is a ``ConfigError``.

    Raises
    ------
    GeometryError
        The file's shape, spacing, origin or direction differ from ``like``'s, or a SEG /
        RTSTRUCT was made on another image (the message names the file and each difference).
    InputError
        Unreadable file, or voxel values that are not non-negative integers.
    """
    path = _local(path, "object")[1]
    kind = format_of(path)
    grid = like.geometry if isinstance(like, Volume) else like
    names: dict[int, str] = {}
    if kind == "nifti":
        array, geometry = nifti.read_nifti(path)
    elif kind == "itk":
        array, geometry = itk.read_itk(path)
    elif kind == "dicom" and label_file_kind(path) == "rtstruct":
        sources = like.source_files if isinstance(like, Volume) and _from_dicom(like) else ()
        (array, names), geometry = _rtstruct_labels(path, grid, sources, roi_names), grid
    elif kind == "dicom":
        (array, names), geometry = seg.read_seg(path, grid), grid
        if roi_names is not None:
            array, names = _relabel(array, names, roi_names, path)
    else:
        raise InputError(f"{path}: a folder; give the label file (NIfTI, NRRD, MetaImage, DICOM SEG or RTSTRUCT)")
    if not grid.same_grid(geometry):
        raise GeometryError(
            f"{path}: label map does not lie on its image's voxel grid: {grid.describe_difference(geometry)} "
            "(label vs image); give the label file that was drawn on this image, or resample it onto the image first"
        )
    return LabelVolume(_integer_labels(array, path), grid, label_names=names, source_files=(path,))


def save_labels(
    labels: LabelVolume | np.ndarray,
    like: Volume,
    path: str | os.PathLike,
    *,
    format: Literal["seg", "rtstruct"] | None = None,
    series_uid: str | None = None,
    instance_uid: str | None = None,
) -> Path:
    """Write ``labels`` on ``like``'s geometry; the format follows the suffix of ``path``.

    ``labels`` is a ``LabelVolume`` or a plain integer array of ``like``'s shape.
    ``.nii`` / ``.nii.gz`` (sform = qform = ``like.affine``), ``.nrrd`` or ``.mha``: voxels in the
    smallest integer type that holds them. ``.dcm``: a DICOM object referencing the DICOM files
    ``like`` was read from, a SEG (``format="seg"``, the default: label value = segment number)
    or an RT Structure Set (``format="rtstruct"``: one ROI of contours per label value); names
    come from ``labels.label_names``; ``series_uid`` and ``instance_uid`` replace its new random
    UIDs (a result stored twice under the same UID is one object on a PACS). The file appears
    complete or not at all (written beside the target, then renamed).

    Raises ``OutputError`` when ``path`` resolves (symlinks included) to a file the labels or
    the image were read from, or lies in the folder of a DICOM series read: an output never
    replaces an input (``medseg.outputs.check_output``). Returns the path written.
    """
    path = Path(path)
    if not isinstance(labels, LabelVolume):
        labels = LabelVolume(np.asarray(labels), like.geometry)
    if not labels.geometry.same_grid(like.geometry):
        raise GeometryError(
            f"cannot save labels to {path}: they are not on the image's grid "
            f"({like.geometry.describe_difference(labels.geometry)})"
        )
    suffix = output_suffix(path)
    if format not in (None, "seg", "rtstruct") or (format is not None and suffix != ".dcm"):
        raise InputError(f"{path}: format={format!r} applies to .dcm outputs only, as \"seg\" or \"rtstruct\"")
    if (series_uid or instance_uid) and suffix != ".dcm":
        raise InputError(f"{path}: series_uid and instance_uid apply to .dcm outputs only")
    series = like.metadata.get("format") == "dicom-series" and len(like.source_files) > 1  # read from a folder
    folders = {f.parent for f in like.source_files} if series else set()
    check_output(path, inputs=[*like.source_files, *labels.source_files, *folders], what="label file")
    if suffix == ".dcm":
        if not _from_dicom(like):
            raise InputError(
                f"cannot write {path} as DICOM {format or 'SEG'}: the image was not read from DICOM "
                f"({like.metadata.get('format', 'unknown format')}); save the labels as .nii.gz instead"
            )
        writer = write_rtstruct if format == "rtstruct" else seg.write_seg
        writer(labels, like, path, series_uid=series_uid, instance_uid=instance_uid)
        return path
    writer = _LABEL_WRITERS.get(suffix)
    if writer is None:
        raise InputError(f"{path}: cannot write labels as {suffix or 'a file without suffix'}; use one of "
                         f"{sorted([*_LABEL_WRITERS, '.dcm'])}")
    writer(_smallest_label_dtype(labels.array, path), like.geometry, path)
    log.info("wrote labels %s to %s", labels.labels, path)
    return path


def _local(path: str | os.PathLike | DicomwebRef, what: Literal["series", "object"]) -> tuple[str | None, Path]:
    """The DICOMweb address (None for a path) and the local path to read: the path itself, or the
    verified cached copy of the series or object the address names."""
    if not is_dicomweb_url(path):
        return None, Path(path)
    from medseg.io.dicomweb.cache import local_copy, local_object

    ref = parse_dicomweb_url(path, level="series")
    return str(ref), local_copy(ref) if what == "series" else local_object(ref)


def _from_dicom(volume: Volume) -> bool:
    return bool(volume.source_files) and str(volume.metadata.get("format", "")).startswith("dicom")


def _rtstruct_labels(path: Path, grid: Geometry, sources: tuple[Path, ...],
                     roi_names: RoiMapping | None) -> tuple[np.ndarray, dict[int, str]]:
    """The label map and names of an RTSTRUCT: by ``roi_names``, else ROIs with area numbered in order."""
    rois = rtstruct.read_rois(path, grid, sources)
    if roi_names is None:
        with_area = [roi for roi in rois if roi.contours]
        values = {roi.number: value for value, roi in enumerate(with_area, start=1)}
        names = {value: roi.name for value, roi in enumerate(with_area, start=1)}
    else:
        match = roi_names.match([roi.name for roi in rois], source=path)
        values = {roi.number: match.values[roi.name] for roi in rois if roi.name in match.values}
        names = {}
    return rtstruct.label_map(rois, grid.shape, values), names


def _relabel(array: np.ndarray, names: dict[int, str],
             roi_names: RoiMapping, path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """A SEG's label map with its segments renumbered by their names."""
    match = roi_names.match(list(names.values()), source=path)
    lookup = np.zeros(int(array.max(initial=0)) + 1, dtype=np.int32)
    for number, name in names.items():
        if number < len(lookup):
            lookup[number] = match.values.get(name, 0)
    return lookup[array], {}


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
