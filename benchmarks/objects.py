"""Object-level output (``medseg.objects``): each method's raw output against its clean objects.

On a cohort's test split (the demo cohort), each method predicts every case once; the raw output
and the objects made from it (``clean_objects``) are then scored the same way: mean Dice, Dice per
label, median HD95 and mean surface Dice per label (2 mm), 2D and 3D mask AP (pycocotools: raw
instances are 26-connected components, objects their own instances, Mask R-CNN its stitched
detections), predicted 3D instances per case against the true ones, and true components lost (a
true component the raw output overlaps and the objects do not). A sweep of ``min_fraction`` and
``min_score`` follows, with the sizes of what the rule drops and of the anchors it keeps.

Methods as in ``pipelines/demo.yaml``: ``sam2`` (a centroid point and a middle-slice box per
organ, seed 0), ``revsam2`` (3 slices per label of the first train case), and ``maskrcnn`` when
``--maskrcnn`` names a trained model directory. SAM2 numbers mean something only with a trained
model (``medseg sam2 train``); the script refuses an untrained one.

Usage::

    medseg demo-data /tmp/d
    medseg sam2 train --manifest /tmp/d/demo.json --out /tmp/sam2 --steps 600 --threads 1
    medseg baseline train --manifest /tmp/d/demo.json --out /tmp/mrcnn --backbone resnet18 --input-size 128 --steps 150
    python benchmarks/objects.py --manifest /tmp/d/demo.json --sam2 /tmp/sam2 --maskrcnn /tmp/mrcnn
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from medseg.manifest import load_manifest
from medseg.metrics import evaluate, instance_counts, mask_ap
from medseg.objects import MIN_FRACTION, MIN_SCORE, clean_objects
from medseg.prompt_simulation import PromptPolicy, PromptSettings
from medseg.prompts import Prompts
from medseg.volume import InstanceMap, LabelVolume

_FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass
class Case:
    case_id: str
    truth: LabelVolume
    raw: LabelVolume
    instances: InstanceMap | None  # the method's own (Mask R-CNN)
    anchors: Prompts | None


def predict(args: argparse.Namespace, cohort, labels: dict[int, str]) -> dict[str, list[Case]]:
    """Every method's raw prediction of every test case (one run each)."""
    from medseg.revsam2 import SupportSet, anchor_prompts, segment_with_references
    from medseg.sam2 import Sam2VolumePredictor, load_model

    model = load_model(args.sam2, device="cpu")
    if model.untrained:
        raise SystemExit("the SAM2 model is untrained: its masks are meaningless; train one (see the usage)")
    predictor = Sam2VolumePredictor(model, store=False)
    policy = PromptPolicy(PromptSettings(point="centroid", box="middle"), seed=0)
    reference = cohort.split("train")[0]
    support = SupportSet.from_volumes([reference.load()], k=3, labels=labels, names=[reference.id])
    mrcnn = None
    if args.maskrcnn:
        from medseg.maskrcnn import load_model as load_maskrcnn

        mrcnn = load_maskrcnn(args.maskrcnn)
    out: dict[str, list[Case]] = {"sam2": [], "revsam2": [], **({"maskrcnn": []} if mrcnn else {})}
    for case in cohort.split("test"):
        volume, truth = case.load()
        prompts = policy.prompts(truth, labels=labels, case_id=case.id)
        out["sam2"].append(Case(case.id, truth, predictor.segment(volume, prompts), None, prompts))
        reference_labels = segment_with_references(volume, support, mode="revsam2", model=predictor)
        out["revsam2"].append(Case(case.id, truth, reference_labels, None, anchor_prompts(reference_labels)))
        if mrcnn is not None:
            from medseg.maskrcnn import predict_instances

            prediction = predict_instances(mrcnn, volume, device="cpu")
            out["maskrcnn"].append(Case(case.id, truth, prediction.labels, prediction.instances, None))
        print(f"  predicted {case.id}", flush=True)
    return out


def variant(case: Case, rule: dict | None) -> tuple[LabelVolume, LabelVolume | InstanceMap, dict[int, list[int]]]:
    """(labels for Dice, what mask AP scores, dropped voxels per label) of the raw output or its objects."""
    if rule is None:
        return case.raw, case.instances if case.instances is not None else case.raw, {}
    objects = clean_objects(case.raw, instances=case.instances, prompts=case.anchors, **rule)
    return objects.labels, objects.instances, objects.dropped


