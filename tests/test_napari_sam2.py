"""The SAM2 panel driven through its own controls, in a real napari viewer under Xvfb.

The model is the untrained SAM2.1 Hiera-T at 128 px: its masks are meaningless, so the
tests check mechanics and invariants (shapes, geometry, prompted slices, responsiveness).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from qtpy.QtCore import Qt, QTimer

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from medseg.phantom import make_phantom

pytestmark = pytest.mark.napari

ARTEFACTS = Path(__file__).resolve().parents[1] / "artefacts"
WORKER_TIMEOUT_MS = 120_000


@pytest.fixture
def phantom_file(tmp_path):
    volume, truth = make_phantom(0, shape=(12, 64, 64))
    path = tmp_path / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine), path)
    return path, truth


def _open_panel(viewer, path):
    [image] = viewer.open(str(path), plugin="medseg")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice("untrained", image_size=128)
    return image, widget, panel


def _click(qtbot, button):
    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _wait(qtbot, panel):
    qtbot.waitUntil(lambda: panel.task.finished, timeout=WORKER_TIMEOUT_MS)


def test_point_segment_propagate_save(make_napari_viewer, qtbot, phantom_file, tmp_path):
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    image, widget, panel = _open_panel(viewer, path)
    ws = panel.workspace
    liver = truth.array == 1
    z = int(liver.sum(axis=(1, 2)).argmax())
    y, x = np.argwhere(liver[z]).mean(axis=0).round()
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])

    ws.prompts.points.add([z, y, x])  # what a click in the points layer's add mode does
    _click(qtbot, panel.segment)
    _wait(qtbot, panel)

    labels = ws.labels
    assert labels.data.shape == image.data.shape
    result = labels.metadata["medseg_labels"]
    assert result.untrained and result.label_names == {1: "object 1"}
    assert [m.uid for m in ws.sent] == [0]

    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(not panel.task.finished))
    timer.start(5)
    _click(qtbot, panel.propagate)
    assert not panel.task.finished and not panel.propagate.isEnabled()
    _wait(qtbot, panel)
    timer.stop()

    assert sum(ticks) >= 3, "the event loop must keep running while SAM2 propagates"
    assert panel.progress.value() == panel.progress.maximum() == image.data.shape[0]
    result = labels.metadata["medseg_labels"]
    np.testing.assert_array_equal(labels.data, result.array)
    assert result.geometry.same_grid(image.metadata["medseg_volume"].geometry)
    assert "UNTRAINED" in panel.status.text()

    out = tmp_path / "saved" / "labels.nii.gz"
    panel.save_path.setText(str(out))
    _click(qtbot, panel.save)
    saved = nib.load(out)
    np.testing.assert_allclose(saved.affine, nib.load(path).affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(saved.dataobj).transpose(2, 1, 0), labels.data)



def test_painted_mask_prompt_is_kept_exactly_and_undo_takes_prompts_back(make_napari_viewer, qtbot, phantom_file):
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    image, widget, panel = _open_panel(viewer, path)
    ws = panel.workspace
    z, z_box = 5, 8
    liver = truth.array[z] == 1
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    ws.labels.data[z][liver] = 1  # what the labels brush does
    ws.labels.refresh()

    _click(qtbot, panel.mask_prompt)
    _click(qtbot, panel.segment)
    _wait(qtbot, panel)
    np.testing.assert_array_equal(ws.labels.data[z] == 1, liver)

    _click(qtbot, panel.add_object)
    assert panel.current_object() == 2
    ws.prompts.boxes.add_rectangles(np.array([[z_box, 10, 12], [z_box, 10, 50], [z_box, 40, 50], [z_box, 40, 12]]))
    _click(qtbot, panel.propagate)
    _wait(qtbot, panel)

    result = ws.labels.metadata["medseg_labels"]
    np.testing.assert_array_equal(ws.labels.data[z] == 1, liver)  # a mask prompt is kept as painted
    assert set(result.label_names) == {1, 2}
    assert np.isfinite(result.slice_scores[1][z])
    assert [m.obj_id for m in ws.sent] == [1, 2]

    task = panel.task
    ws.prompts.points.add([3, 30, 30])
    _click(qtbot, panel.undo)  # a point not yet sent goes without any model work
    assert len(ws.prompts.points.data) == 0 and panel.task is task

    _click(qtbot, panel.undo)  # the box was sent: the session takes it back
    _wait(qtbot, panel)
    assert len(ws.prompts.boxes.data) == 0
    assert set(ws.session.prompts.objects) == {1}
    assert [m.obj_id for m in ws.sent] == [1]

    before = ws.labels.data.copy()
    _click(qtbot, panel.propagate)
    _click(qtbot, panel.cancel)  # stops before the first slice is written
    _wait(qtbot, panel)
    np.testing.assert_array_equal(ws.labels.data, before)
    assert "cancelled" in panel.status.text()


def _click_canvas(layer, world, modifiers=()):
    """Press and release the mouse at ``world`` (z, y, x) in the 2D view, through napari's callbacks."""
    from napari.utils._proxies import ReadOnlyWrapper
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    for kind in ("mouse_press", "mouse_release"):
        event = _MouseEvent(kind, modifiers=list(modifiers), position=tuple(world))
        (mouse_press_callbacks if kind == "mouse_press" else mouse_release_callbacks)(
            layer, ReadOnlyWrapper(event, exceptions=("handled",))
        )


