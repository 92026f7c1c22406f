"""A fitted Spark ML ``PipelineModel``, saved with Spark ML's own persistence and
write-then-commit (see ``committed.py``)."""

from __future__ import annotations

import json
from typing import Any

from kedro.io import AbstractDataset
from pyspark.ml import PipelineModel

from fruits_pipeline.datasets.committed import VersionedFolder


class SparkMLModelDataset(AbstractDataset[PipelineModel, PipelineModel]):
    """Reads and writes a ``pyspark.ml.PipelineModel`` under ``filepath`` (local path or URI).
    ``none_when_missing`` makes ``load`` return None, rather than fail, before the first save."""

    def __init__(
        self,
        *,
        filepath: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        none_when_missing: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._folder = VersionedFolder(str(filepath), credentials, fs_args)
        self.none_when_missing = none_when_missing
        self.metadata = metadata

    def load(self) -> PipelineModel | None:
        if self.none_when_missing and self._folder.committed() is None:
            return None
        return PipelineModel.load(self._folder.committed_location())

    def save(self, data: PipelineModel) -> None:
        if self._saved_uid() == data.uid:
            return  # the model kept from an earlier run: already stored
        version = self._folder.new_version()
        data.write().save(self._folder.location(version))
        self._folder.commit(version)

    def _saved_uid(self) -> str | None:
        # Spark ML writes a model's uid in its metadata file (one JSON line).
        metadata = self._folder.read_committed("metadata/part-00000")
        return None if metadata is None else json.loads(metadata)["uid"]

    def _exists(self) -> bool:
        return self._folder.committed() is not None

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._folder.path}
