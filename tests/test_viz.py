"""kedro-viz shows the pipelines, without Spark: the static site opened in headless Chromium."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, kedro_process, make_project_copy

ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"
NODES = (
    "list_changes",
    "extract_features",
    "fit_or_keep_pca",
    "export_embedding",
    "project_features",
    "write_pca_csv",
    "summarize_run",
    "plot_explained_variance",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1600,1000",
    "--virtual-time-budget=20000",
)


@pytest.fixture(scope="module")
def viz_site(tmp_path_factory) -> Path:
    """`kedro viz build` of a copy of the project (no data, no run)."""
    project = make_project_copy(tmp_path_factory.mktemp("viz-project"))
    result = kedro_process(project, "viz", "build")
    assert result.returncode == 0, result.stdout + result.stderr
    # kedro-viz must not start Spark (nor does it need TensorFlow).
    assert "Setting default log level" not in result.stdout + result.stderr
    return project / "build"


@pytest.fixture(scope="module")
def served_site(viz_site):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(viz_site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.fail("Chromium is needed for this test: apt-get install chromium (.ci/run does).")
    return found


def test_site_data_holds_the_pipelines_with_layers_and_parameters(viz_site):
    main = json.loads((viz_site / "api" / "main").read_text())
    names = {node["name"] for node in main["nodes"]}
    assert set(NODES) <= names
    assert {"params:featurization", "params:dimensionality_reduction"} <= names
    assert {"raw", "intermediate", "feature", "models", "model_output", "reporting"} <= set(
        main["layers"]
    )
    pipelines = {pipeline["id"] for pipeline in main["pipelines"]}
    assert {"ingestion", "featurization", "dimensionality_reduction", "__default__"} <= pipelines


def test_flowchart_in_chromium_shows_every_node(served_site, tmp_path):
    chromium = _chromium()
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", served_site],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    ).stdout
    text = dom.lower()
    for name in NODES:
        pretty = name.replace("_", " ")
        assert name in text or pretty in text, f"{name} is not in the rendered flowchart"
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "kedro-viz.png"
    screenshot.unlink(missing_ok=True)
    subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            served_site,
        ],
        capture_output=True,
        timeout=180,
        check=True,
    )
    from PIL import Image

    with Image.open(screenshot) as picture:
        assert picture.size == (1600, 1000)
        colours = picture.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is None or len(colours) > 50, "the screenshot is blank"
