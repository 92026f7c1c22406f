"""Labels come from the folder that holds each image."""

import pytest
from pyspark.sql import functions as F

from fruits_pipeline.datasets import ImageFolderDataset
from fruits_pipeline.pipelines.ingestion.nodes import label_from_path, label_images, spark_location


@pytest.mark.parametrize(
    ("root", "path", "label"),
    [
        (
            "file:/data/fruits-360",
            "file:/data/fruits-360/Training/Apple Red 1/r_32_100.jpg",
            "Apple Red 1",
        ),
        (
            "file:/data/fruits-360/Training",
            "file:/data/fruits-360/Training/Apple Red 1/r_32_100.jpg",
            "Apple Red 1",
        ),
        (
            "s3a://bucket/fruits",
            "s3a://bucket/fruits/Test/Banana Lady Finger/12_100.jpg",
            "Banana Lady Finger",
        ),
        ("file:/d", "file:/d/Training/Pêche Plate/é 1.jpg", "Pêche Plate"),
        ("file:/d", "file:/d/Training/苹果/1.jpg", "苹果"),
        ("file:/d/Training", "file:/d/Training/stray.jpg", None),
        ("s3a://bucket/fruits", "s3a://bucket/fruits/stray.jpg", None),
    ],
)
def test_label_is_the_parent_folder_name_and_none_at_the_top_level(spark, root, path, label):
    frame = spark.createDataFrame([(path,)], ["path"])
    assert frame.select(label_from_path(F.col("path"), root)).first()[0] == label


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/data/fruits-360/", "file:/data/fruits-360"),
        ("file:///data/fruits-360", "file:/data/fruits-360"),
        ("s3a://bucket/fruits/", "s3a://bucket/fruits"),
    ],
)
def test_locations_are_written_as_spark_lists_files(location, expected):
    assert spark_location(location) == expected


def test_relative_location_resolves_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert spark_location("data/01_raw/fruits-360/") == f"file:{tmp_path}/data/01_raw/fruits-360"


def test_ingestion_reads_every_image_with_its_class_folder(spark, small_image_set):
    raw_images = ImageFolderDataset(path=str(small_image_set)).load()
    image_binaries = label_images(raw_images, {"raw_images_path": str(small_image_set)})
    assert image_binaries.columns == ["path", "label", "length", "modificationTime", "content"]
    rows = image_binaries.select("path", "label", "length").collect()
    expected = {
        (image.parent.name, image.name): image.stat().st_size
        for image in small_image_set.rglob("*.jpg")
    }
    assert len(rows) == len(expected) == 13 * 12
    for row in rows:
        folder, name = row["path"].split("/")[-2:]
        assert row["label"] == folder
        assert expected[(folder, name)] == row["length"]


def test_image_folder_exists_only_with_matching_files(tmp_path, small_image_set):
    assert ImageFolderDataset(path=str(small_image_set)).exists()
    assert not ImageFolderDataset(path=str(small_image_set), glob="*.png").exists()
    assert not ImageFolderDataset(path=str(tmp_path / "nowhere")).exists()
    (tmp_path / "empty" / "Apple").mkdir(parents=True)
    assert not ImageFolderDataset(path=str(tmp_path / "empty")).exists()
    assert len(ImageFolderDataset(path=str(small_image_set)).find_images(limit=5)) == 5
