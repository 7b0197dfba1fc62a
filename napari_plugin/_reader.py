"""napari reader: DICOM folders and files, NIfTI, NRRD and MetaImage through ``medseg.io``.

The Image layer keeps the voxels in physical units (CT in HU) with the CT/MRI display window
as contrast limits, the layer transform of ``_layers`` (scale = spacing, LPS-flipped axes)
and the ``Volume`` in its metadata, so that segmenting and saving use its exact geometry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

from medseg.io import list_dicom_series, load_volume
from medseg.io.files import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, has_dicom_preamble

from napari_plugin._layers import image_layer_data

logger = logging.getLogger(__name__)

LayerData = list[tuple[Any, dict[str, Any], str]]

#: Files looked at to decide whether a folder holds DICOM (exports can hold thousands).
_FOLDER_PROBE = 32


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], LayerData] | None:
    """The reader for ``path`` when medseg can read it, else None (napari asks other plugins)."""
    if isinstance(path, list):
        return None  # a stack of separate files is not one volume
    return read_volume if _is_readable(Path(path)) else None


def read_volume(path: str | list[str]) -> LayerData:
    """Load a volume as an Image layer named after the file or folder.

    A folder holding several DICOM series (a whole study) gives one layer per image series,
    largest first, each named after its series description.
    """
    path = Path(path)
    if not path.is_dir():
        return [image_layer_data(load_volume(path), _layer_name(path))]
    series = list_dicom_series(path)
    if len(series) == 1:
        return [image_layer_data(load_volume(path), path.name)]
    logger.info("%s holds %d image series; opening each as a layer", path, len(series))
    return [
        image_layer_data(load_volume(path, series_uid=s.uid), f"{path.name}: {s.description or s.uid} ({s.modality})")
        for s in series
    ]


def _is_readable(path: Path) -> bool:
    if path.is_dir():
        files = islice((p for p in path.rglob("*") if p.is_file()), _FOLDER_PROBE)  # series may sit in subfolders
        return any(_is_dicom(p) for p in files)
    name = path.name.lower()
    return path.is_file() and (name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES) or _is_dicom(path))


def _is_dicom(path: Path) -> bool:
    return path.name.lower().endswith(DICOM_SUFFIXES) or has_dicom_preamble(path)


def _layer_name(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES + ITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
