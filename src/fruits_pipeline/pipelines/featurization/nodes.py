"""Nodes of the ``featurization`` pipeline: the Spark plumbing around the MobileNetV2 extractor.

The model is built and exported to LiteRT once on the driver (``mobilenet_v2.export_litert``),
and that model, weights included, is broadcast once. Each Python worker opens it in a LiteRT
interpreter and keeps it in a module-level cache, so that it is reused by every task and batch the
(reused) worker runs; the workers never import TensorFlow.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark import Accumulator, Broadcast, StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

from fruits_pipeline import mobilenet_v2

logger = logging.getLogger(__name__)

FEATURIZATION_RESULT = StructType(
    [
        StructField("features", ArrayType(FloatType(), containsNull=False), nullable=True),
        StructField("reason", StringType(), nullable=True),
        StructField("error_class", StringType(), nullable=True),
    ]
)

NO_CLASS_FOLDER = (
    "no class folder: the file sits directly in raw_images_path, so it has no label; "
    "move it into a folder named after its class"
)


@dataclass(frozen=True)
class WorkerSettings:
    """What a Python worker needs besides the weights."""

    weights_sha256: str
    inference_batch_size: int
    max_image_pixels: int
    inference_threads: int


# Per Python worker process: weights sha256 -> extractor holding those weights.
_WORKER_MODELS: dict[str, mobilenet_v2.FeatureExtractor] = {}


def _worker_model(litert_model: Broadcast, settings: WorkerSettings):
    model = _WORKER_MODELS.get(settings.weights_sha256)
    if model is None:
        model = mobilenet_v2.FeatureExtractor(litert_model.value, settings.inference_threads)
        _WORKER_MODELS.clear()  # other weights replace the previous model, not add to it
        _WORKER_MODELS[settings.weights_sha256] = model
        # PySpark's daemon runs a full gc.collect() in a reused worker after every task; it
        # scanned every object of the worker's imports and model (~100 ms a task, measured).
        # Frozen, they are left out of it (~2 ms a task).
        gc.freeze()
    return model


def featurize_batch(
    model: mobilenet_v2.FeatureExtractor, contents: pd.Series, settings: WorkerSettings
) -> pd.DataFrame:
    """Features for a batch of image bytes; undecodable images get a reason instead."""
    features: list[np.ndarray | None] = [None] * len(contents)
    reasons: list[str | None] = [None] * len(contents)
    error_classes: list[str | None] = [None] * len(contents)
    decoded: list[np.ndarray] = []
    decoded_rows: list[int] = []
    for row, content in enumerate(contents):
        try:
            decoded.append(mobilenet_v2.decode_image(content, settings.max_image_pixels))
            decoded_rows.append(row)
        except mobilenet_v2.ImageDecodeError as error:
            reasons[row] = str(error)
            cause = error.__cause__ or error
            error_classes[row] = type(cause).__name__
    step = settings.inference_batch_size
    for start in range(0, len(decoded), step):
        outputs = model(np.stack(decoded[start : start + step]))
        for row, vector in zip(decoded_rows[start : start + step], outputs, strict=True):
            features[row] = vector
    return pd.DataFrame({"features": features, "reason": reasons, "error_class": error_classes})


def make_featurizer(litert_model: Broadcast, settings: WorkerSettings, images_done: Accumulator):
    """A Scalar-Iterator pandas UDF: image bytes -> struct(features, reason, error_class)."""

    @F.pandas_udf(FEATURIZATION_RESULT)
    def featurize(contents: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        model = _worker_model(litert_model, settings)
        for batch in contents:
            yield featurize_batch(model, batch, settings)
            images_done.add(len(batch))

    return featurize


def _partitions(images: int, slots: int, featurization: dict[str, Any]) -> int:
    """Enough partitions to keep every task slot busy to the end of the stage, and small enough
    for progress to be reported as tasks finish."""
    if featurization.get("partitions"):
        return int(featurization["partitions"])
    per_partition = int(featurization["images_per_partition"])
    return max(2 * slots, -(-images // per_partition))


@contextmanager
def progress_log(images_done: Accumulator, total: int, every_seconds: float = 15.0):
    """Logs images done / total and the rate while the block runs (Spark sends accumulator
    updates as tasks finish, so the count moves task by task)."""
    started = time.perf_counter()
    finished = threading.Event()

    def report() -> None:
        while not finished.wait(every_seconds):
            done, elapsed = images_done.value, time.perf_counter() - started
            logger.info(
                "featurization: %d / %d images (%.0f%%), %.1f images/s",
                done,
                total,
                100.0 * done / total if total else 100.0,
                done / elapsed,
            )

    reporter = threading.Thread(target=report, name="featurization-progress", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        finished.set()
        reporter.join()


def extract_features(
    image_binaries: DataFrame, featurization: dict[str, Any]
) -> tuple[DataFrame, DataFrame, dict[str, Any]]:
    """MobileNetV2 features of every image, and a quarantine row for every image that has none.

    Returns:
        image_features (path, label, features: 1280 floats), image_quarantine (path, label,
        reason, error_class), and featurization_info (weights, settings, counts, seconds).
    """
    started = time.perf_counter()
    weights_file = mobilenet_v2.resolve_weights(featurization["weights"])
    spark = image_binaries.sparkSession
    litert_model = spark.sparkContext.broadcast(mobilenet_v2.export_litert(weights_file))
    spark.conf.set(
        "spark.sql.execution.arrow.maxRecordsPerBatch", int(featurization["arrow_batch_size"])
    )
    settings = WorkerSettings(
        weights_sha256=weights_file.sha256,
        inference_batch_size=int(featurization["inference_batch_size"]),
        max_image_pixels=int(featurization["max_image_pixels"]),
        inference_threads=int(featurization["inference_threads"]),
    )
    images = image_binaries.count()
    slots = spark.sparkContext.defaultParallelism
    partitions = _partitions(images, slots, featurization)
    images_done = spark.sparkContext.accumulator(0)
    featurize = make_featurizer(litert_model, settings, images_done)
    results = (
        image_binaries.repartition(partitions)
        .select("path", "label", featurize(F.col("content")).alias("result"))
        .select("path", "label", "result.*")
        # Both outputs come from this one pass of the model.
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    # An image outside any class folder has features but no label: useless for the app, so it
    # is quarantined with its reason rather than written without a label.
    usable = F.col("features").isNotNull() & F.col("label").isNotNull()
    with progress_log(images_done, images):
        counts = {
            row["usable"]: row["count"]
            for row in results.groupBy(usable.alias("usable")).count().collect()
        }
    featurized, quarantined = counts.get(True, 0), counts.get(False, 0)
    seconds = time.perf_counter() - started
    logger.info(
        "Featurized %d images (%d quarantined) in %.1f s: %.1f images/s",
        featurized,
        quarantined,
        seconds,
        (featurized + quarantined) / seconds if seconds else 0.0,
    )
    # Written as one file per task slot: the small tasks that balance the model stage would
    # each start a writer for a ~1 MB file (8,192 images: 7.5 s to write 32 files, ~1.5 s for 2).
    image_features = results.where(usable).select("path", "label", "features").coalesce(slots)
    image_quarantine = (
        results.where(~usable)
        .select(
            "path",
            "label",
            F.coalesce("reason", F.lit(NO_CLASS_FOLDER)).alias("reason"),
            F.coalesce("error_class", F.lit("MissingLabel")).alias("error_class"),
        )
        .coalesce(slots)
    )
    info = {
        "model": "MobileNetV2 1.0, 224x224, no top, global average pooling (Keras, run by LiteRT)",
        "feature_dim": mobilenet_v2.FEATURE_DIM,
        "weights_source": weights_file.source,
        "weights_sha256": weights_file.sha256,
        "images_featurized": featurized,
        "images_quarantined": quarantined,
        "partitions": partitions,
        "inference_batch_size": settings.inference_batch_size,
        "arrow_batch_size": int(featurization["arrow_batch_size"]),
        "seconds": round(seconds, 3),
    }
    return image_features, image_quarantine, info
