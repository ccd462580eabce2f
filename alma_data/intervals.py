"""Figures with their uncertainty: bootstrap intervals, pairwise accuracy, win rates, and
how much of a score difference is answer length.

Every interval is a seeded percentile bootstrap over the units that were scored (pairs,
prompts), so the same scores always give the same figures.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

RESAMPLES = 2000


def bootstrap(values: np.ndarray, stat: Callable[[np.ndarray], float] = np.mean, *, seed: int = 0,
              resamples: int = RESAMPLES, level: float = 0.95) -> tuple[float, float, float]:
    """(statistic, low, high): ``stat`` over ``values`` (rows are the resampled units) and its
    percentile interval. Nan figures for no data."""
    values = np.asarray(values)
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(stat(values))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n))
    stats = np.array([stat(values[i]) for i in idx], dtype=np.float64)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return point, float("nan"), float("nan")
    a = (1 - level) / 2
    return point, float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray, *, seed: int = 0, resamples: int = RESAMPLES,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of ``values`` with the clusters resampled, not the rows: for pairs
    that share a prompt, whose outcomes are not independent."""
    values, clusters = np.asarray(values, dtype=np.float64), np.asarray(clusters)
    if not len(values):
        return float("nan"), float("nan"), float("nan")
    keys, inverse = np.unique(clusters, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(keys))
    counts = np.bincount(inverse, minlength=len(keys)).astype(np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), size=(resamples, len(keys)))
    stats = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    a = (1 - level) / 2
    return float(values.mean()), float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a))


def pair_outcomes(better: np.ndarray, worse: np.ndarray) -> np.ndarray:
    """Per pair: 1 when the judge scores the preferred response higher, 0 when lower, 0.5 on a tie."""
    better, worse = np.asarray(better, dtype=np.float64), np.asarray(worse, dtype=np.float64)
    return np.where(better > worse, 1.0, np.where(better < worse, 0.0, 0.5))


def pairwise_accuracy(better: np.ndarray, worse: np.ndarray, *, seed: int = 0) -> dict[str, object]:
    """Accuracy with ties counted wrong and counted as half, the ties, and their intervals."""
    outcome = pair_outcomes(better, worse)
    strict = (outcome == 1.0).astype(np.float64)
    return {
        "pairs": int(len(outcome)),
        "ties": int((outcome == 0.5).sum()),
        "accuracy_ties_wrong": bootstrap(strict, seed=seed),
        "accuracy_ties_half": bootstrap(outcome, seed=seed),
    }


def _fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares intercept and slope of y on x (slope 0 where x does not vary)."""
    if len(x) < 2 or np.ptp(x) == 0:
        return float(np.mean(y)) if len(y) else float("nan"), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def length_controlled(score_a: np.ndarray, score_b: np.ndarray, len_a: np.ndarray, len_b: np.ndarray,
                      *, per: float = 100.0, seed: int = 0) -> dict[str, object]:
    """How much of A's lead over B on the same prompts is length.

    Regresses the score difference (A - B) and the win indicator (1 / 0.5 / 0) on the
    length difference in units of ``per`` tokens; the intercepts are the difference and
    the win rate at equal length. ``length_share`` is the part of the raw difference the
    length term explains: (raw - at equal length) / raw.
    """
    a, b = np.asarray(score_a, dtype=np.float64), np.asarray(score_b, dtype=np.float64)
    dl = (np.asarray(len_a, dtype=np.float64) - np.asarray(len_b, dtype=np.float64)) / per
    d, win = a - b, pair_outcomes(a, b)
    rows = np.stack([dl, d, win], axis=1)
    raw = float(d.mean()) if len(d) else float("nan")
    at_equal = bootstrap(rows, lambda r: _fit(r[:, 0], r[:, 1])[0], seed=seed)
    slope = bootstrap(rows, lambda r: _fit(r[:, 0], r[:, 1])[1], seed=seed)
    win_equal = bootstrap(rows, lambda r: _fit(r[:, 0], r[:, 2])[0], seed=seed)
    share = (raw - at_equal[0]) / raw if raw and np.isfinite(raw) and abs(raw) > 1e-9 else float("nan")
    return {"score_difference": bootstrap(d, seed=seed), "difference_at_equal_length": at_equal,
            f"slope_per_{int(per)}_tokens": slope, "win_rate_at_equal_length": win_equal,
            "mean_length_difference": float((dl * per).mean()) if len(dl) else float("nan"),
            "length_share": share}


def fmt(ci: tuple[float, float, float], digits: int = 3) -> str:
    point, lo, hi = ci
    if not np.isfinite(point):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{point:.{digits}f}"
    return f"{point:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
