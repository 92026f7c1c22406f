"""Facts about the software a run used, for the metrics and the benchmark."""

from __future__ import annotations

from importlib import metadata

LIBRARIES = (
    "fruits_pipeline",
    "kedro",
    "kedro-datasets",
    "pyspark",
    "tensorflow",
    "tensorflow-cpu",
    "keras",
    "ai-edge-litert",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "s3fs",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the results (absent ones are left out)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
