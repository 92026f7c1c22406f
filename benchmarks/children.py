"""What each child process of the benchmark measures, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from kedro.framework.hooks import hook_impl

from benchmarks.config import base_config

RAW_BATCH_SIZES = (16, 32, 64, 128)


# ----------------------------------------------------------------------------- children


# Photos `fruits-features --classify --similar 5` is timed on, in one process (issue figure).
LATENCY_PHOTOS = 3000


def _raw_extractor(weights: str, threads: int):
    from fruits_pipeline import mobilenet_v2

    litert_model = mobilenet_v2.export_litert(mobilenet_v2.resolve_weights(weights))
    return mobilenet_v2.FeatureExtractor(litert_model, threads)


def _raw_shard(paths: list[Path], weights: str, batch_size: int, barrier, ends) -> None:
    """One single-threaded plain-Python process over its share of the images (spawned)."""
    import numpy as np

    from fruits_pipeline import mobilenet_v2

    extractor = _raw_extractor(weights, threads=1)
    extractor(np.zeros((batch_size, 224, 224, 3), np.uint8))
    barrier.wait()
    for start in range(0, len(paths), batch_size):
        decoded = [
            mobilenet_v2.decode_image(path.read_bytes(), max_pixels=50_000_000)
            for path in paths[start : start + batch_size]
        ]
        extractor(np.stack(decoded))
    ends.put(time.monotonic())


def _raw_processes(paths: list[Path], weights: str, batch_size: int) -> float:
    """Seconds for one single-threaded process per core, each on every n-th image, from a common
    start once all have built their model, to the last one's end."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = os.cpu_count() or 1
    barrier, ends = context.Barrier(processes + 1), context.Queue()
    workers = [
        context.Process(
            target=_raw_shard, args=(paths[index::processes], weights, batch_size, barrier, ends)
        )
        for index in range(processes)
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.monotonic()
    finished = max(ends.get(timeout=3600) for _ in workers)
    for worker in workers:
        worker.join()
    return finished - started


def raw_child(images_dir: str, weights: str, result_file: str) -> None:
    """The same decoding and the same LiteRT model in plain Python, the faster of two layouts:
    one process with one LiteRT thread per core (decoding in a thread pool ahead of the model),
    or one single-threaded process per core (the layout of Spark's Python workers)."""
    import numpy as np

    from fruits_pipeline import mobilenet_v2

    paths = sorted(Path(images_dir).rglob("*.jpg"))
    # Exports the model (or reads it from the cache) before any timing, for both layouts.
    extractor = _raw_extractor(weights, threads=os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=os.cpu_count())

    def decode(path: Path):
        return mobilenet_v2.decode_image(path.read_bytes(), max_pixels=50_000_000)

    def run(batch_paths: list[Path], batch_size: int) -> float:
        started = time.perf_counter()
        batches = [batch_paths[i : i + batch_size] for i in range(0, len(batch_paths), batch_size)]
        pending = pool.map(lambda batch: np.stack(list(map(decode, batch))), batches)
        for decoded in pending:  # pool.map decodes ahead while the model runs
            extractor(decoded)
        return time.perf_counter() - started

    warm = paths[: min(len(paths), 256)]
    run(warm[:32], 32)  # first call sets up LiteRT's buffers and XNNPACK's packed weights
    trial = {size: len(warm) / run(warm, size) for size in RAW_BATCH_SIZES}
    best = max(trial, key=trial.get)
    layouts = {
        "one process, all threads": len(paths) / run(paths, best),
        "one single-threaded process per core": len(paths) / _raw_processes(paths, weights, best),
    }
    fastest = max(layouts, key=layouts.get)
    Path(result_file).write_text(
        json.dumps(
            {
                "raw_img_s": layouts[fastest],
                "raw_layout": fastest,
                "raw_layouts_img_s": layouts,
                "raw_batch_size": best,
                "raw_trials_img_s": trial,
            }
        )
    )


def export_child(weights: str, result_file: str) -> None:
    """Exports the LiteRT model into the cache the runs read (a one-time cost per weights file
    and library versions), and says how long it took and whether it was there already."""
    started = time.perf_counter()
    from fruits_pipeline import mobilenet_v2

    weights_file = mobilenet_v2.resolve_weights(weights)
    cached = mobilenet_v2.litert_cache_path(weights_file).is_file()
    mobilenet_v2.export_litert(weights_file)
    Path(result_file).write_text(
        json.dumps({"seconds": time.perf_counter() - started, "was_cached": cached})
    )


def floor_child(result_file: str) -> None:
    """What any Spark pipeline pays around its model with this project's Spark settings, from a
    fresh process: importing PySpark and pandas, starting the SparkSession (the JVM with its
    class archive and options) and a first job through a pandas UDF, which starts one Python
    worker per task slot. No Kedro, no file read or written, no model."""
    started = time.perf_counter()
    import pandas as pd
    from pyspark.sql import functions as F

    imports_s = time.perf_counter() - started
    # The project's way to start the session (class archive, JVM options): its import is
    # the project's own cost, not Spark's, so it is not counted.
    from fruits_pipeline.spark_session import create_spark_session

    session_started = time.perf_counter()
    spark = create_spark_session(base_config("spark"))
    session_s = time.perf_counter() - session_started

    def plus_one(ids: pd.Series) -> pd.Series:
        return ids + 1

    # Real types for PySpark to read (this module's annotations are strings, and pd is local).
    plus_one.__annotations__ = {"ids": pd.Series, "return": pd.Series}
    plus_one = F.pandas_udf(plus_one, "long")
    job_started = time.perf_counter()
    slots = spark.sparkContext.defaultParallelism
    spark.range(0, 1000, 1, slots).select(plus_one("id").alias("id")).agg(F.sum("id")).collect()
    job_s = time.perf_counter() - job_started
    Path(result_file).write_text(
        json.dumps(
            {
                "seconds": imports_s + session_s + job_s,
                "imports_s": imports_s,
                "session_s": session_s,
                "first_udf_job_s": job_s,
            }
        )
    )


class RunTimer:
    """Kedro hooks timing what one session runs, node by node: each node's run and each of its
    loads and saves, in seconds, and when the node's last save ended (``ended``). A lazy Spark
    node costs nothing itself: its work runs in the save of its output."""

    def __init__(self) -> None:
        # (node, "nodes" | "loads" | "saves", node or dataset name) -> seconds
        self.seconds: dict[tuple[str, str, str], float] = defaultdict(float)
        self.ended: dict[str, float] = {}
        self._started: dict[tuple[str, str], float] = {}

    def _start(self, kind: str, name: str) -> None:
        self._started[kind, name] = time.perf_counter()

    def _stop(self, node: str, kind: str, name: str) -> None:
        now = time.perf_counter()
        self.seconds[node, kind, name] += now - self._started.pop((kind, name))
        self.ended[node] = now

    def by_stage(self, stage_of: dict[str, str]) -> dict[str, dict[str, dict[str, float]]]:
        """The timings summed per stage (``stage_of``: node name -> stage), as ``nodes``,
        ``loads`` and ``saves``, each by name."""
        stages: dict[str, dict[str, dict[str, float]]] = {}
        for (node, kind, name), seconds in self.seconds.items():
            names = stages.setdefault(stage_of[node], {}).setdefault(kind, {})
            names[name] = names.get(name, 0.0) + seconds
        return stages

    @hook_impl
    def before_node_run(self, node) -> None:
        self._start("nodes", node.name)

    @hook_impl
    def after_node_run(self, node) -> None:
        self._stop(node.name, "nodes", node.name)

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str) -> None:
        self._start("loads", dataset_name)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, node) -> None:
        self._stop(node.name, "loads", dataset_name)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str) -> None:
        self._start("saves", dataset_name)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node) -> None:
        self._stop(node.name, "saves", dataset_name)


