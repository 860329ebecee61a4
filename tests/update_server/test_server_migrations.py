"""Migrations up from empty on SQLite and PostgreSQL match the models; the CLI works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from update_server import schema
from update_server.cli import main
from update_server.db import Database, init_engine
from update_server.operators.auth import hash_token
from update_server.operators.models import EnrollmentToken, OperatorToken


def test_migrations_from_empty_match_the_models(db_url: str) -> None:
    schema.upgrade(db_url)
    assert schema.current_revision(db_url) == schema.head_revision()
    engine = init_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, schema.target_metadata())
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"
    schema.upgrade(db_url)  # idempotent: already at head


def test_cli_init_db_and_credentials(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    assert main(["--database-url", url, "init-db"]) == 0
    assert (
        main(["--database-url", url, "--json", "create-token", "--role", "release", "--name", "ci"])
        == 0
    )
    token = json.loads(capsys.readouterr().out.split("\n", 1)[1])["token"]
    assert (
        main(
            [
                "--database-url",
                url,
                "--json",
                "create-enrollment",
                "--uses",
                "50",
                "--expires",
                "7d",
                "--tags",
                "site:a,cam",
            ]
        )
        == 0
    )
    enrollment = json.loads(capsys.readouterr().out)
    db = Database(url)
    with db.session() as s:
        op = s.scalar(select(OperatorToken))
        assert op is not None and op.role == "release" and op.token_hash == hash_token(token)
        et = s.get(EnrollmentToken, enrollment["id"])
        assert et is not None and et.max_uses == 50 and et.tags == ["site:a", "cam"]
        assert et.expires_at is not None
    db.dispose()


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "update_server",
            "--database-url",
            f"sqlite:///{tmp_path / 'nope' / 'x.db'}",
            "create-enrollment",
            "--tags",
            "bad tag!",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "error" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "update_server", "create-token"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2


def test_config_from_toml_and_env(tmp_path: Path) -> None:
    from update_server.config import load_config
    from update_server.errors import ConfigError

    path = tmp_path / "server.toml"
    path.write_text('database_url = "sqlite:///a.db"\npoll_interval = 60\n')
    cfg = load_config(path, env={"EDGEPKG_SERVER_POLL_INTERVAL": "90"})
    assert cfg.database_url == "sqlite:///a.db" and cfg.poll_interval == 90
    path.write_text("pol_interval = 60\n")
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(path, env={})
    with pytest.raises(ConfigError):
        load_config(None, env={"EDGEPKG_SERVER_POLL_INTERVAL": "soon"})
