"""Project hooks: once Kedro has configured logging, redact URIs from it (``redaction``); when a
pipeline starts, check its inputs (``preflight``), then build the SparkSession
(``spark_session``)."""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline

from fruits_pipeline.preflight import (
    check_buckets,
    check_intermediate_inputs,
    check_pipeline_inputs,
    s3_buckets,
)
from fruits_pipeline.redaction import redact_logs
from fruits_pipeline.spark_session import create_spark_session, runs_whole_pipeline

logger = logging.getLogger(__name__)


class RedactionHooks:
    """Redacts credentials and query strings from every URI the console and the log file show,
    once Kedro has configured logging (``redaction.redact_logs``)."""

    @hook_impl
    def after_context_created(self, context) -> None:
        redact_logs()


class SparkHooks:
    """Builds the SparkSession lazily: only when a pipeline run starts, so that commands that need
    no Spark (``kedro viz``, ``kedro catalog``, ``kedro registry``) start none."""

    def __init__(self) -> None:
        self._spark_config: dict[str, Any] = {}
        self._catalog_config: dict[str, Any] = {}
        self._env = "local"

    @hook_impl
    def after_context_created(self, context) -> None:
        self._spark_config = dict(context.config_loader["spark"])
        self._catalog_config = dict(context.config_loader["catalog"])
        self._env = context.env or "local"

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        check_buckets(s3_buckets(self._catalog_config, pipeline.datasets()), self._env)
        check_pipeline_inputs(pipeline, catalog)
        spark = create_spark_session(
            self._spark_config, write_class_archive=runs_whole_pipeline(run_params)
        )
        logger.info(
            "SparkSession ready: master %s, Spark %s, UI %s",
            spark.sparkContext.master,
            spark.version,
            spark.sparkContext.uiWebUrl,
        )
        check_intermediate_inputs(pipeline, catalog)
