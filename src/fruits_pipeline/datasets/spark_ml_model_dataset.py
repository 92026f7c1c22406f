"""A fitted Spark ML ``PipelineModel``, saved with Spark ML's own persistence and
write-then-commit (see ``committed.py``)."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset
from pyspark.ml import PipelineModel

from fruits_pipeline.datasets.committed import VersionedFolder


class SparkMLModelDataset(AbstractDataset[PipelineModel, PipelineModel]):
    """Reads and writes a ``pyspark.ml.PipelineModel`` under ``filepath`` (local path or URI)."""

    def __init__(
        self,
        *,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._folder = VersionedFolder(str(filepath), credentials, fs_args)
        self.metadata = metadata

    def load(self) -> PipelineModel:
        return PipelineModel.load(self._folder.committed_location())

    def save(self, data: PipelineModel) -> None:
        version = self._folder.new_version()
        data.write().save(self._folder.location(version))
        self._folder.commit(version)

    def _exists(self) -> bool:
        return self._folder.committed() is not None

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._folder.path}
