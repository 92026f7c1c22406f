"""Named numpy arrays in one ``.npz`` file."""

from __future__ import annotations

import io

import numpy as np

from fruits_pipeline.datasets.bytes_dataset import BytesDataset


class NumpyArraysDataset(BytesDataset):
    """A dict of numpy arrays saved with ``numpy.savez`` (plain arrays, no pickle), stored as
    ``BytesDataset`` stores a file."""

    def load(self) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(super().load()), allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}

    def save(self, data: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **data)
        super().save(buffer.getvalue())
