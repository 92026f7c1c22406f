"""A JSON file that may not exist yet."""

from __future__ import annotations

from typing import Any

from kedro_datasets.json import JSONDataset


class OptionalJSONDataset(JSONDataset):
    """kedro-datasets' ``JSONDataset`` whose ``load`` gives None, rather than failing, where
    there is no file yet (what an earlier run saved, before the first run)."""

    # Read by the run's preflight: a missing file is not a missing input.
    none_when_missing = True

    def load(self) -> Any:
        return super().load() if self._exists() else None
