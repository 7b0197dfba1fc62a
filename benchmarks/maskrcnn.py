"""Mask R-CNN baseline on CPU: training and inference speed per backbone, and quality after a fixed budget.

Speed: training steps per second (batch of slices, forward + backward + AdamW step) and
inference slices per second, at 256x256, for the light backbones and ResNet-50 (the paper's),
median over repeats after a warm-up, with the ratio to ResNet-50 measured in the same run.

Quality: trains on the demo cohort's train split (``medseg.phantom``, 128x128 slices) for a
fixed budget and reports Dice per label and 3D mask AP on its test split, with the wall time.

    python benchmarks/maskrcnn.py            # full: 5 repeats, 300-step budget
    python benchmarks/maskrcnn.py --quick    # reduced: 2 repeats, 40-step budget
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.manifest import load_manifest
from medseg.maskrcnn import TrainConfig, build_model, load_model, predict_instances
from medseg.maskrcnn.dataset import frame_bytes, instance_targets, to_tensor
from medseg.metrics import dice_per_label, mask_ap, mean_dice
from medseg.phantom import LABELS, make_phantom, write_demo_cohort
from medseg.preprocess import SliceFrames
from medseg.training.maskrcnn import train_from_cohort


def _slices(size: int, batch: int):
    volume, labels = make_phantom(0, shape=(batch + 4, size, size))
    frames = SliceFrames(volume, "ct-soft-tissue")
    zs = range(2, 2 + batch)
    images = [to_tensor(frame_bytes(frames, z)) for z in zs]
    targets = [instance_targets(labels.array[z], sorted(LABELS)) for z in zs]
    return images, targets


def _median_time(run, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed(backbones: list[str], *, size: int, batch: int, repeats: int) -> None:
    images, targets = _slices(size, batch)
    print(f"\nspeed at {size}x{size}, batch {batch}, {torch.get_num_threads()} threads, median of {repeats}")
    print(f"{'backbone':<20} {'params M':>9} {'train step/s':>13} {'infer slice/s':>14} {'train x R50':>12} "
          f"{'infer x R50':>12}")
    results = {}
    for name in backbones:
        torch.manual_seed(0)
        model = build_model(num_classes=len(LABELS), backbone=name, image_size=size)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step():
            model.train()
            loss = sum(model(images, targets).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def infer():
            model.eval()
            with torch.inference_mode():
                model(images)

        step = _median_time(train_step, repeats)
        # Inference after the training steps: the network is no longer random, so the mask
        # head sees a realistic number of detections rather than 50 random ones per slice.
        forward = _median_time(infer, repeats)
        results[name] = (1 / step, batch / forward)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<20} {params:>9.1f} {1 / step:>13.3f} {batch / forward:>14.2f}", end="")
        if "resnet50" in results:
            base = results["resnet50"]
            print(f" {results[name][0] / base[0]:>12.2f} {results[name][1] / base[1]:>12.2f}")
        else:
            print()


def quality(*, backbone: str, steps: int, batch: int, lr: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cohort = load_manifest(write_demo_cohort(tmp))
        config = TrainConfig(backbone=backbone, image_size=128, steps=steps, batch_size=batch, lr=lr,
                             val_every=0, device="cpu")
        start = time.perf_counter()
        model_dir = train_from_cohort(cohort, Path(tmp) / "model", config=config)
        trained = time.perf_counter() - start
        model = load_model(model_dir)
        dice: dict[int, list[float]] = {v: [] for v in LABELS}
        pairs = []
        start = time.perf_counter()
        test = cohort.split("test")
        for case in test:
            volume, truth = case.load()
            prediction = predict_instances(model, volume)
            for value, score in dice_per_label(prediction.labels, truth, labels=LABELS).items():
                dice[value].append(score)
            pairs.append((prediction.instances, truth))
        predicted = time.perf_counter() - start
        ap = mask_ap(pairs, labels=LABELS, mode="3d")
        per_label = {v: float(np.mean(s)) for v, s in dice.items()}
        print(
            f"\nquality: {backbone}, {steps} steps x {batch} slices (lr {lr}) on {len(cohort.split('train'))} demo "
            f"cases {cohort.cases[0].load()[0].shape}: training {trained:.0f} s, prediction "
            f"{predicted / len(test):.1f} s per case"
        )
        print("  test-split Dice: " + ", ".join(f"{LABELS[v]} {d:.3f}" for v, d in per_label.items())
              + f"; mean {mean_dice(per_label):.3f}")
        print(f"  3D mask AP {ap.ap:.3f}, AP50 {ap.ap50:.3f}, AP75 {ap.ap75:.3f} ({ap.n_truth} true, {ap.n_predicted} "
              "predicted instances)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced repeats and training budget (a loaded machine)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--backbones", default="resnet18,mobilenet_v3_large,resnet34,resnet50")
    parser.add_argument("--steps", type=int, help="training budget for the quality run (default 300; --quick 40)")
    parser.add_argument("--batch", type=int, default=2, help="slices per training step in the quality run (default 2)")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbones = args.backbones.split(",")
    if not args.skip_speed:
        # ResNet-50 first, so that every other row can be compared with it.
        order = sorted(backbones, key=lambda b: b != "resnet50")
        speed(order, size=256, batch=2, repeats=2 if args.quick else 5)
    if not args.skip_quality:
        steps = args.steps or (40 if args.quick else 300)
        quality(backbone="resnet18", steps=steps, batch=args.batch, lr=args.lr)


if __name__ == "__main__":
    main()
