"""The class archive of the local Spark driver's JVM: written once by a real run, kept only when
complete, then mapped by the next JVMs (real JVMs, each in its own process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fruits_pipeline import jvm_class_archive
from fruits_pipeline.jvm_class_archive import java_major, with_class_archive

LOCAL = {"spark.master": "local[1]", "spark.driver.extraJavaOptions": "-Xms256m"}

# A fresh process builds a local SparkSession the way the project's hook does, runs one query,
# prints the JVM's class path and options, and exits.
SESSION_SCRIPT = textwrap.dedent(
    """
    import sys
    from fruits_pipeline.spark_session import create_spark_session

    spark = create_spark_session({
        "spark.master": "local[1]",
        "spark.ui.enabled": "false",
        "spark.driver.extraJavaOptions": sys.argv[1],
    }, write_class_archive=True)
    assert spark.range(100).selectExpr("sum(id)").first()[0] == 4950
    system = spark.sparkContext._jvm.java.lang.System
    print("CLASSPATH=" + system.getProperty("java.class.path"))
    print("OPTIONS=" + spark.conf.get("spark.driver.extraJavaOptions"))
    """
)


def run_session(cache: Path, java_options: str = "-Xms256m") -> dict[str, str]:
    finished = subprocess.run(
        [sys.executable, "-c", SESSION_SCRIPT, java_options],
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "Traceback" not in finished.stderr, finished.stderr[-3000:]
    return dict(
        line.split("=", 1)
        for line in finished.stdout.splitlines()
        if line.startswith(("CLASS", "OPT"))
    )


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.21.1" 2026-11-17', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "11.0.2" 2019-01-15', 11),
        ("no version here", None),
    ],
)
def test_java_major(output, major):
    assert java_major(output) == major


def test_cluster_masters_spark_submit_and_explicit_sharing_options_are_left_alone(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for config in (
        {"spark.master": "yarn", "spark.driver.extraJavaOptions": None},
        {**LOCAL, "spark.driver.extraJavaOptions": "-Xshare:off"},
        {**LOCAL, "spark.driver.extraJavaOptions": "-XX:SharedArchiveFile=/elsewhere.jsa"},
    ):
        assert with_class_archive(config, write=True) == (config, None)
    # Under spark-submit, PySpark connects to a JVM that is already running.
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "45678")
    assert with_class_archive(LOCAL, write=True) == (LOCAL, None)
    assert not (tmp_path / "fruits_pipeline").exists()


def test_a_writing_session_writes_the_archive_when_there_is_none_and_all_map_it_after(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # Nothing to map, and this session does not write it: no change.
    assert with_class_archive(LOCAL) == (LOCAL, None)
    config, to_write = with_class_archive(LOCAL, write=True)
    assert to_write is not None and to_write.parent == jvm_class_archive.cache_dir()
    assert to_write.parent.is_relative_to(tmp_path)
    options = config["spark.driver.extraJavaOptions"]
    assert options.startswith("-Xms256m ")  # the project's own options are kept, first
    assert f"-XX:ArchiveClassesAtExit={to_write}.{os.getpid()}.part" in options
    assert LOCAL["spark.driver.extraJavaOptions"] == "-Xms256m"  # the input is not changed

    to_write.write_bytes(b"an archive")
    for write in (True, False):
        config, again = with_class_archive(LOCAL, write=write)
        assert again is None
        assert f"-XX:SharedArchiveFile={to_write}" in config["spark.driver.extraJavaOptions"]


def test_an_abandoned_partial_archive_is_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    _, archive = with_class_archive(LOCAL, write=True)
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    abandoned = archive.with_name(f"{archive.name}.{finished.stdout.strip()}.part")
    abandoned.write_bytes(b"half an archive")
    alive = archive.with_name(f"{archive.name}.{os.getppid()}.part")
    alive.write_bytes(b"being written")
    with_class_archive(LOCAL, write=True)
    assert not abandoned.exists()
    assert alive.exists()


def test_the_first_run_keeps_a_complete_archive_that_the_next_runs_map(tmp_path):
    cache = tmp_path / "cache"
    first = run_session(cache)
    assert "-XX:ArchiveClassesAtExit=" in first["OPTIONS"]
    archives = list((cache / "fruits_pipeline" / "spark-class-archive").iterdir())
    assert [archive.suffix for archive in archives] == [".jsa"]  # kept, nothing partial left
    archive = archives[0]

    class_log = tmp_path / "classes.log"
    second = run_session(cache, f"-Xms256m -Xlog:class+load=info:file={class_log}")
    assert f"-XX:SharedArchiveFile={archive}" in second["OPTIONS"]
    loaded = class_log.read_text().splitlines()
    from_archive = [line for line in loaded if "source: shared objects file (top)" in line]
    from_jars = [line for line in loaded if "source: file:" in line and ".jar" in line]
    # Most classes come from the archive; the jars still give those the JVM cannot archive
    # (Janino's, from a signed jar) and those the first run did not load.
    assert len(from_archive) > 5 * len(from_jars)
    assert len(from_archive) > 2000

    # The check that guards the runs: a truncated archive is refused, the complete one is not.
    java = jvm_class_archive.java_executable()
    assert jvm_class_archive.readable(java, archive, first["CLASSPATH"])
    truncated = tmp_path / "truncated.jsa"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert not jvm_class_archive.readable(java, truncated, first["CLASSPATH"])


RUN_PARAMS = {  # as Kedro 1.x passes them to before_pipeline_run for `kedro run`
    "tags": (),
    "from_nodes": [],
    "to_nodes": [],
    "node_names": (),
    "from_inputs": [],
    "to_outputs": [],
    "pipeline_names": [],
    "namespaces": [],
    "only_missing_outputs": False,
}


@pytest.mark.parametrize(
    ("options", "whole"),
    [
        ({}, True),
        ({"pipeline_names": None}, True),
        ({"pipeline_names": ["__default__"]}, True),
        ({"pipeline_names": ["ingestion"]}, False),
        ({"tags": ("reporting",)}, False),
        ({"from_nodes": ["project_features"]}, False),
        ({"to_nodes": ["list_changes"]}, False),
        ({"node_names": ("fit_pca",)}, False),
        ({"only_missing_outputs": True}, False),
    ],
)
def test_only_a_run_of_the_whole_pipeline_writes_the_archive(options, whole):
    from fruits_pipeline.spark_session import runs_whole_pipeline

    assert runs_whole_pipeline({**RUN_PARAMS, **options}) is whole
