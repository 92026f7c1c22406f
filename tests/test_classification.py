"""Which fruit is it: the classification pipeline's split, evaluation, report and kept/retrained
rule, the app's classifier file against the Spark model, and `fruits-features --classify`."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fruits_pipeline import app_files, mobilenet_v2
from fruits_pipeline.embedding import PhotoClassifier, classify_photos
from fruits_pipeline.pipelines.classification.nodes import (
    EVALUATION,
    TRAINING,
    _fit,
    plan_training,
    split_photos,
    training_settings,
)
from tests.conftest import committed, kedro, make_project_copy, run_params
from tests.conftest import coordinates as table_coordinates

pytestmark = pytest.mark.pipeline

PARAMETERS = {
    "training_folder": "Training",
    "evaluation_folder": "Test",
    "evaluation_fraction": 0.2,
    "min_training_photos": 5,
    "min_evaluation_photos": 1,
    "reg_param": 1e-5,
    "max_iter": 30,
    "compare_raw_features": True,
    "refit_on_all_photos": True,
    "refit_max_iter": 20,
    "retrain_share": 0.05,
}


def _split(spark, root: str, paths: list[str]) -> dict[str, str]:
    rows = [(f"file:{path}", path.split("/")[-2]) for path in paths]
    frame = spark.createDataFrame(rows, "path string, label string")
    split = split_photos(frame, {**PARAMETERS, "store_root": root})
    return {row["path"].removeprefix("file:"): row["split"] for row in split.collect()}


def test_the_split_follows_the_folders_below_the_root_or_a_hash(spark):
    paths = [
        "/data/store/Training/Apple/1.jpg",
        "/data/store/Test/Apple/2.jpg",
        # A class folder named like a split folder is a class, not a split.
        "/data/store/Test/Training/3.jpg",
        "/data/store/sub/Training/Pear/4.jpg",
    ]
    assert _split(spark, "/data/store", paths) == {
        paths[0]: TRAINING,
        paths[1]: EVALUATION,
        paths[2]: EVALUATION,
        paths[3]: TRAINING,
    }
    # A store rooted at a Training folder, or photos outside both folders: a hash of the path
    # below the root, the same for the same photo, about evaluation_fraction of them evaluating.
    hashed = [f"/data/store/Training/Class {i % 7}/{i}.jpg" for i in range(2000)]
    first = _split(spark, "/data/store/Training/", hashed)
    assert first == _split(spark, "/data/store/Training", hashed)
    share = sum(split == EVALUATION for split in first.values()) / len(first)
    assert 0.17 < share < 0.23
    moved = _split(
        spark, "/elsewhere/Training", [p.replace("/data/store", "/elsewhere") for p in hashed]
    )
    assert list(moved.values()) == list(first.values())


def _history(spark, changes: list[tuple[int, dict[str, str]]]):
    return spark.createDataFrame(changes, "version long, operationMetrics map<string,string>")


def test_the_plan_trains_keeps_or_skips_by_the_rule(spark):
    rows = [
        (f"file:/s/{label}/{i}.jpg", label, TRAINING if i < 8 else EVALUATION)
        for label in ("Apple", "Pear", "Kiwi")
        for i in range(10 if label != "Kiwi" else 6)
    ]
    photos = spark.createDataFrame(rows, "path string, label string, split string")
    selection = {"pca_model": "fruits_pca_a"}
    plan = plan_training(photos, None, None, selection, PARAMETERS)
    assert plan["action"] == "train" and plan["classes"] == ["Apple", "Pear"]
    assert "6 training and 0 evaluation photos" in plan["classes_left_out"]["Kiwi"]

    trained = {
        **plan,
        "status": "trained",
        "settings": training_settings(PARAMETERS),
        "photos_trained_on": 100,
        "trained_on": {"version": 3},
    }
    few = _history(spark, [(4, {"numTargetRowsInserted": "2", "numTargetRowsUpdated": "2"})])
    assert plan_training(photos, few, trained, selection, PARAMETERS)["action"] == "keep"
    many = _history(spark, [(4, {"numTargetRowsInserted": "3"}), (5, {"numOutputRows": "2"})])
    retrained = plan_training(photos, many, trained, selection, PARAMETERS)
    assert retrained["action"] == "train" and "5 photos are new or replaced" in retrained["reason"]
    gone = _history(spark, [(5, {"numTargetRowsInserted": "1"})])
    assert (
        "no longer reaches back"
        in plan_training(photos, gone, trained, selection, PARAMETERS)["reason"]
    )
    refit = plan_training(photos, few, trained, {"pca_model": "fruits_pca_b"}, PARAMETERS)
    assert "PCA axes" in refit["reason"]
    changed = plan_training(photos, few, trained, selection, {**PARAMETERS, "reg_param": 0.1})
    assert "parameters changed" in changed["reason"]

    one_class = photos.where("label = 'Apple'")
    skipped = plan_training(one_class, few, trained, selection, PARAMETERS)
    assert skipped["action"] == "skip" and "it needs two" in skipped["reason"]


def test_a_set_without_the_classifier_removes_the_earlier_classifier_file(tmp_path):
    import fsspec

    filesystem = fsspec.filesystem("file")
    folder = str(tmp_path)
    manifest = app_files.CLASSIFIER_MANIFEST
    app_files.write_app_files(filesystem, folder, {"a.npz": b"1", "b.tflite": b"2"}, manifest)
    before = (tmp_path / "a.npz").stat().st_mtime_ns
    app_files.write_app_files(filesystem, folder, {"a.npz": b"1"}, manifest)
    assert not (tmp_path / "b.tflite").exists()
    assert (tmp_path / "a.npz").stat().st_mtime_ns == before  # the same content: not rewritten
    assert app_files.read_app_files(filesystem, folder, manifest) == {"a.npz": b"1"}


def _fruits_features(project: Path, *args: str) -> subprocess.CompletedProcess:
    executable = Path(sys.executable).parent / "fruits-features"
    return subprocess.run(
        [str(executable), *args], cwd=project, capture_output=True, text=True, check=False
    )


def _info(project: Path) -> dict:
    return json.loads((project / "data/06_models/classification.json").read_text())


def test_a_store_whose_classes_cannot_be_split_skips_the_step_with_its_reason(finished_run):
    # The sample's Test classes are not its Training classes: no class has both sides.
    info = _info(finished_run)
    assert info["status"] == "skipped"
    assert "0 class(es) with enough photos" in info["reason"]
    assert len(info["classes_left_out"]) == 13
    report = (finished_run / "data/08_reporting/run_report.md").read_text()
    assert f"## Classification\n\nSkipped: {info['reason']}." in report
    assert "| Banana Red | 12 training and 0 evaluation photos;" in report
    models = finished_run / "data/06_models"
    assert not (models / app_files.CLASSIFIER).exists()
    result = _fruits_features(finished_run, str(finished_run / "data"), "--classify")
    assert result.returncode == 2
    assert "the last run trained no classifier" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="session")
def classified_run(finished_run, small_image_set, weights_file, tmp_path_factory) -> Path:
    """The finished run's project, copied, then its classification (and report) run again with
    the store rooted at the sample's Training folder: a split by hash, ten classes."""
    project = make_project_copy(tmp_path_factory.mktemp("classified"))
    shutil.rmtree(project / "data")
    shutil.copytree(finished_run / "data", project / "data")
    kedro(
        project,
        "run",
        "--pipelines",
        "classification,reporting",
        "--params",
        f"classification.store_root={small_image_set / 'Training'},"
        "classification.compare_raw_features=true",
    )
    return project


