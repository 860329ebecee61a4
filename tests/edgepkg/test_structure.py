"""The shape of the code base, checked: pure cores load no I/O library, no import circles, and
only the crypto and keystore modules import ``cryptography`` (DESIGN.md §7 and §8)."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests._graph import cycles as _cycles

PACKAGES = ("edgepkg", "update_server", "device_updater")

PURE_CORES = (
    "edgepkg.protocol", "edgepkg.delta._format", "edgepkg.repo._policy", "edgepkg.repo._fleet",
)
IO_LIBRARIES = (
    "cryptography", "pkcs11", "zstandard", "requests", "flask", "sqlalchemy", "tuf", "numpy",
)

# The one door to hazmat: the crypto module, and the adapters that must talk to a token
# (PKCS#11) or to PEM files; on the device, its keystore.
CRYPTO_ALLOWED = (
    "edgepkg/crypto.py",
    "edgepkg/keys/_pkcs11*.py",
    "edgepkg/keys/_software.py",
    "device_updater/keystore.py",
)


def _modules(root: Path) -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root)
            if "migrations" in rel.parts and "versions" in rel.parts:
                continue  # alembic revisions: loaded by alembic, imported by nobody
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, list[str]]]:
    """(imported module, names) for every import the module runs, in functions too; imports
    under ``if TYPE_CHECKING:`` never run and are skipped."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names]
        stack.extend(ast.iter_child_nodes(node))


def _import_graph(root: Path) -> dict[str, set[str]]:
    paths = dict(_modules(root))
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        for target, names in _imports(tree, name, path.name == "__init__.py"):
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name`` mod.
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in graph]
            for dep in subs or [target]:
                if dep in graph and dep != name:
                    graph[name].add(dep)
    return graph


def test_pure_cores_import_no_io_library(repo_root: Path) -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in PURE_CORES)
        + f"print(json.dumps(sorted(m for m in {list(IO_LIBRARIES)!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(repo_root), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert loaded == [], f"importing {', '.join(PURE_CORES)} loaded {loaded}"


def test_import_graph_finder_sees_a_circle() -> None:
    # The finder itself must work, or the no-circle test below proves nothing.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from . import b\n")
    assert list(_imports(tree, "pkg.a", False)) == [("pkg", ["b"])]


def test_no_import_circles(repo_root: Path) -> None:
    cycles = _cycles(_import_graph(repo_root))
    for cycle in cycles:
        print("import circle:", " <-> ".join(cycle))
    assert cycles == [], f"{len(cycles)} import circle(s): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_no_import_circles_in_edgepkg(repo_root: Path) -> None:
    # The library wing on its own: edgepkg imports neither server nor device (DESIGN.md §1).
    cycles = [c for c in _cycles(_import_graph(repo_root)) if c[0].startswith("edgepkg")]
    assert cycles == [], cycles


def test_edgepkg_imports_neither_server_nor_device(repo_root: Path) -> None:
    graph = _import_graph(repo_root)
    wrong = sorted(
        f"{m} -> {d}" for m, deps in graph.items() if m.startswith("edgepkg")
        for d in deps if not d.startswith("edgepkg")
    )
    assert wrong == []


def _imports_cryptography(path: Path) -> bool:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(
            a.name.split(".")[0] == "cryptography" for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (
            (node.module or "").split(".")[0] == "cryptography"
        ):
            return True
    return False


def test_only_the_crypto_door_imports_cryptography(repo_root: Path) -> None:
    offenders = []
    for _, path in _modules(repo_root):
        rel = path.relative_to(repo_root)
        if _imports_cryptography(path) and not any(rel.match(p) for p in CRYPTO_ALLOWED):
            offenders.append(str(rel))
    assert offenders == [], (
        f"{offenders} import cryptography: add the helper to edgepkg/crypto.py and call that"
    )


def test_lazy_packages_resolve_every_exported_name() -> None:
    # edgepkg.repo and edgepkg.delta load their modules on first use: every name they
    # export must still be there, and an unknown name must fail like a normal module's.
    for package in ("edgepkg.repo", "edgepkg.delta"):
        module = importlib.import_module(package)
        for name in module.__all__:
            assert getattr(module, name) is not None, f"{package}.{name}"
        with pytest.raises(AttributeError):
            module.no_such_name  # noqa: B018 - the attribute access is the test
