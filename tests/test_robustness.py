"""Every image accounted for: odd and broken files, PCA at awkward sizes, safe re-runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pyspark.sql import functions as F

from fruits_pipeline import mobilenet_v2
from fruits_pipeline.pipelines.dimensionality_reduction.nodes import (
    AccountingError,
    fit_pca,
    summarize_run,
)
from tests.conftest import featurization_info, image_table, kedro, make_project_copy, run_params
from tests.odd_images import EXIF_ORIENTATION, build_odd_image_folder

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def odd_run(spark, sample_images, weights_file, tmp_path_factory):
    """`kedro run` over a folder of good, odd and broken files."""
    images = tmp_path_factory.mktemp("odd-images")
    cases = build_odd_image_folder(sample_images, images)
    project = make_project_copy(tmp_path_factory.mktemp("odd-project"))
    kedro(project, "run", "--params", run_params(images, weights_file))
    return project, images, cases


def _by_relative_path(rows, images: Path) -> dict[str, dict]:
    return {
        row["path"].removeprefix("file:").removeprefix(f"{images}/"): row.asDict() for row in rows
    }


def test_each_file_is_featurized_or_quarantined_with_its_reason(spark, odd_run):
    project, images, cases = odd_run
    table = image_table(spark, project)
    features = _by_relative_path(table.where("features IS NOT NULL").collect(), images)
    quarantine = _by_relative_path(table.where("features IS NULL").collect(), images)
    assert set(features) | set(quarantine) == {case.relative_path for case in cases}
    assert not set(features) & set(quarantine)
    for case in cases:
        if case.reason is None:
            row = features[case.relative_path]
            assert row["label"] == case.label, case
            assert len(row["features"]) == 1280 and np.isfinite(row["features"]).all(), case
        else:
            row = quarantine[case.relative_path]
            assert case.reason in row["reason"], (case, row["reason"])
            assert row["error_class"], case


def test_counts_add_up_in_the_metrics(odd_run):
    project, _, cases = odd_run
    metrics = json.loads((project / "data/08_reporting/metrics.json").read_text())
    quarantined = sum(case.reason is not None for case in cases)
    assert metrics["images_in"] == len(cases)
    assert metrics["images_quarantined"] == quarantined
    assert metrics["images_featurized"] == len(cases) - quarantined
    assert metrics["images_per_class"]["苹果 红"] == 1
    assert metrics["images_per_class"]["Pêche Plate"] == 1


def test_a_replayed_run_changes_nothing(spark, odd_run, weights_file):
    project, images, _ = odd_run
    before_rows = image_table(spark, project).collect()
    kedro(
        project,
        "run",
        "--pipelines",
        "ingestion,featurization",
        "--params",
        run_params(images, weights_file),
    )
    assert featurization_info(project)["images_sent_to_model"] == 0
    after_rows = image_table(spark, project).collect()
    assert len(after_rows) == len(_by_relative_path(after_rows, images)), "no duplicated rows"
    assert sorted(map(tuple, after_rows)) == sorted(map(tuple, before_rows))


def test_counts_that_do_not_add_up_fail_the_run(spark):
    table = spark.createDataFrame(
        [(f"file:/x/A/{i}.jpg", "A", [1.0]) for i in range(3)] + [("file:/x/A/3.jpg", "A", None)],
        "path string, label string, features array<float>",
    )
    with pytest.raises(
        AccountingError,
        match="5 images are in the store but the image table holds 3 featurized and 1 "
        "quarantined rows for 4 paths",
    ):
        summarize_run(table, {"images_in_store": 5}, {"k": 1})


def _exact_spectrum(features: np.ndarray) -> np.ndarray:
    centered = features - features.mean(axis=0)
    std = features.std(axis=0, ddof=1)
    standardized = np.divide(centered, std, out=np.zeros_like(centered), where=std > 0)
    singular = np.linalg.svd(standardized, compute_uv=False)
    ratios = np.zeros(features.shape[1])
    ratios[: singular.size] = singular**2 / np.sum(singular**2)
    return ratios


def _degenerate(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Features shaped like MobileNetV2's (non-negative float32, 1280 wide) in awkward regimes."""
    if kind == "fewer images than features":
        base = rng.gamma(0.5, 1.0, size=(60, 1280))
    elif kind == "constant columns":
        base = rng.gamma(0.5, 1.0, size=(400, 1280))
        base[:, ::3] = 0.0  # dead ReLU channels
        base[:, 1::7] = 2.5
    elif kind == "duplicate images":  # 100 distinct rows, each four times
        base = np.repeat(rng.gamma(0.5, 1.0, size=(100, 1280)), 4, axis=0)
    else:  # large offsets with tiny spread: where a one-pass covariance loses its digits
        base = 1000.0 + rng.gamma(0.5, 1e-3, size=(400, 1280))
    low_rank = rng.normal(size=(base.shape[0], 8)) @ rng.normal(size=(8, 1280))
    return (base + 0.3 * np.abs(low_rank) * (base > 0)).astype(np.float32)


