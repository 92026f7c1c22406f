"""Nodes of the ``dimensionality_reduction`` pipeline: standardization and PCA, fitted from
numpy moments (``standardized_pca``) and kept as MLlib's scaler and PCA models."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from fruits_pipeline import app_files, mobilenet_v2
from fruits_pipeline.datasets import ChangeFeed
from fruits_pipeline.errors import UserError
from fruits_pipeline.explained_variance import MIN_IMAGES, check_threshold, choose_k
from fruits_pipeline.image_table import DELETE_COLUMN
from fruits_pipeline.made_from import made_from, stamp
from fruits_pipeline.mobilenet_v2 import FeatureModel
from fruits_pipeline.pipelines.dimensionality_reduction.standardized_pca import (
    Moments,
    feature_moments,
    mllib_models,
    project,
    standardized_pca,
)
from fruits_pipeline.projection import Projection
from fruits_pipeline.run_info import library_versions

logger = logging.getLogger(__name__)


class AccountingError(RuntimeError):
    """The images written do not add up to the images read."""


FEATURES_VECTOR = "features_vector"
SCALED = "scaled_features"
PCA_FEATURES = "pca_features"
# Delta's change data feed's _change_type values.
INSERT, PREIMAGE, POSTIMAGE, DELETE = "insert", "update_preimage", "update_postimage", "delete"
# A fitted model's uid starts with this and the first 16 hex digits of its feature model's id.
PCA_UID_PREFIX = "fruits_pca_"


def _featurized(image_features: DataFrame) -> DataFrame:
    """The image table's rows that have features (the others are quarantined)."""
    return image_features.where(F.col("features").isNotNull())


def _fitted_with(model: PipelineModel, model_id: str) -> bool:
    return model.uid.startswith(f"{PCA_UID_PREFIX}{model_id[:16]}_")


def moments_record(moments: Moments, image_features: DataFrame) -> dict[str, Any]:
    """The featurized rows' moments, as kept with the model: with the table version they
    describe (plain arrays and numbers: the file outlives the class)."""
    return {
        "made_from": made_from(image_features),
        "images": moments.images,
        "mean": moments.mean,
        "cross_products": moments.cross_products,
    }


def _moments(record: dict[str, Any]) -> Moments:
    return Moments(int(record["images"]), record["mean"], record["cross_products"])


def fit_pca(
    image_features: DataFrame, threshold: float, model_id: str
) -> tuple[PipelineModel, dict[str, Any], dict[str, Any]]:
    """Standardization + PCA in one pass over the features (``standardized_pca``): the full
    spectrum chooses k, and its first k axes make the scaler + PCA(k) model kept for new images.
    The model's uid names the feature model it was fitted on; the moments are kept with it."""
    started = time.perf_counter()
    moments = feature_moments(_featurized(image_features), "features")
    if moments.images < MIN_IMAGES:
        raise ValueError(
            f"PCA needs at least {MIN_IMAGES} featurized images, got {moments.images}: check "
            "raw_images_path and the quarantine in the run report."
        )
    fit = standardized_pca(moments)
    ratios = fit.explained_variance
    dimension = ratios.size
    k = choose_k(ratios, threshold)
    cumulative = np.cumsum(ratios)
    logger.info(
        "PCA: %d of %d components explain %.4f of the variance (threshold %.2f), %d images",
        k,
        dimension,
        cumulative[k - 1],
        threshold,
        moments.images,
    )
    uid = f"{PCA_UID_PREFIX}{model_id[:16]}_{uuid.uuid4().hex[:12]}"
    selection = {
        "refit": True,
        "pca_model": uid,
        "made_from": made_from(image_features),
        "images": moments.images,
        "feature_dim": dimension,
        "variance_threshold": threshold,
        "k": k,
        "variance_explained": float(cumulative[k - 1]),
        "current_variance_explained": float(cumulative[k - 1]),
        "explained_variance_ratio": [float(ratio) for ratio in ratios],
        "seconds": round(time.perf_counter() - started, 3),
    }
    model = PipelineModel(
        stages=list(
            mllib_models(
                fit, k, uid, input_col=FEATURES_VECTOR, scaled_col=SCALED, output_col=PCA_FEATURES
            )
        )
    )
    model.uid = uid
    return model, selection, moments_record(moments, image_features)


