"""A growing photo store: each run featurizes only what changed, in one Delta MERGE, and keeps
the PCA axes; the store's history below is played once, run after run, and each test checks
one step of it."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    committed,
    coordinates,
    failed_before_spark,
    featurization_info,
    image_table,
    kedro,
    kedro_process,
    make_project_copy,
    run_params,
)

pytestmark = pytest.mark.pipeline

CLASSES = ("Avocado", "Banana Red", "Tomato Maroon", "Tomato Heart")
PER_CLASS = 5
# 2001-01-01: older than every photo already in the store, as an unzipped archive keeps it.
OLD_TIME = 978307200


@dataclass
class Step:
    """What one run left: its featurization_info, the image table, the PCA outputs."""

    info: dict
    table: dict[str, dict]
    table_version: int
    pca: dict[str, np.ndarray]
    csv_paths: list[str]
    metrics: dict
    # The committed version of each PCA output (a new name each time it is written).
    pca_versions: dict[str, str]
    selection: dict
    # The kept axes' share of the table's variance, computed here from the table's rows.
    share_from_rows: float
    # Each featurized row's coordinates, projected here from the table's rows.
    pca_from_rows: dict[str, np.ndarray]
    # What the run printed.
    output: str


def _training(sample_images: Path, label: str) -> list[Path]:
    return sorted((sample_images / "Training" / label).glob("*.jpg"))


def _version(spark, table: Path) -> int:
    return spark.sql(f"DESCRIBE HISTORY delta.`{table}` LIMIT 1").first()["version"]


def _record(spark, project: Path, output: str) -> Step:
    import json

    rows = image_table(spark, project).collect()
    version = _version(spark, project / "data" / "04_feature" / "image_features")
    pca = {
        row["path"]: np.asarray(row["pca_features"])
        for row in coordinates(spark, project).collect()
    }
    csv = spark.read.option("header", True).csv(
        str(committed(project / "data/07_model_output/pca_features.csv"))
    )
    models = project / "data" / "06_models"
    featurized = [row for row in rows if row["features"] is not None]
    with np.load(models / "pca_projection.npz") as projection:
        features = np.asarray([row["features"] for row in featurized])
        standardized = (features - projection["mean"]) * projection["scale"]
        projected = standardized @ projection["components"]
    outputs = project / "data" / "07_model_output"
    return Step(
        info=featurization_info(project),
        table={row["path"]: row.asDict() for row in rows},
        table_version=version,
        pca=pca,
        csv_paths=[row["path"] for row in csv.select("path").collect()],
        metrics=json.loads((project / "data/08_reporting/metrics.json").read_text()),
        pca_versions={
            "pca_features": _version(spark, outputs / "pca_features"),
            "pca_features.csv": (outputs / "pca_features.csv" / "_COMMITTED").read_text(),
        },
        selection=json.loads((models / "pca_selection.json").read_text()),
        share_from_rows=projected.var(axis=0).sum() / standardized.var(axis=0).sum(),
        pca_from_rows={
            row["path"]: point for row, point in zip(featurized, projected, strict=True)
        },
        output=output,
    )


def _path(store: Path, relative: str) -> str:
    return f"file:{store / relative}"


@pytest.fixture(scope="module")
def history(spark, sample_images, weights_file, tmp_path_factory) -> dict:
    """The store's life, one `kedro run` after each change:
    first (20 photos), again (nothing new), added (3 new photos), changed (one replaced, one
    deleted, one empty file), unchanged (nothing new again), reweighted (other weights)."""
    store = tmp_path_factory.mktemp("store")
    for label in CLASSES:
        (store / label).mkdir()
        for image in _training(sample_images, label)[:PER_CLASS]:
            shutil.copy2(image, store / label / image.name)
    project = make_project_copy(tmp_path_factory.mktemp("growing"))
    params = run_params(store, weights_file)
    steps: dict = {"store": store, "project": project}

    def run(name: str, run_with: str = params) -> None:
        steps[name] = _record(spark, project, kedro(project, "run", "--params", run_with))

    run("first")
    run("again")

    # Three new photos: one whose path sorts before every path seen, in a new class folder;
    # one with a modification time older than any seen; one plain.
    (store / "Apple A").mkdir()
    shutil.copy2(_training(sample_images, "Avocado")[-1], store / "Apple A" / "0.jpg")
    old = store / "Banana Red" / "zz_old_time.jpg"
    shutil.copy2(_training(sample_images, "Banana Red")[-1], old)
    os.utime(old, (OLD_TIME, OLD_TIME))
    shutil.copy2(_training(sample_images, "Tomato Maroon")[-1], store / "Tomato Maroon" / "new.jpg")
    steps["added_paths"] = {
        _path(store, "Apple A/0.jpg"),
        _path(store, "Banana Red/zz_old_time.jpg"),
        _path(store, "Tomato Maroon/new.jpg"),
    }
    run("added")

    # One photo replaced in place by another photo, one deleted, one empty file added.
    replaced = _training(sample_images, "Tomato Heart")[0].name
    shutil.copyfile(_training(sample_images, "Avocado")[-2], store / "Tomato Heart" / replaced)
    deleted = _training(sample_images, "Tomato Maroon")[0].name
    (store / "Tomato Maroon" / deleted).unlink()
    (store / "Avocado" / "empty.jpg").write_bytes(b"")
    steps["replaced"] = _path(store, f"Tomato Heart/{replaced}")
    steps["deleted"] = _path(store, f"Tomato Maroon/{deleted}")
    steps["empty"] = _path(store, "Avocado/empty.jpg")
    run("changed")
    run("unchanged")

    # The same numbers in another file: another sha256, so another model id.
    other_weights = tmp_path_factory.mktemp("weights") / "other.weights.h5"
    other_weights.write_bytes(weights_file.read_bytes() + b"other file, same numbers")
    steps["other_weights"] = other_weights
    run("reweighted", run_params(store, other_weights))
    return steps


def _store_paths(store: Path) -> set[str]:
    return {f"file:{path}" for path in store.rglob("*.jpg")}


def test_the_first_run_featurizes_the_whole_store(history, weights_file):
    first = history["first"]
    images = len(CLASSES) * PER_CLASS
    assert first.info["images_sent_to_model"] == first.info["images_featurized"] == images
    assert first.info["images_in_store"] == images
    assert first.info["photo_store"] == f"file:{history['store']}"
    assert len(first.table) == images
    assert {row["model_id"] for row in first.table.values()} == {first.info["weights_sha256"]}
    assert all(len(row["features"]) == 1280 for row in first.table.values())
    assert first.metrics["images_in"] == first.metrics["images_featurized"] == images
    assert first.metrics["pca_refit"] is True
    assert sorted(first.csv_paths) == sorted(first.pca) == sorted(first.table)


def test_a_run_with_nothing_new_ends_before_its_nodes_with_zero_counts(history):
    first, again = history["first"], history["again"]
    assert again.info["images_sent_to_model"] == again.info["images_featurized"] == 0
    assert again.info["images_quarantined"] == again.info["images_removed"] == 0
    assert again.info["images_in_store"] == first.info["images_in_store"]
    assert again.table_version == first.table_version, "no MERGE committed"
    assert again.table == first.table
    for path, point in first.pca.items():
        np.testing.assert_array_equal(again.pca[path], point)
    # No node ran: every output is the first run's.
    assert again.pca_versions == first.pca_versions
    assert again.selection == first.selection
    assert again.metrics == first.metrics
    assert "Completed node" not in again.output


def test_a_run_with_nothing_new_starts_no_jvm(history, monkeypatch):
    # Any Spark start would fail: no Java where the environment points.
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")
    project, last = history["project"], history["reweighted"]
    params = run_params(history["store"], history["other_weights"])
    news = f"Nothing new since table version {last.table_version}, {len(last.table)} photos"
    for _ in range(2):
        result = kedro_process(project, "run", "--params", params)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert news in output
    assert featurization_info(project)["images_sent_to_model"] == 0
    assert not (project / "data" / "run.lock").exists(), "the run lock is released"
    report = (project / "data/08_reporting/run_report.md").read_text()
    assert report.split("\n\n")[1].startswith(news), "said first"
    assert report.count("Nothing new since") == 1, "one line, however many idle runs"


def test_the_coordinates_and_the_variance_share_equal_a_full_recomputation(history):
    for name in ("first", "again", "added", "changed", "unchanged", "reweighted"):
        step = history[name]
        assert step.pca.keys() == step.pca_from_rows.keys(), name
        for path, point in step.pca_from_rows.items():
            np.testing.assert_allclose(step.pca[path], point, rtol=0, atol=1e-9)
        assert step.selection["current_variance_explained"] == pytest.approx(
            step.share_from_rows, abs=1e-6
        ), name


def test_new_photos_alone_reach_the_model_and_keep_the_axes(history):
    again, added = history["again"], history["added"]
    new = history["added_paths"]
    assert added.info["images_sent_to_model"] == added.info["images_featurized"] == len(new)
    assert set(added.table) == set(again.table) | new
    assert len(added.table) == len(again.table) + len(new)
    # Yesterday's photos keep their rows and their coordinates; the new ones get coordinates on
    # the same axes.
    for path, row in again.table.items():
        assert added.table[path] == row
        np.testing.assert_allclose(added.pca[path], again.pca[path], rtol=0, atol=1e-9)
    assert added.metrics["pca_refit"] is False
    assert added.metrics["k"] == again.metrics["k"]
    assert set(added.pca) == set(added.table)
    assert sorted(added.csv_paths) == sorted(added.table), "the CSV holds every image once"
    assert 0 < added.metrics["current_variance_explained"] <= 1
    assert added.metrics["current_variance_explained"] == pytest.approx(
        added.share_from_rows, abs=1e-6
    )
    for name, version in added.pca_versions.items():
        assert version != again.pca_versions[name], f"{name}: a new table version, written again"


def test_replaced_deleted_and_empty_files_change_only_their_rows(history):
    added, changed = history["added"], history["changed"]
    replaced, deleted, empty = history["replaced"], history["deleted"], history["empty"]
    assert changed.info["images_sent_to_model"] == 1, "only the replaced photo"
    assert changed.info["images_removed"] == 1
    assert changed.info["images_quarantined"] == 1
    assert set(changed.table) == (set(added.table) - {deleted}) | {empty}
    assert changed.table[replaced]["length"] != added.table[replaced]["length"]
    difference = np.abs(
        np.asarray(changed.table[replaced]["features"]) - added.table[replaced]["features"]
    )
    assert difference.max() > 0.01, "the replaced photo has the new photo's features"
    assert changed.table[empty]["features"] is None
    assert changed.table[empty]["reason"] == "empty file (0 bytes)"
    for path in set(added.table) - {deleted, replaced}:
        assert changed.table[path] == added.table[path]
    assert deleted not in changed.pca and empty not in changed.pca
    assert sorted(changed.csv_paths) == sorted(changed.pca)
    assert changed.metrics["images_in"] == len(_store_paths(history["store"]))
    assert changed.metrics["images_quarantined"] == 1


def test_a_quarantined_file_is_not_retried(history):
    changed, unchanged = history["changed"], history["unchanged"]
    assert unchanged.info["images_sent_to_model"] == 0
    assert unchanged.info["images_quarantined"] == 0
    assert unchanged.table_version == changed.table_version
    assert unchanged.table == changed.table
    assert unchanged.pca_versions == changed.pca_versions
    assert changed.metrics["current_variance_explained"] == pytest.approx(
        changed.share_from_rows, abs=1e-6
    )


def test_other_weights_redo_every_row_and_refit_the_axes(history):
    unchanged, reweighted = history["unchanged"], history["reweighted"]
    featurizable = sum(row["features"] is not None for row in unchanged.table.values())
    assert reweighted.info["images_sent_to_model"] == featurizable
    assert reweighted.info["weights_source"] == str(history["other_weights"])
    new_id = reweighted.info["weights_sha256"]
    assert new_id != unchanged.info["weights_sha256"]
    assert {row["model_id"] for row in reweighted.table.values()} == {new_id}
    assert set(reweighted.table) == set(unchanged.table)
    assert reweighted.metrics["pca_refit"] is True, "axes of other features are not kept"
    for path, row in unchanged.table.items():
        if row["features"] is not None:  # same numbers in the other file: same features
            np.testing.assert_allclose(reweighted.table[path]["features"], row["features"])


def test_another_store_is_refused_with_a_clear_message(history, small_image_set, weights_file):
    # The real CLI in a fresh process, stopped before Spark: its message alone.
    result = kedro_process(
        history["project"], "run", "--params", run_params(small_image_set, weights_file)
    )
    output = failed_before_spark(result, history["project"])
    assert "Error: The image table holds photos of another store" in output
    assert f"not of file:{small_image_set}, which this run reads" in output


def test_the_tables_rows_are_checked_too(spark, history, small_image_set):
    from fruits_pipeline.datasets import ImageFolderDataset
    from fruits_pipeline.errors import OtherStoreError
    from fruits_pipeline.pipelines.ingestion.nodes import check_same_store

    other = ImageFolderDataset(path=str(small_image_set)).location
    check_same_store(image_table(spark, history["project"]), f"file:{history['store']}")
    with pytest.raises(OtherStoreError, match=f"not of {other}, which this run reads"):
        check_same_store(image_table(spark, history["project"]), other)


def test_the_store_grows_on_s3_in_the_emr_environment(
    s3_bucket, tiny_image_set, weights_file, tmp_path, monkeypatch
):
    import json

    import s3fs

    from tests.s3_outputs import assert_encrypted, put_encrypted

    # SSE-S3 asked on every write here (the other S3 runs keep the bucket's default, the
    # deployment asks for SSE-KMS): each mode of s3_encryption checked on a whole run.
    monkeypatch.setenv("FRUITS_S3_SSE", "AES256")
    project = make_project_copy(tmp_path / "project")
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    root = f"{s3_bucket}/fruits-pipeline"
    images = sorted(tiny_image_set.rglob("*.jpg"))
    first, later = images[:-2], images[-2:]

    def upload(photos: list[Path]) -> None:
        for photo in photos:
            relative = photo.relative_to(tiny_image_set).as_posix()
            put_encrypted(photo, f"s3://{root}/01_raw/fruits-360/{relative}")

    def run() -> dict:
        result = kedro_process(
            project,
            "run",
            "--env",
            "emr",
            "--params",
            f"featurization.weights={weights_file}",
            timeout=900,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        info = json.loads(filesystem.cat_file(f"{root}/04_feature/featurization_info.json"))
        metrics = json.loads(filesystem.cat_file(f"{root}/08_reporting/metrics.json"))
        return {"info": info, "metrics": metrics}

    upload(first)
    before = run()
    assert before["info"]["images_sent_to_model"] == len(first)
    upload(later)
    after = run()
    assert after["info"]["images_sent_to_model"] == len(later)
    assert after["metrics"]["images_in"] == after["metrics"]["images_featurized"] == len(images)
    assert after["metrics"]["pca_refit"] is False
    # Nothing new: decided from S3 without a JVM (none could start: no Java there).
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")
    idle = run()
    assert idle["info"]["images_sent_to_model"] == idle["info"]["images_featurized"] == 0
    assert idle["metrics"] == after["metrics"]
    report = filesystem.cat_file(f"{root}/08_reporting/run_report.md").decode()
    assert f"Nothing new since table version 1, {len(images)} photos" in report
    assert filesystem.ls(f"{root}/04_feature/image_features/_delta_log")
    assert_encrypted(s3_bucket)


def _assert_consistent(step: Step) -> None:
    """The coordinates are a full projection of the table, the CSV holds them, the kept axes'
    share is a full recomputation's."""
    assert step.pca.keys() == step.pca_from_rows.keys()
    for path, point in step.pca_from_rows.items():
        np.testing.assert_allclose(step.pca[path], point, rtol=0, atol=1e-9)
    assert sorted(step.csv_paths) == sorted(step.pca)
    assert step.selection["current_variance_explained"] == pytest.approx(
        step.share_from_rows, abs=1e-6
    )


