"""Builds a folder of odd and broken image files beside real good ones, with what each must get.

Every case is made from a real Fruits-360 image (or, for the broken ones, from bytes that are
not one), so that what can be decoded is a real fruit.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Case:
    """One file and its expected outcome: a label when featurized, a reason fragment when not."""

    relative_path: str
    label: str | None
    reason: str | None = None


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's
    signature: the size is read before any pixel)."""
    png = bytearray(_encode(Image.new("RGB", (1, 1), "white"), "PNG"))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    return bytes(png)


def build_odd_image_folder(sample_images: Path, root: Path, good_per_class: int = 4) -> list[Case]:
    """Writes the cases under ``root`` (class folders, plus one stray file at the top level)."""
    cases: list[Case] = []

    def write(relative_path: str, content: bytes, label: str | None, reason: str | None = None):
        target = root / relative_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        cases.append(Case(relative_path, label, reason))

    for class_name in ("Banana Red", "Avocado", "Tomato Heart"):
        for image in sorted((sample_images / "Training" / class_name).glob("*.jpg"))[
            :good_per_class
        ]:
            relative = f"{class_name}/{image.name}"
            (root / class_name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(image, root / relative)
            cases.append(Case(relative, class_name))

    banana_path = sorted((sample_images / "Training" / "Banana Red").glob("*.jpg"))[-1]
    banana_bytes = banana_path.read_bytes()
    banana = Image.open(io.BytesIO(banana_bytes)).convert("RGB")

    # Broken files: quarantined, with the reason.
    write("Banana Red/truncated.jpg", banana_bytes[: len(banana_bytes) // 2], None, "truncated")
    write("Banana Red/empty.jpg", b"", None, "empty file")
    write(
        "Banana Red/random-bytes.jpg",
        np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        None,
        "cannot identify image file",
    )
    write("Banana Red/bomb.jpg", _png_claiming_size(100_000, 100_000), None, "decompression-bomb")
    write(
        "Banana Red/too-large.jpg",
        _png_claiming_size(8_000, 8_000),
        None,
        "decompression-bomb guard featurization.max_image_pixels",
    )

    # Real images in other containers and modes: featurized.
    write("Banana Red/png-inside.jpg", _encode(banana, "PNG"), "Banana Red")
    write("Banana Red/webp-inside.jpg", _encode(banana, "WEBP", quality=90), "Banana Red")
    write("Banana Red/grayscale.jpg", _encode(banana.convert("L"), "JPEG"), "Banana Red")
    write("Banana Red/rgba.jpg", _encode(banana.convert("RGBA"), "PNG"), "Banana Red")
    write("Banana Red/palette.jpg", _encode(banana.convert("P"), "PNG"), "Banana Red")
    write("Banana Red/cmyk.jpg", _encode(banana.convert("CMYK"), "JPEG"), "Banana Red")
    sixteen_bit = Image.fromarray(
        (np.asarray(banana.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    )
    write("Banana Red/16-bit.jpg", _encode(sixteen_bit, "PNG"), "Banana Red")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # stored sideways, displayed rotated 90 degrees clockwise
    write(
        "Banana Red/exif-rotated.jpg",
        _encode(banana.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif.tobytes()),
        "Banana Red",
    )
    write(
        "Banana Red/one-pixel.jpg",
        _encode(Image.new("RGB", (1, 1), (250, 220, 40)), "JPEG"),
        "Banana Red",
    )

    # Names with spaces, accents and non-ASCII characters: featurized with their folder's label.
    write("Pêche Plate/é à ü 1.jpg", banana_bytes, "Pêche Plate")
    write("苹果 红/图片 1.jpg", banana_bytes, "苹果 红")

    # A real image outside any class folder: quarantined, it has no label.
    write("stray photo.jpg", banana_bytes, None, "no class folder")
    return cases
