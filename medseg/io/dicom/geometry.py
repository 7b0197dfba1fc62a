"""DICOM geometry: place the slices of a series (or the frames of a multi-frame file) on one grid.

Geometry is computed here from the headers (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing), never from file names or InstanceNumber: slices are sorted by their position
along the slice normal, and a stack that is not one regular grid (missing slice, uneven
spacing, mixed orientations, repeated positions, gantry tilt) is refused with a message
that says which. Gantry tilt is refused rather than dropped: ``Geometry`` has no shear, and
placing a tilted stack on an orthogonal grid moves its far slices by the accumulated drift
(a 1 degree tilt over 300 mm is 5 mm, silently, in every output written on that grid). Only
a drift of at most ``SHEAR_TOLERANCE`` of a pixel, which rounded positions produce, passes.
Multi-frame images (enhanced CT/MR) are placed by their per-frame and shared functional groups.

MONAI's ``PydicomReader`` is not used for series: it sorts slices by InstanceNumber and
averages the distance between them, so a missing slice, or numbering that runs against the
positions, gives a silently wrong grid (the failures this module exists to catch). MONAI's
``ITKReader`` needs the ``itk`` package, which medseg does not depend on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.io.dicom.scan import DicomSeries, dataset_name, select_series

_ORIENTATION_TOL = 1e-4
_SPACING_REL_TOL = 0.02  # slice gaps may differ by 2 % (rounded positions) before a stack is irregular
_SPACING_ABS_TOL = 0.01  # mm
SHEAR_TOLERANCE = 0.1  # largest in-plane drift of a slice off the slice normal, in pixels (rounding, not tilt)


@dataclass(frozen=True)
class _Slice:
    """Where one 2D frame sits: what the stack checks need."""

    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row (x) direction, then column (y) direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns) = (y, x)
    size: tuple[int, int]  # (rows, columns)


def read_dicom_geometry(path: Path, series_uid: str | None = None, *, pick_largest: bool = False) -> Geometry:
    """The geometry ``read_dicom`` would give, from the headers alone."""
    series, headers = select_series(path, series_uid, pick_largest=pick_largest)
    if series.multiframe:
        check_one_file(series)
        return multiframe_geometry(headers[0])[1]
    return series_geometry(headers, series)[1]


def multiframe_order(dataset: pydicom.Dataset) -> np.ndarray:
    """Frame indices of a multi-frame dataset in slice order (what ``read_dicom`` stacks as z)."""
    return multiframe_geometry(dataset)[0]


def stack_geometry(slices: list[_Slice], source: str, *,
                   single_slice_spacing: float = 1.0) -> tuple[np.ndarray, Geometry]:
    """Sort 2D frames into one regular 3D grid: the order (indices into ``slices``) and its geometry.

    ``single_slice_spacing`` is the z spacing of a stack of one (its slice thickness).
    Raises ``GeometryError`` naming ``source`` when the frames are not one stack of parallel,
    equally spaced, equally sized slices.
    """
    first = slices[0]
    orientations = {tuple(np.round(s.orientation, 3)) for s in slices}
    if any(not np.allclose(s.orientation, first.orientation, atol=_ORIENTATION_TOL) for s in slices):
        raise GeometryError(
            f"{source}: its {len(slices)} slices have {len(orientations)} different orientations (a localizer or a "
            "multi-plane series?); medseg needs one stack of parallel slices: pick another series"
        )
    if any(s.size != first.size or not np.allclose(s.pixel_spacing, first.pixel_spacing, atol=1e-4) for s in slices):
        sizes = sorted({(s.size, tuple(round(v, 4) for v in s.pixel_spacing)) for s in slices})
        raise GeometryError(f"{source}: slices differ in size or pixel spacing ({sizes}); medseg needs one grid")
    direction = _direction(first.orientation)
    normal = direction[:, 2]
    positions = np.array([s.position for s in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    spacing_z = _slice_spacing(along, positions[order], normal, source,
                               min(first.pixel_spacing)) if len(slices) > 1 else single_slice_spacing
    geometry = Geometry(
        shape=(len(slices), *first.size),
        spacing=(spacing_z, *first.pixel_spacing),
        origin=tuple(positions[order[0]]),
        direction=direction,
    )
    return order, geometry


def series_geometry(headers: list[pydicom.Dataset], series: DicomSeries) -> tuple[np.ndarray, Geometry]:
    slices = [_slice_of(h, f) for h, f in zip(headers, series.files)]
    thickness = headers[0].get("SpacingBetweenSlices") or headers[0].get("SliceThickness") or 1.0
    return stack_geometry(slices, f"series {series.uid}", single_slice_spacing=float(thickness))


def multiframe_geometry(dataset: pydicom.Dataset) -> tuple[np.ndarray, Geometry]:
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    thickness = functional_value(dataset, per_frame[0], "PixelMeasuresSequence",
                                 "SliceThickness") if per_frame else None
    return stack_geometry(_frames(dataset), dataset_name(dataset), single_slice_spacing=float(thickness or 1.0))


def check_one_file(series: DicomSeries) -> None:
    if len(series.files) > 1:
        raise InputError(
            f"series {series.uid}: {len(series.files)} multi-frame files in one series; give the path of one of them"
        )


def _frames(dataset: pydicom.Dataset) -> list[_Slice]:
    """Per-frame geometry of a multi-frame dataset, from its functional groups."""
    n_frames = int(dataset.get("NumberOfFrames", 1))
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise InputError(
            f"{dataset_name(dataset)}: a multi-frame image without per-frame functional groups ({n_frames} frames); "
            "medseg cannot place its frames in space. Convert it to an enhanced or single-frame series"
        )
    size = (dataset.get("Rows"), dataset.get("Columns"))
    frames = []
    for index, groups in enumerate(per_frame):
        position = functional_value(dataset, groups, "PlanePositionSequence", "ImagePositionPatient")
        orientation = functional_value(dataset, groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = functional_value(dataset, groups, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise InputError(f"{dataset_name(dataset)}: frame {index + 1} lacks its position, orientation or "
                             "pixel spacing")
        frames.append(_make_slice(position, orientation, spacing, size, f"{dataset_name(dataset)} frame {index + 1}"))
    return frames


def functional_value(dataset: pydicom.Dataset, per_frame: pydicom.Dataset, sequence: str, keyword: str) -> Any:
    """A frame's value: per-frame group first, then the shared group, then the top level."""
    shared = dataset.get("SharedFunctionalGroupsSequence")
    for groups in (per_frame, shared[0] if shared else None):
        if groups is not None and sequence in groups and keyword in groups[sequence][0]:
            return groups[sequence][0][keyword].value
    return dataset.get(keyword)


