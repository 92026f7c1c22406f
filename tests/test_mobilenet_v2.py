"""The model-specific module: preprocessing and where the weights come from."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fruits_pipeline import mobilenet_v2
from fruits_pipeline.projection import Projection


def _jpeg_bytes(path: Path) -> bytes:
    return path.read_bytes()


def test_decode_resizes_real_image_to_224_rgb(sample_images):
    image_path = next((sample_images / "Training" / "Banana Red").glob("*.jpg"))
    decoded = mobilenet_v2.decode_image(_jpeg_bytes(image_path), max_pixels=10**6)
    assert decoded.shape == (224, 224, 3)
    assert decoded.dtype == np.uint8
    with Image.open(image_path) as original:
        expected = np.asarray(original.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(decoded, expected)


def test_preprocess_scales_to_minus_one_one_as_mobilenet_v2_expects():
    pixels = np.array([[[[0, 127, 255]]]], dtype=np.uint8)
    scaled = mobilenet_v2.preprocess(pixels)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[[[-1.0, 127 / 127.5 - 1.0, 1.0]]]], atol=1e-7)


def test_preprocess_is_bit_for_bit_keras_preprocess_input():
    from keras.applications.mobilenet_v2 import preprocess_input

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    np.testing.assert_array_equal(
        mobilenet_v2.preprocess(pixels), preprocess_input(pixels.astype(np.float32))
    )


def _decoded(sample_images: Path, count: int) -> np.ndarray:
    paths = sorted(sample_images.rglob("*.jpg"))[:: 2018 // count][:count]
    return np.stack(
        [mobilenet_v2.decode_image(path.read_bytes(), max_pixels=10**6) for path in paths]
    )


def test_the_exported_litert_model_gives_the_features_of_keras(sample_images, weights_file):
    weights = mobilenet_v2.resolve_weights(str(weights_file))
    keras_model = mobilenet_v2.load_feature_extractor(weights)
    extractor = mobilenet_v2.FeatureExtractor(mobilenet_v2.export_litert(weights), threads=1)
    images = _decoded(sample_images, 7)
    expected = np.asarray(keras_model.predict_on_batch(mobilenet_v2.preprocess(images)))
    # Batches of changing sizes, as the end of a partition gives: the buffers follow.
    for batch in (images[:5], images[5:], images):
        features = extractor(batch)
        assert features.shape == (len(batch), mobilenet_v2.FEATURE_DIM)
        assert features.dtype == np.float32
    np.testing.assert_allclose(
        np.concatenate([extractor(images[:5]), extractor(images[5:])]), expected, atol=1e-4
    )


def test_litert_export_is_cached_by_weights_and_read_back(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    weights = mobilenet_v2.resolve_weights(str(weights_file))
    cached = mobilenet_v2.litert_cache_path(weights)
    assert cached.is_relative_to(tmp_path / "keras" / "models")
    assert weights.sha256[:16] in cached.name
    mobilenet_v2.export_litert.cache_clear()
    exported = mobilenet_v2.export_litert(weights)
    assert cached.read_bytes() == exported
    assert [path.name for path in cached.parent.iterdir()] == [cached.name], "no staging left"

    def no_keras(_):
        raise AssertionError("a cached export must not rebuild the Keras model")

    monkeypatch.setattr(mobilenet_v2, "load_feature_extractor", no_keras)
    mobilenet_v2.export_litert.cache_clear()
    assert mobilenet_v2.export_litert(weights) == exported
    mobilenet_v2.export_litert.cache_clear()


@pytest.fixture
def model_file(weights_file, tmp_path) -> Path:
    """The exported LiteRT model as a file, for a fresh process to read as a worker would."""
    weights = mobilenet_v2.resolve_weights(str(weights_file))
    model_file = tmp_path / "model.tflite"
    model_file.write_bytes(mobilenet_v2.export_litert(weights))
    return model_file


def _in_a_fresh_process(script: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_workers_run_the_model_without_importing_tensorflow(sample_images, model_file, tmp_path):
    np.save(tmp_path / "images.npy", _decoded(sample_images, 2))
    # What a Spark Python worker runs: the featurization module and the extractor.
    output = _in_a_fresh_process(
        "import sys, numpy as np\n"
        "from fruits_pipeline.pipelines.featurization import nodes\n"
        "from fruits_pipeline.mobilenet_v2 import FeatureExtractor\n"
        f"model = open({str(model_file)!r}, 'rb').read()\n"
        f"images = np.load({str(tmp_path / 'images.npy')!r})\n"
        "features = FeatureExtractor(model, threads=1)(images)\n"
        "print(features.shape, sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras')))\n"
    )
    assert output == "(2, 1280) []"


def test_a_workers_model_is_left_out_of_the_collection_after_each_task(model_file):
    # As in a Spark Python worker: PySpark's daemon calls gc.collect() after every task, which
    # must not scan the imports' and the model's objects again.
    output = _in_a_fresh_process(
        "import gc, types\n"
        "from fruits_pipeline.pipelines.featurization import nodes\n"
        "settings = nodes.WorkerSettings('sha', 32, 50_000_000, 1, 5.0)\n"
        f"model = types.SimpleNamespace(value=open({str(model_file)!r}, 'rb').read())\n"
        "before = gc.get_freeze_count()\n"
        "nodes._worker_model(model, settings)\n"
        "print(before, gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    frozen_before, frozen_after, still_collected = map(int, output.split())
    assert frozen_before == 0
    assert frozen_after > 10_000 > 100 * still_collected


def test_grayscale_and_transparent_images_become_rgb():
    gray = io.BytesIO()
    Image.new("L", (30, 40), 128).save(gray, format="PNG")
    decoded = mobilenet_v2.decode_image(gray.getvalue(), max_pixels=10**6)
    assert decoded.shape == (224, 224, 3)
    assert (decoded == 128).all()

    transparent = io.BytesIO()
    Image.new("RGBA", (10, 10), (255, 0, 0, 0)).save(transparent, format="PNG")
    decoded = mobilenet_v2.decode_image(transparent.getvalue(), max_pixels=10**6)
    assert (decoded == 255).all(), "fully transparent pixels are composited onto white"


def test_undecodable_bytes_raise_a_decode_error_with_the_reason():
    with pytest.raises(mobilenet_v2.ImageDecodeError, match="empty file"):
        mobilenet_v2.decode_image(b"", max_pixels=10**6)
    with pytest.raises(mobilenet_v2.ImageDecodeError, match="cannot decode image"):
        mobilenet_v2.decode_image(b"not an image at all", max_pixels=10**6)


def test_pixel_guard_refuses_huge_images_before_decoding():
    big = io.BytesIO()
    Image.new("RGB", (3000, 2000)).save(big, format="JPEG")
    with pytest.raises(mobilenet_v2.ImageDecodeError, match="decompression-bomb guard"):
        mobilenet_v2.decode_image(big.getvalue(), max_pixels=5_000_000)


def test_weights_from_a_path_carry_source_and_sha256(weights_file):
    weights = mobilenet_v2.resolve_weights(str(weights_file))
    assert weights.source == str(weights_file)
    assert weights.local_path == str(weights_file)
    assert len(weights.sha256) == 64
    model = mobilenet_v2.load_feature_extractor(weights)
    assert model.output_shape == (None, mobilenet_v2.FEATURE_DIM)


def test_weights_from_a_uri_are_copied_once_into_keras_cache(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    import fsspec

    with fsspec.open(f"memory://weights/{weights_file.name}", "wb") as remote:
        remote.write(weights_file.read_bytes())
    weights = mobilenet_v2.resolve_weights(f"memory://weights/{weights_file.name}")
    local = Path(weights.local_path)
    assert local.name == weights_file.name, "the suffix tells Keras the format: keep the name"
    assert local.is_relative_to(tmp_path / "keras" / "models")
    assert weights.sha256 == mobilenet_v2.resolve_weights(str(weights_file)).sha256
    fsspec.filesystem("memory").rm(f"/weights/{weights_file.name}")
    assert mobilenet_v2.resolve_weights(f"memory://weights/{weights_file.name}") == weights


def _legacy_h5_copy(weights_file: Path, target: Path) -> Path:
    """The shared weights in Keras' legacy .h5 layout, as the official ImageNet file is."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    model = mobilenet_v2.build_architecture()
    model.load_weights(str(weights_file))
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(target, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    return target


def test_imagenet_uses_keras_cache_under_keras_home(weights_file, tmp_path):
    keras_home = tmp_path / "keras"
    legacy_file = _legacy_h5_copy(
        weights_file, keras_home / "models" / mobilenet_v2.IMAGENET_WEIGHTS_FILE
    )
    # A fresh interpreter, so that Keras reads KERAS_HOME at import as it does for a user.
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fruits_pipeline.mobilenet_v2 import resolve_weights; "
            "w = resolve_weights('imagenet'); print(w.local_path); print(w.sha256)",
        ],
        env={**os.environ, "KERAS_HOME": str(keras_home)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == [str(legacy_file), mobilenet_v2.resolve_weights(str(legacy_file)).sha256]


def test_legacy_h5_layout_loads_the_same_weights(weights_file, tmp_path):
    legacy_file = _legacy_h5_copy(weights_file, tmp_path / "legacy" / "mobilenet_v2_no_top.h5")
    legacy = mobilenet_v2.load_feature_extractor(mobilenet_v2.resolve_weights(str(legacy_file)))
    reference = mobilenet_v2.load_feature_extractor(mobilenet_v2.resolve_weights(str(weights_file)))
    for mine, theirs in zip(legacy.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_missing_weights_say_what_is_missing_and_both_ways_to_provide_them(tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(mobilenet_v2.WeightsUnavailableError) as raised:
        mobilenet_v2.resolve_weights(str(missing))
    message = str(raised.value)
    assert str(missing) in message
    assert "$KERAS_HOME/models/" in message
    assert mobilenet_v2.IMAGENET_WEIGHTS_FILE in message
    assert "--params featurization.weights=" in message


def test_imagenet_without_cache_or_network_fails_with_the_same_guidance(tmp_path, monkeypatch):
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path))
    # An address nothing listens on: the download fails at once, as it does on an offline machine.
    monkeypatch.setattr(mobilenet_v2, "IMAGENET_WEIGHTS_URL", "http://127.0.0.1:9/none.h5")
    with pytest.raises(
        mobilenet_v2.WeightsUnavailableError, match=r"featurization\.weights='imagenet'"
    ):
        mobilenet_v2.resolve_weights("imagenet")


def test_weights_of_another_architecture_are_refused(tmp_path):
    import keras

    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / "other.weights.h5"
    other.save_weights(str(path))
    with pytest.raises(mobilenet_v2.WeightsUnavailableError, match="is not a MobileNetV2"):
        mobilenet_v2.load_feature_extractor(mobilenet_v2.resolve_weights(str(path)))


def test_corrupt_weights_file_is_refused(weights_file, tmp_path):
    corrupt = tmp_path / "corrupt.weights.h5"
    shutil.copyfile(weights_file, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:4096])
    with pytest.raises(mobilenet_v2.WeightsUnavailableError, match="is not a MobileNetV2"):
        mobilenet_v2.load_feature_extractor(mobilenet_v2.resolve_weights(str(corrupt)))