# The app's embedder is timed apart from the PCA (fit, projection, writes): it rewrites the whole
# model's LiteRT graph, whose time does not depend on the images.
EMBEDDER_NODE = "export_embedding"


def pipeline_child(
    project: str, images_dir: str, weights: str, extra_params: str, result_file: str
) -> None:
    """The whole pipeline as ``kedro run`` runs it, one Kedro session in this fresh process; each
    stage's time is the sum of its nodes' loads, runs and saves."""
    started = time.perf_counter()
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(Path(project))
    from kedro.framework.project import pipelines, settings

    # Kedro's settings are Dynaconf's: one more hook object, for the session created below.
    timer = RunTimer()
    settings.set("HOOKS", (*settings.HOOKS, timer))
    params = {"raw_images_path": images_dir, "featurization": {"weights": weights}}
    for assignment in filter(None, extra_params.split(",")):
        key, value = assignment.split("=", 1)
        *parents, leaf = key.split(".")
        target = params
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    stage_of = {
        node.name: name
        for name, pipeline in pipelines.items()
        if name != "__default__"
        for node in pipeline.nodes
    }
    stage_of[EMBEDDER_NODE] = "app_embedder"
    with KedroSession.create(project_path=Path(project), runtime_params=params) as session:
        session.run()
    stages: dict = {"whole_run": time.perf_counter() - started}
    # From process start to the featurization stage's end: imports, JVM, Python workers and
    # model load all count.
    stages["to_features"] = (
        max(timer.ended[node] for node, stage in stage_of.items() if stage == "featurization")
        - started
    )
    stages["timings"] = timer.by_stage(stage_of)
    for stage, timed in stages["timings"].items():
        stages[stage] = sum(seconds for names in timed.values() for seconds in names.values())
    # Which BLAS and LAPACK MLlib found in this JVM: native (JNI...) or the Java fallback.
    from pyspark.sql import SparkSession

    netlib = SparkSession.getActiveSession()._jvm.dev.ludovic.netlib
    stages["jvm_blas_lapack"] = ", ".join(
        library.getInstance().getClass().getSimpleName()
        for library in (netlib.blas.BLAS, netlib.lapack.LAPACK)
    )
    Path(result_file).write_text(json.dumps(stages))


