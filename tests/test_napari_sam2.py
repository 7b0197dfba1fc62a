"""The SAM2 panel driven like a user drives it: real mouse clicks on the canvas, real key
presses, clicks on its buttons, in a real napari viewer under Xvfb.

The model is the untrained SAM2.1 Hiera-T at 128 px: its masks are meaningless, so the
tests check mechanics and invariants (what is shown when, what is kept, what is written).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from napari.utils import cancelable_progress
from qtpy.QtCore import Qt
from qtpy.QtGui import QMovie

import napari_plugin  # noqa: F401  (loads triton beside Mesa before any torch import)
from napari_helpers import SHIFT, canvas_click, click, key, liver_centre, open_panel, wait, write_phantom
from napari_plugin import _tasks
from medseg.sam2 import Sam2Session

pytestmark = pytest.mark.napari

def test_keys_and_clicks_segment_propagate_live_undo_redo(make_napari_viewer, qtbot, phantom_file, monkeypatch):
    monkeypatch.setattr(_tasks, "_REPAINT_S", 0.0)  # every slice repainted: "live" cannot depend on the machine's speed
    monkeypatch.setattr(_tasks, "_FEEDBACK_AFTER_MS", 0)  # shown from the start, however fast the call
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    image, _, panel = open_panel(viewer, path)
    ws = panel.workspace
    assert [layer._type_string for layer in viewer.layers] == ["image"]  # no empty helper layers
    assert viewer.layers.selection.active is image  # so napari's New Labels fits the image (see below)

    z, y, x = liver_centre(truth)
    key(qtbot, viewer, Qt.Key.Key_D, SHIFT)  # place points
    assert viewer.layers.selection.active.name == ws.prompts.points.name
    canvas_click(qtbot, viewer, image, (z, y, x))
    np.testing.assert_allclose(ws.prompts.points.data, [(z, y, x)], atol=1.0)
    key(qtbot, viewer, Qt.Key.Key_G)  # segment object
    wait(qtbot, panel)
    result = ws.result()
    assert result.untrained and result.label_names == {1: "object 1"}
    assert [m.uid for m in ws.sent] == [0]
    assert "UNTRAINED" in panel.status.text()
    after_segment = ws.labels.data.copy()

    painted = []  # (task finished?, slices) for every live repaint
    paint = ws.paint_slices
    ws.paint_slices = lambda slices, result=None: (painted.append((panel.task.finished, set(slices))),
                                                   paint(slices, result))
    key(qtbot, viewer, Qt.Key.Key_G, SHIFT)  # propagate
    assert not panel.task.finished and not panel.propagate.isEnabled()  # the call returned at once: the UI is free
    spinner = viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator
    assert spinner.movie().state() != QMovie.MovieState.Running  # see test_activity_spinner_is_still
    wait(qtbot, panel)

    live = set().union(*(s for done, s in painted if not done))
    assert len(live) >= image.data.shape[0] // 2, "slices are shown while propagation runs, not at its end"
    assert set().union(*(s for _, s in painted)) == set(range(image.data.shape[0]))
    assert panel.progress.value() == panel.progress.maximum() == image.data.shape[0]
    assert "12 / 12" in panel.progress.format()
    result = ws.result()
    np.testing.assert_array_equal(ws.labels.data, result.array)
    assert result.geometry.same_grid(image.metadata["medseg_volume"].geometry)
    assert "UNTRAINED" in panel.status.text()
    propagated = ws.labels.data.copy()

    key(qtbot, viewer, Qt.Key.Key_U)  # undo: the whole earlier result, every slice
    np.testing.assert_array_equal(ws.labels.data, after_segment)
    assert len(ws.prompts.points.data) == 1
    key(qtbot, viewer, Qt.Key.Key_U, SHIFT)  # redo
    np.testing.assert_array_equal(ws.labels.data, propagated)
    key(qtbot, viewer, Qt.Key.Key_U)
    key(qtbot, viewer, Qt.Key.Key_U)  # back to before the first segmentation: the point placed, no labels
    assert not ws.labels.data.any() and len(ws.prompts.points.data) == 1
    ws.prompts.points.selected_data = {0}
    ws.prompts.points.remove_selected()  # the user deletes the point by hand
    assert len(ws.prompts.points.data) == 0
    plan = ws.plan(ws.session_key)
    assert (plan.rebuild, plan.markers, plan.undo) == (False, [], 1)  # SAM2 takes its prompt back next call
    assert ws.history.nbytes < ws.labels.data.nbytes / 10  # snapshots are compressed

    viewer.layers.selection.active = image
    viewer.window._qt_viewer.layerButtons.newLabelsButton.click()
    assert viewer.layers[-1].data.shape == image.data.shape


def test_activity_spinner_is_still(make_napari_viewer):
    """napari animates its "in progress" spinner while a progress bar exists; each frame
    repaints the window holding the GIL (see ``_tasks``), so medseg's tasks still it."""
    viewer = make_napari_viewer(show=True)
    spinner = viewer.window._qt_window._activity_dialog._toggleButton._inProgressIndicator
    bar = cancelable_progress(total=3, desc="test")
    assert spinner.movie().state() == QMovie.MovieState.Running  # napari's behaviour: if this changes, revisit _tasks
    _tasks._pause_activity_spinner()
    assert spinner.movie().state() == QMovie.MovieState.Paused
    bar.close()