def _rows_changed(changes: DataFrame, change_types: tuple[str, ...]) -> DataFrame:
    return changes.where(F.col("_change_type").isin(*change_types))


def updated_moments(
    kept_feature_moments: dict[str, Any] | None,
    image_features: DataFrame,
    image_table_changes: ChangeFeed | None,
) -> tuple[Moments, str]:
    """The featurized rows' moments at the table's current version: the kept ones, with the
    rows new or replaced since added and the removed and replaced rows' old features taken
    away (Delta's change data feed); a pass over the whole table when they cannot be had so.
    Also says how they were had."""
    kept = (kept_feature_moments or {}).get("made_from") or {}
    current = made_from(image_features) or {}
    changes = None
    if image_table_changes is not None and image_table_changes.holds(kept):
        if kept["version"] == current.get("version"):
            return _moments(kept_feature_moments), "kept"
        changes = image_table_changes.since(int(kept["version"]))
    if changes is None:
        return feature_moments(_featurized(image_features), "features"), "one pass over the table"
    changes = changes.where(F.col("features").isNotNull())
    added = feature_moments(_rows_changed(changes, (INSERT, POSTIMAGE)), "features")
    removed = feature_moments(_rows_changed(changes, (DELETE, PREIMAGE)), "features")
    updated = _moments(kept_feature_moments).merge(added).subtract(removed)
    how = f"updated: {added.images} rows added, {removed.images} taken away"
    return updated, how


def kept_axes_selection(
    moments: Moments, image_features: DataFrame, model: PipelineModel, threshold: float
) -> dict[str, Any]:
    """What the kept scaler + PCA(k) say of the current table: the share of its variance (in
    the kept standardization) that the k kept axes explain, from the table's moments."""
    started = time.perf_counter()
    share = moments.explained_share(embedding_projection(model))
    ratios = model.stages[1].explainedVariance.toArray()
    logger.info(
        "PCA kept: its %d axes explain %.4f of the current table's variance (threshold %.2f)",
        ratios.size,
        share,
        threshold,
    )
    return {
        "refit": False,
        "pca_model": model.uid,
        "made_from": made_from(image_features),
        "images": moments.images,
        "feature_dim": model.stages[1].pc.numRows,
        "variance_threshold": threshold,
        "k": int(ratios.size),
        "variance_explained": float(np.sum(ratios)),
        "current_variance_explained": share,
        "explained_variance_ratio": [float(ratio) for ratio in ratios],
        "seconds": round(time.perf_counter() - started, 3),
    }


def check_one_feature_model(image_features: DataFrame, model_id: str) -> None:
    """Refuses features made by other weights than this run's: the PCA, and the embedder built
    from these weights, would not match them."""
    other = (
        _featurized(image_features).where(F.col("model_id") != model_id).select("model_id").first()
    )
    if other is not None:
        raise UserError(
            f"The image table holds features of other weights (sha256 {other['model_id'][:16]}) "
            f"than featurization.weights (sha256 {model_id[:16]}): run the featurization "
            "pipeline with these weights first, or give this run the weights it used."
        )


def _still_current(
    selection: dict[str, Any] | None,
    model: PipelineModel | None,
    image_features: DataFrame,
    model_id: str,
    threshold: float,
) -> bool:
    """Whether the saved ``selection`` describes this very table version, with the saved
    ``model`` fitted on this feature model's features, and this threshold."""
    return (
        selection is not None
        and model is not None
        and _fitted_with(model, model_id)
        and selection.get("made_from") is not None
        and selection.get("made_from") == made_from(image_features)
        and selection.get("pca_model") == model.uid
        and selection.get("variance_threshold") == threshold
    )


