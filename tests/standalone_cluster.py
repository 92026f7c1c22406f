"""A Spark standalone cluster on this machine, from pyspark's own distribution: one master and
N workers, each worker its own JVM with its own executors and Python workers, and its own
``HOME``, ``TMPDIR``, ``KERAS_HOME`` and work folder, so that nothing an executor needs can come
from the driver's home or temporary folder by accident. Used by the fault tests, and by hand::

    python -m tests.standalone_cluster --workers 2 --root /tmp/fruits-cluster
    kedro run --params spark_master=spark://127.0.0.1:<port>    # the URL it prints

(docs/reliability.md). The cluster stops with Ctrl-C (or at the end of the ``with`` block).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.find_spark_home import _find_spark_home

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@dataclass
class StandaloneCluster:
    master_url: str
    web_url: str
    root: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict:
        """The master's view of the cluster (its web UI's JSON): workers, applications."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as response:
            return json.load(response)

    def alive_workers(self) -> int:
        return sum(worker["state"] == "ALIVE" for worker in self.state()["workers"])


def _start(root: Path, name: str, arguments: list[str], environment: dict[str, str]):
    log = (root / f"{name}.log").open("ab")
    spark_class = Path(_find_spark_home()) / "bin" / "spark-class"
    return subprocess.Popen(
        [str(spark_class), *arguments],
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C in a shell running the cluster reaches only this module
    )


def _worker_environment(folder: Path) -> dict[str, str]:
    """A worker's own home, temporary, Keras and scratch folders (its executors inherit them)."""
    own = {
        "HOME": folder / "home",
        "TMPDIR": folder / "tmp",
        "KERAS_HOME": folder / "keras",
        "SPARK_WORKER_DIR": folder / "work",
        "SPARK_LOCAL_DIRS": folder / "local",
    }
    for path in own.values():
        path.mkdir(parents=True, exist_ok=True)
    return {name: str(path) for name, path in own.items()}


@contextmanager
def standalone_cluster(
    root: Path,
    workers: int = 2,
    cores: int = 1,
    memory: str = "2g",
    start_timeout: float = 120,
) -> Iterator[StandaloneCluster]:
    """Starts a master and ``workers`` workers (``cores`` cores and ``memory`` each) under
    ``root`` (logs, and one folder per worker), waits until every worker has registered, and
    stops them all when the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    port, web_port = _free_port(), _free_port()
    # The daemons themselves need little: the executors get spark.executor.memory.
    environment = {**os.environ, "SPARK_DAEMON_MEMORY": "512m"}
    cluster = StandaloneCluster(f"spark://{HOST}:{port}", f"http://{HOST}:{web_port}", root)
    with ExitStack() as stack:
        stack.callback(_stop, cluster)
        cluster.processes.append(
            _start(
                root,
                "master",
                [
                    "org.apache.spark.deploy.master.Master",
                    *("--host", HOST, "--port", str(port), "--webui-port", str(web_port)),
                ],
                environment,
            )
        )
        for index in range(workers):
            folder = root / f"worker-{index + 1}"
            own = _worker_environment(folder)
            cluster.processes.append(
                _start(
                    root,
                    f"worker-{index + 1}",
                    [
                        "org.apache.spark.deploy.worker.Worker",
                        *("--host", HOST, "--cores", str(cores), "--memory", memory),
                        *("--work-dir", own["SPARK_WORKER_DIR"], "--webui-port", "0"),
                        cluster.master_url,
                    ],
                    {**environment, **own},
                )
            )
        _wait_for_workers(cluster, workers, start_timeout)
        yield cluster


def _wait_for_workers(cluster: StandaloneCluster, workers: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in cluster.processes):
            break
        try:
            if cluster.alive_workers() == workers:
                return
        except OSError:  # the master's UI is not up yet
            pass
        time.sleep(0.5)
    raise RuntimeError(
        f"the standalone cluster did not start {workers} workers in {timeout:.0f} s: "
        f"see the logs in {cluster.root}"
    )


def _stop(cluster: StandaloneCluster) -> None:
    for process in reversed(cluster.processes):  # workers (and their executors) first
        if process.poll() is None:
            process.terminate()
    for process in cluster.processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1, help="cores per worker")
    parser.add_argument("--memory", default="2g", help="memory per worker")
    parser.add_argument("--root", type=Path, default=Path("data/spark-cluster"))
    args = parser.parse_args(argv)
    # `kill` stops the cluster too (the JVMs run in their own sessions).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with standalone_cluster(args.root, args.workers, args.cores, args.memory) as cluster:
        print(f"Spark master {cluster.master_url} (UI {cluster.web_url}), logs in {args.root}")
        print(f"Run: kedro run --params spark_master={cluster.master_url}")
        try:
            while all(process.poll() is None for process in cluster.processes):
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
