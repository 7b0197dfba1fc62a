"""The Points, Shapes and scribble Labels layers a user prompts SAM2 with, on one volume's grid.

The layers share the image's transform (``_layers.display_transform``), so their data are
voxel indices ``(z, y, x)`` of the ``Volume``, which is what ``medseg`` prompts are, whatever
view they were drawn in. Each is made on first use (an empty layer in the layer list only
costs drawing time, most of all in 3D). Points and boxes carry features: ``uid`` (a number
given in placing order, shared by all prompt layers), ``object`` (the label value it prompts)
and, for points, ``positive``.

Positive points are green, negative points red; a marker's outline has its object's label
colour. Shift-click places a negative point (a positive one while the "negative" toggle is
on). Scribbles are brush strokes in a Labels layer (1 = object, green; 2 = background, red),
painted in any view (a coronal stroke crosses many acquired slices); each stroke becomes one
marker of the selected object, holding the voxels it painted. Erasing takes voxels out of
the strokes; Undo and Clear repaint the layer from the markers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import napari
import numpy as np

from medseg.volume import Volume

from napari_plugin._layers import display_transform

_POSITIVE = (0.2, 0.9, 0.35, 1.0)
_NEGATIVE = (1.0, 0.25, 0.25, 1.0)


@dataclass(frozen=True)
class Marker:
    """One prompt on slice ``z``: a point ``(y, x)`` (``positive`` or not), a box ``(y0, x0, y1, x1)``
    or a mask (``np.packbits`` of the ``(y, x)`` bool slice, so that markers compare by value)."""

    uid: int
    obj_id: int
    z: int
    point: tuple[float, float] | None = None
    positive: bool = True
    box: tuple[float, float, float, float] | None = None
    mask: bytes | None = None
    voxels: bytes | None = None  # a scribble: its voxel indices, np.int32 (n, 3) rows (z, y, x)

    def mask_array(self, shape_yx: tuple[int, int]) -> np.ndarray:
        bits = np.unpackbits(np.frombuffer(self.mask, dtype=np.uint8), count=shape_yx[0] * shape_yx[1])
        return bits.reshape(shape_yx).astype(bool)

    def voxel_array(self) -> np.ndarray:
        return np.frombuffer(self.voxels, dtype=np.int32).reshape(-1, 3)

    @property
    def slices(self) -> list[int]:
        """The acquired slices the marker prompts: one, or every slice a scribble crosses."""
        return sorted({int(z) for z in self.voxel_array()[:, 0]}) if self.voxels is not None else [self.z]

    def scribble_slices(self, shape_yx: tuple[int, int]) -> dict[int, np.ndarray]:
        """A scribble's ``(y, x)`` masks by slice."""
        masks: dict[int, np.ndarray] = {}
        for z, y, x in self.voxel_array():
            masks.setdefault(int(z), np.zeros(shape_yx, bool))[y, x] = True
        return masks


def scribble_marker(uid: int, obj_id: int, voxels: np.ndarray, *, positive: bool) -> Marker:
    """A scribble marker from ``(n, 3)`` voxel indices (sorted, so equal strokes compare equal)."""
    voxels = np.unique(np.asarray(voxels, dtype=np.int32).reshape(-1, 3), axis=0)
    return Marker(uid, obj_id, int(voxels[0, 0]), positive=positive, voxels=voxels.tobytes())


