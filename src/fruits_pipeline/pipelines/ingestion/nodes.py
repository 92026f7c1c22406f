"""Nodes of the ``ingestion`` pipeline."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def label_from_path(path: Column) -> Column:
    """The class label of an image: the name of the folder that holds it
    (``.../Training/Apple Red 1/r_32_100.jpg`` -> ``Apple Red 1``)."""
    return F.element_at(F.split(path, "/"), -2)


def label_images(raw_images: DataFrame) -> DataFrame:
    """Adds the label to Spark's ``binaryFile`` rows: path, label, length, modificationTime, content."""
    return raw_images.select(
        "path",
        label_from_path(F.col("path")).alias("label"),
        "length",
        "modificationTime",
        "content",
    )
