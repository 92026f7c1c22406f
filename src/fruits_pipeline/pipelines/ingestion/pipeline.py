"""Wiring of the ``ingestion`` pipeline."""

from kedro.pipeline import Node, Pipeline

from fruits_pipeline.pipelines.ingestion.nodes import list_changes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=list_changes,
                inputs=["raw_images", "known_images", "feature_model"],
                outputs="image_changes",
                name="list_changes",
            ),
        ],
        tags=["ingestion"],
    )
