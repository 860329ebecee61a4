"""Real headless Chromium against the real server: the console walk of issue 14.

Find a device by name -> create a group with the live preview -> create a rollout from a release
targeting the group -> the rollout page names the devices that failed and why.
With ``EDGEPKG_SCREENSHOTS_DIR`` set, the pages are also saved there as PNGs (this is how the
screenshots in docs/operator.md are made).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.helpers import require
from tests.update_server._factory import build_app
from tests.update_server._rollout_fixtures import RELEASES, add_device, migrated
from tests.update_server.test_console_pages import _fail
from update_server.db import get_db, utcnow
from update_server.devices.models import Device, Event
from update_server.operators.auth import create_operator_token
from update_server.rollouts import service as svc
from update_server.rollouts.models import RolloutDevice

pytestmark = pytest.mark.chromium


@pytest.fixture
def server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'console-browser.db'}"
    migrated(url).dispose()
    app = _app_with_described_releases(url, tmp_path / "repo")
    with app.app_context(), get_db(app).session() as s:
        token = create_operator_token(s, name="release-op", role="release")[1]
        for i in range(10):
            site = "site-berlin" if i < 6 else "site-paris"
            d = add_device(s, f"{i:02d}" + "ab" * 31, tags=[site],
                           last_seen=utcnow(), version="1.0.0" if i < 7 else "1.1.0",
                           health={"latency_p50_ms": 3.5, "latency_p95_ms": None, "errors": 0})
            d.name = f"device-{i:02d}"
            d.facts = {"gpu_sm": 87 if i < 3 else 72, "platform": "linux-aarch64"}
        s.get(Device, "03" + "ab" * 31).last_error = (  # type: ignore[union-attr]
            "app reported a failure with det 1.0.0: NaN outputs")
        s.add(Event(id="e-03", device_id="03" + "ab" * 31, type="validation_result",
                    time=utcnow(), received_at=utcnow(), model="det", version="1.0.0",
                    details={"accepted": True, "reasons": ["accuracy 0.93 >= 0.9"],
                             "metrics": {"accuracy": 0.93, "latency_ms": 4.2}}))
        s.commit()
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield {"base": f"http://127.0.0.1:{srv.server_port}", "token": token, "app": app}
    finally:
        srv.shutdown()
        t.join(10)
        get_db(app).dispose()


def _app_with_described_releases(url: str, repo: Path) -> Any:
    """The real app whose releases look as a real repository describes them (format,
    requirements, policy, sizes) with one revoked release in the signed targets, so the release
    page shows every column."""
    custom = {"edgepkg": {"format": "onnx",
                          "requirements": {"onnx_opset": "17", "platform": "linux-aarch64"},
                          "policy": {"metric": "top1_accuracy", "floor": "0.9",
                                     "max_regression": "0.02"}}}
    rich = [dataclasses.replace(r, custom=custom, length=r.length * 40_000) for r in RELEASES]
    (repo / "metadata").mkdir(parents=True, exist_ok=True)
    (repo / "metadata" / "timestamp.json").write_text("{}")
    (repo / "metadata" / "targets.json").write_text(json.dumps({"signed": {
        "x-edgepkg-revoked": [{"name": "det", "version": "0.9.0", "reason": "mislabelled data"}]}}))
    return build_app(url, clock=utcnow, release_reader=lambda _d: rich, repo_dir=str(repo),
                     testing=True, poll_interval=60)


def test_console_walk_in_chromium(server: dict[str, Any], tmp_path: Path) -> None:
    require(bool(shutil.which("chromium") and shutil.which("chromedriver")), "Chromium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from update_server.dashboard.screenshot import chromium, login

    shots = Path(os.environ.get("EDGEPKG_SCREENSHOTS_DIR") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    base, app = server["base"], server["app"]

    def shot(name: str) -> None:
        driver.set_window_size(1280, max(800, int(driver.execute_script(
            "return document.body.scrollHeight") or 800)))
        driver.save_screenshot(str(shots / f"{name}.png"))

    with chromium() as driver:
        wait = WebDriverWait(driver, 15)
        login(driver, base, server["token"])
        wait.until(ec.presence_of_element_located((By.CLASS_NAME, "cards")))

        # 1. find a device by name
        driver.get(base + "/dashboard/devices")
        box = driver.find_element(By.ID, "filter-q")
        box.send_keys("device-03")
        driver.find_element(By.ID, "filter-submit").click()
        wait.until(lambda d: "q=device-03" in d.current_url)
        rows = driver.find_elements(By.CSS_SELECTOR, "table.devices tbody tr")
        assert len(rows) == 1 and "device-03" in rows[0].text
        shot("console-devices")
        rows[0].find_element(By.TAG_NAME, "a").click()
        wait.until(ec.presence_of_element_located((By.ID, "device-name")))
        assert driver.find_element(By.ID, "device-name").text == "device-03"
        assert "NaN outputs" in driver.find_element(By.ID, "last-error").text
        assert "p95 — ms" in driver.find_element(By.ID, "latency").text
        shot("console-device")

        # 2. a group, with the live preview before saving
        driver.get(base + "/dashboard/groups")
        driver.find_element(By.ID, "group-name").send_keys("berlin-gpus")
        driver.find_element(By.ID, "group-selector").send_keys(
            "tag:site-berlin and gpu_sm>=87 and platform=linux-aarch64")
        wait.until(lambda d: "3 devices match" in d.find_element(By.ID, "group-preview").text)
        assert "device-00" in driver.find_element(By.ID, "group-preview").text
        shot("console-group-preview")
        driver.find_element(By.ID, "group-save").click()
        wait.until(ec.presence_of_element_located((By.ID, "group-berlin-gpus")))
        shot("console-groups")

        # 3. a rollout from a release, targeting the group
        driver.get(base + "/dashboard/releases/det")
        assert driver.find_element(By.ID, "release-1.2.0")
        assert "mislabelled data" in driver.find_element(By.ID, "release-0.9.0").text
        Select(driver.find_element(By.ID, "rollout-version")).select_by_value("1.2.0")
        Select(driver.find_element(By.ID, "rollout-group")).select_by_value("berlin-gpus")
        stages = driver.find_element(By.ID, "rollout-stages")
        stages.clear()
        stages.send_keys("50:0, 100:0")
        shot("console-release")
        driver.find_element(By.ID, "rollout-create").click()
        wait.until(ec.presence_of_element_located((By.ID, "rollout-devices")))
        assert "berlin-gpus" in driver.page_source
        rid = driver.current_url.rstrip("/").rsplit("/", 1)[-1]

        # 4. two devices of the group fail (as their reports would say): the page names them
        with app.app_context(), get_db(app).session() as s:
            ro = svc.get_rollout(s, rid)
            admitted = [rd.device_id for rd in s.query(RolloutDevice).filter_by(rollout_id=rid)]
            assert set(svc.candidate_ids(s, svc.spec_of(ro))) == {
                f"{i:02d}" + "ab" * 31 for i in range(3)}
            for i in (0, 1):
                _fail(s, rid, f"{i:02d}" + "ab" * 31, admitted, "1.2.0")
            s.commit()
        driver.get(base + f"/dashboard/rollouts/{rid}")
        table = driver.find_element(By.ID, "rollout-devices").text
        assert "device-00" in table and "device-01" in table
        assert "accuracy 0.61 < floor 0.9" in table and "rejected" in table
        assert "2 failed" in driver.find_element(By.CLASS_NAME, "progress-text").text
        shot("console-rollout")
    assert (shots / "console-rollout.png").stat().st_size > 10_000


def test_the_walk_needs_the_fixture_releases() -> None:
    assert any(r.version == "1.2.0" for r in RELEASES)
