"""References onto the query's in-plane grid: the slices SAM2 compares must show the same scale and orientation.

References come from other patients, so where a reference lies in space (origin, slice
positions) says nothing about the query; what changes what the model sees is the *in-plane*
geometry. SAM2 resizes every frame to a square of ``image_size`` pixels, so one model pixel
covers ``field of view / image_size`` millimetres: a reference whose field of view differs
from the query's shows its organs larger or smaller than the query does, and one whose
rows or columns run the other way (a flipped or rotated in-plane axis) shows them mirrored.
Both defeat the memory attention that carries a support's mask onto the query.

So each reference that differs is resampled, slice by slice (its z axis untouched, so the
support slice indices stay valid), onto the query's in-plane grid: the query's pixel
spacing, row and column directions and matrix size, the two fields of view centred on each
other. Images are interpolated linearly (outside the reference: its lowest value), labels
by nearest neighbour. SimpleITK does the resampling. A reference whose slices are not
parallel to the query's (a sagittal stack for an axial query) cannot be made to match by
an in-plane resampling and is refused with ``GeometryError``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from medseg.errors import GeometryError
from medseg.geometry import Geometry
from medseg.volume import LabelVolume, Volume

#: Largest angle between a reference's slice normal and the query's that still counts as
#: the same kind of plane (an axial stack with a small gantry tilt against a straight one).
MAX_PLANE_ANGLE_DEG = 10.0
_ATOL = 1e-3


def in_plane_axes(reference: Geometry, query: Geometry, *, name: str) -> np.ndarray:
    """2x2 orthogonal matrix whose columns are the reference's column and row directions
    expressed on the query's column and row directions (identity: same orientation).

    Raises ``GeometryError`` naming ``name`` when the slice planes are not parallel.
    """
    normal_r, normal_q = reference.direction[:, 2], query.direction[:, 2]
    angle = np.degrees(np.arccos(np.clip(abs(float(normal_r @ normal_q)), 0.0, 1.0)))
    if angle > MAX_PLANE_ANGLE_DEG:
        raise GeometryError(
            f"{name}: its slices lie {angle:.0f} degrees off the query's slices (slice normal "
            f"{np.round(normal_r, 3).tolist()} vs {np.round(normal_q, 3).tolist()}, LPS): a support slice must "
            "show the same plane as the query (axial with axial); reformat the reference or pick another one"
        )
    axes = query.direction[:, :2].T @ reference.direction[:, :2]
    u, _, vt = np.linalg.svd(axes)  # nearest orthogonal matrix (exact when the planes are parallel)
    return u @ vt


def same_in_plane_grid(reference: Geometry, query: Geometry, axes: np.ndarray) -> bool:
    """True when the reference's slices already have the query's pixel spacing, size and orientation."""
    return (
        reference.shape[1:] == query.shape[1:]
        and np.allclose(reference.spacing[1:], query.spacing[1:], rtol=_ATOL)
        and np.allclose(axes, np.eye(2), atol=_ATOL)
    )


def resample_in_plane(
    volume: Volume, labels: LabelVolume, query: Geometry, axes: np.ndarray
) -> tuple[Volume, LabelVolume, dict[str, Any]]:
    """``volume`` and ``labels`` on the query's in-plane grid (see the module docstring), and a
    record of what changed for the provenance."""
    source = _local_image(volume.array, volume.geometry, axes)
    shape = (volume.shape[0], *query.shape[1:])
    spacing = (volume.spacing[0], *query.spacing[1:])
    size_xyz = [int(n) for n in shape[::-1]]
    spacing_xyz = [float(s) for s in spacing[::-1]]
    origin_xyz = _centred_origin(size_xyz, spacing_xyz, np.eye(3))
    image = sitk.Resample(source, size_xyz, sitk.Transform(), sitk.sitkLinear, origin_xyz, spacing_xyz,
                          np.eye(3).ravel().tolist(), float(volume.array.min()), sitk.sitkFloat32)
    label_image = _local_image(labels.array.astype(np.int32), labels.geometry, axes)
    label_array = sitk.Resample(label_image, size_xyz, sitk.Transform(), sitk.sitkNearestNeighbor, origin_xyz,
                                spacing_xyz, np.eye(3).ravel().tolist(), 0, sitk.sitkInt32)
    geometry = _resampled_geometry(volume.geometry, axes, shape, spacing)
    record = {
        "in_plane_spacing": [list(volume.spacing[1:]), list(query.spacing[1:])],
        "in_plane_shape": [list(volume.shape[1:]), list(query.shape[1:])],
        "in_plane_axes": np.round(axes, 6).tolist(),
        "alignment": "fields of view centred",
    }
    return (
        Volume(sitk.GetArrayFromImage(image), geometry, volume.modality, volume.metadata),
        LabelVolume(sitk.GetArrayFromImage(label_array), geometry, label_names=dict(labels.label_names)),
        record,
    )


def _local_image(array: np.ndarray, geometry: Geometry, axes: np.ndarray) -> sitk.Image:
    """The array as a SimpleITK image in the query-plane frame: x, y along the query's column
    and row directions, z along the reference's own slices, the in-plane field of view centred on 0."""
    image = sitk.GetImageFromArray(array)
    direction = np.eye(3)
    direction[:2, :2] = axes
    spacing_xyz = [float(s) for s in geometry.spacing[::-1]]
    image.SetSpacing(spacing_xyz)
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(_centred_origin(list(image.GetSize()), spacing_xyz, direction))
    return image


def _centred_origin(size_xyz: list[int], spacing_xyz: list[float], direction: np.ndarray) -> list[float]:
    """Origin that puts the centre of the in-plane field of view at 0 and slice 0 at z = 0."""
    centre = np.array([(size_xyz[0] - 1) / 2, (size_xyz[1] - 1) / 2, 0.0]) * spacing_xyz
    return (-(direction @ centre)).tolist()


def _resampled_geometry(reference: Geometry, axes: np.ndarray, shape: tuple[int, ...],
                        spacing: tuple[float, ...]) -> Geometry:
    """Where the resampled voxels lie in the reference patient's space: the same slices, the
    same in-plane centre, columns and rows along the reference directions that map onto the query's."""
    in_plane = reference.direction[:, :2] @ axes.T
    direction = np.column_stack([in_plane, reference.direction[:, 2]])
    centre = reference.index_to_world([[0, (reference.shape[1] - 1) / 2, (reference.shape[2] - 1) / 2]])[0]
    offset = in_plane @ (np.array([(shape[2] - 1) / 2, (shape[1] - 1) / 2]) * np.array([spacing[2], spacing[1]]))
    return Geometry(shape, spacing, tuple(centre - offset), direction)
