"""Project hooks: checks a run's inputs, then builds the SparkSession, when a pipeline starts."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import fsspec
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from fruits_pipeline.datasets import FeatureModelDataset, ImageFolderDataset, MissingImagesError
from fruits_pipeline.jvm_class_archive import (
    keep_when_complete,
    local_master,
    with_class_archive,
)
from fruits_pipeline.pipelines.dimensionality_reduction.nodes import MIN_IMAGES, check_threshold

logger = logging.getLogger(__name__)

FEATURE_MODEL = "feature_model"
DIMENSIONALITY_REDUCTION_PARAMS = "params:dimensionality_reduction"


class MissingInputError(RuntimeError):
    """A partial run needs a dataset that an earlier pipeline has not written yet."""


class MissingBucketError(RuntimeError):
    """A dataset of the run lives in an S3 bucket that does not exist or cannot be reached."""


S3_SCHEMES = ("s3", "s3a", "s3n")


def local_jvm_environment(spark_config: dict[str, Any]) -> dict[str, str]:
    """Environment variables for a local driver JVM: native BLAS threads = cores per task.

    On a cluster Spark gives each executor JVM OMP_NUM_THREADS = spark.task.cpus (SPARK-41188),
    because every task slot calling a multi-threaded OpenBLAS at once oversubscribes the cores.
    A local master runs its tasks in the driver's JVM, which Spark starts with the caller's
    environment only, so OpenBLAS (used by MLlib when the system has it, as CI installs it) ran
    as many threads per call as the machine has cores, for each task: projecting 8,192 images
    on the PCA took 3.6-5.2 s instead of 1.5 s. A value the user has set is kept.
    """
    if not local_master(spark_config) or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(spark_config.get("spark.task.cpus") or 1)}


@contextmanager
def _environment_for_children(variables: dict[str, str]) -> Iterator[None]:
    """``variables`` set only while the block starts a child process (the JVM), not for the
    rest of this Python process (TensorFlow's export and matplotlib keep their threads)."""
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in variables:
            os.environ.pop(name, None)


def create_spark_session(
    spark_config: dict[str, Any], write_class_archive: bool = False
) -> SparkSession:
    """Builds (or returns the running) SparkSession with the settings of ``spark.yml``; a local
    JVM maps the class archive of Spark's classes (``jvm_class_archive``), or writes it at exit
    when there is none and ``write_class_archive``, and gets one native BLAS thread per task
    slot (``local_jvm_environment``)."""
    # Spark's Python workers must run the interpreter that runs Kedro (same packages), not
    # whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    archive_to_write = None
    jvm_environment: dict[str, str] = {}
    if SparkContext._gateway is None:  # JVM options only count for the JVM about to start
        spark_config, archive_to_write = with_class_archive(spark_config, write_class_archive)
        jvm_environment = local_jvm_environment(spark_config)
    # A null setting (e.g. in conf/emr/spark.yml) leaves the key to Spark's own defaults.
    spark_conf = SparkConf().setAll(
        [(key, str(value)) for key, value in spark_config.items() if value is not None]
    )
    with _environment_for_children(jvm_environment):
        spark = SparkSession.builder.config(conf=spark_conf).getOrCreate()
    if archive_to_write is not None:
        keep_when_complete(spark.sparkContext, archive_to_write)
    spark.sparkContext.setLogLevel("WARN")
    return spark


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
    if FEATURE_MODEL in pipeline.inputs():
        # Loads the weights into the architecture and exports the model the workers run (cached
        # for the nodes' own loads), so that a corrupt file or one for another model fails here.
        catalog.load(FEATURE_MODEL)


def s3_buckets(catalog_config: dict[str, Any], dataset_names: set[str]) -> dict[str, list[str]]:
    """The S3 buckets the given datasets read or write, each with the datasets that use it."""
    buckets: dict[str, list[str]] = {}
    for name in sorted(dataset_names):
        entry = catalog_config.get(name) or {}
        location = urlsplit(str(entry.get("filepath") or entry.get("path") or ""))
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
        if isinstance(dataset, ImageFolderDataset | FeatureModelDataset):
            continue
        if not getattr(dataset, "none_when_missing", False) and not catalog.exists(name):
            raise MissingInputError(
                f"Input dataset {name!r} of this run has not been written yet ({dataset}). "
                "Run the pipeline that produces it first (`kedro run --pipelines ingestion`, "
                "then `featurization`), or run everything with `kedro run`."
            )


# kedro run's options that run part of the pipelines.
RUN_FILTERS = (
    "tags",
    "node_names",
    "from_nodes",
    "to_nodes",
    "from_inputs",
    "to_outputs",
    "namespaces",
    "only_missing_outputs",
)


def runs_whole_pipeline(run_params: dict[str, Any]) -> bool:
    """Whether a run is the whole default pipeline (``kedro run`` without options that select
    part of it): the run whose JVM loads every stage's classes, so the one that writes the class
    archive. (Kedro loads only the pipelines a run names, so nodes cannot be compared with
    ``__default__`` here.)"""
    names = run_params.get("pipeline_names") or ["__default__"]
    return names == ["__default__"] and not any(run_params.get(key) for key in RUN_FILTERS)


class SparkHooks:
    """Builds the SparkSession lazily: only when a pipeline run starts, so that commands that need
    no Spark (``kedro viz``, ``kedro catalog``, ``kedro registry``) start none."""

    def __init__(self) -> None:
        self._spark_config: dict[str, Any] = {}
        self._catalog_config: dict[str, Any] = {}
        self._env = "local"

    @hook_impl
    def after_context_created(self, context) -> None:
        self._spark_config = dict(context.config_loader["spark"])
        self._catalog_config = dict(context.config_loader["catalog"])
        self._env = context.env or "local"

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        check_buckets(s3_buckets(self._catalog_config, pipeline.datasets()), self._env)
        check_pipeline_inputs(pipeline, catalog)
        spark = create_spark_session(
            self._spark_config, write_class_archive=runs_whole_pipeline(run_params)
        )
        logger.info(
            "SparkSession ready: master %s, Spark %s, UI %s",
            spark.sparkContext.master,
            spark.version,
            spark.sparkContext.uiWebUrl,
        )
        check_intermediate_inputs(pipeline, catalog)
