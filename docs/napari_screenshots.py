"""Refresh the README's napari pictures: docs/napari.png, click -> propagate -> correct, a coronal scribble, the cohort.

Run under a 1600 x 1000 display (``make napari-screenshots``, or
``xvfb-run -a -s "-screen 0 1600x1000x24" python docs/napari_screenshots.py``). The model is
the one that ships with medseg, ``medseg-micro`` (no download; pretrained on synthetic scenes,
never on these phantoms): the prompted slices are exact (painted mask prompts), the rest is
its propagation, and the correction clicks where its liver is most wrong on another slice.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt

import napari_plugin  # noqa: F401  (triton beside Mesa, before torch)

DOCS = Path(__file__).resolve().parent
WIDTH = 1400  # pictures are scaled to this width (small files, readable text)


def _spin(until) -> None:
    from qtpy.QtWidgets import QApplication

    while not until():
        QApplication.processEvents()
        time.sleep(0.01)


def _shot(viewer, name: str) -> None:
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for widget in QApplication.allWidgets():  # toasts of earlier steps (the panel's status says it all)
        if type(widget).__name__ == "NapariQtNotification":
            widget.close()
    for _ in range(5):
        QApplication.processEvents()
    array = viewer.screenshot(canvas_only=False, flash=False)
    picture = Image.fromarray(array[..., :3])
    picture = picture.resize((WIDTH, round(picture.height * WIDTH / picture.width)), Image.LANCZOS)
    picture.save(DOCS / name, optimize=True)
    print(f"wrote {DOCS / name} ({(DOCS / name).stat().st_size // 1024} KiB)")


def main() -> None:
    import napari

    viewer = napari.Viewer()
    viewer.window.set_geometry(0, 0, 1600, 1000)
    image, truth = viewer.open_sample("medseg", "phantom")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice("medseg-micro")
    ws = panel.workspace
    z = int((truth.data == 1).sum(axis=(1, 2)).argmax())
    viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
    truth.visible = False

    # 1. click: one painted slice per organ as mask prompts, a point on the liver
    names = truth.metadata["medseg_labels"].label_names
    panel.tools.mask_prompt.click()  # opens the labels layer for painting
    for value, name in names.items():
        if value > 1:
            panel.objects.add.click()
        panel.objects.table.item(value - 1, 1).setText(name)
        ws.labels.data[z][truth.data[z] == value] = value  # what the labels brush does
        ws.labels.refresh()
        panel.tools.mask_prompt.click()
    panel.select_object(1)
    panel.tools.place_points()
    y, x = np.argwhere(truth.data[z] == 1).mean(axis=0)
    ws.prompts.points.add([z, y, x])
    _shot(viewer, "napari_1_click.png")

    # 2. propagate
    panel.propagate.click()
    _spin(lambda: panel.task.finished)
    _shot(viewer, "napari_2_propagate.png")
    _shot(viewer, "napari.png")

    # 3. correct: a click on another slice where the liver is most wrong (negative on a false positive,
    # positive on a miss), propagate again
    z2 = min(z + 6, image.data.shape[0] - 1)
    viewer.dims.set_point(0, image.data_to_world((z2, 0, 0))[0])
    predicted, true = ws.labels.data[z2] == 1, truth.data[z2] == 1
    extra, missed = predicted & ~true, true & ~predicted
    wrong = extra if extra.sum() >= missed.sum() else missed
    ws.prompts.set_negative(wrong is extra)
    depth = distance_transform_edt(wrong)
    ws.prompts.points.add([z2, *np.unravel_index(depth.argmax(), depth.shape)])
    panel.propagate.click()
    _spin(lambda: panel.task.finished)
    _shot(viewer, "napari_3_correct.png")

    # 4. a scribble on the spleen drawn in a coronal view (Ctrl-T): a prompt on every slice it crosses
    panel.select_object(2)
    panel.tools.draw_scribble()
    scribbles = ws.prompts.scribbles
    spleen = np.argwhere(truth.data == 2)
    y = int(np.median(spleen[:, 1]))
    rows = spleen[spleen[:, 1] == y]
    x = int(np.median(rows[:, 2]))
    viewer.dims.order = (1, 0, 2)  # coronal: rows are slices z, columns x
    viewer.dims.set_point(1, image.data_to_world((0, y, 0))[1])
    with scribbles.block_history():  # one stroke, as a drag with the brush makes
        for zz in range(rows[:, 0].min(), rows[:, 0].max() + 1):
            scribbles.paint((zz, y, x), 1)
    panel.propagate.click()
    _spin(lambda: panel.task.finished)
    _shot(viewer, "napari_4_coronal_scribble.png")
    viewer.dims.order = (0, 1, 2)

    # 5. the Cohort tab: the demo cohort case by case (needs its files: ``medseg demo-data data_manifests``)
    manifest = Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS.parent / "data_manifests" / "demo.json"
    if (manifest.parent / "demo").is_dir():
        widget.tabs.setCurrentIndex(1)
        widget.cohort.source.setText(str(manifest))
        widget.cohort.output.setText(str(Path(tempfile.mkdtemp()) / "annotations"))
        widget.cohort.open_cohort()
        _shot(viewer, "napari_5_cohort.png")
    else:
        print(f"no demo data beside {manifest}: napari_5_cohort.png not refreshed")
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