def test_a_run_stopped_half_way_is_repaired_by_the_next(spark, history, sample_images):
    """The states a killed run leaves, made exactly: the image table merged but nothing after
    it (a partial run), then the coordinates merged but their sources not yet recorded."""
    project, store = history["project"], history["store"]
    params = run_params(store, history["other_weights"])
    shutil.copy2(_training(sample_images, "Avocado")[-3], store / "Avocado" / "late_1.jpg")
    kedro(project, "run", "--pipelines", "ingestion,featurization", "--params", params)
    stopped = _record(spark, project, "")
    assert f"file:{store / 'Avocado/late_1.jpg'}" not in stopped.pca, "nothing after the MERGE"
    repaired = _record(spark, project, kedro(project, "run", "--params", params))
    assert "Completed node" in repaired.output, "the partial run voided the last run's stamp"
    assert repaired.info["images_sent_to_model"] == 0, "the table already holds the photo"
    _assert_consistent(repaired)

    table = project / "data" / "07_model_output" / "pca_features"
    sources = spark.sql(f"DESCRIBE DETAIL delta.`{table}`").first()["properties"]
    shutil.copy2(_training(sample_images, "Avocado")[-4], store / "Avocado" / "late_2.jpg")
    kedro(project, "run", "--params", params)
    # Killed between the coordinates' MERGE and the commit of their sources: the property
    # lags the rows, and the run never stamped its end.
    lagging = sources["fruits_pipeline.made_from"].replace("'", "\\'")
    spark.sql(
        f"ALTER TABLE delta.`{table}` SET TBLPROPERTIES ('fruits_pipeline.made_from' = '{lagging}')"
    )
    (project / "data" / "08_reporting" / "last_run.json").write_text("{}")
    again = _record(spark, project, kedro(project, "run", "--params", params))
    assert "Completed node" in again.output
    _assert_consistent(again)
    assert f"file:{store / 'Avocado/late_2.jpg'}" in again.pca

    # The image table deleted (as the message for another store suggests) and made again from
    # version 0: the kept coordinates' and moments' versions are not taken for its own.
    shutil.rmtree(project / "data" / "04_feature" / "image_features")
    remade = _record(spark, project, kedro(project, "run", "--params", params))
    assert remade.table_version == 0
    assert remade.info["images_sent_to_model"] == len(remade.pca)
    _assert_consistent(remade)
