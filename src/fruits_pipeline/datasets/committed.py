"""Write-then-commit for folder outputs (Spark tables, Spark ML models).

Each save writes a new version folder under the dataset's path, then commits it by writing the
version's name to ``<path>/_COMMITTED``; loads read the committed version only. A run killed
while writing leaves an uncommitted folder that no load sees (the next commit removes it), so
the previous complete output stays readable; a commit keeps the version committed before it
(for readers still reading it) and removes the older ones. The pointer is written to a
temporary name and moved into place: a rename on local disks and HDFS, a single atomic
PUT-copy on S3.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import fsspec
from kedro.io import DatasetError

POINTER = "_COMMITTED"


class VersionedFolder:
    """The version folders of one dataset path and the pointer that names the committed one."""

    def __init__(
        self,
        path: str,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
    ) -> None:
        self.path = path.rstrip("/")
        # fsspec maps s3a:// (the scheme Spark's S3A connector wants) to s3fs as well; fs_args
        # reach the filesystem as in kedro-datasets (e.g. s3_additional_kwargs for encryption).
        self._fs, self._fs_path = fsspec.core.url_to_fs(
            self.path, **(credentials or {}), **(fs_args or {})
        )

    def new_version(self) -> str:
        """A fresh, sortable version name; nothing is written yet."""
        return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")

    def location(self, version: str) -> str:
        return f"{self.path}/{version}"

    def committed(self) -> str | None:
        pointer = f"{self._fs_path}/{POINTER}"
        if not self._fs.exists(pointer):
            return None
        return self._fs.cat_file(pointer).decode().strip() or None

    def committed_location(self) -> str:
        version = self.committed()
        if version is None:
            raise DatasetError(
                f"No committed output at {self.path} (no {POINTER} file): run the pipeline "
                "that writes it first."
            )
        return self.location(version)

    def read_committed(self, relative_path: str) -> bytes | None:
        """The bytes of one file of the committed version; None when no version is committed
        or the committed one has no such file."""
        version = self.committed()
        if version is None:
            return None
        try:
            return self._fs.cat_file(f"{self._fs_path}/{version}/{relative_path}")
        except FileNotFoundError:
            return None

    def write(self, version: str, relative_path: str, content: bytes) -> None:
        """Adds a file to ``version`` before it is committed."""
        self._fs.pipe_file(f"{self._fs_path}/{version}/{relative_path}", content)

    def commit(self, version: str) -> None:
        """Points loads at ``version``, then removes every other version folder but the one
        committed before: a reader that read the pointer just before this commit (a notebook,
        a downstream job, outside the run lock) still finds its files, until the next commit."""
        previous = self.committed()
        staged = f"{self._fs_path}/{POINTER}.{uuid.uuid4().hex}"
        self._fs.pipe_file(staged, version.encode())
        self._fs.mv(staged, f"{self._fs_path}/{POINTER}")
        for entry in self._fs.ls(self._fs_path, detail=False):
            name = entry.rstrip("/").rsplit("/", 1)[-1]
            if name not in (version, previous, POINTER):
                self._fs.rm(entry, recursive=True)
