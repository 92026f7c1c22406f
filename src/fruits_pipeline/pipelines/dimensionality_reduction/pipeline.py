"""Wiring of the ``dimensionality_reduction`` pipeline."""

from kedro.pipeline import Node, Pipeline

from fruits_pipeline.pipelines.dimensionality_reduction.nodes import (
    export_embedding,
    fit_or_keep_pca,
    pca_columns,
    plot_explained_variance,
    project_features,
    summarize_run,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=fit_or_keep_pca,
                inputs={
                    "image_features": "image_features",
                    "image_table_changes": "image_table_changes",
                    "kept_pca_model": "kept_pca_model",
                    "kept_pca_selection": "kept_pca_selection",
                    "kept_feature_moments": "kept_feature_moments",
                    "feature_model": "feature_model",
                    "dimensionality_reduction": "params:dimensionality_reduction",
                },
                outputs=["pca_model", "pca_selection", "feature_moments"],
                name="fit_or_keep_pca",
            ),
            Node(
                func=project_features,
                inputs=["image_features", "image_table_changes", "kept_pca_features", "pca_model"],
                outputs="pca_features",
                name="project_features",
            ),
            Node(
                func=pca_columns,
                inputs=["pca_features", "pca_selection"],
                outputs="pca_features_csv",
                name="write_pca_csv",
            ),
            Node(
                func=export_embedding,
                inputs=["pca_model", "feature_model"],
                outputs="app_files",
                name="export_embedding",
            ),
            Node(
                func=summarize_run,
                inputs=["image_features", "featurization_info", "pca_selection"],
                outputs="pipeline_metrics",
                name="summarize_run",
            ),
            Node(
                func=plot_explained_variance,
                inputs="pca_selection",
                outputs="explained_variance_plot",
                name="plot_explained_variance",
            ),
        ],
        tags=["dimensionality_reduction"],
    )
