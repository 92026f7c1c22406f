"""A fitted Spark ML ``PipelineModel``, saved and loaded with Spark ML's own persistence."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset
from pyspark.ml import PipelineModel


class SparkMLModelDataset(AbstractDataset[PipelineModel, PipelineModel]):
    """Reads and writes a ``pyspark.ml.PipelineModel`` at ``filepath`` (local path or URI)."""

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = filepath
        self.metadata = metadata

    def load(self) -> PipelineModel:
        return PipelineModel.load(self._filepath)

    def save(self, data: PipelineModel) -> None:
        data.write().overwrite().save(self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
