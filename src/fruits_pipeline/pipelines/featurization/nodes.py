"""Nodes of the ``featurization`` pipeline: the Spark plumbing around the MobileNetV2 extractor.

Only the files ``ingestion`` found new or changed reach the model. The model is exported to
LiteRT once on the driver (the ``feature_model`` dataset), and that model, weights included, is
broadcast once. Each Python worker opens it in a LiteRT
interpreter and keeps it in a module-level cache, so that it is reused by every task and batch the
(reused) worker runs; the workers never import TensorFlow. Batches go in and out as Arrow
(``mapInArrow``): a batch's features are one float32 buffer, not a Python object per image.

A task whose worker died (killed, out of memory, or a native decoder crashing on one file) is
retried by Spark; a retried attempt decodes its batches in a forked child first, so that a file
that crashes or hangs the decoder is quarantined with its reason instead of killing (or
hanging) every attempt.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import Accumulator, Broadcast, SparkContext, StorageLevel, TaskContext
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from fruits_pipeline import mobilenet_v2
from fruits_pipeline.datasets import ImageStore
from fruits_pipeline.image_table import (
    DECODER_CRASH,
    DECODER_OUT_OF_MEMORY,
    DECODER_TIMEOUT,
    DELETE,
    DELETE_COLUMN,
    EMPTY,
    EMPTY_FILE,
    FEATURES_TYPE,
    FEATURIZATION_RESULT,
    FEATURIZE,
    IDENTITY,
    NO_CLASS_FOLDER,
    UNLABELLED,
    UNREADABLE,
)
from fruits_pipeline.made_from import made_from

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    """What a Python worker needs besides the weights."""

    weights_sha256: str
    inference_batch_size: int
    max_image_pixels: int
    inference_threads: int
    decode_timeout_seconds: float


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


def _decode_in_child(
    contents: list[bytes], max_image_pixels: int, timeout: float
) -> tuple[int, tuple[str, str] | None]:
    """Decodes ``contents`` in order in a forked child of this worker, which reports each image
    done through a pipe: how many it decoded, and the error class and reason of the image
    after them if the child died on it (a native decoder crash, which would kill the worker
    itself) or spent more than ``timeout`` seconds on it (killed then), else None."""
    progress, report = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (runs in the child)
        try:
            os.close(progress)
            for content in contents:
                with contextlib.suppress(mobilenet_v2.ImageDecodeError):
                    mobilenet_v2.decode_image(content, max_image_pixels)
                os.write(report, b".")
        finally:
            os._exit(0)  # no clean-up of the parent's sockets and buffers, whatever happened
    os.close(report)
    done, hung = 0, False
    try:
        while True:
            if not select.select([progress], [], [], timeout)[0]:
                hung = True
                os.kill(child, signal.SIGKILL)
                break
            reported = os.read(progress, 4096)
            if not reported:  # the child has ended
                break
            done += len(reported)
    finally:
        os.close(progress)
    _, status = os.waitpid(child, 0)
    if hung:
        return done, ("DecoderTimeout", DECODER_TIMEOUT.format(seconds=timeout))
    if not os.WIFSIGNALED(status):
        return done, None
    killer = signal.Signals(os.WTERMSIG(status))
    if killer == signal.SIGKILL:  # not this process's doing: the kernel's out-of-memory killer
        return done, ("DecoderOutOfMemory", DECODER_OUT_OF_MEMORY)
    return done, ("DecoderCrash", DECODER_CRASH.format(signal=killer.name))


def decoder_failures(
    contents: dict[int, bytes], max_image_pixels: int, timeout: float
) -> dict[int, tuple[str, str]]:
    """The rows whose bytes crash or hang the decoder, with their error class and reason: the
    rows are decoded in a forked child (``_decode_in_child``), which names the image it died
    or hung on; the rest go on in a new child. Decoding twice costs a few ms an image, so
    only retried tasks pay it."""
    rows = list(contents)
    failures: dict[int, tuple[str, str]] = {}
    start = 0
    while start < len(rows):
        done, failure = _decode_in_child(
            [contents[row] for row in rows[start:]], max_image_pixels, timeout
        )
        if failure is None or start + done >= len(rows):
            break
        failures[rows[start + done]] = failure
        start += done + 1
    return failures


def featurize_batch(
    model: mobilenet_v2.FeatureExtractor,
    contents: pa.Array,
    settings: WorkerSettings,
    isolate_decoding: bool = False,
) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Features (a list array over one float32 buffer, null where the image cannot be read),
    reasons and error classes for a batch of image bytes; ``isolate_decoding`` first decodes
    the batch in a child process (``decoder_failures``)."""
    rows = len(contents)
    reasons: list[str | None] = [None] * rows
    error_classes: list[str | None] = [None] * rows
    decoded: list[np.ndarray] = []
    featurized = np.zeros(rows, dtype=bool)
    files = contents.to_pylist()
    failures = (
        decoder_failures(
            {row: content for row, content in enumerate(files) if content},
            settings.max_image_pixels,
            settings.decode_timeout_seconds,
        )
        if isolate_decoding
        else {}
    )
    for row, content in enumerate(files):
        if content is None:
            reasons[row], error_classes[row] = UNREADABLE, "UnreadableFile"
            continue
        if row in failures:
            error_classes[row], reasons[row] = failures[row]
            continue
        try:
            decoded.append(mobilenet_v2.decode_image(content, settings.max_image_pixels))
            featurized[row] = True
        except mobilenet_v2.ImageDecodeError as error:
            reasons[row] = str(error)
            cause = error.__cause__ or error
            error_classes[row] = type(cause).__name__
    values = np.empty((len(decoded), mobilenet_v2.FEATURE_DIM), dtype=np.float32)
    step = settings.inference_batch_size
    for start in range(0, len(decoded), step):
        values[start : start + step] = model(np.stack(decoded[start : start + step]))
    # Row i's features start at offsets[i]: a quarantined row is empty and null.
    offsets = np.zeros(rows + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(featurized * mobilenet_v2.FEATURE_DIM)
    features = pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(values.ravel()), mask=pa.array(~featurized)
    )
    return features, pa.array(reasons, pa.string()), pa.array(error_classes, pa.string())


