"""`kedro run` as Kedro defines it, except that an error the user can fix is printed as its
message alone: one paragraph, no traceback (which goes to the log file, fruits-pipeline.log),
and that a run the hooks found nothing to do for (``nothing_new``) ends there, with success."""

from __future__ import annotations

import logging

import click
from kedro.config import MissingConfigException
from omegaconf.errors import InterpolationResolutionError

from fruits_pipeline.errors import UserError
from fruits_pipeline.nothing_new import NothingNew
from fruits_pipeline.redaction import redact

logger = logging.getLogger(__name__)

# Kedro's and OmegaConf's own errors that are the user's to fix: an unknown --env, an
# environment variable the configuration reads and nobody set.
USER_CONFIGURATION_ERRORS = (MissingConfigException, InterpolationResolutionError)


def user_error(error: BaseException) -> BaseException | None:
    """The user error behind ``error`` (Kedro wraps a dataset's errors in its own), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (UserError, *USER_CONFIGURATION_ERRORS)):
            return error
        error = error.__cause__ or error.__context__
    return None


def with_short_user_errors(command: click.Command) -> click.Command:
    """``command`` with the same name, options and help, whose user errors end it with their
    message and exit code 1; a run with nothing to do ends with exit code 0 and says so."""

    def callback(**options):
        try:
            return command.callback(**options)
        except NothingNew as done:
            logger.info("%s", done)
            return None
        except Exception as error:
            cause = user_error(error)
            if cause is None:
                raise
            logger.debug("The run stopped on a user error.", exc_info=error)
            raise click.ClickException(redact(" ".join(str(cause).split()))) from None

    return click.Command(
        command.name,
        params=command.params,
        callback=callback,
        help=command.help,
        short_help=command.short_help,
        context_settings=command.context_settings,
    )
