"""URIs as they may be shown: in logs, metrics, the run report, errors and EMR step names.

A weights file may be given as a presigned URL, whose query string is a credential (and any URI
may carry ``user:password@``). What is shown keeps the scheme, host and path, so the user still
sees which file is meant, and replaces the credentials and the query string.
"""

from __future__ import annotations

import logging
import re

REDACTED = "<redacted>"

# scheme://[userinfo@]host/path[?query][#fragment], up to a blank or a quote.
_URI = re.compile(
    r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)"
    r"(?P<userinfo>[^\s/?#@'\"]*@)?"
    r"(?P<rest>[^\s?#'\"]*)"
    r"(?P<query>\?[^\s#'\"]*)?"
    r"(?P<fragment>#[^\s'\"]*)?"
)


def _redact_match(match: re.Match) -> str:
    userinfo = f"{REDACTED}@" if match["userinfo"] else ""
    query = f"?{REDACTED}" if match["query"] else ""
    return f"{match['scheme']}{userinfo}{match['rest']}{query}"


def redact(text: str) -> str:
    """``text`` with every URI's credentials, query string and fragment replaced."""
    return _URI.sub(_redact_match, text)


class RedactingFilter(logging.Filter):
    """Redacts the URIs of a log record's message and traceback before any handler formats it
    (Kedro only lets its logging configuration name classes of ``logging`` and ``kedro.logging``,
    so ``redact_logs`` attaches this to the handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def redact_logs() -> None:
    """Redacts every record the root logger's handlers (console and log file) write."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(existing, RedactingFilter) for existing in handler.filters):
            handler.addFilter(RedactingFilter())
