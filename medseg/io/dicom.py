"""DICOM: find the series in a folder, check that their slices form one grid, read the voxels.

Geometry is computed here from the headers (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing), never from file names or InstanceNumber: slices are sorted by their position
along the slice normal, and a stack that is not one regular grid (missing slice, uneven
spacing, mixed orientations, repeated positions, gantry tilt) is refused with a message
that says which. Gantry tilt is refused rather than dropped: ``Geometry`` has no shear, and
placing a tilted stack on an orthogonal grid moves its far slices by the accumulated drift
(a 1 degree tilt over 300 mm is 5 mm, silently, in every output written on that grid). Only
a drift of at most ``SHEAR_TOLERANCE`` of a pixel, which rounded positions produce, passes. Voxels of single-frame series are decoded by SimpleITK/GDCM, which handles
the compressed transfer syntaxes and applies RescaleSlope/Intercept per file (CT in HU).
Multi-frame images (enhanced CT/MR) are read with pydicom, with positions, orientation and
rescale taken from the per-frame and shared functional groups.

MONAI's ``PydicomReader`` is not used for series: it sorts slices by InstanceNumber and
averages the distance between them, so a missing slice, or numbering that runs against the
positions, gives a silently wrong grid (the failures this module exists to catch). MONAI's
``ITKReader`` needs the ``itk`` package, which medseg does not depend on.

Only an allow-list of acquisition fields reaches ``Volume.metadata``; no patient, study
date or institution field is ever copied, logged or put into an error message.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.io.files import has_dicom_preamble

log = logging.getLogger(__name__)

# Acquisition fields that identify no one; everything else in the header stays out. Free-text
# fields that PS3.15 (de-identification) asks to remove or replace, such as ProtocolName and
# ContrastBolusAgent, are left out; SeriesDescription stays: it is how users tell series apart.
METADATA_KEYWORDS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "SeriesDescription",
    "SeriesNumber",
    "BodyPartExamined",
    "ImageType",
    "SliceThickness",
    "SpacingBetweenSlices",
    "KVP",
    "ConvolutionKernel",
    "MagneticFieldStrength",
    "ScanningSequence",
    "SequenceName",
    "MRAcquisitionType",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "PhotometricInterpretation",
    "RescaleType",
)
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"}
_ORIENTATION_TOL = 1e-4
_SPACING_REL_TOL = 0.02  # slice gaps may differ by 2 % (rounded positions) before a stack is irregular
_SPACING_ABS_TOL = 0.01  # mm
SHEAR_TOLERANCE = 0.1  # largest in-plane drift of a slice off the slice normal, in pixels (rounding, not tilt)


@dataclass(frozen=True)
class DicomSeries:
    """One image series found in a folder (files unsorted; see ``read_series`` for order)."""

    uid: str
    modality: str
    description: str
    files: tuple[Path, ...]
    n_slices: int  # frames of all files together
    multiframe: bool  # enhanced / multi-frame objects: frames placed by functional groups

    def __str__(self) -> str:
        what = f"{self.n_slices} slice{'s' if self.n_slices != 1 else ''}"
        if self.multiframe:
            what += f" in {len(self.files)} multi-frame file{'s' if len(self.files) != 1 else ''}"
        return f"{self.uid} ({self.modality}, '{self.description}', {what})"


@dataclass(frozen=True)
class _Slice:
    """Where one 2D frame sits: what the stack checks need."""

    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient: row (x) direction, then column (y) direction
    pixel_spacing: tuple[float, float]  # (between rows, between columns) = (y, x)
    size: tuple[int, int]  # (rows, columns)


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The image series under ``folder`` (searched recursively), largest first.

    Raises ``InputError`` for an empty folder, a folder without DICOM files, a folder whose
    DICOM objects are all non-images (SEG, RTSTRUCT, ...), and a DICOM file that is corrupt.
    """
    return _sorted_series(_scan(Path(folder)))


def read_dicom(path: Path, series_uid: str | None = None, *, pick_largest: bool = False) -> tuple[np.ndarray, Geometry, dict, tuple[Path, ...]]:
    """Voxels ``(z, y, x)`` float32 in physical units, geometry, allow-listed metadata and source files."""
    series, headers = _select(path, series_uid, pick_largest=pick_largest)
    if series.multiframe:
        return _read_multiframe(series)
    return _read_single_frames(series, headers)


def read_dicom_geometry(path: Path, series_uid: str | None = None, *, pick_largest: bool = False) -> Geometry:
    """The geometry ``read_dicom`` would give, from the headers alone."""
    series, headers = _select(path, series_uid, pick_largest=pick_largest)
    if series.multiframe:
        _check_one_file(series)
        return _multiframe_geometry(headers[0])[1]
    return _series_geometry(headers, series)[1]