def _slice_spacing(along: np.ndarray, positions: np.ndarray, normal: np.ndarray, source: str, pixel: float) -> float:
    """The spacing between sorted slices, after checking the stack is regular and unsheared."""
    gaps = np.diff(along)
    if np.any(gaps < _SPACING_ABS_TOL):
        n_dup = int(np.count_nonzero(gaps < _SPACING_ABS_TOL))
        raise GeometryError(
            f"{source}: {n_dup} slice(s) repeat the position of another; the series holds several volumes "
            "(echoes, phases, time points or repeated acquisitions) and medseg reads one 3D volume per series. "
            "Split it (e.g. dcm2niix) and load one volume"
        )
    spacing = (along[-1] - along[0]) / (len(along) - 1)
    typical = float(np.median(gaps))
    irregular = np.abs(gaps - typical) > max(_SPACING_REL_TOL * typical, _SPACING_ABS_TOL)
    if np.any(irregular):
        worst = int(np.argmax(np.abs(gaps - typical)))
        missing = int(round(gaps[worst] / typical)) - 1
        what = (
            f"{missing} missing slice(s): a gap of {gaps[worst]:.3f} mm after slice {worst + 1} of {len(along)} where "
            f"slices are {typical:.3f} mm apart"
            if missing >= 1
            and abs(gaps[worst] - (missing + 1) * typical) <= max(_SPACING_REL_TOL * typical, _SPACING_ABS_TOL)
            else f"uneven slice spacing: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm"
        )
        raise GeometryError(
            f"{source}: {what}; medseg will not guess a grid. Check that the series is complete, or resample it "
            "to a uniform spacing first"
        )
    offsets = positions - positions[0]
    in_plane = offsets - np.outer(offsets @ normal, normal)
    drift = float(np.max(np.linalg.norm(in_plane, axis=1)))
    if drift > SHEAR_TOLERANCE * pixel:
        tilt = np.degrees(np.arctan2(np.linalg.norm(in_plane[-1]), along[-1] - along[0]))
        raise GeometryError(
            f"{source}: slice positions do not follow the slice normal (gantry tilt of about {tilt:.2f} degrees, the "
            f"last slice {drift:.2f} mm off); the grid is sheared and medseg will not drop the shear: resample the "
            "series to an orthogonal grid first (e.g. dcm2niix, or SimpleITK's Resample)"
        )
    return float(spacing)


def _direction(orientation: np.ndarray) -> np.ndarray:
    """Orthonormal direction (columns: row, column and normal directions) from an IOP."""
    row = orientation[:3] / np.linalg.norm(orientation[:3])
    column = orientation[3:] - (orientation[3:] @ row) * row  # IOP values are rounded decimal strings
    column /= np.linalg.norm(column)
    return np.column_stack([row, column, np.cross(row, column)])


def _slice_of(header: pydicom.Dataset, path: Path) -> _Slice:
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
               if k not in header]
    if missing:
        raise InputError(f"{path}: lacks {', '.join(missing)}; medseg cannot place this image in space")
    return _make_slice(header.ImagePositionPatient, header.ImageOrientationPatient, header.PixelSpacing,
                       (header.Rows, header.Columns), str(path))


def _make_slice(position: Any, orientation: Any, spacing: Any, size: Any, where: str) -> _Slice:
    """A ``_Slice`` from header values, refusing values no image can have (a damaged header)."""
    try:
        made = _Slice(np.array(position, float), np.array(orientation, float), tuple(float(v) for v in spacing),
                      (int(size[0]), int(size[1])))
    except (TypeError, ValueError, IndexError) as error:
        raise InputError(f"{where}: unreadable position, orientation, pixel spacing or size ({error}); the header "
                         "is damaged") from error
    if (
        made.position.shape != (3,) or made.orientation.shape != (6,) or len(made.pixel_spacing) != 2
        or not np.all(np.isfinite(np.r_[made.position, made.orientation, made.pixel_spacing]))
        or min(made.pixel_spacing) <= 0 or min(made.size) < 1
        or min(np.linalg.norm(made.orientation[:3]), np.linalg.norm(made.orientation[3:])) < 0.5
    ):
        raise InputError(
            f"{where}: impossible geometry in the header (position {made.position.tolist()}, orientation "
            f"{made.orientation.tolist()}, pixel spacing {list(made.pixel_spacing)}, size {made.size}); the header "
            "is damaged"
        )
    return made
