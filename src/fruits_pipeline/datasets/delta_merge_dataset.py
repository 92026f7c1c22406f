"""A Delta Lake table kept up to date by ``MERGE``: a save applies a batch of changes."""

from __future__ import annotations

import json
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._utils.spark_utils import get_spark
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits_pipeline.made_from import made_from, stamp

# The table property that records what a derived table was made from (``record_sources``).
SOURCES_PROPERTY = "fruits_pipeline.made_from"
CHANGE_DATA_FEED = "delta.enableChangeDataFeed"


def is_delta_table(filepath: str) -> bool:
    """Delta's own check (a readable ``_delta_log``), from its Scala API: the jars' only door."""
    spark = get_spark()
    return spark._jvm.io.delta.tables.DeltaTable.isDeltaTable(spark._jsparkSession, filepath)


def delta_table_name(filepath: str) -> str:
    """The table at ``filepath`` as Delta's SQL names it."""
    return "delta.`{}`".format(filepath.replace("`", "``"))


class DeltaTableAt:
    """The location of a Delta table, for the datasets that read or write it."""

    _filepath: str

    @property
    def filepath(self) -> str:
        """The table's location (read without Spark by ``nothing_new``)."""
        return self._filepath

    @property
    def _table_name(self) -> str:
        return delta_table_name(self._filepath)


class DeltaMergeDataset(DeltaTableAt, AbstractDataset[DataFrame, DataFrame]):
    """A Delta table keyed by ``key``. ``save(changes)`` applies the rows of ``changes`` in one
    ``MERGE`` transaction: a row whose ``delete_column`` is true removes the table's row with
    its key, any other row replaces it or is inserted. A batch without rows commits nothing, so
    a replayed run leaves the table's version as it was.

    ``none_when_missing`` makes ``load`` return None, rather than fail, before the first save.
    A load reads the table's latest version and records it on the key column (``made_from``);
    with ``record_sources`` (a table derived from others), a save records what its rows were
    made from in a table property, after the MERGE (so that it may lag the rows, never lead
    them), and a load stamps that instead. ``change_data_feed`` turns on Delta's change data
    feed, which lets a reader take only the rows changed since a version (``ChangeFeed``).
    A save writes ``write_partitions`` files (default: one per task slot, Spark's default
    parallelism): fewer writers write the table faster, and its readers open fewer files. The
    save is the last reader of the rows it is given: a persisted DataFrame (the node computed
    it once, for its counts and for this write) is released once written.

    Only Delta's SQL is used, not its Python package: the SQL needs nothing but Delta's jars,
    which EMR ships with its Spark, while the ``delta-spark`` Python package requires a pip
    ``pyspark`` beside the cluster's own.
    """

    def __init__(
        self,
        *,
        filepath: str,
        key: str = "path",
        delete_column: str = "_delete",
        none_when_missing: bool = False,
        write_partitions: int | None = None,
        record_sources: bool = False,
        change_data_feed: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = str(filepath)
        self._record_sources = record_sources
        self._change_data_feed = change_data_feed
        self._write_partitions = write_partitions
        self._key = key
        self._delete_column = delete_column
        self.none_when_missing = none_when_missing
        self.metadata = metadata

    def _is_table(self) -> bool:
        return is_delta_table(self._filepath)

    def _read(self) -> DataFrame | None:
        if not self._is_table():
            return None
        spark = get_spark()
        if self._record_sources:
            sources = self._properties().get(SOURCES_PROPERTY)
            table = spark.read.format("delta").load(self._filepath)
            return stamp(table, self._key, **json.loads(sources)) if sources else table
        latest = spark.sql(f"DESCRIBE HISTORY {self._table_name} LIMIT 1").first()
        table = spark.read.format("delta").option("versionAsOf", latest["version"])
        # The version read, and its commit time (a table made again restarts at version 0).
        return stamp(
            table.load(self._filepath),
            self._key,
            table=self._filepath,
            version=latest["version"],
            committed=latest["timestamp"].isoformat(),
        )

    def load(self) -> DataFrame | None:
        table = self._read()
        if table is None and not self.none_when_missing:
            raise DatasetError(
                f"No Delta table at {self._filepath}: run the pipeline that writes it."
            )
        return table

    def save(self, data: DataFrame) -> None:
        try:
            if not data.isEmpty():
                partitions = self._write_partitions or get_spark().sparkContext.defaultParallelism
                self._apply(data.coalesce(int(partitions)))
            if self._record_sources and self._is_table():
                self._set_properties({SOURCES_PROPERTY: json.dumps(made_from(data) or {})})
        finally:
            data.unpersist()

    def _properties(self) -> dict[str, str]:
        detail = get_spark().sql(f"DESCRIBE DETAIL {self._table_name}").first()
        return dict(detail["properties"] or {})

    def _set_properties(self, properties: dict[str, str]) -> None:
        """Sets the table properties that differ (each change is a commit of its own)."""
        current = self._properties()
        changed = {key: value for key, value in properties.items() if current.get(key) != value}
        if changed:
            settings = ", ".join(
                "'{}' = '{}'".format(key, value.replace("\\", "\\\\").replace("'", "\\'"))
                for key, value in changed.items()
            )
            get_spark().sql(f"ALTER TABLE {self._table_name} SET TBLPROPERTIES ({settings})")

    def _apply(self, data: DataFrame) -> None:
        columns = [name for name in data.columns if name != self._delete_column]
        deleted = F.col(self._delete_column)
        if not self._is_table():
            # The first batch creates the table; a concurrent creator makes this one fail.
            writer = data.where(~deleted).select(*columns).write.format("delta")
            if self._change_data_feed:
                writer = writer.option(CHANGE_DATA_FEED, "true")
            writer.mode("errorifexists").save(self._filepath)
            return
        if self._change_data_feed:  # a table made before the feed was asked for
            self._set_properties({CHANGE_DATA_FEED: "true"})
        view = f"delta_merge_changes_{id(data):x}"
        data.createOrReplaceTempView(view)
        quoted = [f"`{name}`" for name in columns]
        try:
            get_spark().sql(
                f"MERGE INTO {self._table_name} AS stored USING {view} AS change "
                f"ON stored.`{self._key}` = change.`{self._key}` "
                f"WHEN MATCHED AND change.`{self._delete_column}` THEN DELETE "
                "WHEN MATCHED THEN UPDATE SET "
                + ", ".join(f"{name} = change.{name}" for name in quoted)
                + f" WHEN NOT MATCHED AND NOT change.`{self._delete_column}` THEN INSERT ("
                + ", ".join(quoted)
                + ") VALUES ("
                + ", ".join(f"change.{name}" for name in quoted)
                + ")"
            )
        finally:
            get_spark().catalog.dropTempView(view)

    def _exists(self) -> bool:
        return self._is_table()

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "key": self._key,
            "write_partitions": self._write_partitions,
            "record_sources": self._record_sources,
            "change_data_feed": self._change_data_feed,
        }
