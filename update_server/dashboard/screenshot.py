"""Take a screenshot of a dashboard page in real headless Chromium (Debian ``chromium``).

Used by the browser test and by the demo::

    python -m update_server.dashboard.screenshot http://127.0.0.1:8080/dashboard/ out.png TOKEN
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


@contextmanager
def chromium(
    chromium_path: str | None = None, chromedriver_path: str | None = None
) -> Iterator[Any]:
    """A Selenium-driven headless Chromium with a fresh profile, closed on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = chromium_path or shutil.which("chromium")
    driver_path = chromedriver_path or shutil.which("chromedriver")
    if not binary or not driver_path:
        raise RuntimeError("Debian chromium and chromium-driver are required")
    profile = tempfile.mkdtemp(prefix="edgepkg-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def login(driver: Any, base_url: str, token: str) -> None:
    """Sign in on ``/login`` with an operator token."""
    from selenium.webdriver.common.by import By

    driver.get(urljoin(base_url, "/login"))
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-submit").click()


def screenshot(url: str, out_png: str | Path, login_token: str) -> Path:
    """Log in with ``login_token`` and save a PNG of ``url``; return the path written."""
    parts = urlsplit(url)
    base = f"{parts.scheme}://{parts.netloc}"
    out = Path(out_png)
    with chromium() as driver:
        login(driver, base, login_token)
        driver.get(url)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, max(800, min(int(height) + 40, 4000)))
        out.parent.mkdir(parents=True, exist_ok=True)
        if not driver.save_screenshot(str(out)):
            raise RuntimeError(f"Chromium could not write {out}")
    return out


TOKEN_ENV = "EDGEPKG_OPERATOR_TOKEN"


def main(argv: list[str] | None = None) -> int:
    """``python -m update_server.dashboard.screenshot URL OUT.png`` with the operator token in
    ``$EDGEPKG_OPERATOR_TOKEN`` (not on the command line, where ``ps`` would show it)."""
    args = sys.argv[1:] if argv is None else argv
    token = os.environ.get(TOKEN_ENV, "")
    if len(args) != 2 or not token:
        print(
            "usage: EDGEPKG_OPERATOR_TOKEN=... python -m update_server.dashboard.screenshot "
            "URL OUT.png",
            file=sys.stderr,
        )
        return 2
    try:
        print(screenshot(args[0], args[1], token))
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
