"""What Delta Lake keeps of a table's past: its history (one row per commit, with Delta's own
operation metrics) and its change data feed (the rows each commit touched)."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._utils.spark_utils import get_spark
from pyspark.sql import DataFrame

from fruits_pipeline.datasets.delta_merge_dataset import DeltaTableAt, is_delta_table


class _DeltaPastDataset(DeltaTableAt, AbstractDataset[None, Any]):
    """Read-only view of what Delta keeps of the table at ``filepath``; None where there is no
    table (yet: a run's first pipeline may create it). Delta's SQL and reader only, as
    ``DeltaMergeDataset``: no ``delta-spark`` Python package."""

    # Read by the run's preflight: the table may be created by the run itself.
    none_when_missing = True

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = str(filepath)
        self.metadata = metadata

    def save(self, data: None) -> None:
        raise DatasetError(f"{self._filepath}'s past is written by Delta, not saved.")

    def _history(self) -> DataFrame | None:
        """``DESCRIBE HISTORY`` of the table, or None where there is no table."""
        if not is_delta_table(self._filepath):
            return None
        return get_spark().sql(f"DESCRIBE HISTORY {self._table_name}")

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}


class DeltaHistoryDataset(_DeltaPastDataset):
    """``DESCRIBE HISTORY`` of the Delta table at ``filepath``: ``version``, ``timestamp``,
    ``operation``, ``operationMetrics`` (rows inserted, updated, deleted...)."""

    def load(self) -> DataFrame | None:
        return self._history()
