"""Prompts drawn in coronal and sagittal views, driven like a user: napari's own keys turn the view
(Ctrl-E rolls the axes, Ctrl-T transposes), medseg's keys pick the tool, and strokes and clicks
are real mouse events on the canvas.

The model is the untrained SAM2.1 Hiera-T at 128 px: its masks are meaningless, so the test
checks which prompts reach SAM2 and that the labels are the library's own result for those
prompts, propagated again after the correction.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from napari_helpers import SHIFT, canvas_click, canvas_drag, key, liver_centre, open_panel, wait

pytestmark = pytest.mark.napari

CTRL = Qt.KeyboardModifier.ControlModifier


def _scribbles(session, *, positive: bool) -> dict[int, set[tuple[int, int]]]:
    """The (y, x) voxels of the session's scribbles of one sign, by slice."""
    found: dict[int, set[tuple[int, int]]] = {}
    for s in session.prompts.objects[1].scribbles:
        if s.positive == positive:
            found.setdefault(s.z, set()).update(map(tuple, np.argwhere(s.mask).tolist()))
    return found


def test_a_coronal_stroke_propagates_and_a_sagittal_correction_propagates_again(make_napari_viewer, qtbot,
                                                                                 phantom_file):
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    image, _, panel = open_panel(viewer, path)
    ws = panel.workspace
    z, y, x = liver_centre(truth)
    nz = image.data.shape[0]

    key(qtbot, viewer, Qt.Key.Key_E, CTRL)  # roll: sagittal
    key(qtbot, viewer, Qt.Key.Key_E, CTRL)  # roll again, then transpose: coronal, slices as rows
    key(qtbot, viewer, Qt.Key.Key_T, CTRL)
    assert tuple(viewer.dims.order) == (1, 0, 2)

    key(qtbot, viewer, Qt.Key.Key_S, SHIFT)  # scribble
    assert viewer.layers.selection.active.unique_id == ws.prompts.scribbles.unique_id
    ws.prompts.scribbles.brush_size = 1
    canvas_drag(qtbot, viewer, image, (z - 2, y, x), (z + 2, y, x))  # across five acquired slices
    key(qtbot, viewer, Qt.Key.Key_G, SHIFT)  # propagate
    wait(qtbot, panel)
    assert panel.task.label == "Propagate" and panel.progress.value() == nz
    assert _scribbles(ws.session, positive=True) == {zz: {(y, x)} for zz in range(z - 2, z + 3)}
    first = ws.labels.data.copy()

    key(qtbot, viewer, Qt.Key.Key_E, CTRL)  # roll: sagittal (x on the slider; rows y, columns z)
    assert tuple(viewer.dims.order) == (2, 1, 0)
    key(qtbot, viewer, Qt.Key.Key_T, SHIFT)  # background from now on
    xs = x + 6
    canvas_drag(qtbot, viewer, image, (z - 1, y, xs), (z + 1, y, xs))  # a negative stroke over three slices
    key(qtbot, viewer, Qt.Key.Key_D, SHIFT)  # points; still negative
    canvas_click(qtbot, viewer, image, (z + 3, y, xs))
    plan = ws.plan(ws.session_key)
    assert (plan.rebuild, plan.kept, plan.undo, len(plan.markers)) == (False, 1, 0, 2)  # only the correction goes
    key(qtbot, viewer, Qt.Key.Key_G, SHIFT)  # propagate again
    wait(qtbot, panel)
    assert panel.task.label == "Propagate" and panel.progress.value() == nz
    assert _scribbles(ws.session, positive=False) == {zz: {(y, xs)} for zz in range(z - 1, z + 2)}
    [point] = ws.session.prompts.objects[1].points
    assert (point.z, round(point.y), round(point.x), point.positive) == (z + 3, y, xs, False)

    # The library, given the same prompts in the same order, gives what napari shows: the correction was
    # propagated through the whole volume, not only painted on its slices.
    lib = panel.runs.models.get(panel.model.choice()).session(ws.volume, preset=ws.preset)
    for zz in range(z - 2, z + 3):
        lib.add_scribble(1, zz, _mask(image, {(y, x)}))
    lib.propagate()
    np.testing.assert_array_equal(lib.result().array, first)
    for zz in range(z - 1, z + 2):
        lib.add_scribble(1, zz, _mask(image, {(y, xs)}), positive=False)
    lib.add_point(1, z + 3, point.y, point.x, positive=False)  # where the click landed, to the sub-voxel
    np.testing.assert_array_equal(lib.propagate().array, ws.labels.data)


def _mask(image, voxels: set[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(image.data.shape[1:], bool)
    for yx in voxels:
        mask[yx] = True
    return mask
