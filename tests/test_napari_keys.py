"""medseg's keys and prompts as a user meets them: real key presses with every napari layer type
active, the keyboard focus in the dock, and the sequence that used to add a stray box.

The model is the untrained SAM2.1 Hiera-T at 128 px: its masks are meaningless, so the tests
check which prompts reach SAM2, which layer a key acts on, and what is refused.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QWidget

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from napari_helpers import SHIFT, canvas_click, canvas_drag, click, key, liver_centre, open_panel, wait
from napari_plugin._keys import SHORTCUTS, bind_shortcuts

pytestmark = pytest.mark.napari

LAYER_TYPES = ("Image", "Labels", "Points", "Shapes", "Surface", "Vectors", "Tracks")


def _qt_key(text: str) -> tuple[int, Qt.KeyboardModifier]:
    """``"Shift-G"`` -> (Qt.Key.Key_G, Shift)."""
    *mods, name = text.split("-")
    modifier = SHIFT if mods == ["Shift"] else Qt.KeyboardModifier.NoModifier
    return getattr(Qt.Key, f"Key_{name}"), modifier


def test_no_medseg_key_is_bound_by_napari(make_napari_viewer):
    from napari._app_model import get_app_model
    from napari.components import ViewerModel
    from napari.layers import Image, Labels, Points, Shapes, Surface, Tracks, Vectors
    from napari.utils.key_bindings import coerce_keybinding
    from napari.utils.shortcuts import default_shortcuts

    make_napari_viewer()  # napari binds its actions' keys to the layer classes when a viewer is made
    bound = {}
    for cls in (Image, Labels, Points, Shapes, Surface, Vectors, Tracks, ViewerModel):
        for kb in cls.class_keymap:
            bound.setdefault(coerce_keybinding(kb), set()).add(cls.__name__)
    for action, keys in default_shortcuts.items():
        for kb in keys:
            bound.setdefault(coerce_keybinding(kb), set()).add(action)
    for kb in get_app_model().keybindings:
        bound.setdefault(coerce_keybinding(kb.keybinding), set()).add(kb.command_id)
    assert coerce_keybinding("A") in bound and coerce_keybinding("Escape") in bound  # what the check sees

    clashes = {s.key: bound[coerce_keybinding(s.key)] for s in SHORTCUTS if coerce_keybinding(s.key) in bound}
    assert clashes == {}


def _state(layer) -> tuple:
    """What a layer action would change: its mode, selection, data size, visibility."""
    data = layer.data
    size = tuple(np.shape(d) for d in data) if isinstance(data, tuple) else np.shape(data)
    if layer._type_string == "shapes":
        size = (len(data), layer._fixed_aspect)
    return (getattr(layer, "mode", None), tuple(sorted(getattr(layer, "selected_data", ()))), size, layer.visible,
            float(np.asarray(data).sum()) if layer._type_string == "labels" else 0.0)


def test_every_key_reaches_medseg_whatever_layer_is_active(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    dock = QWidget()
    viewer.window.add_dock_widget(dock, name="keys")
    calls = []
    bind_shortcuts(viewer, dock, {s.action: (lambda a=s.action: calls.append(a)) for s in SHORTCUTS})
    layers = {
        "Image": viewer.add_image(np.random.default_rng(0).normal(size=(6, 32, 32)).astype(np.float32)),
        "Labels": viewer.add_labels(np.ones((6, 32, 32), np.int32)),
        "Points": viewer.add_points([[2, 10, 10], [2, 20, 20]]),
        "Shapes": viewer.add_shapes([np.array([[2, 5, 5], [2, 5, 15], [2, 15, 15], [2, 15, 5]])]),
        "Surface": viewer.add_surface((np.array([[0, 0, 0], [0, 20, 0], [5, 0, 20]], float), np.array([[0, 1, 2]]))),
        "Vectors": viewer.add_vectors(np.array([[[2, 10, 10], [0, 3, 3]]], float)),
        "Tracks": viewer.add_tracks(np.array([[0, 0, 2, 5, 5], [0, 1, 2, 8, 8]], float)),
    }
    assert sorted(type(layer).__name__ for layer in layers.values()) == sorted(LAYER_TYPES)
    layers["Points"].mode = "add"
    layers["Shapes"].mode = "add_rectangle"
    layers["Labels"].mode = "paint"

    missed = []
    for name, layer in layers.items():
        viewer.layers.selection.active = layer
        for shortcut in SHORTCUTS:
            before, calls[:] = _state(layer), []
            key(qtbot, viewer, *_qt_key(shortcut.key))
            if calls != [shortcut.action] or _state(layer) != before or viewer.layers.selection.active is not layer:
                missed.append((name, shortcut.key, list(calls), _state(layer) == before))
    assert missed == []


def test_keys_work_with_the_focus_in_the_dock_and_never_edit_a_name(make_napari_viewer, qtbot, phantom_file):
    path, _ = phantom_file
    viewer = make_napari_viewer(show=True)
    image, _, panel = open_panel(viewer, path)
    table = panel.objects.table
    viewer.window._qt_window.activateWindow()
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(table.item(0, 1)).center())
    qtbot.waitUntil(table.hasFocus)  # where a click on an object's row leaves the keyboard

    qtbot.keyClick(table, Qt.Key.Key_D, SHIFT)  # the points layer, add mode
    assert viewer.layers.selection.active.unique_id == panel.workspace.prompts.points.unique_id
    assert panel.workspace.prompts.points.mode == "add"
    qtbot.keyClick(table, Qt.Key.Key_T, SHIFT)
    assert panel.tools.negative.isChecked()
    qtbot.keyClick(table, Qt.Key.Key_N)  # a letter: a key of the panel, not the start of a new name
    assert table.state() != table.State.EditingState and table.item(0, 1).text() == "object 1"


def test_the_reported_sequence_adds_a_point_to_object_1_and_no_box(make_napari_viewer, qtbot, phantom_file):
    """Click the liver, propagate, + object, box the spleen, propagate, pick object 1, Shift-D and shift-click
    a false positive: the point goes to object 1 and no zero-size box is made (the box layer used to stay active)."""
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    image, _, panel = open_panel(viewer, path)
    ws = panel.workspace
    z, y, x = liver_centre(truth)
    key(qtbot, viewer, Qt.Key.Key_D, SHIFT)
    canvas_click(qtbot, viewer, image, (z, y, x))
    key(qtbot, viewer, Qt.Key.Key_G, SHIFT)
    wait(qtbot, panel)

    click(qtbot, panel.objects.add)
    key(qtbot, viewer, Qt.Key.Key_B, SHIFT)
    spleen = np.argwhere(truth.array[z] == 2)
    (y0, x0), (y1, x1) = spleen.min(axis=0), spleen.max(axis=0)
    canvas_drag(qtbot, viewer, image, (z, y0, x0), (z, y1, x1))
    click(qtbot, panel.propagate)
    wait(qtbot, panel)

    table = panel.objects.table
    viewer.window._qt_window.activateWindow()
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualItemRect(table.item(0, 0)).center())
    qtbot.waitUntil(table.hasFocus)
    qtbot.keyClick(table, Qt.Key.Key_D, SHIFT)  # the focus is in the table after picking the object
    assert viewer.layers.selection.active.unique_id == ws.prompts.points.unique_id
    canvas_click(qtbot, viewer, image, (z + 2, y1, x1), SHIFT)  # a background click on another slice

    [box] = [m for m in ws.markers() if m.box is not None]
    assert box.obj_id == 2 and box.box[2] - box.box[0] >= 1 and box.box[3] - box.box[1] >= 1
    points = [m for m in ws.markers() if m.point is not None]
    assert [(m.obj_id, m.z, m.positive) for m in points] == [(1, z, True), (1, z + 2, False)]
    key(qtbot, viewer, Qt.Key.Key_G, SHIFT)
    wait(qtbot, panel)
    prompts = ws.session.prompts.objects
    assert [len(prompts[1].points), len(prompts[1].boxes), len(prompts[2].boxes)] == [2, 0, 1]


def test_a_box_without_area_and_a_background_only_object_are_refused(make_napari_viewer, qtbot, phantom_file):
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    image, _, panel = open_panel(viewer, path)
    ws = panel.workspace
    z, y, x = liver_centre(truth)
    key(qtbot, viewer, Qt.Key.Key_B, SHIFT)
    canvas_click(qtbot, viewer, image, (z, y, x))  # a click in rectangle mode: a box of no size
    assert len(ws.prompts.boxes.data) == 1

    key(qtbot, viewer, Qt.Key.Key_G)
    assert panel.task is None  # nothing ran
    assert "Removed 1 box(es) without area (object 1 on slice" in panel.status.text()
    assert len(ws.prompts.boxes.data) == 0 and ws.markers() == []

    key(qtbot, viewer, Qt.Key.Key_D, SHIFT)
    canvas_click(qtbot, viewer, image, (z, y, x), SHIFT)  # only a background point
    key(qtbot, viewer, Qt.Key.Key_G, SHIFT)
    assert panel.task is None
    assert "object 1 has only background (negative) prompts" in panel.status.text()
