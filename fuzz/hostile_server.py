"""A hostile or broken update server for the device daemon (issue 13 items 8 and 9).

:class:`HostileServer` listens on 127.0.0.1 (stdlib ``http.server``, one thread per connection)
and forwards every request to a real upstream update server, except the requests a
:class:`Scenario` picks: those it answers itself, badly. Routes are classed as ``api`` (check-in,
events, rollout status), ``meta`` (TUF metadata) and ``target`` (TUF targets), so a scenario can
let the check-in through and attack only the TUF metadata, or the other way round.

Behaviours: malformed JSON, JSON over the device's 1 MiB cap (declared and chunked), invalid
shapes, a Content-Length shorter or longer than the body, trickled bodies and headers, a stall
past the read timeout, redirect loops, 5xx and 429 storms, connection resets, TUF metadata
truncated, with broken signatures or huge, and targets longer or shorter than signed.

    python -m fuzz.hostile_server --upstream http://127.0.0.1:8080 --scenario trickle_body
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = str  # "api", "meta" or "target"


def route_of(path: str) -> Route:
    if path.startswith("/tuf/metadata/"):
        return "meta"
    if path.startswith("/tuf/targets/"):
        return "target"
    return "api"


@dataclass(frozen=True)
class Scenario:
    name: str
    routes: frozenset[Route]
    # act(handler, upstream) answers the request; ``upstream()`` fetches the real answer
    act: Callable[[Handler, Callable[[], tuple[int, dict[str, str], bytes]]], None]
    what: str


class Handler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._body()
        self.server.hits.append((self.command, self.path))

        def upstream() -> tuple[int, dict[str, str], bytes]:
            return self.server.forward(self.command, self.path, dict(self.headers), body)

        sc = self.server.scenario
        if sc is not None and route_of(self.path) in sc.routes:
            self.close_connection = True
            try:
                sc.act(self, upstream)
            except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
                pass  # the device hung up on us: that is its right
            return
        status, headers, data = upstream()
        self.raw(status, data, headers)

    do_GET = do_POST = do_PATCH = do_DELETE = _handle

    # -- ways to answer ------------------------------------------------------------------------
    def raw(self, status: int, data: bytes, headers: dict[str, str] | None = None, *,
            length: int | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "date",
                                 "server"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data) if length is None else length))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def chunked(self, status: int, chunks: Any) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for c in chunks:
            if self.server.stopping.is_set():
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
        self.wfile.write(b"0\r\n\r\n")

    def trickle(self, data: bytes, delay: float) -> None:
        """Write ``data`` one byte at a time, ``delay`` seconds apart (until the server stops)."""
        for i in range(len(data)):
            if self.server.stopping.wait(delay):
                return
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), not a clean FIN."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: str, scenario: Scenario | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.upstream = upstream.rstrip("/")
        self.scenario = scenario
        self.stopping = threading.Event()
        self.hits: list[tuple[str, str]] = []
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def forward(self, method: str, path: str, headers: dict[str, str],
                body: bytes) -> tuple[int, dict[str, str], bytes]:
        drop = {"host", "content-length", "connection", "accept-encoding"}
        req = urllib.request.Request(
            self.upstream + path, data=body if method in ("POST", "PATCH") else None,
            method=method, headers={k: v for k, v in headers.items() if k.lower() not in drop})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def __enter__(self) -> HostileServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


# -- the scenarios ---------------------------------------------------------------------------
_API = frozenset({"api"})
_META = frozenset({"meta"})
_TARGET = frozenset({"target"})
_ALL = frozenset({"api", "meta", "target"})
Up = Callable[[], tuple[int, dict[str, str], bytes]]


def _const(status: int, data: bytes, **kw: Any) -> Callable[[Handler, Up], None]:
    return lambda h, _up: h.raw(status, data, **kw)


def _huge_declared(h: Handler, _up: Up) -> None:
    h.raw(200, b'{"poll_interval": 60, "pad": "' + b"x" * (3 << 20) + b'"}')


def _huge_chunked(h: Handler, _up: Up) -> None:
    h.chunked(200, [b'{"pad": "'] + [b"x" * 65536] * 64 + [b'"}'])  # 4 MiB, no length


def _short_length(h: Handler, _up: Up) -> None:
    h.raw(200, b'{"poll_interval": 60', length=5000)  # promises 5000, sends 19, hangs up


def _long_length(h: Handler, _up: Up) -> None:
    h.raw(200, b'{"poll_interval": 60, "assignments": []}' + b"GARBAGE" * 100, length=12)


def _trickle_body(h: Handler, _up: Up) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "100000")
    h.end_headers()
    h.trickle(b" " * 100000, 0.2)  # always under the read timeout, never finished


def _trickle_headers(h: Handler, _up: Up) -> None:
    h.trickle(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 60000 + b"\r\n\r\n{}", 0.2)


def _stall(h: Handler, _up: Up) -> None:
    h.server.stopping.wait(120)  # read the request, answer nothing


def _redirect_loop(h: Handler, _up: Up) -> None:
    h.raw(302, b"", {"Location": h.path, "Content-Type": "text/plain"})


def _reset(h: Handler, _up: Up) -> None:
    h.reset()


def _garbage_status(h: Handler, _up: Up) -> None:
    h.wfile.write(b"HTTP/9.9 abc Nonsense\r\n\r\n\x00\xff")


def _mutate_upstream(mutate: Callable[[bytes], bytes]) -> Callable[[Handler, Up], None]:
    def act(h: Handler, up: Up) -> None:
        status, headers, data = up()
        h.raw(status, mutate(data) if status == 200 else data, headers)
    return act


def _bad_signature(data: bytes) -> bytes:
    try:
        doc = json.loads(data)
        for sig in doc.get("signatures", []):
            sig["sig"] = ("0" if sig["sig"][:1] != "0" else "1") + sig["sig"][1:]
        return json.dumps(doc).encode()
    except (ValueError, AttributeError, KeyError, TypeError):
        return data[::-1]


def _bump_version(data: bytes) -> bytes:
    doc = json.loads(data)
    doc["signed"]["version"] = 2**63  # unsigned change: must fail the signature check
    return json.dumps(doc).encode()


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("malformed_json", _API, _const(200, b'{"poll_interval": 60, "assignments": ['),
             "200 with JSON cut short"),
    Scenario("not_json", _API, _const(200, b"<html>maintenance</html>",
                                      headers={"Content-Type": "text/html"}), "HTML at 200"),
    Scenario("invalid_shape", _API, _const(200, json.dumps({
        "poll_interval": "soon", "assignments": {"x": [1, 2]}, "accepted": -1,
        "status": ["running"]}).encode()), "JSON of the wrong shape"),
    Scenario("hostile_values", _API, _const(200, (
        b'{"poll_interval": 1e999, "assignments": [{"action": "install", "model": "../x\\u0000",'
        b' "version": "\\ud800", "target": "' + b"a" * 5000 + b'"}], "accepted": NaN}')),
        "NaN, Infinity, lone surrogates, NUL, traversal"),
    Scenario("deep_json", _API, _const(200, b"[" * 100000 + b"]" * 100000),
             "JSON nested 100,000 deep (under the size cap)"),
    Scenario("huge_json", _API, _huge_declared, "3 MiB JSON with its Content-Length"),
    Scenario("huge_chunked", _ALL, _huge_chunked, "4 MiB chunked, no Content-Length"),
    Scenario("short_content_length", _ALL, _short_length, "Content-Length longer than the body"),
    Scenario("long_content_length", _API, _long_length, "Content-Length shorter than the body"),
    Scenario("trickle_body", _ALL, _trickle_body, "body trickled 5 bytes/s, never finished"),
    Scenario("trickle_headers", _ALL, _trickle_headers, "headers trickled 5 bytes/s"),
    Scenario("stall", _ALL, _stall, "request read, nothing answered"),
    Scenario("redirect_loop", _ALL, _redirect_loop, "302 to itself"),
    Scenario("storm_500", _ALL, _const(500, b'{"error": {"code": "x", "message": "boom"}}'),
             "500 on every request"),
    Scenario("storm_503", _ALL, _const(503, b"", headers={"Retry-After": "999999999999"}),
             "503 with an absurd Retry-After"),
    Scenario("storm_429", _ALL, _const(429, b'{"error": {}}', headers={"Retry-After": "-5"}),
             "429 with a negative Retry-After"),
    Scenario("reset", _ALL, _reset, "connection reset (RST) after the request"),
    Scenario("garbage_status", _ALL, _garbage_status, "not an HTTP status line"),
    Scenario("meta_truncated", _META, _mutate_upstream(lambda d: d[: len(d) // 2]),
             "TUF metadata cut in half"),
    Scenario("meta_bad_signature", _META, _mutate_upstream(_bad_signature),
             "TUF metadata with each signature altered"),
    Scenario("meta_unsigned_change", _META, _mutate_upstream(_bump_version),
             "TUF metadata changed after signing (version 2^63)"),
    Scenario("meta_huge", _META, _const(200, b'{"signed": "' + b"x" * (20 << 20) + b'"}'),
             "20 MiB metadata file"),
    Scenario("target_longer", _TARGET, _mutate_upstream(lambda d: d + b"\0" * (8 << 20)),
             "target 8 MiB longer than signed"),
    Scenario("target_shorter", _TARGET, _mutate_upstream(lambda d: d[: len(d) // 2]),
             "target shorter than signed"),
    Scenario("target_flipped", _TARGET, _mutate_upstream(
        lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:] if len(d) > 100 else d[::-1]),
        "target with one bit flipped"),
)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.hostile_server",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True, help="the real update server to forward to")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default=None)
    args = ap.parse_args(argv)
    server = HostileServer(args.upstream, SCENARIOS.get(args.scenario or ""))
    print(f"hostile server on {server.url} -> {args.upstream} ({args.scenario or 'pass-through'})",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
