"""Project-specific Kedro datasets."""

from fruits_pipeline.datasets.committed_spark_dataset import CommittedSparkDataset
from fruits_pipeline.datasets.image_folder_dataset import ImageFolderDataset, MissingImagesError
from fruits_pipeline.datasets.spark_ml_model_dataset import SparkMLModelDataset

__all__ = [
    "CommittedSparkDataset",
    "ImageFolderDataset",
    "MissingImagesError",
    "SparkMLModelDataset",
]