def classifier_child(project: str, images_dir: str, result_file: str) -> None:
    """What the app gets from a finished run's classifier set: the evaluation's accuracy (the
    run's own split: Training trains, Test evaluates), the share of the 5 nearest Training
    photos that have a Test photo's label, and ``classify_photos(..., similar=5)`` on up to
    LATENCY_PHOTOS photos in this fresh process, start-up (reading the set) included."""
    import numpy as np

    from fruits_pipeline import app_files
    from fruits_pipeline.embedding import classify_photos
    from fruits_pipeline.similar_photos import SimilarPhotos

    info = json.loads((Path(project) / "data/06_models/classification.json").read_text())
    figures: dict = {"status": info["status"]}
    if info["status"] == "trained":
        figures |= {
            "top1_accuracy": info["evaluation"]["top1_accuracy"],
            "top5_accuracy": info["evaluation"]["top5_accuracy"],
            "evaluation_photos": info["evaluation"]["photos"],
            "classes": len(info["classes"]),
            "training_s": info["evaluation"]["training_seconds"],
            "refit_s": info.get("refit_seconds"),
        }
    models = Path(project) / "data/06_models"
    search = app_files.npz_arrays((models / app_files.SIMILAR_PHOTOS).read_bytes())
    training = np.char.find(search["paths"], "/Training/") >= 0
    test = np.char.find(search["paths"], "/Test/") >= 0
    if training.any() and test.any():
        store = SimilarPhotos(
            search["paths"][training], search["labels"][training], search["coordinates"][training]
        )
        found = store.nearest(search["coordinates"][test], 5)
        figures["similar5_same_label_share"] = float(
            np.mean(store.labels[found] == search["labels"][test][:, None])
        )
    if info["status"] == "trained":
        photos = sorted(Path(images_dir).rglob("*.jpg"))
        photos = photos[:: max(1, len(photos) // LATENCY_PHOTOS)][:LATENCY_PHOTOS]
        started = time.perf_counter()
        answers = classify_photos(photos, models, similar=5)
        figures["classify_similar5_ms_per_photo"] = (
            1000 * (time.perf_counter() - started) / len(answers)
        )
        figures["classify_photos"] = len(answers)
    Path(result_file).write_text(json.dumps(figures))
