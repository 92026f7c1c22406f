"""Nodes of the ``classification`` pipeline: which fruit a photo is, from its PCA coordinates.

An MLlib multinomial logistic regression is trained on the photos of the training split and
scored on the evaluation split; the app's classifier is then fitted again on every labelled
photo. A kept classifier is trained again only when the photos, classes or PCA axes it was
trained on changed enough (``plan_training``). The app gets one LiteRT file, the embedder with
the classifier's layer on top, and the store's coordinates for similar-photo search
(``export_classifier_files``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import StringIndexer
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from fruits_pipeline import app_files, mobilenet_v2
from fruits_pipeline.datasets import spark_location
from fruits_pipeline.made_from import made_from
from fruits_pipeline.similar_photos import SimilarPhotos

logger = logging.getLogger(__name__)

PCA_FEATURES = "pca_features"
SPLIT = "split"
TRAINING, EVALUATION = "training", "evaluation"
LABEL_INDEX = "label_index"
# A classifier of no class: what is saved when the step is skipped, so that no earlier model
# stays behind looking current.
NO_CLASSIFIER_UID = "no_classifier"
# The training settings that make a kept classifier stale when they change.
_TRAINING_SETTINGS = (
    "training_folder",
    "evaluation_folder",
    "evaluation_fraction",
    "min_training_photos",
    "min_evaluation_photos",
    "reg_param",
    "max_iter",
    "refit_on_all_photos",
    "refit_max_iter",
)
# Hash buckets of the deterministic split (xxhash64 of the path below the store's root).
_BUCKETS = 10_000


def training_settings(classification: dict[str, Any]) -> dict[str, Any]:
    """The parameters a trained classifier depends on (kept in its info)."""
    return {name: classification[name] for name in _TRAINING_SETTINGS}


def split_rule(classification: dict[str, Any]) -> str:
    """The split, in words, as the run report states it."""
    return (
        f"photos under a folder named `{classification['training_folder']}` train and photos "
        f"under `{classification['evaluation_folder']}` evaluate (folders between the store's "
        "root and the class folder); any other photo evaluates when xxhash64 of its path below "
        f"the store's root falls in the first {classification['evaluation_fraction']:.0%} of "
        f"{_BUCKETS} buckets, and trains otherwise"
    )


def split_photos(pca_features: DataFrame, classification: dict[str, Any]) -> DataFrame:
    """The labelled photos' coordinates with their ``split`` (training or evaluation): by the
    folders between the store's root and the class folder, else by a hash of the path below
    the root (``split_rule``)."""
    root = spark_location(classification["store_root"]).rstrip("/") + "/"
    below_root = F.when(
        F.col("path").startswith(root), F.expr(f"substring(path, {len(root) + 1})")
    ).otherwise(F.col("path"))
    folders = F.split(below_root, "/")
    # The folders above the class folder: drop the file's name and its class folder.
    above_class = F.slice(folders, 1, F.greatest(F.size(folders) - 2, F.lit(0)))
    hashed = F.pmod(F.xxhash64(below_root), F.lit(_BUCKETS))
    split = (
        F.when(F.array_contains(above_class, classification["training_folder"]), TRAINING)
        .when(F.array_contains(above_class, classification["evaluation_folder"]), EVALUATION)
        .when(hashed < F.lit(classification["evaluation_fraction"] * _BUCKETS), EVALUATION)
        .otherwise(TRAINING)
    )
    return pca_features.where(F.col("label").isNotNull()).withColumn(SPLIT, split)


def _class_counts(labelled_photos: DataFrame) -> dict[str, dict[str, int]]:
    rows = labelled_photos.groupBy("label", SPLIT).count().collect()
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row["label"], {TRAINING: 0, EVALUATION: 0})[row[SPLIT]] = row["count"]
    return dict(sorted(counts.items()))


def _photos_changed_since(image_table_history: DataFrame | None, version: int) -> int | None:
    """Rows inserted or updated in the image table after ``version``, from Delta's own
    operation metrics; None when the history no longer reaches back to it."""
    if image_table_history is None:
        return None
    history = (
        image_table_history.where(F.col("version") > version)
        .select("version", "operationMetrics")
        .collect()
    )
    if sorted(row["version"] for row in history) != list(
        range(version + 1, version + 1 + len(history))
    ):
        return None
    changed = 0
    for row in history:
        metrics = row["operationMetrics"] or {}
        changed += int(metrics.get("numTargetRowsInserted", 0))
        changed += int(metrics.get("numTargetRowsUpdated", 0))
        changed += int(metrics.get("numOutputRows", 0))
    return changed


def _retrain_reason(
    kept: dict[str, Any] | None,
    classes: list[str],
    pca_model: str,
    image_table_history: DataFrame | None,
    classification: dict[str, Any],
) -> str | None:
    """Why the kept classifier must be trained again, or None when it may be kept."""
    if kept is None or kept.get("status") != "trained":
        return "no classifier was trained before"
    settings = training_settings(classification)
    stale = [
        (kept["pca_model"] != pca_model, "the PCA axes were fitted again (or on other weights)"),
        (kept["settings"] != settings, "the classification parameters changed"),
        (
            kept["classes"] != classes,
            f"the classes changed (new: {sorted(set(classes) - set(kept['classes']))}, "
            f"left out or gone: {sorted(set(kept['classes']) - set(classes))})",
        ),
    ]
    for changed, reason in stale:
        if changed:
            return reason
    changed = _photos_changed_since(image_table_history, int(kept["trained_on"]["version"]))
    if changed is None:
        return "the image table's history no longer reaches back to the training"
    share = changed / max(int(kept["photos_trained_on"]), 1)
    if share >= classification["retrain_share"]:
        return (
            f"{changed} photos are new or replaced since the training, {share:.1%} of the "
            f"{kept['photos_trained_on']} it was trained on (retrain_share "
            f"{classification['retrain_share']:.0%})"
        )
    return None


def plan_training(
    labelled_photos: DataFrame,
    image_table_history: DataFrame | None,
    kept_classifier_info: dict[str, Any] | None,
    pca_selection: dict[str, Any],
    classification: dict[str, Any],
) -> dict[str, Any]:
    """What this run does about the classifier: ``train``, ``keep`` or ``skip``, with the
    reason, the classes that take part and those left out (too few photos on a side)."""
    counts = _class_counts(labelled_photos)
    minimum = {
        TRAINING: classification["min_training_photos"],
        EVALUATION: classification["min_evaluation_photos"],
    }
    left_out = {
        label: (
            f"{split[TRAINING]} training and {split[EVALUATION]} evaluation photos; needs at "
            f"least {minimum[TRAINING]} and {minimum[EVALUATION]}"
        )
        for label, split in counts.items()
        if any(split[side] < minimum[side] for side in minimum)
    }
    classes = [label for label in counts if label not in left_out]
    plan = {
        "split_rule": split_rule(classification),
        "photos_per_class": counts,
        "classes": classes,
        "classes_left_out": left_out,
        "pca_model": pca_selection["pca_model"],
        "trained_on": made_from(labelled_photos),
    }
    if len(classes) < 2:
        reason = (
            f"{len(classes)} class(es) with enough photos to train and evaluate a classifier "
            f"({len(counts)} labelled in the store): it needs two"
        )
        logger.warning("Classification skipped: %s", reason)
        return {**plan, "action": "skip", "reason": reason}
    reason = _retrain_reason(
        kept_classifier_info,
        classes,
        pca_selection["pca_model"],
        image_table_history,
        classification,
    )
    if reason is None:
        logger.info("Classifier kept: too little changed since its training")
        return {**plan, "action": "keep", "reason": "too little changed since its training"}
    logger.info("Classifier trained: %s", reason)
    return {**plan, "action": "train", "reason": reason}


def _fit(
    rows: DataFrame,
    features: str,
    classification: dict[str, Any],
    *,
    starting_from: PipelineModel | None = None,
):
    """An indexer of the rows' classes (alphabetical order: the model's output order) and
    MLlib's multinomial logistic regression on ``features``, fitted on ``rows`` (of the
    classifier's classes alone); and its seconds. ``starting_from``, a classifier of the same
    classes and features, makes the regression start from its coefficients for
    ``refit_max_iter`` iterations rather than from zero for ``max_iter``."""
    started = time.perf_counter()
    regression = LogisticRegression(
        featuresCol=features,
        labelCol=LABEL_INDEX,
        family="multinomial",
        # The coordinates are already standardized features projected: MLlib's own
        # standardization (its default) scored lower on Fruits-360 (98.71 % top-1
        # against 99.05 %; docs/classification.md).
        standardization=False,
        regParam=classification["reg_param"],
        maxIter=classification["max_iter"],
    )
    if starting_from is not None:
        regression.setMaxIter(classification["refit_max_iter"])
        # MLlib's own warm start (what its RDD-based API uses for initial weights): PySpark
        # does not expose it, the JVM object takes it. Spark ignores it, with a warning, only
        # for another number of classes or features, which the same classes cannot give.
        regression._java_obj.setInitialModel(starting_from.stages[-1]._java_obj)
    model = Pipeline(
        stages=[
            StringIndexer(inputCol="label", outputCol=LABEL_INDEX, stringOrderType="alphabetAsc"),
            regression,
        ]
    ).fit(rows)
    return model, time.perf_counter() - started


def _evaluated(
    rows: DataFrame, features: str, classes: list[str], classification: dict[str, Any]
) -> tuple[PipelineModel, dict[str, Any]]:
    """The classifier fitted on the training rows of ``rows`` (of ``classes`` alone) and its
    ``evaluation`` on their evaluation rows, with its training seconds."""
    model, seconds = _fit(rows.where(F.col(SPLIT) == TRAINING), features, classification)
    truth, probabilities = _scores(model, rows.where(F.col(SPLIT) == EVALUATION))
    return model, {
        **evaluation(truth, probabilities, classes),
        "training_seconds": round(seconds, 3),
    }


def _scores(model: PipelineModel, rows: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The true class index and the class probabilities of each row."""
    scored = (
        model.transform(rows)
        .select(LABEL_INDEX, vector_to_array("probability").alias("probability"))
        .toPandas()
    )
    return scored[LABEL_INDEX].to_numpy(dtype=int), np.stack(scored["probability"].to_numpy())


