"""The interactive SAM2 loop with the embedding store: click, propagate, correct, re-propagate, reopen.

Untrained SAM 2.1 Hiera-T (timing only: its masks are meaningless), CPU, a synthetic CT-like
volume. Each scenario runs in a fresh process (``--worker``), so "reopen" really is a new
process finding a warm disk store, and peak RSS is the scenario's own.

* ``cold``: empty store. First click (a mask prompt; encodes that slice), first propagation,
  a correction (negative click) on another slice, re-propagation. Target: re-propagation
  <= 0.45x the first.
* ``reopen``: new process, the store ``cold`` left. First click, propagation. Targets: click
  <= 0.5 s, propagation <= 0.45x the cold one.
* ``objects``: no store; one object vs three objects prompted on three different slices, each
  in a fresh session. Target <= 1.3x (the encoder runs once per slice for all objects).
* ``batch``: encoder seconds per slice with batches of 1, 2 and 4 slices.
* ``budget``: propagation with the in-memory budget set to 64 MB; peak RSS vs the model's.
* ``bytes``: disk bytes per slice (the default float32 store) at image size 512 and 1024.
* ``float16``: labels from a float16 store vs a float32 store (voxels that differ, Dice).

Usage::

    python benchmarks/interactive.py            # 96 slices of 512x512, image size 512
    python benchmarks/interactive.py --quick    # 16 slices of 128x128, image size 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from sam2_propagation import _rss_mb, _volume  # noqa: E402  (the same synthetic volume)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def _session(model, volume, store, **kwargs):
    from medseg.sam2 import Sam2Session

    return Sam2Session(model, volume, preset="ct-soft-tissue", store=store, **kwargs)


def _worker(scenario: str, args: argparse.Namespace) -> dict:
    from medseg.sam2 import EmbeddingStore, FeatureCache, VolumeFrames, load_model

    volume = _volume(args.slices, args.size)
    mid, other = args.slices // 2, args.slices // 2 + args.slices // 4
    seed = volume.array[mid] > 0
    model = load_model("untrained", image_size=args.image_size, device="cpu")
    base = _rss_mb()
    store = EmbeddingStore(args.store, dtype=args.dtype) if args.store else False
    result: dict = {"scenario": scenario, "base_rss_mb": base}
    if scenario in ("cold", "reopen"):
        session = _session(model, volume, store)
        result["click_s"], _ = _timed(lambda: session.add_mask(1, mid, seed))
        result["propagate_s"], first = _timed(session.propagate)
        if scenario == "cold":
            result["correct_click_s"], _ = _timed(
                lambda: session.add_point(1, other, args.size // 2, args.size // 2, positive=False))
            result["repropagate_s"], _ = _timed(session.propagate)
        result["encoder_calls"] = session.cache.encoder_calls
        np.save(Path(args.store) / f"labels-{args.dtype}-{scenario}.npy", first.array)
    elif scenario == "objects":
        for n in (1, 3):
            session = _session(model, volume, False)
            for k in range(n):
                z = mid + k * (args.slices // 8)
                session.add_mask(k + 1, z, volume.array[z] > 0)
            result[f"objects_{n}_s"], _ = _timed(session.propagate)
    elif scenario == "batch":
        frames = VolumeFrames(volume, "ct-soft-tissue")
        for size in (1, 2, 4):
            cache = FeatureCache(model, max_bytes=0, store=False)
            cache.precompute(frames[:4], batch_size=size)  # warm-up
            cache = FeatureCache(model, max_bytes=0, store=False)
            seconds, _ = _timed(lambda: cache.precompute(frames[4:4 + 16], batch_size=size))
            result[f"batch_{size}_s_per_slice"] = seconds / 16
    elif scenario == "budget":
        session = _session(model, volume, False, cache_bytes=64 * 2**20)
        session.add_mask(1, mid, seed)
        result["propagate_s"], _ = _timed(session.propagate)
    elif scenario == "bytes":
        for size in (512, 1024):
            sized = load_model("untrained", image_size=size, device="cpu")
            with tempfile.TemporaryDirectory() as folder:
                FeatureCache(sized, store=EmbeddingStore(folder)).precompute(VolumeFrames(volume, "ct-soft-tissue")[:1])
                result[f"bytes_{size}"] = sum(p.stat().st_size for p in Path(folder).glob("*/z*.npy"))
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _run(scenario: str, args: argparse.Namespace, store: str = "", dtype: str = "float16") -> dict:
    command = [sys.executable, __file__, "--worker", scenario, "--slices", str(args.slices), "--size", str(args.size),
               "--image-size", str(args.image_size), "--store", store, "--dtype", dtype]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{scenario} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {scenario} ({dtype if store else 'no store'}): "
          + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes to check the benchmark runs")
    parser.add_argument("--slices", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--store", default="", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float16", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.slices = args.slices or (16 if args.quick else 96)
    args.size = args.size or (128 if args.quick else 512)
    args.image_size = args.image_size or (128 if args.quick else 512)
    if args.worker:
        print(json.dumps(_worker(args.worker, args)))
        return
    print(f"untrained SAM 2.1 Hiera-T, image size {args.image_size}, {args.slices}x{args.size}x{args.size}, CPU, "
          f"one run per scenario (fresh process each)")
    with tempfile.TemporaryDirectory() as f16, tempfile.TemporaryDirectory() as f32:
        cold = _run("cold", args, f16)
        warm = _run("reopen", args, f16)
        _run("cold", args, f32, "float32")
        _run("reopen", args, f32, "float32")
        a, b = np.load(Path(f16) / "labels-float16-reopen.npy"), np.load(Path(f32) / "labels-float32-reopen.npy")
        differ = int((a != b).sum())
        dice = 2 * ((a > 0) & (b > 0)).sum() / max((a > 0).sum() + (b > 0).sum(), 1)
    objects = _run("objects", args)
    batch = _run("batch", args)
    budget = _run("budget", args)
    sizes = _run("bytes", args)
    print("summary:")
    print(f"  re-propagation after a correction: {cold['repropagate_s']:.1f} s vs first {cold['propagate_s']:.1f} s "
          f"= {cold['repropagate_s'] / cold['propagate_s']:.2f}x (target <= 0.45)")
    print(f"  reopen: first click {warm['click_s']:.2f} s (target <= 0.5; cold {cold['click_s']:.2f} s), propagation "
          f"{warm['propagate_s']:.1f} s = {warm['propagate_s'] / cold['propagate_s']:.2f}x cold (target <= 0.45)")
    print(f"  three objects on three slices vs one: {objects['objects_3_s'] / objects['objects_1_s']:.2f}x "
          "(target <= 1.3)")
    print("  encoder s/slice by batch: " + ", ".join(f"{k} {batch[f'batch_{k}_s_per_slice']:.3f}" for k in (1, 2, 4)))
    print(f"  peak RSS with a 64 MB feature budget: {budget['peak_rss_mb']:.0f} MB (model loaded: "
          f"{budget['base_rss_mb']:.0f} MB)")
    print(f"  disk per slice (float32): {sizes['bytes_512'] / 2**20:.2f} MB at 512, {sizes['bytes_1024'] / 2**20:.2f} "
          "MB at 1024")
    print(f"  float16 vs float32 store (untrained): {differ} voxels differ, Dice {dice:.5f}")


if __name__ == "__main__":
    main()
