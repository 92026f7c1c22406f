"""Wiring of the ``featurization`` pipeline."""

from kedro.pipeline import Node, Pipeline

from fruits_pipeline.pipelines.featurization.nodes import extract_features


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=extract_features,
                inputs=["image_binaries", "params:featurization"],
                outputs=["image_features", "image_quarantine", "featurization_info"],
                name="extract_features",
            ),
        ],
        tags=["featurization"],
    )
