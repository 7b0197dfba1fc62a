"""DICOM SEG: write a label map that references its DICOM source images, and read one back.

A SEG is a DICOM object of the same patient and study as its source images (the standard
copies their patient and study modules; highdicom does that), so it can only be written
for a volume that was read from DICOM (``Volume.source_files``). Label value ``v`` becomes
segment number ``v`` (a BINARY segmentation with one segment per label value from 1 to the
largest), so reading the SEG back gives the same label values. Segment names come from
``LabelVolume.label_names``; a name that matches a SNOMED CT concept known to pydicom
(``liver``, ``white_matter``, ...) is coded as that concept.

highdicom and pydicom's code dictionary are imported when a SEG is read or written, not with
``medseg.io``: they take about a second to import, and napari opens every file through
``medseg.io``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom

import medseg
from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.io.dicom import multiframe_order, require_attributes
from medseg.io.files import atomic_output
from medseg.volume import LabelVolume, Volume

if TYPE_CHECKING:
    import highdicom as hd

log = logging.getLogger(__name__)


def write_seg(labels: LabelVolume, like: Volume, path: Path, *, series_uid: str | None = None,
              instance_uid: str | None = None) -> None:
    """Write ``labels`` as a DICOM SEG referencing ``like``'s source DICOM files (new UIDs unless given)."""
    import highdicom as hd
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in like.source_files]  # highdicom needs headers only
    require_attributes(sources[0], like.source_files[0], path, "DICOM SEG")
    for source in sources:  # Type 2 (may be absent) in images, needed by the SEG's pixel measures: the grid's spacing
        if not source.get("SliceThickness"):
            source.SliceThickness = like.spacing[0]
    array = labels.array
    if len(sources) == 1 and int(sources[0].get("NumberOfFrames", 1)) > 1:
        # A multi-frame source: SEG frames follow the source's frame order, not medseg's z order.
        order = multiframe_order(sources[0])
        array = array[np.argsort(order)]
    n_segments = int(array.max()) if array.size else 0
    if n_segments == 0:
        raise InputError(f"cannot write {path} as DICOM SEG: the label map is empty (DICOM SEG needs at least one "
                         "segment)")
    method = str(labels.provenance.get("method", "medseg"))
    untrained = " UNTRAINED (random weights, meaningless)" if labels.untrained else ""
    segment_descriptions = [
        _segment(value, labels.label_names.get(value, f"label {value}"), method) for value in range(1, n_segments + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=array.astype(np.uint16 if n_segments > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions,
        series_instance_uid=series_uid or hd.UID(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name=method[:64],
        software_versions=medseg.__version__,
        device_serial_number="0",
        content_description=f"medseg {method}{untrained}"[:64],
        content_label="MEDSEG",
        omit_empty_frames=False,
    )
    seg.SeriesDescription = f"medseg {method}{untrained}"[:64]
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    log.info("wrote DICOM SEG %s with %d segment(s)", path, n_segments)


def read_seg(path: Path, grid: Geometry) -> tuple[np.ndarray, dict[int, str]]:
    """The label map ``(z, y, x)`` of a DICOM SEG placed on ``grid`` (segment number = label
    value), and the segment labels (names) by label value.

    The SEG's frames may cover only part of the grid (empty frames are often omitted); they
    must fall on its voxels exactly, else ``GeometryError``.
    """
    import highdicom as hd
    try:
        seg = hd.seg.segread(path)
        volume = seg.get_volume(combine_segments=True, relabel=False)
    except Exception as error:  # highdicom raises ValueError/AttributeError/RuntimeError on bad SEGs
        raise InputError(f"{path}: cannot read as a DICOM SEG volume ({error})") from error
    # highdicom's volume is indexed (slice, row, column) like medseg's (z, y, x), but it may
    # run the other way along an axis and cover only part of the grid: match_geometry flips,
    # permutes, pads and crops (never resamples) it onto the image's grid, or refuses.
    target = hd.VolumeGeometry(_zyx_affine(grid), grid.shape, coordinate_system="PATIENT")
    try:
        matched = volume.match_geometry(target, tol=1e-3)
    except RuntimeError as error:
        raise GeometryError(
            f"{path}: the SEG's frames do not lie on the image's voxel grid ({error}); it was made on another image"
        ) from error
    names = {int(number): str(seg.get_segment_description(number).SegmentLabel) for number in seg.segment_numbers}
    return np.asarray(matched.array, dtype=np.int32), names


def _zyx_affine(grid: Geometry) -> np.ndarray:
    """4x4 map from ``(z, y, x)`` indices to LPS mm (highdicom's index order)."""
    affine = np.eye(4)
    affine[:3, :3] = grid.direction[:, ::-1] * np.array(grid.spacing)
    affine[:3, 3] = grid.origin
    return affine


def _segment(value: int, name: str, method: str) -> hd.seg.SegmentDescription:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    concept = getattr(codes.SCT, "".join(part.capitalize() for part in name.replace("grey", "gray").split("_")), None)
    return hd.seg.SegmentDescription(
        segment_number=value,
        segment_label=name[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure if concept is not None else codes.SCT.Tissue,
        segmented_property_type=concept if concept is not None else codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=f"medseg {method}"[:64], version=medseg.__version__, family=codes.cid7162.ArtificialIntelligence
        ),
    )
