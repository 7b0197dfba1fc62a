"""Which query slice corresponds to a reference slice, and where a label can be in the query.

References come from other patients, so a reference slice has no exact counterpart in the
query. The cheap correspondence used here is the slice's relative position along z: slice
``z`` of ``n_ref`` reference slices maps to ``z / (n_ref - 1)`` of the query's z-extent. This
assumes reference and query cover the same body region (the same protocol, as in a cohort);
it needs no registration and no image content.

The same mapping gives each label a *z-gate*: the query slices between the mapped first and
last reference slices that carry the label (over all references, widened by ``margin``). SAM2
rarely declares an object absent once it tracks one, so without the gate a label is painted on
every query slice; with it, slices far outside where any reference has the label stay empty.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medseg.errors import ConfigError
from medseg.revsam2.baseline import ObjectTrack


def matched_slice(z: int, n_reference: int, n_query: int) -> int:
    """The query slice at the same relative z-position as reference slice ``z``.

    >>> matched_slice(0, 32, 64), matched_slice(31, 32, 64), matched_slice(16, 33, 17)
    (0, 63, 8)
    """
    if n_reference < 2:
        return n_query // 2
    return int(round(z * (n_query - 1) / (n_reference - 1)))


def z_gate(extents: Sequence[tuple[int, int, int]], n_query: int, margin: int) -> np.ndarray:
    """Boolean ``(n_query,)``: the query slices the label may occupy.

    ``extents``: ``(first, last, n_slices)`` of the label in each reference (slice indices).
    The gate spans the mapped extents of all references, widened by ``margin`` slices.

    >>> z_gate([(2, 5, 10)], 10, 1).nonzero()[0].tolist()
    [1, 2, 3, 4, 5, 6]
    """
    if not extents:
        raise ConfigError("a z-gate needs the label's extent in at least one reference")
    if margin < 0:
        raise ConfigError(f"z-gate margin is a number of slices >= 0, got {margin}")
    first = min(matched_slice(a, n, n_query) for a, _, n in extents) - margin
    last = max(matched_slice(b, n, n_query) for _, b, n in extents) + margin
    gate = np.zeros(n_query, dtype=bool)
    gate[max(first, 0) : last + 1] = True
    return gate


def gated(track: ObjectTrack, gate: np.ndarray) -> ObjectTrack:
    """``track`` with nothing predicted on the slices outside ``gate`` (exact masks kept)."""
    logits = track.logits.copy()
    logits[~gate] = np.finfo(logits.dtype).min
    scores = np.where(gate, track.scores, 0.0).astype(track.scores.dtype)
    return ObjectTrack(logits, scores, track.exact, track.frame_shape)
