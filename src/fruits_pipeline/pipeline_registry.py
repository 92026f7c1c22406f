"""Project pipelines: one folder per pipeline under ``pipelines/``, found by ``find_pipelines``."""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    """Registers ``ingestion``, ``featurization``, ``dimensionality_reduction`` and
    ``reporting``, and their sum as ``__default__``."""
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(pipelines.values())
    return pipelines