def fit_or_keep_pca(
    *,
    image_features: DataFrame,
    image_table_changes: ChangeFeed | None,
    kept_pca_model: PipelineModel | None,
    kept_pca_selection: dict[str, Any] | None,
    kept_feature_moments: dict[str, Any] | None,
    feature_model: FeatureModel,
    dimensionality_reduction: dict[str, Any],
) -> tuple[PipelineModel, dict[str, Any], dict[str, Any]]:
    """Keeps the saved scaler + PCA(k), so that coordinates stay comparable from run to run,
    or fits them again: on request (``refit``), when none is saved, or when the saved one was
    fitted on another feature model's features. The kept axes' share of the table's variance
    is measured again only when the table changed since the saved selection, from the table's
    moments kept with the model and updated with the rows changed since (``updated_moments``).

    Returns:
        pca_model (scaler + PCA(k)), pca_selection (k, the spectrum, the share of the current
        table's variance the axes explain, whether they were refitted, and the table version
        and model they describe) and feature_moments (the table's, at its current version).
    """
    threshold = check_threshold(dimensionality_reduction["variance_threshold"])
    refit = dimensionality_reduction.get("refit")
    current = _still_current(
        kept_pca_selection, kept_pca_model, image_features, feature_model.id, threshold
    )
    if current and not refit and kept_feature_moments is not None:
        logger.info("PCA kept: the image table has not changed since its last check")
        return (
            kept_pca_model,
            {**kept_pca_selection, "refit": False, "seconds": 0.0},
            kept_feature_moments,
        )
    check_one_feature_model(image_features, feature_model.id)
    if kept_pca_model is None or refit:
        return fit_pca(image_features, threshold, feature_model.id)
    if not _fitted_with(kept_pca_model, feature_model.id):
        logger.info("PCA refitted: the saved axes were fitted on other weights' features")
        return fit_pca(image_features, threshold, feature_model.id)
    started = time.perf_counter()
    moments, how = updated_moments(kept_feature_moments, image_features, image_table_changes)
    logger.info("Feature moments %s in %.1f s", how, time.perf_counter() - started)
    selection = kept_axes_selection(moments, image_features, kept_pca_model, threshold)
    selection["seconds"] = round(time.perf_counter() - started, 3)
    return kept_pca_model, selection, moments_record(moments, image_features)


def _latest_change(changes: DataFrame) -> DataFrame:
    """Each path's last change in the feed (an update's after-image, an insert or a delete)."""
    last = Window.partitionBy("path").orderBy(F.desc("_commit_version"))
    return (
        _rows_changed(changes, (INSERT, POSTIMAGE, DELETE))
        .withColumn("_last", F.row_number().over(last))
        .where(F.col("_last") == 1)
    )


def _coordinate_changes(
    image_features: DataFrame,
    image_table_changes: ChangeFeed | None,
    kept_pca_features: DataFrame | None,
    pca_model: PipelineModel,
) -> tuple[DataFrame, DataFrame] | None:
    """The rows whose coordinates change (path, label, features) and the paths whose
    coordinates go, since the kept coordinates were made: None when every row must be
    projected (no kept coordinates, other axes, or a feed that does not reach back)."""
    kept = (made_from(kept_pca_features) if kept_pca_features is not None else None) or {}
    current = made_from(image_features) or {}
    if (
        image_table_changes is None
        or kept.get("pca_model") != pca_model.uid
        or not image_table_changes.holds(kept)
    ):
        return None
    if kept["version"] == current.get("version"):
        empty = image_features.select("path", "label", "features").limit(0)
        return empty, empty.select("path")
    changes = image_table_changes.since(int(kept["version"]))
    if changes is None:
        return None
    latest = _latest_change(changes)
    featurized = (F.col("_change_type") != DELETE) & F.col("features").isNotNull()
    return (
        latest.where(featurized).select("path", "label", "features"),
        latest.where(~featurized).select("path"),
    )


def project_features(
    image_features: DataFrame,
    image_table_changes: ChangeFeed | None,
    kept_pca_features: DataFrame | None,
    pca_model: PipelineModel,
) -> DataFrame:
    """The coordinates table's changes: path, label and the k principal components (an array
    of doubles) of each featurized image new or replaced since the kept coordinates were made,
    and the paths that left the table or lost their features (``_delete``); of every featurized
    image when the axes changed or nothing is kept. The projection is numpy's
    (``standardized_pca.project``), not MLlib's per-row Java BLAS. ``path`` records the table
    version and the model the coordinates are made from (``made_from``)."""
    changed = _coordinate_changes(image_features, image_table_changes, kept_pca_features, pca_model)
    if changed is None:
        to_project = _featurized(image_features).select("path", "label", "features")
        kept_paths = (
            kept_pca_features.select("path")
            if kept_pca_features is not None
            else to_project.select("path").limit(0)
        )
        gone = kept_paths.join(to_project.select("path"), "path", "left_anti")
    else:
        to_project, gone = changed
    projected = project(to_project, "features", PCA_FEATURES, embedding_projection(pca_model))
    changes = projected.withColumn(DELETE_COLUMN, F.lit(False)).unionByName(
        gone.select(
            "path",
            F.lit(None).cast("string").alias("label"),
            F.lit(None).cast(projected.schema[PCA_FEATURES].dataType).alias(PCA_FEATURES),
            F.lit(True).alias(DELETE_COLUMN),
        )
    )
    # mapInArrow declares its output schema, so the table's stamp is carried over by hand.
    sources = made_from(image_features) or {}
    return stamp(changes, "path", **sources, pca_model=pca_model.uid)