def test_the_evaluation_is_saved_and_reported(classified_run):
    info = _info(classified_run)
    assert info["status"] == "trained" and info["action"] == "train"
    assert len(info["classes"]) >= 8
    scored = info["evaluation"]
    assert scored["photos"] == sum(
        counts[EVALUATION]
        for label, counts in info["photos_per_class"].items()
        if label in info["classes"]
    )
    assert 0.8 <= scored["top1_accuracy"] <= scored["top5_accuracy"] <= 1
    assert set(scored["recall_per_class"]) == set(info["classes"])
    confusion = np.asarray(scored["confusion_matrix"])
    assert confusion.shape == (len(info["classes"]),) * 2
    assert np.trace(confusion) / confusion.sum() == pytest.approx(scored["top1_accuracy"])
    assert 0 < info["raw_features"]["top1_accuracy"] <= 1
    assert info["raw_features"]["training_seconds"] > 0
    assert info["photos_trained_on"] == sum(
        counts[TRAINING] + counts[EVALUATION]
        for label, counts in info["photos_per_class"].items()
        if label in info["classes"]
    )
    report = (classified_run / "data/08_reporting/run_report.md").read_text()
    assert "Classifier trained in this run" in report
    assert f"| PCA coordinates | {scored['top1_accuracy']:.2%} |" in report
    assert "| raw (1,280 MobileNetV2 features) |" in report
    assert "xxhash64 of its path below the store's root" in report
    with Image.open(classified_run / "data/08_reporting/confusion_matrix.png") as figure:
        assert figure.format == "PNG" and figure.width > 400
    for model in ("classifier_model", "evaluated_classifier_model"):
        assert (committed(classified_run / "data/06_models" / model) / "metadata").is_dir()


def _photos(small_image_set: Path) -> list[Path]:
    return sorted((small_image_set / "Training").glob("*/*.jpg"))[::9]


def test_the_app_file_gives_the_spark_models_probabilities(spark, classified_run, small_image_set):
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    models = classified_run / "data/06_models"
    spark_model = PipelineModel.load(str(committed(models / "classifier_model")))
    indexer = spark_model.stages[0]
    coordinates = table_coordinates(spark, classified_run).withColumn(
        "pca_features", array_to_vector("pca_features")
    )
    scored = {
        row["path"]: row["probability"].toArray()
        for row in spark_model.transform(
            coordinates.where(F.col("label").isin(indexer.labels))
        ).collect()
    }
    classifier = PhotoClassifier(models)
    assert classifier.labels == list(indexer.labels)
    photos = _photos(small_image_set)
    images = np.stack([mobilenet_v2.decode_image(p.read_bytes(), 10**8) for p in photos])
    probabilities, _ = classifier(images)
    expected = np.stack([scored[f"file:{photo.resolve()}"] for photo in photos])
    assert np.abs(probabilities - expected).max() <= 1e-4


