"""Paired statistics for comparing students on the same test items.

Two students evaluated on the same items are compared item by item: most of the variation in an
accuracy comes from which items are in the test set and which seed trained the model, and both
are shared by a paired comparison. Correctness is a matrix of seeds x items (1 correct, 0 wrong);
the bootstrap resamples seeds and items with replacement, the same draws for both sides.
"""

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_DRAWS = 4000
PERMUTATIONS = 10000


@dataclass(frozen=True)
class Difference:
    """Accuracy of a minus accuracy of b, in points, with its 95% interval and permutation p-value."""

    diff: float
    low: float
    high: float
    p_value: float
    seeds: int
    items: int


def correctness(vector: str) -> np.ndarray:
    """'0110' (one character per test item, as stored in result lines) -> array([0, 1, 1, 0])."""
    return np.frombuffer(vector.encode("ascii"), dtype=np.uint8) - ord("0")


def bootstrap_diffs(a: np.ndarray, b: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of mean(a) - mean(b) for seeds x items matrices, paired.

    ``b`` may have one row (a reference without seeds, such as the teacher): it is then compared
    with every seed of ``a``. Each replicate draws seeds and items with replacement, the same
    indices for both, and is computed from their counts (one matrix product, no copies).
    """
    a, b = np.atleast_2d(a).astype(float), np.atleast_2d(b).astype(float)
    d = a - b  # broadcasts a one-row reference over a's seeds
    seeds, items = d.shape
    rng = np.random.default_rng(seed)
    out = []
    for size in _chunks(draws):
        seed_counts = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=size)
        item_counts = rng.multinomial(items, np.full(items, 1 / items), size=size)
        out.append(np.einsum("ds,sn,dn->d", seed_counts, d, item_counts) / (seeds * items))
    return np.concatenate(out)


def _chunks(total: int, size: int = 500):
    """Sizes of the blocks a resampling loop draws at a time (bounded memory for large test sets)."""
    for start in range(0, total, size):
        yield min(size, total - start)


def permutation_p(a: np.ndarray, b: np.ndarray, permutations: int = PERMUTATIONS, seed: int = 0) -> float:
    """Two-sided paired permutation p-value over items, on seed-averaged correctness.

    Under the null the two students are exchangeable on each item, so each item's difference
    keeps or flips its sign at random. Identical predictions give p = 1.
    """
    d = np.atleast_2d(a).astype(float).mean(axis=0) - np.atleast_2d(b).astype(float).mean(axis=0)
    observed = abs(d.sum())
    rng = np.random.default_rng(seed)
    extreme = 0
    for size in _chunks(permutations):
        signs = rng.integers(0, 2, size=(size, d.size)) * 2 - 1
        extreme += np.count_nonzero(np.abs(signs @ d) >= observed - 1e-9)
    return float((extreme + 1) / (permutations + 1))


def compare(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Difference:
    """Paired difference of a over b in accuracy points, 95% bootstrap interval, permutation p."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"paired comparison needs the same items: {a.shape[1]} against {b.shape[1]}")
    if b.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"paired comparison needs the same seeds: {a.shape[0]} against {b.shape[0]}")
    draws = bootstrap_diffs(a, b, seed=seed)
    low, high = np.percentile(draws, [2.5, 97.5])
    diff = a.mean() - b.mean()
    return Difference(100 * diff, 100 * low, 100 * high, permutation_p(a, b, seed=seed), a.shape[0], a.shape[1])


def mean_interval(a: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) accuracy in points, 95% bootstrap over seeds and items."""
    a = np.atleast_2d(a)
    draws = bootstrap_diffs(a, np.zeros((1, a.shape[1])), seed=seed)
    low, high = np.percentile(draws, [2.5, 97.5])
    return 100 * a.mean(), 100 * low, 100 * high
