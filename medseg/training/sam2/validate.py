"""Validation of a SAM2 being trained: real propagation on the ``val`` split, Dice per label.

The network is evaluated the way it will be used: wrapped as a ``Sam2Model`` and run through
``Sam2Session`` (prompt, propagate through the whole volume with memory), with the prompts
the pipeline's ``PromptPolicy`` draws: one box on each object's middle slice, and one click at
the centroid of its largest slice. Torch's random state is left as it was.
"""

from __future__ import annotations

import numpy as np
import torch

from medseg.manifest import Case
from medseg.metrics import dice_per_label
from medseg.pipeline.config import PromptSettings
from medseg.pipeline.prompt_policy import PromptPolicy
from medseg.sam2.model import Sam2Model
from medseg.sam2.session import Sam2Session

PROMPT_MODES = {"box": PromptSettings(point="none", box="middle"), "point": PromptSettings(point="centroid", box="none")}


def validate(net: torch.nn.Module, config, preset: str, cases: list[Case], labels: dict[int, str]) -> dict:
    """``{"box": {"dice": {label: mean}, "mean_dice": x}, "point": {...}}`` over ``cases``."""
    model = Sam2Model(net.eval(), "in training", config.image_size, next(net.parameters()).device, False, None, None,
                      "in training", None)
    loaded = [case.load() for case in cases]
    result = {}
    with torch.random.fork_rng(devices=[]):
        for mode, settings in PROMPT_MODES.items():
            policy = PromptPolicy(settings, seed=config.seed)
            scores: dict[int, list[float]] = {label: [] for label in labels}
            for case, (volume, truth) in zip(cases, loaded):
                session = Sam2Session(model, volume, preset=preset)
                session.set_prompts(policy.prompts(truth, labels=labels, case_id=case.id))
                predicted = session.propagate()
                for label, dice in dice_per_label(predicted, truth, labels=labels).items():
                    if not np.isnan(dice):
                        scores[label].append(dice)
            per_label = {str(label): round(float(np.mean(v)), 4) for label, v in scores.items() if v}
            result[mode] = {"dice": per_label, "mean_dice": round(float(np.mean(list(per_label.values()))), 4) if per_label else None}
    return result