def test_the_refit_starts_from_the_evaluated_models_coefficients(spark, classified_run):
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    classes = _info(classified_run)["classes"]
    rows = (
        table_coordinates(spark, classified_run)
        .where(F.col("label").isin(classes))
        .withColumn("pca_features", array_to_vector("pca_features"))
        .persist()
    )

    def losses(model) -> list[float]:
        return model.stages[-1].summary.objectiveHistory

    evaluated, _ = _fit(rows, "pca_features", PARAMETERS)
    settings = {**PARAMETERS, "max_iter": 2, "refit_max_iter": 2}
    warm, _ = _fit(rows, "pca_features", settings, starting_from=evaluated)
    cold, _ = _fit(rows, "pca_features", settings)
    rows.unpersist()
    # On the same rows the refit's first loss is where the evaluated fit ended, far below
    # the loss a fit from zero starts at.
    assert losses(warm)[0] == pytest.approx(losses(evaluated)[-1], rel=1e-6)
    assert losses(warm)[-1] < losses(cold)[-1] / 2


def test_classify_answers_which_fruit_and_which_photos_look_alike(
    classified_run, small_image_set, tmp_path
):
    photos = _photos(small_image_set)
    broken = tmp_path / "Apple" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "answers.csv"
    result = _fruits_features(
        classified_run,
        *map(str, photos),
        str(broken),
        "--classify",
        "--similar",
        "3",
        "--out",
        str(out),
    )
    assert result.returncode == 1 and f"skipped {broken}" in result.stderr
    answers = pd.read_csv(out)
    assert list(answers.columns) == [
        "path",
        "predicted_label",
        "probability",
        "similar_1",
        "similar_2",
        "similar_3",
    ]
    assert list(answers["path"]) == [f"file:{photo.resolve()}" for photo in photos]
    assert (answers["predicted_label"] == [photo.parent.name for photo in photos]).mean() >= 0.9
    assert answers["probability"].between(0, 1).all()
    # A photo of the store is its own nearest photo; its neighbours are the store's paths.
    assert (answers["similar_1"] == answers["path"]).all()
    store = pd.read_csv(io.StringIO(_fruits_features(classified_run, str(small_image_set)).stdout))
    assert set(answers[["similar_2", "similar_3"]].to_numpy().ravel()) <= set(store["path"])

    function = classify_photos(photos, classified_run / "data/06_models", similar=3)
    pd.testing.assert_frame_equal(
        function, answers.iloc[: len(photos)], check_exact=False, atol=1e-6
    )
    plain = _fruits_features(classified_run, str(photos[0]))
    assert plain.stdout.startswith("path,label,pc_001")


def test_the_classifier_is_kept_until_enough_changed(
    spark, small_image_set, weights_file, tmp_path
):
    store = tmp_path / "Training"
    shutil.copytree(small_image_set / "Training", store)
    params = f"{run_params(store, weights_file)},classification.store_root={store}"
    project = make_project_copy(tmp_path / "project")

    # The first run trains.
    kedro(project, "run", "--params", params)
    assert _info(project)["action"] == "train"
    trained = _info(project)
    search = project / "data/06_models" / app_files.SIMILAR_PHOTOS
    trained_search = search.stat().st_mtime_ns
    classifier_file = (project / "data/06_models" / app_files.CLASSIFIER).read_bytes()

    # Nothing new: the run ends before the pipelines; classifier and search data stay.
    kedro(project, "run", "--params", params)
    assert _info(project) == trained
    assert search.stat().st_mtime_ns == trained_search
    assert (project / "data/06_models" / app_files.CLASSIFIER).read_bytes() == classifier_file

    # One new photo (1 % of the photos trained on): the search data takes it, the classifier stays.
    new_photo = store / "Avocado" / "new.jpg"
    shutil.copy2(sorted((small_image_set / "Test" / "Avocado ripe").glob("*.jpg"))[0], new_photo)
    kedro(project, "run", "--params", params)
    kept = _info(project)
    assert kept["action"] == "keep"
    assert kept["evaluation"] == trained["evaluation"]
    assert (project / "data/06_models" / app_files.CLASSIFIER).read_bytes() == classifier_file
    assert (
        "Classifier kept from an earlier run"
        in (project / "data/08_reporting/run_report.md").read_text()
    )
    paths = app_files.npz_arrays(search.read_bytes())["paths"]
    assert f"file:{new_photo}" in set(paths)

    # A new class: trained again.
    shutil.copytree(small_image_set / "Test" / "Avocado ripe", store / "Avocado ripe")
    kedro(project, "run", "--params", params)
    retrained = _info(project)
    assert retrained["action"] == "train" and "Avocado ripe" in retrained["reason"]
    assert "Avocado ripe" in (project / "data/06_models" / app_files.LABELS).read_text().split("\n")