def test_shift_click_and_shift_t_place_negative_points(make_napari_viewer, qtbot, phantom_file):
    path, _ = phantom_file
    viewer = make_napari_viewer(show=True)
    image, _, panel = open_panel(viewer, path)
    points = panel.workspace.prompts.points
    key(qtbot, viewer, Qt.Key.Key_D, SHIFT)

    canvas_click(qtbot, viewer, image, (4, 20, 30))
    canvas_click(qtbot, viewer, image, (4, 40, 30), SHIFT)
    key(qtbot, viewer, Qt.Key.Key_T, SHIFT)  # negative points from now on
    canvas_click(qtbot, viewer, image, (4, 30, 10))

    assert panel.tools.negative.isChecked()
    np.testing.assert_allclose(points.data, [(4, 20, 30), (4, 40, 30), (4, 30, 10)], atol=1.0)
    assert list(points.features["positive"]) == [True, False, False]
    assert [m.positive for m in panel.workspace.markers()] == [True, False, False]


def test_mask_prompt_accept_clear_and_cancel(make_napari_viewer, qtbot, phantom_file):
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    image, _, panel = open_panel(viewer, path)
    ws = panel.workspace
    z = 5
    liver = truth.array[z] == 1
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])

    click(qtbot, panel.tools.mask_prompt)  # nothing painted yet: the labels layer opens for painting
    assert ws.labels is not None and ws.labels.mode == "paint" and ws.mask_markers == []
    ws.labels.data[z][liver] = 1  # what the labels brush does
    ws.labels.refresh()
    click(qtbot, panel.tools.mask_prompt)
    click(qtbot, panel.segment)
    wait(qtbot, panel)
    np.testing.assert_array_equal(ws.labels.data[z] == 1, liver)  # a mask prompt is kept exactly

    key(qtbot, viewer, Qt.Key.Key_C, SHIFT)  # accept object 1: SAM2 moves on to object 2
    assert ws.accepted == {1} and panel.current_object() == 2
    assert ws.session.prompts.objects == {} and ws.sent == []
    assert panel.objects.table.item(0, 0).text() == "1 ✓"

    ws.prompts.points.add([z, 30, 30])  # object 2, overlapping the liver
    click(qtbot, panel.propagate)
    wait(qtbot, panel)
    np.testing.assert_array_equal(ws.labels.data[ws.committed > 0], 1)  # accepted voxels stay
    assert set(ws.session.prompts.objects) == {2}

    before = ws.labels.data.copy()
    key(qtbot, viewer, Qt.Key.Key_D, SHIFT)  # the prompts layer
    click(qtbot, panel.propagate)
    key(qtbot, viewer, Qt.Key.Key_Escape, SHIFT)  # cancel: stops between slices
    wait(qtbot, panel)
    np.testing.assert_array_equal(ws.labels.data, before)  # slices shown live are taken back too
    assert "cancelled" in panel.status.text()

    key(qtbot, viewer, Qt.Key.Key_X, SHIFT)  # clear object 2's prompts and mask
    assert not (ws.labels.data == 2).any() and len(ws.prompts.points.data) == 0
    np.testing.assert_array_equal(ws.labels.data[z] == 1, liver)
    key(qtbot, viewer, Qt.Key.Key_U)
    assert len(ws.prompts.points.data) == 1