def make_featurizer(
    litert_model: Broadcast, settings: WorkerSettings, images_done: Accumulator, schema: StructType
):
    """A ``mapInArrow`` function: each batch's IDENTITY columns, passed through, and its
    ``content`` -> features, reason, error_class (``schema``: the IDENTITY columns then
    FEATURIZATION_RESULT's). Arrow in, Arrow out: no pandas object per image."""
    names = schema.fieldNames()

    def featurize(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = _worker_model(litert_model, settings)
        # An earlier attempt of this task failed: perhaps one of its files crashed the worker.
        retried = TaskContext.get().attemptNumber() > 0
        for batch in batches:
            results = featurize_batch(model, batch.column("content"), settings, retried)
            columns = [batch.column(name) for name in IDENTITY]
            yield pa.RecordBatch.from_arrays([*columns, *results], names=names)
            images_done.add(batch.num_rows)

    return featurize


def _task_slots(spark_context: SparkContext, featurization: dict[str, Any]) -> int:
    """How many tasks run at once: ``task_slots``, or Spark's default parallelism."""
    return int(featurization.get("task_slots") or spark_context.defaultParallelism)


def _partitions(images: int, slots: int, featurization: dict[str, Any]) -> int:
    """Enough partitions to keep every task slot busy to the end of the stage, and small enough
    for progress to be reported as tasks finish: about ``images_per_partition`` images each, in
    whole waves of ``slots`` tasks, so that no slot sits idle while the last task runs."""
    if featurization.get("partitions"):
        return int(featurization["partitions"])
    per_partition = int(featurization["images_per_partition"])
    waves = max(2, -(-images // (per_partition * slots)))
    return waves * slots


@contextmanager
def job_group(spark_context: SparkContext, description: str) -> Iterator[str]:
    """Runs the block's Spark jobs as one new job group, whose id it yields."""
    group = f"{description} {uuid.uuid4().hex[:8]}"
    spark_context.setJobGroup(group, description)
    try:
        yield group
    finally:
        spark_context.setLocalProperty("spark.jobGroup.id", None)
        spark_context.setLocalProperty("spark.job.description", None)


def failed_task_attempts(spark_context: SparkContext, group: str) -> int:
    """How many task attempts failed (and were retried) in the jobs of ``group``, from Spark's
    status tracker."""
    tracker = spark_context.statusTracker()
    stages = [
        tracker.getStageInfo(stage)
        for job in tracker.getJobIdsForGroup(group)
        if (info := tracker.getJobInfo(job))
        for stage in info.stageIds
    ]
    return sum(stage.numFailedTasks for stage in stages if stage)


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


def _planned_rows(image_changes: DataFrame) -> DataFrame:
    """Table changes that need no model: quarantine rows for empty and unlabelled files (never
    read), and the deletion of the paths that left the store."""
    action = F.col("action")
    reason = F.when(action == EMPTY, F.lit(EMPTY_FILE)).when(
        action == UNLABELLED, F.lit(NO_CLASS_FOLDER)
    )
    error_class = F.when(action == EMPTY, F.lit("EmptyFile")).when(
        action == UNLABELLED, F.lit("MissingLabel")
    )
    return image_changes.where(action != FEATURIZE).select(
        *IDENTITY,
        F.lit(None).cast(FEATURES_TYPE).alias("features"),
        reason.alias("reason"),
        error_class.alias("error_class"),
        (action == DELETE).alias(DELETE_COLUMN),
    )


def _worker_settings(feature_model: mobilenet_v2.FeatureModel, featurization: dict[str, Any]):
    return WorkerSettings(
        weights_sha256=feature_model.id,
        inference_batch_size=int(featurization["inference_batch_size"]),
        max_image_pixels=int(featurization["max_image_pixels"]),
        inference_threads=int(featurization["inference_threads"]),
        decode_timeout_seconds=float(featurization["decode_timeout_seconds"]),
    )


def _model_results(
    to_featurize: DataFrame,
    image_store: ImageStore,
    feature_model: mobilenet_v2.FeatureModel,
    featurization: dict[str, Any],
    progress: Accumulator,
    *,
    partitions: int,
) -> DataFrame:
    """Features, or a quarantine reason, for each row of ``to_featurize``: its bytes read from
    the store and sent through the model in ``partitions`` tasks (lazy: nothing runs yet)."""
    spark = to_featurize.sparkSession
    to_model = to_featurize.join(image_store.contents(to_featurize), "path", "left").select(
        *IDENTITY, "content"
    )
    schema = StructType(to_model.select(*IDENTITY).schema.fields + FEATURIZATION_RESULT.fields)
    featurize = make_featurizer(
        spark.sparkContext.broadcast(feature_model.litert),
        _worker_settings(feature_model, featurization),
        progress,
        schema,
    )
    return (
        to_model.repartition(partitions)
        .mapInArrow(featurize, schema)
        .withColumn(DELETE_COLUMN, F.lit(False))
    )


def _computed_once(changes: DataFrame, images: int, progress: Accumulator) -> dict:
    """Persists ``changes`` and counts its rows, which runs the model on the ``images`` rows
    it holds, with a progress log; the table's MERGE then reads them from the cache and
    releases it (``DeltaMergeDataset``). Returns how many rows are kept (not deleted), how
    many have features, and how many task attempts failed and were retried.

    The counts come from the rows, not from the UDF's accumulator: Spark adds a shuffle map
    task's accumulator updates again when it runs the task again (an executor lost after some
    tasks finished loses their outputs and cached blocks), so the accumulator only drives the
    progress log."""
    spark_context = changes.sparkSession.sparkContext
    changes.persist(StorageLevel.MEMORY_AND_DISK)
    kept = ~F.col(DELETE_COLUMN)
    with (
        job_group(spark_context, "featurization: MobileNetV2") as group,
        progress_log(progress, images),
    ):
        counts = changes.agg(
            F.count(F.when(kept, 1)).alias("kept"), F.count("features").alias("featurized")
        ).first()
    failed = failed_task_attempts(spark_context, group)
    if failed:
        logger.warning("featurization: %d task attempts failed and were retried", failed)
    return {**counts.asDict(), "attempts_failed": failed}


def extract_features(
    image_changes: DataFrame,
    image_store: ImageStore,
    feature_model: mobilenet_v2.FeatureModel,
    featurization: dict[str, Any],
) -> tuple[DataFrame, dict[str, Any]]:
    """Runs the model on the new and changed files only, and says how the image table changes.

    Args:
        image_changes: what ``list_changes`` found (path, label, length, modificationTime,
            action).
        image_store: the store, to read the bytes of the files to featurize.
        feature_model: the weights and their exported LiteRT model.
        featurization: batch sizes, partitions, threads, pixel guard.

    Returns:
        image_features: the rows to merge into the image table, keyed by path (label, length,
        modificationTime, model_id, features or a quarantine reason and its error class, and
        ``_delete`` for the paths that left the store), computed once and persisted;
        featurization_info: the model and this run's counts.
    """
    started = time.perf_counter()
    spark_context = image_changes.sparkSession.sparkContext
    actions = {
        row["action"]: row["count"] for row in image_changes.groupBy("action").count().collect()
    }
    to_model = actions.get(FEATURIZE, 0)
    progress = spark_context.accumulator(0)  # images through the model, for the log only
    changes = _planned_rows(image_changes)
    if to_model:
        slots = _task_slots(spark_context, featurization)
        changes = changes.unionByName(
            _model_results(
                image_changes.where(F.col("action") == FEATURIZE),
                image_store,
                feature_model,
                featurization,
                progress,
                partitions=_partitions(to_model, slots, featurization),
            )
        )
    changes = changes.withColumn("model_id", F.lit(feature_model.id))
    # Kept rows are the planned quarantines (empty, unlabelled files) and the model's results.
    planned_quarantines = actions.get(EMPTY, 0) + actions.get(UNLABELLED, 0)
    # Without a model stage, the plan's rows are merged as they are: nothing to compute once.
    counts = (
        _computed_once(changes, to_model, progress)
        if to_model
        else {"kept": planned_quarantines, "featurized": 0}
    )
    images_received = counts["kept"] - planned_quarantines
    featurized = counts["featurized"]
    quarantined = counts["kept"] - featurized
    seconds = time.perf_counter() - started
    logger.info(
        "Featurized %d new or changed images, quarantined %d, removed %d, in %.1f s",
        featurized,
        quarantined,
        actions.get(DELETE, 0),
        seconds,
    )
    info = {
        "model": "MobileNetV2 1.0, 224x224, no top, global average pooling (Keras, run by LiteRT)",
        "feature_dim": mobilenet_v2.FEATURE_DIM,
        "weights_source": feature_model.weights.source,
        "weights_sha256": feature_model.id,
        "photo_store": image_store.location,
        # The photos of the listing the plan was made from: the table holds these once merged,
        # even if the store changed since (a photo removed in between is quarantined).
        "images_in_store": (made_from(image_changes) or {}).get(
            "images_listed", image_store.images
        ),
        "images_sent_to_model": images_received,
        "images_featurized": featurized,
        "images_quarantined": quarantined,
        "images_removed": actions.get(DELETE, 0),
        "task_attempts_failed": counts.get("attempts_failed", 0),
        "seconds": round(seconds, 3),
    }
    return changes, info
