"""Labels come from the folder that holds each image."""

import pytest
from pyspark.sql import functions as F

from fruits_pipeline.datasets import ImageFolderDataset
from fruits_pipeline.pipelines.ingestion.nodes import label_from_path, label_images


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("file:/data/fruits-360/Training/Apple Red 1/r_32_100.jpg", "Apple Red 1"),
        ("s3a://bucket/fruits/Test/Banana Lady Finger/12_100.jpg", "Banana Lady Finger"),
        ("file:/d/Training/Pêche Plate/é 1.jpg", "Pêche Plate"),
        ("file:/d/Training/苹果/1.jpg", "苹果"),
    ],
)
def test_label_is_the_parent_folder_name(spark, path, label):
    row = spark.createDataFrame([(path,)], ["path"]).select(label_from_path(F.col("path"))).first()
    assert row[0] == label


def test_ingestion_reads_every_image_with_its_class_folder(spark, small_image_set):
    raw_images = ImageFolderDataset(path=str(small_image_set)).load()
    image_binaries = label_images(raw_images)
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
