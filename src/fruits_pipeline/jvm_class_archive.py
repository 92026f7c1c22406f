"""Class-data sharing for the local Spark driver's JVM: Spark's classes, parsed once per machine.

A run of the three pipelines loads ~22,600 classes from Spark's ~250 jars, and its JVM spends
~13 s of CPU reading, parsing and verifying them (~7 s of them before the ingestion's first
write). JDK 13+ can write the classes a JVM has loaded to an archive when it exits
(``-XX:ArchiveClassesAtExit``) and map them from that archive at the next start
(``-XX:SharedArchiveFile``, class-data sharing): the three pipelines on 64 images took 24-26 s
instead of 31-32 s, ``kedro run`` on the 2,018-image sample 52-54 s instead of 63 s.

The archive (~200 MB) belongs to one JVM build and one install of Spark's jars, so it is cached
per machine (``$XDG_CACHE_HOME/fruits_pipeline/``, default ``~/.cache/``) under a name hashed
from both; deleting it only costs the next run the time to write it again. The first local run of
the whole pipeline (so that the archive holds the classes of every stage) writes it when its JVM
exits (once: on the sample, ~25 s more while the JVM records its classes
and ~27 s at exit to write and check the archive), and only a complete archive is put in place,
checked by a JVM that reads it whole: JVMs that map a truncated archive crash. Cluster masters
keep their own JVM options, and ``-Xshare:off`` (or any class-sharing option) in
``spark.driver.extraJavaOptions`` leaves the JVM to it.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pyspark
from pyspark import SparkContext

logger = logging.getLogger(__name__)

JAVA_OPTIONS = "spark.driver.extraJavaOptions"
# JDK 13 brought the archive written at exit.
MIN_JAVA = 13
# The JVM logs a line for each class it cannot archive (e.g. Janino's, from a signed jar).
QUIET = "-Xlog:cds*=off"
SHARING_OPTIONS = ("-Xshare", "SharedArchiveFile", "ArchiveClassesAtExit", "SharedClassListFile")


def local_master(spark_config: dict[str, Any]) -> bool:
    """Whether the session runs its tasks in the driver's own JVM (``local``, ``local[*]``...)."""
    return str(spark_config.get("spark.master", "")).startswith("local")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fruits_pipeline" / "spark-class-archive"


def java_executable() -> str | None:
    """The ``java`` Spark's launcher starts: ``$JAVA_HOME/bin/java``, else the first on PATH."""
    if os.environ.get("JAVA_HOME"):
        return str(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    return shutil.which("java")


def java_major(version_text: str) -> int | None:
    """The major version in ``java -version``'s output (``"1.8.0_392"`` is 8, ``"17.0.2"`` 17)."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version_text)
    if not found:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def archive_path(java: str, version_text: str) -> Path:
    """The archive's place in the cache, named by the JVM build and Spark's jars."""
    spark_home = Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)
    jars = sorted((spark_home / "jars").glob("*.jar"))
    identity = hashlib.sha256()
    # The class path must match the archive's, so the jars' folder is part of the name too.
    identity.update(f"{os.path.realpath(java)}\n{version_text}\n{spark_home.resolve()}\n".encode())
    for jar in jars:
        status = jar.stat()
        identity.update(f"{jar.name} {status.st_size} {status.st_mtime_ns}\n".encode())
    return cache_dir() / f"spark-{pyspark.__version__}-{identity.hexdigest()[:16]}.jsa"


def _writing_path(archive: Path) -> Path:
    return archive.with_name(f"{archive.name}.{os.getpid()}.part")


def _remove_abandoned(archive: Path) -> None:
    """Deletes archives whose writer is gone without keeping them (killed runs)."""
    for part in archive.parent.glob(f"{archive.name}.*.part"):
        try:
            os.kill(int(part.suffixes[-2].lstrip(".")), 0)
        except (ValueError, ProcessLookupError):
            part.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process


def with_class_archive(
    spark_config: dict[str, Any], write: bool = False
) -> tuple[dict[str, Any], Path | None]:
    """``spark_config`` with the JVM option that maps the class archive; when there is none yet
    and ``write``, with the option that writes it (then the archive to write is returned too, for
    :func:`keep_when_complete`). Unchanged for cluster masters, JVMs before 13, and driver JVM
    options that already choose about class sharing."""
    options = str(spark_config.get(JAVA_OPTIONS) or "")
    java = java_executable()
    if (
        not local_master(spark_config)
        or any(option in options for option in SHARING_OPTIONS)
        or java is None
        # Under spark-submit the JVM is already running: PySpark only connects to it.
        or "PYSPARK_GATEWAY_PORT" in os.environ
    ):
        return spark_config, None
    try:
        version = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=True
        ).stderr
    except (OSError, subprocess.SubprocessError):
        return spark_config, None  # Spark's own launcher reports a missing or broken java
    if (java_major(version) or 0) < MIN_JAVA:
        return spark_config, None
    archive = archive_path(java, version)
    if archive.is_file():
        added, to_write = f"-XX:SharedArchiveFile={archive}", None
    elif not write:
        return spark_config, None
    else:
        archive.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(archive)
        added, to_write = f"-XX:ArchiveClassesAtExit={_writing_path(archive)}", archive
    return {**spark_config, JAVA_OPTIONS: f"{options} {added} {QUIET}".strip()}, to_write


def readable(java: str, archive: Path, class_path: str) -> bool:
    """Whether a JVM with this class path maps the archive and reads all of it (checksums
    included): a truncated one fails here instead of crashing the runs that would map it."""
    check = subprocess.run(
        [
            java,
            "-Xshare:on",
            "-XX:+VerifySharedSpaces",
            QUIET,
            f"-XX:SharedArchiveFile={archive}",
            "-cp",
            class_path,
            "-version",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return check.returncode == 0


def keep_when_complete(spark_context, archive: Path) -> None:
    """At this process's exit, lets the JVM exit and write the archive, then puts it in place if
    a JVM can read all of it with the same class path (else deletes it)."""
    writing = _writing_path(archive)
    jvm_process = spark_context._gateway.proc
    class_path = spark_context._jvm.java.lang.System.getProperty("java.class.path")
    java = java_executable()

    def keep() -> None:
        try:
            # Stopped first, so that Python's side (the accumulator server) does not see the JVM
            # go; the gateway exits when its standard input closes and writes the archive then.
            if SparkContext._active_spark_context is not None:
                SparkContext._active_spark_context.stop()
            jvm_process.stdin.close()
            exited = jvm_process.wait(timeout=600)
            if exited == 0 and writing.is_file() and readable(java, writing, class_path):
                os.replace(writing, archive)
        except Exception as error:  # noqa: BLE001 - at exit, a cache not kept is only reported
            logger.warning("Spark's class archive was not kept: %s", error)
        finally:
            writing.unlink(missing_ok=True)

    atexit.register(keep)
