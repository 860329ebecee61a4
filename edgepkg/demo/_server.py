"""The update server as the demo runs it: ``edgepkg-server`` (SQLite, gunicorn on 127.0.0.1),
reached only through its command line and its operator HTTP API."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgepkg.demo._procs import DemoStepError, ProcessSet, python_cmd, run_cmd
from edgepkg.demo._workspace import Workspace

SERVER_MODULE = "update_server"
DASHBOARD_USER = "operator"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorAPI:
    """A small JSON client for the operator API (bearer token)."""

    def __init__(self, base_url: str, token: str, timeout: float = 15.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            raise DemoStepError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise DemoStepError(f"{method} {path}: {exc}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body if body is not None else {})


@dataclass
class Server:
    url: str
    config_path: Path
    api: OperatorAPI
    dashboard_password: str

    def devices(self) -> list[dict[str, Any]]:
        return list(self.api.get("/api/v1/devices?limit=500")["devices"])

    def device(self, device_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/devices/{device_id}"))

    def events(self, device_id: str) -> list[dict[str, Any]]:
        return list(self.api.get(f"/api/v1/devices/{device_id}/events?limit=500")["events"])

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"/api/v1/rollouts/{rollout_id}"))

    def create_rollout(self, spec: dict[str, Any]) -> dict[str, Any]:
        return dict(self.api.post("/api/v1/rollouts", spec))


def _cli(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run_cmd(
        python_cmd(SERVER_MODULE, "--config", str(config), *args),
        env=env,
        what=f"edgepkg-server {args[0]}",
    )


def start_server(
    ws: Workspace,
    procs: ProcessSet,
    *,
    port: int | None,
    poll_interval: int,
    enrollment_uses: int,
    workers: int = 2,
    key_service_key: str | None = None,
) -> tuple[Server, str]:
    """Write the config, migrate, start gunicorn and, while it boots, create the operator
    token, the dashboard user and the fleet's enrollment token. Returns (server, enrollment)."""
    port = port or free_port()
    config = ws.server / "server.toml"
    secret = secrets.token_hex(32)
    config.write_text(
        f'database_url = "sqlite:///{ws.server / "edgepkg.db"}"\n'
        f'repo_dir = "{ws.repo}"\n'
        f"poll_interval = {poll_interval}\n"
        f'secret_key = "{secret}"\n'
        + (f'key_service_key = "{key_service_key}"\n' if key_service_key else "")
    )
    os.chmod(config, 0o600)
    _cli(config, "init-db")
    procs.start(
        "server",
        python_cmd(
            SERVER_MODULE,
            "--config",
            str(config),
            "run",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
        ),
        log_path=ws.logs / "server.log",
    )
    password = secrets.token_urlsafe(12)
    env = {**os.environ, "EDGEPKG_PASSWORD": password}
    with ThreadPoolExecutor(max_workers=3) as pool:
        token_f = pool.submit(
            _cli, config, "--json", "create-token", "--role", "admin", "--name", "edgepkg-demo"
        )
        user_f = pool.submit(
            _cli, config, "create-user", "--username", DASHBOARD_USER, "--role", "admin", env=env
        )
        enroll_f = pool.submit(
            _cli,
            config,
            "--json",
            "create-enrollment",
            "--uses",
            str(enrollment_uses),
            "--expires",
            "1h",
            "--tags",
            "demo",
            "--note",
            "edgepkg demo fleet",
        )
        token = str(json.loads(token_f.result())["token"])
        user_f.result()
        enrollment = str(json.loads(enroll_f.result())["token"])
    url = f"http://127.0.0.1:{port}"
    api = OperatorAPI(url, token)
    deadline = time.monotonic() + 90
    while True:
        try:
            api.get("/api/v1/devices?limit=1")
            break
        except DemoStepError as exc:
            if procs.dead() or time.monotonic() > deadline:
                raise DemoStepError(
                    f"the update server did not start ({exc}); see {ws.logs / 'server.log'}"
                ) from None
            time.sleep(0.3)
    return Server(url, config, api, password), enrollment
