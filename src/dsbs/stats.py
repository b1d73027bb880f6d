"""Paired statistics for comparing students on the same test items, honest about seeds.

Two students evaluated on the same items are compared item by item. Correctness is a matrix of
seeds x items (1 correct, 0 wrong); seed k of one method is paired with seed k of the other. The
difference matrix D = a - b has two sources of variation that a comparison must carry into its
interval:

- **seeds**: each training run lands somewhere (its run effect). With 2 or 3 seeds this is the larger
  and the worse-known part: a test set of 2,000 items cannot make up for it.
- **items**: the test items are a sample of the task's inputs. Items that share a cluster (e-SNLI's
  hypotheses of one premise) are not independent samples, so the item part is computed over clusters.

With D = mu + seed effect + item effect + noise, the variance of the mean difference is estimated as
var(seed means) / S + (cluster-robust variance of the item means) / n. Each term is unbiased for its
own component plus a share of the noise, which is therefore counted twice: slightly conservative,
never too narrow. The 95% interval and the two-sided p-value come from Student's t with Welch–
Satterthwaite's degrees of freedom (S - 1 for the seed term, clusters - 1 for the item term), capped
at S - 1: Satterthwaite's own estimate is noisy and runs high exactly when the seed variance is
underestimated, which in simulations (tests/test_stats.py) let 2- and 3-seed intervals cover the
true difference only 89-91% of the time; capped, they cover it at least 95%, and 5 seeds still find
a 5-point difference 84% of the time. With 2 seeds the seed term has one degree of freedom and the
interval is wide, as it must be; with one seed there is no seed term at all (the interval then
speaks about the one trained model, not about the method: reports say so).
"""

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Difference:
    """Accuracy of a minus accuracy of b, in points, with its 95% interval and seed-aware p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    seeds: int
    items: int


def correctness(vector: str) -> np.ndarray:
    """'0110' (one character per test item, as stored in result lines) -> array([0, 1, 1, 0])."""
    return np.frombuffer(vector.encode("ascii"), dtype=np.uint8) - ord("0")


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_tail(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (any df > 0)."""
    return _betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(p: float, df: float) -> float:
    """The t with P(|T| < t) = ``p``, by bisection on the two-sided tail."""
    low, high = 0.0, 1.0
    while t_tail(high, df) > 1 - p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_tail(middle, df) > 1 - p else (low, middle)
    return (low + high) / 2


def cluster_ids(clusters, items: int) -> np.ndarray:
    """Each item's cluster as an index (None: every item its own cluster)."""
    if clusters is None:
        return np.arange(items)
    labels = np.asarray(clusters)
    if labels.shape != (items,):
        raise ValueError(f"clusters needs one entry per item: {labels.shape[0]} for {items} items")
    return np.unique(labels, return_inverse=True)[1]


def variance_of_mean(d: np.ndarray, clusters=None) -> tuple[float, float]:
    """(variance of the mean of the seeds x items matrix ``d``, its Welch–Satterthwaite degrees of freedom)."""
    seeds, items = d.shape
    seed_part = d.mean(axis=1).var(ddof=1) / seeds if seeds > 1 else 0.0
    deviations = d.mean(axis=0) - d.mean()
    ids = cluster_ids(clusters, items)
    totals = np.bincount(ids, weights=deviations)
    groups = totals.size
    item_part = groups / (groups - 1) * float(np.sum(totals**2)) / items**2 if groups > 1 else 0.0
    parts = [(seed_part, seeds - 1), (item_part, groups - 1)]
    denominator = sum(v * v / df for v, df in parts if df > 0 and v > 0)
    df = (seed_part + item_part) ** 2 / denominator if denominator > 0 else float("inf")
    if seeds > 1:  # no more than the seed term's own: see the module's docstring
        df = min(df, seeds - 1)
    return seed_part + item_part, max(df, 1.0)


def compare(a: np.ndarray, b: np.ndarray, seed: int = 0, clusters=None) -> Difference:
    """Paired difference of a over b in accuracy points: 95% t interval and two-sided p over seeds and items.

    ``a`` and ``b`` are seeds x items arrays of 0/1 (``b`` may have one row, a reference without
    seeds such as the teacher, compared with every seed of ``a``); ``clusters`` names each item's
    cluster (items sharing one are resampled together). ``seed`` is kept for callers of the
    bootstrap this replaced; the result is deterministic.
    """
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same items: {a.shape[1]} against {b.shape[1]}")
    if b.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"paired comparison needs the same seeds: {a.shape[0]} against {b.shape[0]}")
    d = a - b
    diff = float(d.mean())
    variance, df = variance_of_mean(d, clusters)
    if variance <= 0:
        return Difference(100 * diff, 100 * diff, 100 * diff, 1.0 if diff == 0 else 0.0, a.shape[0], a.shape[1])
    se = math.sqrt(variance)
    half = t_quantile(0.95, df) * se
    return Difference(100 * diff, 100 * (diff - half), 100 * (diff + half), t_tail(diff / se, df), a.shape[0],
                      a.shape[1])


def mean_interval(a: np.ndarray, seed: int = 0, clusters=None) -> tuple[float, float, float]:
    """(mean, low, high) accuracy in points, with the same 95% interval over seeds and items."""
    a = np.atleast_2d(a)
    d = compare(a, np.zeros((1, a.shape[1])), clusters=clusters)
    return d.diff, d.low, d.high
