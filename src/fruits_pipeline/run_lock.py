"""One run at a time on the same outputs: a lock object beside them (a local file or an S3
object), taken by an exclusive create and held under a lease.

Two runs on the same outputs would interleave their writes: the image table's MERGE, the
committed versions of each Spark output, the model the next run keeps. Every change of the lock
object is conditional on what its writer last saw, so that of two runs racing exactly one wins:

- taking it: an exclusive create (``If-None-Match: *`` on S3, ``O_EXCL`` on a local disk). The
  loser stops at once with a message naming the run that holds it;
- renewing the lease (from a thread, every third of ``lease_seconds``) and releasing it: a write
  or a delete conditional on the holder's own last version (``If-Match`` on its ETag on S3; on a
  local disk, under ``flock`` and only if the file still holds the bytes this run wrote);
- taking over a stale lock (its lease ended, or its holder ran on this machine and its process
  is gone): a delete conditional on the stale version, then an exclusive create.

A renewal that fails for a passing reason (a connection reset, a throttled request) is retried
until the lease runs out. Once the lease has run out or another run holds the lock, the lock is
lost: ``check`` (the fence the hooks call before every save) stops the run before its next
write. A save already under way when the lease runs out is not stopped: the lease (120 s by
default, renewed every 40 s) is what leaves room for it, and the hosts' clocks must agree to
within much less than the lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import fsspec
from fsspec.asyn import sync

from fruits_pipeline.errors import UserError
from fruits_pipeline.redaction import redact

logger = logging.getLogger(__name__)


# The run ids whose lock this process holds.
_HELD: set[str] = set()


class ConcurrentRunError(UserError):
    """Another run holds the outputs' lock."""


class LockLostError(UserError):
    """This run no longer holds the outputs' lock: its lease ran out, or another run took it."""


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


class _LockObject(Protocol):
    """One object changed only by conditional operations. A version (``tag``) names what a
    writer saw: each operation succeeds only if the object is still at that version."""

    def create(self, content: bytes) -> str | None:
        """Creates it holding ``content``: its version, or None when it already exists."""

    def read(self) -> tuple[bytes, str] | None:
        """Its content and version, or None when there is none."""

    def replace(self, content: bytes, tag: str) -> str | None:
        """Writes ``content`` if still at ``tag``: the new version, or None when it is not."""

    def delete(self, tag: str) -> bool:
        """Deletes it if still at ``tag``: False when it is not (or is gone)."""


class _S3Object:
    """The lock as an S3 object: S3's conditional writes and deletes, with its ETag."""

    def __init__(self, filesystem: fsspec.AbstractFileSystem, path: str) -> None:
        self._fs = filesystem  # s3fs: its call_s3 adds the fs_args (encryption) to each request
        self._bucket, _, self._key = path.partition("/")

    def _call(self, method: str, **kwargs: Any) -> dict[str, Any]:
        return self._fs.call_s3(method, Bucket=self._bucket, Key=self._key, **kwargs)

    def _conditional(self, method: str, *, gone_fails: bool, **kwargs: Any) -> dict | None:
        """S3's answer to a conditional request, or None when its condition failed: 412 (the
        object is not at that version, or already exists), 409 (ConditionalRequestConflict:
        another conditional write of the key is under way, and wins) and, with
        ``gone_fails``, 404 (the object is gone)."""
        try:
            return self._call(method, **kwargs)
        except FileExistsError:
            return None
        except OSError as error:
            gone = gone_fails and isinstance(error, FileNotFoundError)
            if gone or _s3_status(error) in (409, 412):
                return None
            raise

    def create(self, content: bytes) -> str | None:
        answer = self._conditional("put_object", gone_fails=False, Body=content, IfNoneMatch="*")
        return None if answer is None else answer["ETag"]

    def read(self) -> tuple[bytes, str] | None:
        async def get() -> tuple[bytes, str]:
            # The body and the ETag of one GET: the version read is the version tagged.
            response = await self._fs._call_s3("get_object", Bucket=self._bucket, Key=self._key)
            async with response["Body"] as body:
                return await body.read(), response["ETag"]

        try:
            return sync(self._fs.loop, get)
        except FileNotFoundError:
            return None

    def replace(self, content: bytes, tag: str) -> str | None:
        answer = self._conditional("put_object", gone_fails=True, Body=content, IfMatch=tag)
        return None if answer is None else answer["ETag"]

    def delete(self, tag: str) -> bool:
        return self._conditional("delete_object", gone_fails=True, IfMatch=tag) is not None


