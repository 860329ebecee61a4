"""Dashboard screenshot in real headless Chromium, through the server's own screenshot tool
(``python -m update_server.dashboard.screenshot``, Selenium + Debian chromium/chromedriver) run
as a separate process, so edgepkg does not import the server."""

from __future__ import annotations

import os
from pathlib import Path

from edgepkg.demo._procs import python_cmd, run_cmd

SCREENSHOT_MODULE = "update_server.dashboard.screenshot"


def take_screenshot(page_url: str, out_png: Path, operator_token: str) -> Path:
    """Log in with an operator token, open ``page_url`` and save a PNG; return its path."""
    out_png = out_png.resolve()
    run_cmd(
        python_cmd(SCREENSHOT_MODULE, page_url, str(out_png)),
        env={**os.environ, "EDGEPKG_OPERATOR_TOKEN": operator_token},  # not in argv: ps shows it
        timeout=120,
        what="dashboard screenshot (headless Chromium)",
    )
    return out_png
