"""The embedding store's dtype: what float16 instead of float32 changes in labels, disk and time.

``--io``: disk bytes, write time and read time (memory-mapped load plus the float32 tensor a
session uses) per slice for each dtype at image sizes 512 and 1024, wall and CPU (process) time,
median of ``--repeats``, with features of the encoder's shapes (no model needed; reads come from
the page cache). On a shared machine the CPU times are the ones to compare.

Otherwise, labels with a trained model on a cohort:

For every labelled case of the split, each store is filled (``Sam2Session.precompute``) and a
second session reads every slice's features back from that store (no encoder run), then
propagates the pipeline's prompts (one box on each object's middle slice). The two label maps
are compared: voxels that differ and Dice per label between them. The float32 store gives the
encoder's own numbers back, so this is what storing features in float16 changes.

Usage::

    python benchmarks/store_dtype.py --io
    python benchmarks/store_dtype.py --model results/demo/sam2-model/<digest> --manifest data_manifests/demo.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medseg.manifest import load_manifest
from medseg.metrics import dice_per_label
from medseg.prompt_simulation import PromptPolicy, PromptSettings
from medseg.sam2 import load_model
from medseg.sam2.embeddings import EmbeddingStore
from medseg.sam2.session import Sam2Session


def labels_through_store(model, volume, prompts, store: EmbeddingStore) -> np.ndarray:
    Sam2Session(model, volume, store=store).precompute()
    session = Sam2Session(model, volume, store=store)  # a new in-memory cache: features come from disk
    session.set_prompts(prompts)
    labels = session.propagate().array
    assert session.cache.encoder_calls == 0, "the second session should read every slice from the store"
    return labels


def store_io(repeats: int, slices: int = 16) -> None:
    """Per-slice disk bytes, write and read seconds of each store dtype (see the module docstring)."""
    rng = np.random.default_rng(0)
    for size in (512, 1024):
        levels = [rng.normal(0, 1, shape).astype(np.float32)
                  for shape in ((32, size // 4, size // 4), (64, size // 8, size // 8), (256, size // 16, size // 16))]
        for dtype in ("float32", "float16"):
            times: dict[str, list[float]] = {"write": [], "write_cpu": [], "read": [], "read_cpu": []}
            with tempfile.TemporaryDirectory() as folder:
                volume = EmbeddingStore(folder, dtype=dtype).open("volume", "model", {})
                for _ in range(repeats):
                    wall, cpu = time.perf_counter(), time.process_time()
                    for z in range(slices):
                        volume.put(z, levels)
                    times["write"].append((time.perf_counter() - wall) / slices)
                    times["write_cpu"].append((time.process_time() - cpu) / slices)
                    wall, cpu = time.perf_counter(), time.process_time()
                    for z in range(slices):  # what FeatureCache does with a stored slice
                        [torch.from_numpy(level.astype(np.float32))[None] for level in volume.get(z)]
                    times["read"].append((time.perf_counter() - wall) / slices)
                    times["read_cpu"].append((time.process_time() - cpu) / slices)
                nbytes = volume.path(0).stat().st_size
            print(json.dumps({"image_size": size, "dtype": dtype, "mb_per_slice": round(nbytes / 2**20, 3),
                              **{f"{k}_ms_per_slice": round(1000 * statistics.median(v), 2)
                                 for k, v in times.items()}}),
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--io", action="store_true", help="disk and time per slice of each dtype (no model)")
    parser.add_argument("--repeats", type=int, default=5, help="--io: repeats (the median is printed)")
    parser.add_argument("--model", help="a trained model directory (or registry name)")
    parser.add_argument("--manifest")
    parser.add_argument("--split", default="test")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.io:
        store_io(args.repeats)
        return
    if not (args.model and args.manifest):
        parser.error("--model and --manifest are needed (or --io)")
    cohort = load_manifest(args.manifest)
    model = load_model(args.model, device="cpu")
    policy = PromptPolicy(PromptSettings(point="none", box="middle"), seed=0)
    rows, differ, total = [], 0, 0
    with tempfile.TemporaryDirectory() as folder:
        for case in [c for c in cohort.split(args.split) if c.label is not None]:
            volume, truth = case.load()
            prompts = policy.prompts(truth, labels=cohort.labels, case_id=case.id)
            half, full = (labels_through_store(model, volume, prompts,
                                               EmbeddingStore(Path(folder) / dtype, dtype=dtype))
                          for dtype in ("float16", "float32"))
            agreement = dice_per_label(half, full, labels=cohort.labels)
            differ, total = differ + int((half != full).sum()), total + half.size
            rows.append({"case": case.id, "voxels_differ": int((half != full).sum()),
                         "dice_float16_vs_float32": {cohort.labels[k]: round(float(v), 6)
                                                     for k, v in agreement.items()}})
            print(json.dumps(rows[-1]), flush=True)
    dices = [v for row in rows for v in row["dice_float16_vs_float32"].values() if not np.isnan(v)]
    print(json.dumps({"model": args.model, "cases": len(rows), "voxels_differ": differ, "voxels": total,
                      "min_dice": round(min(dices), 6), "mean_dice": round(float(np.mean(dices)), 6)}))


if __name__ == "__main__":
    main()
