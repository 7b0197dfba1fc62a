"""Reverse scoring and selection of query slices (RevSAM2 steps b and c).

A query slice's predicted mask is judged by how well it, alone, segments the supports: it
becomes the only prompt, SAM2 propagates it onto every support slice, and the slice's
*reverse score* is the mean Dice between those predictions and the supports' true labels.
The paper does not publish its similarity; Dice against the support labels is our choice
(the support labels are the only ground truth available at inference time).

Each candidate slice is the conditioning frame of its own small video, followed by the
supports; each support is predicted from the conditioning frame only, so no support's
prediction leans on another's. The candidates run together, ``REVERSE_BATCH`` at a time, as
the objects of one SAM2 batch (``medseg.sam2.engine.carry_mask_prompts``: the same masks as one
tracker per candidate, without the per-tracker cost). The image features of every slice come
from the session's shared cache: the reverse pass costs memory attention and mask decoding,
not encoder passes. A support that *is* the candidate slice (supports annotated on the query
itself) is the prompted frame, whose output is the prompt.

A candidate can also show the wrong organ (the kidney tracked as the spleen). With ``rivals``,
the other labels drawn on each support slice, each candidate is also scored as if it were each
rival label; a candidate that segments a rival better than its own label is *rejected*: it is
no candidate for selection, whatever its own score.

The best-scoring slices are then selected as prompts for the final pass: at most ``top_k``,
none scoring below ``threshold``, and no two closer than ``min_spacing`` slices, so that
the selection spreads over the object's extent instead of bunching where it is largest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from medseg.errors import ConfigError, InputError
from medseg.metrics.overlap import dice_per_label
from medseg.revsam2.baseline import ObjectTrack
from medseg.revsam2.defaults import DEFAULT_THRESHOLD, DEFAULT_TOP_K
from medseg.runtime import Progress, ShouldStop, check_stop, report
from medseg.sam2.engine import FeatureCache, carry_mask_prompts
from medseg.sam2.frames import Frame
from medseg.sam2.model import Sam2Model

REVERSE_BATCH = 16
"""Candidates scored together in one SAM2 batch (README, "Reference prompting": the batch's speed)."""


def reverse_score(predicted: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
    """Mean Dice of ``predicted`` support masks against the supports' ``truth`` masks.

    Both are sequences of ``(y, x)`` boolean masks, in the same order; each truth mask is
    non-empty (``SupportSet`` guarantees it), so every Dice is defined.

    >>> truth = [np.eye(4, dtype=bool)]
    >>> reverse_score([np.eye(4, dtype=bool)], truth), reverse_score([np.zeros((4, 4), bool)], truth)
    (1.0, 0.0)
    """
    if len(predicted) != len(truth) or not truth:
        raise InputError(f"reverse score needs one prediction per support; got {len(predicted)} for {len(truth)} "
                         "supports")
    scores = []
    for p, t in zip(predicted, truth):
        if p.shape != t.shape:
            raise InputError(f"predicted support mask of shape {p.shape} does not match its label slice {t.shape}")
        scores.append(dice_per_label(p[None].astype(np.uint8), t[None].astype(np.uint8), labels=[1], empty=1.0)[1])
    return float(np.mean(scores))


class ReverseScores(NamedTuple):
    """Reverse score per query slice (NaN: not a candidate) and the rejected candidates
    (slice -> the rival label it segments better than its own)."""

    scores: np.ndarray
    rejected: dict[int, int]


def reverse_scores(
    model: Sam2Model,
    cache: FeatureCache,
    query: Sequence[Frame],
    forward: ObjectTrack,
    obj_id: int,
    supports: Sequence[tuple[Frame, np.ndarray]],
    *,
    candidates: Sequence[int],
    rivals: Sequence[Mapping[int, np.ndarray]] | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> ReverseScores:
    """Reverse score of each candidate query slice (NaN for the other slices), and the rejected ones.

    Parameters
    ----------
    model, cache
        The SAM2 model and the session's shared feature cache.
    query
        The query's frames.
    forward
        The forward prediction; its mask on a candidate slice is the prompt.
    obj_id
        The object (label value).
    supports
        ``(frame, true mask)`` of every support of the object.
    candidates
        Query slices to score (those with a non-empty forward mask).
    rivals
        Per support, in ``supports``' order: other label value -> its mask on that support
        slice (empty masks may be left out). ``None``: no candidate is rejected.
    progress
        ``progress(candidates scored, candidates)`` after each batch of candidates.
    should_stop
        Asked before each batch; True raises ``medseg.errors.Cancelled`` (no scores returned).
    """
    scores = np.full(len(query), np.nan)
    rejected: dict[int, int] = {}
    truth = [mask for _, mask in supports]
    frames = [frame for frame, _ in supports]
    rival_labels = sorted({v for masks in rivals or () for v in masks})
    candidates = list(candidates)
    for start in range(0, len(candidates), REVERSE_BATCH):
        check_stop(should_stop, f"reverse scoring of object {obj_id}")
        batch = candidates[start:start + REVERSE_BATCH]
        prompts = [forward.mask(z) for z in batch]
        outputs = carry_mask_prompts(model, cache, [(query[z], p) for z, p in zip(batch, prompts)], frames)
        for b, (z, prompt) in enumerate(zip(batch, prompts)):
            predicted = [prompt if frame.key == query[z].key else out.masks()[b] for frame, out in zip(frames, outputs)]
            scores[z] = reverse_score(predicted, truth)
            rival_scores = {v: _rival_score(predicted, [masks.get(v) for masks in rivals]) for v in rival_labels}
            best_rival = max(rival_scores, key=rival_scores.get, default=None)
            if best_rival is not None and rival_scores[best_rival] > scores[z]:
                rejected[z] = best_rival
        report(progress, start + len(batch), len(candidates))
    return ReverseScores(scores, rejected)


def _rival_score(predicted: Sequence[np.ndarray], rival: Sequence[np.ndarray | None]) -> float:
    """Mean Dice of the predicted support masks with a rival label's masks (0 where it is not drawn)."""
    return float(np.mean([0.0 if r is None or not r.any() else
                          dice_per_label(p[None].astype(np.uint8), r[None].astype(np.uint8), labels=[1])[1]
                          for p, r in zip(predicted, rival)]))


def auto_min_spacing(candidates: Sequence[int], top_k: int | None) -> int:
    """The default minimum spacing: the candidates' z-extent over ``2 * top_k``, at least 1.

    With ``top_k`` slices no closer than this, the selection can still reach both halves of
    every ``1 / top_k`` part of the object, yet is free to skip parts that score badly.
    """
    if not candidates or not top_k:
        return 1
    extent = max(candidates) - min(candidates) + 1
    return max(1, extent // (2 * top_k))


def select_slices(
    scores: np.ndarray,
    *,
    top_k: int | None = DEFAULT_TOP_K,
    threshold: float | None = DEFAULT_THRESHOLD,
    min_spacing: int | None = None,
) -> list[int]:
    """Slice indices to re-prompt with, chosen greedily from the best reverse score down.

    Parameters
    ----------
    scores
        Reverse score per query slice, NaN where the slice is not a candidate (empty forward
        prediction).
    top_k
        Keep at most this many slices (``None``: no limit).
    threshold
        Never keep a slice scoring below this (``None``: no floor).
    min_spacing
        No two kept slices are closer than this many slices (``None``: ``auto_min_spacing``;
        ``1`` disables the constraint).

    Returns
    -------
    list of int
        Sorted slice indices; empty when no candidate reaches ``threshold``. Ties in score go
        to the lower slice index, so the result is deterministic.

    >>> select_slices(np.array([0.9, 0.95, np.nan, 0.2, 0.8]), top_k=2, threshold=0.5, min_spacing=2)
    [1, 4]
    """
    check_selection(top_k=top_k, threshold=threshold, min_spacing=min_spacing)
    scores = np.asarray(scores, dtype=float)
    candidates = np.flatnonzero(~np.isnan(scores))
    spacing = auto_min_spacing(candidates.tolist(), top_k) if min_spacing is None else min_spacing
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    chosen: list[int] = []
    for z in order.tolist():
        if top_k is not None and len(chosen) >= top_k:
            break
        if threshold is not None and scores[z] < threshold:
            break  # ordered by score: nothing after this passes either
        if all(abs(z - c) >= spacing for c in chosen):
            chosen.append(z)
    return sorted(chosen)


def check_selection(*, top_k: int | None, threshold: float | None, min_spacing: int | None) -> None:
    """Raise ``ConfigError`` for selection settings that cannot work."""
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be at least 1 (or None for no limit), got {top_k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold is a Dice in [0, 1] (or None for no floor), got {threshold}")
    if min_spacing is not None and min_spacing < 1:
        raise ConfigError(f"min_spacing is a number of slices >= 1 (or None for automatic), got {min_spacing}")
