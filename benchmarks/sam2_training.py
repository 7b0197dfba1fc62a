"""SAM2 training on the demo cohort: speed, and Dice on the test split versus training time.

One training run (``medseg.training.sam2.train``, the demo's settings unless told otherwise) is paused
at each milestone step (``should_stop``; training resumes bit for bit) and the weights at
that point are evaluated on the demo cohort's test split, every label, with:

(a) ``click``       one centroid click per object (largest slice), propagated with memory
(b) ``box``         one box per object on the middle slice, propagated with memory
(c) ``revsam2``     reference prompting, 1 reference case (the first train case), RevSAM2 selection
(d) ``baseline``    the same references, support-then-propagate (no selection)
(e) ``per-slice``   the box of every drawn slice, each slice prompted alone (no memory): what
                    memory propagation buys over prompting every slice
(f) ``maskrcnn``    the Mask R-CNN baseline of the demo (``--maskrcnn DIR``: a trained model
                    directory, e.g. ``results/demo/maskrcnn/model``), evaluated once

(c)-(f) run at the last milestone only. ``--p-reference`` trains with reference clips (another
case's annotated slices condition a clip of the query: ``Sam2TrainConfig.p_reference``). Speed: steps per
second and seconds per clip frame, from the run's own clock (``training_seconds``). The CPU
of the machine this ran on may be shared: the numbers say what was measured, not more.

Usage::

    python benchmarks/sam2_training.py --out /tmp/sam2-bench                   # demo settings
    python benchmarks/sam2_training.py --out /tmp/b --steps 60 --milestones 30,60 --quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from medseg.errors import Cancelled
from medseg.manifest import load_manifest
from medseg.metrics import dice_per_label
from medseg.phantom import write_demo_cohort
from medseg.prompt_simulation import PromptPolicy, PromptSettings
from medseg.sam2.model import Sam2Model
from medseg.sam2.model_dir import architecture, build_network, read_model_json
from medseg.sam2.session import Sam2Session
from medseg.training.sam2.train import CHECKPOINT, train_sam2
from medseg.training.sam2.config import Sam2TrainConfig

PROPAGATED = {"click": PromptSettings(point="centroid", box="none"), "box": PromptSettings(point="none", box="middle")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="working folder (cohort, model, results.json)")
    parser.add_argument("--manifest", help="cohort (default: the demo cohort, written into --out)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--milestones", default="50,100,150,200", help="steps at which to evaluate")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--clip-length", type=int, default=Sam2TrainConfig.clip_length, help="slices per training clip")
    parser.add_argument("--lr", type=float, default=Sam2TrainConfig.lr)
    parser.add_argument("--lr-memory", type=float, default=Sam2TrainConfig.lr_memory)
    parser.add_argument("--p-reference", type=float, default=Sam2TrainConfig.p_reference)
    parser.add_argument("--p-point", type=float, default=Sam2TrainConfig.p_point, help="first-frame click share")
    parser.add_argument("--dice-weight", type=float, default=Sam2TrainConfig.dice_weight,
                        help="dice loss weight (focal: 20)")
    parser.add_argument("--p-box", type=float, default=Sam2TrainConfig.p_box,
                        help="first-frame box share (the rest: masks)")
    parser.add_argument("--seed", type=int, default=Sam2TrainConfig.seed,
                        help="seeds initialisation, clips and prompts")
    parser.add_argument("--from", dest="start", default=Sam2TrainConfig.start,
                        help="start weights (fine-tune), e.g. a trained model directory's weights.pt")
    parser.add_argument("--train", nargs="+", default=list(Sam2TrainConfig.train), help="parts that learn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="evaluate on 2 test cases only")
    parser.add_argument("--maskrcnn", help="trained Mask R-CNN model directory for (f)")
    args = parser.parse_args()
    out = Path(args.out)
    manifest = Path(args.manifest) if args.manifest else write_demo_cohort(out / "cohort")
    cohort = load_manifest(manifest)
    config = Sam2TrainConfig(steps=args.steps, image_size=args.image_size, clip_length=args.clip_length, lr=args.lr,
                             lr_memory=args.lr_memory, threads=args.threads,
                             p_reference=args.p_reference, start=args.start, train=tuple(args.train),
                             seed=args.seed, p_point=args.p_point, p_box=args.p_box, dice_weight=args.dice_weight)
    torch.set_num_threads(args.threads)
    tests = [c for c in cohort.split("test") if c.label is not None][: 2 if args.quick else None]
    loaded = {c.id: c.load() for c in tests}
    reference = cohort.split("train")[0]
    milestones = sorted(int(m) for m in args.milestones.split(","))
    results = {"config": config.to_dict(), "cohort": cohort.name, "test_cases": list(loaded), "curve": []}
    model_dir = out / "model"
    for milestone in milestones:
        try:
            train_sam2(cohort, model_dir, config=config, should_stop=_stop_at(model_dir, milestone))
            state = read_model_json(model_dir)
            weights, seconds = None, state["training_seconds"]
        except Cancelled:
            saved = torch.load(model_dir / CHECKPOINT, map_location="cpu", weights_only=True)
            weights, seconds = saved["model"], saved["state"]["seconds"]
        model = _model(model_dir, config, weights)
        modes = dict(PROPAGATED)
        row = {"step": milestone, "training_minutes": round(seconds / 60, 2)}
        for name, settings in modes.items():
            row[name] = _propagated(model, loaded, cohort.labels, settings)
        if milestone == milestones[-1]:
            row["per-slice"] = _per_slice(model, loaded, cohort.labels)
            for mode in ("revsam2", "baseline"):
                row[mode] = _references(model, loaded, reference, cohort.labels, mode)
        results["curve"].append(row)
        print(json.dumps(row), flush=True)
    info = read_model_json(model_dir)
    frames = info["steps"] * config.batch_size * config.clip_length
    results["speed"] = {"steps_per_second": round(info["steps"] / info["training_seconds"], 4),
                        "seconds_per_clip_frame": round(info["training_seconds"] / frames, 3),
                        "training_minutes": round(info["training_seconds"] / 60, 2), "torch_threads": args.threads}
    if args.maskrcnn:
        results["maskrcnn"] = _maskrcnn(Path(args.maskrcnn), loaded, cohort.labels)
    print(json.dumps(results["speed"]))
    (out / "results.json").write_text(json.dumps(results, indent=1))


def _stop_at(model_dir: Path, milestone: int):
    """``should_stop`` that stops once the run's checkpoint or progress reaches ``milestone``."""
    steps = {"done": None}

    def stop() -> bool:
        path = model_dir / CHECKPOINT
        if steps["done"] is None:
            steps["done"] = torch.load(path, weights_only=True)["state"]["step"] if path.is_file() else 0
        else:
            steps["done"] += 1
        return steps["done"] >= milestone

    return stop


