"""One photo at a time, for the app: the models folder a run leaves embeds photos without Spark
or TensorFlow, into the coordinates of the pipeline's CSV."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fruits_pipeline import mobilenet_v2
from fruits_pipeline.embedding import embed_photos
from tests.conftest import committed

pytestmark = pytest.mark.pipeline

TOLERANCE = 1e-4


def _pipeline_csv(project: Path) -> pd.DataFrame:
    folder = committed(project / "data" / "07_model_output" / "pca_features.csv")
    csv = pd.concat([pd.read_csv(part) for part in sorted(folder.glob("part-*.csv"))])
    return csv.set_index("path").sort_index()


def _components(table: pd.DataFrame) -> list[str]:
    return [column for column in table.columns if column.startswith("pc_")]


def _fruits_features(project: Path, *args: str) -> subprocess.CompletedProcess:
    """The console script in a fresh process, run from the project root as a user would."""
    executable = Path(sys.executable).parent / "fruits-features"
    return subprocess.run(
        [str(executable), *args], cwd=project, capture_output=True, text=True, check=False
    )


def test_the_console_script_gives_the_pipelines_csv_rows(finished_run, small_image_set):
    expected = _pipeline_csv(finished_run)
    folder = small_image_set / "Training" / "Banana Red"
    single = next(iter(sorted((small_image_set / "Training" / "Avocado").glob("*.jpg"))))
    result = _fruits_features(finished_run, str(folder), str(single))
    assert result.returncode == 0, result.stderr
    actual = pd.read_csv(io.StringIO(result.stdout)).set_index("path").sort_index()
    assert list(actual.columns) == ["label", *_components(expected)]
    assert len(actual) == len(list(folder.glob("*.jpg"))) + 1
    assert (actual["label"] == expected.loc[actual.index, "label"]).all()
    difference = actual[_components(expected)] - expected.loc[actual.index, _components(expected)]
    assert np.abs(difference.to_numpy()).max() <= TOLERANCE


def test_the_python_function_and_the_out_file_agree(finished_run, small_image_set, tmp_path):
    expected = _pipeline_csv(finished_run)
    photos = sorted((small_image_set / "Training" / "Tomato Heart").glob("*.jpg"))[:3]
    table = embed_photos(photos, finished_run / "data" / "06_models").set_index("path")
    difference = table[_components(expected)] - expected.loc[table.index, _components(expected)]
    assert np.abs(difference.to_numpy()).max() <= TOLERANCE
    out = tmp_path / "features.csv"
    result = _fruits_features(finished_run, *map(str, photos), "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = pd.read_csv(out).set_index("path")
    np.testing.assert_allclose(
        written.loc[table.index, _components(expected)], table[_components(expected)]
    )


def test_the_apps_embedder_alone_gives_the_csv_coordinates(finished_run, small_image_set):
    expected = _pipeline_csv(finished_run)
    embedder = mobilenet_v2.FeatureExtractor(
        (finished_run / "data" / "06_models" / "fruits_embedder.tflite").read_bytes(), threads=1
    )
    photos = sorted(small_image_set.rglob("*.jpg"))[::7]
    images = np.stack([mobilenet_v2.decode_image(path.read_bytes(), 10**6) for path in photos])
    coordinates = embedder(images)
    reference = expected.loc[[f"file:{path}" for path in photos], _components(expected)]
    assert coordinates.shape == reference.shape
    assert np.abs(coordinates - reference.to_numpy()).max() <= TOLERANCE


def test_embedding_imports_neither_spark_nor_tensorflow(finished_run, small_image_set):
    photo = next(small_image_set.rglob("*.jpg"))
    script = (
        "import sys\n"
        "from fruits_pipeline.embedding import embed_photos\n"
        f"table = embed_photos([{str(photo)!r}], 'data/06_models')\n"
        "print(len(table), sorted({m.split('.')[0] for m in sys.modules} & "
        "{'pyspark', 'tensorflow', 'keras', 'kedro'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=finished_run,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.strip() == "1 []", result.stderr


def test_bad_photos_and_a_missing_models_folder_are_short_errors(finished_run, tmp_path):
    broken = tmp_path / "Banana" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"not a jpeg")
    result = _fruits_features(finished_run, str(broken.parent))
    assert result.returncode == 1
    assert f"skipped {broken}: cannot decode image" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.splitlines()[0].startswith("path,label,pc_001")

    result = _fruits_features(tmp_path, str(broken))
    assert result.returncode == 2
    assert "holds no app_files.json: run `kedro run` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_reader_never_mixes_the_app_files_of_two_runs(tmp_path):
    """Runs rewrite the set while a reader reads it: each read is one run's set, whole."""
    from fsspec.implementations.local import LocalFileSystem

    from fruits_pipeline.app_files import AppFilesError, read_app_files, write_app_files

    folder, names = str(tmp_path / "models"), ["a.tflite", "b.npz", "c.tflite"]
    write_app_files(LocalFileSystem(), folder, {name: b"run 0" for name in names})
    writing, written = threading.Event(), []

    def runs() -> None:
        run = 1
        while not writing.is_set():
            write_app_files(LocalFileSystem(), folder, {name: b"run %d" % run for name in names})
            written.append(run)
            run += 1
            time.sleep(0.01)

    writer = threading.Thread(target=runs)
    writer.start()
    sets, deadline = [], time.monotonic() + 60
    try:
        # At least 200 reads, and at least three runs written meanwhile (a busy machine may
        # give the writer's thread little time).
        while (len(sets) < 200 or len(written) < 3) and time.monotonic() < deadline:
            sets.append(set(read_app_files(LocalFileSystem(), folder).values()))
    finally:
        writing.set()
        writer.join()
    assert all(len(files) == 1 for files in sets), [files for files in sets if len(files) > 1]
    assert len({next(iter(files)) for files in sets}) > 1, "the reads saw the runs go by"

    (tmp_path / "models" / "b.npz").write_bytes(b"changed by hand")
    with pytest.raises(AppFilesError, match="do not match their app_files"):
        read_app_files(LocalFileSystem(), folder)
