"""DICOM headers: find the image series in a folder, pick one, and copy only allow-listed fields.

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

import pydicom
from pydicom.errors import InvalidDicomError

from medseg.errors import InputError
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


def list_dicom_series(folder: str | Path) -> list[DicomSeries]:
    """The image series under ``folder`` (searched recursively), largest first.

    Raises ``InputError`` for an empty folder, a folder without DICOM files, a folder whose
    DICOM objects are all non-images (SEG, RTSTRUCT, ...), and a DICOM file that is corrupt.
    """
    return _sorted_series(_scan(Path(folder)))


def select_series(path: Path, series_uid: str | None, *,
                  pick_largest: bool) -> tuple[DicomSeries, list[pydicom.Dataset]]:
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
            non_images[str(header.get("Modality", "unknown"))
                       + ("" if "Rows" in header else " without pixel data")] += 1
        else:
            groups.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    if not groups:
        if non_images:
            found = ", ".join(f"{n} {kind}" for kind, n in sorted(non_images.items()))
            raise InputError(f"{folder}: holds DICOM objects ({found}) but no image series; give the folder of "
                             "the images")
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


def _describe(uid: str, members: list[tuple[Path, pydicom.Dataset]]) -> DicomSeries:
    header = members[0][1]
    return DicomSeries(
        uid=uid,
        modality=str(header.get("Modality", "OT")),
        description=str(header.get("SeriesDescription", "")),
        files=tuple(path for path, _ in members),
        n_slices=sum(int(h.get("NumberOfFrames", 1) or 1) for _, h in members),
        multiframe=any("PerFrameFunctionalGroupsSequence" in h or int(h.get("NumberOfFrames", 1) or 1) > 1
                       for _, h in members),
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
            raise InputError(f"{path}: a corrupt DICOM file ({type(error).__name__}: {error}); remove or "
                             "replace it") from error
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


def read_dataset(path: Path) -> pydicom.Dataset:
    try:
        return _decoded(pydicom.dcmread(path, force=True))
    except Exception as error:
        raise InputError(f"{path}: a corrupt DICOM file ({type(error).__name__}: {error}); remove or "
                         "replace it") from error


def _is_image(header: pydicom.Dataset) -> bool:
    return "Rows" in header and str(header.get("Modality", "")) not in _NON_IMAGE_MODALITIES


def dataset_name(dataset: pydicom.Dataset) -> str:
    return str(getattr(dataset, "filename", None) or "DICOM dataset")


def _plain(value: Any) -> Any:
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (pydicom.valuerep.DSfloat, pydicom.valuerep.DSdecimal, float)):
        return float(value)
    if isinstance(value, (pydicom.valuerep.IS, int)):
        return int(value)
    return str(value)
