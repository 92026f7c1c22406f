"""One photo at a time, for the app: the pipeline's coordinates of a photo without Spark or
TensorFlow, from the files the pipeline writes into its models folder.

``fruits-features PATH... [--models DIR] [--out FILE.csv]`` prints (or writes) the same
``path,label,pc_001...pc_k`` rows as the pipeline's CSV; ``embed_photos`` returns them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
from PIL import Image

from fruits_pipeline import app_files, mobilenet_v2
from fruits_pipeline.projection import Projection

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
    files = _photo_files(paths)
    rows = []
    for start in range(0, len(files), BATCH_SIZE):
        batch, images = [], []
        for file in files[start : start + BATCH_SIZE]:
            try:
                images.append(mobilenet_v2.decode_image(file.read_bytes(), max_image_pixels))
                batch.append(file)
            except mobilenet_v2.ImageDecodeError as error:
                on_error(file, str(error))
        coordinates = embedder(np.stack(images)) if images else np.empty((0, embedder.k))
        rows += [
            [f"file:{file.resolve()}", file.parent.name, *vector]
            for file, vector in zip(batch, coordinates, strict=True)
        ]
    columns = ["path", "label"] + [f"pc_{i:03d}" for i in range(1, embedder.k + 1)]
    return pd.DataFrame(rows, columns=columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fruits-features",
        description="The pipeline's PCA coordinates of photos, without Spark or TensorFlow.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photo files or folders")
    parser.add_argument(
        "--models",
        default=str(DEFAULT_MODELS_DIR),
        help="the pipeline's models folder (default: %(default)s, from the project root)",
    )
    parser.add_argument("--out", help="CSV file to write (default: standard output)")
    args = parser.parse_args(argv)
    failed: list[Path] = []

    def report(path: Path, reason: str) -> None:
        failed.append(path)
        print(f"fruits-features: skipped {path}: {reason}", file=sys.stderr)

    try:
        table = embed_photos(args.paths, args.models, on_error=report)
    except (FileNotFoundError, app_files.AppFilesError) as error:
        print(f"fruits-features: {error}", file=sys.stderr)
        return 2
    table.to_csv(args.out or sys.stdout, index=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
