"""How the napari plugin feels: each call in napari vs the library call, UI freezes, live view, 3D, first click.

Run under a display (``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/napari_interaction.py``).
``--model`` is a registry name or a model directory (``medseg sam2 train --out``); the default
untrained SAM2.1 Hiera-T measures timing only (its masks are meaningless). All numbers are
medians of ``--repeats`` runs, interleaved (library, napari, library, ...) so that load from
other processes hits both alike; on a shared machine they are noisy, the ratios less so.

Measured:

* ``segment`` (a click, Segment object), ``propagate`` and ``repropagate`` (a correction click
  on another slice, Propagate): the library call on a session of its own (same model, volume,
  preset, prompts) vs the panel's button until its task has finished and the result is drawn;
  ``*_overhead_s`` is the difference (what napari adds per call).
* ``freeze``: the longest gap between ticks of a 20 ms QTimer on the UI thread during those
  calls, while scrolling through every slice, and while switching to 3D.
* ``live``: slices painted while a propagation runs, and the longest gap between paints;
  ``eta_texts``: what the progress bar said, in order.
* ``3D``: switching to 3D and one camera move in the medseg viewer (panel open; then with a
  propagation result) vs plain napari holding the same layers (``plain_same_layers``).
* ``first click``: in a fresh process, from ``viewer.open(file)`` (File ▸ Open) until the
  panel is ready for the first click (imports included), and whether torch was imported by
  then; ``first result``: until the first Segment object (a click, then the button) has shown
  its mask: torch, sam2 and the model load in that task's worker.

Usage::

    python benchmarks/napari_interaction.py                       # 32 x 128 x 128 phantom, untrained at 256
    python benchmarks/napari_interaction.py --model results/demo/sam2-model  # a trained model at its own size
    python benchmarks/napari_interaction.py --quick               # 12 x 64 x 64, image size 128, 2 repeats
    python benchmarks/napari_interaction.py --model medseg-micro --calls-only --no-first-click  # per-call overhead only
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


def _wait_task(panel) -> None:
    """Run the event loop until the panel's task has finished (its worker's ``finished`` signal, no polling)."""
    from qtpy.QtCore import QEventLoop

    if panel.task.finished:
        return
    loop = QEventLoop()
    panel.task.worker.finished.connect(loop.quit)
    if not panel.task.finished:
        loop.exec()


def _in_napari(viewer, panel, start) -> tuple[float, float]:
    """Seconds from ``start()`` (a button click) until the task's result is drawn, and the longest UI freeze.

    The result counts as drawn at the canvas's first draw after the task returned (the labels
    are updated then); only if there was none once the pending events are handled is the canvas
    painted here. (Forcing a repaint after every call, as ``_draw`` does, added a second window
    composition, 0.05-0.15 s, that a user never waits for.)
    """
    from qtpy.QtWidgets import QApplication

    scene = viewer.window._qt_viewer.canvas._scene_canvas
    draws: list[float] = []

    def drawn(_event) -> None:
        draws.append(time.perf_counter())

    scene.events.draw.connect(drawn)
    with FreezeMeter() as meter:
        started = time.perf_counter()
        start()
        returned: list[float] = []
        panel.task.worker.returned.connect(lambda *_: returned.append(time.perf_counter()))
        _wait_task(panel)
        QApplication.processEvents()
        if not any(t >= returned[0] for t in draws):
            _draw(viewer)
        seconds = time.perf_counter() - started
    scene.events.draw.disconnect(drawn)
    return seconds, meter.longest_s


def measure_calls(viewer, panel, point: tuple[int, int, int], repeats: int) -> dict:
    """Segment object, Propagate and Re-propagate (a correction on another slice), in napari and in the library.

    The library runs its own session (same model, volume, preset and prompts) so that neither
    side sees the other's prompts; each napari call is a button click until its result is drawn.
    """
    ws = panel.workspace
    z, y, x = point
    ws.prompts.points.add(list(point))
    panel.segment.click()  # loads the model, encodes the prompted slice
    _wait_task(panel)
    predictor = panel.runs.models.get(panel.model.choice())
    lib = predictor.session(ws.volume, preset=ws.preset)
    lib.add_point(1, z, y, x)
    nz = ws.volume.shape[0]
    live: list[tuple[float, int]] = []  # (when, slice) the live view painted a slice

    def library(kind: str, k: int) -> float:
        started = time.perf_counter()
        if kind == "segment":
            lib.add_point(1, z, y + k % 3, x + k % 3)
        elif kind == "repropagate":
            lib.add_point(1, (z + 3 + k) % nz, y, x, positive=False)
            lib.propagate()
        else:
            lib.propagate()
        return time.perf_counter() - started

    def napari(kind: str, k: int) -> tuple[float, float]:
        # the click's point is drawn when it is placed, before the button (not part of the call)
        if kind == "segment":
            ws.prompts.points.add([z, y + k % 3, x + k % 3])
            _draw(viewer)
            return _in_napari(viewer, panel, panel.segment.click)
        if kind == "repropagate":
            ws.prompts.points.add([(z + 3 + k) % nz, y, x])
            ws.prompts.points.features.loc[len(ws.prompts.points.data) - 1, "positive"] = False
            _draw(viewer)
        return _in_napari(viewer, panel, panel.propagate.click)

    out = {}
    for kind in ("segment", "propagate", "repropagate"):
        library(kind, 99), napari(kind, 99)  # warm-up: every slice encoded once on both sides
        lib_s, nap_s, freeze = [], [], []
        for k in range(repeats):
            lib_s.append(library(kind, k))
            seconds, longest = napari(kind, k)
            nap_s.append(seconds)
            freeze.append(longest)
        out.update({f"{kind}_library_s": statistics.median(lib_s), f"{kind}_napari_s": statistics.median(nap_s),
                    f"{kind}_ratio": statistics.median(nap_s) / statistics.median(lib_s),
                    f"{kind}_overhead_s": statistics.median(nap_s) - statistics.median(lib_s),
                    f"{kind}_longest_freeze_s": max(freeze)})

    paint = ws.paint_slices

    def recording(slices, result=None):
        live.extend((time.perf_counter(), z) for z in slices)
        paint(slices, result)

    ws.paint_slices = recording
    etas: list[str] = []
    panel.progress.valueChanged.connect(lambda _: etas.append(panel.progress.format()))
    started = time.perf_counter()
    panel.propagate.click()
    _wait_task(panel)
    ws.paint_slices = paint
    out["live_slices_painted_before_the_end"] = len({z for _, z in live})
    out["live_longest_gap_between_paints_s"] = float(np.diff([started] + [t for t, _ in live]).max()) if live else None
    out["eta_texts"] = etas
    return out


def measure_3d(viewer, image, repeats: int, *, prefix: str) -> dict:
    """3D toggle and one camera move, and the longest freeze meanwhile; scrolling through every slice."""
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


def measure_medseg(path: Path, point: tuple[int, int, int], model: str, image_size: int | None,
                   repeats: int, *, with_3d: bool = True) -> tuple[dict, list]:
    """The medseg viewer: calls, live view, 3D with the panel open and with a result; the layers it ends with."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.set_geometry(0, 0, 1600, 1000)
    [image] = viewer.open(str(path), plugin="medseg")
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel = widget.sam2
    panel.model.set_choice(model, image_size=image_size)
    out = measure_3d(viewer, image, repeats, prefix="panel_open") if with_3d else {}
    out.update(measure_calls(viewer, panel, point, repeats))
    if with_3d:
        out.update(measure_3d(viewer, image, repeats, prefix="with_result"))
    layers = [layer.as_layer_data_tuple() for layer in viewer.layers]
    viewer.close()
    return out, layers


