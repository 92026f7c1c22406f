"""The Spark pipeline computes what plain single-process libraries compute on the same data:
features equal plain Keras, PCA equals scikit-learn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fruits_pipeline import mobilenet_v2
from fruits_pipeline.datasets import ImageFolderDataset
from fruits_pipeline.pipelines.dimensionality_reduction.nodes import (
    fit_pca,
    project_features,
)
from fruits_pipeline.pipelines.dimensionality_reduction.standardized_pca import (
    block_moments,
    standardized_pca,
)
from fruits_pipeline.pipelines.featurization.nodes import extract_features
from fruits_pipeline.pipelines.ingestion.nodes import list_changes
from tests.conftest import project_config

pytestmark = pytest.mark.pipeline

# The project's own featurization parameters, in small tasks.
FEATURIZATION = {
    **project_config("local")["parameters"]["featurization"],
    "images_per_partition": 64,
}


@pytest.fixture(scope="module")
def spark_features(spark, small_image_set, weights_file):
    """The pipeline's features of the small image set: the Spark DataFrame and, by local path,
    the numpy vectors."""
    store = ImageFolderDataset(path=str(small_image_set)).load()
    feature_model = mobilenet_v2.load_feature_model(str(weights_file))
    image_changes = list_changes(store, None, feature_model)
    image_features, info = extract_features(image_changes, store, feature_model, FEATURIZATION)
    assert info["images_sent_to_model"] == info["images_featurized"] == 13 * 12
    assert info["images_quarantined"] == 0
    rows = image_features.collect()
    by_path = {
        row["path"].removeprefix("file:"): np.asarray(row["features"], dtype=np.float32)
        for row in rows
    }
    return image_features, by_path


def _plain_keras_features(weights_file: Path, image_paths: list[str]) -> np.ndarray:
    """Features by plain Keras in this process, with no code from the project."""
    import keras
    from keras.applications.mobilenet_v2 import preprocess_input

    model = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), include_top=False, weights=None, pooling="avg"
    )
    model.load_weights(str(weights_file))
    images = []
    for path in image_paths:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
            images.append(np.asarray(resized, dtype=np.float32))
    batch = preprocess_input(np.stack(images))
    return np.asarray(model(batch, training=False))


def test_spark_udf_features_equal_plain_keras(spark_features, weights_file):
    _, by_path = spark_features
    paths = sorted(by_path)
    expected = _plain_keras_features(weights_file, paths)
    actual = np.stack([by_path[path] for path in paths])
    assert actual.shape == (13 * 12, 1280)
    assert np.abs(actual - expected).max() <= 1e-4
    # Real features: non-negative (ReLU6 then average pooling) and not all alike.
    assert actual.min() >= 0.0
    assert np.linalg.matrix_rank(actual) > 100


def test_features_of_a_real_banana_are_those_of_plain_keras(spark_features, weights_file):
    _, by_path = spark_features
    banana = next(path for path in sorted(by_path) if "/Banana Red/" in path)
    expected = _plain_keras_features(weights_file, [banana])[0]
    np.testing.assert_allclose(by_path[banana], expected, rtol=0, atol=1e-4)


def test_pca_explained_variance_and_projections_equal_scikit_learn(spark_features):
    from sklearn.decomposition import PCA as SklearnPCA
    from sklearn.preprocessing import StandardScaler as SklearnScaler

    image_features, by_path = spark_features
    pca_model, selection, _ = fit_pca(image_features, 0.9, "0" * 64)
    features = np.stack([by_path[path] for path in sorted(by_path)]).astype(np.float64)
    # MLlib's StandardScaler divides by the sample standard deviation (n - 1).
    standardized = SklearnScaler().fit_transform(features) * np.sqrt(
        (len(features) - 1) / len(features)
    )
    reference = SklearnPCA(svd_solver="full").fit(standardized)

    ratios = np.asarray(selection["explained_variance_ratio"])
    expected_ratios = np.zeros(1280)
    expected_ratios[: reference.n_components_] = reference.explained_variance_ratio_
    assert np.abs(ratios - expected_ratios).max() <= 1e-6

    cumulative = np.cumsum(expected_ratios)
    expected_k = int(np.searchsorted(cumulative, 0.9 - 1e-12)) + 1
    assert selection["k"] == expected_k
    assert cumulative[expected_k - 1] >= 0.9 > cumulative[expected_k - 2]

    k = selection["k"]
    projected = project_features(image_features, None, None, pca_model).collect()
    spark_projection = np.stack(
        [
            np.asarray(row["pca_features"])
            for row in sorted(projected, key=lambda row: row["path"].removeprefix("file:"))
        ]
    )
    expected_projection = reference.transform(standardized)[:, :k]
    # Each component is defined up to its sign.
    signs = np.sign(np.sum(spark_projection * expected_projection, axis=0))
    scale = np.abs(expected_projection).max()
    assert np.abs(spark_projection * signs - expected_projection).max() <= 1e-6 * scale


def test_pca_model_equals_mllib_own_fit(spark):
    """The scaler and PCA(k) built from numpy moments are the models MLlib's StandardScaler
    and PCA fit on the same features (each axis up to its sign).

    Features shaped like MobileNetV2's, more images than features: with fewer (a rank-deficient
    covariance, as the 156 real images above), MLlib's own fit with netlib's pure-Java LAPACK,
    which a machine without a system BLAS uses, returned a wrong spectrum or NaN in 6 of 8 fits
    of the same data (docs/performance.md)."""
    from pyspark.ml.feature import PCA, StandardScaler
    from pyspark.ml.functions import array_to_vector

    rng = np.random.default_rng(5)
    base = rng.gamma(0.5, 1.0, size=(1400, 1280))
    low_rank = np.abs(rng.normal(size=(1400, 8)) @ rng.normal(size=(8, 1280)))
    features = (base + 0.3 * low_rank).astype(np.float32)
    image_features = spark.createDataFrame(
        [(f"file:/x/A/{i}.jpg", "A", row.tolist()) for i, row in enumerate(features)],
        "path string, label string, features array<float>",
    ).repartition(3)
    pca_model, selection, _ = fit_pca(image_features, 0.9, "0" * 64)
    scaler, pca = pca_model.stages
    k = selection["k"]

    vectors = image_features.select(array_to_vector("features").alias("features_vector"))
    mllib_scaler = StandardScaler(
        inputCol="features_vector", outputCol="scaled", withMean=True, withStd=True
    ).fit(vectors)
    mllib_pca = PCA(k=k, inputCol="scaled", outputCol="pca").fit(mllib_scaler.transform(vectors))

    np.testing.assert_allclose(scaler.mean.toArray(), mllib_scaler.mean.toArray(), atol=1e-9)
    np.testing.assert_allclose(scaler.std.toArray(), mllib_scaler.std.toArray(), atol=1e-9)
    np.testing.assert_allclose(
        pca.explainedVariance.toArray(), mllib_pca.explainedVariance.toArray(), atol=1e-9
    )
    ours, theirs = pca.pc.toArray(), mllib_pca.pc.toArray()
    assert ours.shape == theirs.shape == (1280, k)
    signs = np.sign(np.sum(ours * theirs, axis=0))
    assert np.abs(ours * signs - theirs).max() <= 1e-6


def test_projection_equals_mllib_transform(spark):
    """project_features computes with numpy what the saved MLlib models' transform gives, a
    constant feature (scaled to 0 by MLlib) included."""
    rng = np.random.default_rng(11)
    features = rng.gamma(0.5, 1.0, size=(600, 1280)).astype(np.float32)
    features[:, 7] = 0.25
    image_features = spark.createDataFrame(
        [(f"file:/x/A/{i}.jpg", "A", row.tolist()) for i, row in enumerate(features)],
        "path string, label string, features array<float>",
    ).repartition(3)
    pca_model, _, _ = fit_pca(image_features, 0.9, "0" * 64)
    assert pca_model.stages[0].std.toArray()[7] == 0

    from pyspark.ml.functions import array_to_vector

    projected = project_features(image_features, None, None, pca_model).collect()
    ours = {row["path"]: row["pca_features"] for row in projected}
    vectors = image_features.withColumn("features_vector", array_to_vector("features"))
    mllib = pca_model.transform(vectors).select("path", "pca_features")
    theirs = {row["path"]: row["pca_features"] for row in mllib.collect()}
    assert ours.keys() == theirs.keys() and len(ours) == 600
    for path, coordinates in theirs.items():
        np.testing.assert_allclose(ours[path], coordinates.toArray(), rtol=0, atol=1e-9)


def test_pca_axes_do_not_depend_on_how_the_moments_were_summed():
    rng = np.random.default_rng(7)
    features = rng.normal(size=(600, 40)) @ rng.normal(size=(40, 40)) + 3.0
    whole = standardized_pca(block_moments(features))
    # The same rows as partitions merged in another order, as another file layout would give.
    parts = [block_moments(part) for part in np.array_split(features[::-1], 7)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged.merge(part)
    other = standardized_pca(merged)
    np.testing.assert_allclose(other.components, whole.components, atol=1e-9)
    largest = np.abs(whole.components).argmax(axis=0)
    assert (whole.components[largest, np.arange(40)] > 0).all()


def test_moments_updated_by_rows_added_and_taken_away_equal_a_full_recomputation():
    """What a run keeps with the model instead of a pass over the table: the moments with new
    rows merged and removed rows taken away, and the kept axes' share computed from them."""
    from fruits_pipeline.projection import Projection

    rng = np.random.default_rng(11)
    # Large offsets and unequal spreads, as features have.
    rows = rng.normal(size=(900, 24)) @ rng.normal(size=(24, 24)) * 3.0 + 1e3
    kept, removed, added = rows[:700], rows[100:250], rows[700:]
    updated = block_moments(kept).merge(block_moments(added)).subtract(block_moments(removed))
    remaining = np.concatenate([rows[:100], rows[250:]])
    expected = block_moments(remaining)
    assert updated.images == expected.images == 750
    np.testing.assert_allclose(updated.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(updated.cross_products, expected.cross_products, rtol=1e-9)

    fit = standardized_pca(block_moments(rows[:700]))
    projection = Projection.from_std(fit.mean, fit.std, fit.components[:, :5])
    standardized = (remaining - projection.mean) * projection.scale
    share = (standardized @ projection.components).var(axis=0).sum() / standardized.var(
        axis=0
    ).sum()
    assert updated.explained_share(projection) == pytest.approx(share, abs=1e-9)
    assert block_moments(rows).subtract(block_moments(rows)).images == 0
