"""WSGI entry point: ``gunicorn update_server.wsgi:app``.

Configured from ``EDGEPKG_SERVER_CONFIG`` (a TOML file) and ``EDGEPKG_SERVER_*`` variables.
"""

from __future__ import annotations

from update_server.app import create_app
from update_server.config import load_config

app = create_app(load_config())