def measure_plain_napari(layers: list, repeats: int) -> dict:
    """Plain napari (no plugin) with the same layers as the medseg viewer at its end."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.set_geometry(0, 0, 1600, 1000)
    for data, kwargs, kind in layers:
        kwargs = {k: v for k, v in kwargs.items() if k != "metadata"}
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    out = measure_3d(viewer, viewer.layers[0], repeats, prefix="plain_same_layers")
    out["layers"] = [kind for _, _, kind in layers]
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
panel.model.set_choice(sys.argv[3], image_size=int(sys.argv[4]) or None)
panel.workspace.prompts.points.add(json.loads(sys.argv[2]))
panel.segment.click()
while not panel.task.finished:
    QApplication.processEvents()
    time.sleep(0.005)
segmented = time.perf_counter()
print(json.dumps({"open_s": opened - started, "first_click_s": ready - started, "first_result_s": segmented - started,
                  "modules_imported": len(set(sys.modules) - modules), "torch_imported": torch_imported}))
"""


def measure_first_click(path: Path, point: tuple[int, int, int], model: str, image_size: int | None,
                        repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", _FIRST_CLICK, str(path), json.dumps(list(point)), model,
                               str(image_size or 0)],
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
    parser.add_argument("--model", default="untrained", help="registry name or model directory (default untrained)")
    parser.add_argument("--image-size", type=int, default=None, help="default: 256 for untrained, else the model's")
    parser.add_argument("--no-first-click", action="store_true", help="skip the fresh-process first-click runs")
    parser.add_argument("--calls-only", action="store_true", help="only segment / propagate / re-propagate (no 3D)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    shape, image_size, repeats = ((12, 64, 64), 128, 2) if args.quick else ((32, 128, 128), 256, 3)
    image_size = args.image_size or (image_size if args.model == "untrained" else None)
    repeats = args.repeats or repeats
    with tempfile.TemporaryDirectory() as folder:
        path, point = _write_case(Path(folder), shape)
        results = {"shape": shape, "model": args.model, "image_size": image_size, "repeats": repeats}
        if not args.no_first_click:
            results.update(measure_first_click(path, point, args.model, image_size, repeats))
        medseg, layers = measure_medseg(path, point, args.model, image_size, repeats, with_3d=not args.calls_only)
        if not args.calls_only:
            results.update(measure_plain_napari(layers, repeats))
        results.update(medseg)
    for prefix in () if args.calls_only else ("panel_open", "with_result"):
        for what in ("3d_toggle", "3d_camera_move"):
            results[f"{prefix}_{what}_ratio_vs_plain_same_layers"] = \
                results[f"{prefix}_{what}_s"] / results[f"plain_same_layers_{what}_s"]
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
