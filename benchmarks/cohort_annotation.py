"""A scripted user annotating cases through napari's Cohort tab: time per case, clicks to Dice >= 0.9.

Run under a display (``xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/cohort_annotation.py
--manifest demo.json --model results/demo/sam2-model``). The user is a robot that clicks as
interactive-segmentation papers simulate one: for each labelled object of a case, a positive
click at the deepest voxel of the object's largest slice, Propagate; then, while Dice against
the truth is below the target and clicks are left, one correction on the slice with the most
wrong voxels (a positive click in the deepest missed voxel, or a negative one in the deepest
false positive), Propagate again; then Accept (Shift-C: saved at once). After the last object,
Accept case (Shift-J) opens the next case. Prints per case: seconds, clicks and final Dice per
object, and the medians. With the untrained model the masks are meaningless (the clicks then
say nothing about quality).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import napari_plugin  # noqa: F401  (triton beside Mesa, before torch)


def _wait(panel) -> None:
    from qtpy.QtCore import QEventLoop

    if panel.task is None or panel.task.finished:
        return
    loop = QEventLoop()
    panel.task.worker.finished.connect(loop.quit)
    if not panel.task.finished:
        loop.exec()


def _deepest(mask2d: np.ndarray) -> tuple[int, int]:
    """The voxel of ``mask2d`` farthest from its border (where a user clicks)."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask2d, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(depth.argmax()), depth.shape)
    return int(y), int(x)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _click(ws, z: int, yx: tuple[int, int], *, positive: bool) -> None:
    """What a click on the canvas does: a point in the prompts layer, with its sign."""
    points = ws.prompts.points
    ws.prompts.set_negative(not positive)
    points.add([z, *yx])
    ws.prompts.set_negative(False)


def annotate_object(panel, truth: np.ndarray, value: int, *, target: float, max_clicks: int) -> tuple[int, float]:
    """Clicks (and propagations) until Dice >= ``target``; returns (clicks, final Dice)."""
    ws = panel.workspace
    obj_id = panel.current_object()
    want = truth == value
    z = int(want.sum(axis=(1, 2)).argmax())
    _click(ws, z, _deepest(want[z]), positive=True)
    clicks, dice = 1, 0.0
    while True:
        panel.propagate.click()
        _wait(panel)
        got = np.asarray(ws.labels.data) == obj_id
        dice = _dice(got, want)
        if dice >= target or clicks >= max_clicks:
            return clicks, dice
        wrong = (got ^ want).sum(axis=(1, 2))
        z = int(wrong.argmax())
        missed, extra = want[z] & ~got[z], got[z] & ~want[z]
        positive = missed.sum() >= extra.sum()
        _click(ws, z, _deepest(missed if positive else extra), positive=positive)
        clicks += 1


def _split_manifest(manifest: Path, split: str) -> Path:
    """A copy of ``manifest`` holding only the cases of ``split``, with absolute paths."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    folder = manifest.resolve().parent
    data["cases"] = [{**c, "image": str(folder / c["image"]), "label": str(folder / c["label"])}
                     for c in data["cases"] if c.get("split") == split]
    path = Path(tempfile.mkdtemp(prefix="cohort-")) / f"{manifest.stem}-{split}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, required=True, help="cohort manifest with ground truth")
    parser.add_argument("--model", default="untrained", help="registry name or model directory")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--split", default="test", help="annotate the cases of this split (default test: unseen)")
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--target", type=float, default=0.9, help="Dice to reach per object")
    parser.add_argument("--max-clicks", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import napari

    from medseg.io import load_labels

    viewer = napari.Viewer(show=True)
    viewer.window.set_geometry(0, 0, 1600, 1000)
    _, widget = viewer.window.add_plugin_dock_widget("medseg", "medseg")
    panel, cohort = widget.sam2, widget.cohort
    panel.model.set_choice(args.model, image_size=args.image_size)
    cohort.source.setText(str(_split_manifest(args.manifest, args.split)))
    cohort.output.setText(tempfile.mkdtemp(prefix="annotations-"))
    cohort.open_cohort()
    rows = []
    for _ in range(min(args.cases, len(cohort.annotation.cases))):
        case = cohort.annotation.cases[cohort.index]
        started = time.perf_counter()
        ws = panel.workspace
        truth = load_labels(case.truth, ws.volume).array
        objects = []
        for value in [int(v) for v in np.unique(truth) if v]:
            clicks, dice = annotate_object(panel, truth, value, target=args.target, max_clicks=args.max_clicks)
            objects.append({"label": value, "clicks": clicks, "dice": round(dice, 3)})
            panel.objects.accept_object()  # Shift-C: saved to the case's output at once
        cohort.accept_case()  # Shift-J: saved as accepted, the next case opens
        rows.append({"case": case.id, "seconds": round(time.perf_counter() - started, 2), "objects": objects})
        print(json.dumps(rows[-1]), flush=True)
    clicks = [o["clicks"] for r in rows for o in r["objects"]]
    summary = {
        "model": args.model, "untrained": args.model == "untrained", "target_dice": args.target,
        "cases": rows, "median_seconds_per_case": statistics.median(r["seconds"] for r in rows),
        "median_clicks_per_object": statistics.median(clicks),
        "clicks_per_case": [sum(o["clicks"] for o in r["objects"]) for r in rows],
        "objects_reaching_target": sum(o["dice"] >= args.target for r in rows for o in r["objects"]),
        "objects": len(clicks),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    viewer.close()


if __name__ == "__main__":
    sys.exit(main())
