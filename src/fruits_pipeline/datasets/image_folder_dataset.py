"""A folder (or URI) of image files, read by Spark's ``binaryFile`` source."""

from __future__ import annotations

import fnmatch
from datetime import datetime
from typing import Any

import fsspec
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._utils.spark_utils import get_spark
from pyspark.sql import DataFrame

FRUITS_360_SOURCES = (
    "Kaggle (https://www.kaggle.com/datasets/moltean/fruits) or the Fruits-360 GitHub "
    "repository (https://github.com/fruits-360)"
)


class MissingImagesError(DatasetError):
    """The image location holds no file matching the glob."""


class ImageFolderDataset(AbstractDataset[DataFrame, None]):
    """Loads every file under ``path`` whose name matches ``glob`` as a Spark DataFrame with
    Spark's ``binaryFile`` columns: ``path``, ``modificationTime``, ``length``, ``content``
    (empty files included, which Spark's own scan leaves out).

    ``path`` is a local folder or a URI Spark and fsspec both read (``s3a://`` for Spark on S3 is
    listed through s3fs). Read-only: the images are the project's input.
    """

    def __init__(
        self,
        *,
        path: str,
        glob: str = "*.jpg",
        recursive: bool = True,
        credentials: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = str(path)
        self._glob = glob
        self._recursive = recursive
        self._credentials = credentials or {}
        self.metadata = metadata

    def load(self) -> DataFrame:
        spark = get_spark()
        images = (
            spark.read.format("binaryFile")
            .option("pathGlobFilter", self._glob)
            .option("recursiveFileLookup", str(self._recursive).lower())
            .load(self._path)
        )
        # Spark's file scan skips zero-length files; add them back, so that every file listed is
        # accounted for (the featurization quarantines them).
        empty_files = self._empty_files()
        if not empty_files:
            return images
        return images.unionByName(spark.createDataFrame(empty_files, images.schema))

    def _empty_files(self) -> list[tuple[str, datetime, int, bytes]]:
        filesystem, root = fsspec.core.url_to_fs(self._path, **self._credentials)
        listing = filesystem.find(root, maxdepth=None if self._recursive else 1, detail=True)
        scheme = self._path.split("://", 1)[0] if "://" in self._path else "file"
        prefix = "file:" if scheme == "file" else f"{scheme}://"
        return [
            (prefix + path, filesystem.modified(path), 0, b"")
            for path, info in sorted(listing.items())
            if info.get("size") == 0 and fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], self._glob)
        ]

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: it holds the input images.")

    def _exists(self) -> bool:
        return bool(self.find_images(limit=1))

    def find_images(self, limit: int) -> list[str]:
        """Up to ``limit`` matching files, listed through fsspec (no Spark); stops listing there."""
        # fsspec maps s3a:// (the scheme Spark's S3A connector wants) to s3fs as well.
        filesystem, root = fsspec.core.url_to_fs(self._path, **self._credentials)
        if not filesystem.isdir(root):
            return []
        found: list[str] = []
        for folder, _, files in filesystem.walk(root, maxdepth=None if self._recursive else 1):
            found += [f"{folder}/{name}" for name in files if fnmatch.fnmatchcase(name, self._glob)]
            if len(found) >= limit:
                return found[:limit]
        return found

    def missing_images_message(self) -> str:
        """Says where the images were looked for, and how to provide them."""
        return (
            f"No image matching {self._glob!r} was found under {self._path!r} "
            f"({'recursively' if self._recursive else 'top level only'}). "
            f"Download the Fruits-360 data set from {FRUITS_360_SOURCES} and put its class "
            f"folders there (e.g. {self._path.rstrip('/')}/Training/Apple Red 1/r_32_100.jpg), "
            "or point the run elsewhere: "
            "kedro run --params raw_images_path=/path/to/fruits-360/Training"
        )

    def _describe(self) -> dict[str, Any]:
        return {"path": self._path, "glob": self._glob, "recursive": self._recursive}
