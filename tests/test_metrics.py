"""medseg.metrics on hand-built cases with known answers, cross-checked against MONAI and
pycocotools called directly."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from medseg.errors import GeometryError, InputError
from medseg.geometry import Geometry
from medseg.metrics import (
    dice_per_label,
    evaluate,
    hausdorff95_per_label,
    mask_ap,
    mean_dice,
    surface_dice_per_label,
)
from medseg.volume import InstanceMap, LabelVolume

GRID = Geometry((12, 24, 24), (3.0, 1.0, 1.0))


def cube(z0=1, y0=2, x0=2, size=10, value=1, shape=GRID.shape) -> np.ndarray:
    array = np.zeros(shape, dtype=np.int32)
    array[z0 : z0 + size, y0 : y0 + size, x0 : x0 + size] = value
    return array


def labels(array, **fields) -> LabelVolume:
    return LabelVolume(array, GRID, **fields)


# --- Dice, Hausdorff, surface Dice ---------------------------------------------------------
def test_dice_perfect_shifted_and_empty_conventions():
    truth = cube()
    shifted = cube(x0=4)  # 10x10x8 overlap of two 10^3 cubes: Dice = 2*800/2000
    scores = dice_per_label(labels(shifted), labels(truth), labels=[1, 2])
    assert scores[1] == pytest.approx(0.8, abs=1e-7)
    assert np.isnan(scores[2])  # absent from both: not applicable, by default
    assert dice_per_label(truth, truth, labels=[1, 2], empty=1.0) == {1: 1.0, 2: 1.0}
    assert dice_per_label(truth * 2, truth, labels=[2]) == {2: 0.0}  # invented object
    assert dice_per_label(np.zeros_like(truth), truth, labels=[1]) == {1: 0.0}  # missed object
    assert mean_dice({1: 0.8, 2: float("nan"), 3: 0.4}) == pytest.approx(0.6)
    assert np.isnan(mean_dice({2: float("nan")}))


def test_dice_matches_monai_direct_on_multilabel_map():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, size=(6, 20, 20))
    pred = np.where(rng.random(truth.shape) < 0.3, rng.integers(0, 4, size=truth.shape), truth)
    ours = dice_per_label(pred, truth, labels=[1, 2, 3])
    onehot = lambda a: torch.nn.functional.one_hot(torch.from_numpy(a), 4).permute(3, 0, 1, 2)[None].float()
    direct = DiceMetric(include_background=False, reduction="none")(onehot(pred), onehot(truth))[0]
    assert [ours[k] for k in (1, 2, 3)] == pytest.approx(direct.tolist(), abs=1e-6)


def test_hausdorff_and_surface_dice_in_mm_match_monai():
    truth, pred = labels(cube()), labels(cube(z0=2))  # one slice further along z, 3 mm apart
    hd = hausdorff95_per_label(pred, truth, labels=[1])
    assert hd[1] == pytest.approx(3.0)
    assert surface_dice_per_label(pred, truth, labels=[1], tolerance_mm=3.0)[1] == pytest.approx(1.0)
    nsd = surface_dice_per_label(pred, truth, labels=[1], tolerance_mm=1.0)[1]
    t, p = (torch.from_numpy(a.array == 1)[None, None].float() for a in (truth, pred))
    assert hd[1] == pytest.approx(float(compute_hausdorff_distance(p, t, include_background=True, percentile=95,
                                                                   spacing=[3.0, 1.0, 1.0])))
    assert nsd == pytest.approx(float(compute_surface_dice(p, t, [1.0], include_background=True,
                                                           spacing=[3.0, 1.0, 1.0])))
    assert 0.0 < nsd < 1.0
    # plain arrays are in voxels
    assert hausdorff95_per_label(pred.array, truth.array, labels=[1])[1] == pytest.approx(1.0)
    # one side empty: complete failure; both empty: not applicable
    empty = np.zeros(GRID.shape, dtype=np.int32)
    assert hausdorff95_per_label(empty, truth.array, labels=[1, 2]) == {1: float("inf"),
                                                                        2: pytest.approx(float("nan"), nan_ok=True)}
    assert surface_dice_per_label(empty, truth.array, labels=[1])[1] == 0.0


def test_mismatched_geometry_is_a_geometry_error():
    other = LabelVolume(cube(), Geometry(GRID.shape, (3.0, 1.0, 1.0), origin=(0.0, 0.0, 5.0)))
    with pytest.raises(GeometryError, match="origin"):
        dice_per_label(other, labels(cube()), labels=[1])
    with pytest.raises(GeometryError, match="shape"):
        dice_per_label(cube()[:5], cube(), labels=[1])
    with pytest.raises(InputError, match="labels"):
        dice_per_label(cube(), cube(), labels=[0])
    with pytest.raises(GeometryError, match="case 0"):
        mask_ap([(other, labels(cube()))], labels=[1])


# --- COCO mask AP ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_ap_perfect_is_one(mode):
    truth = cube() + cube(z0=0, y0=14, x0=14, size=8, value=2)
    result = mask_ap([(labels(truth, scores={1: 0.9, 2: 0.7}), labels(truth))], labels=[1, 2], mode=mode)
    assert (result.ap, result.ap50, result.ap75) == pytest.approx((1.0, 1.0, 1.0))
    assert result.per_label == pytest.approx({1: 1.0, 2: 1.0})
    assert not result.constant_score
    assert result.n_images == (1 if mode == "3d" else 11)  # slices 0..10 hold an object


@pytest.mark.parametrize("mode", ["2d", "3d"])
def test_ap_of_shifted_mask_with_known_iou(mode):
    # IoU 800 / 1200 = 2/3 in 3D and on every slice (80 / 120): a match at IoU 0.50..0.65 only,
    # i.e. at 4 of the 10 thresholds.
    result = mask_ap([(labels(cube(x0=4), scores={1: 0.8}), labels(cube()))], labels=[1], mode=mode)
    assert result.ap == pytest.approx(0.4)
    assert result.ap50 == pytest.approx(1.0)
    assert result.ap75 == pytest.approx(0.0)


def test_false_positive_ranked_above_true_positive_halves_ap():
    truth = labels(cube(size=5))
    ids = cube(size=5) + cube(z0=6, y0=12, x0=12, size=5, value=2)  # 1: true positive, 2: invented
    geometry = GRID

    def ap(tp_score, fp_score):
        pred = InstanceMap(ids, geometry, labels={1: 1, 2: 1}, scores={1: tp_score, 2: fp_score})
        return mask_ap([(pred, truth)], labels=[1], mode="3d")

    # precision 0 at the first detection, 1/2 at recall 1: interpolated precision is 1/2 everywhere
    assert ap(0.5, 0.9).ap == pytest.approx(0.5)
    assert ap(0.9, 0.5).ap == pytest.approx(1.0)
    # semantic map in 2D: its slice scores rank the invented slices (6..10) against the true
    # ones (1..5); COCO pools the ranking over all images (slices)
    semantic = np.where(ids > 0, 1, 0)

    def ap_2d(tp_score, fp_score):
        slice_scores = np.full(GRID.shape[0], np.nan)
        slice_scores[1:6], slice_scores[6:11] = tp_score, fp_score
        return mask_ap([(labels(semantic, slice_scores={1: slice_scores}), truth)], labels=[1], mode="2d")

    assert ap_2d(0.5, 0.9).ap == pytest.approx(0.5)  # 5 FP first, then 5 TP: precision 5/10 at recall 1
    assert ap_2d(0.9, 0.5).ap == pytest.approx(1.0)
    assert ap_2d(0.9, 0.5).n_images == 10


def test_unscored_predictions_get_a_constant_score_and_a_flag():
    result = mask_ap([(cube(), cube())], labels=[1])
    assert result.constant_score and result.ap == pytest.approx(1.0)
    empty = mask_ap([(np.zeros(GRID.shape, int), np.zeros(GRID.shape, int))], labels=[1])
    assert np.isnan(empty.ap) and empty.n_images == 0


def test_per_class_instances_merge_components():
    truth = cube(size=4) + cube(z0=6, y0=12, x0=12, size=4)  # two components of label 1
    pred = cube(size=4)  # finds one of them
    components = mask_ap([(labels(pred, scores={1: 0.9}), labels(truth))], labels=[1], instances="components")
    per_class = mask_ap([(labels(pred, scores={1: 0.9}), labels(truth))], labels=[1], instances="per_class")
    assert components.n_truth == 2 and per_class.n_truth == 1
    assert components.ar100 == pytest.approx(0.5)
    # one instance per class: IoU 64 / 128 = 0.5, a match at the 0.50 threshold only
    assert per_class.ap == pytest.approx(0.1) and per_class.ap50 == pytest.approx(1.0)


def _direct_cocoeval(images, truth_anns, pred_anns, cat_ids, area_rng):
    gt = COCO()
    gt.dataset = {"images": images, "categories": [{"id": c} for c in cat_ids], "annotations": truth_anns}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(pred_anns)
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.areaRng = area_rng
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_3d_ap_matches_pycocotools_direct_including_more_than_100_detections():
    rng = np.random.default_rng(1)
    shape = (8, 30, 30)
    geometry = Geometry(shape, (1.0, 1.0, 1.0))
    truth_ids = np.zeros(shape, dtype=np.int32)
    pred_ids = np.zeros(shape, dtype=np.int32)
    for k in range(6):  # six 3x4x4 objects, each predicted with a random shift
        z, y, x = 1 + (k % 2) * 4, 2 + (k // 2) * 9, 3
        truth_ids[z : z + 3, y : y + 4, x : x + 4] = k + 1
        dz, dy, dx = rng.integers(-1, 2, size=3)
        pred_ids[z + dz : z + dz + 3, y + dy : y + dy + 4, x + dx : x + dx + 4] = k + 1
    extra = np.argwhere(pred_ids[:, :, 12:] == 0)[::3][:120]  # 120 one-voxel false positives
    for n, (z, y, x) in enumerate(extra, start=7):
        pred_ids[z, y, 12 + x] = n
    n_pred = int(pred_ids.max())
    scores = {k: float(s) for k, s in zip(range(1, n_pred + 1), rng.random(n_pred))}
    truth_cats = {k: 1 + k % 2 for k in range(1, 7)}
    cats = {k: truth_cats.get(k, 1) for k in range(1, n_pred + 1)}  # > 100 detections of label 1
    ours = mask_ap(
        [(InstanceMap(pred_ids, geometry, labels=cats, scores=scores),
          InstanceMap(truth_ids, geometry, labels=truth_cats))],
        labels=[1, 2],
        mode="3d",
    )

    def rle(mask):
        return mask_utils.encode(np.asfortranarray(mask.reshape(-1, 1).astype(np.uint8)))

    n = int(np.prod(shape))
    truth_anns = []
    for k in range(1, 7):
        r = rle(truth_ids == k)
        truth_anns.append({"id": k, "image_id": 1, "category_id": truth_cats[k], "segmentation": r,
                           "area": float(mask_utils.area(r)), "iscrowd": 0, "bbox": list(mask_utils.toBbox(r))})
    pred_anns = [{"image_id": 1, "category_id": cats[k], "segmentation": rle(pred_ids == k), "score": scores[k]}
                 for k in range(1, n_pred + 1)]
    direct = _direct_cocoeval([{"id": 1, "height": n, "width": 1}], truth_anns, pred_anns, [1, 2],
                              [[0, 1e12], [0, 1e3], [1e3, 1e5], [1e5, 1e12]])
    assert sum(c == 1 for c in cats.values()) > 100
    assert [ours.ap, ours.ap50, ours.ap75, ours.ar100] == pytest.approx(
        [direct[0], direct[1], direct[2], direct[8]], abs=1e-12)
    assert 0.0 < ours.ap < 1.0


def test_2d_ap_matches_pycocotools_direct_per_slice_images():
    rng = np.random.default_rng(2)
    truth = np.zeros((5, 40, 40), dtype=np.int32)
    for k, (y, x) in enumerate([(3, 3), (3, 22), (22, 3), (22, 22)]):
        truth[:, y : y + 12, x : x + 12] = 1 + k % 2
    pred = np.roll(truth, shift=(0, 2, 1), axis=(0, 1, 2))
    pred[2] = 0  # one slice missed entirely
    pred[4, 35:, 35:] = 2  # an invented object on the last slice
    slice_scores = {1: rng.random(5), 2: rng.random(5)}
    geometry = Geometry(truth.shape, (2.5, 0.5, 0.5))
    ours = mask_ap([(LabelVolume(pred, geometry, slice_scores=slice_scores), LabelVolume(truth, geometry))],
                   labels=[1, 2], mode="2d")

    from scipy import ndimage

    images, truth_anns, pred_anns = [], [], []
    for z in range(5):
        images.append({"id": z + 1, "height": 40, "width": 40})
        for source, target in ((truth, truth_anns), (pred, pred_anns)):
            for label in (1, 2):
                components, count = ndimage.label(source[z] == label, structure=np.ones((3, 3)))
                for c in range(1, count + 1):
                    r = mask_utils.encode(np.asfortranarray((components == c).astype(np.uint8)))
                    ann = {"image_id": z + 1, "category_id": label, "segmentation": r}
                    if target is truth_anns:
                        ann.update(id=len(truth_anns) + 1, iscrowd=0, area=float(mask_utils.area(r)) * 0.25,
                                   bbox=list(mask_utils.toBbox(r)))
                    else:
                        ann["score"] = float(slice_scores[label][z])
                    target.append(ann)
    # loadRes sets prediction areas in pixels; scale the area ranges to match the mm² truth
    direct = _direct_cocoeval(images, truth_anns, pred_anns, [1, 2],
                              [[0, 1e10], [0, 32**2], [32**2, 96**2], [96**2, 1e10]])
    assert [ours.ap, ours.ap50, ours.ap75] == pytest.approx(list(direct[:3]), abs=1e-12)
    assert 0.0 < ours.ap < 1.0


# --- evaluate: the one bundle ------------------------------------------------------------------
def test_evaluate_bundles_every_metric_of_one_case():
    truth_array = cube(value=1) + cube(z0=8, y0=14, x0=14, size=3, value=2) * (cube(value=1) == 0)
    pred_array = cube(x0=3, value=1)  # label 1 shifted by one voxel along x; label 2 missed
    pred, truth = labels(pred_array), labels(truth_array)
    steps = []
    scores = evaluate(pred, truth, labels={1: "liver", 2: "spleen", 3: "kidney"}, surface_tolerance_mm=1.0,
                      progress=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert scores.dice == dice_per_label(pred, truth, labels=[1, 2, 3])
    assert scores.hd95_mm[1] == hausdorff95_per_label(pred, truth, labels=[1])[1] == pytest.approx(1.0)
    assert scores.surface_dice == surface_dice_per_label(pred, truth, labels=[1, 2, 3], tolerance_mm=1.0)
    assert (scores[1].truth_voxels, scores[1].pred_voxels) == (1000, 1000)
    assert (scores[2].dice, scores[2].hd95_mm, scores[2].pred_voxels) == (0.0, float("inf"), 0)
    assert np.isnan(scores[3].dice) and scores[3].truth_voxels == 0
    assert scores.mean_dice == pytest.approx((0.9 + 0.0) / 2)  # label 3 is in neither map: not counted
    assert scores.to_dict()["1"] == {"dice": pytest.approx(0.9), "hd95_mm": pytest.approx(1.0),
                                     "nsd": scores[1].surface_dice, "truth_voxels": 1000, "pred_voxels": 1000}
    assert scores.millimetres and scores.ap_pair == (pred, truth)
    assert scores.mask_ap(mode="3d").ap50 == mask_ap([(pred, truth)], labels=[1, 2, 3], mode="3d").ap50


def test_evaluate_uses_the_methods_instances_for_ap_and_refuses_other_grids():
    truth = labels(cube())
    instances = InstanceMap(cube(), GRID, labels={1: 1}, scores={1: 0.7})
    scores = evaluate(labels(cube()), truth, labels=[1], instances=instances, hausdorff=False)
    assert scores.ap_pair[0] is instances and np.isnan(scores[1].hd95_mm)
    other = LabelVolume(cube(), Geometry((12, 24, 24), (2.0, 1.0, 1.0)))
    with pytest.raises(GeometryError, match="different voxel grids"):
        evaluate(other, truth, labels=[1])
