"""Project commands added to Kedro's CLI: ``kedro run`` with short user errors, and ``kedro
emr ...`` (``fruits_pipeline.emr.commands``), which deploys and runs the pipelines on AWS EMR."""

from __future__ import annotations

import click
from kedro.framework.cli.project import run as kedro_run

from fruits_pipeline.emr.commands import emr
from fruits_pipeline.run_command import with_short_user_errors

# `kedro run` and `python -m fruits_pipeline` find the run command here.
__all__ = ["cli", "run"]
run = with_short_user_errors(kedro_run)


@click.group(name="fruits_pipeline")
def cli() -> None:
    """Project commands."""


cli.add_command(run)
cli.add_command(emr)
