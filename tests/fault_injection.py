"""Faults injected into a real run's Python workers, and what a test needs to set them off.

Spark starts this module instead of ``pyspark.daemon`` (``spark.python.daemon.module``) in the
runs that ``spark_settings`` configures; its Python workers fork from it, so they inherit the
wrapped ``mobilenet_v2.decode_image``, which only the model stage calls:

- ``pause-at-model-stage``: the first image a run decodes (whichever worker, once per fault
  folder) in a task of partition ``from_partition`` or later writes ``model_stage.json`` (the
  worker's, its daemon's and its JVM's process ids) and waits, up to a minute, for the test to
  kill something (which lands inside the model stage) or to ``resume``. From the first
  partition of the second wave of tasks on, the paused worker's executor has finished a task;
- ``crash-on-marker``: every image whose bytes hold ``CRASH_MARKER`` kills its process with
  SIGSEGV, as a native decoder crashing on one file would, on every attempt.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

CRASH_MARKER = b"FRUITS-FAULT-CRASH-THE-DECODER"
MODEL_STAGE_FILE = "model_stage.json"
RESUME_FILE = "resume"


def spark_settings(
    mode: str, fault_dir: Path, project_root: Path, from_partition: int = 0
) -> dict[str, str]:
    """Spark settings that make a run's Python workers inject ``mode``."""
    return {
        "spark.python.daemon.module": "tests.fault_injection",
        "spark.executorEnv.PYTHONPATH": str(project_root),
        "spark.executorEnv.FRUITS_FAULT": mode,
        "spark.executorEnv.FRUITS_FAULT_DIR": str(fault_dir),
        "spark.executorEnv.FRUITS_FAULT_FROM_PARTITION": str(from_partition),
    }


def wait_for_model_stage(fault_dir: Path, run, timeout: float = 300) -> dict[str, int]:
    """The process ids ``pause-at-model-stage`` wrote once the run reached its model stage."""
    marker = fault_dir / MODEL_STAGE_FILE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.poll() is None:
        if marker.exists() and marker.stat().st_size:
            time.sleep(0.1)  # written in one call; let it land
            return json.loads(marker.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the run never reached its model stage (exit code {run.poll()})")


def resume(fault_dir: Path) -> None:
    """Lets a run paused at its model stage go on."""
    (fault_dir / RESUME_FILE).touch()


def _parent(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def _wrap_decoder() -> None:
    from fruits_pipeline import mobilenet_v2

    mode, fault_dir = os.environ["FRUITS_FAULT"], Path(os.environ["FRUITS_FAULT_DIR"])
    from_partition = int(os.environ.get("FRUITS_FAULT_FROM_PARTITION") or 0)
    decode_image = mobilenet_v2.decode_image

    def decode_with_fault(content: bytes, max_pixels: int):
        from pyspark import TaskContext

        if mode == "crash-on-marker" and CRASH_MARKER in content:
            os.kill(os.getpid(), signal.SIGSEGV)
        task = TaskContext.get()
        if mode == "pause-at-model-stage" and (
            task is None or task.partitionId() >= from_partition
        ):
            try:
                marker = os.open(fault_dir / MODEL_STAGE_FILE, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                daemon = _parent(os.getpid())
                pids = {"worker": os.getpid(), "daemon": daemon, "jvm": _parent(daemon)}
                os.write(marker, json.dumps(pids).encode())
                os.close(marker)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and not (fault_dir / RESUME_FILE).exists():
                    time.sleep(0.1)
        return decode_image(content, max_pixels)

    mobilenet_v2.decode_image = decode_with_fault


if __name__ == "__main__":
    _wrap_decoder()
    from pyspark import daemon

    daemon.manager()
