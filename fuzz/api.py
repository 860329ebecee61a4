"""Schema-driven fuzzer of the update server's HTTP API (issue 13 item 8).

Every path and method of the OpenAPI document (``/api/openapi.json``) is called through the
Flask test client of a real app on a real database (SQLite or PostgreSQL), as an operator
(bearer token), as an enrolled device (a fresh ECDSA signature and nonce per request, made by
:class:`update_server.testing.SoftwareDevice`) and unauthenticated. Values come from the
operation's JSON schemas (a seeded generator, ``fuzz._api_gen``); half the requests get hostile
values injected into string and number fields (lone surrogates, NUL, NaN/Infinity, 2^63,
huge integers, deep nesting, odd datetimes, CR/LF) and the TUF file routes get hostile paths.

Checks per request: no 5xx; the status is one the document lists for the operation (or a
generic 405/413/429); ``/api`` answers are JSON and errors have ``{"error": {code, message}}``;
no request takes longer than ``--slow`` seconds (a *hang*). Each 500 is attributed to its cause
(exception type, message and the innermost application frame, logged by the app's
``internal_error`` handler) and split into causes already listed in issue 13 ("known", fixed on
the hardening branch) and new ones.

    python -m fuzz.api --db sqlite|postgres --requests 50000 [--seed 13] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz._api_gen import HOSTILE_STRINGS, Operation, Request, draw_request, operations

# 308: Werkzeug's canonical-URL redirect (an empty path id makes "//"); 405/413/429 may answer
# any operation.
GENERIC_STATUSES = frozenset({308, 405, 413, 429})
# 500 causes listed in issue 13 (fixed by the validation layer on the hardening branch); a 500
# whose cause matches none of these is a new finding.
# (label, text in the cause, text in its "@ package/file:line" location or "" for anywhere)
KNOWN_CAUSES: tuple[tuple[str, str, str], ...] = (
    ("surrogate", "surrogates not allowed", ""),
    ("surrogate", "UnicodeEncodeError", ""),
    ("NUL", "NUL (0x00)", ""),
    ("NUL", "\\x00", ""),
    ("NUL", "embedded null", ""),
    ("non-finite float", "NaN", ""),
    ("non-finite float", "Infinity", ""),
    # listed: free_disk_bytes (check-in) and events?offset= (operator API)
    ("integer >= 2^63", "out of range", "devices/"),
    ("integer >= 2^63", "too large", "devices/"),
    ("integer >= 2^63", "OverflowError", "devices/"),
    ("integer >= 2^63", "out of range", "operators/"),
    ("integer >= 2^63", "too large", "operators/"),
    ("integer >= 2^63", "OverflowError", "operators/"),
    ("datetime overflow", "year 0 is out of range", ""),
    ("datetime overflow", "date value out of range", ""),
    ("datetime overflow", "year is out of range", ""),
)


class _Capture(logging.Handler):
    """Collects the exceptions the app's catch-all handler logs before answering 500."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            frames = traceback.extract_tb(record.exc_info[2])
            app = [f for f in frames if "/update_server/" in f.filename] or frames
            where = "?"
            if app:
                path = Path(app[-1].filename)
                where = f"{path.parent.name}/{path.name}:{app[-1].lineno}"
            self.last = f"{type(exc).__name__}: {str(exc)[:160]} @ {where}"
        else:
            self.last = record.getMessage()[:200]


@dataclass
class Result:
    db: str
    requests: int = 0
    seconds: float = 0.0
    per_status: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    undocumented: Counter[str] = field(default_factory=Counter)
    not_json: list[str] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    slowest: float = 0.0
    operations: list[str] = field(default_factory=list)  # every operation the fuzzer knows

    def causes(self) -> dict[str, Counter[str]]:
        known: Counter[str] = Counter()
        new: Counter[str] = Counter()
        for e in self.server_errors:
            label = classify(e["cause"])
            if label is None:
                new[f"{e['operation']}: {e['cause']}"] += 1
            else:
                known[label] += 1
        return {"known": known, "new": new}

    def summary(self) -> dict[str, Any]:
        causes = self.causes()
        return {
            "db": self.db, "requests": self.requests, "seconds": round(self.seconds, 1),
            "status_5xx": len(self.server_errors),
            "known_5xx_by_cause": dict(causes["known"]),
            "new_5xx_by_cause": dict(causes["new"]),
            "5xx_by_operation": dict(Counter(
                f"{e['operation']}: {e['cause'][:90]}" for e in self.server_errors)),
            "untyped_exceptions": len(self.server_errors),
            "undocumented_statuses": dict(self.undocumented),
            "not_json": self.not_json[:20], "hangs": self.hangs[:20],
            "slowest_s": round(self.slowest, 3),
            "operations": len(self.per_operation),
            "per_status": {str(k): v for k, v in sorted(self.per_status.items())},
        }


