"""How a selected query slice prompts the re-prompt pass (RevSAM2 step d): ``reprompt_mask``.

The forward pass tracks each label from another patient's supports, and SAM2's memory carries
their object's *size* along: on the demo phantoms a reference with a small liver (600-1,000
pixels a slice) gave forward liver masks of 900-1,250 pixels on every slice of a query whose
liver covers 1,300-4,700, nearly all of them inside the liver (precise, a quarter of it found).
Re-prompting with that mask (``"mask"``, RevSAM2 as published) propagates the shortfall. With
``"box"`` the selected slice is first segmented again on its own, with no memory: each
connected part of the forward mask gives its bounding box as a box prompt on the query's own
image, so SAM2 draws the query's object to its own edges, and the union of those masks is the
re-prompt's mask. Parts smaller than ``parts.MIN_PART_FRACTION`` of the largest are specks and
give no box. A part whose box decodes to nothing keeps its forward pixels.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from medseg.errors import ConfigError
from medseg.prompt_simulation import bounding_box
from medseg.revsam2.defaults import REPROMPTS
from medseg.revsam2.parts import significant_parts
from medseg.sam2.engine import FeatureCache, Tracker
from medseg.sam2.frames import Frame
from medseg.sam2.model import Sam2Model

Reprompt = Literal["mask", "box"]


def check_reprompt(reprompt: str) -> None:
    if reprompt not in REPROMPTS:
        raise ConfigError(f"reprompt must be one of {REPROMPTS}, got {reprompt!r}")


def reprompt_mask(model: Sam2Model, cache: FeatureCache, frame: Frame, forward: np.ndarray,
                  reprompt: Reprompt) -> np.ndarray:
    """The mask a selected query slice conditions the re-prompt with (see the module docstring).

    ``forward``: the label's non-empty ``(y, x)`` forward mask on ``frame``.
    """
    check_reprompt(reprompt)
    if reprompt == "mask":
        return forward
    tracker = Tracker(model, [frame], cache)
    mask = np.zeros_like(forward)
    for part in significant_parts(forward):
        decoded = tracker.set_prompts(0, 1, box_yxyx=bounding_box(part)).masks()[0]  # replaces the last part's box
        mask |= decoded if decoded.any() else part
    tracker.clear_prompts(0, 1)  # unpins the slice's features in the shared cache
    return mask
