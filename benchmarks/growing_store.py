"""The growing store measured: with SIZE images in the store, whole-process `kedro run` wall
times of a full run (empty table), a run after 1 % new photos and a run with nothing new; then
one photo embedded by `fruits-features` (whole process) and the app's embedder's latency.

Called by the benchmark's main (``--growing-store SIZE``), in the same benchmark run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.config import TARGETS

NEW_SHARE = 0.01


def _add_photos(source_images: list[Path], store: Path, count: int, prefix: str) -> list[Path]:
    added = []
    for index in range(count):
        image = source_images[index % len(source_images)]
        copy = store / image.parent.name / f"{prefix}{index}_{image.name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, copy)
        added.append(copy)
    return added


def _timed(command: list[str], cwd: Path, environment: dict[str, str]) -> float:
    return _timed_run(command, cwd, environment)[0]


def _timed_run(command: list[str], cwd: Path, environment: dict[str, str]) -> tuple[float, bool]:
    """The command's wall time, and whether a JVM (a ``java`` process) ever ran below it: the
    process tree is looked at every 20 ms (a SparkSession's JVM lives for seconds)."""
    import psutil

    started = time.perf_counter()
    # A file, not a pipe: a long run's log would fill a pipe nobody reads while it runs.
    with (
        tempfile.TemporaryFile("w+") as errors,
        subprocess.Popen(
            command, cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=errors
        ) as process,
    ):
        root, jvm = psutil.Process(process.pid), False
        while process.poll() is None:
            with contextlib.suppress(psutil.Error):
                jvm = jvm or any(child.name() == "java" for child in root.children(recursive=True))
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(command[:4])} failed:\n{errors.read()[-4000:]}")
    return seconds, jvm


def _embedder_latency_ms(project: Path, photo: Path, calls: int = 50) -> float:
    """Median wall time of the app's embedder on one decoded image (batch of one)."""
    from fruits_pipeline import mobilenet_v2

    embedder = mobilenet_v2.FeatureExtractor(
        (project / "data" / "06_models" / "fruits_embedder.tflite").read_bytes(), threads=1
    )
    image = mobilenet_v2.decode_image(photo.read_bytes(), 10**8)[None]
    embedder(image)  # buffers sized once, as an app does on its first photo
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        embedder(image)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure_growing_store(
    store: Path, project: Path, source: Path, weights: Path, env: dict[str, str]
) -> dict:
    """Full, 1 % new and nothing-new runs over the images of ``store``, in one ``project``; the
    new photos are copies of ``source``'s."""
    size = sum(1 for _ in store.rglob("*.jpg"))
    for layer in ("04_feature", "06_models", "07_model_output", "08_reporting"):
        (project / "data" / layer).mkdir(parents=True, exist_ok=True)
    run = [
        sys.executable,
        "-m",
        "kedro",
        "run",
        "--params",
        f"raw_images_path={store},featurization.weights={weights}",
    ]

    def sent_to_model() -> int:
        info = project / "data" / "04_feature" / "featurization_info.json"
        return json.loads(info.read_text())["images_sent_to_model"]

    full_s, full_jvm = _timed_run(run, project, env)
    full_sent = sent_to_model()
    new_photos = _add_photos(
        sorted(source.rglob("*.jpg")), store, round(NEW_SHARE * size), prefix="new"
    )
    incremental_s, incremental_jvm = _timed_run(run, project, env)
    incremental_sent = sent_to_model()
    nothing_new_s, nothing_new_jvm = _timed_run(run, project, env)
    nothing_new_sent = sent_to_model()
    features_cli = Path(sys.executable).parent / "fruits-features"
    single_photo_s = _timed([str(features_cli), str(new_photos[0])], project, env)
    return {
        "images_in_store": size,
        "new_photos": len(new_photos),
        "full_run_s": round(full_s, 2),
        "incremental_run_s": round(incremental_s, 2),
        "nothing_new_run_s": round(nothing_new_s, 2),
        "incremental_over_full": round(incremental_s / full_s, 3),
        "nothing_new_over_full": round(nothing_new_s / full_s, 3),
        "images_sent_to_model": {
            "full": full_sent,
            "incremental": incremental_sent,
            "nothing_new": nothing_new_sent,
        },
        # Whether a java process ran below each run (the benchmark watches the process tree).
        "jvm_started": {
            "full": full_jvm,
            "incremental": incremental_jvm,
            "nothing_new": nothing_new_jvm,
        },
        "fruits_features_one_photo_s": round(single_photo_s, 2),
        "embedder_latency_ms": round(_embedder_latency_ms(project, new_photos[0]), 2),
        "cpus": os.cpu_count(),
    }


def growing_store_targets(figures: dict) -> list[dict]:
    return [
        {
            "target": "incremental run (1 % new photos) / full run",
            "goal": f"<= {TARGETS['incremental_over_full_max']}",
            "measured": figures["incremental_over_full"],
            "met": figures["incremental_over_full"] <= TARGETS["incremental_over_full_max"],
        },
        {
            "target": "nothing-new run / full run",
            "goal": f"<= {TARGETS['nothing_new_over_full_max']}",
            "measured": figures["nothing_new_over_full"],
            "met": figures["nothing_new_over_full"] <= TARGETS["nothing_new_over_full_max"],
        },
        {
            "target": "JVM started: full, 1 % new, nothing new",
            "goal": "yes, yes, no",
            "measured": list(figures["jvm_started"].values()),
            "met": list(figures["jvm_started"].values()) == [True, True, False],
        },
        {
            "target": "model calls: full, 1 % new, nothing new",
            "goal": f"{figures['images_in_store']}, {figures['new_photos']}, 0",
            "measured": list(figures["images_sent_to_model"].values()),
            "met": list(figures["images_sent_to_model"].values())
            == [figures["images_in_store"], figures["new_photos"], 0],
        },
    ]
