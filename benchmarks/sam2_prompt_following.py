"""Does a SAM2 model segment what it is prompted with, wherever it is? Dice per prompt type and structure.

Each object is prompted on one slice with one click (the voxel nearest the centroid of its largest
cross-section), one box (its bounding box on the middle slice of its extent) or one mask (its
largest cross-section), then propagated through the whole volume with memory. By default every
object is prompted *alone* (its own session: nothing else competes for its voxels); ``together``
prompts all objects of a volume in one session, as the demo pipeline does. ``--parts`` prompts each
connected part of a label (each of the two kidneys) as its own object, as the demo pipeline's
``prompts: {parts: true}`` does; without it, one click or box stands for both kidneys.

Sets:

(a) ``as-made``    held-out demo phantoms (seeds 4-7, as ``medseg demo-data`` makes them)
    ``other-grid`` the same phantoms on another grid (24 x 96 x 160, 3.0 x 1.0 x 0.7 mm)
(b) ``mirrored``   the same volumes flipped left-right
    ``rotated``    the same volumes rotated 90 degrees in-plane
    ``moved``      the same seeds with the organs rearranged (``make_phantom(layout="moved")``)
(c) ``unseen``     structures the model never saw as objects: a rim-enhancing lesion inside the liver
                   and the vertebra of the same phantoms (labels 4 and 5), and synthetic volumes made
                   only of the kinds training never draws (``cuboid``, ``rim``) on a non-square grid
(d) ``mni152``     grey and white matter of the MNI152 test slabs (right hemisphere), MRI preset

``--model``: a registry name (``medseg-micro``), a model directory, or a float16 snapshot of a
training run (``DIR/training/snapshots/step-NNNNNN.pt``, hiera-micro at 128). ``--quick``: 2 phantoms,
click and box only (for curves over snapshots). Prints one JSON line per (set, prompt, mode) and a
summary; ``--out`` writes everything as JSON. Numbers are what this machine measured, nothing more.

Usage::

    python benchmarks/sam2_prompt_following.py --model medseg-micro --out /tmp/pf.json
    python benchmarks/sam2_prompt_following.py --model results/demo/sam2-model/<digest> --sets a,b --together
    for s in DIR/training/snapshots/*.pt; do python benchmarks/sam2_prompt_following.py --model $s --quick; done
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.metrics import dice_per_label
from medseg.phantom import make_phantom
from medseg.prompt_simulation import bounding_box, centroid_voxel, connected_parts, largest_slice, middle_slice
from medseg.prompts import Prompts
from medseg.runtime import read_training_state
from medseg.sam2 import Sam2Session, load_model
from medseg.sam2.model_dir import architecture, build_network
from medseg.sam2.network import Sam2Model, load_state
from medseg.synthetic import SyntheticConfig, synthetic_volume
from medseg.training.sam2.validate import SYNTHETIC_PRESET
from medseg.volume import LabelVolume, Volume

TEST_SEEDS = (4, 5, 6, 7)  # the demo cohort's test split
PROMPTS = ("click", "box", "mask")
CT = "ct-soft-tissue"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sets", default="a,b,c,d", help="which of a, b, c, d")
    parser.add_argument("--quick", action="store_true", help="2 phantoms, click and box only")
    parser.add_argument("--together", action="store_true", help="also prompt all objects of a volume in one session")
    parser.add_argument("--parts", action="store_true",
                        help="prompt each connected part of a label (each kidney) as its own object")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _model(args.model)
    seeds = TEST_SEEDS[:2] if args.quick else TEST_SEEDS
    prompts = PROMPTS[:2] if args.quick else PROMPTS
    results = {"model": model.name, "untrained": model.untrained, "quick": args.quick, "parts": args.parts, "sets": {}}
    for name, cases in _sets(args.sets.split(","), seeds):
        started = time.perf_counter()
        results["sets"][name] = {}
        for prompt in prompts:
            modes = ("alone", "together") if args.together else ("alone",)
            for mode in modes:
                row = _evaluate(model, cases, prompt, together=mode == "together", parts=args.parts)
                results["sets"][name][f"{prompt}/{mode}"] = row
                print(json.dumps({"set": name, "prompt": prompt, "mode": mode, **row}), flush=True)
        results["sets"][name]["seconds"] = round(time.perf_counter() - started, 1)
    _summary(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


def _model(spec: str) -> Sam2Model:
    path = Path(spec)
    if path.suffix == ".pt" and path.parent.name == "snapshots":
        run = read_training_state(path.parents[1] / "checkpoint.pt")["config"]  # the run's settings
        net = build_network(architecture("hiera-micro", 128, prompt_prior=bool(run.get("prompt_prior")),
                                         single_mask_tracking=bool(run.get("single_mask_tracking"))))
        load_state(net, torch.load(path, map_location="cpu", weights_only=True), source=str(path),
                   network="hiera-micro at 128", remedy="snapshots here are of hiera-micro at image size 128")
        return Sam2Model(net.eval(), f"snapshot {path}", 128, torch.device("cpu"), False, path, None, "", None)
    return load_model(spec, device="cpu")


def _sets(wanted: list[str], seeds: tuple[int, ...]):
    """``(name, [(case id, volume, truth, names, preset)])`` for every wanted set."""
    phantoms = {s: make_phantom(s) for s in seeds}
    if "a" in wanted:
        yield "as-made", [(f"p{s}", v, t, _organs(t), CT) for s, (v, t) in phantoms.items()]
        yield "other-grid", [(f"p{s}", *_with_names(make_phantom(s, shape=(24, 96, 160), spacing=(3.0, 1.0, 0.7))), CT)
                             for s in seeds]
    if "b" in wanted:
        yield "mirrored", [(f"p{s}", *_transformed(v, t, lambda a: a[:, :, ::-1]), CT)
                           for s, (v, t) in phantoms.items()]
        yield "rotated", [(f"p{s}", *_transformed(v, t, lambda a: np.rot90(a, 1, axes=(1, 2))), CT)
                          for s, (v, t) in phantoms.items()]
        yield "moved", [(f"p{s}", *_with_names(make_phantom(s, layout="moved")), CT) for s in seeds]
    if "c" in wanted:
        extra = [(f"p{s}", *make_phantom(s, lesion=True, label_vertebra=True)) for s in seeds]
        yield "unseen", ([(case_id, v, t, {4: "lesion", 5: "vertebra"}, CT) for case_id, v, t in extra]
                         + [(f"scene{i}", *_unseen_scene(3_000_000 + i), SYNTHETIC_PRESET) for i in range(len(seeds))])
    if "d" in wanted:
        yield "mni152", _mni152(len(seeds))


def _organs(truth: LabelVolume) -> dict[int, str]:
    return {v: truth.label_names.get(v, str(v)) for v in truth.labels if v <= 3}


def _with_names(pair: tuple[Volume, LabelVolume]) -> tuple[Volume, LabelVolume, dict[int, str]]:
    volume, truth = pair
    return volume, truth, {v: truth.label_names.get(v, str(v)) for v in truth.labels}


def _unseen_scene(seed: int) -> tuple[Volume, LabelVolume, dict[int, str]]:
    """A synthetic volume of the held-out kinds; only those objects are scored (a rim lesion's organ is a blob)."""
    volume, truth = synthetic_volume(seed, shape=(20, 96, 144), spacing=(2.5, 0.9, 0.7),
                                     config=SyntheticConfig(kinds=("cuboid", "rim"), objects=(2, 4)))
    return volume, truth, {v: n for v, n in truth.label_names.items() if n in ("cuboid", "rim")}


def _transformed(volume: Volume, truth: LabelVolume, op) -> tuple[Volume, LabelVolume, dict[int, str]]:
    """The same voxels moved by ``op`` on the same grid: the anatomy arranged otherwise."""
    array, labels = np.ascontiguousarray(op(volume.array)), np.ascontiguousarray(op(truth.array))
    moved = Volume(array, volume.geometry, volume.modality)
    return moved, LabelVolume(labels, volume.geometry, label_names=truth.label_names), _organs(truth)


def _mni152(n: int):
    from medseg.datasets import write_mni152_hemisphere_cohort
    from medseg.manifest import load_manifest

    cohort = load_manifest(write_mni152_hemisphere_cohort(Path(tempfile.gettempdir()) / "medseg-bench-mni"))
    cases = [c for c in cohort.split("test") if c.label is not None][:n]
    return [(c.id, *c.load(), dict(cohort.labels), "mri") for c in cases]


def _prompts(truth: np.ndarray, label: int, kind: str, name: str, *, parts: bool) -> Prompts:
    """One prompt of ``kind`` on the label; with ``parts``, one on each of its connected parts (each its
    own object, numbered on from the highest label value, merged back into the label)."""
    prompts = Prompts()
    pieces = connected_parts(truth == label) if parts else [truth == label]
    for index, mask in enumerate(pieces):
        obj_id = label if index == 0 else int(truth.max()) + index
        prompts.object(obj_id, name, label=label)
        if kind == "click":
            z = largest_slice(mask)
            prompts.add_point(obj_id, z, *centroid_voxel(mask[z]))
        elif kind == "box":
            z = middle_slice(mask)
            prompts.add_box(obj_id, z, *bounding_box(mask[z]))
        else:
            z = largest_slice(mask)
            prompts.add_mask(obj_id, z, mask[z])
    return prompts


def _evaluate(model: Sam2Model, cases, prompt: str, *, together: bool, parts: bool) -> dict:
    """Mean Dice per structure name over the cases, the mean over structures, and ``leak``: the share of
    an object's predicted voxels that lie in *another* labelled structure (what a neighbour prompted in
    the same session would have taken back)."""
    scores: dict[str, list[float]] = {}
    leaks: dict[str, list[float]] = {}
    for case_id, volume, truth, names, preset in cases:
        present = {v: n for v, n in names.items() if (truth.array == v).any()}
        groups = [list(present)] if together else [[v] for v in present]
        for group in groups:
            session = Sam2Session(model, volume, preset=preset, store=False)
            prompts = Prompts()
            for label in group:
                prompts.objects.update(_prompts(truth.array, label, prompt, present[label], parts=parts).objects)
            session.set_prompts(prompts)
            predicted = session.propagate()
            for label, dice in dice_per_label(predicted, truth, labels={v: present[v] for v in group}).items():
                scores.setdefault(present[label], []).append(float(dice))
                mine = predicted.array == label
                others = (truth.array > 0) & (truth.array != label)
                leaks.setdefault(present[label], []).append(float((mine & others).sum() / max(mine.sum(), 1)))
    per_name = {name: round(float(np.mean(v)), 4) for name, v in sorted(scores.items())}
    leak = {name: round(float(np.mean(v)), 4) for name, v in sorted(leaks.items())}
    return {"mean_dice": round(float(np.mean(list(per_name.values()))), 4), "dice": per_name, "leak": leak}


def _summary(results: dict) -> None:
    print(f"\nmodel: {results['model']}" + (" (UNTRAINED: meaningless)" if results["untrained"] else ""))
    for name, rows in results["sets"].items():
        cells = [f"{k} {v['mean_dice']:.3f}" for k, v in rows.items() if isinstance(v, dict)]
        print(f"{name:11s} " + "  ".join(cells) + f"  ({rows['seconds']} s)")


if __name__ == "__main__":
    main()
