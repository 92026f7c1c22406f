"""`kedro run` through Kedro's own CLI, on real images, in a throw-away copy of the project.

The CLI runs in this process so that it shares the test session's SparkSession (one JVM for the
whole suite); the project's hook finds that session instead of starting another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import (
    IMAGES_PER_CLASS,
    committed,
    coordinates,
    image_table,
    kedro,
    run_params,
)

pytestmark = pytest.mark.pipeline

CLASSES = 13


def _spark_csv(folder: Path) -> pd.DataFrame:
    parts = sorted(committed(folder).glob("part-*.csv"))
    assert parts, f"no CSV part files in {folder}"
    return pd.concat([pd.read_csv(part) for part in parts], ignore_index=True)


def _independent_k(features: np.ndarray, threshold: float) -> tuple[int, float]:
    """k and the variance it explains, by an exact SVD of the standardized features in numpy."""
    centered = features - features.mean(axis=0)
    std = features.std(axis=0, ddof=1)
    standardized = np.divide(centered, std, out=np.zeros_like(centered), where=std > 0)
    singular_values = np.linalg.svd(standardized, compute_uv=False)
    ratios = singular_values**2 / np.sum(singular_values**2)
    cumulative = np.cumsum(ratios)
    k = int(np.argmax(cumulative >= threshold - 1e-12)) + 1
    return k, float(cumulative[k - 1])


def test_every_image_gets_one_row_with_its_label(spark, finished_run, small_image_set):
    pca_features = coordinates(spark, finished_run)
    rows = pca_features.collect()
    assert len(rows) == CLASSES * IMAGES_PER_CLASS
    paths = [row["path"].removeprefix("file:") for row in rows]
    assert sorted(paths) == sorted(str(path) for path in small_image_set.rglob("*.jpg"))
    for row in rows:
        assert row["label"] == Path(row["path"]).parent.name


def test_image_table_is_written_as_one_file_per_task_slot(spark, finished_run):
    table = finished_run / "data" / "04_feature" / "image_features"
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{table}`").first()
    slots = spark.sparkContext.defaultParallelism
    # The model stage ran in more tasks than that (at least two per slot).
    assert detail["numFiles"] == slots
    assert image_table(spark, finished_run).count() == CLASSES * IMAGES_PER_CLASS


def test_k_and_variance_equal_an_independent_svd(spark, finished_run):
    features = image_table(spark, finished_run)
    matrix = np.stack([np.asarray(row["features"], dtype=np.float64) for row in features.collect()])
    assert matrix.shape == (CLASSES * IMAGES_PER_CLASS, 1280)
    expected_k, expected_variance = _independent_k(matrix, 0.9)
    metrics = json.loads((finished_run / "data/08_reporting/metrics.json").read_text())
    assert metrics["k"] == expected_k
    assert metrics["variance_explained"] == pytest.approx(expected_variance, abs=1e-6)
    pca_features = coordinates(spark, finished_run)
    assert {len(row["pca_features"]) for row in pca_features.collect()} == {expected_k}


def test_csv_has_path_label_and_one_column_per_component(spark, finished_run):
    csv = _spark_csv(finished_run / "data/07_model_output/pca_features.csv")
    k = json.loads((finished_run / "data/08_reporting/metrics.json").read_text())["k"]
    assert list(csv.columns) == ["path", "label"] + [f"pc_{i:03d}" for i in range(1, k + 1)]
    assert len(csv) == CLASSES * IMAGES_PER_CLASS
    components = {
        row["path"]: np.asarray(row["pca_features"])
        for row in coordinates(spark, finished_run).collect()
    }
    for _, row in csv.iterrows():
        np.testing.assert_allclose(
            row.iloc[2:].to_numpy(dtype=float), components[row["path"]], rtol=1e-12
        )


def test_metrics_say_what_a_user_needs_to_trust_the_run(finished_run, weights_file):
    metrics = json.loads((finished_run / "data/08_reporting/metrics.json").read_text())
    images = CLASSES * IMAGES_PER_CLASS
    assert metrics["images_in"] == metrics["images_featurized"] == images
    assert metrics["images_quarantined"] == 0
    assert metrics["classes"] == CLASSES
    assert set(metrics["images_per_class"].values()) == {IMAGES_PER_CLASS}
    assert "Banana Red" in metrics["images_per_class"]
    assert metrics["feature_dim"] == 1280
    assert metrics["variance_threshold"] == 0.9
    assert len(metrics["explained_variance_ratio"]) == metrics["k"]
    assert sum(metrics["explained_variance_ratio"]) == pytest.approx(metrics["variance_explained"])
    assert metrics["weights_source"] == str(weights_file)
    assert metrics["weights_sha256"] == hashlib.sha256(weights_file.read_bytes()).hexdigest()
    assert metrics["library_versions"]["pyspark"].startswith("3.5.")
    assert {"kedro", "keras", "numpy", "pandas", "pyarrow"} <= set(metrics["library_versions"])


def test_explained_variance_plot_is_a_png(finished_run):
    with Image.open(finished_run / "data/08_reporting/explained_variance.png") as plot:
        assert plot.format == "PNG"
        assert plot.width > 400 and plot.height > 300


def test_fitted_model_projects_new_features(spark, finished_run):
    from fruits_pipeline.datasets import SparkMLModelDataset
    from fruits_pipeline.pipelines.dimensionality_reduction.nodes import project_features

    model = SparkMLModelDataset(
        filepath=str(finished_run / "data/06_models/scaler_pca_model")
    ).load()
    assert (finished_run / "data/06_models/scaler_pca_model/_COMMITTED").exists()
    features = image_table(spark, finished_run)
    saved = coordinates(spark, finished_run)
    expected = {row["path"]: np.asarray(row["pca_features"]) for row in saved.collect()}
    for row in project_features(features.limit(5), None, None, model).collect():
        np.testing.assert_allclose(
            np.asarray(row["pca_features"]), expected[row["path"]], atol=1e-9
        )


def _outputs(project: Path) -> dict[str, float]:
    return {
        path.relative_to(project).as_posix(): path.stat().st_mtime
        for path in (project / "data").rglob("*")
        if path.is_file() and not path.name.startswith((".", "_"))
    }


def _rewritten(before: dict[str, float], after: dict[str, float], dataset: str) -> bool:
    """Whether any file of ``dataset`` is new or newer (Spark names part files anew each write)."""
    return any(
        path not in before or after[path] > before[path] for path in after if dataset in path
    )


def _table_rows(spark, project: Path) -> dict[str, np.ndarray]:
    return {
        row["path"]: np.asarray(row["features"]) for row in image_table(spark, project).collect()
    }


def test_each_pipeline_runs_alone_from_the_persisted_output_before_it(
    spark, finished_run, small_image_set, weights_file
):
    params = run_params(small_image_set, weights_file)
    metrics_file = finished_run / "data/08_reporting/metrics.json"
    first_metrics = json.loads(metrics_file.read_text())

    output = kedro(
        finished_run, "run", "--pipelines", "dimensionality_reduction", "--params", params
    )
    assert "Completed 6 out of 6 tasks" in output
    assert json.loads(metrics_file.read_text())["k"] == first_metrics["k"]

    before, table = _outputs(finished_run), _table_rows(spark, finished_run)
    # Replays the persisted plan of the first run: the same rows again, none added.
    output = kedro(finished_run, "run", "--pipelines", "featurization", "--params", params)
    assert "Completed 1 out of 1 tasks" in output
    after = _outputs(finished_run)
    assert _rewritten(before, after, "featurization_info")
    assert not _rewritten(before, after, "pca_features")
    replayed = _table_rows(spark, finished_run)
    assert replayed.keys() == table.keys()
    for path, features in table.items():
        np.testing.assert_allclose(replayed[path], features, rtol=0, atol=1e-6)

    output = kedro(finished_run, "run", "--pipelines", "ingestion", "--params", params)
    assert "Completed 1 out of 1 tasks" in output


def test_from_nodes_reruns_only_the_nodes_downstream(finished_run):
    # The saved model projects the table again: its k and axes stay.
    kedro(finished_run, "run", "--from-nodes", "project_features")
    before = _outputs(finished_run)
    output = kedro(finished_run, "run", "--from-nodes", "project_features")
    # project_features, write_pca_csv, plot_pca_scatter, the classification's five nodes and
    # the run report (which reports the classification)
    assert "Completed 9 out of 9 tasks" in output
    after = _outputs(finished_run)
    # The same table version and model as the committed projection and CSV: both are kept.
    assert not _rewritten(before, after, "pca_features/")
    assert not _rewritten(before, after, "pca_features.csv")
    assert _rewritten(before, after, "pca_scatter.png")
    assert not _rewritten(before, after, "metrics.json")
    assert not _rewritten(before, after, "scaler_pca_model")
    assert not _rewritten(before, after, "pca_selection")
    assert not _rewritten(before, after, "image_features")


def test_partial_run_without_its_input_says_which_pipeline_to_run_first(
    project_copy, small_image_set, weights_file
):
    with pytest.raises(AssertionError, match="Input dataset 'image_changes' of this run has not"):
        kedro(
            project_copy,
            "run",
            "--pipelines",
            "featurization",
            "--params",
            run_params(small_image_set, weights_file),
        )


def test_reports_are_written_for_people(finished_run):
    reporting = finished_run / "data" / "08_reporting"
    for name in ("images_per_class.png", "pca_scatter.png", "explained_variance.png"):
        with Image.open(reporting / name) as figure:
            assert figure.format == "PNG" and figure.width > 400, name
    metrics = json.loads((reporting / "metrics.json").read_text())
    report = (reporting / "run_report.md").read_text()
    assert f"| images in the store | {CLASSES * IMAGES_PER_CLASS} |" in report
    # Fitted by the session's first run, or kept by a later test's run of the report.
    assert f"| principal components kept (k) | {metrics['k']} of 1280 (" in report
    assert "No image was quarantined." in report
    assert f"| Banana Red | {IMAGES_PER_CLASS} |" in report
    assert metrics["weights_sha256"] in report


def test_tags_to_nodes_and_only_missing_outputs_select_what_runs(
    finished_run, small_image_set, weights_file
):
    output = kedro(finished_run, "run", "--tags", "reporting")
    assert "Completed 3 out of 3 tasks" in output

    params = run_params(small_image_set, weights_file)
    output = kedro(finished_run, "run", "--to-nodes", "list_changes", "--params", params)
    assert "Completed 1 out of 1 tasks" in output

    (finished_run / "data/08_reporting/run_report.md").unlink()
    output = kedro(finished_run, "run", "--only-missing-outputs", "--params", params)
    assert "Completed 1 out of 1 tasks" in output
    assert (finished_run / "data/08_reporting/run_report.md").exists()
