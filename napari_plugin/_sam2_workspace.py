"""The SAM2 state of one image in the viewer: objects, prompt layers, output labels, session.

The prompt layers are the user's record of what they said; the ``Sam2Session`` is SAM2's,
and its action history is the one prompt history (one action per marker sent). ``plan``
compares the two: markers placed since the last call are *pending* and go to the session in
placing order; sent markers that are gone or were moved (by hand, or by Undo) are taken
back with ``Sam2Session.undo`` (the later ones are sent again); only a model or preset change
rebuilds the session. What SAM2 uses is always exactly what the layers show.

Accepted objects (micro-sam's "committed" objects) leave the session and live in
``committed``, a label map the results are painted under, so one segments organ after organ
on the same volume. The output Labels layer is made with the first result (an empty
full-size layer would only cost memory and 3D rendering time).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import napari
import numpy as np

from medseg.errors import GeometryError, InputError
from medseg.preprocess import choose_preset
from medseg.prompts import Prompts
from medseg.volume import LabelVolume, Volume

from napari_plugin._history import History, Snapshot
from napari_plugin._layers import LABELS_KEY, VOLUME_KEY, label_features, labels_layer_data
from napari_plugin._model_picker import ModelChoice
from napari_plugin._prompt_layers import Marker, PromptLayers

if TYPE_CHECKING:
    from medseg.sam2 import Sam2Session

SessionKey = tuple[ModelChoice, str]
"""What a session was built with: the model and the intensity preset's name."""


@dataclass(frozen=True)
class Plan:
    """What the next engine call does: all markers to a new session (``rebuild``), or keep the
    first ``kept`` markers sent, take back the session's last ``undo`` actions (one per slice
    of each marker dropped) and send ``markers``."""

    rebuild: bool
    markers: list[Marker]
    undo: int = 0
    kept: int = 0

    def apply(self, session: Sam2Session, names: dict[int, str]) -> dict[int, np.ndarray]:
        """Bring ``session`` in step with the layers; returns the label slices that changed."""
        slices = {}
        for _ in range(self.undo):
            z = session.undo()
            if z is not None:
                slices[z] = session.labels[z].copy()
        for marker in self.markers:
            slices.update(send(session, marker, names.get(marker.obj_id, "")))
        return slices


def check_markers(markers: list[Marker], shape: tuple[int, int, int]) -> None:
    """``InputError`` naming the first marker outside the volume, before any model work."""
    for marker in markers:
        probe = Prompts()
        for method, args, kwargs in prompt_calls(marker, shape):
            getattr(probe, method)(*args, **kwargs)
        probe.validate(shape)


def check_foreground(markers: list[Marker], labels: np.ndarray | None) -> None:
    """``InputError`` for an object with only background prompts and no voxels yet: SAM2 has nothing to find."""
    positive = {m.obj_id for m in markers if m.positive or m.box is not None or m.mask is not None}
    for obj_id in sorted({m.obj_id for m in markers} - positive):
        if labels is None or not (np.asarray(labels) == obj_id).any():
            raise InputError(f"object {obj_id} has only background (negative) prompts: add a positive point, a box "
                             "or a scribble on the object first")


def is_flat_box(marker: Marker, shape: tuple[int, int, int]) -> bool:
    """A box less than a voxel high or wide on its slice, once cut at the image edge: no prompt.

    A click without a drag in rectangle mode makes one, and so does a box drawn in a coronal
    or sagittal view (flat in the acquired plane) or one dragged wholly outside the image.
    """
    if marker.box is None:
        return False
    y0, x0, y1, x1 = clip_box(marker.box, shape)
    return y1 - y0 < 1 or x1 - x0 < 1


