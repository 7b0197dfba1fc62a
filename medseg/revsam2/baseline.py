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
still in memory. Otherwise one forward run from the supports placed before; for the middle
placement, one run forwards and one backwards from the supports; for the matched placement,
runs from the nearest support both ways. Every query slice gets exactly one prediction.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from medseg.errors import ConfigError
from medseg.runtime import Progress, ShouldStop, check_stop, report
from medseg.sam2.engine import FeatureCache, FrameOutput, Tracker
from medseg.sam2.frames import Frame, upsample_logits
from medseg.sam2.model import Sam2Model
from medseg.sam2.session import plan_runs

Placement = Literal["before", "middle", "matched"]
PLACEMENTS = ("before", "middle", "matched")

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
    anchors: Sequence[int] | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
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
        ``"before"`` the query, in the ``"middle"`` (between slices ``n // 2 - 1`` and ``n // 2``),
        or ``"matched"``: external support ``i`` right before query slice ``anchors[i]``.
    anchors
        ``"matched"`` only: the query slice of each external support, in ``external``'s order.
    progress
        ``progress(slices predicted, query slices)`` after each query slice.
    should_stop
        Asked between query slices; True raises ``medseg.errors.Cancelled`` (no track returned).
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    in_query = dict(in_query or {})
    if not in_query and not external:
        raise ConfigError(f"object {obj_id}: nothing to propagate from (no support and no conditioning slice)")
    n = len(query)
    layout = _Layout(n, _inserts(placement, n, len(external), anchors), placement)
    frames: list[Frame] = [None] * (n + len(external))  # type: ignore[list-item]
    for z in range(n):
        frames[layout.position(z)] = query[z]
    for i, (frame, _) in enumerate(external):
        frames[layout.support_position(i)] = frame
    tracker = Tracker(model, frames, cache)
    for i, (_, mask) in enumerate(external):
        tracker.set_prompts(layout.support_position(i), obj_id, mask=mask)
    for z, mask in sorted(in_query.items()):
        tracker.set_prompts(layout.position(z), obj_id, mask=mask)
    query_slice = {layout.position(z): z for z in range(n)}

    logits: np.ndarray | None = None
    scores = np.full(n, np.nan, dtype=np.float32)
    with closing(_first_outputs(tracker, layout.runs(sorted(in_query)), obj_id, query_slice)) as outputs:
        for done, (z, out) in enumerate(outputs, start=1):
            if logits is None:
                logits = np.zeros((n, *out.logits.shape[1:]), dtype=np.float16)
            logits[z] = out.logits[0].numpy().astype(np.float16)
            scores[z] = out.scores[0]
            report(progress, done, n)
            if done < n:
                check_stop(should_stop, f"tracking object {obj_id}")
    return ObjectTrack(logits, scores, in_query, query[0].shape)


def _inserts(placement: Placement, n: int, k: int, anchors: Sequence[int] | None) -> tuple[int, ...]:
    """The query slice each external support sits right before (``n``: after the last slice)."""
    if placement != "matched":
        return (0 if placement == "before" else n // 2,) * k
    if anchors is None or len(anchors) != k:
        raise ConfigError(f"the matched placement needs one anchor slice per external support; got "
                          f"{None if anchors is None else len(anchors)} for {k}")
    if any(not 0 <= a < n for a in anchors):
        raise ConfigError(f"anchor slices must lie in the query (0..{n - 1}), got {list(anchors)}")
    return tuple(int(a) for a in anchors)


@dataclass(frozen=True)
class _Layout:
    """Where the ``n`` query slices and the external supports sit in one tracker's frames.

    Support ``i`` sits right before query slice ``inserts[i]``; supports before the same slice
    keep their order.
    """

    n: int
    inserts: tuple[int, ...]
    placement: Placement

    def position(self, z: int) -> int:
        """Frame index of query slice ``z``."""
        return z + sum(a <= z for a in self.inserts)

    def support_position(self, i: int) -> int:
        """Frame index of external support ``i``."""
        a = self.inserts[i]
        return a + sum(b < a or (b == a and j < i) for j, b in enumerate(self.inserts))

    def runs(self, conditioned: Sequence[int]) -> list[tuple[int, int]]:
        """Propagation runs ``(start, end)`` in frame indices: from the nearest conditioned query
        slice both ways when there are any, else from the supports as placed."""
        if conditioned:
            return [(self.position(a), self.position(b)) for a, b in plan_runs(list(conditioned), self.n)]
        last, k = self.n + len(self.inserts) - 1, len(self.inserts)
        if self.placement == "matched":
            return plan_runs(sorted(self.support_position(i) for i in range(k)), last + 1)
        if self.placement == "before":
            return [(0, last)]
        first = self.support_position(0)
        return [(first, last), (first + k - 1, 0)]


def _first_outputs(tracker: Tracker, runs: Sequence[tuple[int, int]], obj_id: int,
                   query_slice: Mapping[int, int]) -> Iterator[tuple[int, FrameOutput]]:
    """``(query slice, output)`` of each query slice the first time a run reaches it; support
    frames, and slices an earlier run already gave, are skipped."""
    seen: set[int] = set()
    for start, end in runs:
        with closing(tracker.propagate(start, end, obj_ids=[obj_id])) as run:
            for out in run:
                z = query_slice.get(out.frame_idx)
                if z is not None and z not in seen:
                    seen.add(z)
                    yield z, out
