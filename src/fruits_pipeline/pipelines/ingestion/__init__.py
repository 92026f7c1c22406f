"""``ingestion``: image files -> one row per image with its label and bytes."""

from fruits_pipeline.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
