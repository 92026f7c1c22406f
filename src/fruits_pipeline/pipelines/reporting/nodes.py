"""Nodes of the ``reporting`` pipeline: small, driver-side summaries of the run's outputs."""

from __future__ import annotations

from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

# A scatter of more points than this says nothing more; a sample keeps the driver light.
SCATTER_POINTS = 20_000


def plot_images_per_class(pipeline_metrics: dict[str, Any]) -> Figure:
    """Horizontal bars: featurized images per class."""
    per_class = sorted(pipeline_metrics["images_per_class"].items(), key=lambda item: item[1])
    figure = Figure(figsize=(8, max(3.0, 0.25 * len(per_class) + 1)))
    axes = figure.subplots()
    axes.barh([label for label, _ in per_class], [count for _, count in per_class], color="#6baed6")
    axes.set_xlabel("images featurized")
    axes.set_title(
        f"{pipeline_metrics['images_featurized']} images in {len(per_class)} classes "
        f"({pipeline_metrics['images_quarantined']} quarantined)"
    )
    return figure


def plot_pca_scatter(pca_features: DataFrame, pca_selection: dict[str, Any]) -> Figure:
    """The images on the first two principal components, one colour per class."""
    total = pca_features.count()
    sample = (
        pca_features
        if total <= SCATTER_POINTS
        else pca_features.sample(SCATTER_POINTS / total, seed=0)
    )
    components = F.col("pca_features")
    # Through Arrow into one frame, grouped by label once, rather than a scan of every Row per
    # class (docs/performance.md).
    points = sample.select(
        "label", components[0].alias("pc1"), components[1].alias("pc2")
    ).toPandas()
    classes = points.groupby("label", sort=True)
    ratios = pca_selection["explained_variance_ratio"]
    figure = Figure(figsize=(8, 6))
    axes = figure.subplots()
    palette = colormaps["tab20"].resampled(max(classes.ngroups, 1))
    for index, (label, group) in enumerate(classes):
        axes.scatter(group["pc1"], group["pc2"], s=8, alpha=0.7, color=palette(index), label=label)
    axes.set_xlabel(f"PC 1 ({ratios[0]:.1%} of the variance)")
    axes.set_ylabel(f"PC 2 ({ratios[1]:.1%} of the variance)")
    axes.set_title(f"{len(points)} of {total} images on the first two principal components")
    if classes.ngroups <= 30:
        axes.legend(fontsize="small", markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return figure


def refit_advice(pca_selection: dict[str, Any]) -> str | None:
    """What to do when the kept PCA axes explain less than the threshold of the current
    table's variance; None while they explain enough."""
    share, threshold = (
        pca_selection["current_variance_explained"],
        pca_selection["variance_threshold"],
    )
    if share >= threshold:
        return None
    return (
        f"The kept PCA axes explain {share:.2%} of the current images' variance, below the "
        f"threshold of {threshold:.0%}: fit them again with "
        "`kedro run --params dimensionality_reduction.refit=true` (every image gets new "
        "coordinates, and the app needs the new embedder)."
    )


def classification_section(info: dict[str, Any]) -> list[str]:
    """The classifier in the run report: what this run did and why, the split, the accuracy
    (beside the raw features'), the most confused pairs and the classes left out."""
    lines = ["## Classification", ""]
    if info["status"] == "skipped":
        return [*lines, f"Skipped: {info['reason']}.", *_classes_left_out(info)]
    done = "kept from an earlier run" if info["action"] == "keep" else "trained in this run"
    scored = info["evaluation"]
    lines += [
        f"Classifier {done}: {info['reason']}.",
        "",
        f"Split: {info['split_rule']}.",
        "",
        "| features | top-1 | top-5 | training |",
        "| --- | ---: | ---: | ---: |",
        f"| PCA coordinates | {scored['top1_accuracy']:.2%} | {scored['top5_accuracy']:.2%} "
        f"| {scored['training_seconds']:.1f} s |",
    ]
    raw = info.get("raw_features")
    if raw:
        lines.append(
            f"| {raw['features']} | {raw['top1_accuracy']:.2%} | {raw['top5_accuracy']:.2%} "
            f"| {raw['training_seconds']:.1f} s |"
        )
    lines += [
        "",
        f"{scored['photos']} evaluation photos, {len(info['classes'])} classes; the app's "
        f"classifier was trained on {info['photos_trained_on']} photos.",
    ]
    if scored["most_confused"]:
        lines += ["", "| true class | predicted as | photos |", "| --- | --- | ---: |"]
        lines += [
            f"| {pair['label']} | {pair['predicted']} | {pair['photos']} |"
            for pair in scored["most_confused"]
        ]
    worst = sorted(
        (recall, label)
        for label, recall in scored["recall_per_class"].items()
        if recall is not None and recall < 1
    )[:10]
    if worst:
        lines += [
            "",
            "Lowest recall: " + ", ".join(f"{label} {recall:.1%}" for recall, label in worst),
        ]
    return lines + _classes_left_out(info)


def _classes_left_out(info: dict[str, Any]) -> list[str]:
    if not info["classes_left_out"]:
        return []
    return [
        "",
        "| class left out | why |",
        "| --- | --- |",
        *[f"| {label} | {why} |" for label, why in info["classes_left_out"].items()],
    ]


def write_run_report(
    pipeline_metrics: dict[str, Any],
    image_features: DataFrame,
    featurization_info: dict[str, Any],
    pca_selection: dict[str, Any],
    classifier_info: dict[str, Any],
) -> str:
    """A one-page Markdown report: counts, quarantine, k, variance, the classifier, timings,
    weights, versions."""
    reasons = (
        image_features.where(F.col("features").isNull())
        .groupBy("error_class", "reason")
        .count()
        .orderBy(F.desc("count"))
        .limit(20)
        .collect()
    )
    metrics = pipeline_metrics
    this_run = metrics["this_run"]
    axes = "fitted in this run" if pca_selection["refit"] else "kept from an earlier run"
    lines = [
        "# fruits-pipeline run report",
        "",
        "| | |",
        "| --- | --- |",
        f"| images in the store | {metrics['images_in']} |",
        f"| images featurized | {metrics['images_featurized']} ({metrics['classes']} classes) |",
        f"| images quarantined | {metrics['images_quarantined']} |",
        f"| this run | {this_run['images_sent_to_model']} images sent to the model, "
        f"{this_run['images_featurized']} featurized, {this_run['images_quarantined']} "
        f"quarantined, {this_run['images_removed']} removed, in "
        f"{featurization_info['seconds']:.1f} s ({this_run['task_attempts_failed']} failed task "
        "attempts retried) |",
        f"| principal components kept (k) | {metrics['k']} of {metrics['feature_dim']} ({axes}) |",
        f"| variance explained | {metrics['variance_explained']:.2%} at the fit "
        f"(threshold {metrics['variance_threshold']:.0%}), "
        f"{metrics['current_variance_explained']:.2%} of the current images |",
        f"| PCA (fit or check of the kept axes) | {pca_selection['seconds']:.1f} s |",
        f"| weights | `{metrics['weights_source']}` |",
        f"| weights sha256 | `{metrics['weights_sha256']}` |",
        "",
    ]
    advice = refit_advice(pca_selection)
    if advice:
        lines += [f"**Refit advised.** {advice}", ""]
    lines += ["## Quarantine", ""]
    if reasons:
        lines += ["| error | reason | images |", "| --- | --- | ---: |"]
        lines += [f"| {row['error_class']} | {row['reason']} | {row['count']} |" for row in reasons]
    else:
        lines.append("No image was quarantined.")
    lines += ["", *classification_section(classifier_info)]
    lines += ["", "## Images per class", "", "| class | images |", "| --- | ---: |"]
    lines += [f"| {label} | {count} |" for label, count in metrics["images_per_class"].items()]
    lines += ["", "## Library versions", "", "| library | version |", "| --- | --- |"]
    lines += [f"| {name} | {version} |" for name, version in metrics["library_versions"].items()]
    return "\n".join(lines) + "\n"