def _model(model_dir: Path, config: Sam2TrainConfig, weights) -> Sam2Model:
    from medseg.sam2 import load_model

    if weights is None:
        return load_model(model_dir, device="cpu")
    net = build_network(architecture(config.architecture, config.image_size))
    net.load_state_dict(weights)
    return Sam2Model(net.eval(), f"{model_dir} (in training)", config.image_size, torch.device("cpu"), False, None,
                     None, "", None)


def _mean(scores: list[dict[int, float]]) -> dict:
    per_label: dict[int, list[float]] = {}
    for case in scores:
        for label, value in case.items():
            if not np.isnan(value):
                per_label.setdefault(label, []).append(value)
    means = {str(k): round(float(np.mean(v)), 4) for k, v in sorted(per_label.items())}
    return {"mean_dice": round(float(np.mean(list(means.values()))), 4), "dice": means}


def _propagated(model, loaded, labels, settings) -> dict:
    policy = PromptPolicy(settings, seed=0)
    scores = []
    started = time.perf_counter()
    for case_id, (volume, truth) in loaded.items():
        session = Sam2Session(model, volume)
        session.set_prompts(policy.prompts(truth, labels=labels, case_id=case_id))
        scores.append(dice_per_label(session.propagate(), truth, labels=labels))
    return {**_mean(scores), "seconds": round(time.perf_counter() - started, 1)}


def _per_slice(model, loaded, labels) -> dict:
    """Every drawn slice prompted with its own box in a fresh session: no memory at all."""
    scores = []
    for volume, truth in loaded.values():
        predicted = np.zeros(truth.array.shape, dtype=truth.array.dtype)
        for label in labels:
            mask = truth.array == label
            for z in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1)):
                (y0, x0), (y1, x1) = np.argwhere(mask[z]).min(axis=0), np.argwhere(mask[z]).max(axis=0)
                session = Sam2Session(model, volume)
                plane = session.add_box(label, int(z), y0, x0, y1, x1)
                predicted[z][(plane == label) & (predicted[z] == 0)] = label
        scores.append(dice_per_label(predicted, truth.array, labels=labels))
    return _mean(scores)


def _references(model, loaded, reference, labels, mode: str) -> dict:
    from medseg.revsam2 import SupportSet, segment_with_references

    support = SupportSet.from_volumes([reference.load()], k=3, labels=labels, names=[reference.id])
    scores = [dice_per_label(segment_with_references(volume, support, mode=mode, model=model), truth, labels=labels)
              for volume, truth in loaded.values()]
    return _mean(scores)


def _maskrcnn(directory: Path, loaded, labels) -> dict:
    from medseg.maskrcnn import load_model, predict_instances

    model = load_model(directory)
    scores = [dice_per_label(predict_instances(model, volume).labels, truth, labels=labels)
              for volume, truth in loaded.values()]
    return {**_mean(scores), "steps": model.steps}


if __name__ == "__main__":
    main()