def classify(cause: str) -> str | None:
    """The issue-13 label of a 500's cause, or ``None`` for a cause not listed there."""
    text, _, where = cause.rpartition(" @ ")
    for label, needle, place in KNOWN_CAUSES:
        if needle in (text or cause) and place in where:
            return label
    return None


class Target:
    """A real app on ``db_url`` with the data the fuzzer needs ids of: an admin token, an
    enrolled device, a second device, a rollout and a fleet enrollment token."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        from update_server import schema
        from update_server.app import create_app
        from update_server.config import load_config
        from update_server.db import get_db
        from update_server.operators.auth import create_enrollment_token, create_operator_token
        from update_server.testing import SoftwareDevice
        from update_server.tuf.releases import ReleaseTarget

        schema.upgrade(db_url)
        releases: list[Any] = [
            ReleaseTarget("det", v, "full", f"models/det/{v}/det-{v}.edgepkg", 1000, "ab" * 32,
                          None, {}) for v in ("1.0.0", "1.1.0")]
        cfg = load_config(env={}, database_url=db_url, repo_dir=str(workdir), testing=True,
                          secret_key="fuzz", max_content_length=256 * 1024)
        self.app = create_app(cfg, release_reader=lambda _d: list(releases))
        self.app.config["TESTING"] = False  # let the catch-all 500 handler answer, as deployed
        self.db = get_db(self.app)
        with self.db.session() as s:
            self.operator = create_operator_token(s, name="fuzz", role="admin")[1]
            token_row, fleet = create_enrollment_token(s, max_uses=10**6, tags=["fuzz"])
            token_id = str(token_row.id)
        self.client = self.app.test_client()
        self.device = SoftwareDevice()
        other = SoftwareDevice()
        for dev in (self.device, other):
            r = self.client.post("/api/v1/enroll", data=dev.enroll_body(fleet),
                                 content_type="application/json")
            assert r.status_code == 201, r.data
        stages = [{"percent": 50}, {"percent": 100}]
        r = self.client.post("/api/v1/rollouts",
                             json={"model": "det", "version": "1.1.0", "stages": stages},
                             headers={"Authorization": f"Bearer {self.operator}"})
        assert r.status_code == 201, r.data
        self.ids: dict[str, list[str]] = {
            "device_id": [self.device.device_id, other.device_id],
            "rollout_id": [str(r.get_json()["id"])],
            "token_id": [token_id],
            "_token": [fleet],
        }
        spec = self.client.get("/api/openapi.json").get_json()
        self.ops = operations(spec)
        self.ops += [
            Operation("GET", "/tuf/metadata/{f}", "public", frozenset({200, 304, 400, 404}),
                      [{"name": "f", "in": "path"}], None),
            Operation("GET", "/tuf/targets/{f}", "public", frozenset({200, 206, 304, 400, 404}),
                      [{"name": "f", "in": "path"}], None),
        ]
        self.ids["f"] = ["timestamp.json", "1.root.json", "a/../../etc/passwd", "a\x00b"]
        self.capture = _Capture()
        logging.getLogger("update_server").addHandler(self.capture)

    def close(self) -> None:
        logging.getLogger("update_server").removeHandler(self.capture)
        self.db.dispose()

    def send(self, req: Request) -> Any:
        headers: dict[str, str] = {"Accept": "application/json"}
        body = req.body if req.body is not None else b""
        if req.body is not None:
            headers["Content-Type"] = "application/json"
        if req.auth == "operator":
            headers["Authorization"] = f"Bearer {self.operator}"
        elif req.auth == "device":
            headers.update(self.device.signed_headers(req.op.method, req.path, body))
        return self.client.open(req.path, method=req.op.method, data=body, headers=headers)


def run(db_url: str, requests: int, *, seed_: int = 13, db_name: str = "sqlite",
        slow_s: float = 5.0, progress: Callable[[int], None] | None = None) -> Result:
    """Send ``requests`` fuzzed requests to a fresh app on ``db_url`` (an empty database)."""
    res = Result(db_name)
    with tempfile.TemporaryDirectory(prefix="edgepkg-apifuzz-") as tmp:
        target = Target(db_url, Path(tmp))
        try:
            _drive(target, res, requests, seed_, slow_s, progress)
        finally:
            target.close()
    return res


def _drive(target: Target, res: Result, requests: int, seed_: int, slow_s: float,
           progress: Callable[[int], None] | None) -> None:
    t0 = time.monotonic()
    res.operations = [op.name for op in target.ops]
    rng = random.Random(seed_)
    while res.requests < requests:
        req = draw_request(rng, target.ops, target.ids)
        target.capture.last = None
        start = time.monotonic()
        resp = target.send(req)
        took = time.monotonic() - start
        res.requests += 1
        res.slowest = max(res.slowest, took)
        if took > slow_s:
            res.hangs.append({"request": f"{req.op.method} {req.path[:120]}",
                              "seconds": round(took, 2)})
        check(res, req, resp, target.capture.last)
        if progress is not None and res.requests % 1000 == 0:
            progress(res.requests)
    res.seconds = time.monotonic() - t0


def check(res: Result, req: Request, resp: Any, cause: str | None) -> None:
    status = resp.status_code
    res.per_status[status] += 1
    res.per_operation[req.op.name] += 1
    if status >= 500:
        res.server_errors.append({
            "operation": req.op.name, "status": status, "auth": req.auth,
            "path": req.path[:200], "body": (req.body or b"")[:300].decode("utf-8", "replace"),
            "cause": cause or "(no exception logged)",
        })
        return
    if status not in req.op.statuses and status not in GENERIC_STATUSES:
        res.undocumented[f"{req.op.name} -> {status}"] += 1
    if req.op.path.startswith("/api/") and status != 204 and not 300 <= status < 400:
        ctype = resp.headers.get("Content-Type", "")
        try:
            body = json.loads(resp.get_data())
        except ValueError:
            body = None
        ok = ctype.startswith("application/json") and body is not None
        if status < 400 and ctype.startswith(EXPORT_TYPES):
            ok = True  # a documented download (the audit log as CSV / JSON Lines), not an answer
        if ok and status >= 400:
            err = body.get("error") if isinstance(body, dict) else None
            ok = isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(
                err.get("message"), str)
        if not ok and len(res.not_json) < 100:
            res.not_json.append(f"{req.op.name} -> {status} {ctype}")


EXPORT_TYPES = ("text/csv", "application/x-ndjson")


@contextlib.contextmanager
def database(kind: str) -> Iterator[str]:
    """An empty database URL: a temp SQLite file, or a database in a throwaway PostgreSQL
    cluster (the test suite's ``PostgresCluster``)."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="edgepkg-apifuzz-db-") as d:
            yield f"sqlite:///{d}/server.db"
        return
    from tests.fixtures.postgres import PostgresCluster, _pg_bin

    bin_dir = _pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (set EDGEPKG_PG_BIN)")
    base = Path(tempfile.mkdtemp(prefix="edgepkg-apifuzz-pg-"))
    cluster = PostgresCluster(bin_dir, base)
    cluster.start()
    try:
        yield cluster.create_database("fuzz")
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.api", description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--slow", type=float, default=5.0, help="seconds after which a request "
                    "counts as a hang")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    logging.getLogger("update_server").propagate = False  # the 500s are counted, not printed
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def show(n: int) -> None:
        print(f"  {n}/{args.requests} requests", file=sys.stderr, flush=True)

    with database(args.db) as url:
        res = run(url, args.requests, seed_=args.seed, db_name=args.db, slow_s=args.slow,
                  progress=show)
    summary = {"started": started, "seed": args.seed, **res.summary()}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=True))
    else:
        print(f"{res.requests} requests on {args.db} in {res.seconds:.1f} s: "
              f"{len(res.server_errors)} 5xx, {len(res.hangs)} hangs, slowest "
              f"{res.slowest:.2f} s, {len(res.per_operation)} operations")
        for kind, counter in res.causes().items():
            for cause, n in counter.most_common(30):
                print(f"  5xx {kind}: {n} x {cause}")
        for what, n in res.undocumented.most_common(30):
            print(f"  undocumented status: {n} x {what}")
        for nj in res.not_json[:10]:
            print(f"  not JSON: {nj}")
    return 1 if res.server_errors or res.hangs else 0


__all__ = ["HOSTILE_STRINGS", "Result", "Target", "classify", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
