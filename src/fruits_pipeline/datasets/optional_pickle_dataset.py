"""A pickle file that may not exist yet."""

from __future__ import annotations

from typing import Any

from kedro_datasets.pickle import PickleDataset


class OptionalPickleDataset(PickleDataset):
    """kedro-datasets' ``PickleDataset`` whose ``load`` gives None, rather than failing, where
    there is no file yet (what an earlier run saved, before the first run)."""

    none_when_missing = True

    def load(self) -> Any:
        return super().load() if self._exists() else None
