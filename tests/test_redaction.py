"""Credentials and presigned query strings never reach what a run shows: errors, the log file,
metrics and the run report, dataset descriptions, EMR step names."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from fruits_pipeline import mobilenet_v2
from fruits_pipeline.datasets import FeatureModelDataset
from fruits_pipeline.emr.cluster import Release, pipeline_step
from fruits_pipeline.redaction import redact
from tests.conftest import failed_before_spark, kedro_run

SIGNATURE = "X-Amz-Signature=0123456789abcdef"
CREDENTIAL = "X-Amz-Credential=AKIAEXAMPLEEXAMPLE%2F20261201%2Feu-west-1%2Fs3%2Faws4_request"
QUERY = f"X-Amz-Algorithm=AWS4-HMAC-SHA256&{CREDENTIAL}&X-Amz-Expires=3600&{SIGNATURE}"


def _leaks(text: str) -> bool:
    return any(secret in text for secret in ("0123456789abcdef", "AKIAEXAMPLE", "s3cr3t"))


@pytest.mark.parametrize(
    ("shown", "expected"),
    [
        (
            f"https://fruits.s3.eu-west-1.amazonaws.com/w/mobilenet.weights.h5?{QUERY}",
            "https://fruits.s3.eu-west-1.amazonaws.com/w/mobilenet.weights.h5?<redacted>",
        ),
        ("s3a://AKIAEXAMPLEEXAMPLE:s3cr3t@bucket/a b.h5", "s3a://<redacted>@bucket/a"),
        ("s3://bucket/prefix/weights.h5", "s3://bucket/prefix/weights.h5"),
        ("/data/weights/mobilenet.weights.h5", "/data/weights/mobilenet.weights.h5"),
        (
            f"from 'https://h/x.h5?{SIGNATURE}' and 'gs://u:s3cr3t@b/y#frag', then imagenet",
            "from 'https://h/x.h5?<redacted>' and 'gs://<redacted>@b/y', then imagenet",
        ),
    ],
)
def test_redact_keeps_where_and_drops_credentials(shown, expected):
    assert redact(shown).startswith(expected)
    assert not _leaks(redact(shown))


@pytest.fixture
def weights_server(weights_file):
    """The weights file served over HTTP from this machine (the query string is ignored, as a
    presigned URL's is checked by S3, not by the file's path)."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(weights_file.parent)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_weights_from_a_presigned_url_are_shown_without_its_query(
    weights_server, weights_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    url = f"{weights_server}/{weights_file.name}?{QUERY}"
    weights = mobilenet_v2.resolve_weights(url)
    # The file itself was fetched: same bytes as the local one.
    assert weights.sha256 == mobilenet_v2.resolve_weights(str(weights_file)).sha256
    # What metrics and the run report show (featurization_info's weights_source).
    assert weights.source == f"{weights_server}/{weights_file.name}?<redacted>"
    assert not _leaks(str(FeatureModelDataset(weights=url)))


def test_an_unreachable_presigned_url_fails_without_showing_its_query(
    project_copy, small_image_set
):
    # A port nothing listens on: the download fails, and the error names the URL.
    url = f"http://127.0.0.1:9/weights/mobilenet.weights.h5?{QUERY}"
    result = kedro_run(
        project_copy,
        "--params",
        f"raw_images_path={small_image_set},featurization.weights={url}",
    )
    output = failed_before_spark(result, project_copy)
    assert "http://127.0.0.1:9/weights/mobilenet.weights.h5?<redacted>" in output
    assert not _leaks(output)
    assert not _leaks((project_copy / "fruits-pipeline.log").read_text())


def test_emr_step_name_hides_the_query_its_arguments_keep_it():
    cluster = {"install_dir": "/opt/fruits-pipeline"}
    release = Release.at("s3://bucket/p/release", "0.1.0")
    url = f"https://bucket.s3.amazonaws.com/w.h5?{QUERY}"
    step = pipeline_step(cluster, release, "bucket/p", ("--params", f"featurization.weights={url}"))
    assert not _leaks(step["Name"])
    assert step["Name"].endswith(
        "featurization.weights=https://bucket.s3.amazonaws.com/w.h5?<redacted>"
    )
    assert f"featurization.weights={url}" in step["HadoopJarStep"]["Args"]
    assert "KEDRO_DISABLE_TELEMETRY=true" in step["HadoopJarStep"]["Args"]
