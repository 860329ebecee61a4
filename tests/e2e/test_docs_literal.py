"""The docs are true when followed literally.

The shell blocks of ``docs/release-engineer.md`` and ``docs/device-integrator.md`` marked
``<!-- runnable -->`` on the line before their fence run here as written, against SoftHSM2, a
real ``edgepkg-server`` (started by the release page's own block) and a real ``edge-updater``.

Each page is one "terminal": its blocks run one after another in its own working directory,
each in a fresh ``bash -euo pipefail``, with the exported variables and the current directory
of the page's previous block carried over (as when pasting the blocks into one shell).

Ordering: pages run in order, blocks in page order. A marker may name a block
(``<!-- runnable id=NAME -->``) or make one wait for a named block of another page
(``<!-- runnable after=NAME -->``), for a step that needs the other page's work (packaging for
direct recipients needs the devices enrolled). The lab packages for the key service, so the
device enrolls after the release is published, which is the case key grants exist for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers import require

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("docs/release-engineer.md", "docs/device-integrator.md")
SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
BLOCK_TIMEOUT_S = 120

_MARKER = re.compile(r"^\s*<!--\s*runnable(?P<attrs>(?:\s+\w+=[\w.-]+)*)\s*-->\s*$")
_FENCE_OPEN = re.compile(r"^(?P<indent>\s*)```(?:sh|bash)\s*$")


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence, for messages
    text: str
    attrs: dict[str, str] = field(default_factory=dict)


def extract_blocks(page: str, markdown: str) -> list[Block]:
    """The ``sh`` blocks right after a runnable marker, dedented to their fence."""
    lines = markdown.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i])
        if marker is None:
            i += 1
            continue
        attrs = dict(a.split("=", 1) for a in marker["attrs"].split())
        fence = _FENCE_OPEN.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            raise AssertionError(f"{page}:{i + 1}: a runnable marker must be followed by ```sh")
        indent = fence["indent"]
        body: list[str] = []
        j = i + 2
        while j < len(lines) and lines[j].strip() != "```":
            line = lines[j]
            if line.strip() and not line.startswith(indent):
                raise AssertionError(f"{page}:{j + 1}: line less indented than its fence")
            body.append(line[len(indent):])
            j += 1
        if j == len(lines):
            raise AssertionError(f"{page}:{i + 2}: runnable block never closed")
        blocks.append(Block(page, i + 2, "\n".join(body) + "\n", attrs))
        i = j + 1
    return blocks


def schedule(pages: dict[str, list[Block]]) -> list[Block]:
    """Page order, except that a block waits until the block its ``after=`` names has run."""
    queues = {page: list(blocks) for page, blocks in pages.items()}
    done: set[str] = set()
    order: list[Block] = []
    while any(queues.values()):
        for queue in queues.values():
            if queue and queue[0].attrs.get("after", "") in done | {""}:
                block = queue.pop(0)
                order.append(block)
                if "id" in block.attrs:
                    done.add(block.attrs["id"])
                break
        else:
            waiting = [f"{q[0].page}:{q[0].line}" for q in queues.values() if q]
            raise AssertionError(f"runnable blocks wait for ids that never run: {waiting}")
    return order


def test_marked_blocks_are_found_and_ordered() -> None:
    pages = {p: extract_blocks(p, (ROOT / p).read_text()) for p in PAGES}
    assert all(pages.values()), "each page has runnable blocks"
    order = schedule(pages)
    texts = [b.text for b in order]
    enroll = next(i for i, t in enumerate(texts) if "edge-updater enroll" in t)
    package = next(i for i, t in enumerate(texts) if "edgepkg package" in t)
    check = next(i for i, t in enumerate(texts) if "edge-updater check" in t)
    init = next(i for i, t in enumerate(texts) if "edgepkg repo init" in t)
    # Direct recipients package after the enrollment, the key service before it: either way
    # the repository exists before both, and both happen before the device checks.
    assert init < min(enroll, package) and max(enroll, package) < check


def test_extractor_dedents_list_blocks_and_rejects_a_bare_marker() -> None:
    md = "1. step\n\n   <!-- runnable id=x -->\n   ```sh\n   cat <<EOF\n   a\n   EOF\n   ```\n"
    (block,) = extract_blocks("p.md", md)
    assert block.text == "cat <<EOF\na\nEOF\n" and block.attrs == {"id": "x"}
    with pytest.raises(AssertionError, match="followed by"):
        extract_blocks("p.md", "<!-- runnable -->\ntext\n")


def test_a_block_waits_for_the_block_it_names() -> None:
    def block(page: str, line: int, **attrs: str) -> Block:
        return Block(page, line, "", dict(attrs))

    order = schedule({"a": [block("a", 1), block("a", 2, after="x"), block("a", 3)],
                      "b": [block("b", 1), block("b", 2, id="x"), block("b", 3)]})
    assert [(b.page, b.line) for b in order] == [("a", 1), ("b", 1), ("b", 2), ("a", 2),
                                                 ("a", 3), ("b", 3)]
    with pytest.raises(AssertionError, match="never run"):
        schedule({"a": [block("a", 1, after="nope")]})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Each block runs in a fresh bash; what it exported and where it ended are saved for the next
# block of the same page. ``set -a`` is not used: a variable the next block needs must be
# exported in the doc, as it would have to be for the commands it runs.
_PRELUDE = """\
[ -f "$DOCS_STATE/env" ] && . "$DOCS_STATE/env"
cd "$(cat "$DOCS_STATE/cwd")"
_docs_save() {
  export -p | grep -Ev '^declare -x (PWD|OLDPWD|SHLVL|_)=' > "$DOCS_STATE/env"
  pwd > "$DOCS_STATE/cwd"
}
trap _docs_save EXIT
"""


def test_docs_run_literally(tmp_path: Path) -> None:
    require(SOFTHSM_MODULE.exists() and shutil.which("softhsm2-util") is not None,
            "SoftHSM2 (softhsm2-util and libsofthsm2.so)")
    require(shutil.which("curl") is not None, "curl")
    pages = {p: extract_blocks(p, (ROOT / p).read_text()) for p in PAGES}
    work = tmp_path / "lab"
    port = _free_port()
    venv_bin = Path(sys.executable).parent
    env = {
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT),  # this checkout's code, whatever the venv has installed
        "LANG": "C.UTF-8",
        "WORK": str(work),
        "HSM_PIN": "ci-release-pin",
        "ROOT_PIN": "ci-root-pin",
        "KEYSVC_PIN": "ci-keysvc-pin",
        "DEVICE_PIN": "ci-device-pin",
        "EDGEPKG_SERVER": f"http://127.0.0.1:{port}",
    }
    (tmp_path / "home").mkdir()
    states: dict[str, Path] = {}
    for page in PAGES:
        state = tmp_path / "state" / Path(page).stem
        state.mkdir(parents=True)
        (state / "cwd").write_text(str(tmp_path))
        states[page] = state
    try:
        for block in schedule(pages):
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", _PRELUDE + block.text],
                env={**env, "DOCS_STATE": str(states[block.page])}, cwd=tmp_path,
                capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S, check=False,
                stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, (
                f"{block.page}:{block.line}: block exited {proc.returncode}\n"
                f"--- block ---\n{block.text}--- stdout ---\n{proc.stdout[-4000:]}"
                f"--- stderr ---\n{proc.stderr[-4000:]}")
        status = json.loads((work / "device" / "status.json").read_text())
        iris = status["models"]["iris"]
        active = iris["slots"][iris["active_slot"]]
        assert (iris["version"], iris["phase"], active["version"]) == ("1.0.0", "committed",
                                                                        "1.0.0")
        # The device enrolled after the release was packaged: it got the data key through a key
        # grant, which the server audits (docs/operator.md, "Key service").
        with sqlite3.connect(work / "server" / "edgepkg-server.db") as db:
            (grants,) = db.execute("SELECT count(*) FROM key_grants").fetchone()
        assert grants >= 1
    finally:
        _stop_server(work / "server" / "server.pid")


def _stop_server(pid_file: Path) -> None:
    """The docs' last block stops the server; when an earlier block failed, stop it here."""
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 15)
    except (ValueError, ProcessLookupError):
        return