def _s3_status(error: OSError) -> int | None:
    """The HTTP status of the S3 answer behind an s3fs error."""
    response = getattr(error.__cause__, "response", None) or {}
    return response.get("ResponseMetadata", {}).get("HTTPStatusCode")


class _LocalFile:
    """The lock as a local file: a version is the file's bytes, checked and changed under an
    exclusive ``flock`` of the file (and of the same file still at that path)."""

    def __init__(self, path: str) -> None:
        self._path = path

    @contextlib.contextmanager
    def _locked(self, tag: str | None = None):
        """The open file, locked, if the path still names it (and, with ``tag``, it still holds
        that version); else None."""
        try:
            descriptor = os.open(self._path, os.O_RDWR)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            try:
                same = os.stat(self._path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
            if same and tag is not None:
                same = _read_all(descriptor).decode() == tag
            yield descriptor if same else None
        finally:
            os.close(descriptor)  # releases the flock

    def create(self, content: bytes) -> str | None:
        # Written whole under another name, then linked into place: the link fails if the lock
        # exists, and a reader never sees the file without its content.
        staged = f"{self._path}.{uuid.uuid4().hex}.partial"
        with open(staged, "wb") as file:
            file.write(content)
        try:
            os.link(staged, self._path)
        except FileExistsError:
            return None
        finally:
            os.unlink(staged)
        return content.decode()

    def read(self) -> tuple[bytes, str] | None:
        with self._locked() as descriptor:
            if descriptor is None:
                return None
            content = _read_all(descriptor)
        return content, content.decode()

    def replace(self, content: bytes, tag: str) -> str | None:
        with self._locked(tag) as descriptor:
            if descriptor is None:
                return None
            os.lseek(descriptor, 0, os.SEEK_SET)
            os.ftruncate(descriptor, 0)
            os.write(descriptor, content)
        return content.decode()

    def delete(self, tag: str) -> bool:
        with self._locked(tag) as descriptor:
            if descriptor is None:
                return False
            os.unlink(self._path)
        return True


def _read_all(descriptor: int) -> bytes:
    os.lseek(descriptor, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(descriptor, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _lock_object(uri: str, fs_args: dict[str, Any] | None) -> _LockObject:
    # The lock sits beside outputs Spark writes through s3a://: s3fs takes the same objects.
    filesystem, path = fsspec.core.url_to_fs(uri.replace("s3a://", "s3://", 1), **(fs_args or {}))
    if "s3" in filesystem.protocol:
        return _S3Object(filesystem, path)
    if "file" in filesystem.protocol:
        filesystem.makedirs(posixpath.dirname(path), exist_ok=True)
        return _LocalFile(path)
    raise UserError(
        f"The run lock {redact(uri)} must be a local path or an s3:// URI: only these offer the "
        "conditional writes it relies on (run_lock.path)."
    )


class RunLock:
    """The lock of the outputs at ``uri``, for the run ``run_id``."""

    # A failed renewal is tried again after a third of the renewal interval.
    RETRIES_PER_INTERVAL = 3

    def __init__(
        self,
        uri: str,
        run_id: str,
        lease_seconds: float,
        fs_args: dict[str, Any] | None = None,
    ) -> None:
        self.uri = uri
        self._object = _lock_object(uri, fs_args)
        self._lease = float(lease_seconds)
        self._holder = Holder(
            run_id=run_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            lease_until=0.0,
        )
        self._tag: str | None = None  # the version this run last wrote
        self._lease_until = 0.0  # the lease of that version
        self._lost: str | None = None  # why the lock was lost, once it is
        self._stop_renewing = threading.Event()
        self._renewer: threading.Thread | None = None

    def _content(self) -> tuple[bytes, float]:
        lease_until = time.time() + self._lease
        holder = Holder(**{**asdict(self._holder), "lease_until": lease_until})
        return json.dumps(asdict(holder)).encode(), lease_until

    def _read(self) -> tuple[Holder, str] | None:
        found = self._object.read()
        if found is None:
            return None
        content, tag = found
        return Holder(**json.loads(content)), tag

    def acquire(self) -> None:
        """Takes the lock, or raises ConcurrentRunError naming the run that holds it."""
        # Held from before the create: another run of this process must never find this
        # run's new lock without it, and take it for a stale one.
        _HELD.add(self._holder.run_id)
        for _ in range(3):
            content, lease_until = self._content()
            tag = self._object.create(content)
            if tag is not None:
                self._tag, self._lease_until = tag, lease_until
                self._start_renewing()
                logger.info("Run lock %s taken", self.uri)  # the log redacts URIs itself
                return
            found = self._read()
            if found is None:  # released between the two calls
                continue
            holder, stale_tag = found
            if not holder.stale(time.time()):
                break
            if self._object.delete(stale_tag):  # only the version found stale
                logger.warning(
                    "Taking over the lock of %s, which ended without releasing it", holder.run_id
                )
        _HELD.discard(self._holder.run_id)
        found = self._read()
        raise ConcurrentRunError(
            f"Another run is writing these outputs: {found[0].describe() if found else 'unknown'}"
            f". Runs on the same outputs never interleave: start this one when it has ended. A "
            f"run that was killed frees the lock when its lease ends (run_lock.lease_seconds), "
            f"or at once on the same machine; the lock is {redact(self.uri)}."
        )

    def _renew(self) -> None:
        """One conditional renewal; sets ``_lost`` when another run holds the lock."""
        content, lease_until = self._content()
        tag = self._object.replace(content, self._tag)
        if tag is None:
            found = self._read()
            self._lose(
                f"taken over by {found[0].describe()}" if found else "removed by another run"
            )
        else:
            self._tag, self._lease_until = tag, lease_until

    def _lose(self, why: str) -> None:
        self._lost = why
        logger.error(
            "The run lock %s was lost (%s): the run stops before its next save", self.uri, why
        )

    def _start_renewing(self) -> None:
        interval = self._lease / 3

        def renew() -> None:
            wait = interval
            while self._lost is None and not self._stop_renewing.wait(wait):
                if self._lease_ran_out():
                    return
                try:
                    self._renew()
                    wait = interval
                except Exception as error:  # noqa: BLE001 (a passing fault: retried)
                    wait = interval / self.RETRIES_PER_INTERVAL
                    logger.warning("Renewing the run lock failed, retrying: %s", error)

        self._renewer = threading.Thread(target=renew, name="run-lock-lease", daemon=True)
        self._renewer.start()

    def _lease_ran_out(self) -> bool:
        """Whether the lease ran out before it was renewed (the lock is lost then)."""
        if self._lost is None and time.time() >= self._lease_until:
            self._lose("its lease ran out before it could be renewed")
        return self._lost is not None

    def check(self) -> None:
        """The fence: raises LockLostError once this run no longer holds the lock."""
        if self._lease_ran_out():
            raise LockLostError(
                f"This run lost the lock of its outputs ({self._lost}), so it stopped before "
                "writing anything more: another run may be writing them now. Run again once "
                f"that run has ended (the lock is {redact(self.uri)})."
            )

    def release(self) -> None:
        """Stops renewing and removes the lock, if it is still the version this run wrote."""
        self._stop_renewing.set()
        if self._renewer is not None:
            self._renewer.join()
        _HELD.discard(self._holder.run_id)
        if self._lost is None and self._tag is not None:
            try:
                self._object.delete(self._tag)
            except OSError as error:
                # Left behind, it is stale at once on this machine, elsewhere when its lease ends.
                logger.warning("The run lock %s could not be removed: %s", self.uri, error)