def test_save_is_per_image_asks_before_overwriting_and_refuses_inputs(make_napari_viewer, qtbot, tmp_path, unmodified):
    path_a, path_b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    write_phantom(path_a, 0), write_phantom(path_b, 1)
    viewer = make_napari_viewer(show=True)
    image_a, _, panel = open_panel(viewer, path_a)
    [image_b] = viewer.open(str(path_b), plugin="medseg")
    panel.data.image.set_layer(image_a)
    assert panel.save_row.path.text() == str(tmp_path / "a_medseg.nii.gz")
    click(qtbot, panel.tools.mask_prompt)  # makes the labels layer
    panel.workspace.labels.data[3, 10:20, 10:20] = 1
    click(qtbot, panel.save_row.save)
    saved_a = (tmp_path / "a_medseg.nii.gz").read_bytes()

    panel.data.image.set_layer(image_b)
    assert panel.save_row.path.text() == str(tmp_path / "b_medseg.nii.gz")
    click(qtbot, panel.tools.mask_prompt)
    panel.workspace.labels.data[3, 30:40, 30:40] = 2
    click(qtbot, panel.save_row.save)
    assert (tmp_path / "a_medseg.nii.gz").read_bytes() == saved_a  # B never overwrote A

    asked = []
    panel.save_row.ask_overwrite = lambda path: asked.append(path) or False
    panel.workspace.labels.data[3] = 0
    click(qtbot, panel.save_row.save)
    assert asked == [tmp_path / "b_medseg.nii.gz"]
    assert np.asarray(nib.load(tmp_path / "b_medseg.nii.gz").dataobj).any()  # declined: unchanged
    panel.save_row.ask_overwrite = lambda path: True
    click(qtbot, panel.save_row.save)
    assert not np.asarray(nib.load(tmp_path / "b_medseg.nii.gz").dataobj).any()

    with unmodified(path_a):
        panel.save_row.path.setText(str(path_a))  # an input
        click(qtbot, panel.save_row.save)
    assert f"is the input {path_a}" in panel.status.text()


def test_failed_model_load_says_why_in_full_and_resets(make_napari_viewer, qtbot, phantom_file, tmp_path):
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
    panel.data.image.set_layer(image)
    ws = panel.workspace
    other = viewer.add_labels(np.zeros((3, 4, 5), np.int32), name="other")
    panel.data.output.set_layer(other)
    assert any("labels layer 'other' has shape (3, 4, 5)" in m for m in messages)

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    panel.model.set_choice(str(bad))
    ws.prompts.points.add([4, 30, 30])
    click(qtbot, panel.segment)
    assert "loading" in panel.status.text()
    wait(qtbot, panel)
    status = panel.status.text()
    assert status.startswith("Segment object: cannot read") and str(bad) in status
    assert "once per napari session" not in status  # the "loading…" line is gone
    assert panel.segment.isEnabled() and ws.session is None


def test_image_change_resets_stale_controls_and_picks_a_preset(make_napari_viewer, qtbot, phantom_file, tmp_path):
    path, _ = phantom_file
    viewer = make_napari_viewer()
    image, _, panel = open_panel(viewer, path)
    assert image.metadata["medseg_volume"].modality == "OT"  # NIfTI does not say CT...
    assert panel.data.preset.currentText() == "ct-soft-tissue"  # ...but its HU-like values do
    np.testing.assert_allclose(image.contrast_limits, (-160, 240))
    assert "HU-like" in panel.data.preset_note.text()
    panel.correct_next.setEnabled(True)
    panel.progress.setRange(0, 12)
    panel.progress.setValue(12)

    mri = viewer.add_image(np.random.default_rng(0).uniform(0, 900, (6, 32, 32)).astype(np.float32), name="mri")
    panel.data.image.set_layer(mri)
    assert not panel.correct_next.isEnabled() and panel.progress.value() == 0
    assert panel.data.preset.currentText() == "mri"
    panel.data.image.set_layer(image)
    assert panel.data.preset.currentText() == "ct-soft-tissue"


