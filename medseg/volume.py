"""``Volume``, ``LabelVolume`` and ``InstanceMap``: voxels that carry their geometry.

A ``Volume`` is an image in physical units (CT in HU) on a ``Geometry``; a ``LabelVolume``
is an integer label map on the *same* geometry plus what the method that made it knows
(names, scores, provenance); an ``InstanceMap`` holds the scored object instances an engine
that detects instances (Mask R-CNN) returns beside its labels. None can drift from its grid:
the array shape is checked against the geometry on construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry

UNTRAINED_BANNER = (
    "UNTRAINED MODEL: produced with randomly initialised weights for testing only; "
    "these masks and metrics are meaningless."
)


def undertrained_note(provenance: dict) -> str | None:
    """The note every face shows for a result of a SAM2 model directory trained from random weights
    for too few steps (``"undertrained"`` in its ``model.json``); None otherwise."""
    if not provenance.get("undertrained") or provenance.get("untrained"):
        return None
    return (f"note: {provenance['model']} is undertrained (trained from random weights for too few steps): "
            "treat its masks as a smoke test, not as what SAM2 can do")


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image, ``array`` ``(z, y, x)`` float32 in physical units, on ``geometry``.

    ``metadata`` never holds patient-identifying DICOM fields: the readers only copy an
    allow-list of acquisition fields into it.

    ``source_files`` are the files the voxels came from: the DICOM files in slice order (one
    file for a multi-frame image), kept so that a DICOM SEG or RTSTRUCT can reference them,
    or the one NIfTI/NRRD/MetaImage file; writers refuse to replace them. They are not
    metadata: nothing writes them to reports (file names can hold patient names).
    """

    array: np.ndarray
    geometry: Geometry
    modality: str = "OT"
    metadata: dict[str, Any] = field(default_factory=dict)
    source_files: tuple[Path, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(f"a Volume is 3D (z, y, x); got an array of shape {array.shape}")
        if array.dtype != np.float32:
            array = array.astype(np.float32)
        object.__setattr__(self, "array", array)
        if array.shape != self.geometry.shape:
            raise GeometryError(f"array shape {array.shape} does not match geometry shape {self.geometry.shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geometry.shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.geometry.origin

    @property
    def direction(self) -> np.ndarray:
        return self.geometry.direction

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.affine

    def to_metatensor(self):
        """A MONAI ``MetaTensor`` shaped ``(1, x, y, z)`` with this volume's RAS affine.

        MONAI's spatial convention is channel-first, then the NIfTI index order (i, j, k), so
        the array is transposed; ``from_metatensor`` undoes it exactly.
        """
        import torch
        from monai.data import MetaTensor

        data = torch.from_numpy(np.ascontiguousarray(self.array.transpose(2, 1, 0)[None]))
        return MetaTensor(data, affine=torch.as_tensor(self.affine), meta={"modality": self.modality})

    @classmethod
    def from_metatensor(cls, tensor, *, modality: str = "OT", metadata: dict | None = None) -> "Volume":
        """Inverse of ``to_metatensor``; accepts ``(1, x, y, z)`` or ``(x, y, z)``."""
        array = np.asarray(tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else tensor)
        if array.ndim == 4:
            if array.shape[0] != 1:
                raise InputError(f"expected a single-channel MetaTensor, got shape {array.shape}")
            array = array[0]
        zyx = np.ascontiguousarray(array.transpose(2, 1, 0))
        affine = np.asarray(tensor.affine.detach().cpu().numpy() if hasattr(tensor.affine, "detach") else tensor.affine)
        return cls(zyx, Geometry.from_affine(affine, zyx.shape), modality, dict(metadata or {}))

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same volume (geometry, modality, metadata) with other voxel values."""
        return replace(self, array=array)


@dataclass(frozen=True, eq=False)
class LabelVolume:
    """An integer label map ``(z, y, x)`` on the geometry of the ``Volume`` it segments.

    * ``label_names``: label value -> name (background 0 is implicit).
    * ``scores``: label value -> one confidence in [0, 1] for the whole object (for 3D AP).
    * ``slice_scores``: label value -> float array of length z, NaN where the object was not
      predicted (per-slice confidence for 2D AP and QC curves).
    * ``untrained``: True when any model that produced it had random weights.
    * ``provenance``: method, model, checksum, prompts... whatever reproduces it.
    * ``source_files``: the file it was loaded from, if any (writers refuse to replace it).
    """

    array: np.ndarray
    geometry: Geometry
    label_names: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    slice_scores: dict[int, np.ndarray] = field(default_factory=dict)
    untrained: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)
    source_files: tuple[Path, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise InputError(f"a LabelVolume is 3D (z, y, x); got an array of shape {array.shape}")
        if not np.issubdtype(array.dtype, np.integer):
            if array.dtype == bool or np.all(np.mod(array, 1) == 0):
                array = array.astype(np.int32)
            else:
                raise InputError("label values must be integers; got non-integer values")
        object.__setattr__(self, "array", array)
        if array.shape != self.geometry.shape:
            raise GeometryError(
                f"label array shape {array.shape} does not match its volume's shape {self.geometry.shape}"
            )

    @classmethod
    def like(cls, volume: Volume, array: np.ndarray | None = None, **fields: Any) -> "LabelVolume":
        """A label map on ``volume``'s grid (all background when ``array`` is None)."""
        if array is None:
            array = np.zeros(volume.shape, dtype=np.int32)
        return cls(array, volume.geometry, **fields)

    @property
    def affine(self) -> np.ndarray:
        return self.geometry.affine

    @property
    def labels(self) -> list[int]:
        """Label values present (background excluded), sorted."""
        return [int(v) for v in np.unique(self.array) if v != 0]


@dataclass(frozen=True, eq=False)
class InstanceMap:
    """Scored object instances on one voxel grid.

    ``array`` ``(z, y, x)`` holds an instance id per voxel (0 = background);
    ``labels`` maps instance id -> label value (the COCO category); ``scores`` maps
    instance id -> confidence for the whole instance; ``slice_scores`` instance id ->
    per-slice confidences (NaN where absent) for 2D AP.
    """

    array: np.ndarray
    geometry: Geometry
    labels: dict[int, int]
    scores: dict[int, float] = field(default_factory=dict)
    slice_scores: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.shape != self.geometry.shape:
            raise GeometryError(f"instance array shape {self.array.shape} != geometry shape {self.geometry.shape}")
        missing = sorted(set(int(v) for v in np.unique(self.array)) - {0} - set(self.labels))
        if missing:
            raise InputError(f"instance ids {missing[:10]} have no label value in InstanceMap.labels")
