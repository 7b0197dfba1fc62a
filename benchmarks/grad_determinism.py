"""Which SAM2 parameters get different gradients from the same batch when torch runs on several threads.

    python benchmarks/grad_determinism.py --threads 2 --steps 12 [--no-mkldnn]

Builds the pretraining network (random weights, 64 px), then for each of ``--steps`` batches runs the
same forward and backward pass ``--repeats`` times in one process and compares every parameter's
gradient with the first pass's. Prints, per batch that differs, how many tensors differ and the last
ones in forward order: a nondeterministic op changes the gradients of what lies before it, so the last
differing parameters show where the difference enters. Two trainings with 1 thread give identical
weights; with 2 they drift apart (README, "CPU threads").

Measured on 2 cores (2026-12): with 2 threads, 1 of 45 repeats differed (74 image-encoder tensors, the
last FPN neck convs 0 and 1), with oneDNN on and off alike; started at that batch directly, 0 of 7
differed, so what ran before in the process matters (memory alignment: MKL's kernels round by it).
With MKL_CBWR=COMPATIBLE MKL_DYNAMIC=FALSE, 0 of 27; with 1 thread, 0 of 27.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch

from medseg.training.sam2 import train as sam2_train
from medseg.training.sam2.pretrain import PRETRAIN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12, help="batches")
    parser.add_argument("--first", type=int, default=0, help="first batch")
    parser.add_argument("--repeats", type=int, default=4, help="backward passes per batch")
    parser.add_argument("--no-mkldnn", action="store_true", help="torch.backends.mkldnn off (oneDNN convolutions)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.mkldnn.enabled = not args.no_mkldnn
    config = dataclasses.replace(PRETRAIN, image_size=64, p_synthetic=1.0, threads=None)
    net, _ = sam2_train._network(sam2_train._architecture(config), config)
    net.train()
    sampler = sam2_train.ClipSampler([], sam2_train._clip_settings(config, []), image_size=config.image_size)

    def gradients(step: int) -> dict[str, torch.Tensor]:
        net.zero_grad(set_to_none=True)
        rng = np.random.default_rng([config.seed, step])
        torch.manual_seed(step)
        loss, _ = sam2_train.clip_loss(net, sampler.clip(rng), rng, correction_clicks=config.correction_clicks,
                                       dice_weight=config.dice_weight, image_prompts=config.image_prompts,
                                       encoder_grad="image_encoder" in config.train)
        loss.backward()
        return {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}

    compared = differing = 0
    for step in range(args.first, args.first + args.steps):
        first = gradients(step)
        for _ in range(args.repeats - 1):
            again = gradients(step)
            names = [name for name in first if not torch.equal(first[name], again[name])]
            compared += 1
            if names:
                differing += 1
                print(f"batch {step}: {len(names)} of {len(first)} gradients differ; last in forward order: "
                      f"{', '.join(names[-4:])}")
    print(f"threads {args.threads}, mkldnn {'off' if args.no_mkldnn else 'on'}: {differing} of {compared} repeated "
          "backward passes gave other gradients")


if __name__ == "__main__":
    main()
