"""napari reader: DICOM folders and files, NIfTI, NRRD and MetaImage through ``medseg.io``.

The Image layer keeps the voxels in physical units (CT in HU) with the library's preset's
window as contrast limits (``medseg.preprocess.choose_preset``), the layer transform of ``_layers``
(scale = spacing, LPS-flipped axes), the ``Volume`` and the source path in its metadata, so
that segmenting and saving use its exact geometry.

A label map (``medseg.io.files.is_label_map``: decided from the header and the voxels, not the
file name) opens as a Labels layer on its own grid, so it overlays its image and every Labels
picker offers it. A study folder opens every image series that reads;
the ones that do not are listed (description, number of slices, reason) in a warning.

napari's built-in reader also claims ``.dcm``, ``.nii.gz``, ``.nrrd`` and ``.mha``, and every
folder (any reader that accepts directories matches any folder), which makes napari ask
"Choose reader" on every open, drag and drop included. ``claim_reader_patterns`` records medseg
as the preferred reader for those file patterns and for folders (``*/``), where the user has
not chosen one (napari's Preferences ▸ Plugins shows and changes it). It runs when the medseg
widget opens and when medseg first reads a file; napari keeps the preference for later
sessions. As medseg is then asked for every folder, a folder that holds no DICOM goes on to
napari's own reader, as if medseg had not claimed it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError

log = logging.getLogger(__name__)

LayerData = list[tuple[Any, dict[str, Any], str]]

#: Files looked at to decide whether a folder holds DICOM (exports can hold thousands).
_FOLDER_PROBE = 32
#: Patterns napari's built-in reader also claims, for which medseg asks to be preferred ("*/": every folder).
CLAIMED_PATTERNS = ("*.dcm", "*.dicom", "*.ima", "*.nii", "*.nii.gz", "*.nrrd", "*.nhdr", "*.mha", "*.mhd", "*/")
# napari calls ``get_reader`` for every path it opens: it must not import ``medseg.io``, whose
# package import loads pydicom, SimpleITK, highdicom and MONAI (torch). Hence these suffixes
# and the DICOM preamble test are spelled here rather than taken from ``medseg.io.files``.
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], Any] | None:
    """The reader for ``path`` when medseg can read it, else None (napari asks other plugins).

    A folder without DICOM gets napari's own reader (see the module docstring).
    """
    if isinstance(path, list):
        return None  # a stack of separate files is not one volume
    if _is_readable(Path(path)):
        return read_volume
    if Path(path).is_dir():
        from napari_builtins.io import napari_get_reader

        return napari_get_reader(path)
    return None


def read_volume(path: str | list[str]) -> LayerData:
    """Load a volume as an Image layer (or a label map as a Labels layer) named after the file.

    A folder holding several DICOM series (a whole study) gives one layer per image series
    that reads, largest first, each named after its series description.
    """
    from medseg.io import label_file_kind, list_dicom_series, load_volume

    claim_reader_patterns()
    path = Path(path)
    if label_file_kind(path) is not None:
        return _read_label_file(path)
    if not path.is_dir():
        return [_layer_data(load_volume(path), _layer_name(path), str(path))]
    series = list_dicom_series(path)
    if len(series) == 1:
        return [_layer_data(load_volume(path), path.name, str(path))]
    log.info("%s holds %d image series; opening each as a layer", path, len(series))
    layers, skipped = [], []
    for s in series:
        try:
            volume = load_volume(path, series_uid=s.uid)
        except MedsegError as error:
            skipped.append(f"'{s.description or 'no description'}' ({s.modality}, {s.n_slices} slices): {error}")
            continue
        layers.append(_layer_data(volume, f"{path.name}: {s.description or s.uid} ({s.modality})", str(path)))
    if skipped:
        message = (f"{path.name}: skipped {len(skipped)} of {len(series)} series that cannot be read:\n"
                   + "\n".join(skipped))
        if not layers:
            raise MedsegError(message)
        from napari.utils.notifications import show_warning

        show_warning(message)
    return layers


def _read_label_file(path: Path) -> LayerData:
    """An RTSTRUCT or DICOM SEG: the image series beside it that it references, and its labels on it.

    Such a file holds contours or segments in patient coordinates, not a voxel grid: it is
    drawn on the series it references (``medseg.io.load_labels`` checks the frame of
    reference and the SOP instances), which planning systems export into the same folder.
    When the viewer shows that series already, only the labels are added.
    """
    from medseg.io import label_file_kind, list_dicom_series, load_labels, load_volume

    from napari_plugin._layers import SOURCE_KEY, labels_layer_data

    folder = path.parent
    try:
        series = list_dicom_series(folder)
    except MedsegError:
        series = []
    for s in series:
        volume = load_volume(folder, series_uid=s.uid)
        try:
            labels = load_labels(path, volume)
        except MedsegError as error:
            log.info("%s does not lie on series %s: %s", path.name, s.uid, error)
            continue
        data, kwargs, kind = labels_layer_data(labels, volume, _layer_name(path))
        kwargs["metadata"][SOURCE_KEY] = str(path)
        kwargs["opacity"] = 0.5
        if _shown_already(volume):
            return [(data, kwargs, kind)]
        image = _layer_data(volume, f"{folder.name}: {s.description or s.uid} ({s.modality})", str(folder))
        return [image, (data, kwargs, kind)]
    raise MedsegError(
        f"{path} is a DICOM {label_file_kind(path).upper()}: it is drawn on the image series it references, and "
        f"none of the {len(series)} image series in {folder} is that one; put it in the folder of its image series"
    )


def _shown_already(volume: Any) -> bool:
    """Whether a layer of the current viewer was read from exactly ``volume``'s files."""
    import napari

    from napari_plugin._layers import VOLUME_KEY

    viewer, files = napari.current_viewer(), set(volume.source_files)
    return viewer is not None and bool(files) and any(
        set(getattr(layer.metadata.get(VOLUME_KEY), "source_files", ())) == files for layer in viewer.layers
    )


