"""SAM2 propagation through a volume: medseg's in-memory path vs the official JPEG-folder route.

For each number of slices, each variant runs in a fresh subprocess (so peak RSS is its own):

(a) ``medseg``: ``Sam2VolumePredictor.segment`` on the in-memory ``Volume`` (lazy frames,
    shared feature cache, bounded SAM2 state).
(b) ``official``: write the slices as JPEG frames (the same intensity window), then
    ``SAM2VideoPredictor.init_state(folder)``, ``add_new_mask`` and ``propagate_in_video``
    forwards and backwards, collecting masks into a label array as a user would.

Both use the same architecture (SAM 2.1 Hiera-T, random weights), the same image size, one
mask prompt on the middle slice, and keep the volume in memory throughout. Reported per
variant (median of ``--repeats`` runs): seconds per slice (for (b) including the JPEG writing
and frame loading, shown separately), image-encoder seconds and calls vs the rest, peak RSS,
and RSS growth over the footprint of the loaded model (after one warm-up encoder pass) and
the volume.

Usage::

    python benchmarks/sam2_propagation.py            # 512x512, 32/64/128 slices, image size 512
    python benchmarks/sam2_propagation.py --quick    # 96x128, 8/16/32 slices, image size 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _volume(n: int, size: int):
    from medseg.geometry import Geometry
    from medseg.volume import Volume

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[:n, :size, :size]
    radius = size * (0.15 + 0.1 * np.sin(np.pi * z / n))
    array = (np.where((y - size / 2) ** 2 + (x - size / 2) ** 2 < radius**2, 60.0, -50.0)
             + rng.normal(0, 15, (n, size, size)))
    return Volume(array.astype(np.float32), Geometry((n, size, size), (2.0, 0.8, 0.8)), modality="CT")


def _warm_up_and_time_encoder(net, image_size: int) -> list[float]:
    """Run the encoder once (its working memory is part of the model's footprint), then wrap
    ``net.forward_image`` to record the seconds of each later call."""
    import torch

    with torch.inference_mode():
        net.forward_image(torch.zeros(1, 3, image_size, image_size))
    seconds: list[float] = []
    inner = net.forward_image

    def forward_image(images):
        start = time.perf_counter()
        out = inner(images)
        seconds.append(time.perf_counter() - start)
        return out

    net.forward_image = forward_image
    return seconds


def _worker(variant: str, n: int, size: int, image_size: int) -> dict:
    import torch

    torch.manual_seed(0)
    volume = _volume(n, size)
    mid = n // 2
    seed_mask = volume.array[mid] > 0
    result: dict = {"variant": variant, "slices": n}
    if variant == "medseg":
        from medseg.prompts import Prompts
        from medseg.sam2 import Sam2VolumePredictor

        predictor = Sam2VolumePredictor("untrained", image_size=image_size, device="cpu",
                                        preset="ct-soft-tissue", store=False)
        encoder = _warm_up_and_time_encoder(predictor.model.net, image_size)
        base = _rss_mb()
        start = time.perf_counter()
        labels = predictor.segment(volume, Prompts().add_mask(1, mid, seed_mask))
        result["seconds"] = time.perf_counter() - start
        result["io_seconds"] = 0.0
        result["foreground"] = int((labels.array == 1).sum())
    else:
        from PIL import Image
        from sam2.build_sam import build_sam2_video_predictor

        from medseg.preprocess import SliceFrames

        net = build_sam2_video_predictor(
            "configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu",
            hydra_overrides_extra=[f"++model.image_size={image_size}"],
        )
        encoder = _warm_up_and_time_encoder(net, image_size)
        base = _rss_mb()
        labels = np.zeros(volume.shape, dtype=np.int32)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            frames = SliceFrames(volume, "ct-soft-tissue")
            for z in range(n):
                rgb = (frames[z].transpose(1, 2, 0) * 255).round().astype(np.uint8)
                Image.fromarray(rgb).save(Path(folder) / f"{z:05d}.jpg", quality=95)
            state = net.init_state(folder)
            result["io_seconds"] = time.perf_counter() - start
            net.add_new_mask(state, mid, 1, seed_mask)
            for reverse in (False, True):
                for t, _, masks in net.propagate_in_video(state, start_frame_idx=mid, reverse=reverse):
                    labels[t][masks[0, 0].numpy() > 0] = 1
            result["seconds"] = time.perf_counter() - start
        result["foreground"] = int(labels.sum())
    result["encoder_seconds"] = sum(encoder)
    result["encoder_calls"] = len(encoder)
    result["base_rss_mb"] = base
    result["peak_rss_mb"] = _peak_rss_mb()
    return result


def _run(variant: str, n: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--slices", str(n), "--size", str(args.size),
               "--image-size", str(args.image_size)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{variant} with {n} slices failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes to check the benchmark runs")
    parser.add_argument("--slices", type=int, nargs="+", help="numbers of slices (default 32 64 128; quick 8 16 32)")
    parser.add_argument("--size", type=int, help="slice size in pixels (default 512; quick 128)")
    parser.add_argument("--image-size", type=int, help="model image size (default 512; quick 128)")
    parser.add_argument("--repeats", type=int, help="fresh-process runs per point (default 3; quick 1)")
    parser.add_argument("--worker", choices=["medseg", "official"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.slices[0], args.size, args.image_size)))
        return
    args.slices = args.slices or ([8, 16, 32] if args.quick else [32, 64, 128])
    args.size = args.size or (128 if args.quick else 512)
    args.image_size = args.image_size or (128 if args.quick else 512)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"SAM 2.1 Hiera-T (random weights), image size {args.image_size}, {args.size}x{args.size} slices, CPU "
          f"({os.environ.get('OMP_NUM_THREADS', 'all')} threads), median of {repeats} fresh-process runs")
    header = (f"{'slices':>6} {'variant':>9} {'s/slice':>8} {'encoder s':>9} {'encodes':>7} {'rest s':>7} "
              f"{'jpeg+load s':>11} {'peak RSS MB':>11} {'growth MB':>9}")
    print(header)
    rows = {}
    for n in args.slices:
        for variant in ("medseg", "official"):
            runs = [_run(variant, n, args) for _ in range(repeats)]
            keys = ("seconds", "encoder_seconds", "encoder_calls", "io_seconds", "peak_rss_mb", "base_rss_mb")
            med = {k: statistics.median(r[k] for r in runs) for k in keys}
            med["growth"] = statistics.median(r["peak_rss_mb"] - r["base_rss_mb"] for r in runs)
            rows[n, variant] = med
            print(f"{n:>6} {variant:>9} {med['seconds'] / n:>8.3f} {med['encoder_seconds']:>9.2f} "
                  f"{med['encoder_calls']:>7.0f} {med['seconds'] - med['encoder_seconds'] - med['io_seconds']:>7.2f} "
                  f"{med['io_seconds']:>11.2f} {med['peak_rss_mb']:>11.0f} {med['growth']:>9.0f}")
    print("ratios medseg / official:")
    for n in args.slices:
        a, b = rows[n, "medseg"], rows[n, "official"]
        print(f"  {n:>4} slices: time {a['seconds'] / b['seconds']:.2f}x, RSS growth "
              f"{a['growth'] / max(b['growth'], 1e-9):.2f}x")
    first, last = args.slices[0], args.slices[-1]
    for variant in ("medseg", "official") if last > first else ():
        slope = (rows[last, variant]["growth"] - rows[first, variant]["growth"]) / (last - first)
        print(f"  RSS growth per extra slice, {variant}: {slope:.2f} MB")


if __name__ == "__main__":
    main()
