"""Real headless Chromium against the real server on a socket: the field telemetry charts.
Fleet → cohort → device drill-down and the rollout's canary vs control draw canvases from
non-empty series, with no console error (a CSP violation is one) and no request leaving the
server's origin. Writes docs/screenshots/telemetry-*.png when EDGEPKG_SCREENSHOTS_DIR says
where (docs/operator.md, "Field telemetry", shows them)."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.helpers import require
from tests.update_server._chart_fixtures import CONTROL, DRIFTING, seed_fleet
from tests.update_server._rollout_fixtures import RELEASES, make_app, migrated
from update_server.db import get_db, utcnow
from update_server.operators.auth import create_operator_token
from update_server.rollouts import service as svc

pytestmark = pytest.mark.chromium


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'charts.db'}"
    migrated(url).dispose()
    app = make_app(url, tmp_path, utcnow)
    with app.app_context(), get_db(app).session() as s:
        now = utcnow()
        seed_fleet(s, now)
        token = create_operator_token(s, name="viewer", role="viewer")[1]
        r = svc.create_rollout(s, {"model": "det", "version": "1.1.0"}, releases=RELEASES, now=now)
        s.commit()
        rollout_id = r.id
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield {"base": f"http://127.0.0.1:{srv.server_port}", "token": token,
               "rollout_id": rollout_id}
    finally:
        srv.shutdown()
        t.join(10)
        get_db(app).dispose()


def _charts_drawn(driver: Any, panel_id: str) -> dict[str, int]:
    """Wait for the panel, then return {metric: points} of its charts (each has a canvas)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(  # generous: slow shared CI machines
        lambda d: d.find_element(By.ID, panel_id).get_attribute("data-rendered"))
    panel = driver.find_element(By.ID, panel_id)
    assert panel.get_attribute("data-rendered") == "yes", panel.text
    out = {}
    for box in panel.find_elements(By.CSS_SELECTOR, ".chart"):
        assert box.find_elements(By.TAG_NAME, "canvas"), "uPlot draws on a canvas"
        out[box.get_attribute("data-metric")] = int(box.get_attribute("data-points"))
    return out


def _same_origin_only(driver: Any, base: str) -> None:
    urls = driver.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })")
    assert urls, "the page loaded its script and the series"
    outside = [u for u in urls if not u.startswith(base)]
    assert not outside, f"requests left the server's origin: {outside}"


def test_field_telemetry_charts_in_chromium(server: dict[str, Any], tmp_path: Path) -> None:
    require(bool(shutil.which("chromium") and shutil.which("chromedriver")), "Chromium")
    from selenium.webdriver.common.by import By

    from update_server.dashboard.screenshot import chromium, login

    base = server["base"]
    shots = Path(os.environ.get("EDGEPKG_SCREENSHOTS_DIR") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        driver.set_window_size(1280, max(800, int(driver.execute_script(
            "return document.body.scrollHeight") or 800)))
        driver.save_screenshot(str(shots / f"{name}.png"))

    with chromium() as driver:
        login(driver, base, server["token"])
        driver.get(base + "/dashboard/telemetry/")
        fleet = _charts_drawn(driver, "fleet-charts")
        assert {"p95_ms", "throughput", "error_rate", "drift", "accuracy", "temp_c"} <= set(fleet)
        assert all(n > 0 for n in fleet.values()), fleet
        _same_origin_only(driver, base)
        shot("telemetry-fleet")

        # fleet -> cohort (det 1.0.0, every tag) -> the drifting device
        links = {a.text.split(" · ")[0]: a for a in
                 driver.find_elements(By.CSS_SELECTOR, "a.cohort-link")}
        links["det 1.0.0"].click()
        assert _charts_drawn(driver, "cohort-charts")["drift"] > 0
        devices = driver.find_elements(By.CSS_SELECTOR, "a.device-link")
        assert len(devices) == len(CONTROL)
        next(a for a in devices if DRIFTING.startswith(a.text)).click()
        assert _charts_drawn(driver, "device-charts")["p95_ms"] > 0
        assert DRIFTING in driver.current_url

        driver.get(f"{base}/dashboard/rollouts/{server['rollout_id']}")
        rollout = _charts_drawn(driver, "rollout-charts")
        assert rollout["p95_ms"] > 0
        legend = driver.find_element(By.ID, "rollout-charts").text.lower()  # CSS upper-cases th
        assert "canary (1.1.0)" in legend and "control" in legend
        _same_origin_only(driver, base)
        shot("telemetry-rollout")

        # the browser's own favicon probe is not the page's doing (there is no favicon)
        errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"
                  and "/favicon.ico" not in e.get("message", "")]
        assert not errors, errors