def claim_reader_patterns() -> None:
    """Prefer medseg for the medical formats napari's own reader also claims (see module docstring)."""
    from napari.settings import get_settings

    preferences = get_settings().plugins.extension2reader
    missing = {pattern: "medseg" for pattern in CLAIMED_PATTERNS if pattern not in preferences}
    if missing:
        get_settings().plugins.extension2reader = {**preferences, **missing}


def _layer_data(volume: Any, name: str, source: str) -> tuple[Any, dict[str, Any], str]:
    from medseg.io.files import is_label_map, stored_as_integers
    from medseg.volume import LabelVolume

    from napari_plugin._layers import SOURCE_KEY, image_layer_data, labels_layer_data

    path = Path(source)
    if path.is_dir() or not is_label_map(volume.array, stored_as_integers=stored_as_integers(path)):
        return image_layer_data(volume, name, source=source)
    labels = LabelVolume.like(volume, volume.array.astype(np.int32))
    data, kwargs, kind = labels_layer_data(labels, volume, name)
    kwargs["metadata"][SOURCE_KEY] = source
    kwargs["opacity"] = 0.5  # the image under it stays readable
    return data, kwargs, kind


def _is_readable(path: Path) -> bool:
    if path.is_dir():
        files = islice((p for p in path.rglob("*") if p.is_file()), _FOLDER_PROBE)  # series may sit in subfolders
        return any(_is_dicom(p) for p in files)
    name = path.name.lower()
    return path.is_file() and (name.endswith(_NIFTI_SUFFIXES + _ITK_SUFFIXES) or _is_dicom(path))


def _is_dicom(path: Path) -> bool:
    if path.name.lower().endswith(_DICOM_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _layer_name(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI_SUFFIXES + _ITK_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
