"""Reference prompting: RevSAM2 vs plain support-then-propagate (time, encoder calls, Dice).

Timing (default): the query is a CT phantom (``medseg.phantom``, label 1 liver) of 64 slices,
the support 3 liver slices of another phantom. Each mode runs ``--repeats`` times in a fresh
``ReferenceSession`` (nothing cached in memory between runs; the embedding store keeps the
features of the first run unless ``MEDSEG_EMBEDDINGS=off``); reported per mode: median wall seconds,
seconds in the image encoder, encoder calls, and for RevSAM2 the reverse candidates and the
encoder calls it would need without the shared feature cache. Dice against the phantom's
truth is printed only with real weights: the untrained model's masks are meaningless. With
the untrained model no slice would pass the default threshold (its reverse scores are
noise), so the threshold is switched off to time the full pipeline, re-prompt included.

Ablation (``--ablation``): the demo cohort (``data_manifests/demo.json``): supports (3 slices
per label and reference) from ``--rotate`` sets of ``--references`` train cases each, every test
case as query, every label; mean Dice of both baselines (as published: no z-gate; and the
baseline with the z-gate) and of RevSAM2 for a grid of placement x z-gate margin x ``top_k``
x ``threshold`` x rival rejection (``--quick``: a smaller grid). One session per (reference
set, query), so forward and reverse passes run once per placement and gate, and only the
re-prompt repeats per setting. This is the run that should fix the defaults; it means something only
with real weights (the script says so when it has none). ``--register`` also runs the defaults and
the gated baseline with each reference registered onto the query first (``medseg.revsam2.register``).

Usage::

    python benchmarks/revsam2.py --quick                        # 16 slices 64x64, image size 128
    MEDSEG_EMBEDDINGS=off python benchmarks/revsam2.py --quick  # every run encodes (a query seen first)
    python benchmarks/revsam2.py                                # 64 slices 128x128, untrained at 256
    python benchmarks/revsam2.py --model medsam2 --device cuda  # real weights: Dice as well
    python benchmarks/revsam2.py --ablation --model medsam2 --device cuda
    python benchmarks/revsam2.py --ablation --quick --model medseg-micro --references 1 --rotate 3  # README table
    python benchmarks/revsam2.py --ablation --quick --model medseg-micro --references 3
    python benchmarks/revsam2.py --ablation --quick --model results/demo/sam2-model/<digest> --rotate 3 --register
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np

from medseg.manifest import load_manifest
from medseg.metrics import dice_per_label
from medseg.phantom import make_phantom
import medseg.revsam2.reverse as reverse
from medseg.revsam2 import ReferenceSession, SupportSet
from medseg.revsam2.defaults import REPROMPTS
from medseg.revsam2.register import register_reference
from medseg.revsam2.reverse import REVERSE_BATCH
from medseg.sam2 import load_model
from medseg.volume import UNTRAINED_BANNER

import revsam2_diagnose  # this folder is on sys.path
# the SAM2 benchmark's encoder timer (this folder is on sys.path)
from sam2_propagation import _warm_up_and_time_encoder

ROOT = Path(__file__).resolve().parents[1]
NO_DICE = "Dice: not measured: the model is untrained (random weights), its masks are meaningless. " \
          "Rerun with --model sam2.1-tiny or --model medsam2 (checkpoint cached or downloadable) for quality numbers."


def timing(args: argparse.Namespace, model) -> None:
    shape = (16, 64, 64) if args.quick else (64, 128, 128)
    query, truth = make_phantom(4, shape=shape)
    reference, reference_labels = make_phantom(1, shape=shape)
    support = SupportSet.from_volumes([(reference, reference_labels)], k=3, labels={1: "liver"})
    encoder = _warm_up_and_time_encoder(model.net, model.image_size)
    n, k = shape[0], len(support)
    # untrained reverse scores are noise: without a threshold the re-prompt pass always runs
    settings = {"threshold": None} if model.untrained else {}
    print(f"query {shape} (z, y, x), {k} support slices (liver), model {model.name} at {model.image_size}, "
          f"{model.device}, median of {args.repeats}{', revsam2 threshold off' if settings else ''}")
    rows = {}
    variants = {"baseline": ("baseline", None), "revsam2 1": ("revsam2", 1), "revsam2": ("revsam2", REVERSE_BATCH)}
    for name, (mode, batch) in variants.items():
        if batch is not None:  # reverse candidates per SAM2 batch: 1, as one tracker each; the default
            reverse.REVERSE_BATCH = batch
        runs = []
        for _ in range(args.repeats):
            encoder.clear()
            session = ReferenceSession(query, support, model=model, preset="ct-soft-tissue")
            start = time.perf_counter()
            labels = session.segment(mode=mode, **(settings if mode == "revsam2" else {}))
            runs.append((time.perf_counter() - start, sum(encoder), len(encoder), labels))
        seconds = statistics.median(r[0] for r in runs)
        encoder_seconds = statistics.median(r[1] for r in runs)
        calls, labels = runs[0][2], runs[0][3]
        rows[name] = seconds
        line = f"  {name:10s} {seconds:7.2f} s  encoder {encoder_seconds:6.2f} s in {calls} calls"
        if mode == "revsam2":
            detail = labels.provenance["labels"]["1"]
            candidates = detail["candidates"]
            reprompt = 0 if detail["fell_back_to_forward"] else n + k
            uncached = (n + k) + candidates * (1 + k) + reprompt
            line += (f"  ({candidates} reverse candidates; {uncached} encoder calls without the shared cache; "
                     f"selected {detail['selected_slices']})")
        if not model.untrained:
            line += f"  Dice {dice_per_label(labels, truth, labels=[1])[1]:.4f}"
        print(line)
    print(f"  revsam2 / baseline wall time: {rows['revsam2'] / rows['baseline']:.2f}x (reverse candidates "
          f"{REVERSE_BATCH} per SAM2 batch); one per batch: {rows['revsam2 1'] / rows['baseline']:.2f}x")
    registration = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        register_reference(query, reference, reference_labels)
        registration.append(time.perf_counter() - start)
    print(f"  registering the reference onto the query (register: true): {statistics.median(registration):.2f} s, "
          f"{statistics.median(registration) / rows['baseline']:.2f}x the baseline")
    if model.untrained:
        print(NO_DICE)


#: ``--register``: what runs again on the references registered onto each query (the defaults, and the baseline)
REGISTERED_RUNS = {"registered: revsam2 (defaults)": {"mode": "revsam2"},
                   "registered: baseline gate=2": {"mode": "baseline", "gate_margin": 2}}
DEFAULTS_RUN = "revsam2 matched gate=2 top_k=1 threshold=0.5 reject=True reprompt=box supports=False"
PARTS_RUNS = {"parts: revsam2 (defaults)": {"mode": "revsam2"},
              "parts: revsam2 reprompt=mask supports=True": {"mode": "revsam2", "reprompt": "mask",
                                                             "include_supports": True},
              "parts: baseline gate=2": {"mode": "baseline", "gate_margin": 2}}


def ablation(args: argparse.Namespace, model) -> None:
    cohort = load_manifest(args.manifest)
    labels = {int(v): n for v, n in cohort.labels.items() if int(v)}
    train, test = cohort.split("train"), cohort.split("test")
    # one run per reference set: --rotate sets of --references consecutive train cases
    sets = [train[i : i + args.references] for i in range(0, args.rotate * args.references, args.references)]
    if len(sets[-1]) < args.references:
        raise SystemExit(f"{len(train)} train cases cannot give {args.rotate} sets of {args.references} references")
    runs = {"baseline": {"mode": "baseline", "gate_margin": None},
            "baseline-middle": {"mode": "baseline-middle", "gate_margin": None},
            "baseline gate=2": {"mode": "baseline", "gate_margin": 2}}
    if args.quick:  # one forward and one reverse pass of revsam2 per session
        grid = [("matched", 2, 1, 0.5, True, reprompt, supports)
                for reprompt in REPROMPTS for supports in (True, False)]
        grid += [("matched", 2, 3, 0.5, True, "box", False), ("matched", 2, 1, 0.5, False, "box", False),
                 ("matched", 2, 1, None, True, "box", False)]
    else:
        grid = list(itertools.product(["matched", "before"], [None, 1, 2, 3], [1, 3, None], [None, 0.5], [True, False],
                                      REPROMPTS, [True, False]))
    for placement, gate, top_k, threshold, reject, reprompt, supports in grid:
        runs[f"revsam2 {placement} gate={gate} top_k={top_k} threshold={threshold} reject={reject} "
             f"reprompt={reprompt} supports={supports}"] = {
            "mode": "revsam2", "placement": placement, "gate_margin": gate, "top_k": top_k, "threshold": threshold,
            "reject_rivals": reject, "reprompt": reprompt, "include_supports": supports}
    print(f"ablation on {cohort.name}: reference sets {[[c.id for c in refs] for refs in sets]}, queries "
          f"{[c.id for c in test]}, labels {labels}, model {model.name} at {model.image_size}")
    if model.untrained:
        print(f"{UNTRAINED_BANNER}\nThe numbers below only show that the ablation runs; they cannot choose defaults.")
    scores: dict[str, dict[str, list[float]]] = {}
    rejected = 0
    for refs in sets:
        support = SupportSet.from_volumes([c.load() for c in refs], k=3, labels=labels, names=[c.id for c in refs])
        for case in test:
            query, truth = case.load()
            sessions = [(ReferenceSession(query, support, model=model), runs)]
            if args.register:  # the defaults again, with each reference registered onto the query first
                registered = SupportSet.from_volumes([register_reference(query, *c.load()) for c in refs], k=3,
                                                     labels=labels, names=[c.id for c in refs])
                sessions.append((ReferenceSession(query, registered, model=model), REGISTERED_RUNS))
            if args.parts:  # each connected part of a label its own object
                split = SupportSet.from_volumes([c.load() for c in refs], k=3, labels=labels,
                                                names=[c.id for c in refs], parts=True)
                sessions.append((ReferenceSession(query, split, model=model), PARTS_RUNS))
            for session, named in sessions:
                for name, options in named.items():
                    result = session.segment(**options)
                    dice = dice_per_label(result, truth, labels=list(labels), empty=np.nan)
                    for label, value in dice.items():
                        scores.setdefault(name, {}).setdefault(labels[label], []).append(value)
                    if name == DEFAULTS_RUN:
                        rejected += sum(len(d["rejected"]) for d in result.provenance["labels"].values())
            print(f"  {[c.id for c in refs]} -> {case.id}: " + ", ".join(
                f"{name} {np.nanmean([v[-1] for v in scores[name].values()]):.3f}" for name in scores), flush=True)
    width = max(map(len, scores))
    pairs = len(sets) * len(test) * len(labels)
    print(f"  {'setting':{width}s}  mean Dice over {len(sets)} reference set(s) x {len(test)} queries x "
          f"{len(labels)} labels = {pairs} pairs; per label")
    for name, per in sorted(scores.items(), key=lambda item: -np.nanmean(sum(item[1].values(), []))):
        print(f"  {name:{width}s}  {np.nanmean(sum(per.values(), [])):.3f}  "
              + "  ".join(f"{label} {np.nanmean(v):.3f}" for label, v in per.items()))
    print(f"  candidates rejected as another label's object ({DEFAULTS_RUN}): {rejected}")


def diagnose(args: argparse.Namespace, model) -> None:
    cohort = load_manifest(args.manifest)
    names = {int(v): n for v, n in cohort.labels.items()}
    references = cohort.split("train")[: args.references]
    support = SupportSet.from_volumes([case.load() for case in references], k=3, labels=names,
                                      names=[case.id for case in references])
    print(f"diagnosis on {cohort.name}: references {[c.id for c in references]}, model {model.name} at "
          f"{model.image_size}")
    diagnoses = {}
    for case in cohort.split("test"):
        query, truth = case.load()
        session = ReferenceSession(query, support, model=model)
        result = session.segment(mode="revsam2")
        diagnoses[case.id] = [revsam2_diagnose.diagnose_label(session, result, truth, label, names)
                              for label in names]
        for d in diagnoses[case.id]:
            print(f"  {case.id} {d['label']:8s} forward {d['forward']['dice_3d']:.3f} ({d['forward']['candidates']} "
                  f"candidates {d['forward']['objects']}), spearman {d['reverse']['spearman']}, selected "
                  f"{d['selection']['selected']} true {d['selection']['selected_true_dice']} (best "
                  f"{d['selection']['best_candidate']}), final {d['reprompt']['dice_3d']:.3f}")
    settings = {"model": model.name, "manifest": str(args.manifest), "references": [c.id for c in references]}
    summary = revsam2_diagnose.write(diagnoses, settings, Path(args.out))
    print(json.dumps(summary, indent=1))
    if model.untrained:
        print(NO_DICE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes to check the benchmark runs")
    parser.add_argument("--model", default="untrained", help="registry name or checkpoint path (default untrained)")
    parser.add_argument("--image-size", type=int,
                        help="model input size (default: 128 quick, 256 untrained, else the model's)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--repeats", type=int, help="runs per mode (default 3; quick 2)")
    parser.add_argument("--ablation", action="store_true",
                        help="selection settings on the demo cohort instead of timing")
    parser.add_argument("--diagnose", action="store_true",
                        help="per (query, label) and stage: JSON and figures in --out")
    parser.add_argument("--out", default="results/revsam2-diagnosis", help="folder for --diagnose")
    parser.add_argument("--manifest", default=str(ROOT / "data_manifests" / "demo.json"), help="cohort for --ablation")
    parser.add_argument("--references", type=int, default=1,
                        help="train cases per reference set (--ablation, --diagnose)")
    parser.add_argument("--register", action="store_true",
                        help="--ablation: also run the defaults with each reference registered onto the query")
    parser.add_argument("--parts", action="store_true",
                        help="--ablation: also run the defaults with each connected part of a label its own object")
    parser.add_argument("--rotate", type=int, default=1,
                        help="--ablation: reference sets, each of --references consecutive train cases (default 1)")
    args = parser.parse_args()
    args.repeats = args.repeats or (2 if args.quick else 3)
    image_size = args.image_size or (128 if args.quick else 256 if args.model == "untrained" else None)
    model = load_model(args.model, image_size=image_size, device=args.device)
    diagnose(args, model) if args.diagnose else ablation(args, model) if args.ablation else timing(args, model)


if __name__ == "__main__":
    main()
