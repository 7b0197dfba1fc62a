"""Support-then-propagate: one object tracked through the query from conditioning masks.

This is the FS-MedSAM2 / plain-SAM2 baseline, and also the engine of RevSAM2's forward and
re-prompt passes, which differ only in which masks condition the tracker.

Frame layout of one ``Tracker`` (one per label; frames are lazy, features come from a cache
shared by every tracker of a run):

* *External* supports (slices of other volumes) are conditioning frames placed ``"before"``
  the query slices, or in the ``"middle"`` of them (FS-MedSAM2's two variants).
* Conditioning masks *on query slices* (supports annotated on the query itself, RevSAM2's
  selected slices) sit at their own slice, and their output is the mask exactly.

Propagation: when the query has conditioning slices, each query slice is reached from the
nearest of them, both ways (``medseg.sam2.session.plan_runs``), with every external support
still in memory. Otherwise one forward run from the supports placed before, or, for the
middle placement, one run forwards and one backwards from the supports. Every query slice
gets exactly one prediction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from medseg.errors import ConfigError
from medseg.sam2.engine import FeatureCache, Tracker
from medseg.sam2.frames import Frame, upsample_logits
from medseg.sam2.model import Sam2Model
from medseg.sam2.session import plan_runs

Placement = Literal["before", "middle"]
PLACEMENTS = ("before", "middle")

#: Logit given to pixels of an exact (conditioning) mask: far beyond any predicted logit.
_EXACT_LOGIT = np.float32(1e4)


@dataclass(frozen=True, eq=False)
class ObjectTrack:
    """One object's prediction on every query slice.

    ``logits``: ``(z, S/4, S/4)`` float16 low-resolution model-frame logits (small enough to
    keep for every slice and label); ``scores``: per-slice P(present) x predicted IoU;
    ``exact``: query slices conditioned with a mask -> that mask, returned unchanged;
    ``frame_shape``: the query slices' ``(y, x)``.
    """

    logits: np.ndarray
    scores: np.ndarray
    exact: Mapping[int, np.ndarray]
    frame_shape: tuple[int, int]

    def __len__(self) -> int:
        return len(self.logits)

    def slice_logits(self, z: int) -> np.ndarray:
        """``(y, x)`` float32 logits of slice ``z`` at the query's resolution."""
        exact = self.exact.get(z)
        if exact is not None:
            return np.where(exact, _EXACT_LOGIT, -_EXACT_LOGIT)
        return upsample_logits(torch.from_numpy(self.logits[z : z + 1].astype(np.float32)), self.frame_shape)[0].numpy()

    def mask(self, z: int) -> np.ndarray:
        """``(y, x)`` boolean mask of slice ``z``."""
        return self.slice_logits(z) > 0


def track_object(
    model: Sam2Model,
    cache: FeatureCache,
    query: Sequence[Frame],
    obj_id: int,
    *,
    in_query: Mapping[int, np.ndarray] | None = None,
    external: Sequence[tuple[Frame, np.ndarray]] = (),
    placement: Placement = "before",
    progress: Callable[[], None] | None = None,
) -> ObjectTrack:
    """Track object ``obj_id`` through every slice of ``query`` from conditioning masks.

    Parameters
    ----------
    model, cache
        The SAM2 model and the feature cache shared by all trackers of the run.
    query
        The query's frames, slice ``z`` at index ``z``.
    in_query
        Query slice -> ``(y, x)`` mask conditioning it (returned exactly).
    external
        ``(frame, mask)`` supports from other volumes, conditioning frames placed by ``placement``.
    placement
        ``"before"`` the query, or in the ``"middle"`` (between slices ``n // 2 - 1`` and ``n // 2``).
    progress
        Called once per query slice predicted.
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    in_query = dict(in_query or {})
    if not in_query and not external:
        raise ConfigError(f"object {obj_id}: nothing to propagate from (no support and no conditioning slice)")
    n, k = len(query), len(external)
    insert_at = 0 if placement == "before" else n // 2
    frames = list(query[:insert_at]) + [frame for frame, _ in external] + list(query[insert_at:])

    def position(z: int) -> int:
        return z if z < insert_at else z + k

    tracker = Tracker(model, frames, cache)
    for i, (_, mask) in enumerate(external):
        tracker.set_prompts(insert_at + i, obj_id, mask=mask)
    for z, mask in sorted(in_query.items()):
        tracker.set_prompts(position(z), obj_id, mask=mask)

    if in_query:
        runs = [(position(a), position(b)) for a, b in plan_runs(sorted(in_query), n)]
    elif insert_at == 0:
        runs = [(0, len(frames) - 1)]
    else:
        runs = [(insert_at, len(frames) - 1), (insert_at + k - 1, 0)]
    query_slice = {position(z): z for z in range(n)}

    logits: np.ndarray | None = None
    scores = np.full(n, np.nan, dtype=np.float32)
    for start, end in runs:
        with closing(tracker.propagate(start, end, obj_ids=[obj_id])) as run:
            for out in run:
                z = query_slice.get(out.frame_idx)
                if z is None or not np.isnan(scores[z]):
                    continue  # a support frame, or a slice an earlier run already gave
                if logits is None:
                    logits = np.zeros((n, *out.logits.shape[1:]), dtype=np.float16)
                logits[z] = out.logits[0].numpy().astype(np.float16)
                scores[z] = out.scores[0]
                if progress is not None:
                    progress()
    return ObjectTrack(logits, scores, in_query, query[0].shape)
