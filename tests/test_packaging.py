"""`kedro package` builds a wheel that installs in a fresh virtualenv and runs the pipelines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from tests.conftest import PROJECT_ROOT, kedro_process, make_project_copy


def test_packaged_project_runs_from_a_fresh_virtualenv(tmp_path, sample_images, weights_file):
    project = make_project_copy(tmp_path / "project")
    # kedro package builds from the project's own sources and README.
    (project / "src").rmdir()
    shutil.copytree(
        PROJECT_ROOT / "src",
        project / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    (project / "README.md").write_text((PROJECT_ROOT / "README.md").read_text())
    built = kedro_process(project, "package", timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = sorted((project / "dist").glob("fruits_pipeline-*.whl"))
    conf_archive = project / "dist" / "conf-fruits_pipeline.tar.gz"
    assert len(wheels) == 1 and conf_archive.exists()

    environment = tmp_path / "fresh-venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]

    images = tmp_path / "images"
    for class_name in ("Banana Red", "Avocado"):
        (images / class_name).mkdir(parents=True)
        for image in sorted((sample_images / "Training" / class_name).glob("*.jpg"))[:4]:
            (images / class_name / image.name).write_bytes(image.read_bytes())
    workdir = tmp_path / "run"
    workdir.mkdir()
    ran = subprocess.run(
        [
            str(python),
            "-m",
            "fruits_pipeline",
            "--conf-source",
            str(conf_archive),
            "--params",
            f"raw_images_path={images},featurization.weights={weights_file}",
        ],
        cwd=workdir,
        env={**os.environ, "PYSPARK_PYTHON": str(python), "KEDRO_DISABLE_TELEMETRY": "true"},
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    metrics = json.loads((workdir / "data" / "08_reporting" / "metrics.json").read_text())
    assert metrics["images_in"] == metrics["images_featurized"] == 8
    assert metrics["library_versions"]["fruits_pipeline"] == wheels[0].name.split("-")[1]
    assert (workdir / "data" / "07_model_output" / "pca_features.csv" / "_COMMITTED").exists()
    assert str(Path(sys.executable).parent) not in ran.stdout  # ran from the fresh environment
