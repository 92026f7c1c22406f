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
    """Files saved together into ``folder`` with a manifest of their hashes, so that a reader
    gets all of one run's files or waits for them: name -> bytes, or named numpy arrays for a
    ``.npz`` name."""

    def __init__(
        self,
        *,
        folder: str,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._folder = str(folder).rstrip("/")
        self._fs, self._path = fsspec.core.url_to_fs(self._folder, **(fs_args or {}))
        self.metadata = metadata

    def load(self) -> dict[str, AppFile]:
        files = read_app_files(self._fs, self._path)
        return {
            name: npz_arrays(content) if name.endswith(".npz") else content
            for name, content in files.items()
        }

    def save(self, data: dict[str, AppFile]) -> None:
        files = {
            name: npz_bytes(content) if isinstance(content, dict) else bytes(content)
            for name, content in data.items()
        }
        write_app_files(self._fs, self._path, files)

    def _exists(self) -> bool:
        return self._fs.isfile(f"{self._path}/{MANIFEST}")

    def _describe(self) -> dict[str, Any]:
        return {"folder": self._folder}
