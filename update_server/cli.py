"""``edgepkg-server``: database migrations, the production server, operator credentials.

    edgepkg-server [--config FILE] [--database-url URL] init-db|migrate
    edgepkg-server run [--bind 0.0.0.0:8080] [--workers N] [--worker-class gevent|gthread|sync]
        [--worker-connections 1000] [--threads 4] [--keep-alive 75] [--no-access-log]
        [--migrate]
    edgepkg-server create-token --role admin|release|viewer --name NAME [--expires-in 90d]
        [--owner USER]
    edgepkg-server create-user --username NAME --role ROLE
        (password from EDGEPKG_PASSWORD or stdin)
    edgepkg-server create-enrollment [--uses N] [--expires 7d|ISO] [--tags a,b] [--note TEXT]
    edgepkg-server jobs [--once] [--poll 1]   (rollout evaluation, alert rules; one leader)
    edgepkg-server users list|disable NAME|enable NAME|reset-password NAME
    edgepkg-server tokens list|revoke ID
    edgepkg-server audit verify|export [--format jsonl|csv] [--since 7d|ISO] [--output FILE]

Exit status: 0 success, 1 error, 2 usage. ``--json`` prints machine-readable output, and makes
errors a JSON line on stderr (conventions shared with ``edgepkg``: :mod:`edgepkg._cli_support`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Mapping, Sequence

from sqlalchemy.exc import SQLAlchemyError

from edgepkg._cli_support import CliParser, run_cli
from update_server import schema
from update_server.audit import cli as audit_cli, service as audit
from update_server.config import ENV_PREFIX, ServerConfig, load_config
from update_server.db import Database, utcnow
from update_server.errors import BadRequestError, Error
from update_server.operators import cli as accounts_cli
from update_server.operators.auth import create_enrollment_token, create_operator_token, create_user
from update_server.operators.models import ROLES

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str, now: dt.datetime) -> dt.datetime:
    """``90d`` / ``12h`` / ``30m`` relative to now, or an ISO 8601 time."""
    m = _DURATION.match(text.strip())
    if m:
        return now + dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(
            f"--expires {text!r} is neither a duration (7d) nor ISO time"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _config(args: argparse.Namespace) -> ServerConfig:
    overrides = {}
    if args.database_url:
        overrides["database_url"] = args.database_url
    return load_config(args.config, **overrides)


def _print(args: argparse.Namespace, data: Mapping[str, object], text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def cmd_migrate(args: argparse.Namespace) -> int:
    cfg = _config(args)
    schema.upgrade(cfg.database_url)
    _print(
        args,
        {"revision": schema.current_revision(cfg.database_url)},
        f"database at revision {schema.current_revision(cfg.database_url)}",
    )
    return 0


def cmd_create_token(args: argparse.Namespace) -> int:
    cfg = _config(args)
    db = Database(cfg.database_url)
    now = utcnow()
    expires = parse_expiry(args.expires_in, now) if args.expires_in else None
    with db.session() as s:
        row, plaintext = create_operator_token(
            s, name=args.name, role=args.role, expires_at=expires
        )
        row.created_by = args.owner  # approvals count the token as this user
        audit.record(s, "cli", "token.create", row.id, {"name": row.name, "role": row.role})
        data = {
            "id": row.id,
            "name": row.name,
            "role": row.role,
            "token": plaintext,
            "expires_at": expires.isoformat() if expires else None,
        }
    db.dispose()
    _print(args, data, plaintext)
    return 0


def cmd_create_user(args: argparse.Namespace) -> int:
    cfg = _config(args)
    password = os.environ.get("EDGEPKG_PASSWORD")
    if password is None:
        password = sys.stdin.readline().rstrip("\n")
    db = Database(cfg.database_url)
    with db.session() as s:
        user = create_user(s, username=args.username, password=password, role=args.role)
        audit.record(s, "cli", "user.create", user.username, {"role": user.role})
        data = {"id": user.id, "username": user.username, "role": user.role}
    db.dispose()
    _print(args, data, f"user {args.username} ({args.role}) created")
    return 0


def cmd_create_enrollment(args: argparse.Namespace) -> int:
    cfg = _config(args)
    now = utcnow()
    expires = parse_expiry(args.expires, now) if args.expires else None
    tags = [t.strip() for t in (args.tags or "").split(",") if t.strip()]
    from update_server._validate import get_tags

    tags = get_tags({"tags": tags})
    db = Database(cfg.database_url)
    with db.session() as s:
        row, plaintext = create_enrollment_token(
            s, max_uses=args.uses, expires_at=expires, tags=tags, note=args.note, created_by="cli"
        )
        audit.record(s, "cli", "enrollment_token.create", row.id,
                     {"max_uses": row.max_uses, "tags": tags})
        data = {
            "id": row.id,
            "token": plaintext,
            "max_uses": row.max_uses,
            "tags": tags,
            "expires_at": expires.isoformat() if expires else None,
        }
    db.dispose()
    _print(args, data, plaintext)
    return 0


WORKER_CLASSES = ("gevent", "gthread", "sync")


def gunicorn_argv(
    bind: str,
    workers: int,
    extra: Sequence[str] = (),
    *,
    worker_class: str = "gevent",
    threads: int = 4,
    keep_alive: int = 75,
    access_log: bool = True,
    worker_connections: int = 1000,
) -> list[str]:
    """The gunicorn command line.

    Default: ``gevent`` workers. Each connection is a greenlet, so a slow or idle client costs
    a few KB of memory, not one of a handful of threads: 40 clients trickling headers or 200
    idle keep-alive connections no longer starve health probes and devices (they did with
    ``gthread``: 2 workers x 4 threads, one connection per thread). psycopg 3 notices gevent's
    patched ``select`` and waits cooperatively; SQLite calls are short and local.
    ``gthread`` (a thread per connection) and ``sync`` (one request per process) remain for
    a deployment behind a buffering proxy (nginx), which absorbs slow clients itself."""
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "update_server.wsgi:app",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--graceful-timeout",
        "20",
    ]
    if worker_class == "gthread":
        argv += ["--threads", str(threads), "--keep-alive", str(keep_alive)]
    elif worker_class == "gevent":
        argv += ["--worker-connections", str(worker_connections), "--keep-alive", str(keep_alive)]
    if access_log:
        argv += ["--access-logfile", "-"]
    return [*argv, *extra]


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.migrate:
        schema.upgrade(cfg.database_url)
    env = dict(os.environ)
    if args.config:
        env[ENV_PREFIX + "CONFIG"] = os.path.abspath(args.config)
    env[ENV_PREFIX + "DATABASE_URL"] = cfg.database_url
    if not env.get(ENV_PREFIX + "SECRET_KEY") and not _file_has_secret(args.config):
        # All workers must share one key or dashboard sessions break between them.
        env[ENV_PREFIX + "SECRET_KEY"] = secrets.token_hex(32)
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="edgepkg-metrics-")
    argv = gunicorn_argv(
        args.bind,
        args.workers,
        args.gunicorn_arg or (),
        worker_class=args.worker_class,
        threads=args.threads,
        keep_alive=args.keep_alive,
        access_log=not args.no_access_log,
        worker_connections=args.worker_connections,
    )
    os.execve(sys.executable, argv, env)
    return 0  # pragma: no cover


def cmd_jobs(args: argparse.Namespace) -> int:
    import signal
    import threading
    import time

    from update_server.jobs import JobRunner, default_jobs

    cfg = _config(args)
    runner = JobRunner(Database(cfg.database_url), default_jobs(cfg.poll_interval))
    if args.once:
        ran = runner.tick(time.time())
        runner.leadership.release()
        _print(
            args,
            {"ran": ran, "failed": runner.failed},
            ", ".join(ran) or "not the leader: nothing ran",
        )
        return 1 if runner.failed else 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    runner.run(stop, poll_s=args.poll)
    return 0


def _file_has_secret(path: str | None) -> bool:
    if path is None:
        return False
    try:
        return bool(load_config(path, env={}).secret_key) and "secret_key" in open(path).read()
    except (Error, OSError):
        return False


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog="edgepkg-server", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="TOML config file (else $EDGEPKG_SERVER_CONFIG)")
    p.add_argument("--database-url", help="overrides database_url")
    p.add_argument("--json", action="store_true", help="machine-readable output (errors too)")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=CliParser)
    for name in ("init-db", "migrate"):
        s = sub.add_parser(name, help="create or upgrade the database schema (Alembic)")
        s.set_defaults(func=cmd_migrate)
    s = sub.add_parser("run", help="run the server under gunicorn")
    s.add_argument(
        "--bind", default="127.0.0.1:8080", help="HOST:PORT to listen on (default %(default)s)"
    )
    s.add_argument(
        "--workers",
        type=int,
        default=max(2, os.cpu_count() or 1),
        help="worker processes (default: one per core, at least 2)",
    )
    s.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default="gevent",
        help="gevent (default): a greenlet per connection, so slow or idle clients cannot "
        "starve the server; gthread: threads + keep-alive; sync: one request per process",
    )
    s.add_argument(
        "--worker-connections",
        type=int,
        default=1000,
        help="open connections per gevent worker (default %(default)s)",
    )
    s.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    s.add_argument(
        "--keep-alive", type=int, default=75, help="seconds an idle keep-alive connection stays"
    )
    s.add_argument(
        "--no-access-log", action="store_true", help="no per-request access log on stdout"
    )
    s.add_argument("--migrate", action="store_true", help="migrate the database first")
    s.add_argument("--gunicorn-arg", action="append", help="extra gunicorn argument (repeat)")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("create-token", help="create an operator API token (printed once)")
    s.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    s.add_argument("--name", required=True, help="who or what uses the token (shown in audits)")
    s.add_argument("--expires-in", help="e.g. 90d; default: never")
    s.add_argument("--owner", help="the user the token acts for (four-eyes approvals)")
    s.set_defaults(func=cmd_create_token)
    s = sub.add_parser("create-user", help="create a dashboard user (password on stdin)")
    s.add_argument("--username", required=True, help="login name (1-100 characters, unique)")
    s.add_argument("--role", required=True, choices=ROLES, help="what the user may do")
    s.set_defaults(func=cmd_create_user)
    s = sub.add_parser("create-enrollment", help="create a device enrollment token")
    s.add_argument("--uses", type=int, default=1, help="how many devices may enroll (default 1)")
    s.add_argument("--expires", help="duration (7d) or ISO time; default: never")
    s.add_argument("--tags", help="comma-separated tags given to enrolled devices")
    s.add_argument("--note", help="free text shown with the token in listings")
    s.set_defaults(func=cmd_create_enrollment)
    s = sub.add_parser("jobs", help="run background jobs (safe on every node: one leads)")
    s.add_argument("--once", action="store_true", help="one tick, then exit")
    s.add_argument("--poll", type=float, default=1.0, help="seconds between ticks")
    s.set_defaults(func=cmd_jobs)
    accounts_cli.register(sub, _config, _print)
    audit_cli.register(sub, _config, _print, audit_cli.since_parser(parse_expiry))
    return p


def _describe(exc: BaseException) -> str | None:
    if isinstance(exc, Error):
        return exc.message
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {exc.__class__.__name__}: {exc}".splitlines()[0]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    return run_cli(
        "edgepkg-server",
        parser,
        argv,
        lambda args: int(args.func(args)),
        errors=(Error, SQLAlchemyError),
        describe=_describe,
    )