def clip_box(box: tuple[float, float, float, float], shape: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """A box dragged past the image edge, cut at the edge (the part outside holds nothing)."""
    y0, x0, y1, x1 = box
    ny, nx = shape[1] - 1, shape[2] - 1
    return (min(max(y0, 0.0), ny), min(max(x0, 0.0), nx), min(max(y1, 0.0), ny), min(max(x1, 0.0), nx))


def prompt_calls(marker: Marker, shape: tuple[int, int, int]) -> list[tuple[str, tuple, dict]]:
    """The ``add_*`` calls ``(method, args, kwargs)`` that give ``marker`` to a ``Prompts`` or a ``Sam2Session``.

    A scribble makes one call per acquired slice it crosses.
    """
    if marker.mask is not None:
        return [("add_mask", (marker.obj_id, marker.z, marker.mask_array(shape[1:])), {})]
    if marker.box is not None:
        return [("add_box", (marker.obj_id, marker.z, *clip_box(marker.box, shape)), {})]
    if marker.voxels is not None:
        return [("add_scribble", (marker.obj_id, z, mask), {"positive": marker.positive})
                for z, mask in marker.scribble_slices(shape[1:]).items()]
    return [("add_point", (marker.obj_id, marker.z, *marker.point), {"positive": marker.positive})]


def send(session: Sam2Session, marker: Marker, name: str) -> dict[int, np.ndarray]:
    """Give one marker to the session; returns the label slices it changed."""
    return {args[1]: getattr(session, method)(*args, **kwargs, name=name)
            for method, args, kwargs in prompt_calls(marker, session.volume.shape)}


class Workspace:
    """Objects, prompt layers, output Labels layer, accepted objects and SAM2 session of one image."""

    def __init__(self, viewer: napari.Viewer, image: Any, volume: Volume) -> None:
        self.viewer = viewer
        self.image = image
        self.volume = volume
        self.objects: dict[int, str] = {1: "object 1"}
        self.accepted: set[int] = set()
        self.committed: np.ndarray | None = None  # accepted objects' voxels, made on the first Accept
        self.session: Sam2Session | None = None
        self.session_key: SessionKey | None = None
        self.sent: list[Marker] = []  # markers the session holds, in the order it got them
        self.mask_markers: list[Marker] = []
        choice = choose_preset(volume)  # until a session says which preset the model asks for
        self.preset, self.preset_reason = choice.name, choice.reason  # shown in the panel
        self.chosen_preset: str | None = None  # the user's pick; None: the library decides (choose_preset)
        self.history = History()
        self.save_path: str | None = None  # the user's choice or the last save; None: the Save row suggests one
        self.correct_next: tuple[int, int] | None = None
        self.labels: Any | None = None
        self.prompts = PromptLayers(viewer, volume, name=image.name, colour_of=self.colour_of)

    # --- objects ----------------------------------------------------------------------------
    def colour_of(self, obj_id: int) -> np.ndarray:
        if self.labels is None:
            from napari.utils.colormaps import label_colormap

            return np.asarray(label_colormap().map(np.array([int(obj_id)]))[0], dtype=float)
        return np.asarray(self.labels.get_color(int(obj_id)), dtype=float)

    def add_object(self) -> int:
        obj_id = max(self.objects, default=0) + 1
        self.objects[obj_id] = f"object {obj_id}"
        return obj_id

    def remove_object(self, obj_id: int) -> None:
        """Forget an object everywhere: its markers, its voxels, its prompts in the session."""
        self.clear_object(obj_id)
        if self.committed is not None:
            self.committed[self.committed == obj_id] = 0
        self.accepted.discard(obj_id)
        del self.objects[obj_id]
        if not self.objects:
            self.objects[1] = "object 1"
        self._update_names()

    def clear_object(self, obj_id: int) -> None:
        """Take away an object's prompts and the voxels SAM2 gave it (accepted voxels stay)."""
        self._drop_prompts(obj_id)
        if self.labels is not None:
            data = self.labels.data
            gone = data == obj_id
            if self.committed is not None:
                gone &= self.committed != obj_id
            data[gone] = 0
            self.labels.refresh()

    def accept(self, obj_id: int) -> int:
        """Keep ``obj_id``'s voxels as they are now; its prompts leave SAM2. Returns its voxel count."""
        if self.labels is None:
            return 0
        mask = np.asarray(self.labels.data) == obj_id
        if self.committed is None:
            self.committed = np.zeros(self.volume.shape, dtype=np.int32)
        self.committed[mask] = obj_id
        self._drop_prompts(obj_id)
        self.accepted.add(obj_id)
        return int(mask.sum())

    def accepted_labels(self) -> LabelVolume:
        """The accepted objects, named, on the image's grid: what a cohort annotation saves."""
        array = np.zeros(self.volume.shape, np.int32) if self.committed is None else self.committed
        return LabelVolume.like(self.volume, array, label_names={k: self.objects[k] for k in sorted(self.accepted)})

    def load_accepted(self, labels: LabelVolume) -> None:
        """Earlier work on this image (a saved label file): its objects, accepted, in the labels layer."""
        array = np.asarray(labels.array, dtype=np.int32)
        self.ensure_labels().data[...] = array
        self.labels.refresh()
        self.committed = array.copy()
        self.objects = {v: labels.label_names.get(v, f"object {v}") for v in labels.labels}
        self.accepted = set(self.objects)
        self.add_object()
        self._update_names()

    def _drop_prompts(self, obj_id: int) -> None:
        self.prompts.remove_object(obj_id)
        self.mask_markers = [m for m in self.mask_markers if m.obj_id != obj_id]
        self.sent = [m for m in self.sent if m.obj_id != obj_id]  # the session drops its actions too
        if self.session is not None:
            self.session.remove_object(obj_id)

    def rename(self, obj_id: int, name: str) -> None:
        self.objects[obj_id] = name
        self._update_names()

    # --- prompts and session ----------------------------------------------------------------
    def markers(self) -> list[Marker]:
        """Points, boxes and mask prompts, in placing order."""
        return sorted(self.prompts.markers() + self.mask_markers, key=lambda m: m.uid)

    def add_mask_from_labels(self, obj_id: int, z: int) -> Marker:
        """A mask prompt: the voxels of ``obj_id`` on slice ``z`` of the output layer, as shown and painted."""
        mask = np.asarray(self.ensure_labels().data[z]) == obj_id
        marker = Marker(self.prompts.new_uid(), obj_id, z, mask=np.packbits(mask).tobytes())
        self.mask_markers.append(marker)
        return marker

    def drop_flat_boxes(self) -> list[Marker]:
        """Remove the boxes without area (``is_flat_box``) from the boxes layer; returns them."""
        flat = [m for m in self.prompts.markers() if is_flat_box(m, self.volume.shape)]
        for marker in flat:
            self.prompts.remove(marker.uid)
        return flat

    def remove_marker(self, uid: int) -> None:
        self.mask_markers = [m for m in self.mask_markers if m.uid != uid]
        self.prompts.remove(uid)

    def plan(self, key: SessionKey) -> Plan:
        """What brings a session built with ``key`` in step with the markers (see module docstring)."""
        current = {m.uid: m for m in self.markers()}
        if self.session is None or self.session_key != key:
            return Plan(True, list(current.values()))
        kept = 0
        while kept < len(self.sent) and current.get(self.sent[kept].uid) == self.sent[kept]:
            kept += 1
        held = {m.uid for m in self.sent[:kept]}
        undo = sum(len(m.slices) for m in self.sent[kept:])
        return Plan(False, [m for m in current.values() if m.uid not in held], undo=undo, kept=kept)

    def pending(self) -> list[Marker]:
        sent = {m.uid for m in self.sent}
        return [m for m in self.markers() if m.uid not in sent]

    def commit(self, key: SessionKey, session: Sam2Session, plan: Plan) -> None:
        """Record that ``session`` now holds ``plan``'s markers."""
        self.sent = plan.markers if plan.rebuild else self.sent[: plan.kept] + plan.markers
        self.session, self.session_key = session, key
        self.preset, self.preset_reason = session.preset_choice.name, session.preset_choice.reason

    def forget_session(self) -> None:
        """After a failed engine call: the next call rebuilds the session from the markers."""
        self.session, self.session_key, self.sent = None, None, []

    def restore_layers(self) -> None:
        """Put the output and prompt layers back into the viewer if the user deleted them."""
        present = {layer.unique_id for layer in self.viewer.layers}
        for layer in (self.labels, *self.prompts.layers):
            if layer is not None and layer.unique_id not in present:
                self.viewer.add_layer(layer)

    # --- undo / redo ------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The state a change is about to replace (push it with ``history.push`` once it happened)."""
        labels = np.zeros(self.volume.shape, np.int32) if self.labels is None else np.asarray(self.labels.data)
        return Snapshot.take(labels, self.committed, self.markers(), self.objects)

    def restore(self, snapshot: Snapshot) -> None:
        """Put back labels, accepted objects, objects and markers; the session follows on the next call."""
        self.ensure_labels().data[...] = snapshot.labels_array()
        self.labels.refresh()
        self.committed = snapshot.committed_array()
        self.accepted = set() if self.committed is None else {int(v) for v in np.unique(self.committed) if v}
        self.objects = dict(snapshot.objects)
        markers = list(snapshot.markers)
        self.mask_markers = [m for m in markers if m.mask is not None]
        self.prompts.set_markers([m for m in markers if m.mask is None])
        self._update_names()

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
                f"labels layer {layer.name!r} belongs to another image "
                f"({self.volume.geometry.describe_difference(drawn_on.geometry)}); "
                "pick a labels layer of this image or '(new layer)'"
            )
        layer.metadata.setdefault(VOLUME_KEY, self.volume)
        self.labels = layer

    def ensure_labels(self) -> Any:
        """The output layer, made (empty, on the image's grid) on first use."""
        if self.labels is None:
            self.labels = self.new_labels_layer()
        return self.labels

    def current_slice(self) -> int:
        """The slice index of the image that the viewer shows (in 2D)."""
        z = self.image.world_to_data(self.viewer.dims.point)[0]
        return int(min(max(round(z), 0), self.volume.shape[0] - 1))

    def paint_slices(self, slices: dict[int, np.ndarray], result: LabelVolume | None = None) -> None:
        """Write label slices into the output layer (accepted objects stay on top).

        In 2D the layer is redrawn only when the slice on screen is among them: napari reads
        the others from the array when the user scrolls there, and every redraw costs the
        running engine the GIL (see ``_tasks``).
        """
        data = self.ensure_labels().data
        for z, label_slice in slices.items():
            data[z] = (label_slice if self.committed is None
                       else np.where(self.committed[z] > 0, self.committed[z], label_slice))
        if result is not None:
            self._set_result(result)
        if self.viewer.dims.ndisplay == 3 or self.current_slice() in slices:
            self.labels.refresh()

    def show_result(self, result: LabelVolume) -> None:
        """Replace the output layer's voxels by a propagation result (accepted objects stay on top)."""
        array = result.array if self.committed is None else np.where(self.committed > 0, self.committed, result.array)
        layer = self.ensure_labels()
        if layer.data.dtype == array.dtype:
            layer.data[...] = array  # in place: no new layer data, no colormap or history reset
            layer.refresh()
        else:
            layer.data = array
        self._set_result(result)

    def result(self) -> LabelVolume | None:
        return None if self.labels is None else self.labels.metadata.get(LABELS_KEY)

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
        layer = self.viewer.add_labels(data, **kwargs)
        if self.prompts.layers:
            self.viewer.layers.selection.active = self.prompts.layers[0]  # clicks keep going to the prompts
        self.prompts.recolour()
        return layer

