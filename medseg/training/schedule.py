"""The learning-rate schedule both trainings use: linear warm-up, then cosine decay to 0."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, *,
                  warmup_steps: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 1% to 100% of each group's ``lr``, then cosine decay to 0 at ``steps``.

    The warm-up lasts ``warmup_steps`` but at most a quarter of the run, so that a short run
    still trains at its peak rate for a while.
    """
    warmup = min(warmup_steps, steps // 4)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
