"""Checks of a run's inputs, made before any Spark work where they can be: a run that cannot
succeed stops at once, with one paragraph saying what to fix."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import fsspec
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline

from fruits_pipeline.datasets import ImageFolderDataset, MissingImagesError
from fruits_pipeline.errors import OtherStoreError, UserError
from fruits_pipeline.explained_variance import MIN_IMAGES, check_threshold

FEATURE_MODEL = "feature_model"
DIMENSIONALITY_REDUCTION_PARAMS = "params:dimensionality_reduction"
S3_SCHEMES = ("s3", "s3a", "s3n")


class MissingInputError(UserError, RuntimeError):
    """A partial run needs a dataset that an earlier pipeline has not written yet."""


class MissingBucketError(UserError, RuntimeError):
    """A dataset of the run lives in an S3 bucket that does not exist or cannot be reached."""


def _datasets_read(pipeline: Pipeline) -> list[str]:
    """The datasets a run starts from (its free inputs that are not parameters)."""
    return sorted(
        name
        for name in pipeline.inputs()
        if not name.startswith("params:") and name != "parameters"
    )


def check_pipeline_inputs(pipeline: Pipeline, catalog: CatalogProtocol) -> None:
    """Fails before any Spark work when the settings are invalid, or the images or the model
    weights cannot be had."""
    reduces = DIMENSIONALITY_REDUCTION_PARAMS in pipeline.inputs()
    if reduces:
        check_threshold(catalog.load(DIMENSIONALITY_REDUCTION_PARAMS)["variance_threshold"])
    for name in _datasets_read(pipeline):
        dataset = catalog.get(name)
        if not isinstance(dataset, ImageFolderDataset):
            continue
        images = len(dataset.find_images(limit=MIN_IMAGES))
        if images == 0:
            raise MissingImagesError(dataset.missing_images_message())
        if reduces and images < MIN_IMAGES:
            raise MissingImagesError(
                f"PCA needs at least {MIN_IMAGES} images and {dataset} holds {images}: point "
                "raw_images_path at the folder that holds the class folders."
            )
    check_same_store(pipeline, catalog)
    if FEATURE_MODEL in pipeline.inputs():
        # Loads the weights into the architecture and exports the model the workers run, so
        # that a corrupt file or one for another model fails here; the catalog's CachedDataset
        # hands this very model to the nodes.
        catalog.load(FEATURE_MODEL)


def check_same_store(pipeline: Pipeline, catalog: CatalogProtocol) -> None:
    """Before Spark: a run that lists a store refuses one whose image table the last
    featurization made from another store (its featurization_info says which). list_changes
    checks the table's rows themselves once Spark runs."""
    if not {"raw_images", "known_images"} <= pipeline.inputs():
        return
    store = catalog.get("raw_images")
    if not catalog.exists("featurization_info"):
        return
    last = catalog.load("featurization_info").get("photo_store")
    if last is not None and last != store.location:
        raise OtherStoreError(last, store.location)


def s3_buckets(catalog_config: dict[str, Any], dataset_names: set[str]) -> dict[str, list[str]]:
    """The S3 buckets the given datasets read or write, each with the datasets that use it."""
    buckets: dict[str, list[str]] = {}
    for name in sorted(dataset_names):
        entry = catalog_config.get(name) or {}
        entry = entry.get("dataset", entry)  # a CachedDataset's wrapped dataset
        location = urlsplit(
            str(entry.get("filepath") or entry.get("path") or entry.get("folder") or "")
        )
        if location.scheme in S3_SCHEMES:
            buckets.setdefault(location.netloc, []).append(name)
    return buckets


def check_buckets(buckets: dict[str, list[str]], env: str) -> None:
    """Fails before any Spark work when a bucket of the run does not exist or cannot be reached
    with the current credentials (AWS default chain)."""
    if not buckets:
        return
    s3 = fsspec.filesystem("s3")
    for bucket, datasets in buckets.items():
        try:
            reachable, reason = s3.exists(bucket), "it does not exist"
        except Exception as error:  # noqa: BLE001 - any failure is reported with its cause
            reachable, reason = False, f"{type(error).__name__}: {error}"
        if not reachable:
            raise MissingBucketError(
                f"S3 bucket {bucket!r}, used by {', '.join(datasets)}, cannot be used: {reason} "
                "or the current AWS credentials cannot reach it. Set FRUITS_S3_BUCKET (and "
                f"FRUITS_S3_PREFIX), read by conf/{env}/globals.yml, to a bucket you can write "
                f"to, or create it (aws s3 mb s3://{bucket}); credentials come from the AWS "
                "default chain (environment, ~/.aws, instance profile)."
            )


def check_intermediate_inputs(pipeline: Pipeline, catalog: CatalogProtocol) -> None:
    """Says which earlier pipeline to run when a partial run's input has not been written: any
    input but the project's own (images, weights, checked before Spark) and those a first run
    finds empty (the image table and the PCA model of earlier runs)."""
    for name in _datasets_read(pipeline):
        dataset = catalog.get(name)
        if name == FEATURE_MODEL or isinstance(dataset, ImageFolderDataset):
            continue
        if not getattr(dataset, "none_when_missing", False) and not catalog.exists(name):
            raise MissingInputError(
                f"Input dataset {name!r} of this run has not been written yet ({dataset}). "
                "Run the pipeline that produces it first (`kedro run --pipelines ingestion`, "
                "then `featurization`), or run everything with `kedro run`."
            )
