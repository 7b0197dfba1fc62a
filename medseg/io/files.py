"""What kind of file a path is (image, DICOM label object, integer label map), what to name files made
from it, and writing output files atomically."""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom

from medseg.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: A label map: at most this many distinct values, and at least this share of background (0).
MAX_LABELS = 255
MIN_BACKGROUND = 0.3
SUPPORTED = "a DICOM folder or file, NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd)"


def format_of(path: Path) -> str:
    """``"dicom-dir"``, ``"nifti"``, ``"itk"`` or ``"dicom"`` for an existing path.

    Suffixes decide for NIfTI and ITK formats; any other file is taken for DICOM when it
    carries the DICOM preamble or a DICOM suffix (files without a suffix are common in
    DICOM exports, so those are handed to the DICOM reader, which says when they are not).
    """
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return "dicom-dir"
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(ITK_SUFFIXES):
        return "itk"
    if name.endswith(DICOM_SUFFIXES) or "." not in name or has_dicom_preamble(path):
        return "dicom"
    raise InputError(f"{path}: not a format medseg reads; give {SUPPORTED}")


def has_dicom_preamble(path: Path) -> bool:
    """True when the file has the 128-byte preamble followed by ``DICM`` (DICOM Part 10)."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def label_file_kind(path: str | os.PathLike) -> Literal["rtstruct", "seg"] | None:
    """``"rtstruct"`` or ``"seg"`` for a DICOM RT Structure Set or Segmentation file, else None.

    For faces that must decide how to open a dropped file (napari): a label file needs the
    image it was drawn on (``load_labels(path, like=volume)``), not ``load_volume``. Reads
    the header only; a folder, a non-DICOM or an unreadable file gives None.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                     specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # not DICOM, or too damaged to say
        return None
    return dicom_label_kind(header)


def label_file_names(path: str | os.PathLike) -> list[str]:
    """The ROI names of an RTSTRUCT or the segment labels of a SEG, from the header ([] otherwise)."""
    kind = label_file_kind(path)
    if kind is None:
        return []
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if kind == "rtstruct":
            return [str(item.get("ROIName", "")) for item in header.get("StructureSetROISequence", [])]
        return [str(item.get("SegmentLabel", "")) for item in header.get("SegmentSequence", [])]
    except Exception as error:  # a header that parsed for its class but not further: corrupt
        raise InputError(f"{path}: a corrupt DICOM {kind} header ({type(error).__name__}: {error}); "
                         "re-export it") from error


def dicom_label_kind(header: pydicom.Dataset) -> Literal["rtstruct", "seg"] | None:
    """``label_file_kind`` of a header already read (by SOP class; by modality when the class is absent)."""
    sop_class, modality = str(header.get("SOPClassUID", "")), str(header.get("Modality", ""))
    if sop_class == pydicom.uid.RTStructureSetStorage or (not sop_class and modality == "RTSTRUCT"):
        return "rtstruct"
    if sop_class == pydicom.uid.SegmentationStorage or (not sop_class and modality == "SEG"):
        return "seg"
    return None


def is_label_map(array: np.ndarray, *, stored_as_integers: bool = True) -> bool:
    """True for integers on disk, whole non-negative values, few of them, mostly 0: a segmentation.

    Decided from the header and the voxels, never from the file name, for faces that open a
    file as an image or as labels (napari). ``stored_as_integers``: ``stored_as_integers(path)``.

    >>> is_label_map(np.array([[0, 0, 0, 1], [0, 0, 2, 2]], dtype=np.float32))
    True
    >>> is_label_map(np.array([[-1000, 40], [60, 300]], dtype=np.float32))
    False
    >>> is_label_map(np.array([[0, 0, 0, 1000]], dtype=np.float32), stored_as_integers=False)
    False
    """
    if not stored_as_integers:  # label maps are written as integers; a float file is an image
        return False
    sample = array[::2, ::2, ::2] if array.ndim == 3 else array
    if sample.size == 0 or sample.min() < 0 or not np.array_equal(sample, np.round(sample)):
        return False
    if np.count_nonzero(sample == 0) < MIN_BACKGROUND * sample.size:
        return False
    values = np.unique(array)
    return len(values) <= MAX_LABELS + 1 and np.array_equal(array, np.round(array))


def stored_as_integers(path: str | os.PathLike) -> bool:
    """Whether a NIfTI / NRRD / MetaImage file stores integer voxels (its header, no voxels read).

    False for anything else: a DICOM image series is an image (SEG and RTSTRUCT: ``label_file_kind``).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        header = nib.load(path).header
        scaled = header.get_slope_inter()[0] not in (None, 1.0)
        return np.issubdtype(header.get_data_dtype(), np.integer) and not scaled
    if name.endswith(ITK_SUFFIXES):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return "float" not in sitk.GetPixelIDValueAsString(reader.GetPixelID()) and reader.GetNumberOfComponents() == 1
    return False


def output_suffix(path: Path) -> str:
    """The format-deciding suffix of an output path (``.nii.gz`` counts as one)."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def volume_stem(path: str | os.PathLike) -> str:
    """A volume file's or folder's name without its format suffix: ``ct.nii.gz`` -> ``ct``, ``series`` -> ``series``."""
    name = Path(path).name
    for suffix in (".nii.gz", *NIFTI_SUFFIXES, *ITK_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def safe_file_name(name: str, *, default: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_`` and ``.`` made ``_`` (``default`` if empty).

    >>> safe_file_name("CT 1/2: liver", default="case")
    'CT_1_2__liver'
    """
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or default


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    A crash or error while writing leaves any earlier file at ``path`` untouched and no
    half-written file behind. The temporary name keeps the final suffix, so writers that
    choose their encoding from the suffix (``.nii.gz``) behave the same.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: the writer creates the file itself, so it gets the user's umask, not 0600.
    tmp_path = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{output_suffix(path)}"
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)
