"""A run killed while writing leaves the previous complete output readable and intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import kedro_run

pytestmark = pytest.mark.pipeline


def _read_committed(dataset: Path):
    version = (dataset / "_COMMITTED").read_text().strip()
    return version, pq.read_table(dataset / version).sort_by("path")


@pytest.mark.faults
def test_killed_run_keeps_the_last_good_output(project_copy, sample_images, weights_file):
    params = f"raw_images_path={sample_images},featurization.weights={weights_file}"
    first = kedro_run(project_copy, "--pipelines", "ingestion", "--params", params)
    assert first.returncode == 0, first.stderr[-2000:]
    dataset = project_copy / "data" / "02_intermediate" / "image_changes.parquet"
    good_version, good_table = _read_committed(dataset)
    assert good_table.num_rows == 2018

    # Same run again, killed (SIGKILL, no clean-up) as soon as Spark starts writing.
    run = subprocess.Popen(
        [sys.executable, "-m", "kedro", "run", "--pipelines", "ingestion", "--params", params],
        cwd=project_copy,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    partial = None
    while partial is None and time.monotonic() < deadline and run.poll() is None:
        partial = next(
            (p for p in dataset.iterdir() if p.is_dir() and p.name != good_version), None
        )
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert partial is not None, "the second run never started writing"
    assert not (partial / "_SUCCESS").exists(), "killed mid-write: the new version is incomplete"

    version, table = _read_committed(dataset)
    assert version == good_version
    assert table.equals(good_table)

    # The next complete run commits a new version, keeps the one before it for readers still
    # reading it, and removes the interrupted one.
    third = kedro_run(project_copy, "--pipelines", "ingestion", "--params", params)
    assert third.returncode == 0, third.stderr[-2000:]
    version, table = _read_committed(dataset)
    assert version != good_version
    assert table.num_rows == 2018
    assert sorted(p.name for p in dataset.iterdir()) == sorted(
        ["_COMMITTED", good_version, version]
    )
