"""Files to S3 through s3fs: the input images, and a release: the wheel, its wheelhouse, the
conf archive, the bootstrap action and the exported feature extractor."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from importlib.resources import files
from pathlib import Path
from typing import Any

import fsspec
from packaging.utils import canonicalize_name

from fruits_pipeline.emr.cluster import (
    CONF_ARCHIVE,
    WHEELHOUSE_REQUIREMENTS,
    Release,
    wheel_name,
)

# Amazon Linux 2023, the system of every EMR 7 release, has glibc 2.34: a wheel built for any
# manylinux up to that runs there.
CLUSTER_GLIBC_MINOR = 34
# The oldest manylinux pip can tag per architecture (manylinux1 = 2.5; aarch64 began at 2.17).
_OLDEST_GLIBC_MINOR = {"x86_64": 5, "aarch64": 17}


class ReleaseNotFoundError(FileNotFoundError):
    """A release file is missing locally (not packaged) or on S3 (not uploaded)."""


def _s3(uri: str, fs_args: dict[str, Any]) -> tuple[Any, str]:
    # s3a:// (Spark's scheme) and s3:// both map to s3fs; ``fs_args``: the environment's
    # s3fs_args (globals.yml), its encryption included, as the catalog's small files have.
    return fsspec.core.url_to_fs(uri, **fs_args)


def upload_images(source: Path, target_uri: str, fs_args: dict[str, Any]) -> tuple[int, int]:
    """Copies every file under ``source`` to ``target_uri``, keeping the class folders; a file
    already there with the same size is skipped. Returns (uploaded, skipped)."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder of images (one sub-folder per class).")
    filesystem, root = _s3(target_uri, fs_args)
    root = root.rstrip("/")
    existing = {
        path: info["size"]
        for path, info in filesystem.find(root, detail=True).items()
        if info.get("type") == "file"
    }
    targets = {
        path: f"{root}/{path.relative_to(source).as_posix()}"
        for path in sorted(source.rglob("*"))
        if path.is_file()
    }
    to_upload = {
        str(path): target
        for path, target in targets.items()
        if existing.get(target) != path.stat().st_size
    }
    if to_upload:
        # One call with lists: s3fs uploads them concurrently.
        filesystem.put(list(to_upload), list(to_upload.values()))
    return len(to_upload), len(targets) - len(to_upload)


def release_files(dist: Path, version: str) -> tuple[Path, Path]:
    """The wheel and conf archive `kedro package` wrote to ``dist`` for this version."""
    wheel, conf = dist / wheel_name(version), dist / CONF_ARCHIVE
    for path in (wheel, conf):
        if not path.is_file():
            raise ReleaseNotFoundError(
                f"{path} is missing: build the release with `kedro package` first."
            )
    return wheel, conf


def manylinux_platforms(architecture: str) -> list[str]:
    """pip's platform tags of every manylinux wheel the cluster's glibc runs."""
    oldest = _OLDEST_GLIBC_MINOR[architecture]
    return [
        f"manylinux_2_{minor}_{architecture}" for minor in range(oldest, CLUSTER_GLIBC_MINOR + 1)
    ]


def _pip(*arguments: str) -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "pip", *arguments], capture_output=True, text=True, check=False
    )
    if ran.returncode != 0:
        raise RuntimeError(f"pip {arguments[0]} failed:\n{ran.stdout[-2000:]}{ran.stderr[-3000:]}")


def _tested_versions(project: str) -> str:
    """Constraints pinning every installed distribution but the project to its version here:
    the cluster gets the versions the tests ran with."""
    own = canonicalize_name(project)
    pins = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if dist.metadata["Name"] and canonicalize_name(dist.metadata["Name"]) != own
    }
    return "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def build_wheelhouse(
    wheel: Path, extras: list[str], python: str, architecture: str, target: Path
) -> list[Path]:
    """Every wheel the cluster's nodes install, for one CPU architecture and Python version
    (``python``: e.g. "3.11"), into ``target``, with pip's own and a requirements list:
    ``pip download --only-binary=:all: --platform manylinux... --python-version ...``.

    The versions are those installed here (constraints). A dependency published only as a
    source archive (``docopt``, which ``hdfs`` needs) is first built into a wheel here by
    ``pip wheel``; one that is not pure Python then finds no wheel for the cluster, and the
    download fails naming it.
    """
    requirement = f"{wheel}[{','.join(extras)}]" if extras else str(wheel)
    with tempfile.TemporaryDirectory() as scratch:
        constraints = Path(scratch) / "constraints.txt"
        constraints.write_text(_tested_versions(wheel.name.split("-")[0]))
        built = Path(scratch) / "built"
        # Wheels for this machine, sources built: the pure-Python ones serve the cluster too.
        _pip("wheel", "-q", "-c", str(constraints), "-w", str(built), requirement, "pip")
        platforms = [
            arg for tag in manylinux_platforms(architecture) for arg in ("--platform", tag)
        ]
        _pip(
            "download",
            "-q",
            "--only-binary=:all:",
            *platforms,
            "--python-version",
            python,
            "--implementation",
            "cp",
            "-c",
            str(constraints),
            "--find-links",
            str(built),
            "-d",
            str(target),
            requirement,
            "pip",
        )
    wheels = sorted(target.glob("*.whl"))
    (target / WHEELHOUSE_REQUIREMENTS).write_text("".join(f"{path.name}\n" for path in wheels))
    return wheels


def upload_release(
    project: Path,
    dist: Path,
    release_uri: str,
    version: str,
    *,
    wheelhouses: dict[str, Path],
    feature_extractor: bytes,
    fs_args: dict[str, Any],
) -> Release:
    """Uploads the wheel, the conf archive, pyproject.toml, the bootstrap script, the exported
    feature extractor and the wheelhouses (by architecture) under ``release_uri``."""
    wheel, conf = release_files(dist, version)
    release = Release.at(release_uri, version)
    filesystem, _ = _s3(release_uri, fs_args)
    bootstrap = files("fruits_pipeline.emr").joinpath("bootstrap.sh").read_bytes()
    for architecture, folder in wheelhouses.items():
        target = release.wheelhouse(architecture)
        if filesystem.exists(target):
            filesystem.rm(target, recursive=True)  # no wheel of an older release stays
        local = sorted(str(path) for path in folder.iterdir())
        filesystem.put(local, [f"{target}/{Path(path).name}" for path in local])
    filesystem.put_file(str(wheel), release.wheel_uri)
    filesystem.put_file(str(conf), release.conf_uri)
    filesystem.put_file(str(project / "pyproject.toml"), release.pyproject_uri)
    filesystem.pipe_file(release.feature_extractor_uri, feature_extractor)
    filesystem.pipe_file(release.bootstrap_uri, bootstrap)
    return release


def check_release(release: Release, architectures: list[str]) -> None:
    """Fails when a file of the release is not on S3, before a cluster or step is requested."""
    filesystem, _ = _s3(release.wheel_uri, {})
    for uri in release.uris(architectures):
        if not filesystem.exists(uri):
            raise ReleaseNotFoundError(
                f"{uri} is not on S3: run `kedro package` then `kedro emr upload-release` "
                "(same FRUITS_S3_BUCKET/FRUITS_S3_PREFIX) first."
            )
