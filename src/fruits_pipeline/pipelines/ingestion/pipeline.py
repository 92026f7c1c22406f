"""Wiring of the ``ingestion`` pipeline."""

from kedro.pipeline import Node, Pipeline

from fruits_pipeline.pipelines.ingestion.nodes import label_images


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=label_images,
                inputs=["raw_images", "params:ingestion"],
                outputs="image_binaries",
                name="label_images",
            ),
        ],
        tags=["ingestion"],
    )