def pca_columns(pca_features: DataFrame, pca_selection: dict[str, Any]) -> DataFrame:
    """One column per component (pc_001 ... pc_k), as CSV wants: path, label, pc_001, ..."""
    k = int(pca_selection["k"])
    components = F.col(PCA_FEATURES)
    return pca_features.select(
        "path",
        "label",
        *[components[i].alias(f"pc_{i + 1:03d}") for i in range(k)],
    )


def embedding_projection(pca_model: PipelineModel) -> Projection:
    """The scaler + PCA(k) of ``pca_model`` as plain arrays, for projecting without MLlib."""
    scaler, pca = pca_model.stages
    return Projection.from_std(scaler.mean.toArray(), scaler.std.toArray(), pca.pc.toArray())


def export_embedding(pca_model: PipelineModel, feature_model: FeatureModel) -> dict[str, Any]:
    """What embeds one photo without Spark, as the pipeline would, as one set of files: the
    LiteRT feature extractor, the scaler + PCA(k) as plain arrays, and the app's embedder, one
    LiteRT file with the projection folded in (``mobilenet_v2.export_embedder``)."""
    projection = embedding_projection(pca_model)
    return {
        app_files.FEATURE_EXTRACTOR: feature_model.litert,
        app_files.PCA_PROJECTION: projection.arrays(),
        app_files.EMBEDDER: mobilenet_v2.export_embedder(feature_model.litert, projection),
    }


def summarize_run(
    image_features: DataFrame,
    featurization_info: dict[str, Any],
    pca_selection: dict[str, Any],
) -> dict[str, Any]:
    """The run's metrics; fails when the image table does not hold every image of the store
    once (one row per path, as many as the store's listing had)."""
    table = image_features.select("path", "label", F.col("features").isNotNull().alias("ok"))
    counts = table.groupBy("ok", "label").count().collect()
    per_class = {
        row["label"]: row["count"]
        for row in sorted(counts, key=lambda row: row["label"] or "")
        if row["ok"]
    }
    featurized = sum(per_class.values())
    quarantined = sum(row["count"] for row in counts if not row["ok"])
    paths = table.select("path").distinct().count()
    images_in_store = featurization_info["images_in_store"]
    if not images_in_store == paths == featurized + quarantined:
        raise AccountingError(
            f"{images_in_store} images are in the store but the image table holds "
            f"{featurized} featurized and {quarantined} quarantined rows for {paths} paths: "
            "run the ingestion and featurization pipelines again."
        )
    k = int(pca_selection["k"])
    return {
        "images_in": images_in_store,
        "images_featurized": featurized,
        "images_quarantined": quarantined,
        "this_run": {
            "images_sent_to_model": featurization_info["images_sent_to_model"],
            "images_featurized": featurization_info["images_featurized"],
            "images_quarantined": featurization_info["images_quarantined"],
            "images_removed": featurization_info["images_removed"],
            "task_attempts_failed": featurization_info["task_attempts_failed"],
        },
        "images_per_class": per_class,
        "classes": len(per_class),
        "feature_dim": pca_selection["feature_dim"],
        "variance_threshold": pca_selection["variance_threshold"],
        "k": k,
        "pca_refit": pca_selection["refit"],
        "variance_explained": pca_selection["variance_explained"],
        "current_variance_explained": pca_selection["current_variance_explained"],
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
    # One filled outline rather than a bar per component: 1,280 bars took 2 s to draw.
    edges = np.arange(0.5, shown + 1)
    axes.stairs(ratios[:shown], edges, fill=True, color="#9ecae1", label="per component")
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
