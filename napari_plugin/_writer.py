"""napari writer: a Labels layer to NIfTI, NRRD, MetaImage, DICOM SEG or RTSTRUCT, on its source's grid.

The geometry comes from the ``Volume`` the layer was drawn on (layer metadata), never from
the layer transform, so the file lines up with the source in any viewer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.errors import InputError
from medseg.io import save_labels
from medseg.io.files import output_suffix

from napari_plugin._layers import LABELS_KEY, VOLUME_KEY, label_volume


def write_labels(path: str, data: Any, meta: dict[str, Any], *, dicom_format: str | None = None) -> list[str]:
    """Write one Labels layer; the format follows the suffix of ``path``.

    ``dicom_format``: ``"seg"`` (default) or ``"rtstruct"`` for a ``.dcm`` path (napari's own
    Save menu cannot ask, so it writes SEG; the medseg panel's Save row offers both).

    Raises
    ------
    InputError
        The layer was not made on a volume opened with medseg (no geometry to write with).
    GeometryError
        The layer's shape differs from its source volume's.
    """
    name = meta.get("name", "labels")
    metadata = meta.get("metadata") or {}
    volume = metadata.get(VOLUME_KEY)
    if volume is None:
        raise InputError(
            f"labels layer {name!r} does not know which volume it was drawn on, so medseg cannot write it "
            "with the right geometry: open the image with medseg and make the labels with the medseg panel, "
            "or save this layer with napari's own writers"
        )
    labels = label_volume(data, volume, result=metadata.get(LABELS_KEY), name=name)
    dicom = dicom_format if output_suffix(Path(path)) == ".dcm" else None
    return [str(save_labels(labels, volume, Path(path), format=dicom))]
