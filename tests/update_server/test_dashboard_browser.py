"""Real headless Chromium (Debian ``chromium`` + ``chromedriver``, Selenium) against the real
server on a socket: log in, see the paused rollout with its reason, click Resume."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.helpers import require
from tests.update_server._rollout_fixtures import RELEASES, add_device, dev_ids, make_app, migrated
from update_server.db import get_db, utcnow
from update_server.operators.auth import create_operator_token
from update_server.rollouts import service as svc

pytestmark = pytest.mark.chromium

REASON = "stage 1: 2 of 3 finished devices failed (67% >= 20%)"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'browser.db'}"
    migrated(url).dispose()
    app = make_app(url, tmp_path, utcnow)
    with app.app_context(), get_db(app).session() as s:
        token = create_operator_token(s, name="release-op", role="release")[1]
        for i in dev_ids(10):
            add_device(s, i, last_seen=utcnow())
        now = utcnow()
        r = svc.create_rollout(s, {"model": "det", "version": "1.1.0"}, releases=RELEASES, now=now)
        svc.operator_action(s, r.id, "pause", now=now, reason=REASON)
        rollout_id = r.id
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield {
            "base": f"http://127.0.0.1:{srv.server_port}",
            "token": token,
            "app": app,
            "rollout_id": rollout_id,
        }
    finally:
        srv.shutdown()
        t.join(10)
        get_db(app).dispose()


def test_operator_resumes_a_paused_rollout_in_chromium(
    server: dict[str, Any], tmp_path: Path
) -> None:
    require(bool(shutil.which("chromium") and shutil.which("chromedriver")), "Chromium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from update_server.dashboard.screenshot import chromium, login

    rid = server["rollout_id"]
    with chromium() as driver:
        driver.get(server["base"] + "/dashboard/rollouts")
        assert "/login" in driver.current_url, "the dashboard is behind the login"
        login(driver, server["base"], server["token"])
        WebDriverWait(driver, 15).until(ec.presence_of_element_located((By.CLASS_NAME, "cards")))
        driver.get(server["base"] + "/dashboard/rollouts")
        row = driver.find_element(By.ID, f"rollout-{rid}")
        assert row.get_attribute("data-status") == "paused"
        assert REASON in row.find_element(By.CLASS_NAME, "reason").text
        driver.find_element(By.ID, f"resume-{rid}").click()
        WebDriverWait(driver, 15).until(
            lambda d: (
                d.find_element(By.ID, f"rollout-{rid}").get_attribute("data-status") == "running"
            )
        )
        assert "resume done" in driver.find_element(By.CLASS_NAME, "flash").text
        driver.save_screenshot(str(tmp_path / "rollouts.png"))
    app = server["app"]
    with app.app_context(), get_db(app).session() as s:
        r = svc.get_rollout(s, rid)
        assert r.status == "running" and r.reason is None
    assert (tmp_path / "rollouts.png").stat().st_size > 10_000


def test_screenshot_helper_writes_a_png(server: dict[str, Any], tmp_path: Path) -> None:
    require(bool(shutil.which("chromium") and shutil.which("chromedriver")), "Chromium")
    from update_server.dashboard.screenshot import screenshot

    out = screenshot(
        server["base"] + "/dashboard/", tmp_path / "shot" / "overview.png", server["token"]
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
