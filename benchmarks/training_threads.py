"""Seconds per training step with 1 torch thread and with every core, for SAM2 and Mask R-CNN training.

    python benchmarks/training_threads.py [--repeats 2] [--steps 6]

The demo's recipes on the demo cohort (``medseg demo-data``): SAM2 fine-tuned from the shipped
``medseg-micro``, Mask R-CNN (resnet18, 128 px). Each run trains ``--steps`` and 2 steps in fresh
folders; the difference divided by the extra steps is the time per step (setup and model loading
cancel out). Prints the median over ``--repeats`` and the ratio. Run it on a quiet machine and on a
busy one: the training defaults (1 thread) rest on both.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from medseg.maskrcnn import TrainConfig
from medseg.manifest import load_manifest
from medseg.phantom import write_demo_cohort
from medseg.training.maskrcnn import train_from_cohort
from medseg.training.sam2.config import Sam2TrainConfig
from medseg.training.sam2.train import train_sam2

SAM2 = Sam2TrainConfig(start="medseg-micro", clip_length=4, lr=1e-4, warmup_steps=0, val_every=0, device="cpu")
MASKRCNN = TrainConfig(backbone="resnet18", image_size=128, batch_size=2, lr=3e-4, warmup_steps=0, val_every=0,
                       device="cpu")


def seconds(train, cohort, config, folder: Path) -> float:
    started = time.perf_counter()
    train(cohort, folder, config=config)
    return time.perf_counter() - started


def per_step(train, cohort, config, steps: int, work: Path) -> float:
    short = seconds(train, cohort, dataclasses.replace(config, steps=2), work / "short")
    long = seconds(train, cohort, dataclasses.replace(config, steps=steps), work / "long")
    return (long - short) / (steps - 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        cohort = load_manifest(write_demo_cohort(Path(tmp) / "demo"))
        for name, train, config in (("sam2", train_sam2, SAM2), ("maskrcnn", train_from_cohort, MASKRCNN)):
            medians = {}
            for threads in (1, cores):
                runs = []
                for repeat in range(args.repeats):
                    work = Path(tmp) / f"{name}-{threads}-{repeat}"
                    runs.append(per_step(train, cohort, dataclasses.replace(config, threads=threads), args.steps, work))
                medians[threads] = statistics.median(runs)
            print(f"{name}: {medians[1]:.2f} s/step with 1 thread, {medians[cores]:.2f} s/step with {cores} "
                  f"({medians[cores] / medians[1]:.2f}x)")


if __name__ == "__main__":
    main()
