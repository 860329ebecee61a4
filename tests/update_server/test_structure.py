"""The shape of ``update_server``: no import circles, pure cores that load no I/O library."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import update_server
from tests._graph import cycles as _cycles

PACKAGE_DIR = Path(update_server.__file__).parent
ROOT = "update_server"
PURE_CORES = (
    "update_server.rollouts.engine",
    "update_server.rollouts.spec",
    "update_server.alerts.rules",
)
IO_LIBRARIES = ("flask", "sqlalchemy", "cryptography", "requests", "tuf", "numpy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _with_parents(name: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The update_server modules ``name`` imports (at any level of the file, lazily or not)."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
            # ``from pkg import mod`` imports the module pkg.mod
            targets += [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
        for target in targets:
            for mod in _with_parents(target):
                if mod in known and mod != name:
                    out.add(mod)
    return out


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def test_the_import_graph_is_read_from_every_module() -> None:
    graph = _import_graph()
    assert "update_server.app" in graph and "update_server.rollouts.engine" in graph
    # create_app imports every blueprint directly (no late lookups by name)
    for blueprint in (
        "update_server.devices.api",
        "update_server.operators.api",
        "update_server.rollouts.api",
        "update_server.alerts.api",
        "update_server.dashboard.views",
        "update_server.tuf.files",
    ):
        assert blueprint in graph["update_server.app"]


def test_the_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_update_server_has_no_import_cycles() -> None:
    cycles = _cycles(_import_graph())
    assert len(cycles) == 0, f"import circles: {cycles}"


def test_no_module_finds_modules_by_name() -> None:
    for name, path in _modules().items():
        text = path.read_text()
        for banned in ("find_spec", "import_module(", "__import__("):
            assert banned not in text, f"{name} looks a module up by name ({banned})"


def test_pure_cores_load_no_io_library() -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in PURE_CORES)
        + f"print(json.dumps(sorted(m for m in {IO_LIBRARIES!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=PACKAGE_DIR.parent,
    )
    assert json.loads(out.stdout) == []


def test_modules_stay_small() -> None:
    big = {
        name: n
        for name, path in _modules().items()
        if (n := len(path.read_text().splitlines())) > 520
    }
    assert big == {}
