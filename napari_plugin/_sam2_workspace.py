"""The SAM2 state of one image in the viewer: objects, prompt layers, output labels, session.

The prompt layers are the user's record of what they said; the ``Sam2Session`` is SAM2's.
``plan`` compares the two: markers placed since the last call are *pending* and go to the
session in placing order; when a marker the session already has was moved or deleted by
hand (or the model changed), the session is rebuilt from all markers, so what SAM2 uses is
always exactly what the layers show.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import napari
import numpy as np

from medseg.errors import GeometryError
from medseg.prompts import Prompts
from medseg.sam2 import Sam2Session
from medseg.volume import LabelVolume, Volume

from napari_plugin._layers import LABELS_KEY, VOLUME_KEY, label_features, labels_layer_data
from napari_plugin._model_picker import ModelChoice
from napari_plugin._prompt_layers import Marker, PromptLayers


@dataclass(frozen=True)
class Plan:
    """What the next engine call sends: all markers to a new session, or the pending ones."""

    rebuild: bool
    markers: list[Marker]


def check_markers(markers: list[Marker], shape: tuple[int, int, int]) -> None:
    """``InputError`` naming the first marker outside the volume, before any model work."""
    for marker in markers:
        probe = Prompts()
        if marker.mask is not None:
            probe.add_mask(marker.obj_id, marker.z, marker.mask_array(shape[1:]))
        elif marker.box is not None:
            probe.add_box(marker.obj_id, marker.z, *clip_box(marker.box, shape))
        else:
            probe.add_point(marker.obj_id, marker.z, *marker.point, positive=marker.positive)
        probe.validate(shape)


def clip_box(box: tuple[float, float, float, float], shape: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """A box dragged past the image edge, cut at the edge (the part outside holds nothing)."""
    y0, x0, y1, x1 = box
    ny, nx = shape[1] - 1, shape[2] - 1
    return (min(max(y0, 0.0), ny), min(max(x0, 0.0), nx), min(max(y1, 0.0), ny), min(max(x1, 0.0), nx))


def send(session: Sam2Session, marker: Marker, name: str) -> np.ndarray:
    """Give one marker to the session; returns the label slice it changed."""
    if marker.mask is not None:
        return session.add_mask(marker.obj_id, marker.z, marker.mask_array(session.volume.shape[1:]), name=name)
    if marker.box is not None:
        return session.add_box(marker.obj_id, marker.z, *clip_box(marker.box, session.volume.shape), name=name)
    return session.add_point(marker.obj_id, marker.z, *marker.point, positive=marker.positive, name=name)


class Workspace:
    """Objects, prompt layers, output Labels layer and SAM2 session of one image layer."""

    def __init__(self, viewer: napari.Viewer, image: Any, volume: Volume) -> None:
        self.viewer = viewer
        self.image = image
        self.volume = volume
        self.objects: dict[int, str] = {1: "object 1"}
        self.session: Sam2Session | None = None
        self.session_model: ModelChoice | None = None
        self.sent: list[Marker] = []  # markers the session holds, in the order it got them
        self.mask_markers: list[Marker] = []
        self.labels = self.new_labels_layer()
        self.prompts = PromptLayers(viewer, volume, name=image.name, colour_of=self.colour_of)

    # --- objects ----------------------------------------------------------------------------
    def colour_of(self, obj_id: int) -> np.ndarray:
        return np.asarray(self.labels.get_color(int(obj_id)), dtype=float)

    def add_object(self) -> int:
        obj_id = max(self.objects, default=0) + 1
        self.objects[obj_id] = f"object {obj_id}"
        return obj_id

    def remove_object(self, obj_id: int) -> None:
        """Forget an object everywhere: its markers, its voxels, its prompts in the session."""
        self.prompts.remove_object(obj_id)
        self.mask_markers = [m for m in self.mask_markers if m.obj_id != obj_id]
        self.sent = [m for m in self.sent if m.obj_id != obj_id]
        if self.session is not None:
            self.session.remove_object(obj_id)
        data = self.labels.data
        data[data == obj_id] = 0
        self.labels.refresh()
        del self.objects[obj_id]
        if not self.objects:
            self.objects[1] = "object 1"
        self._update_names()

    def rename(self, obj_id: int, name: str) -> None:
        self.objects[obj_id] = name
        self._update_names()

    # --- prompts and session ----------------------------------------------------------------
    def markers(self) -> list[Marker]:
        """Points, boxes and mask prompts, in placing order."""
        return sorted(self.prompts.markers() + self.mask_markers, key=lambda m: m.uid)

    def add_mask_from_labels(self, obj_id: int, z: int) -> Marker:
        """A mask prompt: the voxels of ``obj_id`` on slice ``z`` of the output layer, as shown and painted."""
        mask = np.asarray(self.labels.data[z]) == obj_id
        marker = Marker(self.prompts.new_uid(), obj_id, z, mask=np.packbits(mask).tobytes())
        self.mask_markers.append(marker)
        return marker

    def remove_marker(self, uid: int) -> None:
        self.mask_markers = [m for m in self.mask_markers if m.uid != uid]
        self.prompts.remove(uid)

    def plan(self, model: ModelChoice) -> Plan:
        current = {m.uid: m for m in self.markers()}
        moved_or_deleted = any(current.get(m.uid) != m for m in self.sent)
        if moved_or_deleted or self.session is None or self.session_model != model:
            return Plan(True, list(current.values()))
        sent = {m.uid for m in self.sent}
        return Plan(False, [m for m in current.values() if m.uid not in sent])

    def pending(self) -> list[Marker]:
        sent = {m.uid for m in self.sent}
        return [m for m in self.markers() if m.uid not in sent]

    def commit(self, model: ModelChoice, session: Sam2Session, plan: Plan) -> None:
        """Record that ``session`` now holds ``plan``'s markers."""
        self.sent = plan.markers if plan.rebuild else self.sent + plan.markers
        self.session, self.session_model = session, model

    def forget_session(self) -> None:
        """After a failed engine call: the next call rebuilds the session from the markers."""
        self.session, self.session_model, self.sent = None, None, []

    def restore_layers(self) -> None:
        """Put the output and prompt layers back into the viewer if the user deleted them."""
        present = {layer.unique_id for layer in self.viewer.layers}
        for layer in (self.labels, *self.prompts.layers):
            if layer.unique_id not in present:
                self.viewer.add_layer(layer)

    # --- output labels ----------------------------------------------------------------------
    def use_labels_layer(self, layer: Any) -> None:
        """Write results into ``layer``; it must lie on this image's grid.

        Raises
        ------
        GeometryError
            The layer's shape differs from the image's, or it was drawn on another image's grid.
        """
        shape = np.shape(layer.data)
        if shape != self.volume.shape:
            raise GeometryError(
                f"labels layer {layer.name!r} has shape {shape} but image {self.image.name!r} has shape "
                f"{self.volume.shape}: SAM2 writes into a labels layer of the image's shape; pick another "
                "layer or '(new layer)'"
            )
        drawn_on = layer.metadata.get(VOLUME_KEY)
        if drawn_on is not None and not drawn_on.geometry.same_grid(self.volume.geometry):
            raise GeometryError(
                f"labels layer {layer.name!r} belongs to another image ({self.volume.geometry.describe_difference(drawn_on.geometry)}); "
                "pick a labels layer of this image or '(new layer)'"
            )
        layer.metadata.setdefault(VOLUME_KEY, self.volume)
        self.labels = layer

    def paint_slices(self, slices: dict[int, np.ndarray], result: LabelVolume) -> None:
        """Write label slices (from prompting) into the output layer."""
        data = self.labels.data
        for z, label_slice in slices.items():
            data[z] = label_slice
        self._set_result(result)
        self.labels.refresh()

    def show_result(self, result: LabelVolume) -> None:
        """Replace the output layer's voxels by a propagation result."""
        self.labels.data = result.array
        self._set_result(result)

    def result(self) -> LabelVolume | None:
        return self.labels.metadata.get(LABELS_KEY)

    def _set_result(self, result: LabelVolume) -> None:
        self.labels.metadata[LABELS_KEY] = result
        self._update_names()

    def _update_names(self) -> None:
        result = self.result()
        if result is not None:
            result = replace(result, label_names=dict(self.objects))
            self.labels.metadata[LABELS_KEY] = result
            self.labels.features = label_features(result)

    def new_labels_layer(self) -> Any:
        data, kwargs, _ = labels_layer_data(LabelVolume.like(self.volume), self.volume, f"{self.image.name} medseg")
        kwargs["opacity"] = 0.6
        return self.viewer.add_labels(data, **kwargs)
