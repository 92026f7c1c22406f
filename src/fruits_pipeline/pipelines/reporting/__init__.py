"""``reporting``: figures and a one-page report of a run, for people (and kedro-viz previews)."""

from fruits_pipeline.pipelines.reporting.pipeline import create_pipeline

__all__ = ["create_pipeline"]
