"""Files to S3 through s3fs: the input images, and a release (wheel, conf archive, bootstrap)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import fsspec

from fruits_pipeline.emr.cluster import CONF_ARCHIVE, Release, wheel_name

# Every object this module writes asks S3 for server-side encryption (SSE-S3).
SSE_S3 = {"s3_additional_kwargs": {"ServerSideEncryption": "AES256"}}


class ReleaseNotFoundError(FileNotFoundError):
    """A release file is missing locally (not packaged) or on S3 (not uploaded)."""


def _s3(uri: str) -> tuple[Any, str]:
    # s3a:// (Spark's scheme) and s3:// both map to s3fs.
    return fsspec.core.url_to_fs(uri, **SSE_S3)


def upload_images(source: Path, target_uri: str) -> tuple[int, int]:
    """Copies every file under ``source`` to ``target_uri``, keeping the class folders; a file
    already there with the same size is skipped. Returns (uploaded, skipped)."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder of images (one sub-folder per class).")
    filesystem, root = _s3(target_uri)
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


def upload_release(project: Path, dist: Path, release_uri: str, version: str) -> Release:
    """Uploads the wheel, the conf archive, pyproject.toml and the bootstrap script under
    ``release_uri``."""
    wheel, conf = release_files(dist, version)
    release = Release.at(release_uri, version)
    filesystem, _ = _s3(release_uri)
    bootstrap = files("fruits_pipeline.emr").joinpath("bootstrap.sh").read_bytes()
    filesystem.put_file(str(wheel), release.wheel_uri)
    filesystem.put_file(str(conf), release.conf_uri)
    filesystem.put_file(str(project / "pyproject.toml"), release.pyproject_uri)
    filesystem.pipe_file(release.bootstrap_uri, bootstrap)
    return release


def check_release(release: Release) -> None:
    """Fails when a file of the release is not on S3, before a cluster or step is requested."""
    filesystem, _ = _s3(release.wheel_uri)
    for uri in release.uris():
        if not filesystem.exists(uri):
            raise ReleaseNotFoundError(
                f"{uri} is not on S3: run `kedro package` then `kedro emr upload-release` "
                "(same FRUITS_S3_BUCKET/FRUITS_S3_PREFIX) first."
            )
