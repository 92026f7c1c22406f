"""Everything specific to the MobileNetV2 feature extractor: weights, architecture, preprocessing,
and the runtime that applies it.

The Spark plumbing that applies it lives in ``pipelines/featurization``; this module knows nothing
of Spark, so the same functions serve the pipeline, the tests and the benchmark's plain-Python
reference.

The extractor is Keras' ``MobileNetV2`` (alpha 1.0) at 224x224, without its classification top and
with global average pooling: 1280 floats an image. Keras builds it and loads the weights; Keras'
own ``export(format="litert")`` turns it into a float32 LiteRT (TensorFlow Lite) model, which
is what runs on the images: LiteRT's XNNPACK kernels run it ~3.5 times faster per core than
TensorFlow does on CPU, with the same features (within 1e-4), and LiteRT imports in 0.1 s where
TensorFlow and Keras take ~9 s in every Spark Python worker. An exported model may also be given
instead of the weights: then neither TensorFlow nor Keras is needed at all (an EMR node).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageOps

from fruits_pipeline.errors import UserError
from fruits_pipeline.redaction import redact
from fruits_pipeline.run_info import library_versions

if TYPE_CHECKING:
    import keras

    from fruits_pipeline.projection import Projection

# Keep TensorFlow's C++ start-up chatter out of the pipeline's logs (it is set before TF loads).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

INPUT_SIZE = 224
# The exported models' layout, in their cache names: a change of it exports them again.
EXPORT_LAYOUT = "u8in"
FEATURE_DIM = 1280
IMAGENET = "imagenet"
# The suffix of an exported feature extractor given as featurization.weights.
LITERT_SUFFIX = ".tflite"

# The file and address Keras itself uses for MobileNetV2(alpha=1.0, 224, include_top=False):
# asking keras.utils.get_file for it goes through Keras' cache ($KERAS_HOME/models/) exactly as
# MobileNetV2(weights="imagenet") does.
IMAGENET_WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
    + IMAGENET_WEIGHTS_FILE
)


class WeightsUnavailableError(UserError, RuntimeError):
    """The MobileNetV2 weights named by ``featurization.weights`` cannot be had or used."""


class ImageDecodeError(ValueError):
    """An image's bytes cannot be turned into a 224x224 RGB array."""


@dataclass(frozen=True)
class WeightsFile:
    """A local copy of the weights and where it came from (``source``, as it may be shown:
    credentials and query string redacted)."""

    source: str
    local_path: str
    sha256: str


def _how_to_provide(source: str, reason: str) -> str:
    source, reason = redact(source), redact(reason)
    return (
        f"MobileNetV2 weights could not be had from featurization.weights={source!r}: {reason}\n"
        "Provide them in one of three ways:\n"
        f"  1. keep featurization.weights=imagenet and put Keras' official file "
        f"{IMAGENET_WEIGHTS_FILE} in $KERAS_HOME/models/ (default ~/.keras/models/), "
        f"downloaded once from {IMAGENET_WEIGHTS_URL};\n"
        "  2. point at a Keras weights file for MobileNetV2 1.0 without top (.weights.h5, or the "
        "legacy .h5 layout), local or remote: "
        "kedro run --params featurization.weights=/path/to/mobilenet_v2.weights.h5;\n"
        "  3. point at the LiteRT model this project exported from such weights (.tflite: "
        "data/06_models/feature_extractor.tflite, or the one `kedro emr upload-release` "
        "uploads), which needs no TensorFlow."
    )


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _keras_cache_dir() -> Path:
    # Where Keras caches downloads: $KERAS_HOME, else ~/.keras (as keras.utils.get_file does).
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def _project_cache_dir() -> Path:
    # The project's own files under Keras' cache: remote weights copies and exported models.
    return _keras_cache_dir() / "fruits_pipeline"


