"""Write a label map as a DICOM RT Structure Set that planning systems read.

Each label value becomes one ROI; on every slice its boundary is traced with
``skimage.measure.find_contours`` at level 0.5 on the zero-padded mask, i.e. halfway
between inside and outside voxel centres (sub-voxel), so filling the polygons again by voxel
centre gives the same voxels. Holes come out as separate polygons inside their outer one and
islands inside holes likewise: the even-odd rule of the reader (and of planning systems)
restores them without "pin hole" cuts. Collinear points are dropped. Points are written in
patient coordinates (LPS mm) from ``Geometry``, so oblique and sagittal/coronal series work.

What the header holds (PS3.3 A.19, RT Structure Set IOD):

* Patient module: Patient's Name, ID, Birth Date and Sex copied from the source (Type 2:
  the object must file under the same patient); General Study: the study's UID, ID, date,
  time and accession number (it belongs to the same study); nothing else from the source.
  Referring Physician's Name and Operators' Name are written empty (Type 2).
* Frame of Reference: the source's UID and Position Reference Indicator.
* Structure Set / ROI Contour: the frame of reference, the referenced series and every
  source SOP instance; each contour references the image (and frame) it lies on.
* Algorithm identification: per ROI, ROI Generation Algorithm (AUTOMATIC, or SEMIAUTOMATIC
  when prompts made it), ROI Generation Description (medseg version and method) and the ROI
  Derivation Algorithm Identification Sequence (3006,0037) (name, version, and the model and
  its SHA-256 as parameters); General Equipment names medseg and its version. An untrained
  model's output says UNTRAINED in the descriptions.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, RTStructureSetStorage, generate_uid

import medseg
from medseg.errors import InputError
from medseg.io.dicom import multiframe_order, require_attributes
from medseg.io.files import atomic_output
from medseg.roi_names import TG263, standard_name
from medseg.volume import LabelVolume, Volume

log = logging.getLogger(__name__)

_PATIENT = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_STUDY = ("StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber")
_DETACHED_STUDY = "1.2.840.10008.3.1.2.3.1"  # the SOP class PS3.3 C.8.8.5 asks RT Referenced Study to name
_COLORS = ((220, 20, 60), (65, 105, 225), (50, 205, 50), (255, 165, 0), (148, 0, 211), (0, 206, 209),
           (255, 105, 180), (139, 69, 19), (154, 205, 50), (70, 130, 180), (255, 215, 0), (128, 128, 128))


def write_rtstruct(labels: LabelVolume, like: Volume, path: Path, *, series_uid: str | None = None,
                   instance_uid: str | None = None) -> None:
    """Write ``labels`` as an RTSTRUCT referencing ``like``'s source DICOM files (new UIDs unless given)."""
    if not like.source_files:
        raise InputError(
            f"cannot write {path} as RTSTRUCT: the image was not read from DICOM "
            f"({like.metadata.get('format', 'unknown format')}); an RT Structure Set must reference its image series"
        )
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in like.source_files]
    require_attributes(sources[0], like.source_files[0], path, "RTSTRUCT")
    values = labels.labels
    if not values:
        raise InputError(f"cannot write {path} as RTSTRUCT: the label map is empty (a structure set needs at least "
                         "one ROI)")
    dataset = _header(labels, sources, series_uid or generate_uid(), instance_uid or generate_uid())
    images = _contour_images(sources)
    dataset.ReferencedFrameOfReferenceSequence = _referenced_frame(sources[0], images)
    dataset.StructureSetROISequence = Sequence([_roi(labels, v, sources[0]) for v in values])
    dataset.ROIContourSequence = Sequence([_roi_contours(labels, v, images) for v in values])
    dataset.RTROIObservationsSequence = Sequence([_observation(labels, v) for v in values])
    with atomic_output(path) as tmp:
        dataset.save_as(tmp, enforce_file_format=True)
    log.info("wrote RTSTRUCT %s with %d ROI(s)", path, len(values))


def contour_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons ``(n, 2)`` of ``(row, column)`` indices around a 2D mask's regions and holes."""
    from skimage.measure import approximate_polygon, find_contours  # ~1.5 s to import (scipy.signal): only when writing

    padded = np.pad(mask.astype(np.float32), 1)
    polygons = []
    for contour in find_contours(padded, 0.5):
        simplified = approximate_polygon(contour, tolerance=1e-3)[:-1] - 1.0  # closed: last point repeats the first
        if len(simplified) >= 3:
            polygons.append(simplified)
    return polygons


