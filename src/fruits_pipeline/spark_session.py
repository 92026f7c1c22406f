"""The SparkSession of a run, from the settings of ``conf/<env>/spark.yml``; also used by the
tests, the benchmark and the notebooks."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession


def local_master(spark_config: dict[str, Any]) -> bool:
    """Whether the session runs its tasks in the driver's own JVM (``local``, ``local[*]``...)."""
    return str(spark_config.get("spark.master", "")).startswith("local")


def local_jvm_environment(spark_config: dict[str, Any]) -> dict[str, str]:
    """Environment variables for a local driver JVM: native BLAS threads = cores per task.

    On a cluster Spark gives each executor JVM OMP_NUM_THREADS = spark.task.cpus (SPARK-41188),
    because every task slot calling a multi-threaded OpenBLAS at once oversubscribes the cores.
    A local master runs its tasks in the driver's JVM, which Spark starts with the caller's
    environment only, so OpenBLAS (MLlib's when the system has it; numpy's own in the Python
    workers, which inherit this environment) ran as many threads per call as the machine has
    cores, for each task: projecting 8,192 images on the PCA took 3.6-5.2 s instead of 1.5 s.
    A value the user has set is kept.
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


def create_spark_session(spark_config: dict[str, Any]) -> SparkSession:
    """Builds (or returns the running) SparkSession with the settings of ``spark.yml``; a local
    JVM gets one native BLAS thread per task slot (``local_jvm_environment``)."""
    # Spark's Python workers must run the interpreter that runs Kedro (same packages), not
    # whatever `python3` is first on PATH. The SparkContext reads it once, as its pythonExec,
    # and every Python UDF carries that path to the executors, which start their workers with
    # it: on EMR, the step's /opt/fruits-pipeline/bin/python, which the bootstrap action
    # installs at the same path on every node (the cluster's spark-env export says the same
    # for spark-submit and notebooks).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # JVM options only count for the JVM about to start.
    jvm_environment = local_jvm_environment(spark_config) if SparkContext._gateway is None else {}
    # A null setting (e.g. in conf/emr/spark.yml) leaves the key to Spark's own defaults.
    spark_conf = SparkConf().setAll(
        [(key, str(value)) for key, value in spark_config.items() if value is not None]
    )
    with _environment_for_children(jvm_environment):
        spark = SparkSession.builder.config(conf=spark_conf).getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
