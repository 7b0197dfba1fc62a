"""DICOM RT Structure Sets (RTSTRUCT): place each ROI's contours on an image grid.

An RTSTRUCT holds, per region of interest (ROI), planar polygons in patient coordinates (LPS
mm), each drawn on one slice of a referenced image series. Reading one means: check that it
was drawn on *this* series (same FrameOfReferenceUID, contours referencing this series' SOP
instances), map every point into the grid's continuous voxel indices, check that each
polygon lies on one slice (within ``OFF_SLICE_TOLERANCE`` of the slice spacing), and fill
the polygons with the even-odd rule, as planning systems draw them: a polygon inside another
is a hole, a polygon inside a hole an island.

Written on pydicom + scikit-image rather than a structure-set library. Evaluated (Dec 2026):
rt-utils maps contours through the series' affine but needs OpenCV, traces contours through
the centres of boundary voxels (a round trip loses up to half a voxel all round) and encodes
holes by cutting "pin holes" into the mask; dicompyler-core groups contour planes by their z
coordinate, which is right for axial series only; platipy brings a large dependency tree for
the same conversion; highdicom has no RTSTRUCT support. medseg's grids are often oblique or
sagittal/coronal (``medseg.geometry``), and a wrong placement here is silent, so the mapping
is done with ``Geometry`` directly and tested against SimpleITK's own index/point transform.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from skimage.draw import polygon2mask

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.io.files import dicom_label_kind

log = logging.getLogger(__name__)

OFF_SLICE_TOLERANCE = 0.1
"""How far (as a fraction of the slice spacing) a contour point may lie off its slice's plane."""


