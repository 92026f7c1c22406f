"""A Delta Lake table kept up to date by ``MERGE``: a save applies a batch of changes."""

from __future__ import annotations

from typing import Any

from delta.tables import DeltaTable
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._utils.spark_utils import get_spark
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


class DeltaMergeDataset(AbstractDataset[DataFrame, DataFrame]):
    """A Delta table keyed by ``key``. ``save(changes)`` applies the rows of ``changes`` in one
    ``MERGE`` transaction: a row whose ``delete_column`` is true removes the table's row with
    its key, any other row replaces it or is inserted. A batch without rows commits nothing, so
    a replayed run leaves the table's version as it was.

    ``none_when_missing`` makes ``load`` return None, rather than fail, before the first save.
    """

    def __init__(
        self,
        *,
        filepath: str,
        key: str = "path",
        delete_column: str = "_delete",
        none_when_missing: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = str(filepath)
        self._key = key
        self._delete_column = delete_column
        self.none_when_missing = none_when_missing
        self.metadata = metadata

    def _table(self) -> DeltaTable | None:
        spark = get_spark()
        if not DeltaTable.isDeltaTable(spark, self._filepath):
            return None
        return DeltaTable.forPath(spark, self._filepath)

    def load(self) -> DataFrame | None:
        table = self._table()
        if table is None:
            if self.none_when_missing:
                return None
            raise DatasetError(
                f"No Delta table at {self._filepath}: run the pipeline that writes it."
            )
        return table.toDF()

    def save(self, data: DataFrame) -> None:
        changes = data.alias("change")
        if changes.isEmpty():
            return
        table = self._table()
        columns = [name for name in data.columns if name != self._delete_column]
        if table is None:
            table = (
                DeltaTable.createIfNotExists(get_spark())
                .location(self._filepath)
                .addColumns(data.select(*columns).schema)
                .execute()
            )
        deleted = F.col(f"change.{self._delete_column}")
        assignments = {name: F.col(f"change.{name}") for name in columns}
        (
            table.alias("stored")
            .merge(changes, f"stored.{self._key} = change.{self._key}")
            .whenMatchedDelete(condition=deleted)
            .whenMatchedUpdate(set=assignments)
            .whenNotMatchedInsert(condition=~deleted, values=assignments)
            .execute()
        )

    def _exists(self) -> bool:
        return DeltaTable.isDeltaTable(get_spark(), self._filepath)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "key": self._key}
