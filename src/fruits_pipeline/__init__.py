"""fruits-pipeline: Fruits-360 images -> MobileNetV2 features -> PCA, with Kedro and PySpark."""

__version__ = "0.1.0"
