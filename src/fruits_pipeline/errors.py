"""Errors a user causes and can fix: a run stops with their message alone, one paragraph, and
no traceback on the console (``cli.run``; the traceback goes to the log file)."""

from __future__ import annotations


class UserError(Exception):
    """A missing input, a bad setting or a mismatch that the message tells how to fix."""


class SettingError(UserError, ValueError):
    """A parameter outside the values it can take."""
