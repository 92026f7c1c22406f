"""A Spark DataFrame saved with write-then-commit (see ``committed.py``)."""

from __future__ import annotations

import json
import logging
from typing import Any

from kedro.io import AbstractDataset
from kedro_datasets._utils.spark_utils import get_spark
from pyspark.sql import DataFrame

from fruits_pipeline.datasets.committed import VersionedFolder
from fruits_pipeline.made_from import made_from

logger = logging.getLogger(__name__)

# Beside a version's data files (Spark's readers skip names that start with "_").
SOURCES_FILE = "_MADE_FROM.json"


class CommittedSparkDataset(AbstractDataset[DataFrame, DataFrame]):
    """Like ``spark.SparkDataset``, but a save lands in a new version folder under ``filepath``
    and becomes visible only once complete, so an interrupted run never damages the last good
    output and a re-run never appends to it. ``credentials`` and ``fs_args`` go to the fsspec
    filesystem that writes the pointer (e.g. ``s3_additional_kwargs`` for S3 encryption).

    ``keep_if_same_sources``: for an output that is a function of the sources stamped on its
    columns alone (``fruits_pipeline.made_from``), a save made from the same sources as the
    committed version is skipped, and the committed version stays."""

    def __init__(
        self,
        *,
        filepath: str,
        file_format: str = "parquet",
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        keep_if_same_sources: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._folder = VersionedFolder(str(filepath), credentials, fs_args)
        self._keep_if_same_sources = keep_if_same_sources
        self._file_format = file_format
        self._load_args = load_args or {}
        self._save_args = save_args or {}
        self.metadata = metadata

    def load(self) -> DataFrame:
        return get_spark().read.load(
            self._folder.committed_location(), self._file_format, **self._load_args
        )

    def save(self, data: DataFrame) -> None:
        sources = made_from(data) if self._keep_if_same_sources else None
        if sources is not None and sources == self._committed_sources():
            logger.info("%s kept: made from the same sources %s", self._folder.path, sources)
            return
        version = self._folder.new_version()
        data.write.save(
            self._folder.location(version),
            self._file_format,
            mode="errorifexists",
            **self._save_args,
        )
        if sources is not None:
            self._folder.write(version, SOURCES_FILE, json.dumps(sources).encode())
        self._folder.commit(version)

    def _committed_sources(self) -> dict[str, Any] | None:
        sources = self._folder.read_committed(SOURCES_FILE)
        return None if sources is None else json.loads(sources)

    def _exists(self) -> bool:
        return self._folder.committed() is not None

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._folder.path,
            "file_format": self._file_format,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "keep_if_same_sources": self._keep_if_same_sources,
        }
