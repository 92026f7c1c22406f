"""The MobileNetV2 feature extractor named by ``featurization.weights``, ready to run."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from fruits_pipeline import mobilenet_v2
from fruits_pipeline.redaction import redact


class FeatureModelDataset(AbstractDataset[mobilenet_v2.FeatureModel, None]):
    """Loads the weights (``imagenet``, a path or a URI) and the LiteRT model exported from
    them (``mobilenet_v2.load_feature_model``). Read-only: the weights are an input."""

    def __init__(self, *, weights: str, metadata: dict[str, Any] | None = None) -> None:
        self._weights = str(weights)
        self.metadata = metadata

    def load(self) -> mobilenet_v2.FeatureModel:
        return mobilenet_v2.load_feature_model(self._weights)

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: the weights are an input.")

    def _describe(self) -> dict[str, Any]:
        return {"weights": redact(self._weights)}