@pytest.mark.skipif(not hasattr(Sam2Session, "precompute"),
                    reason="Sam2Session.precompute (engineer A's embedding store) is not merged yet")
def test_precompute_embeddings_button(make_napari_viewer, qtbot, phantom_file):
    path, _ = phantom_file
    viewer = make_napari_viewer()
    image, _, panel = open_panel(viewer, path)
    click(qtbot, panel.precompute)
    wait(qtbot, panel)
    assert panel.progress.value() == panel.progress.maximum() > 0
    assert panel.workspace.session is not None
    assert "ready" in panel.status.text()


def test_eta_counts_from_the_first_report_of_a_phase():
    """Model loading before the first slice does not inflate the estimate; a steady pace gives a steady,
    falling estimate; a new phase starts afresh."""
    eta = _tasks.Eta()
    assert eta.update(1, 32, now=20.0) is None  # 20 s of loading and setup before the first slice
    left = [eta.update(done, 32, now=20.0 + 0.5 * (done - 1)) for done in range(2, 32)]
    np.testing.assert_allclose(left, [0.5 * (32 - done) for done in range(2, 32)])
    assert eta.update(33, 64, now=40.0) is None
    assert _tasks.progress_text("Propagate", 12, 32, phase="", left_s=9.6) == "Propagate: 12 / 32, about 10 s left"


def test_points_added_by_a_script_each_reach_sam2(make_napari_viewer, phantom_file):
    """napari gives the point it selects after ``add`` to the next one's defaults, uid included."""
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    _, _, panel = open_panel(viewer, path)
    ws = panel.workspace
    z, y, x = liver_centre(truth)
    for dy in (0, 0, 2):
        ws.prompts.points.add([z, y + dy, x])
    markers = ws.markers()
    assert len({m.uid for m in markers}) == 3
    assert len(ws.plan((panel.model.choice(), ws.chosen_preset)).markers) == 3


def test_a_short_call_repaints_its_controls_only_when_it_ends(make_napari_viewer, qtbot, phantom_file, monkeypatch):
    """Every repaint in napari's window holds up the worker (see ``_tasks``): during a call's first
    ``_FEEDBACK_AFTER_MS`` its controls change state (what guards a second start) without painting."""
    from qtpy.QtCore import QEvent, QObject

    monkeypatch.setattr(_tasks, "_FEEDBACK_AFTER_MS", 600_000)  # the call counts as short, however slow the machine
    path, truth = phantom_file
    viewer = make_napari_viewer(show=True)
    _, widget, panel = open_panel(viewer, path)
    panel.workspace.prompts.points.add(list(liver_centre(truth)))
    controls = panel.controls
    widget.tabs.widget(0).ensureWidgetVisible(controls.progress)
    painted = []  # (a task running?, widget) for each paint of the watched controls

    class Watch(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.Paint:
                painted.append((panel.task is not None and not panel.task.finished, obj))
            return False

    watch = Watch()
    watched = (controls.run, controls.cancel, controls.progress, panel.segment)
    for w in watched:
        w.installEventFilter(watch)
    controls.progress.update()
    qtbot.waitUntil(lambda: bool(painted), timeout=10_000)  # on screen: they do paint when asked

    seen = len(painted)
    key(qtbot, viewer, Qt.Key.Key_G)  # segment object
    assert not panel.segment.isEnabled() and controls.cancel.isEnabled()
    wait(qtbot, panel)
    assert not [w for running, w in painted if running]
    assert all(w.updatesEnabled() for w in watched)
    qtbot.waitUntil(lambda: len(painted) > seen, timeout=10_000)  # and the new state is shown once it ended
    assert panel.segment.isEnabled() and not controls.cancel.isEnabled()
