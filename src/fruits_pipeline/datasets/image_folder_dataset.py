"""A folder (or URI) of image files, read by Spark's ``binaryFile`` source."""

from __future__ import annotations

import fnmatch
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
    Spark's ``binaryFile`` columns: ``path``, ``modificationTime``, ``length``, ``content``.

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
        return (
            get_spark()
            .read.format("binaryFile")
            .option("pathGlobFilter", self._glob)
            .option("recursiveFileLookup", str(self._recursive).lower())
            .load(self._path)
        )

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: it holds the input images.")

    def _exists(self) -> bool:
        """True when at least one file matches; stops listing at the first match."""
        # fsspec maps s3a:// (the scheme Spark's S3A connector wants) to s3fs as well.
        filesystem, root = fsspec.core.url_to_fs(self._path, **self._credentials)
        if not filesystem.isdir(root):
            return False
        for _, _, files in filesystem.walk(root, maxdepth=None if self._recursive else 1):
            if any(fnmatch.fnmatchcase(name, self._glob) for name in files):
                return True
        return False

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
