"""Labels come from the folder that holds each image."""

from pathlib import Path

import pytest

from fruits_pipeline.datasets import ImageFolderDataset, spark_location


def test_label_is_the_parent_folder_name_and_none_at_the_top_level(tmp_path):
    for relative in (
        "Training/Apple Red 1/r_32_100.jpg",
        "Pêche Plate/é 1.jpg",
        "苹果/1.jpg",
        "stray.jpg",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    labels = {
        path.removeprefix(f"file:{tmp_path}/"): label
        for path, label, _, _ in ImageFolderDataset(path=str(tmp_path)).list_images()
    }
    assert labels == {
        "Training/Apple Red 1/r_32_100.jpg": "Apple Red 1",
        "Pêche Plate/é 1.jpg": "Pêche Plate",
        "苹果/1.jpg": "苹果",
        "stray.jpg": None,
    }


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


def test_the_store_is_listed_without_reading_and_read_as_spark_reads_it(spark, small_image_set):
    store = ImageFolderDataset(path=str(small_image_set)).load()
    assert store.listing.columns == ["path", "label", "length", "modificationTime"]
    rows = store.listing.collect()
    expected = {
        (image.parent.name, image.name): image.stat().st_size
        for image in small_image_set.rglob("*.jpg")
    }
    assert len(rows) == len(expected) == 13 * 12
    for row in rows:
        folder, name = row["path"].split("/")[-2:]
        assert row["label"] == folder
        assert expected[(folder, name)] == row["length"]
    # The listing's paths are binaryFile's: the bytes join back on them, a few or many.
    for wanted in (store.listing.limit(3), store.listing):
        contents = store.contents(wanted).collect()
        assert len(contents) == wanted.count()
        for row in contents:
            assert row["content"] == Path(row["path"].removeprefix("file:")).read_bytes()


def test_names_that_hadoop_reads_as_globs_are_read_as_names(spark, small_image_set, tmp_path):
    image = next(small_image_set.rglob("*.jpg"))
    (tmp_path / "Odd").mkdir()
    for name in ("a[1].jpg", "b{2}.jpg", "c*.jpg", "d?.jpg"):
        (tmp_path / "Odd" / name).write_bytes(image.read_bytes())
    # Few enough among the store's files to be read path by path.
    (tmp_path / "Plain").mkdir()
    for index in range(20):
        (tmp_path / "Plain" / f"{index}.jpg").write_bytes(image.read_bytes())
    store = ImageFolderDataset(path=str(tmp_path)).load()
    contents = store.contents(store.listing.where("label = 'Odd'")).collect()
    assert sorted(row["path"].rsplit("/", 1)[-1] for row in contents) == [
        "a[1].jpg",
        "b{2}.jpg",
        "c*.jpg",
        "d?.jpg",
    ]


def test_image_folder_exists_only_with_matching_files(tmp_path, small_image_set):
    assert ImageFolderDataset(path=str(small_image_set)).exists()
    assert not ImageFolderDataset(path=str(small_image_set), glob="*.png").exists()
    assert not ImageFolderDataset(path=str(tmp_path / "nowhere")).exists()
    (tmp_path / "empty" / "Apple").mkdir(parents=True)
    assert not ImageFolderDataset(path=str(tmp_path / "empty")).exists()
    assert len(ImageFolderDataset(path=str(small_image_set)).find_images(limit=5)) == 5
