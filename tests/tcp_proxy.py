"""A TCP proxy between the S3 clients of a run (Hadoop's S3A, s3fs, boto3) and moto's server,
which resets connections and adds latency while a window of trouble is open.

In trouble, every ``reset_every``-th request is cut with a TCP reset, alternately before it
reaches the server (the request is lost) and after it did (its response is lost, so the client's
retry repeats a request the server has already carried out), and every request is delayed by
``latency`` seconds.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass
class Trouble:
    until: float = 0.0
    reset_every: int = 0
    latency: float = 0.0


class TroubledProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._trouble = Trouble()
        self._lock = threading.Lock()
        self.requests = 0
        self.requests_in_trouble = 0
        self.requests_lost = 0
        self.responses_lost = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def trouble(self, seconds: float, reset_every: int, latency: float) -> None:
        """Opens a window of trouble for ``seconds`` from now."""
        self._trouble = Trouble(time.monotonic() + seconds, reset_every, latency)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _fault(self) -> str | None:
        """What to do with a request that has just come in: None, "lose-request" or
        "lose-response"."""
        trouble = self._trouble
        with self._lock:
            self.requests += 1
            if time.monotonic() > trouble.until:
                return None
            self.requests_in_trouble += 1
            if not trouble.reset_every or self.requests_in_trouble % trouble.reset_every:
                return None
            lose_request = (self.requests_in_trouble // trouble.reset_every) % 2
            if lose_request:
                self.requests_lost += 1
                return "lose-request"
            self.responses_lost += 1
            return "lose-response"

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        lose_response = False
        try:
            while True:
                readable, _, _ = select.select([client, upstream], [], [], 60)
                if not readable:
                    return
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    if source is client:
                        # A new request starts with its method; its body comes in later chunks.
                        if data[:4] in (b"GET ", b"PUT ", b"POST", b"HEAD", b"DELE"):
                            fault = self._fault()
                            if fault == "lose-request":
                                return _reset(client)
                            lose_response = fault == "lose-response"
                            time.sleep(self._trouble.latency if self._in_trouble() else 0)
                        upstream.sendall(data)
                    else:
                        if lose_response:
                            return _reset(client)
                        client.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
            upstream.close()

    def _in_trouble(self) -> bool:
        return time.monotonic() <= self._trouble.until


def _reset(connection: socket.socket) -> None:
    """Closes ``connection`` with a TCP reset (RST), as a dropped connection looks."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()
