"""One run at a time on the same outputs: a lock object beside them (a local file or an S3
object), taken by an exclusive create and held under a lease.

Two runs on the same outputs would interleave their writes: the image table's MERGE, the
committed versions of each Spark output, the model the next run keeps. The lock is created with
``open(..., "xb")``: ``O_EXCL`` on a local disk, a conditional PUT (``If-None-Match: *``) on S3,
so of two runs starting at once exactly one creates it. The other stops at once with a message
naming the run that holds it.

The holder renews its lease (``lease_seconds``) from a thread while it runs. A run that was
killed cannot release its lock, so the lock is stale once its lease has ended, or at once when
its holder ran on this machine and its process is gone. A new run takes a stale lock over: it
first claims it by creating ``<lock>.taken.<holder's run id>`` (exclusively again, so that of two
runs finding the same stale lock only one removes it), then creates its own.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec

from fruits_pipeline.errors import UserError
from fruits_pipeline.redaction import redact

logger = logging.getLogger(__name__)


# The run ids whose lock this process holds.
_HELD: set[str] = set()


class ConcurrentRunError(UserError):
    """Another run holds the outputs' lock."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, and until when (seconds since the epoch)."""

    run_id: str
    host: str
    pid: int
    started: str
    lease_until: float

    def stale(self, now: float) -> bool:
        if self.lease_until < now:
            return True
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():  # a run of this process that stopped before its end hooks
            return self.run_id not in _HELD
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.lease_until, UTC).strftime("%H:%M:%S UTC")
        return (
            f"run {self.run_id} (process {self.pid} on {self.host}, started {self.started}, "
            f"lease until {until})"
        )


def _filesystem_path(
    uri: str, fs_args: dict[str, Any] | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    # The lock sits beside outputs Spark writes through s3a://: s3fs takes the same objects.
    return fsspec.core.url_to_fs(uri.replace("s3a://", "s3://", 1), **(fs_args or {}))


class RunLock:
    """The lock of the outputs at ``uri``, for the run ``run_id``."""

    def __init__(
        self,
        uri: str,
        run_id: str,
        lease_seconds: float,
        fs_args: dict[str, Any] | None = None,
    ) -> None:
        self.uri = uri
        self._filesystem, self._path = _filesystem_path(uri, fs_args)
        self._lease = float(lease_seconds)
        self._holder = Holder(
            run_id=run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            lease_until=0.0,
        )
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None

    def _read(self) -> Holder | None:
        try:
            return Holder(**json.loads(self._filesystem.cat_file(self._path)))
        except FileNotFoundError:
            return None

    def _write(self, exclusive: bool) -> None:
        holder = Holder(**{**asdict(self._holder), "lease_until": time.time() + self._lease})
        with self._filesystem.open(self._path, "xb" if exclusive else "wb") as lock:
            lock.write(json.dumps(asdict(holder)).encode())

    def _create(self) -> bool:
        try:
            self._write(exclusive=True)
        except FileExistsError:
            return False
        return True

    def _take_over(self, stale: Holder) -> bool:
        """Removes a stale lock if this run is the one that claims it."""
        claim = f"{self._path}.taken.{stale.run_id}"
        try:
            with self._filesystem.open(claim, "xb") as marker:
                marker.write(self._holder.run_id.encode())
        except FileExistsError:
            return False  # another run took it over
        logger.warning("Taking over the lock of %s, which ended without releasing it", stale.run_id)
        self._filesystem.rm_file(self._path)
        return True

    def acquire(self) -> None:
        """Takes the lock, or raises ConcurrentRunError naming the run that holds it."""
        self._filesystem.makedirs(posixpath.dirname(self._path), exist_ok=True)
        for _ in range(3):
            created = self._create()
            holder = None if created else self._read()
            # A holder of this run: created, but the response to the create was lost.
            if created or (holder is not None and holder.run_id == self._holder.run_id):
                _HELD.add(self._holder.run_id)
                self._start_renewing()
                logger.info("Run lock %s taken", self.uri)  # the log redacts URIs itself
                return
            if holder is None:  # released between the two calls
                continue
            if not (holder.stale(time.time()) and self._take_over(holder)):
                break
        holder = self._read()
        raise ConcurrentRunError(
            f"Another run is writing these outputs: {holder.describe() if holder else 'unknown'}. "
            f"Runs on the same outputs never interleave: start this one when it has ended. A run "
            f"that was killed frees the lock when its lease ends (run_lock.lease_seconds), or at "
            f"once on the same machine; the lock is {redact(self.uri)}."
        )

    def _start_renewing(self) -> None:
        def renew() -> None:
            while not self._stop_renewing.wait(self._lease / 3):
                holder = self._read()
                if holder is None or holder.run_id != self._holder.run_id:
                    logger.error("The run lock %s was taken over by another run", self.uri)
                    return
                self._write(exclusive=False)

        self._renewer = threading.Thread(target=renew, name="run-lock-lease", daemon=True)
        self._renewer.start()

    def release(self) -> None:
        """Stops renewing and removes the lock, if it is still this run's."""
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join()
        _HELD.discard(self._holder.run_id)
        holder = self._read()
        if holder is not None and holder.run_id == self._holder.run_id:
            self._filesystem.rm_file(self._path)
