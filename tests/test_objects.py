"""medseg.objects: objects as clean scored 3D instances, on hand-built predictions with SAM2-like
slice scores; mask AP of the result against pycocotools run directly; Mask R-CNN instances and
reference-prompting anchors through the same path; the pipeline option and its report."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage

from medseg.errors import ConfigError
from medseg.geometry import Geometry
from medseg.io import load_labels, read_geometry
from medseg.metrics import instance_counts, mask_ap
from medseg.objects import clean_objects, semantic_labels
from medseg.phantom import write_demo_cohort
from medseg.pipeline import load_pipeline, run_pipeline
from medseg.pipeline.methods import METHODS, Oracle, Segmentation
from medseg.prompts import Prompts
from medseg.revsam2 import anchor_prompts
from medseg.volume import InstanceMap, LabelVolume

SHAPE = (12, 32, 32)
GEOMETRY = Geometry(SHAPE, (1.0, 1.0, 1.0))


def organ_case(shift: int = 0) -> tuple[LabelVolume, LabelVolume]:
    """(prediction, truth): an organ (label 1) and two kidneys (label 2), predicted with specks.

    SAM2-like slice scores: confident (0.9) through the organ, lower (0.6-0.7) at its ends where
    the specks sit, as SAM2 paints them.
    """
    truth = np.zeros(SHAPE, np.int32)
    truth[2:10, 4:14, 4:14] = 1
    truth[3:9, 20:26, 4:9] = 2
    truth[3:9, 20:26, 22:27] = 2
    pred = np.zeros(SHAPE, np.int32)
    pred[2:10, 4 + shift:14 + shift, 5:14] = 1  # the organ, one column short
    pred[0, 28, 28] = pred[1, 29:31, 2] = pred[11, 0, 0:2] = 1  # specks where the organ is absent
    pred[10, 16, 16] = pred[5, 30, 30] = 1  # at its edge, and a stray voxel on a slice it is on
    pred[3:9, 20:26, 4:9] = 2
    pred[3:9, 20:26, 22:26] = 2
    pred[1, 0, 31] = 2
    organ_scores = np.array([0.6, 0.65, 0.9, 0.92, 0.93, 0.94, 0.94, 0.93, 0.92, 0.9, 0.7, 0.6])
    kidney_scores = np.where(np.isin(np.arange(12), [1, 3, 4, 5, 6, 7, 8]), 0.8, np.nan)
    labels = LabelVolume(pred, GEOMETRY, label_names={1: "organ", 2: "kidney"},
                         slice_scores={1: organ_scores, 2: kidney_scores},
                         scores={1: 0.9, 2: 0.8})
    return labels, LabelVolume(truth, GEOMETRY)


def false_organ_case() -> tuple[LabelVolume, LabelVolume]:
    """(prediction, truth): the organ predicted where it is not, with lower slice scores."""
    pred = np.zeros(SHAPE, np.int32)
    pred[3:8, 18:28, 18:28] = 1
    truth = np.zeros(SHAPE, np.int32)
    truth[3:8, 2:12, 2:12] = 1
    scores = np.where(np.isin(np.arange(12), range(3, 8)), 0.55, np.nan)
    return LabelVolume(pred, GEOMETRY, slice_scores={1: scores}, scores={1: 0.55}), LabelVolume(truth, GEOMETRY)


def pycocotools_ap(pairs: list[tuple[InstanceMap, LabelVolume]]) -> list[float]:
    """AP@[.5:.95], AP50, AP75 of 3D instances by COCOeval itself: each volume flattened to one column."""
    images, truth, detections = [], [], []
    for image_id, (pred, gt) in enumerate(pairs, start=1):
        n = gt.array.size
        images.append({"id": image_id, "height": n, "width": 1})
        for value in (1, 2):
            components, count = ndimage.label(gt.array == value, structure=np.ones((3, 3, 3)))
            for k in range(1, count + 1):
                rle = mask_utils.encode(np.asfortranarray((components == k).reshape(n, 1).astype(np.uint8)))
                truth.append({"id": len(truth) + 1, "image_id": image_id, "category_id": value, "segmentation": rle,
                              "area": float(mask_utils.area(rle)), "iscrowd": 0, "bbox": list(mask_utils.toBbox(rle))})
        for k, value in pred.labels.items():
            rle = mask_utils.encode(np.asfortranarray((pred.array == k).reshape(n, 1).astype(np.uint8)))
            detections.append({"id": len(detections) + 1, "image_id": image_id, "category_id": value,
                               "segmentation": rle, "area": float(mask_utils.area(rle)),
                               "bbox": list(mask_utils.toBbox(rle)), "score": pred.scores[k], "iscrowd": 0})
    coco_gt, coco_dt = COCO(), COCO()
    categories = [{"id": 1}, {"id": 2}]
    coco_gt.dataset = {"images": images, "categories": categories, "annotations": truth}
    coco_dt.dataset = {"images": images, "categories": categories, "annotations": detections}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(s) for s in evaluator.stats[:3]]


def test_organ_with_specks_becomes_one_instance_that_outranks_false_ones_with_pycocotools_ap():
    (pred, truth), (false_pred, false_truth) = organ_case(), false_organ_case()
    objects = clean_objects(pred)
    assert sorted(objects.instances.labels.values()) == [1, 2, 2]  # the organ, both kidneys
    assert sorted(objects.dropped[1]) == [1, 1, 1, 2, 2] and objects.dropped[2] == [1]
    organ = next(k for k, v in objects.instances.labels.items() if v == 1)
    assert np.array_equal(objects.instances.array == organ, (truth.array == 1) & (np.arange(32) >= 5)[None, None, :])
    assert objects.instances.scores[organ] == pytest.approx(np.mean([0.9, 0.92, 0.93, 0.94, 0.94, 0.93, 0.92, 0.9]))
    false = clean_objects(false_pred)
    assert false.instances.scores == {1: pytest.approx(0.55)}
    assert objects.instances.scores[organ] > false.instances.scores[1]  # the real organ ranks first
    assert np.array_equal(objects.labels.array, np.where(objects.instances.array > 0, pred.array, 0))
    assert np.isnan(objects.labels.slice_scores[1][[0, 1, 10, 11]]).all()
    assert objects.labels.scores[1] == pytest.approx(objects.instances.scores[organ])
    assert objects.labels.provenance["postprocess"]["dropped"] == {"1": {"units": 5, "voxels": 7},
                                                                   "2": {"units": 1, "voxels": 1}}

    pairs = [(objects.instances, truth), (false.instances, false_truth)]
    ours = mask_ap(pairs, labels=[1, 2], mode="3d")
    assert [ours.ap, ours.ap50, ours.ap75] == pytest.approx(pycocotools_ap(pairs), abs=1e-12)
    # organ: found in one case of two and ranked above the false organ, so precision 1 up to recall 0.5
    # (51 of COCO's 101 recall points); the kidneys: both found, nothing ranked above them
    assert ours.ap50 == pytest.approx((51 / 101 + 1) / 2)
    raw = mask_ap([(pred, truth), (false_pred, false_truth)], labels=[1, 2], mode="3d")
    assert raw.n_predicted == 10 and ours.n_predicted == 4
    assert raw.ap50 < ours.ap50
    assert instance_counts(pred, labels=[1, 2]) == {1: 6, 2: 3}
    assert instance_counts(objects.instances, labels=[1, 2]) == {1: 1, 2: 2}


def test_a_two_component_object_keeps_both_components_and_prompts_anchor_small_ones():
    array = np.zeros(SHAPE, np.int32)
    array[3:9, 20:26, 4:9] = 3  # left kidney (180 voxels)
    array[3:9, 20:26, 22:27] = 3  # right kidney (180 voxels)
    array[5, 2:4, 2:4] = 3  # 4 voxels: below a tenth of the prompted kidney
    labels = LabelVolume(array, GEOMETRY, slice_scores={3: np.full(12, 0.8)})
    click = Prompts().add_point(3, 5, 22, 6)  # one click, on the left kidney
    objects = clean_objects(labels, prompts=click)
    assert sorted(np.bincount(objects.instances.array.ravel())[1:].tolist()) == [180, 180]
    assert objects.dropped == {3: [4]}
    box_on_both = Prompts().add_box(3, 5, 20, 4, 25, 26)
    assert len(clean_objects(labels, prompts=box_on_both).instances.labels) == 2
    on_the_small_one = Prompts().add_point(3, 5, 22, 6).add_point(3, 5, 2.6, 3.4)  # clicked: it is the object too
    assert clean_objects(labels, prompts=on_the_small_one).dropped == {}
    assert clean_objects(labels).dropped == {3: [4]}  # no prompts: anchored on the largest
    # a prompted component stays however small; one larger than it anchors nothing
    only_small = Prompts().add_mask(3, 5, array[5] * (np.arange(32)[:, None] < 4) > 0)
    kept = clean_objects(labels, prompts=only_small, min_fraction=0.5)
    assert sorted(np.bincount(kept.instances.array.ravel())[1:].tolist()) == [4, 180, 180]
    assert clean_objects(labels, prompts=click, min_score=0.9).dropped == {3: [180, 4]}  # scored absent: dropped
    with pytest.raises(ConfigError, match="min_fraction"):
        clean_objects(labels, min_fraction=2)


def test_raw_output_is_left_bit_identical():
    pred, _ = organ_case()
    before = (pred.array.copy(), {k: v.copy() for k, v in pred.slice_scores.items()}, dict(pred.scores))
    clean_objects(pred, prompts=Prompts().add_point(1, 5, 8, 8))
    assert np.array_equal(pred.array, before[0]) and pred.scores == before[2]
    assert all(np.array_equal(pred.slice_scores[k], v, equal_nan=True) for k, v in before[1].items())
    assert "postprocess" not in pred.provenance
    empty = clean_objects(LabelVolume(np.zeros(SHAPE, np.int32), GEOMETRY))
    assert empty.instances.labels == {} and empty.dropped == {} and not empty.labels.array.any()


def test_maskrcnn_instances_go_through_the_same_rule_and_keep_their_scores():
    array = np.zeros(SHAPE, np.int32)
    array[2:8, 2:10, 2:10] = 1  # 384 voxels, label 1
    array[2:4, 12:14, 12:14] = 2  # 8 voxels of label 1: a small false detection
    array[3:9, 20:26, 4:9] = 3  # a kidney (label 2)
    array[3:9, 20:26, 22:27] = 4  # the other kidney
    best = lambda zs, s: np.where(np.isin(np.arange(12), zs), s, np.nan)
    instances = InstanceMap(array, GEOMETRY, labels={1: 1, 2: 1, 3: 2, 4: 2}, scores={1: 0.9, 2: 0.7, 3: 0.8, 4: 0.6},
                            slice_scores={1: best(range(2, 8), 0.9), 2: best([2, 3], 0.7), 3: best(range(3, 9), 0.8),
                                          4: best(range(3, 9), 0.6)})
    like = LabelVolume(np.zeros(SHAPE, np.int32), GEOMETRY, label_names={1: "liver", 2: "kidney"}, untrained=True)
    semantic = semantic_labels(instances, like)
    assert semantic.scores == pytest.approx({1: (384 * 0.9 + 8 * 0.7) / 392, 2: 0.7})  # voxel-weighted
    assert semantic.slice_scores[1][[2, 3, 4]].tolist() == pytest.approx([0.9, 0.9, 0.9])
    assert semantic.untrained and semantic.label_names == {1: "liver", 2: "kidney"}
    objects = clean_objects(semantic, instances=instances)
    assert objects.instances.labels == {1: 1, 2: 2, 3: 2} and objects.dropped == {1: [8]}
    assert objects.instances.scores == {1: 0.9, 2: 0.8, 3: 0.6}  # the model's own scores
    assert objects.labels.scores[1] == pytest.approx(0.9)
    assert np.array_equal(objects.labels.array, np.where(array == 2, 0, semantic.array))


def test_reference_prompting_anchors_are_its_selected_and_query_drawn_slices():
    array = np.zeros(SHAPE, np.int32)
    array[2:9, 4:10, 4:10] = 1
    array[0, 0, 0] = 1
    array[4:7, 20:24, 20:24] = 2
    array[6, 28, 0] = 1  # a stray pixel on a selected slice: SAM2's, not what the selection chose
    array[5, 0, 31] = 2  # drawn on the query: the user's
    provenance = {
        "support": {"drawn_on_query": ["mine.nii.gz (on the query)"],
                    "slices": [{"reference": "ref.nii.gz", "z": 3, "label": 1},
                               {"reference": "ref.nii.gz", "z": 5, "label": 2},
                               {"reference": "mine.nii.gz (on the query)", "z": 5, "label": 2}]},
        "labels": {"1": {"selected_slices": [6, 0]}, "2": {"selected_slices": []}},
    }
    anchors = anchor_prompts(LabelVolume(array, GEOMETRY, provenance=provenance))
    assert {o: [m.z for m in obj.masks] for o, obj in anchors.objects.items()} == {1: [0, 6], 2: [5]}
    assert np.array_equal(anchors.objects[1].masks[1].mask, (array[6] == 1) & (np.arange(32) < 20)[:, None])
    assert np.array_equal(anchors.objects[2].masks[0].mask, array[5] == 2)


# --- the pipeline option and its report ---------------------------------------------------------
@dataclass(frozen=True)
class _NoOptions:
    pass


class _Speckled(Oracle):
    """The truth plus specks, with SAM2-like slice scores: what SAM2's raw output looks like."""

    kind = "test-speckled"
    Options = _NoOptions

    def from_truth(self, volume, truth, *, case_id):
        seg = super().from_truth(volume, truth, case_id=case_id)
        array = seg.labels.array.copy()
        array[0, 0, 0] = array[-1, -1, -1] = 2
        present = {v: (array == v).any(axis=(1, 2)) for v in self.setup.labels}
        scores = {v: np.where(p, 0.9, np.nan) for v, p in present.items()}
        return Segmentation(replace(seg.labels, array=array, slice_scores=scores))


