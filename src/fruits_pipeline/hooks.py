"""Project hooks: once Kedro has configured logging, redact URIs from it (``redaction``); when a
pipeline starts, check its inputs (``preflight``), take the outputs' lock (``run_lock``), end
the run there if it has nothing to do (``nothing_new``), then build the SparkSession
(``spark_session``).

Kedro calls ``before_pipeline_run`` outside the ``try`` that leads to ``on_pipeline_error``: a
hook that fails there (a SparkSession that cannot start, a missing input of a partial run) ends
the run with no error hook called. So the preflight and the lock are pluggy wrappers around the
other ``before_pipeline_run`` hooks (the preflight outermost): the lock wrapper sees their
failure and releases the lock it took.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline

from fruits_pipeline.nothing_new import check_nothing_new, save_stamp
from fruits_pipeline.preflight import (
    check_buckets,
    check_intermediate_inputs,
    check_pipeline_inputs,
    s3_buckets,
)
from fruits_pipeline.redaction import redact_logs
from fruits_pipeline.run_lock import RunLock
from fruits_pipeline.spark_session import create_spark_session

logger = logging.getLogger(__name__)


class RedactionHooks:
    """Redacts credentials and query strings from every URI the console and the log file show,
    once Kedro has configured logging (``redaction.redact_logs``)."""

    @hook_impl
    def after_context_created(self, context) -> None:
        redact_logs()


class PreflightHooks:
    """Checks, first of all, that the run's buckets and inputs can be had."""

    def __init__(self) -> None:
        self._catalog_config: dict[str, Any] = {}
        self._env = "local"

    @hook_impl
    def after_context_created(self, context) -> None:
        self._catalog_config = dict(context.config_loader["catalog"])
        self._env = context.env or "local"

    @hook_impl(wrapper=True, tryfirst=True)
    def before_pipeline_run(self, pipeline: Pipeline, catalog: CatalogProtocol):
        # A wrapper, so that it runs before the lock wrapper's lock (see the module's docstring).
        check_buckets(s3_buckets(self._catalog_config, pipeline.datasets()), self._env)
        check_pipeline_inputs(pipeline, catalog)
        return (yield)


class RunLockHooks:
    """Holds the outputs' lock (parameters ``run_lock``) from the start of a run to its end,
    after the preflight checks and before Spark starts, and releases it however the run ends;
    before every save, checks that the run still holds it (the fence)."""

    def __init__(self) -> None:
        self._settings: dict[str, Any] = {}
        self._lock: RunLock | None = None

    @hook_impl
    def after_context_created(self, context) -> None:
        self._settings = dict(context.params["run_lock"])

    @hook_impl(wrapper=True)
    def before_pipeline_run(self, run_params: dict[str, Any]):
        lock = RunLock(
            self._settings["path"],
            run_params["run_id"],
            self._settings["lease_seconds"],
            self._settings.get("fs_args"),
        )
        lock.acquire()
        self._lock = lock
        try:
            return (yield)  # the hooks that start the run: Spark's
        except BaseException:
            self._release()
            raise

    @hook_impl
    def before_dataset_saved(self) -> None:
        if self._lock is not None:
            self._lock.check()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()


class NothingNewHooks:
    """Ends a run that has nothing to do before Spark starts (``nothing_new``), inside the
    lock's wrapper, which releases the lock however this ends; stamps a complete run at its
    end."""

    @hook_impl(wrapper=True)
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ):
        check_nothing_new(pipeline, run_params, catalog)
        return (yield)

    @hook_impl
    def after_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        save_stamp(pipeline, run_params, catalog)


class SparkHooks:
    """Builds the SparkSession lazily: only when a pipeline run starts, so that commands that need
    no Spark (``kedro viz``, ``kedro catalog``, ``kedro registry``) start none."""

    def __init__(self) -> None:
        self._spark_config: dict[str, Any] = {}

    @hook_impl
    def after_context_created(self, context) -> None:
        self._spark_config = dict(context.config_loader["spark"])

    @hook_impl(trylast=True)
    def before_pipeline_run(self, pipeline: Pipeline, catalog: CatalogProtocol) -> None:
        spark = create_spark_session(self._spark_config)
        logger.info(
            "SparkSession ready: master %s, Spark %s, UI %s",
            spark.sparkContext.master,
            spark.version,
            spark.sparkContext.uiWebUrl,
        )
        check_intermediate_inputs(pipeline, catalog)
