"""Paired intervals and p-values, checked against simulated experiments whose true difference is known.

The simulation is the review's: each item has a difficulty, most items are almost always right or
almost always wrong, and each training seed shifts a method's accuracy by a run effect (standard
deviation 2 points). An interval must cover the true difference of the methods (over seeds and
items, not the sample's own) as often as it claims, and a p-value must not find differences where
there are none.
"""

import math

import numpy as np
import pytest

from dsbs.stats import compare, correctness, mean_interval, t_quantile

SPREAD = 5.0  # item difficulty x 5 against unit noise: about 3 items in 4 are (almost) always right or wrong
SCALE = math.sqrt(1 + SPREAD**2)


def skill_for(accuracy: float, run_sd: float) -> float:
    """The skill whose expected accuracy over items and seeds is ``accuracy``."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(accuracy) * math.sqrt(SCALE**2 + run_sd**2)


def run_effect_sd(accuracy: float, points: float = 2.0) -> float:
    """The spread of a seed's skill that moves its accuracy by ``points`` (standard deviation)."""
    from statistics import NormalDist

    slope = NormalDist().pdf(NormalDist().inv_cdf(accuracy)) / SCALE
    return points / 100 / slope


def experiment(rng, seeds: int, items: int, true_diff: float, base: float = 0.78):
    """(a, b) correctness of two methods whose expected accuracies differ by ``true_diff`` points."""
    sd = run_effect_sd(base)
    difficulty = SPREAD * rng.standard_normal(items)

    def runs(accuracy: float) -> np.ndarray:
        skill = skill_for(accuracy, sd) + sd * rng.standard_normal((seeds, 1))
        return (skill + rng.standard_normal((seeds, items)) > difficulty).astype(np.int8)

    return runs(base + true_diff / 100), runs(base)


def simulate(trials: int, seeds: int, items: int, true_diff: float, seed: int = 0) -> tuple[float, float]:
    """(share of intervals covering the true difference, share that exclude 0)."""
    rng = np.random.default_rng(seed)
    covered = excluded = 0
    for _ in range(trials):
        d = compare(*experiment(rng, seeds, items, true_diff))
        covered += d.low <= true_diff <= d.high
        excluded += d.low > 0 or d.high < 0
    return covered / trials, excluded / trials


@pytest.mark.parametrize("seeds", [2, 3])
def test_intervals_cover_the_true_difference_with_few_seeds(seeds):
    """The bootstrap this replaced covered 88% (2 seeds) and 91% (3 seeds) of such experiments."""
    coverage, _ = simulate(trials=300, seeds=seeds, items=500, true_diff=2.0, seed=seeds)
    assert coverage >= 0.92


def test_no_difference_is_rarely_significant():
    """The permutation p-value this replaced fell below 0.05 in 31% of experiments with identical methods."""
    rng = np.random.default_rng(7)
    p_values = [compare(*experiment(rng, 3, 500, 0.0)).p_value for _ in range(300)]
    assert np.mean(np.array(p_values) < 0.05) <= 0.08


def test_five_seeds_find_a_five_point_difference():
    coverage, excluded = simulate(trials=200, seeds=5, items=1000, true_diff=5.0, seed=11)
    assert excluded >= 0.60 and coverage >= 0.92


@pytest.mark.slow
@pytest.mark.parametrize("seeds, true_diff", [(2, 0.0), (2, 2.0), (3, 0.0), (3, 2.0), (5, 0.0), (5, 5.0)])
def test_coverage_and_false_positives_at_full_size(seeds, true_diff):
    """The review's setting at full size: 1,000 items, 2,000 experiments per cell."""
    coverage, excluded = simulate(trials=2000, seeds=seeds, items=1000, true_diff=true_diff, seed=seeds)
    assert coverage >= 0.92
    assert excluded <= 0.08 if true_diff == 0 else True
    assert excluded >= 0.60 if true_diff == 5.0 else True


def test_duplicating_every_item_cannot_narrow_an_interval():
    """Items of one cluster (e-SNLI's hypotheses of one premise) count once, however many there are."""
    a, b = experiment(np.random.default_rng(3), 3, 400, 3.0)
    once = compare(a, b)
    clusters = np.repeat(np.arange(400), 2)
    twice = compare(np.repeat(a, 2, axis=1), np.repeat(b, 2, axis=1), clusters=clusters)
    assert twice.diff == pytest.approx(once.diff)
    assert twice.high - twice.low >= once.high - once.low - 1e-9
    unclustered = compare(np.repeat(a, 2, axis=1), np.repeat(b, 2, axis=1))
    assert unclustered.high - unclustered.low < once.high - once.low  # what the cluster key prevents


def test_two_seeds_give_a_wider_interval_than_five():
    rng = np.random.default_rng(5)
    a, b = experiment(rng, 5, 1000, 3.0)
    assert compare(a[:2], b[:2]).high - compare(a[:2], b[:2]).low > compare(a, b).high - compare(a, b).low


def test_identical_predictions_differ_by_zero_with_p_one():
    a = np.random.default_rng(1).integers(0, 2, size=(3, 500))
    result = compare(a, a.copy())
    assert result.diff == 0 and result.low == 0 and result.high == 0 and result.p_value == 1.0


def test_a_reference_without_seeds_is_compared_with_every_seed():
    teacher = correctness("1100")
    student = np.array([correctness("1110"), correctness("1111")])
    result = compare(student, teacher)
    assert result.diff == pytest.approx(100 * (7 / 8 - 2 / 4)) and result.seeds == 2 and result.items == 4
    with pytest.raises(ValueError, match="same items"):
        compare(student, correctness("110"))


def test_t_quantiles_and_the_mean_interval():
    assert t_quantile(0.95, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.95, 4) == pytest.approx(2.776, abs=1e-3)
    assert t_quantile(0.95, 1e9) == pytest.approx(1.960, abs=1e-3)
    mean, low, high = mean_interval(np.array([correctness("1" * 70 + "0" * 30)]))
    # one seed, 100 items: the binomial standard error of 70% is 4.6 points
    assert mean == 70 and high - mean == pytest.approx(t_quantile(0.95, 99) * math.sqrt(0.7 * 0.3 / 99) * 100)


def test_one_cluster_for_every_item_warns_and_keeps_an_interval():
    """Before: a constant cluster field left no item term: [+3.0, +3.0] with p = 0 from one seed."""
    rng = np.random.default_rng(3)
    a, b = rng.random((1, 200)) < 0.6, rng.random((1, 200)) < 0.55
    with pytest.warns(UserWarning, match="all 200 items are in one cluster"):
        one = compare(a, b, clusters=["same"] * 200)
    assert one == compare(a, b) and one.low < one.diff < one.high and one.p_value > 0
