"""Runs that cannot succeed stop before Spark starts, with a message that says what to fix.

These run the real `kedro` command in a fresh process, as a user would.
"""

from __future__ import annotations

from tests.conftest import failed_before_spark, kedro_run


def test_default_location_without_images_says_where_to_put_the_data_set(project_copy):
    result = kedro_run(project_copy)
    output = failed_before_spark(result, project_copy)
    expected_location = project_copy / "data" / "01_raw" / "fruits-360"
    assert f"No image matching '*.jpg' was found under '{expected_location}'" in output
    assert "moltean/fruits" in output and "github.com/fruits-360" in output
    assert "--params raw_images_path=" in output


def test_missing_weights_file_stops_the_run_before_spark(project_copy, small_image_set, tmp_path):
    missing = tmp_path / "no-such.weights.h5"
    result = kedro_run(
        project_copy,
        "--params",
        f"raw_images_path={small_image_set},featurization.weights={missing}",
    )
    output = failed_before_spark(result, project_copy)
    assert f"MobileNetV2 weights could not be had from featurization.weights='{missing}'" in output
    assert "$KERAS_HOME/models/" in output


def test_threshold_outside_zero_one_stops_the_run_before_spark(project_copy, small_image_set):
    result = kedro_run(
        project_copy,
        "--params",
        f"raw_images_path={small_image_set},dimensionality_reduction.variance_threshold=1.5",
    )
    output = failed_before_spark(result, project_copy)
    assert "dimensionality_reduction.variance_threshold must be in (0, 1], got 1.5" in output


def test_too_few_images_for_pca_stops_the_run_before_spark(project_copy, sample_images, tmp_path):
    lonely = tmp_path / "one" / "Banana Red"
    lonely.mkdir(parents=True)
    image = next((sample_images / "Training" / "Banana Red").glob("*.jpg"))
    (lonely / image.name).write_bytes(image.read_bytes())
    result = kedro_run(project_copy, "--params", f"raw_images_path={lonely.parent}")
    output = failed_before_spark(result, project_copy)
    assert "PCA needs at least 2 images" in output and str(lonely.parent) in output


def test_unknown_environment_names_the_missing_configuration(project_copy):
    result = kedro_run(project_copy, "--env", "no-such-env")
    output = failed_before_spark(result, project_copy)
    assert f"{project_copy / 'conf' / 'no-such-env'}" in output
