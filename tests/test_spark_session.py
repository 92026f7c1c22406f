"""The local driver JVM's environment: one native BLAS thread per task, as Spark gives executors."""

from __future__ import annotations

import os

import pytest

from fruits_pipeline.spark_session import local_jvm_environment


@pytest.mark.parametrize(
    ("spark_config", "expected"),
    [
        ({"spark.master": "local[*]"}, {"OMP_NUM_THREADS": "1"}),
        ({"spark.master": "local[4]", "spark.task.cpus": 2}, {"OMP_NUM_THREADS": "2"}),
        ({"spark.master": "local[*]", "spark.task.cpus": None}, {"OMP_NUM_THREADS": "1"}),
        # A cluster's executors get it from Spark itself; the driver there runs no tasks.
        ({"spark.master": "yarn"}, {}),
        ({}, {}),
    ],
)
def test_local_jvm_gets_one_blas_thread_per_task(monkeypatch, spark_config, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert local_jvm_environment(spark_config) == expected


def test_a_thread_count_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert local_jvm_environment({"spark.master": "local[*]"}) == {}


def test_the_running_jvm_has_it_and_this_process_does_not(spark):
    """The shared session was built by create_spark_session: its JVM (and the OpenBLAS it loads)
    sees the setting, while this Python process keeps its own environment."""
    jvm_value = spark.sparkContext._jvm.java.lang.System.getenv("OMP_NUM_THREADS")
    user_value = os.environ.get("OMP_NUM_THREADS")
    if user_value is None:
        assert jvm_value == "1"
    else:
        assert jvm_value == user_value
