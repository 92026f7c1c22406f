"""The app's files: one consistent set in one folder (``fruits_pipeline.app_files``)."""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np
from kedro.io import AbstractDataset

from fruits_pipeline.app_files import (
    MANIFEST,
    npz_arrays,
    npz_bytes,
    read_app_files,
    write_app_files,
)

AppFile = bytes | dict[str, np.ndarray]


class AppFilesDataset(AbstractDataset[dict[str, AppFile], dict[str, AppFile]]):
    """Files saved together into the folder ``path`` (a key Kedro makes absolute from the
    project's root, as for ``filepath``) with a manifest of their hashes, so that a reader
    gets all of one run's files or waits for them: name -> bytes, or named numpy arrays for a
    ``.npz`` name. Several sets may share a folder, each with its own ``manifest``;
    ``none_when_missing`` makes ``load`` return None, rather than fail, before the first save."""

    def __init__(
        self,
        *,
        path: str,
        manifest: str = MANIFEST,
        none_when_missing: bool = False,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._folder = str(path).rstrip("/")
        self._manifest = manifest
        self.none_when_missing = none_when_missing
        self._fs, self._path = fsspec.core.url_to_fs(self._folder, **(fs_args or {}))
        self.metadata = metadata

    def load(self) -> dict[str, AppFile] | None:
        if self.none_when_missing and not self._exists():
            return None
        files = read_app_files(self._fs, self._path, self._manifest)
        return {
            name: npz_arrays(content) if name.endswith(".npz") else content
            for name, content in files.items()
        }

    def save(self, data: dict[str, AppFile]) -> None:
        files = {
            name: npz_bytes(content) if isinstance(content, dict) else bytes(content)
            for name, content in data.items()
        }
        write_app_files(self._fs, self._path, files, self._manifest)

    def _exists(self) -> bool:
        return self._fs.isfile(f"{self._path}/{self._manifest}")

    def _describe(self) -> dict[str, Any]:
        return {"path": self._folder, "manifest": self._manifest}
