"""Prompts for interactive segmentation, always in voxel indices ``(z, y, x)`` of a Volume.

Four kinds, per object and slice: points (positive or negative), boxes, masks (kept exactly)
and scribbles: brush strokes, positive or negative, as the voxels they cover (nnInteractive's
scribble prompt). A stroke drawn in any view (axial, coronal, sagittal, 3D) is a 3D voxel set;
``Prompts.add_scribble_volume`` cuts it into one scribble per acquired slice it crosses, which
is what a slice-by-slice engine can use. SAM2 takes a scribble as a few points spread along
it (``ScribblePrompt.points``).

Conversion to a model's frame size happens inside the engine, once. ``Prompts`` round-trips
through JSON (``to_dict`` / ``from_dict``) so that a batch run can log the exact prompts used
and ``medseg replay`` can feed them again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from medseg.errors import InputError

PROMPTS_FORM = (
    'prompts as {"1": {"points": [[z, y, x, 1]], "boxes": [[z, y0, x0, y1, x1]]}} (object id -> points, boxes, '
    "masks, scribbles, and label for a part of a label; Prompts.to_dict), or a file holding them: a pipeline "
    "case's prompts.json or result.json, a medseg segment --qc file"
)


@dataclass(frozen=True)
class PointPrompt:
    z: int
    y: float
    x: float
    positive: bool = True


@dataclass(frozen=True)
class BoxPrompt:
    """An axis-aligned box on slice ``z``; corners are inclusive voxel indices."""

    z: int
    y0: float
    x0: float
    y1: float
    x1: float


@dataclass(frozen=True, eq=False)
class MaskPrompt:
    z: int
    mask: np.ndarray  # (y, x) bool


@dataclass(frozen=True, eq=False)
class ScribblePrompt:
    """The voxels ``(y, x)`` a brush stroke covers on slice ``z``; ``positive``: object or background."""

    z: int
    mask: np.ndarray  # (y, x) bool
    positive: bool = True

    def points(self, max_points: int = 6) -> list[tuple[int, int]]:
        """At most ``max_points`` voxels ``(y, x)`` of the stroke, spread along it (farthest-point order).

        The first is the stroke's voxel nearest its centroid; each next one is the voxel
        farthest from those taken, so a long stroke gets points along its whole length.

        >>> mask = np.zeros((3, 9), bool); mask[1, :] = True
        >>> ScribblePrompt(0, mask).points(3)
        [(1, 4), (1, 0), (1, 8)]
        """
        coords = np.argwhere(self.mask)
        if len(coords) == 0:
            return []
        taken = [int(np.linalg.norm(coords - coords.mean(axis=0), axis=1).argmin())]
        distance = np.linalg.norm(coords - coords[taken[0]], axis=1)
        while len(taken) < min(max_points, len(coords)) and distance.max() > 0:
            taken.append(int(distance.argmax()))
            distance = np.minimum(distance, np.linalg.norm(coords - coords[taken[-1]], axis=1))
        return [(int(coords[i][0]), int(coords[i][1])) for i in taken]


Prompt = PointPrompt | BoxPrompt | MaskPrompt | ScribblePrompt


@dataclass
class ObjectPrompts:
    """Everything the user said about one object; ``obj_id`` is its label value (>= 1).

    ``label``: set when the object is one *part* of a label, tracked on its own (each kidney of a
    ``kidney`` label its own click and box): the label value its voxels get in the result, which
    merges the parts of a label (``Prompts.label_of``). None: the object is its label.
    """

    obj_id: int
    name: str = ""
    points: list[PointPrompt] = field(default_factory=list)
    boxes: list[BoxPrompt] = field(default_factory=list)
    masks: list[MaskPrompt] = field(default_factory=list)
    scribbles: list[ScribblePrompt] = field(default_factory=list)
    label: int | None = None

    @property
    def label_value(self) -> int:
        """The label value this object's voxels get: ``label``, or its own id."""
        return self.obj_id if self.label is None else self.label

    @property
    def slices(self) -> list[int]:
        """The prompted slice indices, sorted."""
        return sorted({p.z for p in self.all()})

    def all(self) -> list[Prompt]:
        """Every prompt: masks, boxes, scribbles, then points."""
        return [*self.masks, *self.boxes, *self.scribbles, *self.points]

    def on_slice(self, z: int) -> list[Prompt]:
        """The prompts on slice ``z``, in the order of ``all``."""
        return [p for p in self.all() if p.z == z]

    def is_empty(self) -> bool:
        return not self.all()

    def put(self, items: tuple[Prompt, ...]) -> None:
        """Add ``items`` to their lists."""
        lists = {PointPrompt: self.points, BoxPrompt: self.boxes, MaskPrompt: self.masks,
                 ScribblePrompt: self.scribbles}
        for item in items:
            lists[type(item)].append(item)

    def take(self, items: tuple[Prompt, ...]) -> None:
        """Remove exactly these ``items`` (by identity)."""
        for lst in (self.points, self.boxes, self.masks, self.scribbles):
            lst[:] = [x for x in lst if not any(x is item for item in items)]


