"""How the napari plugin feels: propagation in napari vs the library call, UI freezes, 3D, first click.

Run under a display (``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/napari_interaction.py``).
The model is the untrained SAM2.1 Hiera-T at a small input size: timing only, the masks are
meaningless. All numbers are medians of ``--repeats`` runs, interleaved (library, napari,
library, ...) so that load from other processes hits both alike; on a shared machine they are
noisy, the ratios less so.

Measured:

* ``propagate``: ``Sam2Session.propagate`` called directly (the library) vs the panel's
  Propagate button until its task has finished and the result is shown (napari), on the same
  volume, prompt and model; also napari with the live slice repaint switched off, to show
  what the live view costs.
* ``freeze``: the longest gap between ticks of a 20 ms QTimer on the UI thread while
  propagation runs, while scrolling through every slice, and while switching to 3D.
* ``3D``: switching to 3D and one camera move, plain napari (the image alone) vs the same
  image with the medseg panel open after a propagation.
* ``first click``: in a fresh process, from ``viewer.open(file)`` (File ▸ Open) until the
  panel is ready for the first click (imports included), and whether torch was imported by
  then; ``first result``: until the first Segment object (a click, then the button) has shown
  its mask: torch, sam2 and the model load in that task's worker.

Usage::

    python benchmarks/napari_interaction.py            # 32 x 128 x 128 phantom, image size 256
    python benchmarks/napari_interaction.py --quick    # 12 x 64 x 64, image size 128, 2 repeats
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import napari_plugin  # noqa: F401  (triton beside Mesa, before torch)


class FreezeMeter:
    """The longest gap between ticks of a fast QTimer: how long the UI thread was busy."""

    def __init__(self, interval_ms: int = 20) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))
        self.interval_ms = interval_ms

    def __enter__(self) -> FreezeMeter:
        self.ticks = [time.perf_counter()]
        self.timer.start(self.interval_ms)
        return self

    def __exit__(self, *_: object) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    @property
    def longest_s(self) -> float:
        return float(np.diff(self.ticks).max()) if len(self.ticks) > 1 else 0.0


def _spin(until) -> None:
    """Run the Qt event loop (idle between events, as napari's own) until ``until()`` is true.

    A busy ``processEvents`` loop would wake the UI thread every millisecond and take the GIL
    from the worker thread far more than napari ever does, slowing the engine it measures.
    """
    from qtpy.QtCore import QEventLoop, QTimer

    loop, check = QEventLoop(), QTimer()
    check.timeout.connect(lambda: until() and loop.quit())
    check.start(50)
    if not until():
        loop.exec()
    check.stop()


def _draw(viewer) -> None:
    """Paint the canvas now (what the user waits for)."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    viewer.window._qt_viewer.canvas.native.repaint()
    QApplication.processEvents()


def _write_case(folder: Path, shape: tuple[int, int, int]) -> tuple[Path, tuple[int, int, int]]:
    import nibabel as nib

    from medseg.phantom import make_phantom

    volume, truth = make_phantom(0, shape=shape)
    path = folder / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(volume.array.transpose(2, 1, 0), volume.affine), path)
    liver = truth.array == 1
    z = int(liver.sum(axis=(1, 2)).argmax())
    y, x = np.argwhere(liver[z]).mean(axis=0).round().astype(int)
    return path, (z, int(y), int(x))


def measure_propagation(path: Path, point: tuple[int, int, int], image_size: int, repeats: int) -> dict:
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.set_geometry(0, 0, 1600, 1000)
    [image] = viewer.open(str(path), plugin="medseg")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice("untrained", image_size=image_size)
    out = measure_scroll_and_3d(viewer, image, repeats, prefix="panel_open")
    ws = panel.workspace
    ws.prompts.points.add(list(point))
    panel.segment.click()  # loads the model, encodes the prompted slice
    _spin(lambda: panel.task.finished)
    session = ws.session

    def library() -> float:
        started = time.perf_counter()
        session.propagate()
        return time.perf_counter() - started

    def in_napari(live: bool) -> tuple[float, float]:
        paint = ws.paint_slices
        if not live:
            ws.paint_slices = lambda slices, result=None: None
        with FreezeMeter() as meter:
            started = time.perf_counter()
            panel.propagate.click()
            _spin(lambda: panel.task.finished)
            _draw(viewer)
            seconds = time.perf_counter() - started
        ws.paint_slices = paint
        return seconds, meter.longest_s

    library(), in_napari(True)  # warm-up
    lib, nap, nap_still, freeze = [], [], [], []
    for _ in range(repeats):
        lib.append(library())
        seconds, longest = in_napari(True)
        nap.append(seconds)
        freeze.append(longest)
        nap_still.append(in_napari(False)[0])
    out.update({
        "library_s": statistics.median(lib),
        "napari_s": statistics.median(nap),
        "napari_without_live_view_s": statistics.median(nap_still),
        "ratio": statistics.median(nap) / statistics.median(lib),
        "longest_freeze_during_propagation_s": statistics.median(freeze),
    })
    out.update(measure_scroll_and_3d(viewer, image, repeats, prefix="with_result"))
    viewer.close()
    return out


