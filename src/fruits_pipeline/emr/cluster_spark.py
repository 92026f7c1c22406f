"""The cluster's own PySpark for the bootstrap's virtualenv, which installs none.

EMR installs Spark after the bootstrap actions, under /usr/lib/spark: its Python package in
``python/`` and py4j as ``python/lib/py4j-<version>-src.zip``. A ``.pth`` file the bootstrap
writes calls ``add_to_path`` when the interpreter starts, so the driver (the step) and every
Python worker import the very PySpark of the cluster's JVM. Kept free of imports beyond the
standard library: it runs in every interpreter of the virtualenv.
"""

from __future__ import annotations

import glob
import os
import sys

EMR_SPARK_HOME = "/usr/lib/spark"


def spark_python_paths(spark_home: str) -> list[str]:
    """The folders and archives holding ``spark_home``'s pyspark and py4j, those that exist."""
    python = os.path.join(spark_home, "python")
    py4j = sorted(glob.glob(os.path.join(python, "lib", "py4j-*-src.zip")))
    return [path for path in (python, *py4j[-1:]) if os.path.exists(path)]


def add_to_path() -> None:
    """Appends the Spark of ``$SPARK_HOME`` (else EMR's) to ``sys.path``, after what the
    virtualenv installed: nothing of it shadows a package the virtualenv has."""
    for path in spark_python_paths(os.environ.get("SPARK_HOME") or EMR_SPARK_HOME):
        if path not in sys.path:
            sys.path.append(path)
