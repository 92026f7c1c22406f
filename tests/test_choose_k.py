"""k selection: the fewest leading components whose cumulative explained variance reaches the
threshold."""

import numpy as np
import pytest

from fruits_pipeline.explained_variance import choose_k


def test_boundary_exactly_at_threshold_keeps_that_component():
    assert choose_k(np.array([0.5, 0.4, 0.1]), 0.9) == 2


def test_boundary_reached_within_float_rounding():
    ratios = np.array([0.7, 0.2, 0.1])
    assert np.cumsum(ratios)[1] < 0.9  # 0.7 + 0.2 = 0.8999999999999999 in float64
    assert choose_k(ratios, 0.9) == 2


def test_just_below_threshold_takes_the_next_component():
    assert choose_k(np.array([0.5, 0.39, 0.11]), 0.9) == 3


def test_threshold_one_keeps_every_component_that_carries_variance():
    ratios = np.array([0.6, 0.3, 0.1, 0.0, 0.0])
    assert choose_k(ratios, 1.0) == 3


def test_threshold_one_with_sum_short_of_one_keeps_all_components():
    ratios = np.array([0.6, 0.3, 0.0999999])
    assert choose_k(ratios, 1.0) == 3


def test_k_is_never_zero():
    assert choose_k(np.array([0.95, 0.05]), 1e-9) == 1
    assert choose_k(np.array([1.0]), 0.5) == 1


def test_k_on_a_realistic_spectrum_matches_a_direct_count():
    ratios = np.sort(np.random.default_rng(0).dirichlet(np.ones(1280)))[::-1]
    k = choose_k(ratios, 0.9)
    assert ratios[:k].sum() >= 0.9 > ratios[: k - 1].sum()


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.01, float("nan")])
def test_threshold_outside_zero_one_is_refused(threshold):
    with pytest.raises(ValueError, match=r"variance_threshold must be in \(0, 1\]"):
        choose_k(np.array([0.5, 0.5]), threshold)
