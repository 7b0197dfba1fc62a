"""Dice + 2D and 3D COCO mask AP over a cohort: ``medseg.metrics`` vs naive MONAI / pycocotools use.

Cohort: ``--cases`` synthetic label volumes (default 20 of 128x256x256) with ~10 ellipsoid
instances each over 3 label values; the prediction moves each instance by up to 3 voxels,
drops one in ten and invents one or two, with a score per label and per slice.

Naive (what a user writes from the two libraries' tutorials):

* Dice: one MONAI ``DiceMetric`` call per volume on the float one-hot of all labels.
* 2D AP: per slice and label, ``scipy.ndimage.label`` of the slice, each component encoded on
  its own (``pycocotools.mask.encode``), results through ``COCO.loadRes``, then ``COCOeval``.
* 3D AP: per label, ``ndimage.label`` of the whole volume, each component's full-volume mask
  reshaped to one column and encoded, ``loadRes``, ``COCOeval``.

medseg: ``dice_per_label``, ``mask_ap(mode="2d")``, ``mask_ap(mode="3d")``. The numbers must
match exactly (asserted); reported are median seconds of ``--repeats`` runs and the ratios.

Usage::

    python benchmarks/metrics.py            # 20 volumes of 128x256x256
    python benchmarks/metrics.py --quick    # 4 volumes of 32x96x96
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np
import torch
from monai.metrics import DiceMetric
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from medseg.geometry import Geometry
from medseg.metrics import AREA_RANGES_2D_MM2, AREA_RANGES_3D_MM3, dice_per_label, mask_ap
from medseg.volume import LabelVolume

LABELS = [1, 2, 3]


def make_case(seed: int, shape: tuple[int, int, int]) -> tuple[LabelVolume, LabelVolume]:
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, dtype=np.int16)
    pred = np.zeros(shape, dtype=np.int16)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    scale = np.array(shape) / np.array([128, 256, 256])

    def blob(target, centre, radii, value):
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii)) <= 1
        target[inside] = value

    for k in range(10):
        value = LABELS[k % 3]
        radii = rng.uniform(4, 20, size=3) * scale + 1
        centre = rng.uniform(radii, np.array(shape) - radii)
        blob(truth, centre, radii, value)
        if rng.random() > 0.1:  # one in ten missed
            blob(pred, centre + rng.integers(-3, 4, size=3) * scale, radii * rng.uniform(0.85, 1.15, size=3), value)
    for _ in range(rng.integers(1, 3)):  # invented objects
        radii = rng.uniform(3, 8, size=3) * scale + 1
        blob(pred, rng.uniform(radii, np.array(shape) - radii), radii, LABELS[rng.integers(3)])
    geometry = Geometry(shape, (1.0, 1.0, 1.0))
    slice_scores = {v: np.where((pred == v).any(axis=(1, 2)), rng.uniform(0.3, 1.0, size=shape[0]), np.nan)
                    for v in LABELS}
    scores = {v: float(rng.uniform(0.3, 1.0)) for v in LABELS}
    return LabelVolume(pred, geometry, scores=scores, slice_scores=slice_scores), LabelVolume(truth, geometry)


# --- naive ---------------------------------------------------------------------------------
def naive_dice(pred: LabelVolume, truth: LabelVolume) -> dict[int, float]:
    def onehot(a):
        return torch.nn.functional.one_hot(torch.from_numpy(a.astype(np.int64)),
                                           len(LABELS) + 1).permute(3, 0, 1, 2)[None].float()

    values = DiceMetric(include_background=False, reduction="none",
                        ignore_empty=False)(onehot(pred.array), onehot(truth.array))[0]
    return {v: float(values[i]) for i, v in enumerate(LABELS)}


def _evaluate(images, truth_anns, pred_anns, area_ranges) -> tuple[float, float, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "categories": [{"id": v} for v in LABELS], "annotations": truth_anns}
        gt.createIndex()
        dt = gt.loadRes(pred_anns) if pred_anns else COCO()
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.areaRng = [list(r) for r in area_ranges.values()]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return tuple(float(s) for s in ev.stats[:3])


def naive_ap(cases, mode: str) -> tuple[float, float, float]:
    images, truth_anns, pred_anns = [], [], []
    for pred, truth in cases:
        nz, ny, nx = truth.array.shape
        planes = ([(z, truth.array[z], pred.array[z]) for z in range(nz)] if mode == "2d"
                  else [(None, truth.array, pred.array)])
        for z, t_plane, p_plane in planes:
            image_id = len(images) + 1
            images.append({"id": image_id, "height": ny if mode == "2d" else nz * ny * nx,
                           "width": nx if mode == "2d" else 1})
            for source, target in ((t_plane, truth_anns), (p_plane, pred_anns)):
                for value in LABELS:
                    structure = np.ones((3,) * source.ndim)
                    components, count = ndimage.label(source == value, structure=structure)
                    for c in range(1, count + 1):
                        mask = components == c
                        rle = mask_utils.encode(
                            np.asfortranarray((mask if mode == "2d" else mask.reshape(-1, 1)).astype(np.uint8)))
                        ann = {"image_id": image_id, "category_id": value, "segmentation": rle}
                        if target is truth_anns:
                            ann.update(id=len(truth_anns) + 1, iscrowd=0, area=float(mask_utils.area(rle)),
                                       bbox=list(mask_utils.toBbox(rle)))
                        else:
                            score = pred.slice_scores[value][z] if mode == "2d" else pred.scores[value]
                            ann["score"] = float(score)
                        target.append(ann)
    return _evaluate(images, truth_anns, pred_anns, AREA_RANGES_2D_MM2 if mode == "2d" else AREA_RANGES_3D_MM3)


def timed(fn, *args, repeats: int):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 volumes of 32x96x96 (a check that it runs)")
    parser.add_argument("--cases", type=int, help="number of volumes (default 20; 4 with --quick)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    shape = (32, 96, 96) if args.quick else (128, 256, 256)
    n = args.cases or (4 if args.quick else 20)
    torch.set_num_threads(1)
    cases = [make_case(seed, shape) for seed in range(n)]
    n_truth = sum(len(ndimage.find_objects(ndimage.label(t.array > 0, structure=np.ones((3, 3, 3)))[0]))
                  for _, t in cases)
    print(f"cohort: {n} volumes of {shape}, {n_truth} ground-truth objects; median of {args.repeats} runs, 1 "
          "torch thread")

    rows = {}
    t_ours_dice, ours_dice = timed(lambda: [dice_per_label(p, t, labels=LABELS) for p, t in cases],
                                   repeats=args.repeats)
    t_naive_dice, naive_dice_values = timed(lambda: [naive_dice(p, t) for p, t in cases], repeats=args.repeats)
    assert ours_dice == naive_dice_values, "Dice differs"
    rows["Dice"] = (t_naive_dice, t_ours_dice)
    for mode in ("2d", "3d"):
        t_ours, ours = timed(lambda: mask_ap(cases, labels=LABELS, mode=mode), repeats=args.repeats)
        t_naive, naive = timed(lambda: naive_ap(cases, mode), repeats=args.repeats)
        assert (ours.ap, ours.ap50, ours.ap75) == naive, (f"{mode} AP differs: {(ours.ap, ours.ap50, ours.ap75)} "
                                                          f"vs {naive}")
        rows[f"mask AP {mode.upper()}"] = (t_naive, t_ours)
        print(f"{mode.upper()} AP {ours.ap:.4f}  AP50 {ours.ap50:.4f}  AP75 {ours.ap75:.4f}  (identical in both)")
    rows["total"] = tuple(sum(r[i] for r in rows.values()) for i in (0, 1))
    print(f"{'':18s} {'naive s':>9s} {'medseg s':>9s} {'speed-up':>9s}")
    for name, (naive_s, ours_s) in rows.items():
        print(f"{name:18s} {naive_s:9.2f} {ours_s:9.2f} {naive_s / ours_s:8.1f}x")


if __name__ == "__main__":
    main()
