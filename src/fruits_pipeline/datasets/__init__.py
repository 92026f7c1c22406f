"""Project-specific Kedro datasets."""

from fruits_pipeline.datasets.app_files_dataset import AppFilesDataset
from fruits_pipeline.datasets.committed_spark_dataset import CommittedSparkDataset
from fruits_pipeline.datasets.delta_change_feed_dataset import ChangeFeed, DeltaChangeFeedDataset
from fruits_pipeline.datasets.delta_history_dataset import DeltaHistoryDataset
from fruits_pipeline.datasets.delta_merge_dataset import DeltaMergeDataset
from fruits_pipeline.datasets.feature_model_dataset import FeatureModelDataset
from fruits_pipeline.datasets.image_folder_dataset import (
    ImageFolderDataset,
    ImageStore,
    MissingImagesError,
    spark_location,
)
from fruits_pipeline.datasets.optional_json_dataset import OptionalJSONDataset
from fruits_pipeline.datasets.optional_pickle_dataset import OptionalPickleDataset
from fruits_pipeline.datasets.spark_ml_model_dataset import SparkMLModelDataset

__all__ = [
    "AppFilesDataset",
    "ChangeFeed",
    "CommittedSparkDataset",
    "DeltaChangeFeedDataset",
    "DeltaHistoryDataset",
    "DeltaMergeDataset",
    "FeatureModelDataset",
    "ImageFolderDataset",
    "ImageStore",
    "MissingImagesError",
    "OptionalJSONDataset",
    "OptionalPickleDataset",
    "SparkMLModelDataset",
    "spark_location",
]
