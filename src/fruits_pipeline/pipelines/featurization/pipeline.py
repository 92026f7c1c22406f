"""Wiring of the ``featurization`` pipeline."""

from kedro.pipeline import Node, Pipeline

from fruits_pipeline.pipelines.featurization.nodes import extract_features


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=extract_features,
                inputs=["image_changes", "raw_images", "feature_model", "params:featurization"],
                outputs=["image_features", "featurization_info"],
                name="extract_features",
            ),
        ],
        tags=["featurization"],
    )
