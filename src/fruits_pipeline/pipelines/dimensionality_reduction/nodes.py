"""Nodes of the ``dimensionality_reduction`` pipeline: standardization and MLlib PCA."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pyspark import SparkContext, StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA, PCAModel, StandardScaler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.wrapper import JavaWrapper
from pyspark.sql import DataFrame

from fruits_pipeline.run_info import library_versions

logger = logging.getLogger(__name__)

FEATURES_VECTOR = "features_vector"
SCALED = "scaled_features"
PCA_FEATURES = "pca_features"

# Cumulative sums of float64 ratios land a few ulps off exact thresholds (0.7 + 0.2 < 0.9):
# a component reaching the threshold within this tolerance counts as reaching it.
THRESHOLD_TOLERANCE = 1e-12


class AccountingError(RuntimeError):
    """The images written do not add up to the images read."""


# PCA needs a covariance: at least two images.
MIN_IMAGES = 2


def check_threshold(threshold: float) -> float:
    """The variance threshold as a float in (0, 1], or a ValueError naming the setting."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"dimensionality_reduction.variance_threshold must be in (0, 1], got {threshold!r}: "
            "set it in conf/base/parameters_dimensionality_reduction.yml or with "
            "--params dimensionality_reduction.variance_threshold=0.9"
        )
    return value


def choose_k(explained_variance_ratio: np.ndarray, threshold: float) -> int:
    """The fewest leading components whose cumulative explained variance reaches ``threshold``.

    ``k`` is the first index where the cumulative sum is at least the threshold, plus one; never 0,
    never more than the number of components.
    """
    threshold = check_threshold(threshold)
    ratios = np.asarray(explained_variance_ratio, dtype=np.float64)
    if ratios.size == 0:
        raise ValueError("No explained-variance ratios: the PCA has no components.")
    cumulative = np.cumsum(ratios)
    reached = np.flatnonzero(cumulative >= threshold - THRESHOLD_TOLERANCE)
    # A threshold of 1.0 may stay a few ulps out of reach of the float sum: keep every component.
    return int(reached[0]) + 1 if reached.size else int(ratios.size)


def _feature_vectors(image_features: DataFrame) -> DataFrame:
    return image_features.withColumn(FEATURES_VECTOR, array_to_vector("features"))


def _leading_components(full: PCAModel, k: int) -> PCAModel:
    """The PCA(k) model MLlib would fit, cut from the full-spectrum fit.

    ``PCA(k).fit`` computes the same covariance and the same decomposition as the full fit and
    keeps their first k columns, so cutting them saves a second pass over the data (MLlib builds
    the covariance row by row: that pass is most of the PCA's time). PySpark has no public way to
    build a PCAModel from its matrix; the Scala constructor is ``private[ml]``, which is public
    in the bytecode, and has kept its signature (uid, pc, explainedVariance) since Spark 2.0.
    The cut stays in the JVM: the 1280x1280 matrix through Python took 2-2.6 s.
    """
    jvm = SparkContext._active_spark_context._jvm
    # Column-major: the first k columns are the first dimension * k values.
    full_components = full._java_obj.pc().toDenseColMajor()
    dimension = full_components.numRows()
    components = full_components.values()
    variances = full._java_obj.explainedVariance().values()
    java_model = JavaWrapper._new_java_obj(
        "org.apache.spark.ml.feature.PCAModel",
        full.uid,
        jvm.org.apache.spark.ml.linalg.DenseMatrix(
            dimension, k, jvm.java.util.Arrays.copyOfRange(components, 0, dimension * k)
        ),
        jvm.org.apache.spark.ml.linalg.DenseVector(
            jvm.java.util.Arrays.copyOfRange(variances, 0, k)
        ),
    )
    model = PCAModel(java_model)
    return model.copy(
        {model.k: k, model.inputCol: full.getInputCol(), model.outputCol: full.getOutputCol()}
    )


