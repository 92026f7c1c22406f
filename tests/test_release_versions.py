"""The EMR release and its versions are set once (conf/base/globals.yml, emr_release): the
cluster definition, the bootstrap's Python, Delta's jars and the local pyspark pin follow it."""

from __future__ import annotations

import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import Version

from fruits_pipeline.emr.cluster import Release, bootstrap_arguments, cluster_request
from tests.conftest import PROJECT_ROOT, project_config


def _emr_release() -> dict:
    return project_config("local")["globals"]["emr_release"]


def _local_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    return {
        requirement.name: requirement
        for requirement in map(Requirement, project["optional-dependencies"]["local"])
    }


def test_the_cluster_runs_the_release_and_its_python(monkeypatch):
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    release = _emr_release()
    cluster = project_config("emr")["cluster"]["cluster"]
    request = cluster_request(cluster, Release.at("s3://fruits-bucket/r", "0.1.0"), None)
    assert request["ReleaseLabel"] == release["label"]
    assert bootstrap_arguments(cluster, Release.at("s3://b/r", "0.1.0"))[3] == (
        f"python{release['python']}"
    )


def test_local_spark_is_on_the_releases_line_and_delta_at_its_version(monkeypatch):
    release = _emr_release()
    spark = Version(release["spark"])
    pin = _local_requirements()["pyspark"].specifier
    assert spark in pin, f"pyproject's pyspark {pin} excludes the cluster's Spark {spark}"
    assert Version(f"{spark.major}.{spark.minor}.{spark.micro - 1}") not in pin
    assert Version(f"{spark.major}.{spark.minor + 1}.0") not in pin
    installed = Version(metadata.version("pyspark"))
    assert (installed.major, installed.minor) == (spark.major, spark.minor)
    jars = project_config("local")["spark"]["spark.jars.packages"]
    assert jars == f"io.delta:delta-spark_2.12:{release['delta']}"
    monkeypatch.setenv("FRUITS_S3_BUCKET", "fruits-bucket")
    assert project_config("emr")["spark"]["spark.jars.packages"] is None


def test_the_project_installs_on_the_releases_python():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    requires = Requirement(f"python{project['requires-python']}").specifier
    assert Version(_emr_release()["python"]) in requires


def test_the_python_claimed_is_the_one_the_code_and_emr_need():
    """requires-python, ruff's target and the README name the same floor: the standard
    library's datetime.UTC needs 3.11, and EMR 7's nodes run the release's Python."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    floor = Version(pyproject["project"]["requires-python"].removeprefix(">="))
    assert floor >= Version("3.11")
    assert pyproject["tool"]["ruff"]["target-version"] == f"py{floor.major}{floor.minor}"
    assert f"Python {floor.major}.{floor.minor}+" in (PROJECT_ROOT / "README.md").read_text()
    assert Version(_emr_release()["python"]) >= floor
