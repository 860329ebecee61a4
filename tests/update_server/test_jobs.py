"""Background jobs on several app nodes sharing one database: each tick runs exactly once."""

from __future__ import annotations

import collections
import datetime as dt
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.orm import Session

from update_server.db import get_db
from update_server.jobs import (
    FileLeadership,
    Job,
    JobRunner,
    PgAdvisoryLeadership,
    default_jobs,
    leadership_for,
)

INTERVAL = 10.0
TICKS = 15


def _nodes(
    n: int, server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> tuple[list[JobRunner], list[tuple[str, int]]]:
    """``n`` app instances on one database, each with a runner whose job records a side effect
    (which node ran which slot) after a real query in the job's transaction."""
    done: list[tuple[str, int]] = []
    lock = threading.Lock()
    runners = []
    for i in range(n):
        app = make_server_app(server_db_url, repo_dir=str(tmp_path), testing=True)
        node = f"node{i}"

        def record(session: Session, now: dt.datetime, node: str = node) -> None:
            assert session.execute(text("SELECT count(*) FROM devices")).scalar() == 0
            with lock:
                done.append((node, int(now.timestamp() // INTERVAL)))

        runners.append(JobRunner(get_db(app), [Job("count", INTERVAL, record)], node=node))
    return runners, done


def test_two_nodes_ticking_concurrently_run_each_tick_once(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    runners, done = _nodes(2, server_db_url, tmp_path, make_server_app)
    barrier = threading.Barrier(len(runners))
    errors: list[BaseException] = []

    def loop(r: JobRunner) -> None:
        try:
            for slot in range(TICKS):
                barrier.wait(timeout=30)  # both nodes hit the same slot at the same moment
                for sub in (0.1, 0.5, 0.9):  # several polls within one slot
                    r.tick(slot * INTERVAL + sub * INTERVAL)
            # Both stay up to the end: a node shutting down while the other still polls the same
            # slot hands over leadership, and the new leader may run that slot again (the
            # documented hand-over case, tested apart in test_follower_takes_over...).
            barrier.wait(timeout=30)
        except BaseException as exc:  # surfaced below: a thread's assert is otherwise lost
            errors.append(exc)
        finally:
            r.leadership.release()

    threads = [threading.Thread(target=loop, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    per_slot = collections.Counter(slot for _, slot in done)
    assert sorted(per_slot) == list(range(TICKS))
    assert set(per_slot.values()) == {1}, per_slot


def test_follower_takes_over_when_the_leader_stops(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    (a, b), done = _nodes(2, server_db_url, tmp_path, make_server_app)
    assert a.tick(0.0) == ["count"]
    assert b.tick(1.0) == []  # same slot, a leads
    assert b.tick(INTERVAL) == []  # next slot, a still leads (it just has not polled yet)
    assert a.tick(INTERVAL) == ["count"]
    a.leadership.release()  # a shuts down
    assert b.tick(2 * INTERVAL) == ["count"]
    assert a.tick(2 * INTERVAL + 1) == []  # a is back, but b leads now
    b.leadership.release()
    assert done == [("node0", 0), ("node0", 1), ("node1", 2)]


@pytest.mark.postgres
def test_advisory_lock_dies_with_the_leader_connection(
    postgres_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    """A leader whose process or connection dies loses the lock: PostgreSQL releases it."""
    app = make_server_app(postgres_url, repo_dir=str(tmp_path), testing=True)
    engine = get_db(app).engine
    assert engine is not None
    a, b = PgAdvisoryLeadership(engine, "t-die"), PgAdvisoryLeadership(engine, "t-die")
    assert isinstance(leadership_for(engine), PgAdvisoryLeadership)
    assert a.try_acquire() and not b.try_acquire()
    assert a._conn is not None
    pid = a._conn.execute(text("SELECT pg_backend_pid()")).scalar()
    with engine.connect() as c:
        c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    deadline = time.monotonic() + 10  # the backend exits (and drops its locks) shortly after
    while not b.try_acquire() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.try_acquire()
    assert not a.try_acquire()  # a notices the dead connection and is now a follower
    b.release()
    assert a.try_acquire()
    a.release()


def test_file_lock_is_exclusive_between_open_files(tmp_path: Path) -> None:
    path = str(tmp_path / "db.jobs.lock")
    a, b = FileLeadership(path), FileLeadership(path)
    assert a.try_acquire() and a.try_acquire() and not b.try_acquire()
    a.release()
    assert b.try_acquire()
    b.release()


def test_default_jobs_evaluate_rollouts_and_alerts_on_the_leader_only(
    server_db_url: str, tmp_path: Path, make_server_app: Callable[..., Flask]
) -> None:
    apps = [make_server_app(server_db_url, repo_dir=str(tmp_path), testing=True) for _ in "ab"]
    runners = [JobRunner(get_db(x), default_jobs(300), node=n) for x, n in zip(apps, "ab")]
    assert runners[0].tick(1000.0) == ["rollouts.evaluate", "alerts.evaluate"]
    assert runners[1].tick(1000.0) == []
    assert runners[0].tick(1031.0) == ["rollouts.evaluate"]  # alerts: once per poll interval
    for r in runners:
        r.leadership.release()


def test_cli_jobs_once_runs_the_jobs_and_a_second_node_waits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from update_server import cli

    url = f"sqlite:///{tmp_path / 'server.db'}"
    assert cli.main(["--database-url", url, "migrate"]) == 0
    capsys.readouterr()
    leader = FileLeadership(f"{tmp_path / 'server.db'}.leader.jobs.lock")
    assert leader.try_acquire()  # another node leads
    assert cli.main(["--database-url", url, "--json", "jobs", "--once"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ran": [], "failed": []}
    leader.release()
    assert cli.main(["--database-url", url, "--json", "jobs", "--once"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"ran": ["rollouts.evaluate", "alerts.evaluate"], "failed": []}
