"""``ingestion``: the photo store's listing -> the files to featurize, quarantine or forget."""

from fruits_pipeline.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
