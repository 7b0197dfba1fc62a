"""The voxel grid of a volume: shape, spacing, origin and direction, and its affines.

Conventions (fixed across medseg):

* Arrays are indexed ``(z, y, x)``; ``shape`` and ``spacing`` follow that order.
* ``origin`` and ``direction`` are in the DICOM/ITK patient frame (LPS, millimetres), exactly
  as SimpleITK reports them: ``origin`` is the world position of voxel ``[0, 0, 0]`` as
  ``(x, y, z)`` and the *columns* of ``direction`` are the world directions of the index axes
  ``i, j, k`` = array axes ``x, y, z`` (``direction[:, 0]`` is the x-axis).
* ``affine`` is the nibabel/NIfTI convention: a 4x4 RAS matrix mapping an index ``(i, j, k)``
  of the ``(x, y, z)``-ordered array (``array.transpose(2, 1, 0)``) to RAS millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medseg.errors import GeometryError

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where each voxel of a ``(z, y, x)`` array sits in patient space."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        direction.setflags(write=False)
        object.__setattr__(self, "direction", direction)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise GeometryError(f"shape must be three positive sizes (z, y, x), got {self.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(self.spacing)) or min(self.spacing) <= 0:
            raise GeometryError(f"spacing must be three positive finite numbers (z, y, x) mm, got {self.spacing}")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise GeometryError(f"direction must be orthonormal, got {direction.tolist()}")

    @property
    def affine(self) -> np.ndarray:
        """4x4 RAS affine of the ``(x, y, z)``-ordered array, as nibabel writes it."""
        spacing_xyz = np.array(self.spacing[::-1])
        affine = np.eye(4)
        affine[:3, :3] = _LPS_TO_RAS @ self.direction @ np.diag(spacing_xyz)
        affine[:3, 3] = _LPS_TO_RAS @ np.array(self.origin)
        return affine

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape_zyx: tuple[int, int, int]) -> "Geometry":
        """Geometry of a ``(z, y, x)`` array whose ``(x, y, z)`` transpose has this RAS affine."""
        affine = np.asarray(affine, dtype=np.float64)
        if not np.all(np.isfinite(affine)):
            raise GeometryError(f"affine has non-finite values: {affine.tolist()}")
        linear_lps = _LPS_TO_RAS @ affine[:3, :3]
        spacing_xyz = np.linalg.norm(linear_lps, axis=0)
        if np.any(spacing_xyz <= 0):
            raise GeometryError(f"affine has a zero-length axis: {affine.tolist()}")
        direction = linear_lps / spacing_xyz
        # An affine with shear has non-orthogonal columns; round-off from float32 storage is
        # re-orthonormalised (nearest rotation) so that direction stays exact for ITK.
        u, _, vt = np.linalg.svd(direction)
        if not np.allclose(direction, u @ vt, atol=1e-3):
            raise GeometryError(f"affine has shear, which medseg cannot represent: {affine.tolist()}")
        return cls(
            shape=shape_zyx,
            spacing=tuple(spacing_xyz[::-1]),
            origin=tuple(_LPS_TO_RAS @ affine[:3, 3]),
            direction=u @ vt,
        )

    def index_to_world(self, zyx: np.ndarray) -> np.ndarray:
        """LPS millimetres of voxel indices given as rows of ``(z, y, x)``."""
        zyx = np.atleast_2d(np.asarray(zyx, dtype=np.float64))
        xyz = zyx[:, ::-1] * np.array(self.spacing[::-1])
        return xyz @ self.direction.T + np.array(self.origin)

    def same_grid(self, other: "Geometry", *, atol: float = 1e-4) -> bool:
        """True when both describe the same voxels in space (to ``atol`` mm / unit vector)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def describe_difference(self, other: "Geometry") -> str:
        """A short human sentence on how ``other`` differs (empty when it does not)."""
        parts = []
        if self.shape != other.shape:
            parts.append(f"shape {other.shape} != {self.shape}")
        for name in ("spacing", "origin"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if not np.allclose(mine, theirs, atol=1e-4):
                parts.append(f"{name} {_rounded(theirs)} != {_rounded(mine)}")
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            parts.append("direction differs")
        return "; ".join(parts)

    def with_shape(self, shape_zyx: tuple[int, int, int]) -> "Geometry":
        return Geometry(shape_zyx, self.spacing, self.origin, self.direction)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(tuple(data["shape"]), tuple(data["spacing"]), tuple(data["origin"]), np.array(data["direction"]))


def _rounded(values: tuple[float, ...]) -> tuple[float, ...]:
    """Plain floats to 4 decimals (numpy 2 would print ``np.float64(...)`` in messages)."""
    return tuple(round(float(v), 4) for v in values)