def fit_pca(
    image_features: DataFrame, dimensionality_reduction: dict[str, Any]
) -> tuple[PipelineModel, dict[str, Any]]:
    """Standardization + PCA in one pass over the features: the full-spectrum fit chooses k, and
    its first k components are the scaler + PCA(k) model kept for new images."""
    started = time.perf_counter()
    threshold = check_threshold(dimensionality_reduction["variance_threshold"])
    vectors = _feature_vectors(image_features).select(FEATURES_VECTOR)
    # The scaler and the PCA each pass over the features: read the parquet once.
    vectors.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        images = vectors.count()
        if images < MIN_IMAGES:
            raise ValueError(
                f"PCA needs at least {MIN_IMAGES} featurized images, got {images}: check "
                "raw_images_path and the quarantine (data/04_feature/image_quarantine.parquet)."
            )
        dimension = len(vectors.first()[FEATURES_VECTOR])
        scaler = StandardScaler(
            inputCol=FEATURES_VECTOR, outputCol=SCALED, withMean=True, withStd=True
        ).fit(vectors)
        full = PCA(k=dimension, inputCol=SCALED, outputCol=PCA_FEATURES).fit(
            scaler.transform(vectors)
        )
    finally:
        vectors.unpersist()
    ratios = full.explainedVariance.toArray()
    k = choose_k(ratios, threshold)
    cumulative = np.cumsum(ratios)
    logger.info(
        "PCA: %d of %d components explain %.4f of the variance (threshold %.2f), %d images",
        k,
        dimension,
        cumulative[k - 1],
        threshold,
        images,
    )
    selection = {
        "images": images,
        "feature_dim": dimension,
        "variance_threshold": threshold,
        "k": k,
        "variance_explained": float(cumulative[k - 1]),
        "explained_variance_ratio": [float(ratio) for ratio in ratios],
        "seconds": round(time.perf_counter() - started, 3),
    }
    return PipelineModel(stages=[scaler, _leading_components(full, k)]), selection


def project_features(image_features: DataFrame, pca_model: PipelineModel) -> DataFrame:
    """path, label and the k principal components of each image (a Spark ML vector)."""
    return pca_model.transform(_feature_vectors(image_features)).select(
        "path", "label", PCA_FEATURES
    )


def pca_columns(pca_features: DataFrame, pca_selection: dict[str, Any]) -> DataFrame:
    """One column per component (pc_001 ... pc_k), as CSV wants: path, label, pc_001, ..."""
    k = int(pca_selection["k"])
    components = vector_to_array(PCA_FEATURES)
    return pca_features.select(
        "path",
        "label",
        *[components[i].alias(f"pc_{i + 1:03d}") for i in range(k)],
    )


def summarize_run(
    image_binaries: DataFrame,
    pca_features: DataFrame,
    image_quarantine: DataFrame,
    featurization_info: dict[str, Any],
    pca_selection: dict[str, Any],
) -> dict[str, Any]:
    """The run's metrics; fails when the images written do not add up to the images read."""
    images_listed = image_binaries.count()
    per_class = {
        row["label"]: row["count"]
        for row in pca_features.groupBy("label").count().orderBy("label").collect()
    }
    featurized = sum(per_class.values())
    quarantined = image_quarantine.count()
    if images_listed != featurized + quarantined:
        raise AccountingError(
            f"{images_listed} images were listed but {featurized} were featurized and "
            f"{quarantined} quarantined ({images_listed - featurized - quarantined} unaccounted "
            "for): re-run the featurization and dimensionality_reduction pipelines."
        )
    k = int(pca_selection["k"])
    return {
        "images_in": images_listed,
        "images_featurized": featurized,
        "images_quarantined": quarantined,
        "images_per_class": per_class,
        "classes": len(per_class),
        "feature_dim": pca_selection["feature_dim"],
        "variance_threshold": pca_selection["variance_threshold"],
        "k": k,
        "variance_explained": pca_selection["variance_explained"],
        "explained_variance_ratio": pca_selection["explained_variance_ratio"][:k],
        "weights_source": featurization_info["weights_source"],
        "weights_sha256": featurization_info["weights_sha256"],
        "featurization_seconds": featurization_info["seconds"],
        "library_versions": library_versions(),
    }


def plot_explained_variance(pca_selection: dict[str, Any]) -> Figure:
    """Scree and cumulative explained-variance curves, with the threshold and k marked."""
    ratios = np.asarray(pca_selection["explained_variance_ratio"])
    k = int(pca_selection["k"])
    threshold = float(pca_selection["variance_threshold"])
    shown = min(ratios.size, max(3 * k, 50))
    components = np.arange(1, shown + 1)
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    axes.bar(components, ratios[:shown], color="#9ecae1", label="per component")
    axes.plot(components, np.cumsum(ratios)[:shown], color="#08519c", label="cumulative")
    axes.axhline(threshold, color="#e6550d", linestyle="--", label=f"threshold {threshold:.2f}")
    axes.axvline(k, color="#31a354", linestyle=":", label=f"k = {k}")
    axes.set_xlabel(f"principal component (first {shown} of {ratios.size})")
    axes.set_ylabel("explained variance ratio")
    axes.set_ylim(0, 1.02)
    axes.set_title(
        f"PCA of {pca_selection['images']} images: {k} components explain "
        f"{pca_selection['variance_explained']:.1%} of the variance"
    )
    axes.legend(loc="center right")
    return figure