def multiframe_order(dataset: pydicom.Dataset) -> np.ndarray:
    """Frame indices of a multi-frame dataset in slice order (what ``read_dicom`` stacks as z)."""
    return _multiframe_geometry(dataset)[0]


def require_attributes(header: pydicom.Dataset, file: Path, output: Path, what: str) -> None:
    """Refuse to write a derived object (SEG, RTSTRUCT) whose source lacks what it must reference.

    The frame of reference cannot be invented: a new UID would claim a coordinate system the
    source does not share, and a planning system would then place the object on nothing.
    """
    for attribute in ("FrameOfReferenceUID", "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not str(header.get(attribute, "") or ""):
            raise InputError(
                f"cannot write {output} as {what}: the source image {file} lacks {attribute}, which a {what} must "
                "reference; save the labels as .nii.gz instead (or repair the source's header)"
            )


def stack_geometry(slices: list[_Slice], source: str, *, single_slice_spacing: float = 1.0) -> tuple[np.ndarray, Geometry]:
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
    spacing_z = _slice_spacing(along, positions[order], normal, source, min(first.pixel_spacing)) if len(slices) > 1 else single_slice_spacing
    geometry = Geometry(
        shape=(len(slices), *first.size),
        spacing=(spacing_z, *first.pixel_spacing),
        origin=tuple(positions[order[0]]),
        direction=direction,
    )
    return order, geometry


def metadata_of(header: pydicom.Dataset) -> dict[str, Any]:
    """The allow-listed fields of ``header`` as plain JSON-serialisable values."""
    metadata: dict[str, Any] = {}
    for keyword in METADATA_KEYWORDS:
        value = header.get(keyword)
        if value is None or value == "":
            continue
        metadata[keyword] = _plain(value)
    return metadata


def _scan(folder: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """The image files under ``folder`` with their headers, grouped by SeriesInstanceUID."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "DICOMDIR")
    if not files:
        raise InputError(f"{folder}: the folder is empty; give the folder that holds the DICOM files of a series")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    non_images: Counter[str] = Counter()
    not_dicom: list[Path] = []
    for path in files:
        header = _read_header(path)
        if header is None:
            not_dicom.append(path)
        elif not _is_image(header):
            non_images[str(header.get("Modality", "unknown")) + ("" if "Rows" in header else " without pixel data")] += 1
        else:
            groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    if not groups:
        if non_images:
            found = ", ".join(f"{n} {kind}" for kind, n in sorted(non_images.items()))
            raise InputError(f"{folder}: holds DICOM objects ({found}) but no image series; give the folder of the images")
        examples = ", ".join(p.name for p in not_dicom[:3])
        raise InputError(
            f"{folder}: none of its {len(not_dicom)} file(s) is DICOM (e.g. {examples}); give a DICOM series folder, "
            "or the path of a NIfTI/NRRD/MHA file"
        )
    if not_dicom:
        log.info("%s: skipped %d file(s) that are not DICOM", folder, len(not_dicom))
    return groups


def _sorted_series(groups: dict[str, list[tuple[Path, pydicom.Dataset]]]) -> list[DicomSeries]:
    return sorted((_describe(uid, members) for uid, members in groups.items()), key=lambda s: (-s.n_slices, s.uid))


def _select(path: Path, series_uid: str | None, *, pick_largest: bool) -> tuple[DicomSeries, list[pydicom.Dataset]]:
    """The series to load (by UID, the only one, or the largest when asked) and its files' headers."""
    if not path.is_dir():
        header = _read_header(path)
        if header is None:
            raise InputError(f"{path}: not a DICOM file (no DICOM header could be read)")
        if not _is_image(header):
            raise InputError(f"{path}: a DICOM {header.get('Modality', 'object')} without an image to load")
        series = _describe(str(header.get("SeriesInstanceUID", "")), [(path, header)])
        if series_uid is not None and series.uid != series_uid:
            raise InputError(f"{path}: belongs to series {series.uid}, not {series_uid}")
        return series, [header]
    groups = _scan(path)
    found = _sorted_series(groups)
    listing = "\n".join(f"  - {s}" for s in found)
    if series_uid is not None:
        chosen = next((s for s in found if s.uid == series_uid), None)
        if chosen is None:
            raise InputError(f"{path}: no series with SeriesInstanceUID {series_uid}; the folder holds:\n{listing}")
    elif len(found) == 1 or pick_largest:
        chosen = found[0]
        if len(found) > 1:
            log.info("%s: %d series found, loading the largest: %s", path, len(found), chosen)
    else:
        raise InputError(
            f"{path}: holds {len(found)} image series; choose one with series_uid=... (CLI: --series-uid) "
            f"or pick_largest=True (CLI: --pick-largest):\n{listing}"
        )
    return chosen, [header for _, header in groups[chosen.uid]]


def _read_single_frames(series: DicomSeries, headers: list[pydicom.Dataset]) -> tuple[np.ndarray, Geometry, dict, tuple[Path, ...]]:
    samples = {int(h.get("SamplesPerPixel", 1)) for h in headers}
    if samples != {1}:
        raise InputError(f"series {series.uid}: colour images (SamplesPerPixel {sorted(samples)}); medseg reads grey-value volumes")
    order, geometry = _series_geometry(headers, series)
    files = tuple(series.files[i] for i in order)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkFloat32)  # so a fractional RescaleSlope is not truncated
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(_unreadable_files_message(files, series.uid)) from error
    array = sitk.GetArrayFromImage(image)
    if array.shape != geometry.shape:
        raise InputError(f"series {series.uid}: GDCM decoded {array.shape} voxels, the headers describe {geometry.shape}")
    metadata = {"format": "dicom-series", **metadata_of(headers[order[0]]), "n_files": len(files)}
    return array, geometry, metadata, files


def _series_geometry(headers: list[pydicom.Dataset], series: DicomSeries) -> tuple[np.ndarray, Geometry]:
    slices = [_slice_of(h, f) for h, f in zip(headers, series.files)]
    thickness = headers[0].get("SpacingBetweenSlices") or headers[0].get("SliceThickness") or 1.0
    return stack_geometry(slices, f"series {series.uid}", single_slice_spacing=float(thickness))


def _read_multiframe(series: DicomSeries) -> tuple[np.ndarray, Geometry, dict, tuple[Path, ...]]:
    _check_one_file(series)
    path = series.files[0]
    dataset = _read_dataset(path)
    order, geometry = _multiframe_geometry(dataset)
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: a colour image (SamplesPerPixel {dataset.SamplesPerPixel}); medseg reads grey-value volumes")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises several types for missing decoders and short data
        raise InputError(
            f"{path}: cannot decode the pixel data ({error}); for compressed multi-frame files install "
            "pylibjpeg with its plugins, or convert the file to a single-frame series"
        ) from error
    stored = np.asarray(stored).reshape(len(order), *geometry.shape[1:])
    slopes, intercepts = _frame_rescales(dataset, len(order))
    array = stored.astype(np.float32) * slopes[:, None, None] + intercepts[:, None, None]
    metadata = {"format": "dicom-multiframe", **metadata_of(dataset), "n_files": 1}
    return np.ascontiguousarray(array[order]), geometry, metadata, (path,)


def _check_one_file(series: DicomSeries) -> None:
    if len(series.files) > 1:
        raise InputError(
            f"series {series.uid}: {len(series.files)} multi-frame files in one series; give the path of one of them"
        )


def _multiframe_geometry(dataset: pydicom.Dataset) -> tuple[np.ndarray, Geometry]:
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    thickness = _functional(dataset, per_frame[0], "PixelMeasuresSequence", "SliceThickness") if per_frame else None
    return stack_geometry(_frames(dataset), _name(dataset), single_slice_spacing=float(thickness or 1.0))


def _frames(dataset: pydicom.Dataset) -> list[_Slice]:
    """Per-frame geometry of a multi-frame dataset, from its functional groups."""
    n_frames = int(dataset.get("NumberOfFrames", 1))
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n_frames:
        raise InputError(
            f"{_name(dataset)}: a multi-frame image without per-frame functional groups ({n_frames} frames); "
            "medseg cannot place its frames in space. Convert it to an enhanced or single-frame series"
        )
    size = (dataset.get("Rows"), dataset.get("Columns"))
    frames = []
    for index, groups in enumerate(per_frame):
        position = _functional(dataset, groups, "PlanePositionSequence", "ImagePositionPatient")
        orientation = _functional(dataset, groups, "PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = _functional(dataset, groups, "PixelMeasuresSequence", "PixelSpacing")
        if position is None or orientation is None or spacing is None:
            raise InputError(f"{_name(dataset)}: frame {index + 1} lacks its position, orientation or pixel spacing")
        frames.append(_make_slice(position, orientation, spacing, size, f"{_name(dataset)} frame {index + 1}"))
    return frames


def _frame_rescales(dataset: pydicom.Dataset, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    per_frame = dataset.PerFrameFunctionalGroupsSequence
    slopes, intercepts = np.ones(n_frames), np.zeros(n_frames)
    for index, groups in enumerate(per_frame):
        slope = _functional(dataset, groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(dataset, groups, "PixelValueTransformationSequence", "RescaleIntercept")
        slopes[index] = 1.0 if slope is None else float(slope)
        intercepts[index] = 0.0 if intercept is None else float(intercept)
    return slopes, intercepts


def _functional(dataset: pydicom.Dataset, per_frame: pydicom.Dataset, sequence: str, keyword: str) -> Any:
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
            if missing >= 1 and abs(gaps[worst] - (missing + 1) * typical) <= max(_SPACING_REL_TOL * typical, _SPACING_ABS_TOL)
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
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns") if k not in header]
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
        raise InputError(f"{where}: unreadable position, orientation, pixel spacing or size ({error}); the header is damaged") from error
    if (
        made.position.shape != (3,) or made.orientation.shape != (6,) or len(made.pixel_spacing) != 2
        or not np.all(np.isfinite(np.r_[made.position, made.orientation, made.pixel_spacing]))
        or min(made.pixel_spacing) <= 0 or min(made.size) < 1
        or min(np.linalg.norm(made.orientation[:3]), np.linalg.norm(made.orientation[3:])) < 0.5
    ):
        raise InputError(
            f"{where}: impossible geometry in the header (position {made.position.tolist()}, orientation "
            f"{made.orientation.tolist()}, pixel spacing {list(made.pixel_spacing)}, size {made.size}); the header is damaged"
        )
    return made


def _describe(uid: str, members: list[tuple[Path, pydicom.Dataset]]) -> DicomSeries:
    header = members[0][1]
    return DicomSeries(
        uid=uid,
        modality=str(header.get("Modality", "OT")),
        description=str(header.get("SeriesDescription", "")),
        files=tuple(path for path, _ in members),
        n_slices=sum(int(h.get("NumberOfFrames", 1) or 1) for _, h in members),
        multiframe=any("PerFrameFunctionalGroupsSequence" in h or int(h.get("NumberOfFrames", 1) or 1) > 1 for _, h in members),
    )


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file, None for a file that is not DICOM.

    Files without the Part-10 preamble (common in older exports) are parsed with ``force``
    and accepted only when they look like a DICOM image header. A file *with* the preamble
    that cannot be parsed is corrupt, and says so.
    """
    try:
        return _decoded(pydicom.dcmread(path, stop_before_pixels=True))
    except InvalidDicomError:
        pass
    except Exception as error:
        if has_dicom_preamble(path):
            raise InputError(f"{path}: a corrupt DICOM file ({type(error).__name__}: {error}); remove or replace it") from error
        return None
    try:
        with warnings.catch_warnings():  # parsing random bytes warns about every "element"
            warnings.simplefilter("ignore")
            header = _decoded(pydicom.dcmread(path, stop_before_pixels=True, force=True))
            return header if "SOPClassUID" in header or "SeriesInstanceUID" in header else None
    except Exception:  # random bytes parsed as DICOM fail in many ways: not DICOM
        return None


def _decoded(dataset: pydicom.Dataset) -> pydicom.Dataset:
    """``dataset`` with every element decoded now: pydicom decodes values on first access, so a
    damaged value would otherwise fail wherever it is first used, with an error naming no file."""
    for _ in dataset.iterall():
        pass
    return dataset


def _read_dataset(path: Path) -> pydicom.Dataset:
    try:
        return _decoded(pydicom.dcmread(path, force=True))
    except Exception as error:
        raise InputError(f"{path}: a corrupt DICOM file ({type(error).__name__}: {error}); remove or replace it") from error


def _is_image(header: pydicom.Dataset) -> bool:
    return "Rows" in header and str(header.get("Modality", "")) not in _NON_IMAGE_MODALITIES


def _unreadable_files_message(files: tuple[Path, ...], uid: str) -> str:
    """Find which files of a series GDCM cannot decode (only on the failure path: one by one)."""
    bad = []
    for path in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            bad.append(path)
    names = ", ".join(str(p) for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return f"series {uid}: cannot decode the pixel data of {names or 'the series'} (truncated or corrupt); remove or replace the file(s)"


def _name(dataset: pydicom.Dataset) -> str:
    return str(getattr(dataset, "filename", None) or "DICOM dataset")


def _plain(value: Any) -> Any:
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.DSdecimal, float)):
        return float(value)
    if isinstance(value, (pydicom.valuerep.IS, int)):
        return int(value)
    return str(value)
