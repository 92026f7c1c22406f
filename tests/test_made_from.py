"""Outputs that know what they were made from: the image table's loads stamp its version, and a
Spark output made from the same sources as its committed version is kept, not written again."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyspark.sql import functions as F

from fruits_pipeline.datasets import CommittedSparkDataset, DeltaMergeDataset
from fruits_pipeline.made_from import made_from, stamp


def _pointer(folder: Path) -> str:
    return (folder / "_COMMITTED").read_text().strip()


@pytest.fixture
def rows(spark):
    return spark.createDataFrame([("a", 1.0), ("b", 2.0)], "path string, value double")


@pytest.mark.parametrize("file_format", ["parquet", "csv"])
def test_a_save_from_the_committed_sources_is_kept(spark, rows, tmp_path, file_format):
    folder = tmp_path / f"out.{file_format}"
    dataset = CommittedSparkDataset(
        filepath=str(folder),
        file_format=file_format,
        save_args={"header": True} if file_format == "csv" else None,
        load_args={"header": True} if file_format == "csv" else None,
        keep_if_same_sources=True,
    )
    dataset.save(stamp(rows, "path", table_version=3))
    first = _pointer(folder)
    assert (folder / first / "_MADE_FROM.json").exists()

    # Other rows, same declared sources: the committed version stays (the sources are trusted).
    dataset.save(stamp(rows.where(F.col("path") == "a"), "path", table_version=3))
    assert _pointer(folder) == first
    assert dataset.load().count() == 2

    # Other sources: written again.
    dataset.save(stamp(rows.where(F.col("path") == "a"), "path", table_version=4))
    second = _pointer(folder)
    assert second != first
    assert dataset.load().count() == 1

    # No declared sources: always written.
    dataset.save(rows)
    assert _pointer(folder) != second
    assert dataset.load().count() == 2


def test_without_the_option_every_save_is_written(spark, rows, tmp_path):
    folder = tmp_path / "out.parquet"
    dataset = CommittedSparkDataset(filepath=str(folder))
    stamped = stamp(rows, "path", table_version=3)
    dataset.save(stamped)
    first = _pointer(folder)
    dataset.save(stamped)
    assert _pointer(folder) != first


def test_the_stamp_survives_parquet_and_transformations(spark, rows, tmp_path):
    folder = tmp_path / "out.parquet"
    dataset = CommittedSparkDataset(filepath=str(folder), keep_if_same_sources=True)
    stamped = stamp(stamp(rows, "path", table_version=3), "path", pca_model="m1")
    assert made_from(stamped) == {"table_version": 3, "pca_model": "m1"}
    dataset.save(stamped.withColumn("double", F.col("value") * 2).select("path", "double"))
    loaded = dataset.load()
    assert made_from(loaded) == {"table_version": 3, "pca_model": "m1"}
    assert made_from(loaded.select("path", (F.col("double") + 1).alias("x"))) == made_from(loaded)
    assert made_from(rows) is None


def test_the_image_tables_loads_carry_its_version(spark, tmp_path):
    table = tmp_path / "table"
    dataset = DeltaMergeDataset(filepath=str(table))
    changes = spark.createDataFrame(
        [("a", 1.0, False), ("b", 2.0, False)], "path string, value double, _delete boolean"
    )
    dataset.save(changes)
    first = made_from(dataset.load())
    assert first["table"] == str(table) and first["version"] == 0

    dataset.save(changes.limit(0))  # nothing to merge: no commit, the same sources
    assert made_from(dataset.load()) == first

    dataset.save(
        spark.createDataFrame([("a", 0.0, True)], "path string, value double, _delete boolean")
    )
    second = made_from(dataset.load())
    assert second["version"] == 1 and second["committed"] >= first["committed"]
    assert [row["path"] for row in dataset.load().collect()] == ["b"]


def test_a_commit_keeps_the_version_before_it_for_readers_still_reading(tmp_path):
    """Readers outside the run lock may still read the version committed before: it stays
    until the next commit; older versions and uncommitted leftovers go."""
    from fruits_pipeline.datasets.committed import VersionedFolder

    folder = VersionedFolder(str(tmp_path / "out"))
    versions = []
    for run in range(3):
        version = folder.new_version()
        (tmp_path / "out" / version).mkdir(parents=True)  # as Spark's write makes it
        folder.write(version, "part-0", b"run %d" % run)
        folder.commit(version)
        versions.append(version)
    leftover = folder.new_version()
    (tmp_path / "out" / leftover).mkdir()
    last = folder.new_version()
    (tmp_path / "out" / last).mkdir()
    folder.write(last, "part-0", b"run 3")
    folder.commit(last)
    kept = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert kept == sorted(["_COMMITTED", versions[-1], last])
    assert folder.read_committed("part-0") == b"run 3"


def test_a_change_feed_holds_only_the_versions_of_the_same_table():
    from fruits_pipeline.datasets import ChangeFeed

    feed = ChangeFeed("s3a://b/p/04_feature/image_features", 2, {0: "t0", 1: "t1", 2: "t2"})
    version_1 = {"table": feed.filepath, "version": 1, "committed": "t1"}
    assert feed.holds(version_1)
    assert feed.holds({**version_1, "pca_model": "fruits_pca_x"}), "other sources do not matter"
    # The table deleted and made again: version 1 exists, committed at another time.
    assert not feed.holds({**version_1, "committed": "t1 of the table before"})
    assert not feed.holds({**version_1, "version": 3, "committed": "t3"}), "not reached yet"
    assert not feed.holds({**version_1, "table": "data/04_feature/image_features"})
    assert not feed.holds({})