@dataclass(frozen=True, eq=False)
class Roi:
    """One ROI of a structure set, its polygons already in voxel indices of one grid.

    ``contours`` holds ``(z, points)`` pairs: the slice index and an ``(n, 2)`` array of
    continuous ``(row, column)`` = ``(y, x)`` indices.
    """

    number: int
    name: str
    contours: tuple[tuple[int, np.ndarray], ...]

    def mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The ROI as a boolean ``(z, y, x)`` array: voxel centres inside by the even-odd rule."""
        mask = np.zeros(shape, dtype=bool)
        for z, points in self.contours:
            mask[z] ^= polygon2mask(shape[1:], points)
        return mask


def read_rois(path: Path, grid: Geometry, source_files: tuple[Path, ...] = ()) -> list[Roi]:
    """The ROIs of the RTSTRUCT at ``path`` placed on ``grid``, in the file's ROI order.

    ``source_files`` are the DICOM files of the image (``Volume.source_files``, slice order);
    when given, the structure set must share their FrameOfReferenceUID and reference their
    SOP instances (``GeometryError`` naming both otherwise). Without them (a ``Geometry``
    only) the placement is checked geometrically: every polygon on a slice of the grid.
    POINT and open contours (markers, lines) enclose no voxels and are skipped.
    """
    dataset = _read(path)
    try:
        if source_files:
            _check_references(dataset, path, source_files)
        rois = []
        for item in dataset.get("StructureSetROISequence", []):
            number, name = int(item.ROINumber), str(item.get("ROIName", ""))
            rois.append(Roi(number, name or f"ROI {number}", _contours(dataset, number, name, grid, path)))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError, OSError) as error:
        # malformed values, decoded lazily
        raise InputError(f"{path}: a malformed RTSTRUCT ({type(error).__name__}: {error}); re-export it from "
                         "its source") from error
    return rois


def _read(path: Path) -> pydicom.Dataset:
    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as error:  # pydicom raises many types on corrupt files
        raise InputError(f"{path}: a corrupt DICOM file ({type(error).__name__}: {error}); remove or "
                         "replace it") from error
    if dicom_label_kind(dataset) != "rtstruct":
        raise InputError(f"{path}: not an RT Structure Set (Modality {dataset.get('Modality', 'missing')})")
    return dataset


def _contours(dataset: pydicom.Dataset, number: int, name: str,
              grid: Geometry, path: Path) -> tuple[tuple[int, np.ndarray], ...]:
    """The closed planar contours of ROI ``number`` as (slice, (row, column) indices)."""
    item = next((i for i in dataset.get("ROIContourSequence", []) if int(i.ReferencedROINumber) == number), None)
    if item is None:
        return ()
    to_index = np.linalg.inv(grid.direction @ np.diag(grid.spacing[::-1]))
    tolerance = OFF_SLICE_TOLERANCE * grid.spacing[0]
    skipped: Counter[str] = Counter()
    contours = []
    for index, contour in enumerate(item.get("ContourSequence", []), start=1):
        kind = str(contour.get("ContourGeometricType", ""))
        if kind != "CLOSED_PLANAR":
            skipped[kind] += 1
            continue
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        if len(points) < 3 or not np.all(np.isfinite(points)):
            raise InputError(f"{path}: ROI '{name}' contour {index} has {len(points)} point(s) or non-finite values; "
                             "not a polygon")
        zyx = ((points - np.array(grid.origin)) @ to_index.T)[:, ::-1]
        z = np.round(zyx[:, 0])
        off = float(np.max(np.abs(zyx[:, 0] - z))) * grid.spacing[0]
        if off > tolerance or len(set(z)) > 1:
            raise GeometryError(
                f"{path}: ROI '{name}' contour {index} lies {off:.2f} mm off the image slices (tolerance "
                f"{tolerance:.2f} mm, {OFF_SLICE_TOLERANCE:.0%} of the slice spacing); the structure set was drawn on "
                "another grid: give the image series it references"
            )
        if not 0 <= z[0] < grid.shape[0]:
            raise GeometryError(
                f"{path}: ROI '{name}' contour {index} lies on slice {int(z[0])}, outside the image's {grid.shape[0]} "
                "slices; the structure set was drawn on another image: give the image series it references"
            )
        contours.append((int(z[0]), zyx[:, 1:]))
    if skipped:
        log.info("%s: ROI '%s': skipped %s contour(s) that enclose no area", path, name, dict(skipped))
    return tuple(contours)


def _check_references(dataset: pydicom.Dataset, path: Path, source_files: tuple[Path, ...]) -> None:
    """Same frame of reference as the image, and contours only on the image's SOP instances."""
    source = pydicom.dcmread(source_files[0], stop_before_pixels=True)
    image_frame = str(source.get("FrameOfReferenceUID", ""))
    frames = {str(f.FrameOfReferenceUID) for f in dataset.get("ReferencedFrameOfReferenceSequence", [])
              if "FrameOfReferenceUID" in f}
    frames |= {str(r.ReferencedFrameOfReferenceUID) for r in dataset.get("StructureSetROISequence", [])
               if "ReferencedFrameOfReferenceUID" in r}
    if image_frame and frames and image_frame not in frames:
        raise GeometryError(
            f"{path}: the structure set's FrameOfReferenceUID {', '.join(sorted(frames))} differs from the image's "
            f"{image_frame} (series {source.get('SeriesInstanceUID', '?')}); it was drawn on another scan: give "
            "the image series it references"
        )
    referenced = {
        str(image.ReferencedSOPInstanceUID)
        for item in dataset.get("ROIContourSequence", [])
        for contour in item.get("ContourSequence", [])
        for image in contour.get("ContourImageSequence", [])
    }
    instances = {str(pydicom.dcmread(f, stop_before_pixels=True,
                                     specific_tags=["SOPInstanceUID"]).get("SOPInstanceUID", "")) for f in source_files}
    foreign = referenced - instances
    if foreign:
        series = {str(s.SeriesInstanceUID) for f in dataset.get("ReferencedFrameOfReferenceSequence", [])
                  for st in f.get("RTReferencedStudySequence", []) for s in st.get("RTReferencedSeriesSequence", [])}
        raise GeometryError(
            f"{path}: {len(foreign)} of the {len(referenced)} image(s) its contours reference are not in the image "
            f"series {source.get('SeriesInstanceUID', '?')} (the structure set references series "
            f"{', '.join(sorted(series)) or 'unknown'}); give the image series it was drawn on"
        )


def label_map(rois: list[Roi], shape: tuple[int, int, int], values: dict[int, int]) -> np.ndarray:
    """An int32 label map of the ROIs given by ``values`` (ROI number -> label value).

    Several ROIs may share a label value (their union). Where ROIs of different values
    overlap (a structure set's ROIs often do: an organ inside the body outline), the voxel
    goes to the value with fewer voxels, so nested structures stay visible.
    """
    array = np.zeros(shape, dtype=np.int32)
    sizes = np.zeros(max(values.values(), default=0) + 1, dtype=np.int64)
    for value in sorted(set(values.values())):
        mask = np.zeros(shape, dtype=bool)
        for roi in rois:
            if values.get(roi.number) == value:
                mask |= roi.mask(shape)
        sizes[value] = np.count_nonzero(mask)
        taken = mask & (array != 0)
        keep = taken & (sizes[array] <= sizes[value])
        if np.any(taken):
            log.info("label %d overlaps %d labelled voxel(s); the smaller structure keeps them", value,
                     int(np.count_nonzero(taken)))
        array[mask & ~keep] = value
    return array