def _header(labels: LabelVolume, sources: list[pydicom.Dataset], series_uid: str, instance_uid: str) -> Dataset:
    source = sources[0]
    now = datetime.datetime.now()
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = instance_uid
    # 4-byte lengths: long contours exceed DS's 64 KiB in explicit VR
    dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.SpecificCharacterSet = source.get("SpecificCharacterSet", "ISO_IR 100")
    dataset.SOPClassUID = RTStructureSetStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in _PATIENT + _STUDY:
        setattr(dataset, keyword, source.get(keyword, ""))
    dataset.ReferringPhysicianName = ""
    dataset.Modality = "RTSTRUCT"
    dataset.SeriesInstanceUID = series_uid
    dataset.SeriesNumber = int(source.get("SeriesNumber", 0) or 0) + 2000
    dataset.OperatorsName = ""
    dataset.InstanceNumber = 1
    dataset.FrameOfReferenceUID = source.FrameOfReferenceUID
    dataset.PositionReferenceIndicator = source.get("PositionReferenceIndicator", "")
    dataset.Manufacturer = "medseg"
    dataset.ManufacturerModelName = _method(labels)[:64]
    dataset.SoftwareVersions = medseg.__version__
    dataset.StructureSetLabel = "MEDSEG"
    dataset.StructureSetName = f"medseg {_method(labels)}"[:64]
    dataset.StructureSetDescription = _description(labels)
    dataset.SeriesDescription = f"medseg {_method(labels)}{_untrained(labels)}"[:64]
    dataset.StructureSetDate, dataset.StructureSetTime = dataset.InstanceCreationDate, dataset.InstanceCreationTime
    return dataset


def _contour_images(sources: list[pydicom.Dataset]) -> list[Dataset]:
    """Per slice (medseg's z order), the Contour Image item naming its SOP instance (and frame)."""
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1) or 1) > 1:
        frames = multiframe_order(sources[0]) + 1
        return [_image_item(sources[0], int(frame)) for frame in frames]
    return [_image_item(source, None) for source in sources]


def _image_item(source: pydicom.Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _referenced_frame(source: pydicom.Dataset, images: list[Dataset]) -> Sequence:
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ContourImageSequence = Sequence(images)
    study = Dataset()
    study.ReferencedSOPClassUID = _DETACHED_STUDY
    study.ReferencedSOPInstanceUID = source.StudyInstanceUID
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = source.FrameOfReferenceUID
    frame.RTReferencedStudySequence = Sequence([study])
    return Sequence([frame])


def _roi(labels: LabelVolume, value: int, source: pydicom.Dataset) -> Dataset:
    item = Dataset()
    item.ROINumber = value
    item.ReferencedFrameOfReferenceUID = source.FrameOfReferenceUID
    item.ROIName = _roi_name(labels, value)[:64]
    method = labels.provenance.get("method")
    item.ROIGenerationAlgorithm = ("SEMIAUTOMATIC" if labels.provenance.get("prompts")
                                   else "AUTOMATIC") if method else ""
    item.ROIGenerationDescription = f"medseg {medseg.__version__} {method or ''}{_untrained(labels)}".strip()[:64]
    if method:
        algorithm = Dataset()
        family = Dataset()
        from pydicom.sr.codedict import codes  # ~0.5 s to import: only when writing

        code = codes.cid7162.ArtificialIntelligence
        family.CodeValue, family.CodingSchemeDesignator = code.value, code.scheme_designator
        family.CodeMeaning = code.meaning
        algorithm.AlgorithmFamilyCodeSequence = Sequence([family])
        algorithm.AlgorithmName = f"medseg {method}"[:64]
        algorithm.AlgorithmVersion = medseg.__version__
        algorithm.AlgorithmParameters = _description(labels)
        item.ROIDerivationAlgorithmIdentificationSequence = Sequence([algorithm])
    return item


def _roi_contours(labels: LabelVolume, value: int, images: list[Dataset]) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = list(_COLORS[(value - 1) % len(_COLORS)])
    item.ReferencedROINumber = value
    contours = []
    mask = labels.array == value
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        for polygon in contour_polygons(mask[z]):
            zyx = np.column_stack([np.full(len(polygon), float(z)), polygon])
            contour = Dataset()
            contour.ContourImageSequence = Sequence([images[z]])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(polygon)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = [f"{v:.4f}" for v in labels.geometry.index_to_world(zyx).ravel()]
            contours.append(contour)
    item.ContourSequence = Sequence(contours)
    return item


def _observation(labels: LabelVolume, value: int) -> Dataset:
    item = Dataset()
    item.ObservationNumber = value
    item.ReferencedROINumber = value
    known = labels.label_names.get(value, "").casefold().replace(" ", "_") in TG263
    item.RTROIInterpretedType = "ORGAN" if known else ""
    item.ROIInterpreter = ""
    return item


def _roi_name(labels: LabelVolume, value: int) -> str:
    name = labels.label_names.get(value)
    return standard_name(name) if name else f"label_{value}"


def _method(labels: LabelVolume) -> str:
    return str(labels.provenance.get("method", "medseg"))


def _untrained(labels: LabelVolume) -> str:
    return " UNTRAINED (random weights, meaningless)" if labels.untrained else ""


def _description(labels: LabelVolume) -> str:
    """Method, model and checksum from the provenance (never file paths: they can name patients)."""
    provenance = labels.provenance
    checksum = provenance.get("checkpoint_sha256") or provenance.get("weights_sha256")
    parts = [f"medseg {medseg.__version__}", f"method {_method(labels)}"]
    if provenance.get("model") or provenance.get("backbone"):
        parts.append(f"model {provenance.get('model') or provenance.get('backbone')}")
    if checksum:
        parts.append(f"sha256 {checksum}")
    return "; ".join(parts) + _untrained(labels)