def test_pipeline_postprocess_objects_keeps_the_raw_labels_and_reports_instances(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, _Speckled.kind, _Speckled)
    cohort = write_demo_cohort(tmp_path / "cohort", n_cases=3, n_test=1, shape=(8, 48, 48))
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"name: t\ncohort: {cohort}\nmethods:\n  raw: {{type: test-speckled}}\n"
                    "  obj: {type: test-speckled, postprocess: objects}\n", encoding="utf-8")
    out = tmp_path / "out"
    run_pipeline(load_pipeline(path), out)
    case = next(p for p in (out / "raw").iterdir() if p.is_dir())
    geometry = read_geometry(case / "labels.nii.gz")
    raw = load_labels(case / "labels.nii.gz", geometry).array
    obj_dir = out / "obj" / case.name
    assert np.array_equal(load_labels(obj_dir / "raw_labels.nii.gz", geometry).array, raw)  # bit-identical
    truth = load_labels(cohort.parent / json.loads(cohort.read_text())["cases"][-1]["label"], geometry).array
    assert np.array_equal(load_labels(obj_dir / "labels.nii.gz", geometry).array, truth)  # specks gone
    result = json.loads((obj_dir / "result.json").read_text(encoding="utf-8"))
    assert result["postprocess"]["dropped"] == {"2": {"units": 2, "voxels": 2}} and result["mean_dice"] == 1.0
    assert result["instances"]["definition"].startswith("objects:")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["methods"]
    assert metrics["obj"]["ap"]["3d"]["ap"] == pytest.approx(1.0) and metrics["raw"]["ap"]["3d"]["ap"] < 1.0
    counts = {m: metrics[m]["instances"]["per_case"][case.name] for m in ("raw", "obj")}
    assert counts["obj"]["truth"] == counts["obj"]["predicted"] == {"1": 1, "2": 1, "3": 2}
    assert counts["raw"]["predicted"] == {"1": 1, "2": 3, "3": 2}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert f"| {case.name} | 1 / 1 / 2 | 1 / 3 / 2 | 1 / 1 / 2 |" in report
    assert "3D connected components of each label |" in report and "| objects: 3D components" in report