@dataclass
class Prompts:
    """Prompts for several objects, keyed by object id: its label value, or a part's own id (``ObjectPrompts``)."""

    objects: dict[int, ObjectPrompts] = field(default_factory=dict)

    def object(self, obj_id: int, name: str = "", *, label: int | None = None) -> ObjectPrompts:
        """The prompts of ``obj_id``, created empty on first use; ``label``: see ``ObjectPrompts``."""
        if obj_id < 1:
            raise InputError(f"object ids are label values and start at 1; got {obj_id}")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 1):
            raise InputError(f"an object's label must be a label value (an integer >= 1); got {label!r}")
        if obj_id not in self.objects:
            self.objects[obj_id] = ObjectPrompts(obj_id, name or f"object {obj_id}",
                                                 label=None if label == obj_id else label)
        return self.objects[obj_id]

    def label_of(self) -> dict[int, int]:
        """Object id -> the label value its voxels get (its own id unless it is a part of a label)."""
        return {obj_id: obj.label_value for obj_id, obj in sorted(self.objects.items())}

    def by_label(self) -> "Prompts":
        """The prompts pooled per label value: every part of a label as one object (named as its first part).

        What the prompts say about each label of the merged result, e.g. the anchors of
        ``medseg.objects.clean_objects``.
        """
        pooled = Prompts()
        for obj in sorted(self.objects.values(), key=lambda o: o.obj_id):
            pooled.object(obj.label_value, obj.name).put(tuple(obj.all()))
        return pooled

    def add_point(self, obj_id: int, z: int, y: float, x: float, *, positive: bool = True) -> "Prompts":
        self.object(obj_id).points.append(PointPrompt(int(z), float(y), float(x), bool(positive)))
        return self

    def add_box(self, obj_id: int, z: int, y0: float, x0: float, y1: float, x1: float) -> "Prompts":
        if y1 < y0 or x1 < x0:
            raise InputError(f"box on slice {z} has its corners swapped: ({y0}, {x0}) .. ({y1}, {x1})")
        self.object(obj_id).boxes.append(BoxPrompt(int(z), float(y0), float(x0), float(y1), float(x1)))
        return self

    def add_mask(self, obj_id: int, z: int, mask: np.ndarray) -> "Prompts":
        self.object(obj_id).masks.append(MaskPrompt(int(z), np.asarray(mask, dtype=bool)))
        return self

    def add_scribble(self, obj_id: int, z: int, mask: np.ndarray, *, positive: bool = True) -> "Prompts":
        """A brush stroke on slice ``z``: the ``(y, x)`` voxels it covers."""
        self.object(obj_id).scribbles.append(ScribblePrompt(int(z), np.asarray(mask, dtype=bool), bool(positive)))
        return self

    def add_scribble_volume(self, obj_id: int, mask: np.ndarray, *, positive: bool = True) -> "Prompts":
        """A stroke drawn in any view, as a ``(z, y, x)`` voxel mask: one scribble per slice it crosses.

        >>> stroke = np.zeros((4, 3, 3), bool); stroke[1:3, 1, 2] = True  # drawn on a sagittal plane
        >>> [s.z for s in Prompts().add_scribble_volume(1, stroke).objects[1].scribbles]
        [1, 2]
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim != 3:
            raise InputError(f"a scribble volume is (z, y, x); got an array of shape {mask.shape}")
        for z in np.flatnonzero(mask.any(axis=(1, 2))):
            self.add_scribble(obj_id, int(z), mask[z], positive=positive)
        return self

    @property
    def slices(self) -> list[int]:
        return sorted({z for obj in self.objects.values() for z in obj.slices})

    def validate(self, shape_zyx: tuple[int, int, int]) -> None:
        """Raise ``InputError`` naming the object and prompt that does not fit the volume."""
        nz, ny, nx = shape_zyx
        if not self.objects or all(obj.is_empty() for obj in self.objects.values()):
            raise InputError("no prompts given: add at least one point, box, mask or scribble")
        for obj in self.objects.values():
            for p in obj.points:
                if not (0 <= p.z < nz and 0 <= p.y <= ny - 1 and 0 <= p.x <= nx - 1):
                    raise InputError(
                        f"object {obj.obj_id}: point (z={p.z}, y={p.y}, x={p.x}) is outside the volume of shape "
                        f"{shape_zyx}"
                    )
            for b in obj.boxes:
                if not (0 <= b.z < nz and 0 <= b.y0 and b.y1 <= ny - 1 and 0 <= b.x0 and b.x1 <= nx - 1):
                    raise InputError(
                        f"object {obj.obj_id}: box on slice {b.z} ({b.y0}, {b.x0})..({b.y1}, {b.x1}) is outside the "
                        f"volume of shape {shape_zyx}"
                    )
            for m in obj.masks:
                if not 0 <= m.z < nz:
                    raise InputError(f"object {obj.obj_id}: mask on slice {m.z} is outside the volume ({nz} slices)")
                if m.mask.shape != (ny, nx):
                    raise InputError(
                        f"object {obj.obj_id}: mask on slice {m.z} has shape {m.mask.shape}, the slices are {(ny, nx)}"
                    )
                if not m.mask.any():
                    raise InputError(f"object {obj.obj_id}: mask on slice {m.z} is empty")
            for sc in obj.scribbles:
                if not 0 <= sc.z < nz or sc.mask.shape != (ny, nx):
                    raise InputError(f"object {obj.obj_id}: scribble on slice {sc.z} of shape {sc.mask.shape} does not "
                                     f"fit the volume of shape {shape_zyx}")
                if not sc.mask.any():
                    raise InputError(f"object {obj.obj_id}: scribble on slice {sc.z} covers no voxel")

    def to_dict(self) -> dict:
        """JSON-able form; masks are stored as COCO run-length encodings (compact for big masks)."""
        return {
            str(obj_id): {
                "name": obj.name,
                **({"label": obj.label} if obj.label is not None else {}),
                "points": [[p.z, p.y, p.x, int(p.positive)] for p in obj.points],
                "boxes": [[b.z, b.y0, b.x0, b.y1, b.x1] for b in obj.boxes],
                "masks": [
                    {"z": m.z, "shape": list(m.mask.shape), "rle": _encode_mask(m.mask)} for m in obj.masks
                ],
                **({"scribbles": [
                    {"z": sc.z, "shape": list(sc.mask.shape), "rle": _encode_mask(sc.mask),
                     "positive": int(sc.positive)} for sc in obj.scribbles
                ]} if obj.scribbles else {}),
            }
            for obj_id, obj in sorted(self.objects.items())
        }

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "prompts") -> "Prompts":
        """The inverse of ``to_dict``; an ``InputError`` naming ``source``, the object and the form otherwise."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: is a JSON {type(data).__name__}; expected {PROMPTS_FORM}")
        prompts = cls()
        for key, spec in data.items():
            if not str(key).isdigit():
                raise InputError(f"{source}: key {key!r} is not an object id (a label value); expected {PROMPTS_FORM}")
            try:
                prompts._add_object(int(key), spec)
            except InputError as error:
                raise InputError(f"{source}: object {key}: {error}") from None
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                raise InputError(f"{source}: object {key} does not read as prompts ({type(error).__name__}: {error}); "
                                 f"expected {PROMPTS_FORM}") from None
        return prompts

    @classmethod
    def from_record(cls, data: Any, *, source: str) -> "Prompts":
        """The prompts of any JSON medseg writes with prompts in it.

        ``to_dict``'s form itself; a pipeline case's ``prompts.json`` (``{"prompts": ...}``); a
        case's ``result.json`` or the ``--qc`` file of ``medseg segment`` (``{"provenance":
        {"prompts": ...}}``). A record without prompts (reference prompting logs support slices,
        Mask R-CNN logs none) is an ``InputError`` saying so.
        """
        inner = data
        if isinstance(data, dict) and isinstance(data.get("provenance"), dict) and "prompts" in data["provenance"]:
            inner = data["provenance"]["prompts"]
        elif isinstance(data, dict) and "prompts" in data:
            inner = data["prompts"]
        elif isinstance(data, dict) and data and not any(str(key).isdigit() for key in data):
            inner = {}  # a medseg record of another kind (a failed case, a Mask R-CNN or fewshot result)
        prompts = cls.from_dict(inner, source=source)
        if not prompts.objects:
            support = isinstance(data, dict) and "support" in data
            kind = " (it logs reference slices, which are not prompts)" if support else ""
            raise InputError(f"{source}: holds no prompts{kind}; expected {PROMPTS_FORM}")
        return prompts

    def _add_object(self, obj_id: int, spec: Any) -> None:
        if not isinstance(spec, dict):
            raise InputError(f"is a JSON {type(spec).__name__}, not an object with name, points, boxes, masks, "
                             "scribbles")
        unknown = sorted(set(spec) - {"name", "label", "points", "boxes", "masks", "scribbles"})
        if unknown:
            raise InputError(f"unknown key(s) {unknown}; an object has name, label, points, boxes, masks, scribbles")
        obj = self.object(obj_id, spec.get("name", ""), label=spec.get("label"))
        for z, y, x, positive in spec.get("points", []):
            self.add_point(obj.obj_id, z, y, x, positive=bool(positive))
        for z, y0, x0, y1, x1 in spec.get("boxes", []):
            self.add_box(obj.obj_id, z, y0, x0, y1, x1)
        for m in spec.get("masks", []):
            self.add_mask(obj.obj_id, m["z"], _decode_mask(m["rle"], m["shape"]))
        for sc in spec.get("scribbles", []):
            self.add_scribble(obj.obj_id, sc["z"], _decode_mask(sc["rle"], sc["shape"]),
                              positive=bool(sc.get("positive", 1)))


def _encode_mask(mask: np.ndarray) -> str:
    """COCO RLE counts of a 2D boolean mask, as text."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return rle["counts"].decode("ascii")


def _decode_mask(counts: str, shape: list[int]) -> np.ndarray:
    return mask_utils.decode({"size": list(shape), "counts": counts.encode("ascii")}).astype(bool)
