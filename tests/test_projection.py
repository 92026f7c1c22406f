"""The one projection formula the pipeline, fruits-features and the app's embedder share."""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler

from fruits_pipeline.projection import Projection


def test_projection_is_a_standard_scaler_then_the_components():
    rng = np.random.default_rng(3)
    features = rng.gamma(0.5, 1.0, size=(200, 40)).astype(np.float32)
    features[:, 5] = 0.25  # constant: MLlib scales it to 0, where scikit-learn divides by 1
    components = rng.normal(size=(40, 6))
    scaler = StandardScaler().fit(features.astype(np.float64))
    std = np.sqrt(scaler.var_ * len(features) / (len(features) - 1))  # MLlib's sample std
    projection = Projection.from_std(scaler.mean_, std, components)
    assert projection.scale[5] == 0 and projection.k == 6
    expected = (features.astype(np.float64) - scaler.mean_) / np.where(std > 0, std, np.inf)
    np.testing.assert_allclose(projection(features), expected @ components, rtol=0, atol=1e-12)
    again = Projection.from_arrays(projection.arrays())
    np.testing.assert_array_equal(again(features), projection(features))
