"""One photo at a time, for the app: the pipeline's coordinates of a photo, which fruit it is
and which stored photos look like it, without Spark, TensorFlow or Kedro, from the files the
pipeline writes into its models folder.

``fruits-features PATH... [--models DIR] [--out FILE.csv]`` prints (or writes) the same
``path,label,pc_001...pc_k`` rows as the pipeline's CSV; ``embed_photos`` returns them.
``fruits-features PATH... --classify [--similar N]`` prints ``path,predicted_label,probability``
(and ``similar_1...similar_N``, paths of the store's photos, nearest first);
``classify_photos`` returns them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
from PIL import Image

from fruits_pipeline import app_files, mobilenet_v2
from fruits_pipeline.projection import Projection
from fruits_pipeline.similar_photos import SimilarPhotos

# Where `kedro run` writes the models (conf/base/catalog.yml), from the project root.
DEFAULT_MODELS_DIR = Path("data") / "06_models"
BATCH_SIZE = 32


class PhotoEmbedder:
    """The LiteRT feature extractor and the scaler + PCA(k) arrays of a models folder, both
    of one run (``app_files``)."""

    def __init__(self, models_dir: str | Path) -> None:
        files = app_files.read_app_files(*fsspec.core.url_to_fs(str(models_dir)))
        self._extractor = mobilenet_v2.FeatureExtractor(
            files[app_files.FEATURE_EXTRACTOR], threads=os.cpu_count() or 1
        )
        self._projection = Projection.from_arrays(
            app_files.npz_arrays(files[app_files.PCA_PROJECTION])
        )

    @property
    def k(self) -> int:
        return self._projection.k

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Coordinates (N, k) of decoded images (N, 224, 224, 3) uint8, as the pipeline
        computes them: in float64 from the float32 features."""
        return self._projection(self._extractor(images))


def _photo_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named, and the ``.jpg`` files under the folders named, sorted."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.jpg") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"No file or folder at {path}.")
    return files


def _refuse(path: Path, reason: str) -> None:
    raise ValueError(f"{path}: {reason}")


class PhotoClassifier:
    """The app's classifier set of a models folder (``app_files``): one LiteRT model that gives
    each photo's class probabilities and coordinates, its labels, and the store's coordinates
    for similar-photo search."""

    def __init__(self, models_dir: str | Path) -> None:
        files = app_files.read_app_files(
            *fsspec.core.url_to_fs(str(models_dir)), app_files.CLASSIFIER_MANIFEST
        )
        if app_files.CLASSIFIER not in files:
            raise app_files.AppFilesError(
                f"{models_dir} holds no {app_files.CLASSIFIER}: the last run trained no "
                "classifier (its run report says why: data/08_reporting/run_report.md)."
            )
        self._model = mobilenet_v2.FeatureExtractor(
            files[app_files.CLASSIFIER], threads=os.cpu_count() or 1
        )
        self.labels = files[app_files.LABELS].decode().splitlines()
        self.store = SimilarPhotos.from_arrays(
            app_files.npz_arrays(files[app_files.SIMILAR_PHOTOS])
        )

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class probabilities (N, classes) and coordinates (N, k) of decoded images."""
        probabilities, coordinates = self._model.outputs(images)
        return probabilities, coordinates


def _decoded_batches(
    files: list[Path], max_image_pixels: int, on_error: Callable[[Path, str], None]
) -> Iterator[tuple[list[Path], np.ndarray]]:
    """The photos that decode, BATCH_SIZE at a time, with their files; the others go to
    ``on_error`` with the reason."""
    for start in range(0, len(files), BATCH_SIZE):
        batch, images = [], []
        for file in files[start : start + BATCH_SIZE]:
            try:
                images.append(mobilenet_v2.decode_image(file.read_bytes(), max_image_pixels))
                batch.append(file)
            except mobilenet_v2.ImageDecodeError as error:
                on_error(file, str(error))
        if images:
            yield batch, np.stack(images)


def _pipeline_path(file: Path) -> str:
    """A local file's path as the pipeline writes it."""
    return f"file:{file.resolve()}"


