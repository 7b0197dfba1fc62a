"""Prompt priors: a click or a box also given to SAM2 as a dense mask, through SAM's mask-prompt input.

SAM's sparse prompt path (point and box embeddings cross-attending to the image) has to learn which
image position a coordinate names; from random initialisation on a CPU that took thousands of steps
and was still not learned (a decoder trained 1,500 steps on synthetic scenes: box IoU 0.17, below the
0.56 of the box itself). The mask input is added to the image embedding position by position, so
the same prompt drawn as a mask is aligned with the image from the first step (1,000 steps: 0.54,
`benchmarks`-style measurement in the README). Models trained with priors (``prompt_prior`` in their
architecture: medseg's base model and its fine-tunes) get the prior wherever a frame's first prompt
has points and no earlier mask; Meta's checkpoints never do.

The prior is a logit map at the model's input size: +10 inside every box and within ``radius`` of
every positive click, -10 elsewhere (SAM2's own mask prompts are +-10 too). Negative clicks only
travel the sparse path.
"""

from __future__ import annotations

import torch

PRIOR_LOGIT = 10.0
CLICK_RADIUS = 3.0  # pixels of a 128-pixel frame; scaled with the frame


def prompt_prior(point_coords: torch.Tensor, point_labels: torch.Tensor, image_size: int) -> torch.Tensor:
    """``(B, 1, S, S)`` prior logits of SAM2 point inputs: ``point_coords`` ``(B, N, 2)`` model ``(x, y)``,
    ``point_labels`` ``(B, N)`` (1 click, 0 negative click, 2 and 3 a box's corners, -1 padding).

    >>> prior = prompt_prior(torch.tensor([[[2.0, 1.0], [5.0, 3.0]]]), torch.tensor([[2, 3]]), 8)
    >>> for row in (prior[0, 0] > 0).int().tolist()[:5]:
    ...     print(row)
    [0, 0, 0, 0, 0, 0, 0, 0]
    [0, 0, 1, 1, 1, 1, 0, 0]
    [0, 0, 1, 1, 1, 1, 0, 0]
    [0, 0, 1, 1, 1, 1, 0, 0]
    [0, 0, 0, 0, 0, 0, 0, 0]
    """
    device = point_coords.device
    grid = torch.arange(image_size, dtype=torch.float32, device=device)
    yy, xx = grid.view(1, -1, 1), grid.view(1, 1, -1)
    inside = torch.zeros(point_coords.shape[0], image_size, image_size, dtype=torch.bool, device=device)
    radius = CLICK_RADIUS * image_size / 128
    for b in range(point_coords.shape[0]):
        coords, labels = point_coords[b].float(), point_labels[b]
        for x, y in coords[labels == 1]:
            inside[b] |= ((xx[0] - x) ** 2 + (yy[0] - y) ** 2 <= radius ** 2)
        for (x0, y0), (x1, y1) in zip(coords[labels == 2], coords[labels == 3]):
            inside[b] |= (xx[0] >= x0 - 0.5) & (xx[0] <= x1 + 0.5) & (yy[0] >= y0 - 0.5) & (yy[0] <= y1 + 0.5)
    return torch.where(inside, PRIOR_LOGIT, -PRIOR_LOGIT)[:, None]