@dataclass
class _MouseEvent:
    """What napari's layer mouse callbacks read from a vispy mouse event."""

    type: str
    modifiers: list
    position: tuple
    is_dragging: bool = False
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: None = None
    up_direction: None = None
    dims_displayed: list = field(default_factory=lambda: [1, 2])


def test_clicks_place_positive_and_shift_clicks_negative_points(make_napari_viewer, phantom_file):
    path, _ = phantom_file
    viewer = make_napari_viewer()
    image, _, panel = _open_panel(viewer, path)
    points = panel.workspace.prompts.points
    assert points.mode == "add"

    _click_canvas(points, image.data_to_world((4, 20, 30)))
    _click_canvas(points, image.data_to_world((4, 40, 30)), modifiers=["Shift"])
    panel.negative.setChecked(True)
    _click_canvas(points, image.data_to_world((4, 30, 10)))

    np.testing.assert_allclose(points.data, [(4, 20, 30), (4, 40, 30), (4, 30, 10)], atol=1e-6)
    assert list(points.features["positive"]) == [True, False, False]
    assert list(points.features["uid"]) == [0, 1, 2]
    assert [m.positive for m in panel.workspace.markers()] == [True, False, False]


def test_problems_are_viewer_messages(make_napari_viewer, qtbot, phantom_file, tmp_path):
    from napari.utils.notifications import notification_manager

    messages = []
    notification_manager.notification_ready.connect(lambda n: messages.append(str(n.message)))
    path, _ = phantom_file
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 48), np.float32), name="photo")

    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    assert any("'photo' has shape (32, 48)" in m and "3D" in m for m in messages)

    [image] = viewer.open(str(path), plugin="medseg")
    panel.image.set_layer(image)
    ws = panel.workspace
    other = viewer.add_labels(np.zeros((3, 4, 5), np.int32), name="other")
    panel.output.set_layer(other)
    assert any("labels layer 'other' has shape (3, 4, 5)" in m for m in messages)
    assert ws.labels.name == panel.output.currentText() == "phantom medseg"

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    panel.model.set_choice(str(bad))
    ws.prompts.points.add([4, 30, 30])
    _click(qtbot, panel.segment)
    _wait(qtbot, panel)
    assert any(m.startswith("Segment object: cannot read checkpoint") and str(bad) in m for m in messages)
    assert panel.segment.isEnabled() and ws.session is None


@pytest.mark.slow
def test_three_organs_from_painted_slices_and_the_docked_screenshot(make_napari_viewer, qtbot):
    """The demo phantom as a user opens it; one painted slice per organ; propagate; screenshot.

    ``artefacts/napari.png`` is the README's ``docs/napari.png`` (for that picture, run with
    ``-o xvfb_width=1600 -o xvfb_height=1000 -o xvfb_colordepth=24``).
    """
    viewer = make_napari_viewer(show=True)
    viewer.window.set_geometry(0, 0, 1500, 940)
    image, truth = viewer.open_sample("medseg", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice("untrained", image_size=128)
    ws = panel.workspace
    z = int((truth.data == 1).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    for value, name in truth.metadata["medseg_labels"].label_names.items():
        if value > 1:
            _click(qtbot, panel.add_object)
        panel.objects.item(value - 1, 1).setText(name)  # the user types the organ's name
        ws.labels.data[z][truth.data[z] == value] = value  # and paints it with the labels brush
        _click(qtbot, panel.mask_prompt)
    _click(qtbot, panel.propagate)
    _wait(qtbot, panel)

    result = ws.labels.metadata["medseg_labels"]
    np.testing.assert_array_equal(ws.labels.data[z], truth.data[z])  # three mask prompts, kept exactly
    assert result.label_names == {1: "liver", 2: "spleen", 3: "kidney"}
    assert list(ws.labels.features["name"]) == ["liver", "spleen", "kidney"]
    truth.visible = False
    viewer.layers.selection.active = ws.prompts.points
    ARTEFACTS.mkdir(exist_ok=True)
    shot = viewer.screenshot(path=str(ARTEFACTS / "napari.png"), canvas_only=False, flash=False)
    assert shot.shape[0] >= 600 and shot.shape[1] >= 1000