def measure_scroll_and_3d(viewer, image, repeats: int, *, prefix: str) -> dict:
    scroll, toggle, camera, freeze3d = [], [], [], []
    viewer.dims.ndisplay = 3  # warm-up: shaders of every layer type compiled once, as in a session
    _draw(viewer)
    viewer.dims.ndisplay = 2
    _draw(viewer)
    for _ in range(repeats):
        with FreezeMeter() as meter:
            for z in range(image.data.shape[0]):
                viewer.dims.set_point(0, image.data_to_world((z, 0, 0))[0])
                _draw(viewer)
        scroll.append(meter.longest_s)
        with FreezeMeter() as meter:
            started = time.perf_counter()
            viewer.dims.ndisplay = 3
            _draw(viewer)
            toggle.append(time.perf_counter() - started)
        freeze3d.append(meter.longest_s)
        started = time.perf_counter()
        viewer.scene.camera.angles = (10.0, 30.0, 60.0)
        _draw(viewer)
        camera.append(time.perf_counter() - started)
        viewer.dims.ndisplay = 2
        _draw(viewer)
    return {
        f"{prefix}_longest_freeze_scrolling_s": statistics.median(scroll),
        f"{prefix}_3d_toggle_s": statistics.median(toggle),
        f"{prefix}_3d_camera_move_s": statistics.median(camera),
        f"{prefix}_longest_freeze_3d_s": statistics.median(freeze3d),
    }


def measure_plain_napari(path: Path, repeats: int) -> dict:
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.set_geometry(0, 0, 1600, 1000)
    [image] = viewer.open(str(path), plugin="medseg")
    out = measure_scroll_and_3d(viewer, image, repeats, prefix="plain")
    viewer.close()
    return out


_FIRST_CLICK = r"""
import sys, time, json
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
QApplication.processEvents()
modules = set(sys.modules)
started = time.perf_counter()
[image] = viewer.open(sys.argv[1], plugin="medseg")
opened = time.perf_counter()
_, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
QApplication.processEvents()
assert widget.sam2.workspace is not None
ready = time.perf_counter()
torch_imported = "torch" in sys.modules
panel = widget.sam2
panel.model.set_choice("untrained", image_size=int(sys.argv[3]))
panel.workspace.prompts.points.add(json.loads(sys.argv[2]))
panel.segment.click()
while not panel.task.finished:
    QApplication.processEvents()
    time.sleep(0.005)
segmented = time.perf_counter()
print(json.dumps({"open_s": opened - started, "first_click_s": ready - started, "first_result_s": segmented - started,
                  "modules_imported": len(set(sys.modules) - modules), "torch_imported": torch_imported}))
"""


def measure_first_click(path: Path, point: tuple[int, int, int], image_size: int, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _FIRST_CLICK, str(path), json.dumps(list(point)), str(image_size)],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "first_open_s": statistics.median(r["open_s"] for r in runs),
        "time_to_first_click_s": statistics.median(r["first_click_s"] for r in runs),
        "time_to_first_result_s": statistics.median(r["first_result_s"] for r in runs),
        "torch_imported_before_first_click": runs[-1]["torch_imported"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small volume, 2 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    shape, image_size, repeats = ((12, 64, 64), 128, 2) if args.quick else ((32, 128, 128), 256, 3)
    repeats = args.repeats or repeats
    with tempfile.TemporaryDirectory() as folder:
        path, point = _write_case(Path(folder), shape)
        results = {"shape": shape, "image_size": image_size, "repeats": repeats}
        results.update(measure_first_click(path, point, image_size, repeats))
        results.update(measure_plain_napari(path, repeats))
        results.update(measure_propagation(path, point, image_size, repeats))
    for prefix in ("panel_open", "with_result"):
        results[f"{prefix}_3d_toggle_ratio_vs_plain"] = results[f"{prefix}_3d_toggle_s"] / results["plain_3d_toggle_s"]
        results[f"{prefix}_3d_camera_ratio_vs_plain"] = results[f"{prefix}_3d_camera_move_s"] / results["plain_3d_camera_move_s"]
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
