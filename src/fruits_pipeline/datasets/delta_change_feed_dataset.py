"""A Delta Lake table's change data feed: the rows a run's changes touched, with their images
before and after."""

from __future__ import annotations

from dataclasses import dataclass

from kedro_datasets._utils.spark_utils import get_spark
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame

from fruits_pipeline.datasets.delta_history_dataset import _DeltaPastDataset
from fruits_pipeline.datasets.delta_merge_dataset import is_delta_table


@dataclass(frozen=True)
class ChangeFeed:
    """The change data feed of the table at ``filepath``, whose latest version is ``version``."""

    filepath: str
    version: int

    def since(self, version: int) -> DataFrame | None:
        """The table's rows changed after ``version`` up to ``self.version``, as Delta's change
        data feed gives them: each row's columns, ``_change_type`` (insert, update_preimage,
        update_postimage, delete) and ``_commit_version``. None when the feed does not reach
        back to ``version`` (turned on later, or cleaned up since)."""
        if version >= self.version:
            raise ValueError(f"no change after version {version}: the table is at {self.version}")
        try:
            changes = (
                get_spark()
                .read.format("delta")
                .option("readChangeFeed", "true")
                .option("startingVersion", version + 1)
                .option("endingVersion", self.version)
                .load(self.filepath)
            )
            changes.schema  # noqa: B018 - Delta checks the versions' feed when it plans the read
        except AnalysisException:
            return None
        return changes


class DeltaChangeFeedDataset(_DeltaPastDataset):
    """The change data feed of the Delta table at ``filepath`` (the table's writer turns it on:
    ``DeltaMergeDataset(change_data_feed=True)``), as a ``ChangeFeed`` at its latest version."""

    def load(self) -> ChangeFeed | None:
        if not is_delta_table(self._filepath):
            return None
        latest = get_spark().sql(f"DESCRIBE HISTORY {self._table_name} LIMIT 1").first()
        return ChangeFeed(self._filepath, int(latest["version"]))
