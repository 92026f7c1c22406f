"""``dimensionality_reduction``: features -> standardized -> PCA with the fewest components that
explain the configured share of the variance."""

from fruits_pipeline.pipelines.dimensionality_reduction.pipeline import create_pipeline

__all__ = ["create_pipeline"]
