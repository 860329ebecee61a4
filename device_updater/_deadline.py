"""Whole-request deadlines for the device's HTTP calls.

``requests`` timeouts bound each socket operation, not a request: a server that trickles one
byte every few seconds (headers or body) keeps every read inside its timeout and the call alive
for as long as it likes, and the daemon's update cycle with it. Within :func:`deadline`, every
connection used by the calling thread is registered; when time is up a timer shuts those
sockets down, so the blocked read returns and ``requests`` raises (a ``TransportError`` for the
device). :func:`watch_session` mounts the adapter that registers connections.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

_local = threading.local()


class Watch:
    """The sockets one deadline covers; :meth:`fire` shuts them down (from the timer thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.fired = False

    def add(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.append(sock)
            fired = self.fired
        if fired:
            _shut(sock)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            socks = list(self._socks)
        for s in socks:
            _shut(s)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


def _register(conn: Any) -> None:
    watch: Watch | None = getattr(_local, "watch", None)
    if watch is not None:
        watch.add(getattr(conn, "sock", None))


class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _register(self)

    def getresponse(self) -> Any:
        _register(self)  # a kept-alive connection is reused without a new connect()
        return super().getresponse()


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _register(self)

    def getresponse(self) -> Any:
        _register(self)
        return super().getresponse()


class _Pool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _TlsPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections register with the current :func:`deadline`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}


def watch_session(session: requests.Session) -> requests.Session:
    """Mount :class:`DeadlineAdapter` on ``session`` (once) for http and https."""
    if not isinstance(session.get_adapter("https://x"), DeadlineAdapter):
        adapter = DeadlineAdapter()
        session.mount("https://", adapter)
        session.mount("http://", adapter)
    return session


def expired() -> bool:
    """Whether the calling thread's current deadline has fired. Check it after a read that
    *returned*: a socket shut down mid-answer can look like a complete (short) answer, e.g.
    headers cut before their blank line parse as a 200 with an empty body."""
    watch: Watch | None = getattr(_local, "watch", None)
    return watch is not None and watch.fired


@contextmanager
def deadline(seconds: float) -> Iterator[Watch]:
    """Shut down the sockets this thread uses inside the block once ``seconds`` have passed."""
    watch = Watch()
    previous = getattr(_local, "watch", None)
    _local.watch = watch
    timer = threading.Timer(seconds, watch.fire)
    timer.daemon = True
    timer.start()
    try:
        yield watch
    finally:
        timer.cancel()
        _local.watch = previous
