"""Wiring of the ``classification`` pipeline."""

from kedro.pipeline import Node, Pipeline

from fruits_pipeline.pipelines.classification.nodes import (
    export_classifier_files,
    plan_training,
    plot_confusion_matrix,
    split_photos,
    train_classifier,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=split_photos,
                inputs=["pca_features", "params:classification"],
                outputs="labelled_photos",
                name="split_photos",
            ),
            Node(
                func=plan_training,
                inputs=[
                    "labelled_photos",
                    "image_table_history",
                    "kept_classifier_info",
                    "pca_selection",
                    "params:classification",
                ],
                outputs="classifier_plan",
                name="plan_training",
            ),
            Node(
                func=train_classifier,
                inputs={
                    "labelled_photos": "labelled_photos",
                    "image_features": "image_features",
                    "kept_classifier": "kept_classifier",
                    "kept_evaluated_classifier": "kept_evaluated_classifier",
                    "kept_classifier_info": "kept_classifier_info",
                    "classifier_plan": "classifier_plan",
                    "classification": "params:classification",
                },
                outputs=["classifier", "evaluated_classifier", "classifier_info"],
                name="train_classifier",
            ),
            Node(
                func=plot_confusion_matrix,
                inputs="classifier_info",
                outputs="confusion_matrix_plot",
                name="plot_confusion_matrix",
            ),
            Node(
                func=export_classifier_files,
                inputs=[
                    "classifier",
                    "pca_features",
                    "app_files",
                    "kept_classifier_files",
                    "classifier_info",
                ],
                outputs="classifier_files",
                name="export_classifier_files",
            ),
        ],
        tags=["classification"],
    )
