"""Running the measurements: the images, the projects, the child processes and their memory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.config import PROJECT_ROOT

# ----------------------------------------------------------------------------- data


def replicate_images(source: Path, target: Path, count: int) -> None:
    """``count`` images under ``target`` in their class folders (hard links where possible): the
    source's own images while it has enough (a split's folders kept, so that Training and Test
    files of the same name stay apart), then copies of them under new names."""
    images = sorted(source.rglob("*.jpg"))
    if not images:
        raise SystemExit(f"No image under {source}: set --images or FRUITS_SHARED_DATA.")
    for index in range(count):
        image = images[index % len(images)]
        relative = image.relative_to(source)
        copy = target / relative.parent / f"{index // len(images)}_{image.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(image, copy)
        except OSError:
            shutil.copyfile(image, copy)


# ----------------------------------------------------------------------------- memory


class MemorySampler(threading.Thread):
    """Peak resident memory of a process tree, split into the driver (the Python process and its
    JVM) and Spark's Python workers (``pyspark.daemon`` and the workers it forks)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        import psutil

        self._root = psutil.Process(pid)
        self._interval = interval
        self._stop_event = threading.Event()
        self.driver_peak_mb = 0.0
        self.worker_peak_mb = 0.0

    def run(self) -> None:
        import psutil

        while not self._stop_event.is_set():
            driver = workers = 0
            try:
                processes = [self._root, *self._root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            commands = {}
            for process in processes:
                try:
                    commands[process.pid] = " ".join(process.cmdline())
                except psutil.Error:
                    continue
            for process in processes:
                command = commands.get(process.pid)
                if command is None:  # gone before its command line was read
                    continue
                try:
                    rss = process.memory_info().rss
                    parent = commands.get(process.ppid())
                except psutil.Error:
                    continue
                if "pyspark.daemon" in command or "pyspark/daemon" in command:
                    workers += rss
                # A child the JVM (or Python) spawns shares its parent's memory until it
                # execs, with the parent's command line: counting it would count the 2.7 GB
                # JVM twice (a 5.5 GB "peak" in one run at 35,520). It is not memory yet.
                elif command != parent:
                    driver += rss
            self.driver_peak_mb = max(self.driver_peak_mb, driver / 2**20)
            self.worker_peak_mb = max(self.worker_peak_mb, workers / 2**20)
            time.sleep(self._interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def child_environment() -> dict[str, str]:
    """The environment of the benchmark's child processes: no telemetry, and Spark's Python
    workers on this interpreter."""
    return {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "PYSPARK_PYTHON": sys.executable}


def run_child(mode: str, *args: str) -> tuple[dict, MemorySampler]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        result_file = handle.name
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", f"--child-{mode}", *args, result_file],
        cwd=PROJECT_ROOT,
        env=child_environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = MemorySampler(child.pid)
    sampler.start()
    _, errors = child.communicate()
    sampler.stop()
    if child.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{errors[-4000:]}")
    result = json.loads(Path(result_file).read_text())
    os.unlink(result_file)
    return result, sampler


def make_project(target: Path) -> Path:
    shutil.copytree(PROJECT_ROOT / "conf", target / "conf", ignore=shutil.ignore_patterns("local"))
    (target / "conf" / "local").mkdir()
    shutil.copy2(PROJECT_ROOT / "pyproject.toml", target / "pyproject.toml")
    (target / "src").mkdir()
    return target


# ----------------------------------------------------------------------------- main


def measure_raw(image_dir: Path, weights: Path) -> dict:
    raw, memory = run_child("raw", str(image_dir), str(weights))
    return {**raw, "raw_peak_mb": memory.driver_peak_mb}


def measure_pipeline(image_dir: Path, weights: Path, project: Path, params: str) -> dict:
    """One run of the pipelines in a fresh process and a fresh project (empty data/), as a first
    run on these images."""
    make_project(project)
    try:
        stages, memory = run_child("pipeline", str(project), str(image_dir), str(weights), params)
        stages["classifier"], _ = run_child("classifier", str(project), str(image_dir))
    finally:
        shutil.rmtree(project, ignore_errors=True)
    return {
        **stages,
        "driver_peak_mb": memory.driver_peak_mb,
        "worker_peak_mb": memory.worker_peak_mb,
    }
