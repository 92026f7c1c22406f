"""URIs as they may be shown: in logs, metrics, the run report, errors and EMR step names.

A weights file may be given as a presigned URL, whose query string is a credential (and any URI
may carry ``user:password@``). What is shown keeps the scheme, host and path, so the user still
sees which file is meant, and replaces the credentials and the query string.
"""

from __future__ import annotations

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
