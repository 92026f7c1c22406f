"""A file saved and loaded as raw bytes (a LiteRT model) through fsspec."""

from __future__ import annotations

from typing import Any

import fsspec
from kedro.io import AbstractDataset


class BytesDataset(AbstractDataset[bytes, bytes]):
    """One file at ``filepath`` (local path or URI), its content as ``bytes``; written to a
    temporary name then moved into place, so a reader never sees half a file."""

    def __init__(
        self,
        *,
        filepath: str,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._filepath = str(filepath)
        self._fs, self._path = fsspec.core.url_to_fs(self._filepath, **(fs_args or {}))
        self.metadata = metadata

    def load(self) -> bytes:
        return self._fs.cat_file(self._path)

    def save(self, data: bytes) -> None:
        self._fs.makedirs(self._path.rsplit("/", 1)[0], exist_ok=True)
        staged = f"{self._path}.partial"
        self._fs.pipe_file(staged, bytes(data))
        self._fs.mv(staged, self._path)

    def _exists(self) -> bool:
        return self._fs.isfile(self._path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath}
