"""Where medseg volumes sit in napari, and how layers carry their ``Volume`` back.

Display frame (the one choice every layer of this plugin shares)
-----------------------------------------------------------------
Layer data stay the ``Volume``'s own ``(z, y, x)`` array, so napari slices along the acquired
slices (the axis SAM2 propagates along) and a voxel index in any layer of the plugin is the
voxel index the engines use. The layer transform is:

* ``scale`` = ``spacing`` ``(z, y, x)`` in mm, so the volume has its physical aspect;
* ``translate`` = the origin projected on each index axis (``origin · direction[:, axis]``);
* ``affine`` = a diagonal of ±1 that flips an index axis whose direction points mostly
  toward R, A or I, so that napari's world axes increase toward S, P and L.

For an axis-aligned volume (any mix of flips, e.g. a DICOM series in LPS or a NIfTI in RAS)
the napari world coordinates are therefore exactly the patient LPS millimetres in
``(z, y, x)`` order, and every such file shows in radiological convention: anterior at the
top, the patient's left on the right of the screen. For an oblique or permuted acquisition
the world frame is the volume's own frame, rigidly rotated from LPS (distances stay exact,
axes are only flipped toward LPS, never resampled): overlaying two volumes is exact only
when they share a direction. napari has no proper slicing through rotated layers, so a
rotation is not put into the layer transform.

Layer metadata
--------------
``metadata[VOLUME_KEY]`` holds the ``Volume`` an image was read from, or the ``Volume`` a
label layer was drawn on; ``metadata[LABELS_KEY]`` holds the ``LabelVolume`` that an engine
returned (names, scores, the untrained flag); ``metadata[SOURCE_KEY]`` the file or folder a
layer was read from (where Save suggests to write, and what it refuses to overwrite).
Writers and panels get exact geometry from there, never from the layer transform.

Intensity preset
----------------
The display window and SAM2's input mapping are the library's decision
(``medseg.preprocess.choose_preset``: the modality's default, and for a file that does not say
(NIfTI, NRRD: modality "OT") a documented content check), so a click gives the same mask here
and in ``medseg segment``. The panels show the choice in a preset box, never hide it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.preprocess import choose_preset, get_preset
from medseg.volume import LabelVolume, Volume

VOLUME_KEY = "medseg_volume"
LABELS_KEY = "medseg_labels"
SOURCE_KEY = "medseg_source"


def display_range(volume: Volume, preset: str) -> tuple[float, float]:
    """The contrast limits of ``preset`` (its first channel's window) on ``volume``."""
    low, high = get_preset(preset).resolve(volume)[0]
    return float(low), float(high)


def display_transform(volume: Volume) -> dict[str, Any]:
    """``scale``, ``translate`` and ``affine`` keyword arguments for a layer on ``volume``'s grid."""
    direction_zyx = volume.direction[:, ::-1]  # columns: world directions of index axes z, y, x
    dominant = np.abs(direction_zyx).argmax(axis=0)
    signs = np.sign(direction_zyx[dominant, [0, 1, 2]])
    return {
        "scale": tuple(volume.spacing),
        "translate": tuple(float(v) for v in np.asarray(volume.origin) @ direction_zyx),
        "affine": np.diag([*signs, 1.0]),
    }


def image_layer_data(volume: Volume, name: str, *, source: str | None = None) -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari ``LayerDataTuple`` for an Image layer, with the contrast of the library's preset for it."""
    metadata: dict[str, Any] = {VOLUME_KEY: volume}
    if source is not None:
        metadata[SOURCE_KEY] = source
    kwargs = {
        "name": name,
        "contrast_limits": display_range(volume, choose_preset(volume).name),
        "colormap": "gray",
        "metadata": metadata,
        **display_transform(volume),
    }
    return volume.array, kwargs, "image"


def put_labels(viewer: Any, layer_data: tuple[np.ndarray, dict[str, Any], str]) -> Any:
    """Add a Labels layer, or update the one of the same name (a panel's repeated runs replace their output)."""
    data, kwargs, _ = layer_data
    name = kwargs["name"]
    if name not in viewer.layers:
        return viewer.add_labels(data, **kwargs)
    layer = viewer.layers[name]
    layer.data = data
    layer.features = kwargs["features"]
    layer.metadata.update(kwargs["metadata"])
    return layer


def labels_layer_data(labels: LabelVolume, volume: Volume, name: str) -> tuple[np.ndarray, dict[str, Any], str]:
    """A napari ``LayerDataTuple`` for a Labels layer on ``volume``'s grid.

    The label names (and object scores, where the method gave them) become layer features,
    so napari's status bar names the label under the cursor.
    """
    kwargs = {
        "name": name,
        "features": label_features(labels),
        "metadata": {VOLUME_KEY: volume, LABELS_KEY: labels},
        **display_transform(volume),
    }
    return labels.array, kwargs, "labels"


def label_features(labels: LabelVolume) -> dict[str, list]:
    """napari Labels features: one row per named or scored label value (``index``)."""
    values = sorted(set(labels.label_names) | set(labels.scores))
    features: dict[str, list] = {"index": values, "name": [labels.label_names.get(v, f"label {v}") for v in values]}
    if labels.scores:
        features["score"] = [round(float(labels.scores[v]), 3) if v in labels.scores else None for v in values]
    return features


def layer_volume(layer: Any) -> Volume | None:
    """The ``Volume`` a layer carries, or None for layers made outside medseg."""
    return layer.metadata.get(VOLUME_KEY)


def volume_of_image(layer: Any) -> Volume:
    """The ``Volume`` behind an Image layer: the one it was read from, else one built from it.

    A 3D image opened by another reader gets its geometry from the layer's whole data-to-world
    transform (scale, translate, rotate and affine), read in this plugin's display frame
    (world ``(z, y, x)`` = LPS ``(S, P, L)`` millimetres): a negative scale or a flipping
    affine stays a flipped direction, not a lost sign.

    Raises
    ------
    InputError
        The layer is not a single-channel 3D image.
    GeometryError
        The layer's transform shears (no voxel grid can represent it).
    """
    volume = layer_volume(layer)
    if volume is not None:
        return volume
    data = np.asarray(layer.data)
    if data.ndim != 3 or getattr(layer, "rgb", False):
        raise InputError(
            f"layer {layer.name!r} has shape {data.shape}: medseg segments single-channel 3D volumes (z, y, x); "
            "open a CT or MRI volume, not a 2D image, RGB picture or time series"
        )
    return Volume(data.astype(np.float32), layer_geometry(layer, data.shape), "OT", {"napari_layer": layer.name})


def layer_geometry(layer: Any, shape: tuple[int, int, int]) -> Geometry:
    """The voxel grid a 3D layer's data-to-world transform describes, in the display frame."""
    origin = np.asarray(layer.data_to_world((0.0, 0.0, 0.0)), dtype=float)
    # column k: the LPS (x, y, z) step of index axis k = x, y, z (= data axes 2, 1, 0)
    steps = np.stack([(np.asarray(layer.data_to_world(np.eye(3)[2 - k]), dtype=float) - origin)[::-1]
                      for k in range(3)], axis=1)
    spacing_xyz = np.linalg.norm(steps, axis=0)
    if np.any(spacing_xyz <= 0):
        raise GeometryError(f"layer {layer.name!r} has a zero scale: no voxel grid to segment on")
    direction = steps / spacing_xyz
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise GeometryError(f"layer {layer.name!r} has a shearing transform, which medseg cannot represent; "
                            "open the file with medseg (File ▸ Open) or remove the shear")
    return Geometry(shape, tuple(spacing_xyz[::-1]), tuple(origin[::-1]), direction)


def label_volume(data: Any, volume: Volume, *, result: LabelVolume | None = None, name: str = "labels") -> LabelVolume:
    """The voxels of a Labels layer named ``name`` as a ``LabelVolume`` on ``volume``'s grid.

    Names, scores and the untrained flag come from ``result`` (the engine output the layer
    carries under ``LABELS_KEY``), with the voxels as the user may have edited them since.

    Raises
    ------
    GeometryError
        The layer's array does not have the volume's shape.
    """
    array = np.asarray(data)
    if array.shape != volume.shape:
        raise GeometryError(
            f"labels layer {name!r} has shape {array.shape} but its image has shape {volume.shape}: "
            "draw labels on a layer made for this image (the medseg panel makes one)"
        )
    if result is None:
        return LabelVolume.like(volume, array.astype(np.int32))
    return LabelVolume(
        array.astype(np.int32),
        volume.geometry,
        label_names=dict(result.label_names),
        scores=dict(result.scores),
        slice_scores=dict(result.slice_scores),
        untrained=result.untrained,
        provenance=dict(result.provenance),
    )