def lost_components(raw: LabelVolume, labels: LabelVolume, truth: LabelVolume, values) -> int:
    """True components the raw output overlaps and ``labels`` does not (the rule took them away)."""
    lost = 0
    for v in values:
        components, count = ndimage.label(truth.array == v, structure=_FULL)
        for k in range(1, count + 1):
            inside = components == k
            lost += bool((raw.array[inside] == v).any() and not (labels.array[inside] == v).any())
    return lost


def score(cases: list[Case], values: list[int], rule: dict | None) -> dict:
    means, dice, hd95, nsd, pairs, counts, lost, dropped = [], [], [], [], [], [], 0, []
    for case in cases:
        labels, ap_item, gone = variant(case, rule)
        metrics = evaluate(labels, case.truth, labels=values, surface_tolerance_mm=2.0)
        means.append(metrics.mean_dice)
        dice.append(metrics.dice)
        hd95.append(metrics.hd95_mm)
        nsd.append(metrics.surface_dice)
        pairs.append((ap_item, case.truth))
        counts.append((instance_counts(ap_item, labels=values), instance_counts(case.truth, labels=values)))
        lost += lost_components(case.raw, labels, case.truth, values)
        dropped += [size for sizes in gone.values() for size in sizes]
    per_label = lambda rows: {v: [r[v] for r in rows] for v in values}
    return {
        "mean_dice": float(np.mean(means)),
        "dice": {v: float(np.nanmean(s)) for v, s in per_label(dice).items()},
        "hd95": {v: float(np.median([x for x in s if np.isfinite(x)])) for v, s in per_label(hd95).items()},
        "nsd": {v: float(np.nanmean(s)) for v, s in per_label(nsd).items()},
        "ap2d": mask_ap(pairs, labels=values, mode="2d"),
        "ap3d": mask_ap(pairs, labels=values, mode="3d"),
        "counts": counts, "lost": lost, "dropped": dropped,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="cohort manifest (the demo cohort)")
    parser.add_argument("--sam2", required=True, help="trained SAM2 model directory (medseg sam2 train)")
    parser.add_argument("--maskrcnn", help="trained Mask R-CNN model directory (medseg baseline train)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cohort = load_manifest(args.manifest)
    labels = dict(cohort.labels)
    values = sorted(labels)
    print(f"cohort {cohort.name}: {len(cohort.split('test'))} test cases, labels {labels}; SAM2 {args.sam2}")
    predictions = predict(args, cohort, labels)
    names = " / ".join(labels.values())
    print(f"\nraw vs objects (min_fraction {MIN_FRACTION}, min_score {MIN_SCORE}); per label: {names}")
    header = ["method", "output", "mean Dice", "Dice", "HD95 median mm", "surface Dice", "AP 2D", "AP 3D",
              "AP 3D per label", "instances per case (pred; true)", "lost"]
    print(" | ".join(header))
    for method, cases in predictions.items():
        for name, rule in (("raw", None), ("objects", {})):
            s = score(cases, values, rule)
            fmt = lambda d, digits=3: " / ".join(f"{d[v]:.{digits}f}" for v in values)
            counts = "; ".join(" ".join(str(p[v]) for v in values) for p, _ in s["counts"])
            truth = "; ".join(" ".join(str(t[v]) for v in values) for _, t in s["counts"])
            print(f"{method} | {name} | {s['mean_dice']:.4f} | {fmt(s['dice'])} | {fmt(s['hd95'], 1)} | "
                  f"{fmt(s['nsd'])} | {s['ap2d'].ap:.3f} | {s['ap3d'].ap:.3f} | {fmt(s['ap3d'].per_label)} | "
                  f"{counts} ({truth}) | {s['lost']}")
    print("\nsweep (mean Dice, AP 3D, instances predicted in all, true components lost, "
          "dropped: count, largest voxels)")
    for method, cases in predictions.items():
        kept = [clean_objects(c.raw, instances=c.instances, prompts=c.anchors).instances.array for c in cases]
        smallest = [int(np.bincount(array.ravel())[1:].min()) for array in kept]
        print(f"{method}: smallest kept instance per case {smallest}")
        for fraction in (0.0, 0.02, 0.05, 0.1, 0.2, 0.5):
            for min_score in (0.0, 0.5, 0.7):
                s = score(cases, values, {"min_fraction": fraction, "min_score": min_score})
                print(f"  min_fraction {fraction:<4} min_score {min_score:<3}: {s['mean_dice']:.4f} {s['ap3d'].ap:.3f} "
                      f"{s['ap3d'].n_predicted} {s['lost']} ({len(s['dropped'])}, {max(s['dropped'], default=0)})")


if __name__ == "__main__":
    main()
