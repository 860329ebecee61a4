"""Schema management: the full metadata and Alembic upgrades, run programmatically."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData

# Every table module, imported for its side effect of registering tables on Base.metadata.
from update_server.alerts import models as _alert_tables  # noqa: F401
from update_server.approvals import models as _approval_tables  # noqa: F401
from update_server.audit import models as _audit_tables  # noqa: F401
from update_server.db import Base, init_engine
from update_server.devices import models as _device_tables  # noqa: F401
from update_server.grants import models as _grant_tables  # noqa: F401
from update_server.groups import models as _group_tables  # noqa: F401
from update_server.operators import models as _operator_tables  # noqa: F401
from update_server.rollouts import (
    models as _rollout_tables,  # noqa: F401
    schedule_models as _schedule_tables,  # noqa: F401
)
from update_server.telemetry import models as _telemetry_tables  # noqa: F401
from update_server.webhooks import models as _webhook_tables  # noqa: F401

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def target_metadata() -> MetaData:
    """``Base.metadata`` with every table of the server (the modules are imported above)."""
    return Base.metadata


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (creates it from empty)."""
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    engine = init_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