def _features_frame(spark, features: np.ndarray):
    """image_features as the featurization writes them, one image of class A per row."""
    return spark.createDataFrame(
        [(f"file:/x/A/{i}.jpg", "A", row.tolist()) for i, row in enumerate(features)],
        "path string, label string, features array<float>",
    )


@pytest.mark.parametrize(
    "kind", ["fewer images than features", "constant columns", "duplicate images", "large offsets"]
)
def test_pca_equals_an_exact_svd_in_degenerate_regimes(spark, kind):
    features = _degenerate(kind, np.random.default_rng(11))
    frame = _features_frame(spark, features)
    _, selection, _ = fit_pca(frame, 0.9, "0" * 64)
    expected = _exact_spectrum(features.astype(np.float64))
    assert np.abs(np.asarray(selection["explained_variance_ratio"]) - expected).max() <= 1e-6
    cumulative = np.cumsum(expected)
    assert selection["k"] == int(np.argmax(cumulative >= 0.9 - 1e-12)) + 1
    assert selection["variance_explained"] == pytest.approx(
        cumulative[selection["k"] - 1], abs=1e-6
    )


def test_exif_orientation_is_applied(sample_images):
    with Image.open(next((sample_images / "Training" / "Banana Red").glob("*.jpg"))) as original:
        banana = original.convert("RGB")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    stored = io.BytesIO()
    banana.transpose(Image.Transpose.ROTATE_90).save(
        stored, format="JPEG", exif=exif.tobytes(), quality=95
    )
    upright = io.BytesIO()
    banana.save(upright, format="JPEG", quality=95)
    rotated = mobilenet_v2.decode_image(stored.getvalue(), max_pixels=10**6).astype(float)
    expected = mobilenet_v2.decode_image(upright.getvalue(), max_pixels=10**6).astype(float)
    assert np.abs(rotated - expected).mean() < 3.0
    unrotated = np.rot90(expected)
    assert np.abs(rotated - unrotated).mean() > 10 * np.abs(rotated - expected).mean()


def _decodes_or_refuses(content: bytes) -> None:
    try:
        decoded = mobilenet_v2.decode_image(content, max_pixels=4_000_000)
    except mobilenet_v2.ImageDecodeError as error:
        assert str(error)
    else:
        assert decoded.shape == (224, 224, 3) and decoded.dtype == np.uint8


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_never_crash_the_decoder(content):
    _decodes_or_refuses(content)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_real_images_never_crash_the_decoder(sample_images, data):
    image = sorted((sample_images / "Training" / "Avocado").glob("*.jpg"))[0].read_bytes()
    mutated = bytearray(image)
    for _ in range(data.draw(st.integers(1, 20))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(mutated)))
    _decodes_or_refuses(bytes(mutated[:cut]))


def test_features_are_null_only_for_quarantined_rows(spark, odd_run):
    project, _, _ = odd_run
    table = image_table(spark, project)
    assert table.where(F.col("features").isNull() != F.col("reason").isNotNull()).count() == 0
    assert table.where(F.col("features").isNotNull() & F.col("label").isNull()).count() == 0


