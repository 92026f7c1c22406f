"""What a DataFrame was made from, carried in its schema.

The image table's loads stamp their ``path`` column with the table's version, and the
projection adds the PCA model's uid. Column metadata travels with the column through selects,
joins and ML transforms, and Spark keeps it in the parquet files it writes, so an output knows
the inputs it was computed from without reading a row. A save that would write again what the
committed output was made from is skipped (``CommittedSparkDataset``): a run with nothing new
does not project and write the store again.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame

# The key of the column metadata that holds the sources.
MADE_FROM = "made_from"


def made_from(frame: DataFrame) -> dict[str, Any] | None:
    """The sources stamped on ``frame``'s columns (merged), or None if it carries none."""
    sources: dict[str, Any] = {}
    for field in frame.schema.fields:
        sources.update(field.metadata.get(MADE_FROM, {}))
    return sources or None


def stamp(frame: DataFrame, column: str, **sources: Any) -> DataFrame:
    """``frame`` whose ``column`` also records ``sources`` (JSON values)."""
    metadata = dict(frame.schema[column].metadata)
    metadata[MADE_FROM] = {**metadata.get(MADE_FROM, {}), **sources}
    return frame.withMetadata(column, metadata)