class PromptLayers:
    """Create and read the prompt layers of one image; see the module docstring."""

    def __init__(self, viewer: napari.Viewer, volume: Volume, *, name: str, colour_of: Any) -> None:
        self._viewer = viewer
        self._name = name
        self._colour_of = colour_of  # label value -> RGBA, the output Labels layer's colours
        self._transform = display_transform(volume)
        self._size = max(volume.shape[1:]) / 40
        self._next_uid = 0
        self._obj_id = 1
        self.negative = False
        self._shape = volume.shape
        self._points: Any | None = None  # made on first use: an empty layer only costs (3D) drawing time
        self._boxes: Any | None = None
        self._scribbles: Any | None = None
        self._strokes: list[Marker] = []  # the scribble markers the scribbles layer shows

    @property
    def points(self) -> Any:
        """The Points layer (made, in add mode, on first use)."""
        if self._points is None:
            self._points = self._viewer.add_points(
                ndim=3, name=f"{self._name} prompts", size=max(3.0, self._size),
                features={"uid": np.zeros(0, int), "object": np.zeros(0, int), "positive": np.zeros(0, bool)},
                border_width=0.25, out_of_slice_display=False, **self._transform,
            )
            self._points.mouse_drag_callbacks.insert(0, self._sign_from_shift)
            self._watch(self._points)
            self._points.mode = "add"
        return self._points

    @property
    def boxes(self) -> Any:
        """The Shapes layer for boxes (made on first use)."""
        if self._boxes is None:
            self._boxes = self._viewer.add_shapes(
                ndim=3, name=f"{self._name} boxes", features={"uid": np.zeros(0, int), "object": np.zeros(0, int)},
                face_color="transparent", edge_width=max(1.0, self._size / 4), **self._transform,
            )
            self._watch(self._boxes)
        return self._boxes

    @property
    def scribbles(self) -> Any:
        """The Labels layer for scribbles (made on first use, painting the current sign)."""
        if self._scribbles is None:
            from napari.utils.colormaps import DirectLabelColormap

            colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: _POSITIVE, 2: _NEGATIVE}
            self._scribbles = self._viewer.add_labels(
                np.zeros(self._shape, np.uint8), name=f"{self._name} scribbles", opacity=0.9,
                colormap=DirectLabelColormap(color_dict=colours), **self._transform,
            )
            self._scribbles.brush_size = max(1, round(self._size / 3))
            self._scribbles.events.paint.connect(self._on_paint)
            self._update_defaults()
        return self._scribbles

    def _watch(self, layer: Any) -> None:
        layer.events.data.connect(self._on_data)
        self._update_defaults()

    @property
    def layers(self) -> tuple[Any, ...]:
        """The prompt layers made so far."""
        return tuple(layer for layer in (self._points, self._boxes, self._scribbles) if layer is not None)

    def set_object(self, obj_id: int) -> None:
        """New markers prompt ``obj_id``."""
        self._obj_id = obj_id
        self._update_defaults()

    def set_negative(self, negative: bool) -> None:
        self.negative = negative
        self._update_defaults()

    def markers(self) -> list[Marker]:
        """Every marker, in the order it was placed."""
        found = []
        if self._points is not None:
            found += self._point_markers()
        if self._boxes is not None:
            found += self._box_markers()
        return sorted(found + self._strokes, key=lambda m: m.uid)

    def _point_markers(self) -> list[Marker]:
        found = []
        features = self.points.features
        for row, (z, y, x) in enumerate(np.asarray(self.points.data)):
            found.append(Marker(int(features["uid"][row]), int(features["object"][row]), int(round(z)),
                                point=(float(y), float(x)), positive=bool(features["positive"][row])))
        return found

    def _box_markers(self) -> list[Marker]:
        found = []
        features = self.boxes.features
        for row, corners in enumerate(self.boxes.data):
            corners = np.asarray(corners)
            (y0, x0), (y1, x1) = corners[:, 1:].min(axis=0), corners[:, 1:].max(axis=0)
            found.append(Marker(int(features["uid"][row]), int(features["object"][row]),
                                int(round(corners[:, 0].mean())), box=(float(y0), float(x0), float(y1), float(x1))))
        return found

    def new_uid(self) -> int:
        """The next number in placing order (for prompts kept outside the two layers)."""
        self._next_uid += 1
        return self._next_uid - 1

    def remove(self, uid: int) -> None:
        """Delete the marker ``uid`` from its layer."""
        self._remove_where("uid", uid)

    def remove_object(self, obj_id: int) -> None:
        """Delete every marker of ``obj_id``."""
        self._remove_where("object", obj_id)

    def set_markers(self, markers: list[Marker]) -> None:
        """Replace every point, box and scribble by ``markers`` (mask markers are kept elsewhere): Undo/Redo."""
        points = [m for m in markers if m.point is not None]
        boxes = [m for m in markers if m.box is not None]
        if points or self._points is not None:
            self._set_points(points)
        if boxes or self._boxes is not None:
            self._set_boxes(boxes)
        self._set_strokes([m for m in markers if m.voxels is not None])
        self.recolour()

    def _set_strokes(self, strokes: list[Marker]) -> None:
        self._strokes = list(strokes)
        if self._scribbles is None and not strokes:
            return
        data = np.zeros(self._shape, np.uint8)
        for m in strokes:
            z, y, x = m.voxel_array().T
            data[z, y, x] = 1 if m.positive else 2
        self.scribbles.data[...] = data
        self.scribbles.refresh()

    def _set_points(self, points: list[Marker]) -> None:
        self.points.data = np.array([(m.z, *m.point) for m in points], dtype=float).reshape(-1, 3)
        self.points.features = {"uid": [m.uid for m in points], "object": [m.obj_id for m in points],
                                "positive": [m.positive for m in points]}

    def _set_boxes(self, boxes: list[Marker]) -> None:
        self.boxes.data = []
        if boxes:
            self.boxes.add_rectangles([np.array([[m.z, m.box[0], m.box[1]], [m.z, m.box[0], m.box[3]],
                                                 [m.z, m.box[2], m.box[3]], [m.z, m.box[2], m.box[1]]]) for m in boxes])
        self.boxes.features = {"uid": [m.uid for m in boxes], "object": [m.obj_id for m in boxes]}

    def _remove_where(self, feature: str, value: int) -> None:
        strokes = [m for m in self._strokes if (m.uid if feature == "uid" else m.obj_id) != value]
        if len(strokes) != len(self._strokes):
            self._set_strokes(strokes)
        for layer in (self._points, self._boxes):
            if layer is None:
                continue
            rows = np.flatnonzero(np.asarray(layer.features[feature]) == value)
            if len(rows):
                layer.selected_data = set(rows.tolist())
                layer.remove_selected()

    def recolour(self) -> None:
        """Green/red faces by sign, outlines in each object's label colour."""
        if self._points is not None and len(self._points.data):
            features = self.points.features
            self.points.face_color = [_POSITIVE if p else _NEGATIVE for p in features["positive"]]
            self.points.border_color = [self._colour_of(o) for o in features["object"]]
        if self._boxes is not None and len(self._boxes.data):
            self.boxes.edge_color = [self._colour_of(o) for o in self.boxes.features["object"]]

    def _on_data(self, event: Any) -> None:
        if str(getattr(event, "action", "")) != "added":
            return
        layer = event.source
        uids = np.asarray(layer.features["uid"])
        # napari copies the features of the point it selects into the defaults of the next one, so a
        # point added by ``layer.add`` (a script) after another one arrives with that one's uid
        earlier = np.zeros(len(uids), bool)
        earlier[np.unique(uids, return_index=True)[1]] = True
        for row in np.flatnonzero((uids < 0) | ~earlier):
            layer.features.loc[row, "uid"] = self.new_uid()
        self.recolour()

    def _update_defaults(self) -> None:
        if self._points is not None:
            self._points.feature_defaults = {"uid": -1, "object": self._obj_id, "positive": not self.negative}
        if self._boxes is not None:
            self._boxes.feature_defaults = {"uid": -1, "object": self._obj_id}
        if self._scribbles is not None:
            self._scribbles.selected_label = 2 if self.negative else 1

    def _on_paint(self, event: Any) -> None:
        """A finished brush stroke (or erasure) in the scribbles layer: a new marker, or strokes trimmed."""
        painted: dict[bool, list[np.ndarray]] = {True: [], False: []}
        erased = []
        for atom in event.value:
            voxels, value = _painted(atom)
            (painted[value != 2] if value else erased).append(voxels)
        strokes = self._strokes
        if erased:
            gone = {tuple(v) for v in np.concatenate(erased)}
            strokes = []
            for m in self._strokes:
                kept = [v for v in m.voxel_array() if tuple(v) not in gone]
                if len(kept) == len(m.voxel_array()):
                    strokes.append(m)
                elif kept:
                    strokes.append(scribble_marker(m.uid, m.obj_id, np.array(kept), positive=m.positive))
        for positive, voxels in painted.items():
            if voxels:
                strokes = strokes + [scribble_marker(self.new_uid(), self._obj_id, np.concatenate(voxels),
                                                     positive=positive)]
        self._set_strokes(strokes)

    def _sign_from_shift(self, layer: Any, event: Any) -> None:
        if layer.mode == "add":
            negative = self.negative != ("Shift" in event.modifiers)
            layer.feature_defaults = {"uid": -1, "object": self._obj_id, "positive": not negative}


def _painted(atom: Any) -> tuple[np.ndarray, int]:
    """The ``(n, 3)`` voxels one paint-history atom of a Labels layer changed, and the label painted.

    napari 0.9.2 records brush and fill edits as ``(slice_key, mask, old_values, new_value)``
    over the edit's bounding box (``mask`` None: the whole box); direct edits as the older
    ``(indices, old_values, new_values)``.
    """
    if hasattr(atom, "slice_key"):
        box = tuple(atom.slice_key)
        inside = np.ones([s.stop - s.start for s in box], bool) if atom.mask is None else np.asarray(atom.mask)
        return np.argwhere(inside) + [s.start for s in box], int(atom.new_value)
    indices, _, value = atom
    return np.stack([np.asarray(i) for i in indices], axis=1), int(np.max(value))