def embed_photos(
    paths: Iterable[str | Path],
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    max_image_pixels: int = Image.MAX_IMAGE_PIXELS,
    on_error: Callable[[Path, str], None] = _refuse,
) -> pd.DataFrame:
    """``path, label, pc_001...pc_k`` of each photo (files, or folders of ``.jpg`` files), with
    the path written as the pipeline writes it (``file:/abs/path``) and the label its folder's
    name. A photo that cannot be decoded goes to ``on_error`` with the reason (by default a
    ValueError naming it) and gets no row."""
    embedder = PhotoEmbedder(models_dir)
    rows = []
    for batch, images in _decoded_batches(_photo_files(paths), max_image_pixels, on_error):
        rows += [
            [_pipeline_path(file), file.parent.name, *vector]
            for file, vector in zip(batch, embedder(images), strict=True)
        ]
    columns = ["path", "label"] + [f"pc_{i:03d}" for i in range(1, embedder.k + 1)]
    return pd.DataFrame(rows, columns=columns)


def classify_photos(
    paths: Iterable[str | Path],
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    similar: int = 0,
    max_image_pixels: int = Image.MAX_IMAGE_PIXELS,
    on_error: Callable[[Path, str], None] = _refuse,
) -> pd.DataFrame:
    """``path, predicted_label, probability`` of each photo, and with ``similar`` N > 0 also
    ``similar_1...similar_N``: the paths of the store's N photos most like it, nearest first.
    Photos that cannot be decoded go to ``on_error``, as in ``embed_photos``."""
    if similar < 0:
        raise ValueError(f"--similar takes a count of photos (>= 0), got {similar}.")
    classifier = PhotoClassifier(models_dir)
    labels = np.asarray(classifier.labels)
    rows = []
    for batch, images in _decoded_batches(_photo_files(paths), max_image_pixels, on_error):
        probabilities, coordinates = classifier(images)
        best = probabilities.argmax(axis=1)
        neighbours = (
            classifier.store.paths[classifier.store.nearest(coordinates, similar)]
            if similar
            else np.empty((len(batch), 0), dtype=str)
        )
        rows += [
            [_pipeline_path(file), label, float(probability), *found]
            for file, label, probability, found in zip(
                batch,
                labels[best],
                probabilities[np.arange(len(best)), best],
                neighbours,
                strict=True,
            )
        ]
    columns = ["path", "predicted_label", "probability"]
    columns += [f"similar_{i}" for i in range(1, min(similar, len(classifier.store.paths)) + 1)]
    return pd.DataFrame(rows, columns=columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fruits-features",
        description="The pipeline's PCA coordinates of photos, or their class and similar "
        "photos, without Spark or TensorFlow.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders")
    parser.add_argument(
        "--models",
        default=str(DEFAULT_MODELS_DIR),
        help="the pipeline's models folder (default: %(default)s, from the project root)",
    )
    parser.add_argument("--out", help="CSV file to write (default: standard output)")
    parser.add_argument(
        "--classify",
        action="store_true",
        help="write path,predicted_label,probability (the app's classifier) instead of pc_*",
    )
    parser.add_argument(
        "--similar",
        type=int,
        default=0,
        metavar="N",
        help="with --classify: also the paths of the store's N photos most like each photo",
    )
    args = parser.parse_args(argv)
    if args.similar and not args.classify:
        parser.error("--similar goes with --classify")
    failed: list[Path] = []

    def report(path: Path, reason: str) -> None:
        failed.append(path)
        print(f"fruits-features: skipped {path}: {reason}", file=sys.stderr)

    try:
        if args.classify:
            table = classify_photos(args.paths, args.models, args.similar, on_error=report)
        else:
            table = embed_photos(args.paths, args.models, on_error=report)
    except (FileNotFoundError, ValueError) as error:
        print(f"fruits-features: {error}", file=sys.stderr)
        return 2
    table.to_csv(args.out or sys.stdout, index=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