@pytest.mark.parametrize("kind", ["fewer images than features", "constant columns"])
def test_the_kept_model_is_the_one_mllib_fits_with_the_chosen_k(spark, kind):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector

    features = _degenerate(kind, np.random.default_rng(5))
    frame = _features_frame(spark, features)
    model, selection, _ = fit_pca(frame, 0.9, "0" * 64)
    k = selection["k"]
    vectors = frame.withColumn("v", array_to_vector("features"))
    reference = Pipeline(
        stages=[
            StandardScaler(inputCol="v", outputCol="s", withMean=True, withStd=True),
            PCA(k=k, inputCol="s", outputCol="p"),
        ]
    ).fit(vectors)
    kept_pca, reference_pca = model.stages[-1], reference.stages[-1]
    assert kept_pca.getK() == k
    assert (kept_pca.pc.numRows, kept_pca.pc.numCols) == (1280, k)
    np.testing.assert_allclose(
        kept_pca.explainedVariance.toArray(), reference_pca.explainedVariance.toArray(), atol=1e-12
    )
    # The two fits sum the covariance in task order: equal to rounding, each axis up to its sign.
    signs = np.sign(np.sum(kept_pca.pc.toArray() * reference_pca.pc.toArray(), axis=0))
    np.testing.assert_allclose(
        kept_pca.pc.toArray() * signs, reference_pca.pc.toArray(), rtol=0, atol=1e-9
    )
    kept = model.transform(vectors.withColumnRenamed("v", "features_vector"))
    kept_rows = {row["path"]: row["pca_features"].toArray() for row in kept.collect()}
    expected = {row["path"]: row["p"].toArray() for row in reference.transform(vectors).collect()}
    assert kept_rows.keys() == expected.keys()
    paths = sorted(expected)
    np.testing.assert_allclose(
        np.stack([kept_rows[path] for path in paths]) * signs,
        np.stack([expected[path] for path in paths]),
        rtol=0,
        atol=1e-8,
    )


# ---------------------------------------------------------------- photos that vanish mid-run
@pytest.fixture
def store_of_twelve(sample_images, tmp_path) -> Path:
    """Twelve photos of three classes in a store of their own."""
    root = tmp_path / "store"
    for class_dir in sorted((sample_images / "Training").glob("*"))[:3]:
        (root / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.jpg"))[:4]:
            (root / class_dir.name / image.name).write_bytes(image.read_bytes())
    return root


@pytest.mark.parametrize("changed", [2, 12], ids=["path-by-path", "whole-store-scan"])
def test_a_photo_removed_after_the_listing_gets_no_bytes(spark, store_of_twelve, changed):
    from fruits_pipeline.datasets import ImageFolderDataset

    store = ImageFolderDataset(path=str(store_of_twelve)).load()
    paths = store.listing.orderBy("path").limit(changed).select("path")
    wanted = sorted(row["path"] for row in paths.collect())
    Path(wanted[0].removeprefix("file:")).unlink()  # before the read: Spark's path check
    contents = store.contents(paths)
    Path(wanted[-1].removeprefix("file:")).unlink()  # while the tasks run: after Spark listed
    read = sorted(row["path"] for row in contents.collect())
    assert read == wanted[1:-1]


def test_a_photo_removed_between_the_listing_and_the_model_is_quarantined(
    spark, store_of_twelve, weights_file, tmp_path
):
    """The issue's reproduction: three new photos are listed, one is deleted, then the model
    runs: the run goes on and accounts for it as unreadable."""
    project = make_project_copy(tmp_path / "project")
    params = run_params(store_of_twelve, weights_file)
    kedro(project, "run", "--pipelines", "ingestion,featurization", "--params", params)
    new = [store_of_twelve / "New" / f"new_{index}.jpg" for index in range(3)]
    new[0].parent.mkdir()
    first = sorted(store_of_twelve.rglob("*.jpg"))
    for index, photo in enumerate(new):
        photo.write_bytes(first[index].read_bytes())
    kedro(project, "run", "--to-nodes", "list_changes", "--params", params)
    new[1].unlink()
    kedro(project, "run", "--from-nodes", "extract_features", "--params", params)
    info = featurization_info(project)
    assert (info["images_sent_to_model"], info["images_featurized"]) == (3, 2)
    rows = {row["path"]: row for row in image_table(spark, project).collect()}
    gone = rows[f"file:{new[1]}"]
    assert (gone["features"], gone["error_class"]) == (None, "UnreadableFile")
    assert len(rows) == 15
