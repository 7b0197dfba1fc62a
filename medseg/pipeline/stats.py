"""Statistics over cases: bootstrap confidence intervals and paired comparisons.

The unit of resampling is the case (a patient), never the voxel or the slice. Intervals are
percentile bootstrap intervals (``scipy.stats.bootstrap``, seeded); with fewer than 3 cases
no interval is given. The paired comparison of a method with the baseline uses the cases
where both have a finite score: the mean difference, its bootstrap interval, the Wilcoxon
signed-rank p-value (two-sided; ``nan`` below 3 pairs or when all differences are 0) and
wins / ties / losses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

MIN_CASES_FOR_CI = 3


@dataclass(frozen=True)
class Estimate:
    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def mean_ci(values, *, resamples: int = 2000, seed: int = 0, confidence: float = 0.95) -> Estimate:
    """Mean of the finite ``values`` and its percentile bootstrap interval over cases."""
    data = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if data.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    mean, n = float(data.mean()), int(data.size)
    if n < MIN_CASES_FOR_CI:
        return Estimate(mean, float("nan"), float("nan"), n)
    if np.ptp(data) == 0:  # every resample has the same mean
        return Estimate(mean, mean, mean, n)
    result = stats.bootstrap((data,), np.mean, n_resamples=resamples, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return Estimate(mean, float(result.confidence_interval.low), float(result.confidence_interval.high), n)


@dataclass(frozen=True)
class Paired:
    difference: Estimate
    p_value: float
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict:
        return {"difference": self.difference.to_dict(), "p_value": self.p_value, "wins": self.wins, "ties": self.ties,
                "losses": self.losses}


def paired_comparison(method: dict[str, float], baseline: dict[str, float], *,
                      resamples: int = 2000, seed: int = 0) -> Paired:
    """``method - baseline`` over the cases (keys) where both scores are finite."""
    common = sorted(k for k in method if k in baseline and np.isfinite(method[k]) and np.isfinite(baseline[k]))
    diff = np.array([method[k] - baseline[k] for k in common], dtype=float)
    p_value = float("nan")
    if diff.size >= MIN_CASES_FOR_CI and np.any(diff != 0):
        p_value = float(stats.wilcoxon(diff).pvalue)
    return Paired(mean_ci(diff, resamples=resamples, seed=seed), p_value,
                  int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum()))
