"""The ``classification`` pipeline: which fruit a photo is, from its PCA coordinates."""

from fruits_pipeline.pipelines.classification.pipeline import create_pipeline

__all__ = ["create_pipeline"]