def _local_copy(uri: str) -> str:
    """Returns a local path for a weights URI; remote files are copied once, under Keras' cache.

    The copy keeps the file's own name (the URI's path, without its query string: a presigned
    URL's), because Keras picks the weights format from the suffix. The URI is opened as it is,
    never expanded as a glob (``?`` starts a query string, not a wildcard).
    """
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(uri)
    if "file" in filesystem.protocol:
        return path
    name = PurePosixPath(urlsplit(uri).path).name
    copy = _project_cache_dir() / hashlib.sha256(uri.encode()).hexdigest()[:16] / name
    if not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=copy.parent) as staging:
            # One file, streamed: get_file neither expands globs nor needs range requests.
            filesystem.get_file(path, f"{staging}/{name}")
            os.replace(f"{staging}/{name}", copy)
    return str(copy)


def resolve_weights(source: str) -> WeightsFile:
    """Finds the weights named by ``source`` (``imagenet``, a path or a URI) as a local file.

    Raises:
        WeightsUnavailableError: with a message saying what is missing and how to provide it.
    """
    if not source:
        raise WeightsUnavailableError(_how_to_provide(str(source), "the setting is empty."))
    imagenet_file = _keras_cache_dir() / IMAGENET_WEIGHTS_FILE
    try:
        if source == IMAGENET and imagenet_file.is_file():
            # Where keras.utils.get_file would find it: no need to import TensorFlow for that.
            local_path = str(imagenet_file)
        elif source == IMAGENET:
            import keras

            local_path = keras.utils.get_file(
                IMAGENET_WEIGHTS_FILE, IMAGENET_WEIGHTS_URL, cache_subdir="models"
            )
        else:
            local_path = _local_copy(source)
    except Exception as error:
        raise WeightsUnavailableError(
            _how_to_provide(source, f"{type(error).__name__}: {error}")
        ) from error
    if not os.path.isfile(local_path):
        raise WeightsUnavailableError(_how_to_provide(source, f"no file at {local_path}."))
    return WeightsFile(source=redact(source), local_path=local_path, sha256=_sha256(local_path))


def build_architecture() -> keras.Model:
    """MobileNetV2 1.0, 224x224x3 input, no top, global average pooling, no weights loaded."""
    from keras.applications import MobileNetV2

    return MobileNetV2(
        input_shape=(INPUT_SIZE, INPUT_SIZE, 3), include_top=False, weights=None, pooling="avg"
    )


@functools.lru_cache(maxsize=2)
def load_feature_extractor(weights: WeightsFile) -> keras.Model:
    """Builds the architecture and loads the weights file into it (cached per weights file).

    Raises:
        WeightsUnavailableError: the file is corrupt or holds another architecture's weights.
    """
    model = build_architecture()
    try:
        with warnings.catch_warnings():
            # Keras only warns when parts of a file do not match the model and leaves those
            # layers randomly initialised: for features, that is a wrong file, not a warning.
            warnings.simplefilter("error", UserWarning)
            model.load_weights(weights.local_path)
    except Exception as error:
        raise WeightsUnavailableError(
            _how_to_provide(
                weights.source,
                f"{weights.local_path} is not a MobileNetV2 1.0 (no top) weights file "
                f"({type(error).__name__}: {error}).",
            )
        ) from error
    return model


