"""How many principal components to keep: the rules shared by the PCA and the checks made
before a run (no Spark here)."""

from __future__ import annotations

import numpy as np

from fruits_pipeline.errors import SettingError

# Cumulative sums of float64 ratios land a few ulps off exact thresholds (0.7 + 0.2 < 0.9):
# a component reaching the threshold within this tolerance counts as reaching it.
THRESHOLD_TOLERANCE = 1e-12


# PCA needs a covariance: at least two images.
MIN_IMAGES = 2


def check_threshold(threshold: float) -> float:
    """The variance threshold as a float in (0, 1], or a ValueError naming the setting."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise SettingError(
            f"dimensionality_reduction.variance_threshold must be in (0, 1], got {threshold!r}: "
            "set it in conf/base/parameters_dimensionality_reduction.yml or with "
            "--params dimensionality_reduction.variance_threshold=0.9"
        )
    return value


def choose_k(explained_variance_ratio: np.ndarray, threshold: float) -> int:
    """The fewest leading components whose cumulative explained variance reaches ``threshold``.

    ``k`` is the first index where the cumulative sum is at least the threshold, plus one; never 0,
    never more than the number of components.
    """
    threshold = check_threshold(threshold)
    ratios = np.asarray(explained_variance_ratio, dtype=np.float64)
    if ratios.size == 0:
        raise ValueError("No explained-variance ratios: the PCA has no components.")
    cumulative = np.cumsum(ratios)
    reached = np.flatnonzero(cumulative >= threshold - THRESHOLD_TOLERANCE)
    # A threshold of 1.0 may stay a few ulps out of reach of the float sum: keep every component.
    return int(reached[0]) + 1 if reached.size else int(ratios.size)
