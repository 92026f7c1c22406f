"""A folder (or URI) of image files: the photo store the pipelines read."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec
import pandas as pd
from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._utils.spark_utils import get_spark
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, DataFrameReader
from pyspark.sql import functions as F

from fruits_pipeline.errors import UserError

logger = logging.getLogger(__name__)

FRUITS_360_SOURCES = (
    "the Fruits-360 GitHub repository (https://github.com/fruits-360/fruits-360-100x100) or "
    "Kaggle (https://www.kaggle.com/datasets/moltean/fruits)"
)

LISTING_SCHEMA = "path string, label string, length long, modificationTime timestamp"
CONTENTS_SCHEMA = "path string, content binary"

# Characters Hadoop reads as a glob in a path given to Spark; a file name holding one is escaped.
_HADOOP_GLOB = re.compile(r"([\\*?\[\]{}])")

# Above this share of the store, the changed files are read by one scan of the whole store
# rather than one path at a time (a path costs a metadata request on S3; see docs/performance.md).
_SCAN_WHOLE_STORE_ABOVE = 0.25


class MissingImagesError(UserError, DatasetError):
    """The image location holds no file matching the glob."""


def spark_location(location: str) -> str:
    """A location as Spark writes it in ``path``: ``file:/abs/dir`` for local folders (relative
    ones resolved from the working directory, as Spark does), the URI itself otherwise."""
    if "://" in location and not location.startswith("file://"):
        return location.rstrip("/")
    return "file:" + os.path.abspath(location.removeprefix("file://"))


@dataclass(frozen=True)
class ImageStore:
    """The photo store as a run found it.

    ``listing`` has one row per image file, read from the filesystem's own listing without the
    files' content: ``path`` (as Spark's ``binaryFile`` writes it), ``label`` (the name of the
    folder that holds the file; null for a file directly in the store's root), ``length`` and
    ``modificationTime``; ``images`` counts its rows. ``contents`` reads the bytes of some of
    those files with ``binaryFile``.
    """

    location: str
    glob: str
    recursive: bool
    listing: DataFrame
    images: int

    def contents(self, paths: DataFrame) -> DataFrame:
        """``path, content`` of the files of ``paths`` (a DataFrame with a ``path`` column) that
        have bytes and are still there; Spark's scan leaves out empty files.

        A file removed since the store was listed gets no row (its caller quarantines it as
        unreadable), whenever it went: before the read (``_present_files``) or while the tasks
        run (Spark's ``ignoreMissingFiles``, which skips a file gone since Spark listed it)."""
        spark = paths.sparkSession
        wanted = [row["path"] for row in paths.select("path").collect()]
        if not wanted:
            return spark.createDataFrame([], CONTENTS_SCHEMA)
        reader = (
            spark.read.format("binaryFile")
            .option("pathGlobFilter", self.glob)
            .option("ignoreMissingFiles", "true")
        )
        if len(wanted) > _SCAN_WHOLE_STORE_ABOVE * self.images:
            scanned = reader.option("recursiveFileLookup", str(self.recursive).lower()).load(
                self.location
            )
            return scanned.join(F.broadcast(paths.select("path")), "path").select("path", "content")
        return _present_files(reader, [_HADOOP_GLOB.sub(r"\\\1", path) for path in wanted])


def _present_files(reader: DataFrameReader, paths: list[str]) -> DataFrame:
    """``path, content`` of the files named: Spark checks that each path it is given exists
    before it reads any, and stops the read at the first that does not; such a path (a file
    removed since the listing) is left out and the read started again."""
    remaining = list(paths)
    while remaining:
        try:
            return reader.load(remaining).select("path", "content")
        except AnalysisException as error:
            gone = error.getMessageParameters().get("path")
            if error.getErrorClass() != "PATH_NOT_FOUND" or gone not in remaining:
                raise
            logger.warning("%s was removed since the store was listed", gone)
            remaining.remove(gone)
    return get_spark().createDataFrame([], CONTENTS_SCHEMA)


def _modification_time(info: dict[str, Any]) -> datetime:
    """A listing entry's modification time, in UTC: local files give ``mtime`` in seconds,
    s3fs gives ``LastModified``."""
    if "mtime" in info:
        return datetime.fromtimestamp(float(info["mtime"]), tz=UTC)
    modified = info.get("LastModified") or info.get("last_modified")
    if isinstance(modified, datetime):
        return modified.astimezone(UTC)
    raise DatasetError(f"The listing gives no modification time for {info.get('name')!r}.")


class ImageFolderDataset(AbstractDataset[ImageStore, None]):
    """Loads the image files under ``path`` whose name matches ``glob`` as an ``ImageStore``.

    The listing comes from the filesystem (fsspec: a local walk, or one LIST request per
    1,000 keys on S3), not from a Spark scan, so that a run can compare the store with what
    it has already featurized without reading any file. ``path`` is a local folder or a URI that
    Spark and fsspec both read (``s3a://`` is listed through s3fs). Read-only: the images are
    the project's input.
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

    @property
    def location(self) -> str:
        """The store's root as Spark writes it (``file:/abs/dir``, ``s3a://bucket/prefix``)."""
        return spark_location(self._path)

    def load(self) -> ImageStore:
        spark = get_spark()
        rows = self.list_images()
        listing = spark.createDataFrame(
            pd.DataFrame(rows, columns=["path", "label", "length", "modificationTime"]),
            LISTING_SCHEMA,
        )
        return ImageStore(self.location, self._glob, self._recursive, listing, len(rows))

    def list_images(self) -> list[tuple[str, str | None, int, datetime]]:
        """(path, label, length, modificationTime) of every matching file, sorted by path."""
        filesystem, root = fsspec.core.url_to_fs(self._path, **self._credentials)
        if not filesystem.isdir(root):
            return []
        listing = filesystem.find(root, maxdepth=None if self._recursive else 1, detail=True)
        location = self.location
        prefix = location[: len(location) - len(root.rstrip("/"))]
        rows = []
        for name, info in sorted(listing.items()):
            folder, _, file_name = name.rpartition("/")
            if info.get("type") == "directory" or not fnmatch.fnmatchcase(file_name, self._glob):
                continue
            label = None if folder.rstrip("/") == root.rstrip("/") else folder.rsplit("/", 1)[-1]
            rows.append((prefix + name, label, int(info["size"]), _modification_time(info)))
        return rows

    def save(self, data: None) -> None:
        raise DatasetError(f"{type(self).__name__} is read-only: it holds the input images.")

    def _exists(self) -> bool:
        return bool(self.find_images(limit=1))

    def find_images(self, limit: int) -> list[str]:
        """Up to ``limit`` matching files, listed through fsspec (no Spark); stops listing there."""
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