def decode_image(content: bytes, max_pixels: int) -> np.ndarray:
    """Decodes image bytes (any format and mode Pillow reads) into a 224x224x3 uint8 RGB array.

    EXIF orientation is applied, then the image is converted to RGB and resized with bilinear
    interpolation. Files larger than ``max_pixels`` are refused before their pixels are decoded.

    Raises:
        ImageDecodeError: the bytes are not an image Pillow can decode, or exceed the pixel guard.
    """
    if not content:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(content)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"{width}x{height} = {width * height} pixels exceeds the decompression-bomb "
                    f"guard featurization.max_image_pixels={max_pixels}"
                )
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image))
            resized = rgb.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(resized, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        # Pillow's own guard (twice Image.MAX_IMAGE_PIXELS) fires in Image.open, before ours.
        raise ImageDecodeError(f"exceeds Pillow's decompression-bomb guard: {error}") from error
    except Exception as error:
        raise ImageDecodeError(f"cannot decode image: {type(error).__name__}: {error}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    # Pillow does not convert 16-bit, 32-bit and float grayscale to RGB directly: bring them
    # to 8 bits first (16-bit by its bit depth, the others by their range).
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image, dtype=np.uint16) >> 8
        image = Image.fromarray(pixels.astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparency onto white, the Fruits-360 background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(images):
    """Scales uint8 RGB images (N, 224, 224, 3) as MobileNetV2 expects ([-1, 1]): the
    arithmetic of Keras' ``mobilenet_v2.preprocess_input`` (x / 127.5 - 1 in float32).

    Takes numpy arrays or Keras tensors: the exported models run it as their first operations,
    so that the workers and the app feed them the decoded image itself.
    """
    if isinstance(images, np.ndarray):
        images = images.astype(np.float32)
    else:
        import keras

        images = keras.ops.cast(images, "float32")
    return images / np.float32(127.5) - np.float32(1.0)


def _from_decoded_images(weights: WeightsFile, head: Callable | None = None) -> keras.Model:
    """The feature extractor taking the decoded image (uint8, as ``decode_image`` makes it),
    preprocessing inside, optionally followed by ``head``: every exported model starts with
    the same operations, so the app's embedder computes the pipeline's features bit for bit."""
    import keras

    image = keras.Input(shape=(INPUT_SIZE, INPUT_SIZE, 3), dtype="uint8", name="image")
    features = load_feature_extractor(weights)(preprocess(image))
    return keras.Model(image, head(features) if head else features)


def _exporter_versions() -> str:
    versions = library_versions()
    return "_".join(
        f"{name}-{versions[name]}"
        for name in ("keras", "tensorflow", "tensorflow-cpu")
        if name in versions
    )


def litert_cache_path(weights: WeightsFile) -> Path:
    """Where ``export_litert`` keeps the model exported from these weights."""
    return _project_cache_dir() / (
        f"mobilenet_v2_{EXPORT_LAYOUT}_{weights.sha256[:16]}_{_exporter_versions()}.tflite"
    )


def _cached_litert(cached: Path, build: Callable[[], keras.Model]) -> bytes:
    """The model ``build`` makes, exported to LiteRT once into ``cached``, then read back."""
    if cached.is_file():
        return cached.read_bytes()
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the target then renamed: concurrent runs never read half a file.
    with tempfile.TemporaryDirectory(dir=cached.parent) as staging:
        exported = Path(staging) / cached.name
        build().export(str(exported), format="litert", verbose=False)
        os.replace(exported, cached)
    return cached.read_bytes()


@functools.lru_cache(maxsize=2)
def export_litert(weights: WeightsFile) -> bytes:
    """The feature extractor holding these weights as a float32 LiteRT model (a flatbuffer).

    Exporting takes ~20 s, so the model is kept under Keras' cache, named by the weights' sha256
    and the Keras and TensorFlow versions that exported it: a later run with the same weights
    reads it back and neither imports TensorFlow nor rebuilds the model.

    Raises:
        WeightsUnavailableError: the file is corrupt or holds another architecture's weights,
            or Keras and TensorFlow, which export it, are not installed.
    """
    cached = litert_cache_path(weights)
    if not cached.is_file() and importlib.util.find_spec("keras") is None:
        raise WeightsUnavailableError(
            _how_to_provide(
                weights.source,
                "Keras weights are exported to LiteRT by Keras and TensorFlow, which this "
                "environment lacks (an EMR node installs neither).",
            )
        )
    return _cached_litert(cached, lambda: _from_decoded_images(weights))


def _checked_litert(weights: WeightsFile) -> bytes:
    """The LiteRT model file named by the weights setting, refused unless it maps decoded
    images, uint8 (N, 224, 224, 3), to float32 (N, 1280) as ``export_litert``'s do."""
    model = Path(weights.local_path).read_bytes()
    try:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=model)
        (image,), (features,) = (
            interpreter.get_input_details(),
            interpreter.get_output_details(),
        )
        shapes = (list(image["shape"][1:]), list(features["shape"][1:]))
        types = (image["dtype"], features["dtype"])
    except Exception as error:
        raise WeightsUnavailableError(
            _how_to_provide(weights.source, f"{weights.local_path} is not a LiteRT model: {error}")
        ) from error
    if shapes != ([INPUT_SIZE, INPUT_SIZE, 3], [FEATURE_DIM]) or types != (np.uint8, np.float32):
        raise WeightsUnavailableError(
            _how_to_provide(
                weights.source,
                f"{weights.local_path} maps {types[0].__name__} {shapes[0]} images to "
                f"{types[1].__name__} {shapes[1]}, not this project's feature extractor "
                f"(uint8 [{INPUT_SIZE}, {INPUT_SIZE}, 3] -> float32 [{FEATURE_DIM}]).",
            )
        )
    return model


@dataclass(frozen=True)
class FeatureModel:
    """The feature extractor a run uses: its weights file (Keras weights, or the LiteRT model
    exported from them) and the LiteRT model. ``id`` (the file's sha256) names the model in
    every row it featurizes."""

    weights: WeightsFile
    litert: bytes = field(repr=False)

    @property
    def id(self) -> str:
        return self.weights.sha256


def load_feature_model(weights_source: str) -> FeatureModel:
    """Resolves ``featurization.weights``: an exported LiteRT model (``.tflite``) is used as it
    is; Keras weights are exported (or read back from the cache).

    Raises:
        WeightsUnavailableError: the weights cannot be had, or are not MobileNetV2's.
    """
    weights = resolve_weights(weights_source)
    if weights.local_path.endswith(LITERT_SUFFIX):
        return FeatureModel(weights=weights, litert=_checked_litert(weights))
    return FeatureModel(weights=weights, litert=export_litert(weights))


def export_embedder(feature_extractor: bytes, projection: Projection) -> bytes:
    """One LiteRT model from a decoded image to its principal components: uint8 (N, 224, 224,
    3), as ``decode_image`` makes it, -> float32 (N, k).

    The feature extractor, then the ``projection``'s formula as
    ``(features - mean) @ (scale[:, None] * components)``: the standardization folded into the
    projection, appended to the extractor's own graph (``litert_graph``), so that neither
    TensorFlow nor a new export is needed. The mean is subtracted before projecting, not folded
    into a bias, so that float32 keeps the pipeline's precision.
    """
    from fruits_pipeline.litert_graph import append_projection

    return append_projection(
        feature_extractor, projection.mean, projection.scale[:, None] * projection.components
    )


def export_classifier(embedder: bytes, weights: np.ndarray, bias: np.ndarray) -> bytes:
    """The app's classifier, one LiteRT model: the embedder (``export_embedder``) and a linear
    classifier on its coordinates, ``softmax(coordinates @ weights.T + bias)`` (a multinomial
    logistic regression's ``coefficientMatrix`` and ``interceptVector``). Decoded uint8 (N,
    224, 224, 3) in; class probabilities (N, classes) and coordinates (N, k) out."""
    from fruits_pipeline.litert_graph import append_classifier

    return append_classifier(embedder, weights, bias)


class FeatureExtractor:
    """Runs an exported model on batches of decoded images, uint8 (N, 224, 224, 3): the feature
    extractor (-> (N, 1280) float32), the app's embedder (-> (N, k)) or the app's classifier
    (``outputs``: probabilities (N, classes), coordinates (N, k)). Only LiteRT and numpy are
    imported, never TensorFlow."""

    def __init__(self, litert_model: bytes, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._model = litert_model  # the interpreter reads the buffer in place: keep it alive
        self._interpreter = Interpreter(model_content=litert_model, num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._outputs = [output["index"] for output in self._interpreter.get_output_details()]
        self._batch_size = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """The model's first output."""
        return self.outputs(images)[0]

    def outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """Every output of the model, in the model's order."""
        batch = np.ascontiguousarray(images, dtype=np.uint8)
        if len(batch) != self._batch_size:
            # The model's batch dimension is dynamic: size the buffers for this batch.
            self._interpreter.resize_tensor_input(self._input, batch.shape)
            self._interpreter.allocate_tensors()
            self._batch_size = len(batch)
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(output) for output in self._outputs]
