"""A Delta Lake table's change data feed: the rows a run's changes touched, with their images
before and after."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kedro_datasets._utils.spark_utils import get_spark
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame

from fruits_pipeline.datasets.delta_history_dataset import _DeltaPastDataset


@dataclass(frozen=True)
class ChangeFeed:
    """The change data feed of the table at ``filepath``, whose latest version is ``version``;
    ``commits`` gives each version's commit time, as a load's ``made_from`` records it."""

    filepath: str
    version: int
    commits: dict[int, str] = field(repr=False)

    def holds(self, sources: dict[str, Any]) -> bool:
        """Whether ``sources`` (a ``made_from``) names a version of this very table: the same
        path, a version its history holds, committed at the time recorded (a table deleted
        and made again restarts its versions)."""
        version = sources.get("version")
        return (
            sources.get("table") == self.filepath
            and version in self.commits
            and self.commits[version] == sources.get("committed")
        )

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
        history = self._history()
        if history is None:
            return None
        commits = {
            int(row["version"]): row["timestamp"].isoformat()
            for row in history.select("version", "timestamp").collect()
        }
        return ChangeFeed(self._filepath, max(commits), commits)
