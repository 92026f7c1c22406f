"""The scaler + PCA(k) as plain arrays, and the one formula that applies them.

``coordinates = ((features - mean) * scale) @ components``: what MLlib's StandardScalerModel
(withMean, withStd: ``scale`` = 1/std, 0 for a constant feature) then its PCAModel (``components``,
1280 x k) give, in float64. The pipeline's projection (Spark), ``fruits-features`` and the
app's embedder (the same arrays folded into its LiteRT graph) all take their arrays from here.
No Spark or Kedro: the app's side imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Projection:
    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray

    @classmethod
    def from_std(cls, mean: np.ndarray, std: np.ndarray, components: np.ndarray) -> Projection:
        """From the scaler's mean and standard deviation, as MLlib keeps them."""
        scale = np.divide(1.0, std, out=np.zeros_like(std, dtype=np.float64), where=std > 0)
        return cls(np.asarray(mean, np.float64), scale, np.asarray(components, np.float64))

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Projection:
        return cls(arrays["mean"], arrays["scale"], arrays["components"])

    def arrays(self) -> dict[str, np.ndarray]:
        """``mean``, ``scale`` and ``components``, as ``pca_projection.npz`` holds them."""
        return {"mean": self.mean, "scale": self.scale, "components": self.components}

    @property
    def k(self) -> int:
        return int(self.components.shape[1])

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Coordinates (N, k), float64, of features (N, 1280)."""
        return ((np.asarray(features, np.float64) - self.mean) * self.scale) @ self.components
