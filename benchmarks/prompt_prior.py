"""How fast does SAM2's decoder learn to follow a box from scratch, with and without the prompt prior?

The question behind ``medseg.sam2.prompt_prior``: a hiera-micro SAM2 at image size 128 is trained
from random initialisation on synthetic scenes (``medseg.synthetic``, clip augmentation), one frame
at a time without memory (the prompted frame's task): every visible object of both frames of a
2-slice clip is prompted once with its box and once with a click, per step. Every ``--every``
steps the mean IoU of the box-prompted mask with its object is measured on 40 held-out frames
(the same ones for both runs), next to the IoU of the box rectangle itself (a model that only
copies the box scores that). ``--prior`` on: the prompts also enter as dense masks.

Usage::

    python benchmarks/prompt_prior.py --steps 1000 --prior off
    python benchmarks/prompt_prior.py --steps 1000 --prior on
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from medseg.prompt_simulation import bounding_box
from medseg.sam2.meta_internals import decode_without_memory, flatten_backbone
from medseg.sam2.model_dir import architecture, build_network
from medseg.training.sam2.clips import Clip, ClipSampler
from medseg.training.sam2.config import Sam2TrainConfig
from medseg.training.sam2.loss import _frame_terms, _image_prompt
from medseg.training.sam2.train import _clip_settings, _optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", choices=["on", "off"], required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Sam2TrainConfig(lr=args.lr, steps=args.steps, warmup_steps=100, max_objects=6, clip_length=2)
    net = build_network(architecture("hiera-micro", 128, prompt_prior=args.prior == "on")).train()
    optimizer, scheduler = _optimizer(net, config)
    sampler = ClipSampler([], _clip_settings(config, []), image_size=128)
    held_out = [sampler.clip(np.random.default_rng([123, k])) for k in range(40)]
    print(f"box rectangle IoU (copying the box): {_rectangle_iou(held_out):.3f}")
    started = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            print(f"prior {args.prior}, step {step}: box IoU {_box_iou(net, held_out):.3f} "
                  f"({(time.perf_counter() - started) / max(step, 1):.2f} s per step)", flush=True)
        if step == args.steps:
            break
        rng = np.random.default_rng([7, step])
        loss = _image_loss(net, sampler.clip(rng), rng)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        scheduler.step()


def _image_loss(net, clip: Clip, rng: np.random.Generator) -> torch.Tensor:
    """SAM2's losses of every visible (object, frame) prompted alone, once by box and once by click."""
    feats, _, sizes = flatten_backbone(net, net.forward_image(clip.images))
    pairs = [(b, t) for t in range(clip.targets.shape[1]) for b in range(clip.targets.shape[0])
             if bool(clip.targets[b, t].any())]
    masks = torch.stack([clip.targets[b, t] for b, t in pairs])
    losses = []
    for box in (True, False):
        points = torch.tensor(np.array([_image_prompt(m.numpy() > 0.5, box, rng) for m in masks]), dtype=torch.float32)
        labels = torch.tensor([[2, 3] if box else [1]] * len(pairs), dtype=torch.int32)
        sam = decode_without_memory(net, feats, sizes, [t for _, t in pairs],
                                    {"point_coords": points, "point_labels": labels})
        parts = _frame_terms(sam, masks, 5.0)
        losses.append(20 * parts["focal"] + 5 * parts["dice"] + parts["iou"] + parts["object"])
    return sum(losses) / 2


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    corners = [bounding_box(m.numpy()) for m in masks]
    return torch.tensor([[[x0, y0], [x1, y1]] for y0, x0, y1, x1 in corners], dtype=torch.float32)


def _box_iou(net, clips: list[Clip]) -> float:
    net.eval()
    ious = []
    with torch.no_grad():
        for clip in clips:
            feats, _, sizes = flatten_backbone(net, net.forward_image(clip.images[:1]))
            masks = clip.targets[:, 0] > 0.5
            labels = torch.tensor([[2, 3]] * len(masks), dtype=torch.int32)
            sam = decode_without_memory(net, feats, sizes, [0] * len(masks),
                                        {"point_coords": _boxes(masks), "point_labels": labels})
            predicted = sam[4][:, 0] > 0
            ious += [float((p & m).sum() / max(int((p | m).sum()), 1)) for p, m in zip(predicted, masks)]
    net.train()
    return float(np.mean(ious))


def _rectangle_iou(clips: list[Clip]) -> float:
    ious = []
    for clip in clips:
        for mask in (clip.targets[:, 0] > 0.5).numpy():
            y0, x0, y1, x1 = bounding_box(mask)
            rectangle = np.zeros_like(mask)
            rectangle[y0:y1 + 1, x0:x1 + 1] = True
            ious.append((rectangle & mask).sum() / (rectangle | mask).sum())
    return float(np.mean(ious))


if __name__ == "__main__":
    main()
