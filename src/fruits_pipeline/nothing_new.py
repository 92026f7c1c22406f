"""Whether a run has anything to do, decided before Spark starts.

A store that grows every day is run often, and most runs may find nothing new. Such a run
should cost a listing, not a JVM: it ends before Spark starts when

- it is the whole default pipeline, and ``dimensionality_reduction.refit`` is not asked for;
- the last complete default run left its stamp (``last_run``: the image table's version it
  ended at, the photo store, the weights and every parameter it ran with), and nothing has
  written since (every run voids the stamp when it starts writing, ``check_nothing_new``,
  and a complete default run writes it last, ``save_stamp``);
- the image table is still at that version, read without a JVM by the ``deltalake`` package
  (Delta's own log and files, locally or on S3), and holds exactly the store's listing: the
  same paths, lengths and modification times, all featurized by these weights;
- every output of the pipeline is still there.

Anything else (a new, replaced or removed photo, a missing or older output, other parameters
or weights, a run killed before its end) runs as before, and so does a run whose check
fails (delta-rs cannot reach the table, say). No Spark, no TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from kedro.io import CatalogProtocol, MemoryDataset
from kedro.pipeline import Pipeline

from fruits_pipeline.datasets.delta_merge_dataset import DeltaTableAt
from fruits_pipeline.made_from import made_from

logger = logging.getLogger(__name__)

LAST_RUN = "last_run"
IMAGE_TABLE = "image_features"
PHOTO_STORE = "raw_images"
FEATURE_MODEL = "feature_model"
FEATURIZATION_INFO = "featurization_info"
RUN_REPORT = "run_report"
REFIT = "params:dimensionality_reduction"
# kedro run's options that run a part of the pipeline (Kedro's run_params).
NODE_FILTERS = (
    "tags",
    "from_nodes",
    "to_nodes",
    "node_names",
    "from_inputs",
    "to_outputs",
    "namespaces",
)
# The first line of the run report of a run that found nothing new.
NOTHING_NEW = "Nothing new since table version"


class NothingNew(Exception):
    """Raised by the run's hooks before Spark starts when the run has nothing to do: the run
    command ends with exit status 0 and this message (``run_command``)."""


@dataclass(frozen=True)
class TableState:
    """The image table at its latest version: the version, and each row's file and model."""

    version: int
    rows: set[tuple[str, int, int, str]]


def _storage_options(uri: str) -> dict[str, str]:
    """delta-rs's options for ``uri``: it reads the AWS chain (environment, profile, instance)
    like the SDKs. Its default retries last 3 minutes; a check that cannot reach S3 should give
    up in seconds and let the run run."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    options = {"connect_timeout": "5s", "timeout": "30s"}
    options |= {"max_retries": "2", "retry_timeout": "10s"}
    # An S3 API given as a plain-HTTP endpoint (AWS_ENDPOINT_URL) must be allowed explicitly.
    if os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    return options


def _table_uri(filepath: str) -> str:
    return filepath if "://" in filepath else os.path.abspath(filepath)


def delta_table(filepath: str):
    """The Delta table at ``filepath`` as ``deltalake`` reads it (no JVM), or None."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri = _table_uri(filepath)
    try:
        return DeltaTable(uri, storage_options=_storage_options(uri))
    except TableNotFoundError:
        return None


def read_table_state(filepath: str) -> TableState | None:
    """The image table at ``filepath``: its latest version and each row's (path, length,
    modificationTime in microseconds, model_id); None where there is none."""
    table = delta_table(filepath)
    if table is None:
        return None
    columns = ["path", "length", "modificationTime", "model_id"]
    rows = table.to_pyarrow_table(columns=columns)
    times = rows.column("modificationTime").cast(pa.timestamp("us", "UTC")).cast(pa.int64())
    return TableState(
        table.version(),
        set(
            zip(
                rows.column("path").to_pylist(),
                rows.column("length").to_pylist(),
                times.to_pylist(),
                rows.column("model_id").to_pylist(),
                strict=True,
            )
        ),
    )


def _micros(moment) -> int:
    return round(moment.timestamp() * 1_000_000)


def parameters_digest(pipeline: Pipeline, catalog: CatalogProtocol) -> str:
    """The sha256 of every parameter the pipeline reads, as this run resolves them."""
    names = sorted(name for name in pipeline.inputs() if name.startswith("params:"))
    values = {name: catalog.load(name) for name in names}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def run_stamp(
    pipeline: Pipeline, catalog: CatalogProtocol, table_version: int, images: int
) -> dict[str, Any]:
    """What the last complete default run is recorded as: the table version it ended at, its
    store, weights and parameters."""
    return {
        "table": catalog.get(IMAGE_TABLE).filepath,
        "table_version": table_version,
        "images": images,
        "photo_store": catalog.get(PHOTO_STORE).location,
        "weights_sha256": catalog.load(FEATURE_MODEL).id,
        "parameters_sha256": parameters_digest(pipeline, catalog),
    }