def evaluation(truth: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Top-1 and top-5 accuracy, per-class recall, the confusion matrix and its ten most
    confused pairs."""
    predicted = probabilities.argmax(axis=1)
    top5 = np.argsort(-probabilities, axis=1)[:, :5]
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = confusion.sum(axis=1)
    errors = [
        (int(confusion[true, guess]), classes[true], classes[guess])
        for true, guess in zip(*np.nonzero(confusion), strict=True)
        if true != guess
    ]
    return {
        "photos": int(truth.size),
        "top1_accuracy": float(np.mean(predicted == truth)),
        "top5_accuracy": float(np.mean((top5 == truth[:, None]).any(axis=1))),
        "recall_per_class": {
            label: float(confusion[index, index] / per_class[index]) if per_class[index] else None
            for index, label in enumerate(classes)
        },
        "most_confused": [
            {"photos": count, "label": true, "predicted": guess}
            for count, true, guess in sorted(errors, key=lambda error: (-error[0], error[1:]))[:10]
        ],
        "confusion_matrix": confusion.tolist(),
    }


def _on_raw_features(labelled_photos: DataFrame, image_features: DataFrame) -> DataFrame:
    """The labelled photos' raw features. The photos' labels and splits are broadcast to the
    table's partitions, so that the regression aggregates one partition per file of the table
    at each iteration, not spark.sql.shuffle.partitions (200) of a shuffle join."""
    return image_features.select("path", array_to_vector("features").alias("raw_features")).join(
        F.broadcast(labelled_photos.select("path", "label", SPLIT)), on="path"
    )


def _raw_comparison(
    labelled_photos: DataFrame,
    image_features: DataFrame,
    classes: list[str],
    classification: dict[str, Any],
) -> dict[str, Any]:
    """The same classifier on the raw 1,280 features, trained and scored on the same split."""
    # Not persisted here: MLlib persists the rows it trains on (as blocks), and a second copy
    # of 1,280 doubles a photo would only take the heap.
    rows = _on_raw_features(labelled_photos.where(F.col("label").isin(classes)), image_features)
    _, scored = _evaluated(rows, "raw_features", classes, classification)
    return {
        "features": "raw (1,280 MobileNetV2 features)",
        **{key: scored[key] for key in ("top1_accuracy", "top5_accuracy", "training_seconds")},
    }


def _no_classifier() -> PipelineModel:
    model = PipelineModel(stages=[])
    model.uid = NO_CLASSIFIER_UID
    return model


def train_classifier(
    *,
    labelled_photos: DataFrame,
    image_features: DataFrame,
    kept_classifier: PipelineModel | None,
    kept_evaluated_classifier: PipelineModel | None,
    kept_classifier_info: dict[str, Any] | None,
    classifier_plan: dict[str, Any],
    classification: dict[str, Any],
) -> tuple[PipelineModel, PipelineModel, dict[str, Any]]:
    """Trains the classifier on the training split and scores it on the evaluation split, then
    (``refit_on_all_photos``) fits the app's classifier on every labelled photo of its
    classes; or keeps the earlier run's, or, when the plan skips the step, saves a classifier
    of no class.

    Returns:
        the app's classifier, the evaluated classifier, and classifier_info: the plan, the
        evaluation, the raw-feature comparison and the timings.
    """
    action = classifier_plan["action"]
    if action == "keep":
        return (
            kept_classifier,
            kept_evaluated_classifier,
            {
                **kept_classifier_info,
                "action": "keep",
                "reason": classifier_plan["reason"],
                "seconds": 0.0,
            },
        )
    info = {
        **classifier_plan,
        "status": "skipped" if action == "skip" else "trained",
        "settings": training_settings(classification),
    }
    if action == "skip":
        return _no_classifier(), _no_classifier(), {**info, "seconds": 0.0}
    started = time.perf_counter()
    classes = classifier_plan["classes"]
    # MLlib's estimators take a vector; the coordinates table keeps plain arrays.
    rows = (
        labelled_photos.where(F.col("label").isin(classes))
        .withColumn(PCA_FEATURES, array_to_vector(PCA_FEATURES))
        .persist()
    )
    try:
        evaluated, scored = _evaluated(rows, PCA_FEATURES, classes, classification)
        info["evaluation"] = scored
        logger.info(
            "Classifier: top-1 %.4f, top-5 %.4f on %d evaluation photos, %d classes (%.1f s)",
            scored["top1_accuracy"],
            scored["top5_accuracy"],
            scored["photos"],
            len(classes),
            scored["training_seconds"],
        )
        if classification["refit_on_all_photos"]:
            # From the evaluated model's coefficients: on unseen photos as accurate as a refit
            # from zero for 100 iterations, in a quarter of the time (docs/classification.md).
            classifier, refit_seconds = _fit(
                rows, PCA_FEATURES, classification, starting_from=evaluated
            )
            info["refit_seconds"] = round(refit_seconds, 3)
        else:
            classifier = evaluated
        sides = [TRAINING, EVALUATION] if classification["refit_on_all_photos"] else [TRAINING]
        info["photos_trained_on"] = sum(
            classifier_plan["photos_per_class"][label][side] for label in classes for side in sides
        )
    finally:
        rows.unpersist()
    if classification["compare_raw_features"]:
        info["raw_features"] = _raw_comparison(
            labelled_photos, image_features, classes, classification
        )
    info["seconds"] = round(time.perf_counter() - started, 3)
    return classifier, evaluated, info


def plot_confusion_matrix(classifier_info: dict[str, Any]) -> Figure:
    """The evaluation's confusion matrix, rows normalized (each true class sums to 1)."""
    figure = Figure(figsize=(9, 8))
    axes = figure.subplots()
    scored = classifier_info.get("evaluation")
    if scored is None:
        axes.axis("off")
        axes.text(0.5, 0.5, f"No classifier: {classifier_info['reason']}", ha="center", wrap=True)
        return figure
    confusion = np.asarray(scored["confusion_matrix"], dtype=float)
    rows = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    image = axes.imshow(rows, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    classes = classifier_info["classes"]
    if len(classes) <= 40:
        axes.set_xticks(range(len(classes)), classes, rotation=90, fontsize="small")
        axes.set_yticks(range(len(classes)), classes, fontsize="small")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(
        f"{len(classes)} classes, {scored['photos']} evaluation photos: "
        f"top-1 {scored['top1_accuracy']:.2%}"
    )
    figure.colorbar(image, ax=axes, label="share of the true class")
    return figure


def _coordinates(pca_features: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frame = pca_features.select(
        "path", "label", F.col(PCA_FEATURES).cast("array<float>").alias("coordinates")
    ).toPandas()
    return (
        frame["path"].to_numpy(dtype=str),
        frame["label"].to_numpy(dtype=str),
        np.stack(frame["coordinates"].to_numpy()) if len(frame) else np.empty((0, 0), np.float32),
    )


def export_classifier_files(
    classifier: PipelineModel,
    pca_features: DataFrame,
    app_files_set: dict[str, Any],
    kept_classifier_files: dict[str, Any] | None,
    classifier_info: dict[str, Any],
) -> dict[str, Any]:
    """The app's classifier set: ``fruits_classifier.tflite`` (the embedder with the
    classifier's layer and softmax on top: probabilities and coordinates out), ``labels.txt``
    (one label a line, in output order), and ``similar_photos.npz`` (the store's paths, labels
    and coordinates, rebuilt only when the coordinates changed). A skipped step exports the
    search data alone."""
    sources = json.dumps(made_from(pca_features), sort_keys=True)
    kept_search = (kept_classifier_files or {}).get(app_files.SIMILAR_PHOTOS)
    if kept_search is not None and str(kept_search.get("made_from")) == sources:
        search = kept_search
    else:
        started = time.perf_counter()
        paths, labels, coordinates = _coordinates(pca_features)
        search = SimilarPhotos(paths, labels, coordinates).arrays(made_from=sources)
        logger.info(
            "Similar photos: %d coordinates exported in %.1f s",
            len(paths),
            time.perf_counter() - started,
        )
    files: dict[str, Any] = {app_files.SIMILAR_PHOTOS: search}
    if classifier_info["status"] == "trained":
        indexer, regression = classifier.stages
        files[app_files.CLASSIFIER] = mobilenet_v2.export_classifier(
            app_files_set[app_files.EMBEDDER],
            regression.coefficientMatrix.toArray(),
            regression.interceptVector.toArray(),
        )
        files[app_files.LABELS] = "".join(f"{label}\n" for label in indexer.labels).encode()
    return files
