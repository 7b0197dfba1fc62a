"""What the napari tests do as a user does: open a file, dock medseg, press keys and click or drag on the canvas.

Mouse events go to the canvas pixel that shows a voxel in whatever view the viewer has (axial,
or coronal and sagittal after napari's Ctrl-T / Ctrl-E), so a test says which voxel it clicks.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

from medseg.phantom import make_phantom

WORKER_TIMEOUT_MS = 1_800_000  # a shared machine may be very slow: generous, never a timing assertion
NO_KEY = Qt.KeyboardModifier.NoModifier
SHIFT = Qt.KeyboardModifier.ShiftModifier


def write_phantom(path: Path, seed: int = 0, shape: tuple[int, int, int] = (12, 64, 64)):
    """A CT phantom written as NIfTI; returns its truth ``LabelVolume`` (1 liver, 2 spleen, 3 kidneys)."""
    volume, truth = make_phantom(seed, shape=shape)
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine), path)
    return truth


def open_panel(viewer, path):
    """File ▸ Open (medseg reader), Plugins ▸ medseg; the SAM2 panel set to the untrained model at 128 px."""
    [image] = viewer.open(str(path), plugin="medseg")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice("untrained", image_size=128)
    return image, widget, panel


def click(qtbot, button):
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def wait(qtbot, panel):
    assert panel.task is not None, "no task was started"
    qtbot.waitUntil(lambda: panel.task.finished, timeout=WORKER_TIMEOUT_MS)


def key(qtbot, viewer, key_code, modifier=NO_KEY):
    """A key press on the canvas, as napari receives it from the keyboard."""
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key_code, modifier)


def canvas_point(viewer, layer, zyx) -> QPoint:
    """The canvas pixel showing voxel ``zyx`` of ``layer``; the viewer moves to its slice first."""
    world = layer.data_to_world(zyx)
    rows, cols = viewer.dims.displayed[-2:]
    for axis in viewer.dims.not_displayed:
        viewer.dims.set_point(axis, world[axis])
    canvas = viewer.window._qt_viewer.canvas
    x, y = canvas.view.scene.transform.map([world[cols], world[rows]])[:2]
    return QPoint(round(x), round(y))


def canvas_click(qtbot, viewer, layer, zyx, modifier=NO_KEY):
    """A left click on the canvas pixel that shows voxel ``zyx`` of ``layer`` (2D view)."""
    qtbot.mouseClick(viewer.window._qt_viewer.canvas.native, Qt.MouseButton.LeftButton, modifier,
                     canvas_point(viewer, layer, zyx))


def canvas_drag(qtbot, viewer, layer, start_zyx, end_zyx, steps: int = 8):
    """Press on voxel ``start_zyx``, move with the button held to ``end_zyx``, release: a drag or a stroke.

    Each move goes to the pixel showing its point of the line at that moment, as a user's hand
    follows the image: napari may resize the canvas during a stroke (its layer controls change
    with the first brush paint), which moves every pixel computed before.
    """
    native = viewer.window._qt_viewer.canvas.native
    left = Qt.MouseButton.LeftButton
    qtbot.mousePress(native, left, NO_KEY, canvas_point(viewer, layer, start_zyx))
    start, end = np.asarray(start_zyx, float), np.asarray(end_zyx, float)
    for t in np.linspace(0, 1, steps + 1)[1:]:
        at = QPointF(canvas_point(viewer, layer, start + t * (end - start)))
        move = QMouseEvent(QEvent.Type.MouseMove, at, native.mapToGlobal(at), left, left, NO_KEY)
        QApplication.sendEvent(native, move)
        qtbot.wait(5)
    qtbot.mouseRelease(native, left, NO_KEY, canvas_point(viewer, layer, end_zyx))


def liver_centre(truth):
    liver = truth.array == 1
    z = int(liver.sum(axis=(1, 2)).argmax())
    y, x = np.argwhere(liver[z]).mean(axis=0).round()
    return z, int(y), int(x)