def _outputs_missing(pipeline: Pipeline, catalog: CatalogProtocol) -> list[str]:
    """The pipeline's persisted outputs that are not there (Delta tables are checked by
    ``deltalake``, without Spark)."""
    missing = []
    for name in sorted(pipeline.all_outputs()):
        dataset = catalog.get(name)
        if dataset is None or isinstance(dataset, MemoryDataset):  # handed to the next node
            continue
        if isinstance(dataset, DeltaTableAt):
            there = delta_table(dataset.filepath) is not None
        else:
            there = catalog.exists(name)
        if not there:
            missing.append(name)
    return missing


def _changed_since(
    stamp: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
) -> str | None:
    """What differs from the stamped run: the table's version, the store, the weights, the
    parameters, the photos, an output gone; None when nothing does."""
    state = read_table_state(catalog.get(IMAGE_TABLE).filepath)
    if state is None:
        return "no image table"
    current = run_stamp(pipeline, catalog, state.version, len(state.rows))
    changed = [key for key, value in current.items() if stamp.get(key) != value]
    if changed:
        return f"changed since the last complete run: {', '.join(changed)}"
    listing = {
        (path, length, _micros(moment), current["weights_sha256"])
        for path, _, length, moment in catalog.get(PHOTO_STORE).list_images()
    }
    if listing != state.rows:
        return "photos new, replaced or removed since the image table's last version"
    missing = _outputs_missing(pipeline, catalog)
    return f"outputs missing: {', '.join(missing)}" if missing else None


def whole_default_run(run_params: dict[str, Any]) -> bool:
    """Whether the run is the whole default pipeline: no other pipeline named, no node filter."""
    names = run_params.get("pipeline_names") or ["__default__"]
    return names == ["__default__"] and not any(
        run_params.get(option) for option in (*NODE_FILTERS, "only_missing_outputs")
    )


def why_run(
    pipeline: Pipeline, run_params: dict[str, Any], catalog: CatalogProtocol
) -> tuple[str | None, dict[str, Any] | None]:
    """Why this run must run (None: it has nothing to do), and the stamp of the last complete
    run (whose outputs stand when there is nothing to do)."""
    if not whole_default_run(run_params):
        return "not the whole default pipeline", None
    if catalog.load(REFIT).get("refit"):
        return "dimensionality_reduction.refit asked", None
    stamp = catalog.load(LAST_RUN) if catalog.exists(LAST_RUN) else None
    if not stamp:
        return "no complete run since the last change", None
    return _changed_since(stamp, pipeline, catalog), stamp


def save_stamp(pipeline: Pipeline, run_params: dict[str, Any], catalog: CatalogProtocol) -> None:
    """Stamps a complete default run, once every output is written: what the next run compares
    with to find nothing new."""
    if not whole_default_run(run_params):
        return
    try:
        # The version the run ended at, read through the run's own Spark (its load's stamp).
        version = made_from(catalog.load(IMAGE_TABLE))["version"]
        images = catalog.load(FEATURIZATION_INFO)["images_in_store"]
        catalog.save(LAST_RUN, run_stamp(pipeline, catalog, version, images))
    except Exception as error:  # noqa: BLE001 - without a stamp, the next run only runs
        logger.warning("The run's stamp could not be written (%s): the next run runs.", error)


def check_nothing_new(
    pipeline: Pipeline, run_params: dict[str, Any], catalog: CatalogProtocol
) -> None:
    """Raises ``NothingNew`` when the run has nothing to do, having written
    ``featurization_info`` with zero counts and put the news at the top of the run report;
    otherwise voids the last run's stamp (the run is about to write) and returns."""
    started = time.perf_counter()
    try:
        reason, stamp = why_run(pipeline, run_params, catalog)
    except Exception as error:  # noqa: BLE001 - never worse than running as before
        reason, stamp = f"the check failed ({type(error).__name__}: {error})", None
    if reason is not None:
        logger.info("The run runs: %s", reason)
        if catalog.exists(LAST_RUN):
            catalog.save(LAST_RUN, {})  # void until this run is complete
        return
    message = (
        f"{NOTHING_NEW} {stamp['table_version']}, {stamp['images']} photos: "
        "every output was made from it."
    )
    seconds = time.perf_counter() - started
    info = catalog.load(FEATURIZATION_INFO)
    info.update(
        images_in_store=stamp["images"],
        images_sent_to_model=0,
        images_featurized=0,
        images_quarantined=0,
        images_removed=0,
        task_attempts_failed=0,
        seconds=round(seconds, 3),
    )
    catalog.save(FEATURIZATION_INFO, info)
    report = catalog.load(RUN_REPORT) if catalog.exists(RUN_REPORT) else ""
    title, _, body = report.partition("\n\n")
    if body.startswith(NOTHING_NEW):
        body = body.partition("\n\n")[2]
    news = f"{message} Decided in {seconds:.1f} s, without Spark; below, the run that made them."
    catalog.save(RUN_REPORT, f"{title}\n\n{news}\n\n{body}")
    raise NothingNew(message)
