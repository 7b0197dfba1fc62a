"""Validation of a SAM2 being trained: real propagation on held-out volumes, Dice per structure.

The network is evaluated the way it will be used: wrapped as a ``Sam2Model`` and run through
``Sam2Session`` (prompt, propagate through the whole volume with memory), with the prompts the
pipeline's ``PromptPolicy`` draws: one box on each object's middle slice, and one click at the
centroid of its largest slice. Each object is prompted alone (its own session), so what is measured is
how well the model follows that one prompt, not how objects share out voxels. The volumes are the
cohort's ``val`` split, or, when training on synthetic scenes only, ``VALIDATION_SCENES`` held-out
scenes on a non-square, anisotropic grid, half of them made of the kinds training never draws
(``cuboid``, ``rim``), so a pretraining run shows how prompt-following carries to unseen objects as it
goes. Dice is averaged per structure name (a cohort's label names; a scene's object kinds). Torch's
random state is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from medseg.manifest import Cohort
from medseg.metrics import dice_per_label
from medseg.preprocess import IntensityPreset, get_preset
from medseg.prompt_simulation import PromptPolicy, PromptSettings
from medseg.prompts import Prompts
from medseg.sam2.network import Sam2Model
from medseg.sam2.session import Sam2Session
from medseg.synthetic import KINDS, TRAINING_KINDS, synthetic_volume
from medseg.volume import LabelVolume, Volume

PROMPT_MODES = {"box": PromptSettings(point="none", box="middle"),
                "point": PromptSettings(point="centroid", box="none")}
VALIDATION_SCENES = 6
SYNTHETIC_PRESET = get_preset("ct:0.5,1")  # scenes are grey values in [0, 1] already: the identity window
"""The intensity preset of synthetic volumes: the window [0, 1], i.e. the grey values as they are."""


@dataclass(frozen=True, eq=False)
class ValidationCase:
    id: str
    volume: Volume
    truth: LabelVolume
    names: dict[int, str]
    preset: str | IntensityPreset | None


def validation_cases(cohort: Cohort | None, config) -> list[ValidationCase]:
    """The cohort's labelled ``val`` cases, or held-out synthetic scenes when there is no cohort."""
    if cohort is not None:
        return [ValidationCase(c.id, *c.load(), dict(cohort.labels), config.preset)
                for c in cohort.split("val") if c.label is not None]
    held_out = tuple(k for k in KINDS if k not in TRAINING_KINDS)
    cases = []
    for i in range(VALIDATION_SCENES):
        kinds = config.synthetic.kinds if i % 2 == 0 else held_out
        synthetic = replace(config.synthetic, kinds=kinds)
        volume, truth = synthetic_volume(1_000_000 + i, shape=(16, 96, 128), spacing=(2.5, 1.0, 0.75), config=synthetic)
        cases.append(ValidationCase(f"scene-{i}", volume, truth, dict(truth.label_names), SYNTHETIC_PRESET))
    return cases


def validate(net: torch.nn.Module, config, preset: str | None, cases: list[ValidationCase]) -> dict:
    """``{"box": {"dice": {structure: mean}, "mean_dice": x}, "point": {...}}`` over ``cases``."""
    model = Sam2Model(net.eval(), "in training", config.image_size, next(net.parameters()).device, False, None, None,
                      "in training", None)
    result = {}
    with torch.random.fork_rng(devices=[]):
        for mode, settings in PROMPT_MODES.items():
            policy = PromptPolicy(settings, seed=config.seed)
            scores: dict[str, list[float]] = {}
            for case in cases:
                prompts = policy.prompts(case.truth, labels=case.names, case_id=case.id)
                for label, name in case.names.items():
                    if label not in prompts.objects:
                        continue  # not drawn in this case
                    session = Sam2Session(model, case.volume, preset=case.preset or preset, store=False)
                    session.set_prompts(Prompts({label: prompts.objects[label]}))
                    dice = dice_per_label(session.propagate(), case.truth, labels={label: name})[label]
                    scores.setdefault(name, []).append(dice)
            per_name = {name: round(float(np.mean(v)), 4) for name, v in sorted(scores.items())}
            result[mode] = {"dice": per_name,
                            "mean_dice": round(float(np.mean(list(per_name.values()))), 4) if per_name else None}
    return result
