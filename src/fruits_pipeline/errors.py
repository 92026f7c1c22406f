"""Errors a user causes and can fix: a run stops with their message alone, one paragraph, and
no traceback on the console (``cli.run``; the traceback goes to the log file)."""

from __future__ import annotations


class UserError(Exception):
    """A missing input, a bad setting or a mismatch that the message tells how to fix."""


class SettingError(UserError, ValueError):
    """A parameter outside the values it can take."""


class OtherStoreError(UserError):
    """The image table mirrors another photo store than the one this run reads."""

    def __init__(self, other: str, location: str) -> None:
        super().__init__(
            f"The image table holds photos of another store ({other}), not of {location}, "
            "which this run reads. Each store has its own table: give this store its own "
            "project folder (or data/ tree), or delete data/04_feature/image_features to start "
            "the table again from this store."
        )
