"""Nodes of the ``ingestion`` pipeline."""

from __future__ import annotations

import os
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def spark_location(location: str) -> str:
    """A folder as Spark's file listing writes it in ``path``: ``file:/abs/dir`` for local
    folders (relative ones resolved from the working directory, as Spark does), the URI itself
    otherwise."""
    if "://" in location and not location.startswith("file://"):
        return location.rstrip("/")
    return "file:" + os.path.abspath(location.removeprefix("file://"))


def label_from_path(path: Column, root: str) -> Column:
    """The class label of an image: the name of the folder that holds it
    (``.../Training/Apple Red 1/r_32_100.jpg`` -> ``Apple Red 1``); null for an image directly
    in ``root`` (a Spark location), which sits in no class folder."""
    folder = F.regexp_extract(path, r"^(.*)/[^/]*$", 1)
    return F.when(folder == F.lit(root), F.lit(None).cast("string")).otherwise(
        F.element_at(F.split(folder, "/"), -1)
    )


def label_images(raw_images: DataFrame, ingestion: dict[str, Any]) -> DataFrame:
    """Adds the label to Spark's ``binaryFile`` rows (path, label, length, modificationTime,
    content).

    Every file listed is kept, labelled or not, so that the featurization can account for each.
    """
    root = spark_location(ingestion["raw_images_path"])
    return raw_images.select(
        "path",
        label_from_path(F.col("path"), root).alias("label"),
        "length",
        "modificationTime",
        "content",
    )
