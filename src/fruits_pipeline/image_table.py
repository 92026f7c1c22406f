"""The image table's vocabulary, in one place: its columns, the kinds of change a run plans for
a photo, and the reasons a photo is quarantined. The pipelines that write and read the table
(ingestion, featurization, dimensionality reduction, reporting) import it, not each other."""

from __future__ import annotations

from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType

# The columns that say which file a row of the image table describes.
IDENTITY = ["path", "label", "length", "modificationTime"]
# A stored row is current when its file and its model are those of this run.
ROW_IDENTITY = ["path", "length", "modificationTime", "model_id"]
# Marks, in the rows merged into the image table, the paths to remove from it.
DELETE_COLUMN = "_delete"

FEATURES_TYPE = ArrayType(FloatType(), containsNull=False)
FEATURIZATION_RESULT = StructType(
    [
        StructField("features", FEATURES_TYPE, nullable=True),
        StructField("reason", StringType(), nullable=True),
        StructField("error_class", StringType(), nullable=True),
    ]
)

# What the featurization does with a row of image_changes (its ``action``).
FEATURIZE = "featurize"
EMPTY = "empty"
UNLABELLED = "unlabelled"
DELETE = "delete"

# Quarantine reasons (the ``reason`` column; ``error_class`` says the kind).
EMPTY_FILE = "empty file (0 bytes)"
UNREADABLE = "the file could not be read (removed or unreadable since the store was listed)"
NO_CLASS_FOLDER = (
    "no class folder: the file sits directly in raw_images_path, so it has no label; "
    "move it into a folder named after its class"
)
DECODER_CRASH = (
    "the image decoder crashed on this file ({signal}): its task's worker died, and the retried "
    "task isolated the file"
)
DECODER_TIMEOUT = (
    "the image decoder did not finish this file within {seconds:g} s "
    "(featurization.decode_timeout_seconds): the retried task stopped it"
)
DECODER_OUT_OF_MEMORY = (
    "the image decoder was killed by the out-of-memory killer (SIGKILL) while decoding this "
    "file: the retried task isolated it"
)