def test_an_exported_model_is_taken_as_weights_and_another_model_is_refused(
    model_file, sample_images, tmp_path
):
    model = mobilenet_v2.load_feature_model(str(model_file))
    assert model.litert == model_file.read_bytes()
    assert model.id == model.weights.sha256  # the file itself names the rows it featurizes
    # The app's embedder made from it (a projection appended, no TensorFlow) gives the
    # projected features; as weights, it is refused: it does not output 1280 features.
    rng = np.random.default_rng(7)
    mean, scale = rng.normal(size=1280), rng.uniform(0.5, 2.0, size=1280)
    components = rng.normal(size=(1280, 5)) / 40
    embedder = tmp_path / "embedder.tflite"
    projection = Projection(mean, scale, components)
    embedder.write_bytes(mobilenet_v2.export_embedder(model.litert, projection))
    photos = sorted((sample_images / "Training" / "Banana Red").glob("*.jpg"))[:3]
    images = np.stack([mobilenet_v2.decode_image(path.read_bytes(), 10**6) for path in photos])
    features = mobilenet_v2.FeatureExtractor(model.litert, threads=1)(images)
    expected = ((features.astype(np.float64) - mean) * scale) @ components
    projected = mobilenet_v2.FeatureExtractor(embedder.read_bytes(), threads=1)(images)
    assert np.abs(projected - expected).max() <= 1e-4
    with pytest.raises(mobilenet_v2.WeightsUnavailableError, match=r"not this project's"):
        mobilenet_v2.load_feature_model(str(embedder))
