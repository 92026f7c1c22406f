"""The app's files (what embeds or classifies one photo without Spark) as consistent sets, in
a plain folder: the embedding set (``app_files.json``) and the classifier set
(``classifier_files.json``), each with its own manifest.

A run writes each file to a temporary name and moves it into place, then writes the manifest
``app_files.json`` last: the sha256 of every file of the set. A reader reads the manifest, the
files, then the manifest again, and takes the set only if every file has its manifest's hash
and the manifest did not change meanwhile; otherwise a run is writing the folder, and the reader
tries again. So a reader never gets a mix of two runs' files, and the files keep their plain
names (``fruits-features --models data/06_models``, an app bundling the folder).

No Kedro, Spark or TensorFlow here: ``fruits-features`` reads the set with it.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import fsspec
import numpy as np

MANIFEST = "app_files.json"
# The set, by name: `kedro run` writes them (export_embedding), fruits-features reads them.
FEATURE_EXTRACTOR = "feature_extractor.tflite"
PCA_PROJECTION = "pca_projection.npz"
EMBEDDER = "fruits_embedder.tflite"
# The classifier set, by name: `kedro run` writes them (the classification pipeline),
# `fruits-features --classify` reads them.
CLASSIFIER_MANIFEST = "classifier_files.json"
CLASSIFIER = "fruits_classifier.tflite"
LABELS = "labels.txt"
SIMILAR_PHOTOS = "similar_photos.npz"

_READ_ATTEMPTS = 5


class AppFilesError(ValueError):
    """The folder holds no complete set of the app's files."""


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Named arrays as one ``.npz`` file (plain arrays, no pickle)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_arrays(content: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(content), allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}


def write_app_files(
    filesystem: fsspec.AbstractFileSystem,
    folder: str,
    files: dict[str, bytes],
    manifest_name: str = MANIFEST,
) -> None:
    """Writes ``files`` (name -> content) into ``folder``, then their manifest; a file whose
    content the folder already holds is not written again, and the earlier set's files that
    ``files`` lacks are removed once the manifest no longer names them."""
    filesystem.makedirs(folder, exist_ok=True)
    manifest = {"files": {name: _sha256(content) for name, content in files.items()}}
    written = _manifest_hashes(filesystem, f"{folder}/{manifest_name}")
    changed = [
        (name, content)
        for name, content in files.items()
        if written.get(name) != manifest["files"][name]
        or not _holds(filesystem, f"{folder}/{name}", written[name])
    ]
    for name, content in [*changed, (manifest_name, json.dumps(manifest, indent=2).encode())]:
        staged = f"{folder}/{name}.partial"
        filesystem.pipe_file(staged, content)
        filesystem.mv(staged, f"{folder}/{name}")
    # Files of the earlier set that this one no longer has (a classifier a run skipped): gone,
    # so that nothing in the folder looks current that the manifest does not name.
    for name in written.keys() - files.keys():
        if filesystem.exists(f"{folder}/{name}"):
            filesystem.rm_file(f"{folder}/{name}")


def _holds(filesystem: fsspec.AbstractFileSystem, path: str, digest: str) -> bool:
    try:
        return _sha256(filesystem.cat_file(path)) == digest
    except FileNotFoundError:
        return False


def _manifest_hashes(filesystem: fsspec.AbstractFileSystem, path: str) -> dict[str, str]:
    try:
        return json.loads(filesystem.cat_file(path))["files"]
    except FileNotFoundError:
        return {}


def read_app_files(
    filesystem: fsspec.AbstractFileSystem, folder: str, manifest_name: str = MANIFEST
) -> dict[str, bytes]:
    """Every file of the set in ``folder``, as one run wrote them."""
    root = folder.rstrip("/")
    for attempt in range(_READ_ATTEMPTS):
        try:
            manifest = filesystem.cat_file(f"{root}/{manifest_name}")
        except FileNotFoundError:
            raise AppFilesError(
                f"{folder} holds no {manifest_name}: run `kedro run` first (it writes the app's "
                "files into data/06_models/), or point --models at a folder that holds them."
            ) from None
        hashes = json.loads(manifest)["files"]
        try:
            files = {name: filesystem.cat_file(f"{root}/{name}") for name in hashes}
        except FileNotFoundError:
            files = {}
        if (
            files
            and all(_sha256(files[name]) == digest for name, digest in hashes.items())
            and filesystem.cat_file(f"{root}/{manifest_name}") == manifest
        ):
            return files
        time.sleep(0.2 * (attempt + 1))  # a run is writing the set: read it once it is whole
    raise AppFilesError(
        f"The app's files in {folder} do not match their {manifest_name} (a run is writing "
        "them, or a file was changed by hand): read them again once the run has ended, or run "
        "`kedro run` again."
    )
