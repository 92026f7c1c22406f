"""``featurization``: image bytes -> MobileNetV2 features (1280 floats an image), or quarantine."""

from fruits_pipeline.pipelines.featurization.pipeline import create_pipeline

__all__ = ["create_pipeline"]
