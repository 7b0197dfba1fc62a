"""DICOM voxels: decode a series or a multi-frame file into a float32 ``(z, y, x)`` array.

Voxels of single-frame series are decoded by SimpleITK/GDCM, which handles the compressed
transfer syntaxes and applies RescaleSlope/Intercept per file (CT in HU). Multi-frame
images (enhanced CT/MR) are read with pydicom, with the rescale taken from the per-frame
and shared functional groups; their slice order comes from ``medseg.io.dicom.geometry``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from medseg.errors import InputError
from medseg.geometry import Geometry
from medseg.io.dicom.geometry import check_one_file, functional_value, multiframe_geometry, series_geometry
from medseg.io.dicom.scan import DicomSeries, metadata_of, read_dataset, select_series

def read_dicom(path: Path, series_uid: str | None = None, *,
               pick_largest: bool = False) -> tuple[np.ndarray, Geometry, dict, tuple[Path, ...]]:
    """Voxels ``(z, y, x)`` float32 in physical units, geometry, allow-listed metadata and source files."""
    series, headers = select_series(path, series_uid, pick_largest=pick_largest)
    if series.multiframe:
        return _read_multiframe(series)
    return _read_single_frames(series, headers)


def _read_single_frames(series: DicomSeries,
                        headers: list[pydicom.Dataset]) -> tuple[np.ndarray, Geometry, dict, tuple[Path, ...]]:
    samples = {int(h.get("SamplesPerPixel", 1)) for h in headers}
    if samples != {1}:
        raise InputError(f"series {series.uid}: colour images (SamplesPerPixel {sorted(samples)}); medseg reads "
                         "grey-value volumes")
    order, geometry = series_geometry(headers, series)
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
        raise InputError(f"series {series.uid}: GDCM decoded {array.shape} voxels, the headers describe "
                         f"{geometry.shape}")
    metadata = {"format": "dicom-series", **metadata_of(headers[order[0]]), "n_files": len(files)}
    return array, geometry, metadata, files


def _read_multiframe(series: DicomSeries) -> tuple[np.ndarray, Geometry, dict, tuple[Path, ...]]:
    check_one_file(series)
    path = series.files[0]
    dataset = read_dataset(path)
    order, geometry = multiframe_geometry(dataset)
    if int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise InputError(f"{path}: a colour image (SamplesPerPixel {dataset.SamplesPerPixel}); medseg reads "
                         "grey-value volumes")
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


def _frame_rescales(dataset: pydicom.Dataset, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    per_frame = dataset.PerFrameFunctionalGroupsSequence
    slopes, intercepts = np.ones(n_frames), np.zeros(n_frames)
    for index, groups in enumerate(per_frame):
        slope = functional_value(dataset, groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = functional_value(dataset, groups, "PixelValueTransformationSequence", "RescaleIntercept")
        slopes[index] = 1.0 if slope is None else float(slope)
        intercepts[index] = 0.0 if intercept is None else float(intercept)
    return slopes, intercepts


def _unreadable_files_message(files: tuple[Path, ...], uid: str) -> str:
    """Find which files of a series GDCM cannot decode (only on the failure path: one by one)."""
    bad = []
    for path in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            bad.append(path)
    names = ", ".join(str(p) for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    return (f"series {uid}: cannot decode the pixel data of {names or 'the series'} (truncated or corrupt); "
            "remove or replace the file(s)")
