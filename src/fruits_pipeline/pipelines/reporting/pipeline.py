"""Wiring of the ``reporting`` pipeline."""

from kedro.pipeline import Node, Pipeline

from fruits_pipeline.pipelines.reporting.nodes import (
    plot_images_per_class,
    plot_pca_scatter,
    write_run_report,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=plot_images_per_class,
                inputs="pipeline_metrics",
                outputs="images_per_class_plot",
                name="plot_images_per_class",
            ),
            Node(
                func=plot_pca_scatter,
                inputs=["pca_features", "pca_selection"],
                outputs="pca_scatter_plot",
                name="plot_pca_scatter",
            ),
            Node(
                func=write_run_report,
                inputs=[
                    "pipeline_metrics",
                    "image_features",
                    "featurization_info",
                    "pca_selection",
                    "classifier_info",
                ],
                outputs="run_report",
                name="write_run_report",
            ),
        ],
        tags=["reporting"],
    )
