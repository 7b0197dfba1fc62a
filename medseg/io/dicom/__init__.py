"""DICOM: find the series in a folder (``scan``), check that their slices form one grid
(``geometry``), read the voxels (``pixels``).

Every name users and the writers need is here: ``from medseg.io.dicom import read_dicom``.
"""

from medseg.io.dicom.geometry import SHEAR_TOLERANCE, multiframe_order, read_dicom_geometry, stack_geometry
from medseg.io.dicom.pixels import read_dicom
from medseg.io.dicom.scan import METADATA_KEYWORDS, DicomSeries, list_dicom_series, metadata_of, require_attributes

__all__ = [
    "METADATA_KEYWORDS",
    "SHEAR_TOLERANCE",
    "DicomSeries",
    "list_dicom_series",
    "metadata_of",
    "multiframe_order",
    "read_dicom",
    "read_dicom_geometry",
    "require_attributes",
    "stack_geometry",
]
