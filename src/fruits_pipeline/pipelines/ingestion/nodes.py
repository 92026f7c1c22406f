"""Nodes of the ``ingestion`` pipeline: what changed in the photo store since the last run."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fruits_pipeline.datasets import ImageStore
from fruits_pipeline.errors import OtherStoreError
from fruits_pipeline.image_table import DELETE, EMPTY, FEATURIZE, ROW_IDENTITY, UNLABELLED
from fruits_pipeline.made_from import stamp
from fruits_pipeline.mobilenet_v2 import FeatureModel


def _action(label: Column, length: Column) -> Column:
    """Empty files and files outside any class folder are quarantined without being read."""
    return (
        F.when(label.isNull(), F.lit(UNLABELLED))
        .when(length == 0, F.lit(EMPTY))
        .otherwise(F.lit(FEATURIZE))
    )


def check_same_store(known_images: DataFrame, location: str) -> None:
    """Refuses a table that holds photos from outside the store: its rows of the other store
    would all be deleted, or the two mixed."""
    stranger = known_images.where(~F.col("path").startswith(location + "/")).select("path").first()
    if stranger is not None:
        raise OtherStoreError(stranger["path"], location)


def list_changes(
    image_store: ImageStore, known_images: DataFrame | None, feature_model: FeatureModel
) -> DataFrame:
    """The files of the store that are new, replaced (other length or modification time) or
    were featurized by other weights, and the featurized paths that left the store.

    Args:
        image_store: the store's content-free listing (path, label, length, modificationTime).
        known_images: the image table as the run finds it, or None before the first run.
        feature_model: the model this run featurizes with; its id marks the rows it made.

    Returns:
        path, label, length, modificationTime and ``action``: featurize, empty, unlabelled
        (both quarantined without reading the file) or delete; its ``path`` column records
        how many photos the listing held (``images_listed``), the store the table will hold.
    """
    listing = image_store.listing.withColumn("model_id", F.lit(feature_model.id))
    if known_images is None:
        known_images = listing.limit(0)
    check_same_store(known_images, image_store.location)
    # Both sides are one small row per photo (~100 bytes): broadcast, no shuffle.
    known = F.broadcast(known_images.select(*ROW_IDENTITY))
    changed = listing.join(known, ROW_IDENTITY, "left_anti").select(
        "path",
        "label",
        "length",
        "modificationTime",
        _action(F.col("label"), F.col("length")).alias("action"),
    )
    deleted = known_images.select("path").join(
        F.broadcast(listing.select("path")), "path", "left_anti"
    )
    plan = changed.unionByName(
        deleted.select(
            "path",
            F.lit(None).cast("string").alias("label"),
            F.lit(None).cast("long").alias("length"),
            F.lit(None).cast("timestamp").alias("modificationTime"),
            F.lit(DELETE).alias("action"),
        )
    )
    # A few rows in one file, not one per shuffle partition.
    return stamp(plan.coalesce(1), "path", images_listed=image_store.images)
