"""Paired intervals and p-values on synthetic predictions whose true difference is known."""

import numpy as np
import pytest

from dsbs.stats import compare, correctness, mean_interval, permutation_p


def test_identical_predictions_differ_by_zero_with_p_one():
    a = np.random.default_rng(1).integers(0, 2, size=(3, 500))
    result = compare(a, a.copy())
    assert result.diff == 0 and result.low == 0 and result.high == 0 and result.p_value == 1.0


def test_a_known_difference_lies_inside_its_interval_and_is_significant():
    rng = np.random.default_rng(0)
    b = (rng.random((3, 2000)) < 0.70).astype(int)
    a = b.copy()
    flip = rng.random((3, 2000)) < 0.10  # a is right on 10% more items: true difference ~ +3 points
    a[flip & (b == 0)] = 1
    true = 100 * (a.mean() - b.mean())
    result = compare(a, b)
    assert result.low < true < result.high and result.diff == pytest.approx(true)
    assert 0 < result.low and result.high - result.low < 3  # pairing makes it narrow
    assert result.p_value < 0.001


def test_no_difference_gives_an_interval_around_zero():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, size=(2, 800)), rng.integers(0, 2, size=(2, 800))
    result = compare(a, b)
    assert result.low < 0 < result.high and result.p_value > 0.05


def test_a_reference_without_seeds_is_compared_with_every_seed():
    teacher = correctness("1100")
    student = np.array([correctness("1110"), correctness("1111")])
    result = compare(student, teacher)
    assert result.diff == pytest.approx(100 * (7 / 8 - 2 / 4)) and result.seeds == 2 and result.items == 4
    with pytest.raises(ValueError, match="same items"):
        compare(student, correctness("110"))


def test_mean_interval_and_permutation_bounds():
    mean, low, high = mean_interval(np.array([correctness("1" * 70 + "0" * 30)]))
    assert mean == 70 and low < 70 < high and high - low < 25
    assert 0 < permutation_p(correctness("1" * 50), correctness("0" * 50)) < 0.001
